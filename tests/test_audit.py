"""`hub verify` audits every stored block and batch and names the first thing that is wrong;
`hub backup` and `hub restore` copy a chain and fail loudly when the copy does not check out.
Tampering is done on the stored bytes, as damage or an attacker with database access would."""

from __future__ import annotations

import shutil
import time

import grpc
import pytest
from sqlalchemy import select, update

from gridtrace.cli import main as gridtrace_main
from hub.chain.audit import BatchRecord, BlockRecord, ChainAudit, audit_store
from hub.config import load_hub_config
from hub.ingest.check import check_signed_batch
from hub.storage.payload import unpack_payload
from protos.entrypack import EntryPack, pack_entries
from hub.storage.schema import batch_payloads, batches, blocks, seals
from hub.storage.store import Store
from protos import ingest_pb2_grpc
from protos.signing import Signer, parse_public_key_pem

from hubharness import GatewaySim, RunningHub, init_hub, register_gateway
from pgserver import empty_database


def _stream(cfg, messages) -> None:  # noqa: ANN001
    with grpc.insecure_channel(cfg.listen) as ch:
        assert len(list(ingest_pb2_grpc.IngestStub(ch).Stream(iter(messages), timeout=10))) == len(messages)


# `hub verify` and backup/restore also run with the hub on a real PostgreSQL server.
on_both_databases = pytest.mark.parametrize("chain", ["sqlite", "postgresql"], indirect=True)


@pytest.fixture()
def chain(request, tmp_path):
    """A hub database with 3 blocks from two gateways and one batch not yet in a block
    (SQLite unless the test asks for "postgresql")."""
    (tmp_path / "hub").mkdir()
    with empty_database(getattr(request, "param", "sqlite"), request, tmp_path / "hub") as url:
        yield _fill_chain(tmp_path, init_hub(tmp_path / "hub", block_interval=60.0, database_url=url))


def _fill_chain(tmp_path, cfg):  # noqa: ANN001, ANN202
    gws = [GatewaySim.new("gw-1", "MTR-1"), GatewaySim.new("gw-2", "MTR-2")]
    for g in gws:
        register_gateway(cfg, g.gateway_id, g.signer, tmp_path)
    for round_ in range(3):
        with RunningHub(cfg):  # each stop seals what was receipted: one block per round
            _stream(cfg, [gws[0].batch(3 + round_), gws[0].batch(2)])
            _stream(cfg, [gws[1].batch(4)])
    store = Store(cfg.database_url)
    keys = {g: {k: parse_public_key_pem(p) for k, p in ks.items()} for g, ks in store.gateway_keys().items()}
    store.store_batches([check_signed_batch(gws[1].batch(5), keys).batch], time.time_ns())
    assert store.head().height == 3 and store.counts() == (10, 1, 35)
    return cfg


def _verify(cfg, capsys) -> tuple[int, str, str]:  # noqa: ANN001
    capsys.readouterr()
    code = gridtrace_main(["hub", "verify", "--config", str(cfg.path)])
    out = capsys.readouterr()
    return code, out.out, out.err


def _flip(data: bytes, at: int = -1) -> bytes:
    b = bytearray(data)
    b[at] ^= 0x01
    return bytes(b)


@on_both_databases
def test_a_clean_chain_checks_out(chain, capsys):
    code, out, err = _verify(chain, capsys)
    assert code == 0, err
    assert "3 blocks, 10 batches" in out and "all check out" in out


def _batch_id(store: Store, gateway: str, seq: int) -> int:
    return store.find_batch(gateway, seq).id


def _edit_entries(c, bid: int, change) -> None:  # noqa: ANN001
    """Rewrite a stored batch's entry bodies (its payload: bodies, offsets, names) with `change`
    applied to the list of bodies, as someone with write access to the database could."""
    row = c.execute(select(batch_payloads).where(batch_payloads.c.batch_id == bid)).one()
    bodies = unpack_payload(EntryPack(bytes(row.bodies), bytes(row.offsets), bytes(row.names)), "test")
    p = pack_entries(change(bodies))
    c.execute(update(batch_payloads).where(batch_payloads.c.batch_id == bid).values(
        bodies=p.bodies, offsets=p.offsets, names=p.names))


