"""CPU and memory of one edge agent polling N simulated meters, every reading signed and
durably queued and streamed to a real hub (all on loopback, each a separate process).

Prints the agent's CPU use in % of one core (from /proc utime+stime over the measuring
window, after a warm-up), its peak RSS (VmHWM), and the readings the hub stored per
second. With --json the last line is one JSON object.

    python bench/agent_footprint.py --meters 32 --seconds 60 [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from gridtrace.demo import Processes, hub_status, prepare_site, wait_for_port

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--meters", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=60.0, help="measuring window")
    ap.add_argument("--warmup", type=float, default=10.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as d:
        site = prepare_site(Path(d) / "state", args.meters)
        procs = Processes(site.state / "logs")
        try:
            sim = procs.start("sim", "sim", "modbus", "--port", str(site.sim_port), "--meters", str(args.meters))
            wait_for_port(site.sim_port, sim, "simulator")
            hub = procs.start("hub", "hub", "serve", "--config", str(site.hub_dir / "hub.toml"))
            wait_for_port(site.hub_port, hub, "hub")
            agent = procs.start("agent", "edge", "run", "--config", str(site.gw_dir / "agent.toml"))
            time.sleep(args.warmup)
            cpu0, t0 = cpu_seconds(agent.pid), time.monotonic()
            stored0 = hub_status(site.hub_addr, site.ca).entries_stored
            time.sleep(args.seconds)
            cpu1, t1 = cpu_seconds(agent.pid), time.monotonic()
            stored1 = hub_status(site.hub_addr, site.ca).entries_stored
            rss_peak_kb = status_kb(agent.pid, "VmHWM")
            threads = int(next(line.split()[1] for line in Path(f"/proc/{agent.pid}/status").read_text().splitlines()
                               if line.startswith("Threads:")))
        finally:
            procs.stop_all()

    cpu_pct = 100 * (cpu1 - cpu0) / (t1 - t0)
    rate = (stored1 - stored0) / (t1 - t0)
    print(f"agent polling {args.meters} SDM630 meters (41 values each) at 1 Hz over Modbus TCP, "
          f"{args.seconds:.0f} s after {args.warmup:.0f} s warm-up:")
    print(f"  CPU {cpu_pct:.1f} % of one core, peak RSS {rss_peak_kb / 1024:.1f} MB, {threads} threads, "
          f"{rate:.1f} readings/s stored at the hub")
    if args.json:
        print(json.dumps({"meters": args.meters, "cpu_percent": round(cpu_pct, 2),
                          "peak_rss_mb": round(rss_peak_kb / 1024, 1), "threads": threads,
                          "readings_per_s": round(rate, 1)}))


if __name__ == "__main__":
    sys.exit(main())
