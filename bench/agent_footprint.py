"""CPU and memory of one edge agent polling N simulated meters, every reading signed and
durably queued and streamed to a real hub (all on loopback, each a separate process),
optionally side by side with ThingsBoard IoT Gateway reading the same meters.

Per run: one simulator (`gridtrace sim modbus`, SDM630 map) serves the meters; then,
one after another so they never compete for the cores,
  - with --compare-thingsboard: ThingsBoard IoT Gateway's Modbus connector reads 13
    values per meter (32-bit floats, input registers) into a local mosquitto
    (bench/thingsboard_gateway.py);
  - our agent reads the same 13 values (a subset map written from the SDM630 map), and
  - our agent reads the full SDM630 map (41 values),
each into a fresh TLS hub. A program is measured after it delivered its first
reading plus --warmup seconds, for --seconds: CPU in % of one core (utime+stime of
its process tree over the window), peak RSS (VmHWM), most threads seen, and what
arrived at the other end per second. With --runs N the figures are medians.
With --json the last line is one JSON object.

    python bench/agent_footprint.py --meters 32 --seconds 60 [--json]
    python bench/agent_footprint.py --meters 32 --seconds 60 --runs 3 --compare-thingsboard --json
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from procstats import Footprint, measure

from gridtrace.demo import Processes, free_port, hub_status, prepare_site, wait_for_port

GOAL_CPU_RATIO = 1 / 3   # the issue: under a third of ThingsBoard's CPU ...
GOAL_RSS_MB = 60.0       # ... and under 60 MB RSS


@dataclass(frozen=True)
class AgentResult:
    values_per_meter: int
    requests_per_meter: int  # Modbus reads per poll, from the map's read plan
    footprint: Footprint
    readings_per_s: float   # entries the hub stored per second during the window


def subset_map_toml(names: tuple[str, ...], max_gap: int | None = None) -> str:
    """A register map file holding only `names` of the SDM630 map, as an engineer would write it."""
    from edge.registermap import load_register_map

    sdm = load_register_map("eastron_sdm630")
    lines = [
        "# SDM630 subset: the values ThingsBoard's Modbus connector is given in bench/agent_footprint.py",
        "[map]", 'name = "sdm630_subset"', f'vendor = "{sdm.vendor}"', f'model = "{sdm.model}"',
        f"function = {sdm.function}", f'word_order = "{sdm.word_order}"', f'byte_order = "{sdm.byte_order}"',
    ]
    if max_gap is not None:
        lines.append(f"max_gap = {max_gap}")
    for n in names:
        r = sdm.register(n)
        lines += ["", "[[register]]", f'name = "{r.name}"', f"address = {r.address}", f'type = "{r.type}"',
                  f'unit = "{r.unit}"', f'kind = "{r.kind}"']
    return "\n".join(lines) + "\n"


def full_map_toml(max_gap: int) -> str:
    """The shipped SDM630 map file with another max_gap (registers read through between blocks)."""
    import edge.registermaps

    text = (Path(edge.registermaps.__file__).parent / "eastron_sdm630.toml").read_text()
    return text.replace("[map]\n", f"[map]\nmax_gap = {max_gap}\n", 1)


def run_agent(meters: int, sim_port: int, register_map: str | None, seconds: float, warmup: float,
              state: Path, batch_age_s: float = 2.0, py_spy: str | None = None,
              profile_out: Path | None = None, max_block: int | None = None) -> AgentResult:
    """A fresh hub and agent against the running simulator; measure the agent."""
    site = prepare_site(state, meters, batch_age_s=batch_age_s, block_interval_s=2.0)
    agent_toml = site.gw_dir / "agent.toml"
    # The site picked its own simulator port; point the meters at the simulator already running.
    text = agent_toml.read_text().replace(f"127.0.0.1:{site.sim_port}?", f"127.0.0.1:{sim_port}?")
    if register_map is not None:
        text = text.replace('register_map = "eastron_sdm630"', f'register_map = "{register_map}"')
    if max_block is not None:
        text = text.replace("\ninterval_s = ", f"\nmax_block = {max_block}\ninterval_s = ")
    for wanted in (f"127.0.0.1:{sim_port}?", f'register_map = "{register_map}"' if register_map else "",
                   f"max_block = {max_block}" if max_block else ""):
        if wanted not in text:
            # `edge init` writes its config differently now; this bench edits it by text.
            raise RuntimeError(f"could not set {wanted!r} in {agent_toml}; update run_agent() in {__file__}")
    agent_toml.write_text(text)
    regmap = _resolve(register_map)
    values = len(regmap.quantities)
    requests = len(regmap.plan(max_block or 64))
    procs = Processes(site.state / "logs")
    try:
        hub = procs.start("hub", "hub", "serve", "--config", str(site.hub_dir / "hub.toml"))
        wait_for_port(site.hub_port, hub, "hub")
        agent = procs.start("agent", "edge", "run", "--config", str(agent_toml))
        deadline = time.monotonic() + 60
        while hub_status(site.hub_addr, site.ca).entries_stored == 0:
            if agent.poll() is not None:
                raise RuntimeError(f"agent exited with code {agent.returncode}; see {site.state}/logs/agent.log")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the hub stored nothing in 60 s; see {site.state}/logs")
            time.sleep(0.2)
        time.sleep(warmup)
        spy = None
        if py_spy is not None and profile_out is not None:
            # All threads, sampled from outside (the agent's SQLite and sealing run in worker threads).
            spy = subprocess.Popen([py_spy, "record", "--pid", str(agent.pid), "--duration", str(int(seconds)),
                                    "--rate", "100", "--format", "raw", "-o", str(profile_out)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        stored0, t0 = hub_status(site.hub_addr, site.ca).entries_stored, time.monotonic()
        fp = measure(agent.pid, seconds)
        stored1, t1 = hub_status(site.hub_addr, site.ca).entries_stored, time.monotonic()
        if spy is not None:
            spy.wait(30)
    finally:
        procs.stop_all()
    return AgentResult(values, requests, fp, (stored1 - stored0) / (t1 - t0))


def _resolve(register_map: str | None):
    from edge.config import resolve_register_map

    return resolve_register_map(register_map or "eastron_sdm630", Path.cwd())


def one_run(args: argparse.Namespace, tmp: Path) -> dict:
    from thingsboard_gateway import THIRTEEN, run_baseline, thirteen_registers

    out: dict = {}
    sim_port = free_port()
    procs = Processes(tmp)
    try:
        sim = procs.start("sim", "sim", "modbus", "--port", str(sim_port), "--meters", str(args.meters))
        wait_for_port(sim_port, sim, "simulator")
        if args.compare_thingsboard:
            out["tb"] = run_baseline("127.0.0.1", sim_port, args.meters, thirteen_registers(), args.seconds,
                                     args.warmup, args.tb_storage)
        for values in args.values:
            regmap = None
            if values == 13:
                regmap = str(tmp / "sdm630_13.toml")
                Path(regmap).write_text(subset_map_toml(THIRTEEN, args.max_gap))
            elif args.max_gap is not None:
                regmap = str(tmp / "sdm630_41.toml")
                Path(regmap).write_text(full_map_toml(args.max_gap))
            profile = None
            if args.profile_dir is not None:
                args.profile_dir.mkdir(parents=True, exist_ok=True)
                profile = args.profile_dir / f"agent-{values}values-{time.strftime('%H%M%S')}.txt"
            out[values] = run_agent(args.meters, sim_port, regmap, args.seconds, args.warmup,
                                    tmp / f"state-{values}", args.batch_age, args.py_spy, profile,
                                    args.max_block)
    finally:
        procs.stop_all()
    return out


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--meters", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=60.0, help="measuring window")
    ap.add_argument("--warmup", type=float, default=10.0, help="seconds after the first delivered reading")
    ap.add_argument("--runs", type=int, default=1, help="repeat; figures are medians")
    ap.add_argument("--values", type=int, action="append", choices=(13, 41),
                    help="values per meter our agent reads: 13 (the ThingsBoard subset) or 41 (full SDM630 map); "
                         "may be repeated (default: 41, or 13 and 41 with --compare-thingsboard)")
    ap.add_argument("--compare-thingsboard", action="store_true",
                    help="also measure ThingsBoard IoT Gateway on the same meters (installs it into "
                         "bench/.venv-thingsboard once)")
    ap.add_argument("--tb-storage", choices=("memory", "sqlite", "file"), default="memory",
                    help="ThingsBoard's event storage (shipped default: memory, which is not durable)")
    ap.add_argument("--batch-age", type=float, default=2.0,
                    help="the agent's [batching] max_age_s (shipped default 2.0; the demo uses 1.0)")
    ap.add_argument("--max-block", type=int, help="our agent's max_block per meter (registers per request; "
                    "default: the agent's own, 64; an SDM630 answers up to 80)")
    ap.add_argument("--max-gap", type=int, help="max_gap of the map our agent reads (unused registers read through "
                    "to save a request; default: the map's own, 8)")
    ap.add_argument("--py-spy", metavar="PATH", help="py-spy binary: profile our agent during each window "
                    "(collapsed stacks of all busy threads; the profiler's pauses add a little CPU)")
    ap.add_argument("--profile-dir", type=Path, default=Path(tempfile.gettempdir()) / "gridtrace-profiles",
                    help="where --py-spy writes (default: %(default)s)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.py_spy is None:
        args.profile_dir = None
    if not args.values:
        args.values = [13, 41] if args.compare_thingsboard else [41]
    args.values = sorted(set(args.values))

    runs = []
    for i in range(args.runs):
        d = Path(tempfile.mkdtemp(prefix="agent-footprint-"))
        try:
            runs.append(one_run(args, d))
        except BaseException:
            print(f"run {i + 1} failed; its configs and logs are kept in {d}", file=sys.stderr)
            raise
        shutil.rmtree(d, ignore_errors=True)
        if args.runs > 1:
            print(f"run {i + 1}/{args.runs}: " + "; ".join(_short(k, v) for k, v in runs[-1].items()),
                  file=sys.stderr, flush=True)

    if args.profile_dir is not None:
        print(f"py-spy profiles (collapsed stacks) in {args.profile_dir}", file=sys.stderr)
    print(f"{args.meters} simulated SDM630 meters at 1 Hz over Modbus TCP, {args.seconds:.0f} s windows after "
          f"{args.warmup:.0f} s warm-up, median of {args.runs} run(s):")
    print(f"  {'program':<58} {'CPU % core':>10} {'peak RSS MB':>11} {'threads':>7} {'readings/s':>10} {'values/s':>9}")
    summary: dict = {"meters": args.meters, "seconds": args.seconds, "warmup": args.warmup, "runs": args.runs,
                     "batch_age_s": args.batch_age, "max_block": args.max_block, "max_gap": args.max_gap}
    if args.compare_thingsboard:
        tbs = [r["tb"] for r in runs]
        tb_cpu = med([t.footprint.cpu_pct for t in tbs])
        tb_rss = med([t.footprint.peak_rss_mb for t in tbs])
        tb_thr = int(med([t.footprint.threads for t in tbs]))
        tb_rate = med([t.readings_per_s for t in tbs])
        print(f"  {f'thingsboard-gateway {tbs[0].version} ({args.tb_storage} storage), 13 values in 13 reads':<58} "
              f"{tb_cpu:>10.1f} {tb_rss:>11.1f} {tb_thr:>7} {tb_rate:>10.1f} {med([t.values_per_s for t in tbs]):>9.0f}")
        summary.update(tb_version=tbs[0].version, tb_storage=args.tb_storage, tb_cpu_pct=round(tb_cpu, 2),
                       tb_peak_rss_mb=round(tb_rss, 1), tb_threads=tb_thr, tb_readings_per_s=round(tb_rate, 1),
                       tb_runs=[_fp_json(t.footprint) | {"readings_per_s": round(t.readings_per_s, 1),
                                                         "values_per_s": round(t.values_per_s)} for t in tbs])
    for values in args.values:
        ours = [r[values] for r in runs]
        cpu = med([a.footprint.cpu_pct for a in ours])
        rss = med([a.footprint.peak_rss_mb for a in ours])
        thr = int(med([a.footprint.threads for a in ours]))
        rate = med([a.readings_per_s for a in ours])
        n_reads = ours[0].requests_per_meter
        label = f"gridtrace agent, {values} values in {n_reads} read{'' if n_reads == 1 else 's'}, signed+durable"
        print(f"  {label:<58} "
              f"{cpu:>10.1f} {rss:>11.1f} {thr:>7} {rate:>10.1f} {rate * values:>9.0f}")
        key = "agent" if values == args.values[0] else f"agent{values}"
        summary.update({f"{key}_values": values, f"{key}_requests_per_meter": ours[0].requests_per_meter,
                        f"{key}_cpu_pct": round(cpu, 2), f"{key}_peak_rss_mb": round(rss, 1),
                        f"{key}_threads": thr, f"{key}_readings_per_s": round(rate, 1),
                        f"{key}_runs": [_fp_json(a.footprint) | {"readings_per_s": round(a.readings_per_s, 1)}
                                        for a in ours]})
    if args.compare_thingsboard:
        cpu_ratio = summary["agent_cpu_pct"] / summary["tb_cpu_pct"]
        rss_ratio = summary["agent_peak_rss_mb"] / summary["tb_peak_rss_mb"]
        print(f"  ours/ThingsBoard at 13 values: CPU {cpu_ratio:.2f} (goal < {GOAL_CPU_RATIO:.2f}), "
              f"RSS {rss_ratio:.2f}; peak RSS {summary['agent_peak_rss_mb']:.1f} MB (goal < {GOAL_RSS_MB:.0f} MB)")
        if "agent41_cpu_pct" in summary:
            print(f"  ours at 41 values / ThingsBoard at 13: CPU {summary['agent41_cpu_pct'] / summary['tb_cpu_pct']:.2f}, "
                  f"RSS {summary['agent41_peak_rss_mb'] / summary['tb_peak_rss_mb']:.2f}")
        summary.update(cpu_ratio=round(cpu_ratio, 3), rss_ratio=round(rss_ratio, 3),
                       goal_met=cpu_ratio < GOAL_CPU_RATIO and summary["agent_peak_rss_mb"] < GOAL_RSS_MB)
    # Names of the bench before the comparison existed, for whoever reads them.
    summary.update(cpu_percent=summary["agent_cpu_pct"], peak_rss_mb=summary["agent_peak_rss_mb"],
                   threads=summary["agent_threads"], readings_per_s=summary["agent_readings_per_s"])
    if args.json:
        print(json.dumps(summary))


def _fp_json(fp: Footprint) -> dict:
    return {k: round(v, 2) if isinstance(v, float) else v for k, v in asdict(fp).items()}


def _short(key: object, r: object) -> str:
    name = "thingsboard" if key == "tb" else f"agent {key} values"
    fp = r.footprint  # type: ignore[attr-defined]
    return (f"{name} {fp.cpu_pct:.1f} % CPU, peak {fp.peak_rss_mb:.1f} MB "
            f"(RSS {fp.rss_start_mb:.1f} -> {fp.rss_end_mb:.1f} MB over the window), {fp.threads} threads")


if __name__ == "__main__":
    sys.exit(main())