BODY_FINDING = "block 2, gateway gw-1 batch 3: entries root in the header is not the root over the stored entries"


@pytest.mark.parametrize(
    "tamper,expected",
    [
        ("body", BODY_FINDING),
        ("batch-signature", "block 2, gateway gw-1 batch 4: signature does not verify"),
        ("batch-header", "block 2, gateway gw-1 batch 3: stored hash is not the hash of the stored header"),
        ("block-header", "block 2: stored hash is not the hash of the stored header"),
        ("seal", "block 2: seal by key"),
        ("unsealed-body", "unsealed, gateway gw-2 batch 4: entries root"),
        ("missing-entry", "block 2, gateway gw-1 batch 3: header says 4 entries, 3 are stored"),
    ],
)
def test_tampering_is_found_and_named(chain, capsys, tamper, expected):
    store = Store(chain.database_url)
    with store.engine.begin() as c:
        if tamper in ("body", "unsealed-body", "missing-entry"):
            gw, seq = ("gw-2", 4) if tamper == "unsealed-body" else ("gw-1", 3)
            bid = _batch_id(store, gw, seq)
            if tamper == "missing-entry":
                _edit_entries(c, bid, lambda bodies: bodies[:1] + bodies[2:])
            else:
                _edit_entries(c, bid, lambda bodies: [bodies[0], _flip(bodies[1]), *bodies[2:]])
        elif tamper == "batch-signature":
            bid = _batch_id(store, "gw-1", 4)
            sig = c.execute(select(batches.c.signature).where(batches.c.id == bid)).scalar_one()
            c.execute(update(batches).where(batches.c.id == bid).values(signature=_flip(bytes(sig), 0)))
        elif tamper == "batch-header":
            bid = _batch_id(store, "gw-1", 3)
            hdr = c.execute(select(batches.c.header).where(batches.c.id == bid)).scalar_one()
            c.execute(update(batches).where(batches.c.id == bid).values(header=_flip(bytes(hdr))))
        elif tamper == "block-header":
            hdr = c.execute(select(blocks.c.header).where(blocks.c.height == 2)).scalar_one()
            c.execute(update(blocks).where(blocks.c.height == 2).values(header=_flip(bytes(hdr))))
        elif tamper == "seal":
            sig = c.execute(select(seals.c.signature).where(seals.c.height == 2)).scalar_one()
            c.execute(update(seals).where(seals.c.height == 2).values(signature=_flip(bytes(sig), 5)))
    code, _, err = _verify(chain, capsys)
    assert code == 1
    first = err.splitlines()[0]
    assert "FAILED at " in first and expected in first, err


@pytest.mark.parametrize("chain", ["postgresql"], indirect=True)
def test_a_changed_reading_in_a_postgresql_database_is_found(chain, capsys):
    test_tampering_is_found_and_named(chain, capsys, "body", BODY_FINDING)


def test_a_rewritten_block_with_a_fresh_hash_breaks_the_next_link_and_its_seal(chain, capsys):
    from protos.canonical import block_hash, decode_block_header, encode_block_header
    import dataclasses

    store = Store(chain.database_url)
    old = decode_block_header(store.block(2).header)
    forged = dataclasses.replace(old, time_ns=old.time_ns + 1)
    with store.engine.begin() as c:
        c.execute(update(blocks).where(blocks.c.height == 2)
                  .values(header=encode_block_header(forged), hash=block_hash(forged)))
    code, _, err = _verify(chain, capsys)
    assert code == 1
    assert "block 2: seal by key" in err.splitlines()[0]
    assert "block 3: prev_hash is not the hash of the previous block's header" in err


