"""The hub's store on both backends: SQLite and a real PostgreSQL (tests/pgserver.py).

The chain comes from `chainfixture`: real ingest checks, real `Store.store_batches`, real
block producer, so certificates built from each backend must verify offline, and what a
backend hands back must be exactly what was stored.
"""

from __future__ import annotations

import struct

import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import select, update

from chainfixture import Chain, build_chain
from hub.certificates.build import CertificateUnavailable, build_certificate
from hub.certificates.verify import VerificationError, verify_certificate
from hub.storage.engine import StoreError, engine_for
from hub.storage.payload import PayloadError
from protos.entrypack import pack_entries
from hub.storage.schema import batch_payloads
from hub.storage.store import new_batch, Store
from protos.records import Reading


@pytest.fixture()
def chain(database_url: str, tmp_path) -> Chain:  # noqa: ANN001
    c = build_chain(tmp_path / "chain", database_url)
    yield c
    c.store.close()


def _cert(chain: Chain, meter: str, lo: int | None = None, hi: int | None = None) -> dict:
    lo = chain.from_ns if lo is None else lo
    hi = chain.to_ns if hi is None else hi
    return build_certificate(chain.store, chain.hub_signer, chain.chain_id, meter, lo, hi, hi).document


def test_certificates_from_each_backend_verify_and_hold_every_entry(chain: Chain) -> None:
    trust = chain.trust()
    for meter in chain.meter_ids:
        doc = _cert(chain, meter)
        s = verify_certificate(doc, trust)
        assert s.readings == len(chain.readings(meter)) and len(s.gaps) == len(chain.gaps(meter))
        got = [
            ("r", e["reading"]["seq"], e["reading"]["timestamp_ns"]) if "reading" in e
            else ("g", e["gap"]["from_ns"], e["gap"]["to_ns"])
            for e in doc["entries"]
        ]
        want = [
            ("r", x.seq, x.timestamp_ns) if isinstance(x, Reading) else ("g", x.from_ns, x.to_ns)
            for x in chain.entries[meter]
        ]
        assert got == want
    # Multi-block certificates carry consistency proofs, read from the stored log.
    assert _cert(chain, "MTR-1")["consistency"]
    readings = chain.readings("MTR-1")
    s = verify_certificate(_cert(chain, "MTR-1", readings[4].timestamp_ns, readings[15].timestamp_ns), trust)
    assert (s.first_seq, s.last_seq, s.readings) == (5, 15, 11)


def test_a_period_without_entries_is_unavailable(chain: Chain) -> None:
    with pytest.raises(CertificateUnavailable, match="no sealed entries for meter MTR-1"):
        _cert(chain, "MTR-1", chain.to_ns + 10**9, chain.to_ns + 2 * 10**9)
    with pytest.raises(CertificateUnavailable):
        _cert(chain, "MTR-404")


def _payload_row(chain: Chain, batch_id: int):  # noqa: ANN202
    with chain.store.engine.connect() as c:
        return c.execute(select(batch_payloads).where(batch_payloads.c.batch_id == batch_id)).one()


def test_a_changed_stored_body_fails_the_certificate(chain: Chain) -> None:
    """A byte flipped in the database is caught by the clerk's check, whichever backend."""
    batch_id = chain.store.find_batch("gw-b", 2).id
    first_stored_len = struct.unpack_from(">I", _payload_row(chain, batch_id).offsets, 4)[0]
    # The last byte of the first stored body is the low byte of a reading's last value: still decodes.
    _flip(chain, batch_id, first_stored_len - 1)
    with pytest.raises(VerificationError, match="entries_root|proof"):
        verify_certificate(_cert(chain, "MTR-3"), chain.trust())


def test_a_changed_names_field_fails_the_certificate(chain: Chain) -> None:
    """The names field kept once per payload is spliced back into every reading of the batch;
    a byte changed in it changes every one of them, and the Merkle root catches it."""
    batch_id = chain.store.find_batch("gw-b", 2).id
    row = _payload_row(chain, batch_id)
    assert struct.unpack_from(">H", row.names)[0] >= 1  # the chain's readings share names fields
    before = chain.store.batch_bodies(batch_id)
    # Flip the last byte of the first field: a unit's last character (still valid UTF-8 ASCII).
    (length,) = struct.unpack_from(">I", row.names, 2)
    _flip(chain, batch_id, 2 + 4 + length - 1, column="names")
    after = chain.store.batch_bodies(batch_id)
    assert [len(b) for b in after] == [len(b) for b in before] and after != before
    with pytest.raises((VerificationError, PayloadError), match="entries_root|proof|does not decode"):
        verify_certificate(_cert(chain, "MTR-3"), chain.trust())


