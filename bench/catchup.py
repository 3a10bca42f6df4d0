"""Catch-up after an uplink outage: readings per second the agent delivers from a backlog
of --hours of --meters meters at 1 Hz, while it keeps polling those meters live.

Set-up (not timed): a fresh TLS hub and gateway (`gridtrace hub init`, `edge init`), and
the gateway's durable queue filled as the agent fills it while the hub is unreachable:
one commit per poll round of all meters (DurableQueue.append_readings, readings of
synthetic SDM630 values, 41 per reading, shaped as the poller shapes them), sealed
and signed into batches of meters x max_age_s readings (what the sealer makes every
max_age_s while the uplink is down).

Timed: the simulator and the hub run; the agent starts (`gridtrace edge run`, the
shipped batching and uplink settings) on that queue. Catch-up ends when the hub has
stored (and so receipted) every backlog reading; readings/s = backlog / that time, from
the agent's start and from its first delivered batch. After a few more live seconds the
agent stops (draining), and the hub's database tells, per meter, whether live polling
kept its 1 s cadence during catch-up (missed polls: intervals longer than 1.5 s, counted
in whole seconds), how late live readings arrived, and that every meter's sequence runs
1..n without a gap or a duplicate.

    python bench/catchup.py --meters 32 --hours 1 --runs 3 [--json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))

from procstats import sample_tree

from gridtrace.demo import Processes, prepare_site, wait_for_port

LATE_S = 1.5  # a live interval longer than this is a missed poll


@dataclass(frozen=True)
class CatchupResult:
    meters: int
    backlog_readings: int
    backlog_batches: int
    fill_s: float                 # set-up: building, committing and sealing the backlog
    catchup_s: float              # agent start -> hub stored the last backlog reading
    catchup_from_first_s: float   # first backlog batch stored -> last
    readings_per_s: float         # backlog / catchup_s
    readings_per_s_streaming: float  # backlog / catchup_from_first_s
    live_readings_during: int     # live readings polled while catching up
    live_expected_during: int     # meters x whole seconds of catch-up
    missed_polls: int             # summed over meters: whole seconds beyond 1 s in late intervals
    max_live_interval_s: float
    live_gap_entries: int         # gaps opened during catch-up (0 = no live poll failed)
    max_live_delay_s: float       # live reading timestamp -> stored at the hub, worst during catch-up
    agent_cpu_pct: float          # of one core over the catch-up
    agent_peak_rss_mb: float
    hub_cpu_pct: float            # the hub (verify, store, receipt) over the catch-up, same machine
    sequence_ok: bool             # every meter 1..n, no gap, no duplicate


def synthetic_values(regmap, rng: random.Random, t: float) -> dict[str, float]:
    """Plausible SDM630 values; counters grow with t so they never go backwards."""
    base = {"V": 230.0, "A": 8.0, "W": 1800.0, "VA": 1900.0, "VAr": 300.0, "": 0.95, "deg": 18.0, "Hz": 50.0}
    out = {}
    for r in regmap.quantities:
        if r.kind == "counter":
            out[r.name] = 1000.0 + 0.0005 * t
        else:
            b = base.get(r.unit, 1.0)
            out[r.name] = b * (1 + 0.02 * rng.uniform(-1, 1)) if r.unit not in ("", "Hz") else b + 0.01 * rng.uniform(-1, 1)
    return out


def fill_backlog(agent_toml: Path, seconds: int, batch_entries: int) -> tuple[int, int, float]:
    """Fill the gateway's queue as the agent would during an outage of `seconds`."""
    from edge.agent import Sealer
    from edge.clock import clock_status
    from edge.config import load_agent_config
    from edge.queue import DurableQueue
    from protos.records import Quality, Quantity, Reading
    from protos.signing import Signer

    t_start = time.monotonic()
    cfg = load_agent_config(agent_toml)
    queue = DurableQueue(cfg.queue, cfg.gateway_id)
    sealer = Sealer(queue, Signer.from_file(cfg.key), cfg.gateway_id, batch_entries, cfg.batching.max_age_s)
    rng = random.Random(1)
    clock = clock_status()
    start_ns = time.time_ns() - seconds * 1_000_000_000
    readings = 0
    for s in range(seconds):
        ts = start_ns + s * 1_000_000_000
        # As the poller commits: one transaction per round of all meters, quantities sorted by
        # name with their map's units (built here, not by the poller's code, which is changing).
        round_ = []
        for i, m in enumerate(cfg.meters):
            values = synthetic_values(m.regmap, rng, s)
            quantities = tuple(Quantity(n, m.regmap.register(n).unit, values[n]) for n in sorted(values))
            round_.append(Reading(m.id, s + 1, ts + 1_000_000 * i, clock, Quality.OK, quantities))
        queue.append_readings(round_)
        readings += len(round_)
        if s % 2 == 1:
            sealer.seal_due(force=True)
    sealer.seal_due(force=True)
    batches = queue.stats().batches
    queue.close()
    return readings, batches, time.monotonic() - t_start