def test_a_seal_by_an_unknown_key_does_not_count(chain):
    store = Store(chain.database_url)
    stranger = Signer.generate()
    report = audit_store(store, chain.chain_id, {stranger.key_id: stranger.public_key})
    assert not report.ok
    assert "not a configured sealing key" in str(report.findings[0])
    assert "0 valid seals, 1 needed" in str(report.findings[1])


def test_the_core_finds_a_batch_that_skips_the_gateways_chain():
    gw = GatewaySim.new()
    first, second = gw.batch(2), gw.batch(2)
    keys = {gw.gateway_id: {gw.signer.key_id: gw.signer.public_key}}
    audit = ChainAudit("c", {}, keys, quorum=0)
    checked = check_signed_batch(second, keys).batch
    rec = BatchRecord(checked.gateway_id, checked.seq, checked.hash, checked.header, checked.signature,
                      checked.bodies())
    (finding,) = audit.check_unsealed([rec])
    assert "gateway gw-1 batch 2: does not follow the gateway's previous batch (expected batch 1)" in str(finding)
    assert first is not None
    assert audit.check_block(BlockRecord(1, b"x", b"not a header", ()), [])[0].problem.startswith(
        "stored header does not decode")


# ---------------------------------------------------------------------------
# Backup and restore.
# ---------------------------------------------------------------------------


def _new_hub_with_same_key(tmp_path, source_cfg, database_url=None):  # noqa: ANN001, ANN202
    cfg = init_hub(tmp_path / "restored", database_url=database_url)
    for name in ("hub.key", "hub.pub.pem"):
        shutil.copy2(source_cfg.path.parent / name, cfg.path.parent / name)
    return load_hub_config(cfg.path)


def _snapshot(store: Store) -> tuple:
    head = store.head()
    out = []
    for h in range(1, head.height + 1):
        blk = store.block(h)
        out.append((blk.hash, blk.header, blk.seals, blk.log_size))
        for b in store.block_batches(h):
            out.append((b.gateway_id, b.seq, b.hash, b.header, b.signature, b.stored_ns, b.block_index,
                        b.log_index, tuple(store.batch_bodies(b.id))))
    for b in store.unsealed_batches(100):
        out.append((b.gateway_id, b.seq, b.hash, b.stored_ns, tuple(store.batch_bodies(b.id))))
    return tuple(out), store.log_frontier().to_json(), store.gateway_keys(), store.counts()


@pytest.mark.parametrize(
    "chain,target", [("sqlite", "sqlite"), ("sqlite", "postgresql"), ("postgresql", "sqlite")], indirect=["chain"]
)
def test_backup_then_restore_gives_the_same_chain(chain, target, request, tmp_path, capsys):
    """A backup (a SQLite file) restores into either database; the restored chain is audited."""
    (tmp_path / "restored").mkdir()
    with empty_database(target, request, tmp_path / "restored") as url:
        _backup_and_restore(chain, url, tmp_path, capsys)


def _backup_and_restore(chain, target_url, tmp_path, capsys):  # noqa: ANN001, ANN202
    backup = tmp_path / "backup.sqlite"
    assert gridtrace_main(["hub", "backup", "--config", str(chain.path), "--output", str(backup)]) == 0
    out = capsys.readouterr().out
    assert "3 blocks, 10 batches" in out and "all check out" in out
    assert backup.stat().st_mode & 0o077 == 0
    # a backup never overwrites
    assert gridtrace_main(["hub", "backup", "--config", str(chain.path), "--output", str(backup)]) == 2

    target = _new_hub_with_same_key(tmp_path, chain, target_url)
    assert target.database_url == target_url
    capsys.readouterr()
    assert gridtrace_main(["hub", "restore", "--config", str(target.path), "--input", str(backup)]) == 0
    out = capsys.readouterr().out
    assert "restored 3 blocks, 10 batches" in out and "restored chain: 3 blocks" in out
    assert _snapshot(Store(target.database_url)) == _snapshot(Store(chain.database_url))
    m1 = Store(chain.database_url).meter_entries("MTR-1", 0, 2**62)
    m2 = Store(target.database_url).meter_entries("MTR-1", 0, 2**62)
    assert [e for _, e in m1] == [e for _, e in m2] and len(m1) == 18

    # the restored hub serves and keeps sealing on top of the restored chain
    gw = GatewaySim.new("gw-3", "MTR-3")
    register_gateway(target, gw.gateway_id, gw.signer, tmp_path)
    with RunningHub(target):
        _stream(target, [gw.batch(2)])
    assert Store(target.database_url).head().height == 4
    assert gridtrace_main(["hub", "verify", "--config", str(target.path)]) == 0

    # restoring again into a database that holds a chain is refused
    capsys.readouterr()
    assert gridtrace_main(["hub", "restore", "--config", str(target.path), "--input", str(backup)]) == 1
    assert "needs an empty database" in capsys.readouterr().err


