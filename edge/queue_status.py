"""What the agent's queue file says about the agent, read while it runs (`gridtrace edge status`).

The queue keeps per-meter status, error counts and the last receipt in the same transactions
as the evidence (`edge.queue`); this module reads them from the file read-only, so a status
query needs no connection to the agent and never blocks it.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from edge.queue import SCHEMA_VERSION, QueueError, _first_queued_ts

__all__ = ["AgentStatus", "ErrorCount", "MeterStatus", "OpenGap", "read_status"]


@dataclass(frozen=True)
class OpenGap:
    """A meter's outage that is still going on (not yet an entry)."""

    meter_id: str
    from_ns: int
    to_ns: int
    reason: str
    missed_polls: int


@dataclass(frozen=True)
class ErrorCount:
    reason: str
    count: int
    last_ns: int


@dataclass(frozen=True)
class MeterStatus:
    meter_id: str
    last_seq: int  # readings numbered so far; seq runs from 1 without holes
    last_reading_ns: int | None
    errors: tuple[ErrorCount, ...]  # by reason, since the queue file was created
    last_error: str | None
    last_error_ns: int | None
    open_gap: OpenGap | None


@dataclass(frozen=True)
class AgentStatus:
    """What the queue file says about the agent, read while it runs."""

    path: Path
    gateway_id: str
    read_ns: int
    entries: int  # unreceipted entries, sealed or not
    unbatched_entries: int
    batches: int  # sealed batches waiting for a receipt
    bytes: int  # as counted against the limit (entry_bytes, BATCH_OVERHEAD)
    max_bytes: int | None  # limit of the agent that opened the file last; None = unlimited
    full_since_ns: int | None  # readings are being refused since then
    oldest_ts_ns: int | None  # timestamp of the first entry still queued (waiting longest)
    last_batch_seq: int
    last_receipt_seq: int | None
    last_receipt_ns: int | None
    last_receipt_hub: str | None
    meters: tuple[MeterStatus, ...]
    open_gaps: tuple[OpenGap, ...]

    @property
    def oldest_age_s(self) -> float | None:
        """How long the first entry still queued has waited, by its timestamp."""
        return None if self.oldest_ts_ns is None else max(0.0, (self.read_ns - self.oldest_ts_ns) / 1e9)


def read_status(path: Path, now_ns: int | None = None) -> AgentStatus:
    """Read the queue file read-only (safe while the agent runs: WAL readers never block it)."""
    path = Path(path)
    if not path.exists():
        raise QueueError(
            f"no queue at {path}; check [gateway] queue in agent.toml (the agent creates the file when it starts)"
        )
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
    except sqlite3.Error as exc:
        raise QueueError(f"cannot open queue {path} read-only: {exc}; check the file's permissions") from exc
    try:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version != SCHEMA_VERSION:
            raise QueueError(
                f"queue {path} has layout {version}, this gridtrace reads layout {SCHEMA_VERSION}; "
                + ("start the agent once (it upgrades the file)" if version < SCHEMA_VERSION
                   else "use the gridtrace version that runs the agent")
            )
        db.execute("BEGIN")
        chain = db.execute(
            "SELECT gateway_id, last_seq, queue_bytes, max_bytes, full_since_ns, last_receipt_seq, "
            "last_receipt_ns, last_receipt_hub FROM chain WHERE id = 1"
        ).fetchone()
        if chain is None:
            raise QueueError(f"queue {path} is empty: the agent has not finished its first start")
        entries, unbatched = db.execute("SELECT COUNT(*), COUNT(*) - COUNT(batch_seq) FROM entries").fetchone()
        oldest = _first_queued_ts(db)
        batches = db.execute("SELECT COUNT(*) FROM batches").fetchone()[0]
        gaps = {
            r[0]: OpenGap(*r)
            for r in db.execute("SELECT meter_id, from_ns, to_ns, reason, missed FROM open_gaps ORDER BY meter_id")
        }
        errors: dict[str, list[ErrorCount]] = {}
        for meter_id, reason, count, last_ns in db.execute(
            "SELECT meter_id, reason, count, last_ns FROM meter_errors ORDER BY meter_id, reason"
        ):
            errors.setdefault(meter_id, []).append(ErrorCount(reason, count, last_ns))
        meters = tuple(
            MeterStatus(m, last_seq, last_ts, tuple(errors.get(m, ())), last_error, last_error_ns, gaps.get(m))
            for m, last_seq, last_ts, last_error, last_error_ns in db.execute(
                "SELECT meter_id, last_seq, last_ts_ns, last_error, last_error_ns FROM meter_seq ORDER BY meter_id"
            )
        )
        db.execute("COMMIT")
    except sqlite3.Error as exc:
        raise QueueError(f"cannot read queue {path}: {exc}") from exc
    finally:
        db.close()
    return AgentStatus(
        path=path,
        gateway_id=chain[0],
        read_ns=time.time_ns() if now_ns is None else now_ns,
        entries=entries,
        unbatched_entries=unbatched,
        batches=batches,
        bytes=chain[2],
        max_bytes=chain[3],
        full_since_ns=chain[4],
        oldest_ts_ns=oldest,
        last_batch_seq=chain[1],
        last_receipt_seq=chain[5],
        last_receipt_ns=chain[6],
        last_receipt_hub=chain[7],
        meters=meters,
        open_gaps=tuple(gaps.values()),
    )
