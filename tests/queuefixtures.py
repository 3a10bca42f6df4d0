"""Shared fixtures and helpers for the tests of edge/queue.py (the agent's durable queue):
readings, sealing, the q/qpath fixtures, and the helpers several test files use
(open gaps, bounded-disk fill rounds, a queue file of the previous release).

The q and qpath fixtures reach every test through pytest_plugins in conftest.py."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from edge.queue import DurableQueue
from protos.batch import seal_batch
from protos.records import (
    ClockStatus,
    Quality,
    Quantity,
    Reading,
)
from protos.signing import Signer

T0 = 1_700_000_000_000_000_000
S = 10**9
GW = "gw1"


def reading(meter: str, seq: int, ts: int | None = None) -> Reading:
    return Reading(
        meter_id=meter,
        seq=seq,
        timestamp_ns=T0 + seq * S if ts is None else ts,
        clock=ClockStatus.SYNCHRONIZED,
        quality=Quality.OK,
        quantities=(Quantity("energy_import", "kWh", float(seq)), Quantity("power", "W", 100.0 + seq)),
    )


SIGNER = Signer.generate()


def sealer(signer: Signer = SIGNER, gateway_id: str = GW, created_ns: int = T0):
    def seal(seq, prev_hash, bodies, timestamps):
        b = seal_batch(signer, gateway_id, seq, prev_hash, bodies, timestamps, created_ns)
        return b.header, b.signature, b.hash

    return seal


@pytest.fixture
def qpath(tmp_path) -> Path:
    return tmp_path / "queue.sqlite"


@pytest.fixture
def q(qpath):
    queue = DurableQueue(qpath, GW)
    yield queue
    queue.close()


def all_entries(path: Path) -> list:
    """Every entry row in the file, in insertion order (read with a separate connection)."""
    from protos.canonical import decode_entry

    db = sqlite3.connect(path)
    try:
        return [decode_entry(b) for (b,) in db.execute("SELECT body FROM entries ORDER BY id")]
    finally:
        db.close()


def seal_all(queue: DurableQueue, max_entries: int = 10_000, signer: Signer = SIGNER) -> list:
    headers = []
    while (h := queue.seal_next_batch(max_entries, sealer(signer))) is not None:
        headers.append(h)
    return headers


def _open_gaps(path: Path) -> list[tuple]:
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT meter_id, from_ns, to_ns, reason, missed FROM open_gaps ORDER BY meter_id").fetchall()
    finally:
        db.close()



LIMIT = 100_000  # bytes; about 600 small readings


def _fill(q: DurableQueue, meters: list[str], ts: int) -> tuple[int, int]:
    """One poll round for every meter; returns (stored, refused)."""
    before = {m: q.next_seq(m) for m in meters}
    q.append_readings([reading(m, before[m], ts=ts) for m in meters])
    stored = sum(q.next_seq(m) - before[m] for m in meters)
    return stored, len(meters) - stored



# The previous release's schema, verbatim: a file it wrote must open and keep working.
OLD_SCHEMA = """
CREATE TABLE IF NOT EXISTS meter_seq (meter_id TEXT PRIMARY KEY, last_seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY AUTOINCREMENT, meter_id TEXT NOT NULL, ts_ns INTEGER NOT NULL,
    body BLOB NOT NULL, batch_seq INTEGER);
CREATE INDEX IF NOT EXISTS entries_unbatched ON entries (batch_seq, id);
CREATE TABLE IF NOT EXISTS open_gaps (
    meter_id TEXT PRIMARY KEY, from_ns INTEGER NOT NULL, to_ns INTEGER NOT NULL,
    reason TEXT NOT NULL, missed INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY, header BLOB NOT NULL, signature BLOB NOT NULL, hash BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS chain (
    id INTEGER PRIMARY KEY CHECK (id = 1), gateway_id TEXT NOT NULL, last_seq INTEGER NOT NULL,
    last_hash BLOB NOT NULL);
"""


def _old_queue(path: Path) -> bytes:
    """A file as the previous release left it: two receipted-and-deleted batches' worth of
    history, one sealed batch, unbatched readings and an open gap. Returns the batch hash."""
    from protos.canonical import encode_batch_header, encode_reading

    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(OLD_SCHEMA)
    rs = [reading("MTR-1", s) for s in range(3, 7)]
    bodies = [encode_reading(r) for r in rs[:2]]
    b = seal_batch(SIGNER, GW, 3, b"\x01" * 32, bodies, [r.timestamp_ns for r in rs[:2]], T0)
    db.execute("INSERT INTO chain VALUES (1, ?, 3, ?)", (GW, b.hash))
    db.execute("INSERT INTO meter_seq VALUES ('MTR-1', 6)")
    db.execute("INSERT INTO batches VALUES (3, ?, ?, ?)", (encode_batch_header(b.header), b.signature, b.hash))
    for r in rs:
        db.execute("INSERT INTO entries (meter_id, ts_ns, body, batch_seq) VALUES (?, ?, ?, ?)",
                   (r.meter_id, r.timestamp_ns, encode_reading(r), 3 if r.seq < 5 else None))
    db.execute("INSERT INTO open_gaps VALUES ('MTR-2', ?, ?, 'timeout', 4)", (T0, T0 + 3 * S))
    db.close()
    return b.hash
