"""Measurement certificates end to end: build from a real chain, verify offline, resist tampering.

The chain comes from `chainfixture` (real store, real ingest checks, real block
producer). The tamper test walks every value the certificate JSON carries and
changes it one at a time; verification must fail every time, naming where.
The last tests check the signatures with `openssl pkeyutl -rawin` alone, as
docs/certificate.md tells a clerk to.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from chainfixture import Chain, build_chain
from hub.certificates.build import build_certificate
from hub.certificates.document import iso_ns
from hub.certificates.trust import Trust, parse_trust, trust_document
from hub.certificates.verify import Summary, VerificationError, verify_certificate
from protos.canonical import block_hash, decode_block_header
from protos.records import Gap, Reading
from protos.signing import Signer

REPO = Path(__file__).resolve().parent.parent
METER = "MTR-1"


# -- fixtures -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    c = build_chain(tmp_path_factory.mktemp("chain"))
    yield c
    c.store.close()


@pytest.fixture(scope="module")
def cert(chain: Chain) -> dict:
    built = build_certificate(
        chain.store, chain.hub_signer, chain.chain_id, METER, chain.from_ns, chain.to_ns, chain.to_ns + 60 * 10**9
    )
    assert built.unsealed_entries == 0
    return built.document


@pytest.fixture(scope="module")
def trust(chain: Chain) -> Trust:
    return chain.trust()


@pytest.fixture()
def doc(cert: dict) -> dict:
    """A private copy of the certificate to change."""
    return copy.deepcopy(cert)


def fails(doc: dict, trust: Trust) -> str:
    with pytest.raises(VerificationError) as info:
        verify_certificate(doc, trust)
    return str(info.value)


# -- a good certificate -----------------------------------------------------------------


def test_certificate_verifies_and_summary_is_right(chain: Chain, cert: dict, trust: Trust) -> None:
    snapshot = json.dumps(cert, sort_keys=True)
    s = verify_certificate(cert, trust)
    assert json.dumps(cert, sort_keys=True) == snapshot, "verify must not change the document"
    assert isinstance(s, Summary)

    readings = chain.readings(METER)
    gaps = chain.gaps(METER)
    assert len(readings) == 21 and len(gaps) == 1  # the fixture's layout

    assert (s.meter_id, s.chain_id) == (METER, chain.chain_id)
    assert (s.from_ns, s.to_ns) == (chain.from_ns, chain.to_ns)
    assert s.readings == len(readings)
    assert (s.first_seq, s.last_seq) == (1, len(readings))
    assert (s.first_ts_ns, s.last_ts_ns) == (readings[0].timestamp_ns, readings[-1].timestamp_ns)

    energy = s.counter("energy_import")
    assert energy is not None and energy.unit == "kWh"
    assert energy.first == readings[0].value("energy_import")
    assert energy.last == readings[-1].value("energy_import")
    assert energy.delta == pytest.approx(readings[-1].value("energy_import") - readings[0].value("energy_import"))
    assert energy.delta > 0
    # Only kWh registers are counters: power and voltage are not listed.
    assert {c.name for c in s.counters} == {"energy_import", "energy_export"}

    assert s.gaps == tuple(gaps)
    assert s.gaps[0].reason == "timeout" and s.gaps[0].missed_polls == 3

    # The blocks are those holding the meter's gateway's batches, found in the store.
    gw = next(g for g, ms in chain.meters.items() if METER in ms)
    heights = sorted({chain.store.find_batch(gw, seq).block_height for seq in range(1, s.batches + 1)})
    assert s.batches == 6
    assert chain.store.find_batch(gw, s.batches + 1) is None
    assert s.block_heights == tuple(heights)
    assert len(s.block_heights) >= 3
    assert s.block_heights != tuple(range(s.block_heights[0], s.block_heights[-1] + 1)), (
        "the fixture should leave a hole in the heights (a block holding only the other gateway)"
    )
    assert s.gateways == (gw,)
    assert s.clock == {"synchronized": 21}
    assert s.quality == {"ok": 20, "stale": 1}

    # Several blocks: consecutive ones are linked by consistency proofs, some non-empty.
    assert len(cert["consistency"]) == len(s.block_heights) - 1
    assert any(c["proof"] for c in cert["consistency"])
    assert len(cert["entries"]) == len(readings) + len(gaps)


def test_certificates_of_other_meters_and_sub_periods_verify(chain: Chain, trust: Trust) -> None:
    for meter in chain.meter_ids:
        doc = build_certificate(chain.store, chain.hub_signer, chain.chain_id, meter, chain.from_ns, chain.to_ns, chain.to_ns).document
        assert verify_certificate(doc, trust).readings == len(chain.readings(meter))
    # A period in the middle: only the entries inside it, seqs still contiguous.
    readings = chain.readings(METER)
    lo, hi = readings[4].timestamp_ns, readings[15].timestamp_ns
    doc = build_certificate(chain.store, chain.hub_signer, chain.chain_id, METER, lo, hi, hi).document
    s = verify_certificate(doc, trust)
    assert (s.first_seq, s.last_seq, s.readings) == (5, 15, 11)
    assert len(s.gaps) == 1


# -- tampering: every value, one at a time ------------------------------------------------

HEX = re.compile(r"^(?:[0-9a-f]{2})+$")
CLOCKS = ("unknown", "informative", "synchronized")
FLAGS = ("stale", "out_of_range", "counter_backwards", "counter_reset", "partial")
# The signed bytes whose every byte is changed (elsewhere hex strings get a few positions).
EVERY_BYTE = {("batches", 0, "header_bytes"), ("blocks", 0, "header_bytes"), ("blocks", 0, "commit_bytes")}
Path_ = tuple


def leaves(node, path: Path_ = ()) -> Iterator[tuple[Path_, object]]:  # noqa: ANN001
    if isinstance(node, dict):
        for k, v in node.items():
            yield from leaves(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from leaves(v, (*path, i))
    else:
        yield path, node


def containers(node, path: Path_ = ()) -> Iterator[tuple[Path_, object]]:  # noqa: ANN001
    if isinstance(node, dict | list):
        yield path, node
        for k, v in node.items() if isinstance(node, dict) else enumerate(node):
            yield from containers(v, (*path, k))


def get(doc, path: Path_):  # noqa: ANN001, ANN201
    for p in path:
        doc = doc[p]
    return doc


def _other_hex(c: str) -> str:
    return format((int(c, 16) + 1) % 16, "x")


def _other_char(c: str) -> str:
    if c.isdigit():
        return str((int(c) + 1) % 10)
    if c.isalpha():
        return "a" if c == "z" else "A" if c == "Z" else chr(ord(c) + 1)
    return "x"


def value_changes(path: Path_, value: object, k: int, more: bool) -> Iterator[tuple[str, object]]:
    """The changed values to try for one leaf.

    `k` rotates the position changed in strings; `more` adds further kinds of
    change (all leaves outside the bulk of the entries, which all look alike).
    """
    if isinstance(value, bool):
        yield "negated", not value
    elif isinstance(value, int):
        yield "+1", value + 1
        if more:
            yield "-1", value - 1
    elif isinstance(value, float):
        yield "nextafter up", math.nextafter(value, math.inf)
        if value != 0.0:
            yield "*(1+1e-9)", value * (1 + 1e-9)
        if more:
            yield "nextafter down", math.nextafter(value, -math.inf)
    elif isinstance(value, str):
        if HEX.match(value) and len(value) >= 16:
            if path in EVERY_BYTE:  # one nibble of every byte, high and low in turn
                positions = {2 * j + j % 2 for j in range(len(value) // 2)}
            else:
                positions = {0, len(value) - 1, (k * 37) % len(value)}
            for pos in sorted(positions):
                yield f"hex digit {pos}", value[:pos] + _other_hex(value[pos]) + value[pos + 1 :]
            if more:
                yield "upper case", value.upper() if value.upper() != value else value + "0"
        elif value == "":
            yield "empty -> x", "x"
        else:
            pos = (k * 7) % len(value)
            yield f"char {pos}", value[:pos] + _other_char(value[pos]) + value[pos + 1 :]
            if more:
                yield "appended", value + "x"
                yield "last char", value[:-1] + _other_char(value[-1])
        if path[-1] == "clock":
            for other in CLOCKS:
                if other != value:
                    yield f"clock {other}", other
        if len(path) >= 2 and path[-2] == "quality":
            for other in FLAGS:
                if other != value:
                    yield f"flag {other}", other
    else:
        raise AssertionError(f"unexpected JSON value at {path}: {value!r}")


def tampered(doc: dict) -> Iterator[tuple[str, Path_, str]]:
    """Change `doc` in place one way at a time, yield (what, path, new) while changed, then restore."""
    entries = doc["entries"]
    sampled = {0, len(entries) - 1}
    sampled |= {i for i, e in enumerate(entries) if "gap" in e or e["reading"]["quality"]}

    def bulk(path: Path_) -> bool:
        return path[:1] == ("entries",) and len(path) >= 2 and path[1] not in sampled

    for k, (path, value) in enumerate(list(leaves(doc))):
        parent = get(doc, path[:-1])
        for what, new in value_changes(path, value, k, more=not bulk(path)):
            assert new != value or type(new) is not type(value)
            parent[path[-1]] = new
            yield what, path, json.dumps(new)[:40]
            parent[path[-1]] = value

    # Changes that keep the convenience fields consistent, so that only the proofs can tell.
    for path, node in list(containers(doc)):
        if not isinstance(node, dict):
            continue
        for key in [k for k in node if k.endswith("_ns") and k[:-3] in node]:
            iso_key = key[:-3]
            old_ns, old_iso = node[key], node[iso_key]
            for delta in (1, -1, 10**9):
                node[key], node[iso_key] = old_ns + delta, iso_ns(old_ns + delta)
                yield f"{key} {delta:+} with {iso_key}", (*path, key), str(old_ns + delta)
            node[key], node[iso_key] = old_ns, old_iso
        if "quality" in node and isinstance(node["quality"], list):
            old = node["quality"]
            for flags in (["stale"], ["partial"], []):
                if flags != old:
                    node["quality"] = flags
                    yield f"quality {flags}", (*path, "quality"), str(flags)
            node["quality"] = old

    # Structure: delete, duplicate, swap list elements; delete keys; add an unknown key.
    for path, node in list(containers(doc)):
        if bulk(path):
            continue
        if isinstance(node, list):
            for i in range(len(node)):
                item = node.pop(i)
                yield "element removed", (*path, i), ""
                node.insert(i, item)
                node.insert(i, copy.deepcopy(item))
                yield "element duplicated", (*path, i), ""
                node.pop(i)
                if i + 1 < len(node) and node[i] != node[i + 1]:
                    node[i], node[i + 1] = node[i + 1], node[i]
                    yield "elements swapped", (*path, i), ""
                    node[i], node[i + 1] = node[i + 1], node[i]
        else:
            for key in list(node):
                value = node.pop(key)
                yield "key removed", (*path, key), ""
                node[key] = value
            node["comment"] = "nothing to see here"
            yield "unknown key added", (*path, "comment"), ""
            del node["comment"]


def test_any_single_change_fails_verification(cert: dict, trust: Trust) -> None:
    doc = copy.deepcopy(cert)
    snapshot = json.dumps(doc, sort_keys=True)
    verify_certificate(doc, trust)
    survived = []
    unnamed = []
    n = 0
    for what, path, new in tampered(doc):
        n += 1
        try:
            verify_certificate(doc, trust)
        except VerificationError as exc:
            if not str(exc).startswith("certificate"):
                unnamed.append(f"{'.'.join(map(str, path))} ({what}): {exc}")
        else:
            survived.append(f"{'.'.join(map(str, path))} ({what} -> {new})")
    assert json.dumps(doc, sort_keys=True) == snapshot, "the walk must restore the document"
    assert n > 2000, n
    print(f"{n} single changes, each failed verification")
    assert not survived, f"{len(survived)} of {n} changes still verify:\n" + "\n".join(survived[:40])
    assert not unnamed, f"{len(unnamed)} failures do not name where:\n" + "\n".join(unnamed[:40])


def _reading_entries(doc: dict) -> list[int]:
    return [i for i, e in enumerate(doc["entries"]) if "reading" in e]


def test_changed_reading_value_names_the_entry(doc: dict, trust: Trust) -> None:
    i = _reading_entries(doc)[7]
    q = next(q for q in doc["entries"][i]["reading"]["quantities"] if q["name"] == "energy_import")
    q["value"] = math.nextafter(q["value"], math.inf)
    msg = fails(doc, trust)
    assert f"certificate.entries[{i}].proof" in msg and "seq 8" in msg, msg


def test_changed_proof_element_names_the_proof(doc: dict, trust: Trust) -> None:
    p = doc["entries"][3]["proof"]
    p[1] = _other_hex(p[1][0]) + p[1][1:]
    assert "certificate.entries[3].proof" in fails(doc, trust)


def test_changed_block_signature_names_the_seal(doc: dict, trust: Trust) -> None:
    sig = doc["blocks"][1]["seals"][0]["signature"]
    doc["blocks"][1]["seals"][0]["signature"] = sig[:10] + _other_hex(sig[10]) + sig[11:]
    msg = fails(doc, trust)
    assert "certificate.blocks[1].seals[0].signature" in msg, msg


def test_changed_batch_signature_names_the_batch(doc: dict, trust: Trust) -> None:
    sig = doc["batches"][2]["signature"]
    doc["batches"][2]["signature"] = _other_hex(sig[0]) + sig[1:]
    msg = fails(doc, trust)
    assert "certificate.batches[2].signature" in msg and "gw-a" in msg, msg


def test_changed_batch_header_names_the_header_bytes(doc: dict, trust: Trust) -> None:
    doc["batches"][0]["header"]["created_ns"] += 1
    assert "certificate.batches[0].header_bytes" in fails(doc, trust)


def test_changed_consistency_proof_names_it(doc: dict, trust: Trust) -> None:
    k, item = next((k, c) for k, c in enumerate(doc["consistency"]) if c["proof"])
    item["proof"][0] = _other_hex(item["proof"][0][0]) + item["proof"][0][1:]
    assert f"certificate.consistency[{k}].proof" in fails(doc, trust)


def test_changed_period_names_the_issuer_signature(doc: dict, trust: Trust) -> None:
    doc["period"]["to_ns"] += 10**9
    doc["period"]["to"] = iso_ns(doc["period"]["to_ns"])
    assert "certificate.issuer.signature" in fails(doc, trust)


def test_removed_entry_batch_block_seal_fail(cert: dict, trust: Trust) -> None:
    def changed(f) -> str:  # noqa: ANN001
        d = copy.deepcopy(cert)
        f(d)
        return fails(d, trust)

    gap_index = next(i for i, e in enumerate(cert["entries"]) if "gap" in e)
    assert "certificate.issuer.signature" in changed(lambda d: d["entries"].pop(gap_index))
    assert "missing" in changed(lambda d: d["entries"].pop(5))  # a hole in the seqs
    # The last reading: seqs stay contiguous, only the issuer's signature can tell.
    assert "certificate.issuer.signature" in changed(lambda d: d["entries"].pop())
    assert "certificate.entries[" in changed(lambda d: d["entries"].insert(3, copy.deepcopy(d["entries"][3])))
    assert "certificate.issuer.signature" in changed(
        lambda d: d["entries"].__setitem__(slice(2, 4), [d["entries"][3], d["entries"][2]])
    )
    assert re.search(r"certificate\.entries\[\d+\]\.batch: no batch 5", changed(lambda d: d["batches"].pop()))
    assert "certificate.entries[0]" in changed(lambda d: d["batches"].pop(0))
    assert "certificate.consistency" in changed(lambda d: d["blocks"].pop(1))
    assert "certificate.blocks[0].seals" in changed(lambda d: d["blocks"][0]["seals"].clear())
    assert "twice" in changed(lambda d: d["blocks"][0]["seals"].append(dict(d["blocks"][0]["seals"][0])))
    assert "certificate.consistency" in changed(lambda d: d["consistency"].pop())
    assert "certificate.entries[0].note: unexpected key" in changed(lambda d: d["entries"][0].__setitem__("note", 1))
    assert "certificate.x: unexpected key" in changed(lambda d: d.__setitem__("x", None))


def test_wrong_key_ids_fail(chain: Chain, cert: dict, trust: Trust) -> None:
    gw_kid = chain.gateway_signers["gw-a"].key_id
    hub_kid = chain.hub_signer.key_id
    stranger = Signer.generate().key_id

    d = copy.deepcopy(cert)
    d["issuer"]["key_id"] = gw_kid  # a key in the trust file, but not the chain's
    assert "certificate.issuer.key_id" in fails(d, trust)

    d = copy.deepcopy(cert)
    d["blocks"][0]["seals"][0]["key_id"] = stranger
    assert "certificate.blocks[0].seals[0].key_id" in fails(d, trust)

    d = copy.deepcopy(cert)
    d["batches"][0]["header"]["key_id"] = hub_kid
    assert "certificate.batches[0].header" in fails(d, trust)


def test_wrong_trust_files_fail(chain: Chain, cert: dict) -> None:
    other_hub = Signer.generate().public_key
    msg = fails(cert, chain.trust(hub_key=other_hub))
    assert "certificate.blocks[0].seals[0].key_id" in msg, msg

    msg = fails(cert, chain.trust(without_gateway="gw-a"))
    assert "certificate.batches[0].header.key_id" in msg and "gw-a" in msg, msg

    # The gateway is known, with another key.
    doc = chain.trust_doc()
    doc["gateways"]["gw-a"] = trust_document({"gw-a": [other_hub]}, {})["gateways"]["gw-a"]
    assert "certificate.batches[0].header.key_id" in fails(cert, parse_trust(doc))

    # Another chain id in the trust file.
    doc = chain.trust_doc()
    doc["chains"] = {"other-chain": doc["chains"][chain.chain_id]}
    assert "certificate.chain_id" in fails(cert, parse_trust(doc))

    # A quorum of two replicas: one hub seal is not enough.
    doc = trust_document(
        {gw: [s.public_key] for gw, s in chain.gateway_signers.items()},
        {chain.chain_id: (2, [(chain.hub_replica_id, chain.hub_signer.public_key), ("hub-7b", other_hub)])},
    )
    msg = fails(cert, parse_trust(doc))
    assert "certificate.blocks[0].seals" in msg and "requires 2" in msg, msg


# -- the command line ---------------------------------------------------------------------


def _gridtrace(*args: str) -> subprocess.CompletedProcess:
    exe = REPO / ".venv" / "bin" / "gridtrace"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "gridtrace"]
    env = dict(os.environ, COLUMNS="200", NO_COLOR="1")
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=60, env=env)


@pytest.fixture(scope="module")
def files(chain: Chain, cert: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("cert-files")
    (d / "MTR-1.cert.json").write_text(json.dumps(cert, indent=2) + "\n", encoding="utf-8")
    (d / "trust.json").write_text(json.dumps(chain.trust_doc(), indent=2) + "\n", encoding="utf-8")
    return d


def test_cli_verify_ok_failed_and_json(files: Path, cert: dict, tmp_path: Path) -> None:
    trust_file = str(files / "trust.json")
    ok = _gridtrace("cert", "verify", str(files / "MTR-1.cert.json"), "--trust", trust_file)
    assert ok.returncode == 0, ok.stderr
    assert "VERIFIED" in ok.stdout and METER in ok.stdout
    assert "energy" in ok.stdout and "timeout" in ok.stdout

    bad = copy.deepcopy(cert)
    i = _reading_entries(bad)[2]
    q = bad["entries"][i]["reading"]["quantities"][0]
    q["value"] = q["value"] * (1 + 1e-9)
    bad_file = tmp_path / "bad.cert.json"
    bad_file.write_text(json.dumps(bad), encoding="utf-8")
    res = _gridtrace("cert", "verify", str(bad_file), "--trust", trust_file)
    assert res.returncode == 1
    out = res.stdout + res.stderr
    assert "FAILED" in out and f"certificate.entries[{i}].proof" in out, out
    assert "VERIFIED" not in out

    js = _gridtrace("cert", "verify", str(files / "MTR-1.cert.json"), "--trust", trust_file, "--json")
    assert js.returncode == 0, js.stderr
    summary = json.loads(js.stdout)
    assert summary["verified"] is True and summary["meter_id"] == METER
    assert summary["readings"] == 21 and summary["seq"] == [1, 21]
    assert [g["reason"] for g in summary["gaps"]] == ["timeout"]
    energy = next(c for c in summary["counters"] if c["name"] == "energy_import")
    assert energy["delta"] == pytest.approx(energy["last"] - energy["first"])


# -- standard tools: openssl pkeyutl -rawin ----------------------------------------------------


def _need_tool(name: str, ok: bool, why: str) -> None:
    if ok:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{name} is required in CI: {why}")
    pytest.skip(f"{name}: {why}")


def _openssl() -> str:
    exe = shutil.which("openssl")
    _need_tool("openssl", exe is not None, "not installed (apt-get install openssl)")
    help_ = subprocess.run([exe, "pkeyutl", "-help"], capture_output=True, text=True)
    _need_tool("openssl", "-rawin" in help_.stdout + help_.stderr, "pkeyutl has no -rawin (OpenSSL 3 needed)")
    return exe


def _verify_with_openssl(openssl: str, d: Path, key_pem: str, msg: bytes, sig: bytes) -> subprocess.CompletedProcess:
    (d / "key.pem").write_text(key_pem, encoding="ascii")
    (d / "msg.bin").write_bytes(msg)
    (d / "sig.bin").write_bytes(sig)
    return subprocess.run(
        [openssl, "pkeyutl", "-verify", "-pubin", "-inkey", "key.pem", "-rawin", "-in", "msg.bin", "-sigfile", "sig.bin"],
        cwd=d, capture_output=True, text=True, timeout=30,
    )


def test_signatures_check_with_openssl(files: Path, tmp_path: Path) -> None:
    openssl = _openssl()
    cert = json.loads((files / "MTR-1.cert.json").read_text())
    trust = json.loads((files / "trust.json").read_text())

    # (a) each batch's gateway signature over header_bytes, with the key named by the header.
    for b in cert["batches"]:
        gw, kid = b["header"]["gateway_id"], b["header"]["key_id"]
        pem = next(k["public_key"] for k in trust["gateways"][gw] if k["key_id"] == kid)
        res = _verify_with_openssl(openssl, tmp_path, pem, bytes.fromhex(b["header_bytes"]), bytes.fromhex(b["signature"]))
        assert res.returncode == 0 and "Signature Verified Successfully" in res.stdout, res.stdout + res.stderr

    # (b) each block seal over commit_bytes, and commit_bytes names sha256(header_bytes).
    replicas = trust["chains"][cert["chain_id"]]["replicas"]
    for blk in cert["blocks"]:
        header, commit = bytes.fromhex(blk["header_bytes"]), bytes.fromhex(blk["commit_bytes"])
        (tmp_path / "header.bin").write_bytes(header)
        dgst = subprocess.run(
            [openssl, "dgst", "-sha256", "-binary", "header.bin"], cwd=tmp_path, capture_output=True, timeout=30
        )
        assert dgst.returncode == 0
        assert dgst.stdout == commit[-32:] == hashlib.sha256(header).digest()
        assert dgst.stdout == block_hash(decode_block_header(header))
        for s in blk["seals"]:
            pem = next(r["public_key"] for r in replicas if r["key_id"] == s["key_id"])
            res = _verify_with_openssl(openssl, tmp_path, pem, commit, bytes.fromhex(s["signature"]))
            assert res.returncode == 0 and "Signature Verified Successfully" in res.stdout, res.stdout + res.stderr

    # A changed byte of the signed bytes, or of the signature, makes openssl fail.
    b = cert["batches"][0]
    pem = trust["gateways"][b["header"]["gateway_id"]][0]["public_key"]
    msg, sig = bytes.fromhex(b["header_bytes"]), bytes.fromhex(b["signature"])
    for pos in (0, len(msg) // 2, len(msg) - 1):
        bad = bytearray(msg)
        bad[pos] ^= 0x01
        res = _verify_with_openssl(openssl, tmp_path, pem, bytes(bad), sig)
        assert res.returncode != 0 and "Signature Verified Successfully" not in res.stdout
    bad_sig = bytearray(sig)
    bad_sig[5] ^= 0x80
    res = _verify_with_openssl(openssl, tmp_path, pem, msg, bytes(bad_sig))
    assert res.returncode != 0
    blk = cert["blocks"][0]
    commit = bytearray(bytes.fromhex(blk["commit_bytes"]))
    commit[-1] ^= 0x01
    hub_pem = replicas[0]["public_key"]
    res = _verify_with_openssl(openssl, tmp_path, hub_pem, bytes(commit), bytes.fromhex(blk["seals"][0]["signature"]))
    assert res.returncode != 0


def _doc_script() -> str:
    text = (REPO / "docs" / "certificate.md").read_text(encoding="utf-8")
    m = re.search(r"<!-- openssl-check:begin -->\s*```sh\n(.*?)```\s*<!-- openssl-check:end -->", text, re.S)
    assert m, "docs/certificate.md must hold the openssl check between openssl-check markers"
    return m.group(1)


def test_docs_openssl_steps_run_as_written(files: Path, tmp_path: Path) -> None:
    """The shell steps in docs/certificate.md, run verbatim with jq and xxd, verify; and fail on a change."""
    _openssl()
    _need_tool(
        "jq/xxd",
        bool(shutil.which("jq") and shutil.which("xxd") and shutil.which("bash")),
        "the docs' shell steps use them (scripts/install-system-deps.sh installs them)",
    )
    script = _doc_script()
    for name in ("MTR-1.cert.json", "trust.json"):
        shutil.copy(files / name, tmp_path / name)
    env = dict(os.environ, CERT="MTR-1.cert.json", TRUST="trust.json")
    res = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count("Signature Verified Successfully") == 2, res.stdout
    assert "block hash matches" in res.stdout

    # The same steps on a certificate whose batch header_bytes lost a byte's worth of truth.
    cert = json.loads((files / "MTR-1.cert.json").read_text())
    hb = cert["batches"][0]["header_bytes"]
    cert["batches"][0]["header_bytes"] = hb[:-1] + _other_hex(hb[-1])
    (tmp_path / "MTR-1.cert.json").write_text(json.dumps(cert))
    res = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode != 0
    assert "Signature Verified Successfully" not in res.stdout.split("\n")[0]


def test_fixture_entries_are_what_the_chain_holds(chain: Chain, cert: dict) -> None:
    """The certificate carries exactly the fixture's readings and gap, in time order."""
    got = []
    for e in cert["entries"]:
        if "reading" in e:
            got.append(("r", e["reading"]["seq"], e["reading"]["timestamp_ns"]))
        else:
            got.append(("g", e["gap"]["from_ns"], e["gap"]["to_ns"]))
    want = [
        ("r", x.seq, x.timestamp_ns) if isinstance(x, Reading) else ("g", x.from_ns, x.to_ns)
        for x in chain.entries[METER]
    ]
    assert got == want
    assert all(isinstance(x, Reading | Gap) for x in chain.entries[METER])


