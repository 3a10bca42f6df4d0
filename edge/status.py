"""`gridtrace edge status`: what the agent's queue file says, as tables or JSON.

Reads the queue read-only (`edge.queue.read_status`), so it is safe while the agent runs and
needs no connection to it. Meters configured but never seen in the queue are listed too, so a
meter that has never answered stands out.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from datetime import datetime, timezone

from rich.console import Console
from rich.table import Table

from edge.config import AgentConfig
from edge.queue import QueueError
from edge.queue_status import AgentStatus, MeterStatus, read_status

__all__ = ["print_status", "status_document"]


def _when(ts_ns: int | None, now_ns: int) -> str:
    if ts_ns is None:
        return "never"
    stamp = datetime.fromtimestamp(ts_ns / 1e9, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
    return f"{stamp} ({_age((now_ns - ts_ns) / 1e9)} ago)"


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def status_document(cfg: AgentConfig, status: AgentStatus) -> dict:
    """The status as plain JSON-able data (for --json and monitoring scripts)."""
    doc = dataclasses.asdict(status)
    doc["path"] = str(status.path)
    doc["oldest_age_s"] = status.oldest_age_s
    seen = {m.meter_id for m in status.meters}
    doc["meters_never_seen"] = [m.id for m in cfg.meters if m.id not in seen]
    return doc


def print_status(cfg: AgentConfig, as_json: bool = False) -> int:
    """Print the status; exit 1 if the queue cannot be read or the queue is full."""
    try:
        status = read_status(cfg.queue, time.time_ns())
    except QueueError as exc:
        print(f"gridtrace edge status: {exc}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(status_document(cfg, status), default=str))
        return 1 if status.full_since_ns else 0
    now = status.read_ns
    console = Console()
    limit = f"{status.max_bytes / 2**20:.0f} MB" if status.max_bytes else "no limit"
    lines = [
        f"gateway {status.gateway_id}, queue {status.path}",
        f"queued: {status.entries} entries ({status.unbatched_entries} not yet sealed), "
        f"{status.batches} batches waiting for a receipt, "
        f"{status.bytes / 2**20:.1f} MB of {limit}",
        f"oldest queued entry: {_when(status.oldest_ts_ns, now)}",
        f"last receipt: {_when(status.last_receipt_ns, now)}"
        + (f" for batch {status.last_receipt_seq} from {status.last_receipt_hub}" if status.last_receipt_seq else ""),
    ]
    if status.full_since_ns:
        lines.append(
            f"QUEUE FULL since {_when(status.full_since_ns, now)}: new readings are recorded as "
            "gaps; check the uplink to the hub, or raise [queue] max_mb"
        )
    for line in lines:
        console.print(line, markup=False)
    console.print(_meter_table(cfg, status))
    return 1 if status.full_since_ns else 0


def _meter_table(cfg: AgentConfig, status: AgentStatus) -> Table:
    table = Table(title="meters")
    for column in ("meter", "readings", "last reading", "errors", "last error", "open gap"):
        table.add_column(column)
    by_id: dict[str, MeterStatus] = {m.meter_id: m for m in status.meters}
    configured = [m.id for m in cfg.meters]
    for meter_id in configured + sorted(set(by_id) - set(configured)):
        m = by_id.get(meter_id)
        if m is None:
            table.add_row(meter_id, "0", "never", "", "", "")
            continue
        errors = ", ".join(f"{e.reason} x{e.count}" for e in m.errors)
        gap = (
            f"{m.open_gap.reason} since {_when(m.open_gap.from_ns, status.read_ns)}"
            if m.open_gap
            else ""
        )
        last_error = f"{_when(m.last_error_ns, status.read_ns)}: {m.last_error}" if m.last_error else ""
        table.add_row(
            meter_id, str(m.last_seq), _when(m.last_reading_ns, status.read_ns), errors, last_error, gap
        )
    return table
