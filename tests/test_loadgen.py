"""The load generator (`gridtrace sim fleet`): real signed batches a hub accepts, receipts
checked as the agent checks them, and bad set-ups that end with an error naming the cause."""

from __future__ import annotations

import json
import os
import stat
import struct
from pathlib import Path

import pytest

from firmware_sim.loadgen import (
    FleetError,
    GatewayLoad,
    ReadingTemplate,
    ensure_keys,
    gateway_ids,
    percentile,
)
from gridtrace.cli import main as gridtrace_main
from hub.ingest.check import Placement, check_signed_batch, place_in_chain
from hubharness import RunningHub, init_hub, reading_layout, replace_entry
from protos import readings_pb2 as pb
from protos.canonical import decode_reading, encode_reading_fields
from protos.records import ZERO_HASH
from protos.signing import Signer

NAMES = ("current_l1", "energy_import", "voltage_l1")
UNITS = ("A", "kWh", "V")


def test_template_bodies_are_the_canonical_encoding():
    t = ReadingTemplate("MTR-7", NAMES, UNITS, (5.0, 1234.5, 230.0))
    for seq, ts in ((1, 0), (2, 1_700_000_000_123_456_789), (65, -5), (2**62, 2**62)):
        body = t.body(seq, ts)
        r = decode_reading(body)
        assert (r.meter_id, r.seq, r.timestamp_ns) == ("MTR-7", seq, ts)
        values = struct.unpack(">3d", body[-24:])
        assert body == encode_reading_fields("MTR-7", seq, ts, int(r.clock), int(r.quality), NAMES, UNITS, values)
    # values vary between readings, so rows are not all alike
    assert t.body(1, 0)[-24:] != t.body(2, 0)[-24:]


def test_batches_pass_the_hubs_checks_and_chain_up():
    signer = Signer.generate()
    gw = GatewayLoad("gw-load", signer, meters=3)
    keys = {"gw-load": {signer.key_id: signer.public_key}}
    head = None
    seen: dict[str, list[int]] = {}
    for expected_seq in (1, 2, 3):
        built = gw.next_batch(7, 1_700_000_000_000_000_000, 1000)
        msg = pb.SignedBatch.FromString(built.wire)
        checked = check_signed_batch(msg, keys)  # Merkle root, time range, Ed25519
        assert checked.header.seq == built.seq == expected_seq
        assert checked.batch.hash == built.hash and built.readings == 7
        assert place_in_chain(checked.header, head) is Placement.NEXT
        assert checked.header.prev_hash == (head[1] if head else ZERO_HASH)
        head = (checked.header.seq, checked.batch.hash)
        assert msg.HasField("packed_entries") and not msg.entry_bytes  # wire v3, as the agent sends
        for body in checked.batch.bodies():
            r = decode_reading(body)
            seen.setdefault(r.meter_id, []).append(r.seq)
    # readings round-robin over the meters, each meter numbering its own readings 1..n without a hole
    assert sorted(seen) == ["gw-load-m001", "gw-load-m002", "gw-load-m003"]
    for seqs in seen.values():
        assert seqs == list(range(1, len(seqs) + 1))


def test_a_tampered_batch_fails_the_hubs_check():
    signer = Signer.generate()
    built = GatewayLoad("gw-load", signer, meters=2).next_batch(4, 1_700_000_000_000_000_000, 1000)
    msg = pb.SignedBatch.FromString(built.wire)
    def bump_first_value(body: bytes) -> bytes:  # still a well-formed reading, another value
        at = reading_layout(body)["values"]
        value = struct.unpack_from(">d", body, at)[0] + 1.0
        return body[:at] + struct.pack(">d", value) + body[at + 8:]

    replace_entry(msg, 1, bump_first_value)
    with pytest.raises(Exception, match="entries_root"):
        check_signed_batch(msg, {"gw-load": {signer.key_id: signer.public_key}})


