"""The human summary of a verified certificate (a table), and the same as JSON."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from hub.certificates.document import iso_ns
from hub.certificates.verify import Summary


def summary_json(s: Summary) -> dict:
    return {
        "verified": True,
        "meter_id": s.meter_id,
        "chain_id": s.chain_id,
        "period": {"from": iso_ns(s.from_ns), "to": iso_ns(s.to_ns)},
        "readings": s.readings,
        "first_reading": iso_ns(s.first_ts_ns) if s.first_ts_ns is not None else None,
        "last_reading": iso_ns(s.last_ts_ns) if s.last_ts_ns is not None else None,
        "seq": [s.first_seq, s.last_seq],
        "counters": [
            {"name": c.name, "unit": c.unit, "first": c.first, "last": c.last, "delta": c.delta} for c in s.counters
        ],
        "gaps": [
            {"from": iso_ns(g.from_ns), "to": iso_ns(g.to_ns), "reason": g.reason, "missed_polls": g.missed_polls}
            for g in s.gaps
        ],
        "blocks": list(s.block_heights),
        "batches": s.batches,
        "gateways": list(s.gateways),
        "clock": s.clock,
        "quality": s.quality,
    }


def print_summary(s: Summary, source: Path | str, console: Console | None = None) -> None:
    console = console or Console()
    console.print(f"[bold green]VERIFIED[/] {escape(str(source))}")
    t = Table(show_header=False, box=None, pad_edge=False)
    t.add_column(style="bold")
    t.add_column()
    t.add_row("meter", escape(s.meter_id))
    t.add_row("chain", escape(s.chain_id))
    t.add_row("period", f"{iso_ns(s.from_ns)} .. {iso_ns(s.to_ns)}")
    if s.first_ts_ns is not None:
        t.add_row("readings", f"{s.readings} (seq {s.first_seq}..{s.last_seq}), {iso_ns(s.first_ts_ns)} .. {iso_ns(s.last_ts_ns)}")
    else:
        t.add_row("readings", "0")
    energy = s.counter("energy_import")
    if energy is not None:
        t.add_row("energy imported", f"{energy.delta:.4f} kWh")
    t.add_row("blocks", f"{len(s.block_heights)} (heights {s.block_heights[0]}..{s.block_heights[-1]}), {s.batches} signed batches from {escape(', '.join(s.gateways))}")
    t.add_row("clock", ", ".join(f"{k}: {v}" for k, v in s.clock.items()) or "-")
    t.add_row("quality", ", ".join(f"{k}: {v}" for k, v in s.quality.items()) or "-")
    t.add_row("gaps", str(len(s.gaps)) if s.gaps else "none")
    console.print(t)
    if s.counters:
        c = Table(title="register values (first and last reading)")
        for col in ("register", "first", "last", "difference"):
            c.add_column(col, justify="right" if col != "register" else "left")
        for span in s.counters:
            c.add_row(escape(f"{span.name} [{span.unit}]"), f"{span.first:.4f}", f"{span.last:.4f}", f"{span.delta:.4f}")
        console.print(c)
    for g in s.gaps:
        console.print(f"  gap {iso_ns(g.from_ns)} .. {iso_ns(g.to_ns)}: {escape(g.reason)} ({g.missed_polls} polls missed)")