def test_a_damaged_names_blob_is_named(chain: Chain) -> None:
    batch_id = chain.store.find_batch("gw-a", 1).id
    names = bytes(_payload_row(chain, batch_id).names)
    for damaged, problem in [
        (names[:-1], "references for"),  # one reference byte short
        (names[:3], "cut short"),
        (names[:-2] + b"\x7f\xff", "names field 32767 of"),
    ]:
        with chain.store.engine.begin() as c:
            c.execute(update(batch_payloads).where(batch_payloads.c.batch_id == batch_id).values(names=damaged))
        with pytest.raises(PayloadError, match=f"payload of batch {batch_id}.*{problem}"):
            chain.store.batch_bodies(batch_id)


def test_a_body_that_no_longer_decodes_is_named(chain: Chain) -> None:
    batch_id = chain.store.find_batch("gw-b", 2).id
    _flip(chain, batch_id, 3)  # inside the domain tag of entry 0
    with pytest.raises(PayloadError, match=f"batch {batch_id}, entry 0"):
        _cert(chain, "MTR-3")


def _flip(chain: Chain, batch_id: int, pos: int, column: str = "bodies") -> None:
    with chain.store.engine.begin() as c:
        blob = bytearray(c.execute(
            select(batch_payloads.c[column]).where(batch_payloads.c.batch_id == batch_id)
        ).scalar_one())
        blob[pos] ^= 0x01
        c.execute(update(batch_payloads).where(batch_payloads.c.batch_id == batch_id).values({column: bytes(blob)}))


def test_a_damaged_payload_offsets_blob_is_named(chain: Chain) -> None:
    batch_id = chain.store.find_batch("gw-a", 1).id
    with chain.store.engine.begin() as c:
        c.execute(update(batch_payloads).where(batch_payloads.c.batch_id == batch_id).values(offsets=b"\x00\x01"))
    with pytest.raises(PayloadError, match=f"payload of batch {batch_id}: offsets"):
        _cert(chain, "MTR-1")


def test_counts_heads_and_lookups(chain: Chain) -> None:
    store = chain.store
    n_entries = sum(len(es) for es in chain.entries.values())
    assert store.counts() == (12, 0, n_entries)
    heads = store.gateway_heads()
    assert sorted(heads) == ["gw-a", "gw-b"] and {seq for seq, _ in heads.values()} == {6}
    for gw, (seq, digest) in heads.items():
        assert store.gateway_head(gw) == (seq, digest)
        b = store.find_batch(gw, seq)
        assert b is not None and b.hash == digest and b.block_height is not None
    assert store.find_batch("gw-a", 7) is None
    head = store.head()
    assert head is not None and head.height == len(chain.block_heights) and head.seals
    assert sum(store.block(h).batch_count for h in chain.block_heights) == 12
    assert store.unsealed_batches(10) == []


def test_a_group_with_a_duplicate_stores_nothing(chain: Chain) -> None:
    """One transaction per group: if any batch cannot be stored, none of the group is."""
    store = chain.store
    before = store.counts()
    stored = store.find_batch("gw-a", 6)
    bodies = store.batch_bodies(stored.id)
    fresh = new_batch("gw-x", 1, b"\x01" * 32, b"hdr", b"\x00" * 64, pack_entries(bodies[:1]), ("MTR-9",), (1,))
    again = new_batch("gw-a", 6, stored.hash, stored.header, stored.signature, pack_entries(bodies[:1]), ("MTR-9",), (1,))
    with pytest.raises(sa_exc.IntegrityError):
        store.store_batches([fresh, again], 1)
    assert store.counts() == before and store.find_batch("gw-x", 1) is None
    assert store.batch_bodies(stored.id) == bodies
    assert store.gateway_heads()["gw-a"] == (6, stored.hash) and "gw-x" not in store.gateway_heads()
    assert store.meter_entries("MTR-9", 0, 2**62) == []
    # The meter key made by the failed transaction must not linger in the writer's cache: the span
    # is found under MTR-9 (and its body, which is MTR-1's, is then caught as misfiled).
    store.store_batches([fresh], 2)
    with pytest.raises(PayloadError, match="indexed under meter MTR-9 but holds MTR-1"):
        store.meter_entries("MTR-9", 0, 2**62)
    assert store.counts()[0] == before[0] + 1 and store.gateway_heads()["gw-x"] == (1, fresh.hash)


def test_sealing_a_batch_twice_is_refused_and_rolled_back(chain: Chain) -> None:
    store = chain.store
    head = store.head()
    sealed = store.find_batch("gw-b", 1)
    with pytest.raises(StoreError, match=f"batch {sealed.id} was sealed twice"):
        store.append_block(
            head.height + 1, b"\x02" * 32, b"header", 0, [sealed.id], 1, head.log_size + 1,
            store.log_frontier(), [("k", b"\x00" * 64)],
        )
    assert store.head() == head