def test_keys_are_private_created_once_and_reused(tmp_path):
    ids = gateway_ids("site", 2)
    assert ids == ("site-0001", "site-0002")
    first = ensure_keys(tmp_path / "keys", ids)
    for gw in ids:
        assert stat.S_IMODE((tmp_path / "keys" / f"{gw}.key").stat().st_mode) == 0o600
        assert (tmp_path / "keys" / f"{gw}.pub.pem").read_text().startswith("-----BEGIN PUBLIC KEY-----")
    again = ensure_keys(tmp_path / "keys", ids)
    assert {gw: s.key_id for gw, s in again.items()} == {gw: s.key_id for gw, s in first.items()}
    os.chmod(tmp_path / "keys" / "site-0002.key", 0o644)
    with pytest.raises(FleetError, match=r"site-0002.*chmod 600"):
        ensure_keys(tmp_path / "keys", ids)


def test_percentile_is_nearest_rank():
    values = sorted(float(i) for i in range(1, 101))
    assert percentile(values, 50) == 50.0 and percentile(values, 99) == 99.0 and percentile(values, 100) == 100.0
    assert percentile([3.0], 99) == 3.0 and percentile([], 50) is None


# -- against a real hub (TLS, as in production) ------------------------------------------


@pytest.fixture
def tls_hub(tmp_path):
    """A TLS hub that knows the gateways lg-0001 and lg-0002 (keys in tmp_path/keys) from its start."""
    cfg = init_hub(tmp_path / "hub", insecure=False)
    _register(cfg.path, tmp_path / "keys")
    with RunningHub(cfg) as hub:
        yield hub


def _fleet(hub: RunningHub, keys: Path, *extra: str, prefix: str = "lg", gateways: int = 2) -> list[str]:
    d = hub.cfg.path.parent
    return ["sim", "fleet", "--hub", hub.address, "--ca", str(d / "tls" / "ca.pem"),
            "--hub-key", str(d / "hub.pub.pem"), "--keys-dir", str(keys), "--gateway-prefix", prefix,
            "--gateways", str(gateways), *extra]


def _register(hub_toml: Path, keys: Path, prefix: str = "lg", gateways: int = 2) -> None:
    assert gridtrace_main(["sim", "fleet", "--keys-dir", str(keys), "--gateway-prefix", prefix,
                           "--gateways", str(gateways), "--keys-only"]) == 0
    for gw in gateway_ids(prefix, gateways):
        assert gridtrace_main(["hub", "gateway", "add", gw, "--public-key", str(keys / f"{gw}.pub.pem"),
                               "--config", str(hub_toml)]) == 0


def test_fleet_streams_signed_batches_that_the_hub_stores_and_receipts(tls_hub, tmp_path, capsys):
    keys = tmp_path / "keys"
    capsys.readouterr()
    code = gridtrace_main(_fleet(tls_hub, keys, "--processes", "2", "--meters", "3", "--batch-size", "20",
                                 "--rate", "400", "--seconds", "1.5", "--prebuild", "--json"))
    out = capsys.readouterr().out
    assert code == 0, out
    figures = json.loads(out.strip().splitlines()[-1])
    # 400 readings/s for 1.5 s in batches of 20 over 2 gateways: 15 batches each
    assert figures["batches_sent"] == figures["batches_receipted"] == 30
    assert figures["readings_receipted"] == 600 and figures["errors"] == []
    assert figures["receipt_p50_ms"] > 0 and figures["receipt_p99_ms"] >= figures["receipt_p50_ms"]
    assert 200 < figures["send_readings_per_s"] < 800  # paced, not as fast as possible
    assert figures["last_seq"] == {"lg-0001": 15, "lg-0002": 15}
    store = tls_hub.store()
    n_batches, _, n_entries = store.counts()
    heads = store.gateway_heads()
    assert (n_batches, n_entries) == (30, 600)
    assert {gw: seq for gw, (seq, _) in heads.items()} == figures["last_seq"]


