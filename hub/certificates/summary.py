"""The human summary of a verified certificate (a table), and the same as JSON."""

from __future__ import annotations

from collections import Counter
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
        "contract_records": [
            {"contract": c.contract, "kind": c.kind, "from": iso_ns(c.from_ns), "to": iso_ns(c.to_ns),
             "body": c.document()}
            for c in s.contract_records
        ],
        "unbelieved_contract_records": {"count": s.unbelieved_records, "gateways": list(s.unbelieved_runners)},
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
    _print_contract_records(s, console)


def _print_contract_records(s: Summary, console: Console) -> None:
    """Carbon per interval as a table; records of other contracts counted (their schemas are
    their contracts' own)."""
    from hub.contracts.carbon.records import RecordsError, meter_carbon

    carbon, other = [], Counter()
    for c in s.contract_records:
        try:
            carbon.append(meter_carbon(c))
        except RecordsError:
            other[f"{c.contract} {c.kind}"] += 1
    if carbon:
        models = sorted({c.model_version[:16] for c in carbon})
        t = Table(title=f"carbon: {len(carbon)} interval{'s' if len(carbon) != 1 else ''}, {sum(c.emission_t for c in carbon):.6g} tCO2 in all "
                        f"(contract records, model {', '.join(models)})")
        for col in ("interval", "element", "MW", "tCO2/MWh", "tCO2"):
            t.add_column(col, justify="left" if col in ("interval", "element") else "right")
        for c in carbon:
            t.add_row(f"{iso_ns(c.from_ns)[:19]}Z +{_duration(c.to_ns - c.from_ns)}", escape(c.element), f"{c.mw:.6g}",
                      f"{c.intensity_t_per_mwh:.4f}", f"{c.emission_t:.6g}")
        console.print(t)
    for what, n in sorted(other.items()):
        console.print(f"  {n} {escape(what)} records")
    if s.unbelieved_records:
        console.print(f"[yellow]{s.unbelieved_records} contract records not shown[/]: signed by "
                      f"{escape(', '.join(s.unbelieved_runners))}, which the trust file does not name as a runner "
                      "of their contract")


def _duration(ns: int) -> str:
    seconds = ns // 10**9
    for unit, size in (("h", 3600), ("min", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
