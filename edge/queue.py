"""The agent's durable local queue (SQLite, WAL, synchronous=FULL).

Every reading is committed here before anything else happens to it. Batches are
sealed from queued entries inside one transaction, and a batch and its entries
are deleted only when the hub's receipt for it has been checked. Per-meter
sequence numbers and the gateway's batch chain live here too, so a restart
(or SIGKILL, or power loss) continues them without a gap or a repeat.

The queue is bounded: when the queued bytes reach the limit, the oldest evidence
is kept, new readings are refused and each meter's refused polls are recorded
as one explicit gap (reason "queue-full") until receipts free space again.
What `gridtrace edge status` shows (queue depth, last receipt, per-meter state)
is written in the same transactions, and `edge.queue_status.read_status` reads it without
disturbing a running agent.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from protos.canonical import (
    decode_batch_header,
    decode_entry,
    encode_batch_header,
    encode_contract_record,
    encode_gap,
    encode_reading,
)
from protos.records import ZERO_HASH, BatchHeader, ContractRecord, Entry, Gap, Reading

log = logging.getLogger("gridtrace.edge.queue")

# The layout of the previous release (version 0). A new file is created with it and
# then migrated like an old one, so the upgrade path is the path every file takes.
_SCHEMA_V0 = """
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

# Version 1: byte accounting for the disk limit, and what `edge status` shows.
_MIGRATE_V1 = """
ALTER TABLE meter_seq ADD COLUMN last_ts_ns INTEGER;         -- timestamp of the last queued reading
ALTER TABLE meter_seq ADD COLUMN last_error TEXT;            -- what the last failed poll said
ALTER TABLE meter_seq ADD COLUMN last_error_ns INTEGER;
CREATE TABLE meter_errors (
    meter_id TEXT NOT NULL,
    reason TEXT NOT NULL,            -- timeout, unreachable, modbus-exception-N, queue-full, ...
    count INTEGER NOT NULL,
    last_ns INTEGER NOT NULL,
    PRIMARY KEY (meter_id, reason)
);
ALTER TABLE batches ADD COLUMN bytes INTEGER NOT NULL DEFAULT 0;  -- its entries and header, as accounted
ALTER TABLE chain ADD COLUMN queue_bytes INTEGER NOT NULL DEFAULT 0;  -- running total, see entry_bytes
ALTER TABLE chain ADD COLUMN max_bytes INTEGER;             -- the limit of the agent that opened the file last
ALTER TABLE chain ADD COLUMN full_since_ns INTEGER;         -- set while new readings are refused
ALTER TABLE chain ADD COLUMN last_receipt_seq INTEGER;
ALTER TABLE chain ADD COLUMN last_receipt_ns INTEGER;       -- gateway clock when the receipt was checked
ALTER TABLE chain ADD COLUMN last_receipt_hub TEXT;
"""

SCHEMA_VERSION = 1

# What one queued row costs beyond its canonical bytes (rowid, meter id, timestamp,
# index entries, page slack): an allowance, so the limit tracks the file's growth.
ENTRY_OVERHEAD = 64
BATCH_OVERHEAD = 64

QUEUE_FULL = "queue-full"
_CACHE_KIB = 512  # page cache per connection
AGENT_STOPPED = "agent-stopped"
_MAX_MISSED = (1 << 32) - 1


def entry_bytes(body: bytes) -> int:
    """The bytes one queued entry counts against the limit."""
    return len(body) + ENTRY_OVERHEAD