# -- malformed input: always a VerificationError naming where, never a crash ---------------

ODD_VALUES = (None, [], {}, "x", -1, 1.5, True, 2**64, float("nan"))


def test_values_of_the_wrong_type_or_range_fail_cleanly(cert: dict, trust: Trust) -> None:
    """Every leaf outside the bulk of the entries, replaced by values of other types and ranges."""
    doc = copy.deepcopy(cert)
    keep = {0, next(i for i, e in enumerate(doc["entries"]) if "gap" in e)}
    problems = []
    n = 0
    for path, value in list(leaves(doc)):
        if path[0] == "entries" and path[1] not in keep:
            continue
        parent = get(doc, path[:-1])
        for odd in ODD_VALUES:
            if type(odd) is type(value) and odd == value:
                continue
            parent[path[-1]] = odd
            n += 1
            try:
                verify_certificate(doc, trust)
                problems.append(f"{path} = {odd!r}: verified")
            except VerificationError as exc:
                if not str(exc).startswith("certificate"):
                    problems.append(f"{path} = {odd!r}: does not say where: {exc}")
            except Exception as exc:  # noqa: BLE001 - that is the point
                problems.append(f"{path} = {odd!r}: {type(exc).__name__}: {exc}")
            parent[path[-1]] = value
    assert n > 500
    assert not problems, "\n".join(problems[:30])