def test_a_database_of_another_chain_is_refused(database_url: str) -> None:
    store = Store(database_url)
    try:
        store.create("chain-a")
        with pytest.raises(StoreError, match="holds chain 'chain-a', not 'chain-b'"):
            store.create("chain-b")
        with pytest.raises(StoreError, match="holds chain 'chain-a', not 'chain-b'"):
            store.open_existing("chain-b")
        store.open_existing("chain-a")
    finally:
        store.close()


def test_postgresql_without_synchronous_commit_is_refused(postgres_server) -> None:  # noqa: ANN001
    name = postgres_server.new_database()
    try:
        postgres_server.admin(f'ALTER DATABASE "{name}" SET synchronous_commit = off')
        engine = engine_for(postgres_server.url(name))
        with pytest.raises(StoreError, match="synchronous_commit = off"):
            engine.connect().close()
        engine.dispose()
        postgres_server.admin(f'ALTER DATABASE "{name}" SET synchronous_commit = on')
        engine = engine_for(postgres_server.url(name))
        engine.connect().close()
        engine.dispose()
    finally:
        postgres_server.drop_database(name)


def test_postgresql_without_fsync_is_refused(postgres_server) -> None:  # noqa: ANN001
    name = postgres_server.new_database()
    try:
        postgres_server.admin("ALTER SYSTEM SET fsync = off")
        postgres_server.admin("SELECT pg_reload_conf()")
        engine = engine_for(postgres_server.url(name))
        with pytest.raises(StoreError, match="fsync = off"):
            engine.connect().close()
        engine.dispose()
    finally:
        postgres_server.admin("ALTER SYSTEM RESET fsync")
        postgres_server.admin("SELECT pg_reload_conf()")
        postgres_server.drop_database(name)


def test_a_postgresql_url_without_psycopg_is_refused() -> None:
    with pytest.raises(StoreError, match="use the psycopg driver"):
        engine_for("postgresql+psycopg2://gridtrace@127.0.0.1:1/hub")


def test_bulk_rows_read_back_exactly(database_url: str) -> None:
    """The bulk writer (executemany on SQLite, COPY BINARY on PostgreSQL) keeps every value as given."""
    from hub.storage.bulk import insert_rows
    from hub.storage.schema import entry_spans

    store = Store(database_url)
    try:
        store.create("bulk")
        rows = [
            (1, -5, 2**62, -(2**62), 2**63 - 1, 0, b""),
            (2**31 - 1, 0, 1, 0, 0, 7, bytes(range(256)) * 3),
            (3, 123_456, 9, 10**18, -(10**18), 2**31 - 1, b"\x00\xff" * 1000),
        ]
        cols = ("meter_key", "hour", "batch_id", "first_ns", "last_ns", "n", "idxs")
        with store.engine.begin() as c:
            insert_rows(c, entry_spans, cols, rows)
        with store.engine.connect() as c:
            got = [tuple(bytes(v) if isinstance(v, memoryview | bytes) else v for v in r)
                   for r in c.execute(select(*[entry_spans.c[k] for k in cols]).order_by(entry_spans.c.meter_key))]
        assert got == sorted(rows)
        # Inside a transaction that fails, nothing of the bulk write stays.
        with pytest.raises(sa_exc.IntegrityError), store.engine.begin() as c:
            insert_rows(c, entry_spans, cols, [(9, 9, 9, 0, 0, 0, b"")])
            insert_rows(c, entry_spans, cols, rows[:1])  # duplicate primary key
        with store.engine.connect() as c:
            assert c.execute(select(entry_spans.c.meter_key).where(entry_spans.c.meter_key == 9)).first() is None
    finally:
        store.close()