def test_restore_of_a_damaged_backup_fails_naming_the_first_bad_batch(chain, tmp_path, capsys):
    backup = tmp_path / "backup.sqlite"
    assert gridtrace_main(["hub", "backup", "--config", str(chain.path), "--output", str(backup)]) == 0
    damaged = Store(f"sqlite:///{backup}")
    bid = damaged.find_batch("gw-2", 2).id
    with damaged.engine.begin() as c:
        _edit_entries(c, bid, lambda bodies: [_flip(bodies[0], 40), *bodies[1:]])
    damaged.close()
    target = _new_hub_with_same_key(tmp_path, chain)
    capsys.readouterr()
    assert gridtrace_main(["hub", "restore", "--config", str(target.path), "--input", str(backup)]) == 1
    err = capsys.readouterr().err
    assert "restored chain: FAILED at block 2, gateway gw-2 batch 2" in err
    assert "do not start the hub on it" in err


def test_restore_under_another_hub_key_needs_the_sealing_key(chain, tmp_path, capsys):
    backup = tmp_path / "backup.sqlite"
    assert gridtrace_main(["hub", "backup", "--config", str(chain.path), "--output", str(backup)]) == 0
    target = init_hub(tmp_path / "other")  # a new hub key
    capsys.readouterr()
    assert gridtrace_main(["hub", "restore", "--config", str(target.path), "--input", str(backup)]) == 1
    assert "block 1: seal by key" in capsys.readouterr().err
    other = init_hub(tmp_path / "other2")
    assert gridtrace_main(["hub", "restore", "--config", str(other.path), "--input", str(backup),
                           "--seal-key", str(chain.path.parent / "hub.pub.pem")]) == 0


def test_deep_audit_decodes_every_entry(tmp_path, capsys):
    """A batch the gateway signed over bytes that are not an entry: the signature and root hold,
    so only the deep audit, which decodes each body, finds it."""
    from hub.storage.store import new_batch
    from protos.batch import seal_batch
    from protos.canonical import encode_batch_header
    from protos.records import ZERO_HASH

    cfg = init_hub(tmp_path / "hub")
    gw = GatewaySim.new()
    register_gateway(cfg, gw.gateway_id, gw.signer, tmp_path)
    now = time.time_ns()
    sealed = seal_batch(gw.signer, gw.gateway_id, 1, ZERO_HASH, [b"\x01not an entry"], [now], now)
    Store(cfg.database_url).store_batches(
        [new_batch(gw.gateway_id, 1, sealed.hash, encode_batch_header(sealed.header), sealed.signature,
                  pack_entries([b"\x01not an entry"]), ("MTR-1",), (now,))], now,
    )
    capsys.readouterr()
    assert gridtrace_main(["hub", "verify", "--config", str(cfg.path)]) == 0
    assert gridtrace_main(["hub", "verify", "--config", str(cfg.path), "--deep"]) == 1
    assert "FAILED at unsealed, gateway gw-1 batch 1: entry 0 does not decode" in capsys.readouterr().err