def test_out_of_range_timestamp_is_a_verification_error(cert: dict, trust: Trust) -> None:
    for path in [("issued_ns",), ("period", "from_ns"), ("entries", 0, "reading", "timestamp_ns")]:
        for ts in (10**21, -(10**30)):  # ValueError (year 33658), OverflowError (time_t)
            doc = copy.deepcopy(cert)
            get(doc, path[:-1])[path[-1]] = ts
            assert ".".join(map(str, path)).replace(".0.", "[0].") in fails(doc, trust)


def test_malformed_trust_file_is_a_trust_error(chain: Chain) -> None:
    from hub.certificates.trust import TrustError

    for field_ in ("gateways", "chains"):
        doc = chain.trust_doc()
        doc[field_] = ["not", "an", "object"]
        with pytest.raises(TrustError, match=field_):
            parse_trust(doc)


def test_cli_rejects_duplicate_keys(files: Path, tmp_path: Path) -> None:
    text = (files / "MTR-1.cert.json").read_text()
    i = text.index('"value":')
    dup = tmp_path / "dup.cert.json"
    dup.write_text(text[:i] + '"value": 9999.0, ' + text[i:], encoding="utf-8")
    res = _gridtrace("cert", "verify", str(dup), "--trust", str(files / "trust.json"))
    assert res.returncode == 1 and "FAILED" in res.stdout + res.stderr