class HubWatch:
    """One open channel to the hub's status query (a new TLS channel per poll would load the hub)."""

    def __init__(self, addr: str, ca: Path) -> None:
        from protos import ingest_pb2, ingest_pb2_grpc

        self._req = ingest_pb2.StatusRequest()
        self._ch = grpc.secure_channel(addr, grpc.ssl_channel_credentials(ca.read_bytes()))
        self._stub = ingest_pb2_grpc.QueryStub(self._ch)

    def entries(self) -> int:
        return self._stub.GetStatus(self._req, timeout=5).entries_stored

    def close(self) -> None:
        self._ch.close()


def analyse(hub_db: Path, backlog_per_meter: int, t_start_ns: int, t_end_ns: int) -> dict:
    """Cadence, delay and sequence checks from the hub's own database."""
    from protos.canonical import decode_entry

    from hub.storage.store import Store, sqlite_url

    store = Store(sqlite_url(hub_db))
    rows = [(e.meter_id, e.kind, e.seq, e.ts_ns, e.stored_ns, e.body) for e in store.iter_entries()]
    store.close()
    seqs: dict[str, list[int]] = {}
    live: dict[str, list[tuple[int, int]]] = {}
    gaps = 0
    for meter, kind, seq, ts, stored, body in rows:
        if kind == 1:
            # A gap that began before the agent started is its "agent-stopped" record of the set-up
            # time between the backlog and the start (true, and not a failure of live polling).
            if decode_entry(bytes(body)).from_ns >= t_start_ns:
                gaps += 1
            continue
        seqs.setdefault(meter, []).append(seq)
        if seq > backlog_per_meter:
            live.setdefault(meter, []).append((ts, stored))
    sequence_ok = all(sorted(s) == list(range(1, len(s) + 1)) for s in seqs.values())
    missed, max_iv, max_delay, during = 0, 0.0, 0.0, 0
    for pts in live.values():
        pts.sort()
        window = [p for p in pts if t_start_ns <= p[0] <= t_end_ns]
        during += len(window)
        for (a, _), (b, _) in itertools.pairwise(window):
            iv = (b - a) / 1e9
            max_iv = max(max_iv, iv)
            if iv > LATE_S:
                missed += round(iv) - 1
        for ts, stored in window:
            max_delay = max(max_delay, (stored - ts) / 1e9)
    return {"sequence_ok": sequence_ok, "missed": missed, "max_iv": max_iv, "max_delay": max_delay,
            "during": during, "gaps": gaps}