def test_background_checkpoints_keep_the_wal_bounded_and_lose_nothing(tmp_path) -> None:  # noqa: ANN001
    """SQLite with `background_checkpoints`: commits never checkpoint (the writer's connections
    have wal_autocheckpoint=0), the checkpointer thread copies the WAL back and restarts it
    under steady writes, and closing leaves every batch in the database file."""
    import os
    import time

    from hub.storage.engine import sqlite_url
    from protos.canonical import encode_reading_fields

    path = tmp_path / "hub.sqlite"
    store_obj = Store(sqlite_url(path), background_checkpoints=True)
    store_obj.create("chain-ckpt")
    assert store_obj.checkpointer is not None
    store_obj.checkpointer.interval_s, store_obj.checkpointer.restart_frames = 0.02, 8
    with store_obj.engine.connect() as c:
        assert c.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar_one() == 0
    names, units = [f"q{i:02d}" for i in range(41)], ["V"] * 41
    bodies = [encode_reading_fields("MTR-1", s, s, 0, 0, names, units, [float(s)] * 41) for s in range(1, 301)]
    payload = pack_entries(bodies)
    wal = f"{path}-wal"

    def store(seq: int) -> None:
        store_obj.store_batches(
            [new_batch("gw", seq, seq.to_bytes(32, "big"), b"h", b"s" * 64, payload, ("MTR-1",) * 300,
                      tuple(range(1, 301)))], seq,
        )

    store(1)
    one = os.path.getsize(wal)
    store(2)
    per_batch = os.path.getsize(wal) - one
    deadline = time.monotonic() + 10
    while store_obj.checkpointer.checkpoints == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert store_obj.checkpointer.checkpoints > 0
    # A restarted WAL is written again from its start: the file stays at its high-water mark
    # instead of growing by every batch.
    base = os.path.getsize(wal)
    n = 40
    for seq in range(3, n + 1):
        store(seq)
        time.sleep(0.03)
    assert os.path.getsize(wal) - base < 12 * per_batch, (base, os.path.getsize(wal), per_batch)
    store_obj.close()
    assert not os.path.exists(f"{path}-wal") or os.path.getsize(f"{path}-wal") == 0
    again = Store(sqlite_url(path))
    try:
        assert again.counts() == (n, n, n * 300)
        assert again.batch_bodies(again.find_batch("gw", n).id) == bodies
    finally:
        again.close()


def test_header_only_batches_seal_in_blocks_audit_by_header_and_take_their_entries_later(chain: Chain, tmp_path) -> None:  # noqa: ANN001
    """A replica with custody writes the batches it does not store as header-only rows with
    their block: the chain audits (entries by header count only), nothing claims entries it
    lacks, a backup keeps them header-only, and entries fetched later fill them in."""
    from hub.backup import copy_chain, new_batch as backup_batch
    from hub.chain.audit import audit_store
    from hub.storage.store import HeaderOnlyBatch
    from protos.merkle import CompactRange, leaf_hash

    src = chain.store
    dst = Store(f"sqlite:///{tmp_path / 'custody.sqlite'}")
    dst2 = Store(f"sqlite:///{tmp_path / 'custody-backup.sqlite'}")
    try:
        dst.create(chain.chain_id)
        for gw, keys in src.gateway_keys().items():
            for kid, pem in keys.items():
                dst.add_gateway(gw, kid, pem, 0)
        log = CompactRange()
        sealed = []
        for h in range(1, src.head().height + 1):
            blk, batches = src.block(h), src.block_batches(h)
            for b in batches:
                log.append(leaf_hash(b.hash))
            dst.append_block(h, blk.hash, blk.header, h, [
                HeaderOnlyBatch.of(b) for b in batches
            ], blk.entry_count, log.size, log, blk.seals, blk.quorum)
            sealed += batches
        ids = [dst.find_batch(b.gateway_id, b.seq).id for b in sealed]
        assert dst.counts() == (0, 0, 0) and dst.header_only(ids) == set(ids)
        assert list(dst.iter_entries()) == [] and dst.meter_entries("MTR-1", 0, 2**62) == []
        assert dst.gateway_heads() == {gw: (seq, h) for gw, (seq, h) in src.gateway_heads().items()}
        seal_keys = {chain.hub_signer.key_id: chain.hub_signer.public_key}
        report = audit_store(dst, chain.chain_id, seal_keys)
        assert report.ok and report.header_only == len(sealed) and report.entries == 0, report.findings[:3]

        copy_chain(dst, dst2, chain.chain_id, 0)
        ids2 = [dst2.find_batch(b.gateway_id, b.seq).id for b in sealed]
        assert dst2.header_only(ids2) == set(ids2) and audit_store(dst2, chain.chain_id, seal_keys).ok

        first = sealed[:3]
        full = [backup_batch(b, src.batch_bodies(b.id)) for b in first]
        tampered = backup_batch(sealed[3], src.batch_bodies(sealed[3].id))
        tampered = tampered.__class__(**{**tampered.__dict__, "header": tampered.header + b"x"})
        assert [b.hash for b in dst.fill_payloads([*full, tampered], 5)] == [b.hash for b in first]
        assert dst.fill_payloads(full, 6) == []  # already there
        assert dst.counts()[0] == 3 and len(dst.header_only(ids)) == len(ids) - 3
        filled = {e.batch_id for e in dst.iter_entries()}
        assert filled == set(ids[:3])
        report = audit_store(dst, chain.chain_id, seal_keys)
        assert report.ok and report.header_only == len(sealed) - 3
        assert report.entries == sum(b.entry_count for b in first)
    finally:
        dst.close()
        dst2.close()