# -- end to end through a running hub, on SQLite and on PostgreSQL ----------------------------


def test_a_running_hub_serves_a_certificate_that_verifies(tmp_path: Path, database_url: str) -> None:
    """Batches streamed to a real hub are sealed, and the certificate it serves over gRPC
    verifies against `hub trust`'s file; a changed reading in it fails, naming the entry."""
    import time

    import grpc

    from gridtrace.cli import main as gridtrace_main
    from hub.certificates.cli import pull_certificate
    from hub.certificates.trust import load_trust
    from hubharness import GatewaySim, RunningHub, init_hub, register_gateway
    from protos import ingest_pb2, ingest_pb2_grpc

    cfg = init_hub(tmp_path / "hub", block_interval=0.2, database_url=database_url)
    gw = GatewaySim.new("gw-1", METER)
    register_gateway(cfg, gw.gateway_id, gw.signer, tmp_path)
    with RunningHub(cfg):
        with grpc.insecure_channel(cfg.listen) as ch:
            for n in (3, 4):  # two streams, so the batches likely land in separate blocks
                assert len(list(ingest_pb2_grpc.IngestStub(ch).Stream(iter([gw.batch(n)]), timeout=10))) == 1
                time.sleep(0.3)
            query = ingest_pb2_grpc.QueryStub(ch)
            deadline = time.monotonic() + 10
            while query.GetStatus(ingest_pb2.StatusRequest()).batches_unsealed and time.monotonic() < deadline:
                time.sleep(0.1)
        text = pull_certificate(cfg.listen, METER, 0, 2**62, None)
    assert gridtrace_main(["hub", "trust", "--config", str(cfg.path), "-o", str(tmp_path / "trust.json")]) == 0
    trust = load_trust(tmp_path / "trust.json")
    doc = json.loads(text)
    s = verify_certificate(doc, trust)
    assert (s.meter_id, s.readings, s.batches, s.first_seq, s.last_seq) == (METER, 7, 2, 1, 7)
    assert s.gateways == (gw.gateway_id,)

    i = _reading_entries(doc)[4]
    q = next(q for q in doc["entries"][i]["reading"]["quantities"] if q["name"] == "energy_import")
    q["value"] = math.nextafter(q["value"], math.inf)
    assert f"certificate.entries[{i}].proof" in fails(doc, trust)