def run_once(meters: int, hours: float, linger: float) -> CatchupResult:
    d = tempfile.mkdtemp(prefix="catchup-")  # kept when the run fails, for its logs
    # The shipped batching (2 s) and block interval (2 s), not the demo's shorter ones.
    site = prepare_site(Path(d) / "state", meters, batch_age_s=2.0, block_interval_s=2.0)
    agent_toml = site.gw_dir / "agent.toml"
    outage_s = int(hours * 3600)
    batch_entries = int(meters * 2.0)  # what the sealer seals per max_age_s while the uplink is down
    backlog, batches, fill_s = fill_backlog(agent_toml, outage_s, batch_entries)
    procs = Processes(site.state / "logs")
    watch = None
    try:
        sim = procs.start("sim", "sim", "modbus", "--port", str(site.sim_port), "--meters", str(meters))
        wait_for_port(site.sim_port, sim, "simulator")
        hub = procs.start("hub", "hub", "serve", "--config", str(site.hub_dir / "hub.toml"))
        wait_for_port(site.hub_port, hub, "hub")
        watch = HubWatch(site.hub_addr, site.ca)
        t0, t0_ns = time.monotonic(), time.time_ns()
        agent = procs.start("agent", "edge", "run", "--config", str(agent_toml))
        cpu0, hub_cpu0 = sample_tree(agent.pid).cpu_s, sample_tree(hub.pid).cpu_s
        first = None
        peak_hwm = 0
        deadline = t0 + max(600.0, outage_s)
        while True:
            n = watch.entries()
            now = time.monotonic()
            if first is None and n > 0:
                first = now
            if n >= backlog:
                break
            if agent.poll() is not None:
                raise RuntimeError(f"agent exited with code {agent.returncode}; see {site.state}/logs/agent.log")
            if now > deadline:
                raise RuntimeError(f"backlog not delivered after {now - t0:.0f} s ({n} of {backlog}); "
                                   f"see {site.state}/logs")
            peak_hwm = max(peak_hwm, sample_tree(agent.pid).hwm_kb)
            time.sleep(0.1)  # resolution of the catch-up time; each status query costs the hub a little
        t1, t1_ns = time.monotonic(), time.time_ns()
        s = sample_tree(agent.pid)
        cpu_pct = 100 * (s.cpu_s - cpu0) / (t1 - t0)
        hub_cpu_pct = 100 * (sample_tree(hub.pid).cpu_s - hub_cpu0) / (t1 - t0)
        peak_hwm = max(peak_hwm, s.hwm_kb)
        time.sleep(linger)  # live polling goes on; its readings must arrive too
        procs.stop("agent", timeout=30)
        procs.stop("hub", timeout=30)
    finally:
        if watch is not None:
            watch.close()
        procs.stop_all()
    a = analyse(site.hub_dir / "hub.sqlite", outage_s, t0_ns, t1_ns)
    shutil.rmtree(d, ignore_errors=True)
    catchup = t1 - t0
    streaming = t1 - (first or t0)
    return CatchupResult(
        meters, backlog, batches, round(fill_s, 1), round(catchup, 2), round(streaming, 2),
        round(backlog / catchup), round(backlog / streaming), a["during"], int(meters * catchup),
        a["missed"], round(a["max_iv"], 2), a["gaps"], round(a["max_delay"], 2),
        round(cpu_pct, 1), round(peak_hwm / 1024, 1), round(hub_cpu_pct, 1), a["sequence_ok"],
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--meters", type=int, default=32)
    ap.add_argument("--hours", type=float, default=1.0, help="length of the outage (backlog at 1 Hz)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--linger", type=float, default=5.0, help="live seconds after catch-up before stopping")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    results = []
    for i in range(args.runs):
        r = run_once(args.meters, args.hours, args.linger)
        results.append(r)
        print(f"run {i + 1}: {r.backlog_readings} readings in {r.backlog_batches} batches (filled in {r.fill_s:.0f} s); "
              f"caught up in {r.catchup_s:.1f} s = {r.readings_per_s:,} readings/s "
              f"({r.readings_per_s_streaming:,}/s from the first receipt); live: {r.live_readings_during} of "
              f"~{r.live_expected_during} polls, {r.missed_polls} missed, longest interval {r.max_live_interval_s:.2f} s, "
              f"worst delay {r.max_live_delay_s:.1f} s, {r.live_gap_entries} gaps; agent {r.agent_cpu_pct:.0f} % CPU, {r.agent_peak_rss_mb:.0f} MB, hub {r.hub_cpu_pct:.0f} % CPU; "
              f"sequences {'intact' if r.sequence_ok else 'BROKEN'}", flush=True)
    med = {k: statistics.median(getattr(r, k) for r in results)
           for k in ("catchup_s", "readings_per_s", "readings_per_s_streaming", "missed_polls",
                     "max_live_interval_s", "max_live_delay_s", "agent_cpu_pct", "agent_peak_rss_mb", "hub_cpu_pct")}
    print(f"catch-up after a {args.hours:g} h outage of {args.meters} meters at 1 Hz "
          f"({results[0].backlog_readings:,} readings of 41 values), median of {args.runs}: "
          f"{med['readings_per_s']:,.0f} readings/s, caught up in {med['catchup_s']:.1f} s "
          f"({med['readings_per_s_streaming']:,.0f}/s from the first receipt); live polling: "
          f"{med['missed_polls']:.0f} missed polls, {max(r.live_gap_entries for r in results)} gaps, longest interval {med['max_live_interval_s']:.2f} s, "
          f"live readings delayed up to {med['max_live_delay_s']:.1f} s behind the backlog; "
          f"sequences {'intact' if all(r.sequence_ok for r in results) else 'BROKEN'} in every run")
    if args.json:
        print(json.dumps({"meters": args.meters, "hours": args.hours, "runs": args.runs,
                          **{k: round(v, 2) for k, v in med.items()},
                          "sequence_ok": all(r.sequence_ok for r in results),
                          "live_gap_entries": max(r.live_gap_entries for r in results),
                          "per_run": [asdict(r) for r in results]}))


if __name__ == "__main__":
    main()