def test_unpaced_fleet_sends_everything_it_built_to_a_plaintext_hub(tmp_path, capsys):
    cfg = init_hub(tmp_path / "hub", insecure=True)
    keys = tmp_path / "keys"
    _register(cfg.path, keys, gateways=1)
    with RunningHub(cfg) as hub:
        capsys.readouterr()
        code = gridtrace_main(["sim", "fleet", "--hub", hub.address, "--insecure", "--hub-key",
                               str(cfg.path.parent / "hub.pub.pem"), "--keys-dir", str(keys), "--gateway-prefix",
                               "lg", "--gateways", "1", "--meters", "2", "--batch-size", "10", "--rate", "0",
                               "--max-readings", "200", "--seconds", "30", "--prebuild", "--json"])
        figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert code == 0 and figures["readings_receipted"] == 200 and figures["window_s"] < 30
        n_batches, _, n_entries = hub.store().counts()
        assert (n_batches, n_entries) == (20, 200)


def test_unregistered_gateway_is_named_with_the_fix(tls_hub, tmp_path, capsys):
    code = gridtrace_main(_fleet(tls_hub, tmp_path / "keys", "--gateways", "1", "--rate", "100", "--seconds", "1",
                                 "--batch-size", "10", prefix="stranger"))
    err = capsys.readouterr().err
    assert code == 1
    assert "rejected gateway stranger-0001" in err and "not registered" in err
    assert "gridtrace hub gateway add stranger-0001" in err


def test_receipts_signed_by_another_key_are_refused(tls_hub, tmp_path, capsys):
    keys = tmp_path / "keys"
    impostor = tmp_path / "impostor"
    impostor.mkdir()
    from protos.signing import create_key_pair

    create_key_pair(impostor, "hub")
    args = _fleet(tls_hub, keys, "--gateways", "1", "--rate", "100", "--seconds", "1", "--batch-size", "10")
    args[args.index("--hub-key") + 1] = str(impostor / "hub.pub.pem")
    code = gridtrace_main(args)
    assert code == 1
    assert "signed by unknown hub key" in capsys.readouterr().err


def test_unreachable_hub_and_wrong_ca_are_named(tls_hub, tmp_path, capsys):
    from hubharness import free_port

    keys = tmp_path / "keys"
    base = _fleet(tls_hub, keys, "--gateways", "1", "--rate", "100", "--seconds", "1")
    dead = list(base)
    dead[dead.index("--hub") + 1] = f"127.0.0.1:{free_port()}"
    assert gridtrace_main(dead) == 1
    assert "cannot reach the hub" in capsys.readouterr().err

    other = init_hub(tmp_path / "other", insecure=False)
    wrong_ca = list(base)
    wrong_ca[wrong_ca.index("--ca") + 1] = str(other.path.parent / "tls" / "ca.pem")
    assert gridtrace_main(wrong_ca) == 1
    assert "TLS handshake failed" in capsys.readouterr().err

    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("hello")
    bad = list(base)
    bad[bad.index("--ca") + 1] = str(not_pem)
    assert gridtrace_main(bad) == 1
    assert "not a PEM certificate" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--prebuild"], "--prebuild with --rate 0 needs --max-readings"),
        (["--insecure"], "--insecure and --ca contradict"),
        (["--processes", "3"], "--processes 3 is more than --gateways 2"),
    ],
)
def test_bad_arguments_name_themselves(tmp_path, capsys, extra, message):
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    code = gridtrace_main(["sim", "fleet", "--hub", "127.0.0.1:1", "--ca", str(ca), "--hub-key", str(ca),
                           "--keys-dir", str(tmp_path / "k"), "--gateways", "2", *extra])
    assert code == 2
    assert message in capsys.readouterr().err


def test_missing_hub_key_is_asked_for(tmp_path, capsys):
    code = gridtrace_main(["sim", "fleet", "--hub", "127.0.0.1:1", "--insecure", "--keys-dir", str(tmp_path)])
    assert code == 2 and "--hub-key" in capsys.readouterr().err
