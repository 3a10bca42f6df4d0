"""The agent's durable local queue (SQLite, WAL, synchronous=FULL).

Every reading is committed here before anything else happens to it. Batches are
sealed from queued entries inside one transaction, and a batch and its entries
are deleted only when the hub's receipt for it has been checked. Per-meter
sequence numbers and the gateway's batch chain live here too, so a restart
(or SIGKILL, or power loss) continues them without a gap or a repeat.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from protos.canonical import decode_entry, encode_gap, encode_reading
from protos.records import ZERO_HASH, BatchHeader, Entry, Gap, Reading
from protos.canonical import decode_batch_header, encode_batch_header

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meter_seq (
    meter_id TEXT PRIMARY KEY,
    last_seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    meter_id TEXT NOT NULL,
    ts_ns INTEGER NOT NULL,
    body BLOB NOT NULL,              -- canonical bytes (protos.canonical)
    batch_seq INTEGER                -- NULL until sealed into a batch
);
CREATE INDEX IF NOT EXISTS entries_unbatched ON entries (batch_seq, id);
CREATE TABLE IF NOT EXISTS open_gaps (
    meter_id TEXT PRIMARY KEY,
    from_ns INTEGER NOT NULL,
    to_ns INTEGER NOT NULL,
    reason TEXT NOT NULL,
    missed INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY,
    header BLOB NOT NULL,            -- canonical header bytes, as signed
    signature BLOB NOT NULL,
    hash BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS chain (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    gateway_id TEXT NOT NULL,
    last_seq INTEGER NOT NULL,
    last_hash BLOB NOT NULL
);
"""


class QueueError(Exception):
    """The queue file belongs to another gateway or is damaged."""


@dataclass(frozen=True)
class QueuedBatch:
    header: BatchHeader
    signature: bytes
    hash: bytes
    entries: tuple[Entry, ...]


@dataclass(frozen=True)
class QueueStats:
    unbatched_entries: int
    batches: int
    oldest_ts_ns: int | None
    open_gaps: int