def reserve_bytes(max_bytes: int) -> int:
    """Room kept free of readings for what must always be written: gap entries and
    batch headers. Readings are refused above `max_bytes - reserve` and accepted
    again below `max_bytes - 2 * reserve`, so a queue at its limit does not flap."""
    return min(max(max_bytes // 50, 16 * 1024), max_bytes // 4)


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
    bytes: int = 0
    full: bool = False


class _Writes:
    """One transaction's writes that move the byte count; the count is stored once at the end."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        # The full state is read from the file in each transaction, not kept in memory:
        # pollers of several connections commit from several threads.
        self.bytes, self.full_since = db.execute(
            "SELECT queue_bytes, full_since_ns FROM chain WHERE id = 1"
        ).fetchone()
        self._start = self.bytes
        self.was_full = self.full_since is not None

    def insert_entry(self, meter_id: str, ts_ns: int, body: bytes) -> None:
        self.db.execute("INSERT INTO entries (meter_id, ts_ns, body) VALUES (?, ?, ?)", (meter_id, ts_ns, body))
        self.bytes += entry_bytes(body)

    def close_gap(self, meter_id: str) -> None:
        row = self.db.execute(
            "SELECT from_ns, to_ns, reason, missed FROM open_gaps WHERE meter_id = ?", (meter_id,)
        ).fetchone()
        if row is None:
            return
        gap = Gap(meter_id, row[0], row[1], row[2], row[3])
        self.insert_entry(meter_id, gap.to_ns, encode_gap(gap))
        self.db.execute("DELETE FROM open_gaps WHERE meter_id = ?", (meter_id,))

    def extend_gap(self, meter_id: str, ts_ns: int, reason: str) -> None:
        """Open the meter's gap, or extend the open one (whatever its reason)."""
        # MIN/MAX: the wall clock may step back (NTP); a gap must never end before it starts.
        self.db.execute(
            "INSERT INTO open_gaps (meter_id, from_ns, to_ns, reason, missed) VALUES (?, ?, ?, ?, 1) "
            "ON CONFLICT(meter_id) DO UPDATE SET from_ns = MIN(from_ns, excluded.from_ns), "
            f"to_ns = MAX(to_ns, excluded.to_ns), missed = MIN(missed + 1, {_MAX_MISSED})",
            (meter_id, ts_ns, ts_ns, reason),
        )

    def count_error(self, meter_id: str, ts_ns: int, reason: str, message: str) -> None:
        self.db.execute(
            "INSERT INTO meter_errors (meter_id, reason, count, last_ns) VALUES (?, ?, 1, ?) "
            "ON CONFLICT(meter_id, reason) DO UPDATE SET count = count + 1, last_ns = excluded.last_ns",
            (meter_id, reason, ts_ns),
        )
        self.db.execute(
            "INSERT INTO meter_seq (meter_id, last_seq, last_error, last_error_ns) VALUES (?, 0, ?, ?) "
            "ON CONFLICT(meter_id) DO UPDATE SET last_error = excluded.last_error, "
            "last_error_ns = excluded.last_error_ns",
            (meter_id, message, ts_ns),
        )

    def flush(self) -> None:
        if self.bytes != self._start:
            self.db.execute("UPDATE chain SET queue_bytes = ? WHERE id = 1", (self.bytes,))


class DurableQueue:
    """Thread-safe: the poller, the sealer and the uplink may call from different threads.

    Writes go through one connection under a lock. The uplink's reads of sealed
    batches use a second connection: in WAL mode a reader never blocks the writer,
    so loading a large backlog does not hold up the poller's commits.
    """

    def __init__(self, path: Path, gateway_id: str, max_bytes: int | None = None) -> None:
        if max_bytes is not None and max_bytes < 64 * 1024:
            raise QueueError(f"queue limit {max_bytes} bytes is too small; allow at least 64 KiB")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: a receipt, a sequence number or a deletion decision may depend on
        # each commit, so each one reaches the disk before we act on it.
        self._db.execute("PRAGMA synchronous=FULL")
        # The working set is the tail of the entries table; SQLite's default 2 MB page cache
        # per connection is resident memory a small gateway feels.
        self._db.execute(f"PRAGMA cache_size = -{_CACHE_KIB}")
        self._db.executescript(_SCHEMA_V0)
        _migrate(self._db, self.path)
        row = self._db.execute("SELECT gateway_id, full_since_ns FROM chain WHERE id = 1").fetchone()
        if row is None:
            self._db.execute(
                "INSERT INTO chain (id, gateway_id, last_seq, last_hash) VALUES (1, ?, 0, ?)",
                (gateway_id, ZERO_HASH),
            )
            row = (gateway_id, None)
        elif row[0] != gateway_id:
            self._db.close()
            raise QueueError(
                f"queue {self.path} belongs to gateway {row[0]!r}, not {gateway_id!r}; "
                "use a separate queue file per gateway id"
            )
        self._full_since: int | None = row[1]
        self._db.execute("UPDATE chain SET max_bytes = ? WHERE id = 1 AND max_bytes IS NOT ?", (max_bytes, max_bytes))
        self.gateway_id = gateway_id
        self._read_lock = threading.Lock()
        self._reader = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._reader.execute(f"PRAGMA cache_size = -{_CACHE_KIB}")

    def close(self) -> None:
        with self._read_lock:
            self._reader.close()
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

    # -- the disk limit ------------------------------------------------------------

    @property
    def full(self) -> bool:
        return self._full_since is not None

    def _limits(self) -> tuple[int, int] | None:
        """(accept readings up to, resume at or below) in bytes; None when unlimited."""
        if self.max_bytes is None:
            return None
        reserve = reserve_bytes(self.max_bytes)
        return self.max_bytes - reserve, self.max_bytes - 2 * reserve

    def _after(self, transition: tuple[bool, int | None, int]) -> None:
        """Keep the state for `full` and log a change of it, once, after its commit."""
        was_full, full_since, queued = transition
        self._full_since = full_since
        if was_full == (full_since is not None):
            return
        limit_mb = (self.max_bytes or 0) / 2**20
        if full_since is not None:
            log.error(
                "queue full: %.1f MB of unreceipted evidence reached the limit of %.1f MB "
                "([queue] max_mb); the oldest evidence is kept, new readings are NOT queued and "
                "each meter's missed polls are recorded as a gap 'queue-full' until the hub "
                "receipts queued batches. Check the uplink (hub address, network, `gridtrace edge "
                "status`) or raise max_mb if the disk has room.",
                queued / 2**20, limit_mb,
            )
        else:
            log.warning(
                "queue has room again (%.1f MB of %.1f MB): readings are queued again; the "
                "'queue-full' gaps are closed and sent",
                queued / 2**20, limit_mb,
            )

    def _check_full(self, w: _Writes) -> None:
        """Leave the full state when receipts freed enough room."""
        limits = self._limits()
        if w.full_since is not None and (limits is None or w.bytes <= limits[1]):
            w.db.execute("UPDATE chain SET full_since_ns = NULL WHERE id = 1")
            w.full_since = None

    def _enter_full(self, w: _Writes, ts_ns: int) -> None:
        w.db.execute("UPDATE chain SET full_since_ns = ? WHERE id = 1", (ts_ns,))
        w.full_since = ts_ns

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

        When a reading does not fit under the limit it is not stored and its number
        is not used (the next poll gets it again); the poll is counted in the meter's
        open gap with reason "queue-full" instead, so the hole is on record.
        """
        encoded = [encode_reading(r) for r in readings]  # outside the lock: the poller's CPU work

        def work(db: sqlite3.Connection) -> tuple[bool, int | None, int]:
            w = _Writes(db)
            self._check_full(w)
            limits = self._limits()
            expected: dict[str, int] = {}
            for r, body in zip(readings, encoded, strict=True):
                want = expected.get(r.meter_id)
                if want is None:
                    row = db.execute("SELECT last_seq FROM meter_seq WHERE meter_id = ?", (r.meter_id,)).fetchone()
                    want = (row[0] if row else 0) + 1
                if r.seq != want:
                    raise QueueError(f"meter {r.meter_id}: reading seq {r.seq} does not follow {want - 1}")
                expected[r.meter_id] = want + 1
                if w.full_since is None and limits is not None and w.bytes + entry_bytes(body) > limits[0]:
                    self._enter_full(w, r.timestamp_ns)
                if w.full_since is not None:
                    self._refuse(w, r)
                    continue
                w.close_gap(r.meter_id)
                db.execute(
                    "INSERT INTO meter_seq (meter_id, last_seq, last_ts_ns) VALUES (?, ?, ?) "
                    "ON CONFLICT(meter_id) DO UPDATE SET last_seq = excluded.last_seq, "
                    "last_ts_ns = excluded.last_ts_ns",
                    (r.meter_id, r.seq, r.timestamp_ns),
                )
                w.insert_entry(r.meter_id, r.timestamp_ns, body)
            w.flush()
            return w.was_full, w.full_since, w.bytes

        self._after(self._tx(work))

    def append_records(self, records: Sequence[ContractRecord]) -> None:
        """Commit a contract runner's records together (a contract runner is a gateway whose
        entries are results, not readings). Results are never refused for room: a full queue
        raises QueueError, and the runner computes them again when there is room.

        Each subject's last from_ns is kept with them, in the same transaction: that is how a
        runner knows, after a restart, which interval it has already published."""
        encoded = [encode_contract_record(c) for c in records]

        def work(db: sqlite3.Connection) -> tuple[bool, int | None, int]:
            w = _Writes(db)
            limits = self._limits()
            size = sum(entry_bytes(b) for b in encoded)
            if limits is not None and w.bytes + size > limits[0]:
                raise QueueError(f"queue full ({w.bytes / 2**20:.1f} MB): {len(records)} contract records not queued")
            for c, body in zip(records, encoded, strict=True):
                db.execute(
                    "INSERT INTO meter_seq (meter_id, last_seq, last_ts_ns) VALUES (?, 0, ?) "
                    "ON CONFLICT(meter_id) DO UPDATE SET last_ts_ns = MAX(COALESCE(last_ts_ns, excluded.last_ts_ns), "
                    "excluded.last_ts_ns)",
                    (c.subject, c.from_ns),
                )
                w.insert_entry(c.subject, c.from_ns, body)
            w.flush()
            return w.was_full, w.full_since, w.bytes

        self._after(self._tx(work))

    def last_timestamp(self, subject: str) -> int | None:
        """The latest timestamp queued for a meter or contract subject (None: nothing yet)."""
        with self._lock:
            row = self._db.execute("SELECT last_ts_ns FROM meter_seq WHERE meter_id = ?", (subject,)).fetchone()
        return None if row is None else row[0]

    def _refuse(self, w: _Writes, r: Reading) -> None:
        """A reading that does not fit: count the poll in the meter's gap instead.

        While the queue is full each meter has one open gap that every poll extends,
        whatever happens at the meter; an outage gap opened before the queue filled is
        closed first, so the time spans keep their reasons. At most one entry per meter
        is written while full, which the reserve holds.
        """
        row = w.db.execute("SELECT reason FROM open_gaps WHERE meter_id = ?", (r.meter_id,)).fetchone()
        if row is not None and row[0] != QUEUE_FULL:
            w.close_gap(r.meter_id)
        w.extend_gap(r.meter_id, r.timestamp_ns, QUEUE_FULL)
        mb = (self.max_bytes or 0) / 2**20
        w.count_error(r.meter_id, r.timestamp_ns, QUEUE_FULL, f"queue full ({mb:.0f} MB): reading not queued")

    def record_failure(
        self, meter_id: str, ts_ns: int, reason: str, report_after_ns: int, message: str | None = None
    ) -> None:
        """Extend the meter's open gap (or open one); close it into an entry when it gets old
        or the reason changes, so a long outage is reported while it lasts.

        While the queue is full the open gap is only extended: entries written then
        must stay within the reserve. `message` (what to check) is kept for `edge status`.
        """
        # Validate as the gap entry will be, so a bad reason cannot wedge the meter later.
        reason = reason.encode()[:256].decode(errors="ignore") or "unknown"
        Gap(meter_id, ts_ns, ts_ns, reason, 1)

        def work(db: sqlite3.Connection) -> tuple[bool, int | None, int]:
            w = _Writes(db)
            self._check_full(w)
            w.count_error(meter_id, ts_ns, reason, message or reason)
            row = db.execute("SELECT from_ns, reason FROM open_gaps WHERE meter_id = ?", (meter_id,)).fetchone()
            if (
                w.full_since is None
                and row is not None
                and (row[1] != reason or ts_ns - row[0] >= report_after_ns)
            ):
                w.close_gap(meter_id)
            w.extend_gap(meter_id, ts_ns, reason)
            w.flush()
            return w.was_full, w.full_since, w.bytes

        self._after(self._tx(work))

    def close_all_gaps(self) -> None:
        def work(db: sqlite3.Connection) -> None:
            w = _Writes(db)
            for (meter_id,) in db.execute("SELECT meter_id FROM open_gaps").fetchall():
                w.close_gap(meter_id)
            w.flush()

        self._tx(work)

    def record_downtime(self, intervals_s: Mapping[str, float], now_ns: int) -> list[Gap]:
        """At start: a gap per meter for the polls missed while the agent was not running
        (stopped, killed, or the gateway without power), from the meter's last poll on record
        to `now_ns`. Without it a restart would leave a silent hole in the evidence."""

        def work(db: sqlite3.Connection) -> list[Gap]:
            w = _Writes(db)
            gaps = []
            for meter_id, interval_s in sorted(intervals_s.items()):
                row = db.execute(
                    "SELECT MAX(COALESCE(last_ts_ns, 0), COALESCE(last_error_ns, 0)) "
                    "FROM meter_seq WHERE meter_id = ?",
                    (meter_id,),
                ).fetchone()
                if row is None or not row[0]:
                    continue  # a meter never polled has no outage to report
                interval_ns = int(interval_s * 1e9)
                first_missed = row[0] + interval_ns
                missed = (now_ns - row[0]) // interval_ns - 1
                if missed < 1:
                    continue
                gap = Gap(meter_id, first_missed, max(first_missed, now_ns), AGENT_STOPPED, min(missed, _MAX_MISSED))
                w.insert_entry(meter_id, gap.to_ns, encode_gap(gap))
                # Also the meter's last word on record, so the next start counts from here.
                w.count_error(meter_id, now_ns, AGENT_STOPPED, f"{gap.missed_polls} polls missed while the agent was not running")
                gaps.append(gap)
            w.flush()
            return gaps

        return self._tx(work)  # type: ignore[return-value]

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
            header_bytes = encode_batch_header(header)
            own = len(header_bytes) + len(signature) + len(digest) + BATCH_OVERHEAD
            db.execute(
                "INSERT INTO batches (seq, header, signature, hash, bytes) VALUES (?, ?, ?, ?, ?)",
                (seq, header_bytes, signature, digest, own + sum(entry_bytes(r[2]) for r in rows)),
            )
            db.execute(
                "UPDATE entries SET batch_seq = ? WHERE batch_seq IS NULL AND id <= ?",
                (seq, rows[-1][0]),
            )
            db.execute(
                "UPDATE chain SET last_seq = ?, last_hash = ?, queue_bytes = queue_bytes + ? WHERE id = 1",
                (seq, digest, own),
            )
            return header

        return self._tx(work)

    # -- what the uplink does ----------------------------------------------------

    def pending_batches(self, after_seq: int, limit: int) -> list[QueuedBatch]:
        """Unreceipted batches with seq > after_seq, in order, with their entries."""
        out = []
        for seq, header, signature, digest, bodies in self.pending_raw(after_seq, limit):
            out.append(
                QueuedBatch(
                    decode_batch_header(header), signature, digest, tuple(decode_entry(b) for b in bodies)
                )
            )
        return out

    def pending_raw(self, after_seq: int, limit: int) -> Iterator[tuple[int, bytes, bytes, bytes, list[bytes]]]:
        """(seq, header bytes, signature, hash, entry bodies) of up to `limit` unreceipted
        batches after `after_seq`, without decoding them. Each batch is read in its own
        short transaction on the reader connection: the writer never waits on it, and a
        caller decoding a large backlog holds no lock meanwhile."""
        while limit > 0:
            with self._read_lock:
                self._reader.execute("BEGIN")
                try:
                    row = self._reader.execute(
                        "SELECT seq, header, signature, hash FROM batches WHERE seq > ? ORDER BY seq LIMIT 1",
                        (after_seq,),
                    ).fetchone()
                    if row is None:
                        return
                    bodies = [
                        b for (b,) in self._reader.execute(
                            "SELECT body FROM entries WHERE batch_seq = ? ORDER BY id", (row[0],)
                        )
                    ]
                finally:
                    self._reader.execute("COMMIT")
            yield row[0], bytes(row[1]), bytes(row[2]), bytes(row[3]), bodies
            after_seq = row[0]
            limit -= 1

    def batch_hash(self, seq: int) -> bytes | None:
        with self._lock:
            row = self._db.execute("SELECT hash FROM batches WHERE seq = ?", (seq,)).fetchone()
        return bytes(row[0]) if row else None

    def delete_batch(self, seq: int, received_ns: int | None = None, hub: str | None = None) -> None:
        """Forget a batch the hub has durably stored (after its receipt was checked).

        `received_ns` and `hub` (when the receipt was checked, and from which hub) are
        kept for `edge status`.
        """
        when = time.time_ns() if received_ns is None else received_ns

        def work(db: sqlite3.Connection) -> None:
            row = db.execute("SELECT bytes FROM batches WHERE seq = ?", (seq,)).fetchone()
            if row is None:
                return  # a receipt may arrive twice
            db.execute("DELETE FROM entries WHERE batch_seq = ?", (seq,))
            db.execute("DELETE FROM batches WHERE seq = ?", (seq,))
            db.execute(
                "UPDATE chain SET queue_bytes = queue_bytes - ?, last_receipt_seq = ?, last_receipt_ns = ?, "
                "last_receipt_hub = ? WHERE id = 1",
                (row[0], seq, when, hub),
            )

        self._tx(work)

    def stats(self) -> QueueStats:
        with self._read_lock:
            db = self._reader
            db.execute("BEGIN")
            try:
                unbatched = db.execute("SELECT COUNT(*) FROM entries WHERE batch_seq IS NULL").fetchone()[0]
                batches = db.execute("SELECT COUNT(*) FROM batches").fetchone()[0]
                oldest = _first_queued_ts(db)
                gaps = db.execute("SELECT COUNT(*) FROM open_gaps").fetchone()[0]
                queued, full = db.execute("SELECT queue_bytes, full_since_ns FROM chain WHERE id = 1").fetchone()
            finally:
                db.execute("COMMIT")
        return QueueStats(unbatched, batches, oldest, gaps, queued, full is not None)

    def recount_bytes(self) -> int:
        """The byte count recomputed from every row (what the running count must equal)."""
        with self._read_lock:
            return _recount(self._reader)


def _first_queued_ts(db: sqlite3.Connection) -> int | None:
    """Timestamp of the entry that has waited longest (the first one queued), by the primary
    key rather than MIN(ts_ns), which would read every row of a large backlog."""
    row = db.execute("SELECT ts_ns FROM entries ORDER BY id LIMIT 1").fetchone()
    return None if row is None else row[0]


def _recount(db: sqlite3.Connection) -> int:
    sealed = db.execute(
        "SELECT COALESCE(SUM(length(header) + length(signature) + length(hash) + ?), 0) FROM batches",
        (BATCH_OVERHEAD,),
    ).fetchone()[0]
    entries = db.execute(
        "SELECT COALESCE(SUM(length(body) + ?), 0) FROM entries", (ENTRY_OVERHEAD,)
    ).fetchone()[0]
    return sealed + entries


def _migrate(db: sqlite3.Connection, path: Path) -> None:
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        db.close()
        raise QueueError(
            f"queue {path} was written by a newer gridtrace (layout {version}, this one knows "
            f"{SCHEMA_VERSION}); install that version again, do not delete the queue"
        )
    if version == SCHEMA_VERSION:
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        for statement in _MIGRATE_V1.split(";"):
            lines = [ln.split("--")[0] for ln in statement.splitlines()]
            sql = " ".join(ln for ln in lines if ln.strip())
            if sql:
                db.execute(sql)
        # One pass over the old file's rows; from here on the count runs with each commit.
        db.execute(
            "UPDATE batches SET bytes = length(header) + length(signature) + length(hash) + ? + "
            "COALESCE((SELECT SUM(length(body) + ?) FROM entries WHERE entries.batch_seq = batches.seq), 0)",
            (BATCH_OVERHEAD, ENTRY_OVERHEAD),
        )
        db.execute("UPDATE chain SET queue_bytes = ? WHERE id = 1", (_recount(db),))
        db.execute(
            "UPDATE meter_seq SET last_ts_ns = (SELECT MAX(ts_ns) FROM entries WHERE entries.meter_id = meter_seq.meter_id)"
        )
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