class DurableQueue:
    """Thread-safe: the poller, the sealer and the uplink may call from different threads."""

    def __init__(self, path: Path, gateway_id: str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: a receipt, a sequence number or a deletion decision may depend on
        # each commit, so each one reaches the disk before we act on it.
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        row = self._db.execute("SELECT gateway_id FROM chain WHERE id = 1").fetchone()
        if row is None:
            self._db.execute(
                "INSERT INTO chain (id, gateway_id, last_seq, last_hash) VALUES (1, ?, 0, ?)",
                (gateway_id, ZERO_HASH),
            )
        elif row[0] != gateway_id:
            raise QueueError(
                f"queue {self.path} belongs to gateway {row[0]!r}, not {gateway_id!r}; "
                "use a separate queue file per gateway id"
            )
        self.gateway_id = gateway_id

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _tx(self, work: Callable[[sqlite3.Connection], object]) -> object:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                result = work(self._db)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            return result

    # -- what the poller writes ------------------------------------------------

    def next_seq(self, meter_id: str) -> int:
        with self._lock:
            row = self._db.execute(
                "SELECT last_seq FROM meter_seq WHERE meter_id = ?", (meter_id,)
            ).fetchone()
        return (row[0] if row else 0) + 1

    def append_readings(self, readings: Sequence[Reading]) -> None:
        """Commit one poll cycle's readings together; also closes their meters' open gaps.

        The caller numbers readings with `next_seq`; the commit refuses a number
        that does not follow the stored one, so a sequence can never repeat.
        """

        def work(db: sqlite3.Connection) -> None:
            for r in readings:
                _close_gap(db, r.meter_id)
                row = db.execute(
                    "SELECT last_seq FROM meter_seq WHERE meter_id = ?", (r.meter_id,)
                ).fetchone()
                last = row[0] if row else 0
                if r.seq != last + 1:
                    raise QueueError(f"meter {r.meter_id}: reading seq {r.seq} does not follow {last}")
                db.execute(
                    "INSERT INTO meter_seq (meter_id, last_seq) VALUES (?, ?) "
                    "ON CONFLICT(meter_id) DO UPDATE SET last_seq = excluded.last_seq",
                    (r.meter_id, r.seq),
                )
                db.execute(
                    "INSERT INTO entries (meter_id, ts_ns, body) VALUES (?, ?, ?)",
                    (r.meter_id, r.timestamp_ns, encode_reading(r)),
                )

        self._tx(work)

    def record_failure(self, meter_id: str, ts_ns: int, reason: str, report_after_ns: int) -> None:
        """Extend the meter's open gap (or open one); close it into an entry when it gets old
        or the reason changes, so a long outage is reported while it lasts."""
        # Validate as the gap entry will be, so a bad reason cannot wedge the meter later.
        reason = reason.encode()[:256].decode(errors="ignore") or "unknown"
        Gap(meter_id, ts_ns, ts_ns, reason, 1)

        def work(db: sqlite3.Connection) -> None:
            row = db.execute(
                "SELECT from_ns, reason FROM open_gaps WHERE meter_id = ?", (meter_id,)
            ).fetchone()
            if row is not None and (row[1] != reason or ts_ns - row[0] >= report_after_ns):
                _close_gap(db, meter_id)
                row = None
            if row is None:
                db.execute(
                    "INSERT INTO open_gaps (meter_id, from_ns, to_ns, reason, missed) VALUES (?, ?, ?, ?, 1)",
                    (meter_id, ts_ns, ts_ns, reason),
                )
            else:
                # MIN/MAX: the wall clock may step back (NTP); a gap must never end before it starts.
                db.execute(
                    "UPDATE open_gaps SET from_ns = MIN(from_ns, ?), to_ns = MAX(to_ns, ?), missed = missed + 1 "
                    "WHERE meter_id = ?",
                    (ts_ns, ts_ns, meter_id),
                )

        self._tx(work)

    def close_all_gaps(self) -> None:
        def work(db: sqlite3.Connection) -> None:
            for (meter_id,) in db.execute("SELECT meter_id FROM open_gaps").fetchall():
                _close_gap(db, meter_id)

        self._tx(work)

    # -- what the sealer does ----------------------------------------------------

    def oldest_unbatched(self) -> tuple[int, int | None]:
        """(count of unbatched entries, ts of the oldest) without loading them."""
        with self._lock:
            n, oldest = self._db.execute(
                "SELECT COUNT(*), MIN(ts_ns) FROM entries WHERE batch_seq IS NULL"
            ).fetchone()
        return n, oldest

    def seal_next_batch(
        self,
        max_entries: int,
        seal: Callable[[int, bytes, list[bytes], list[int]], tuple[BatchHeader, bytes, bytes]],
    ) -> BatchHeader | None:
        """Seal up to max_entries unbatched entries into the next batch, atomically.

        `seal(seq, prev_hash, entry_bytes, timestamps)` returns (header, signature, hash).
        """

        def work(db: sqlite3.Connection) -> BatchHeader | None:
            rows = db.execute(
                "SELECT id, ts_ns, body FROM entries WHERE batch_seq IS NULL ORDER BY id LIMIT ?",
                (max_entries,),
            ).fetchall()
            if not rows:
                return None
            last_seq, last_hash = db.execute(
                "SELECT last_seq, last_hash FROM chain WHERE id = 1"
            ).fetchone()
            seq = last_seq + 1
            header, signature, digest = seal(
                seq, bytes(last_hash), [r[2] for r in rows], [r[1] for r in rows]
            )
            db.execute(
                "INSERT INTO batches (seq, header, signature, hash) VALUES (?, ?, ?, ?)",
                (seq, encode_batch_header(header), signature, digest),
            )
            db.execute(
                "UPDATE entries SET batch_seq = ? WHERE batch_seq IS NULL AND id <= ?",
                (seq, rows[-1][0]),
            )
            db.execute("UPDATE chain SET last_seq = ?, last_hash = ? WHERE id = 1", (seq, digest))
            return header

        return self._tx(work)

    # -- what the uplink does ----------------------------------------------------

    def pending_batches(self, after_seq: int, limit: int) -> list[QueuedBatch]:
        """Unreceipted batches with seq > after_seq, in order, with their entries."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, header, signature, hash FROM batches WHERE seq > ? ORDER BY seq LIMIT ?",
                (after_seq, limit),
            ).fetchall()
            out = []
            for seq, header, signature, digest in rows:
                bodies = self._db.execute(
                    "SELECT body FROM entries WHERE batch_seq = ? ORDER BY id", (seq,)
                ).fetchall()
                out.append(
                    QueuedBatch(
                        decode_batch_header(header),
                        bytes(signature),
                        bytes(digest),
                        tuple(decode_entry(b[0]) for b in bodies),
                    )
                )
        return out

    def batch_hash(self, seq: int) -> bytes | None:
        with self._lock:
            row = self._db.execute("SELECT hash FROM batches WHERE seq = ?", (seq,)).fetchone()
        return bytes(row[0]) if row else None

    def delete_batch(self, seq: int) -> None:
        """Forget a batch the hub has durably stored (after its receipt was checked)."""

        def work(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM entries WHERE batch_seq = ?", (seq,))
            db.execute("DELETE FROM batches WHERE seq = ?", (seq,))

        self._tx(work)

    def stats(self) -> QueueStats:
        with self._lock:
            unbatched = self._db.execute(
                "SELECT COUNT(*) FROM entries WHERE batch_seq IS NULL"
            ).fetchone()[0]
            batches = self._db.execute("SELECT COUNT(*) FROM batches").fetchone()[0]
            oldest = self._db.execute("SELECT MIN(ts_ns) FROM entries").fetchone()[0]
            gaps = self._db.execute("SELECT COUNT(*) FROM open_gaps").fetchone()[0]
        return QueueStats(unbatched, batches, oldest, gaps)


def _close_gap(db: sqlite3.Connection, meter_id: str) -> None:
    row = db.execute(
        "SELECT from_ns, to_ns, reason, missed FROM open_gaps WHERE meter_id = ?", (meter_id,)
    ).fetchone()
    if row is None:
        return
    gap = Gap(meter_id, row[0], row[1], row[2], row[3])
    db.execute(
        "INSERT INTO entries (meter_id, ts_ns, body) VALUES (?, ?, ?)",
        (meter_id, gap.to_ns, encode_gap(gap)),
    )
    db.execute("DELETE FROM open_gaps WHERE meter_id = ?", (meter_id,))
