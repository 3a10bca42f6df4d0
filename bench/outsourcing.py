"""The masked, double-checked carbon computation against the plain one, on the same networks.

Two compute providers run as processes (`gridtrace compute serve`, TLS on, as deployed). In one
process and alternating, per case:

* plain: `carbon_flow` solving here (what bench/carbon.py calls "carbon");
* masked: the same, its solve masked twice, sent to both providers at once, both answers
  signature-checked, unmasked, residual-checked and compared (hub.compute.outsource);
* the same pair for tracing every load to every source (`trace`).

The power flow is solved once per case, outside the timings. Medians of --runs.

    .venv/bin/python bench/outsourcing.py --runs 7 --json
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from carbon import CASES, made_up_factors

from hub.compute.outsource import Outsourcer, ProviderEndpoint
from hub.contracts.carbon.document import load_units
from hub.contracts.carbon.emission import parse_factors
from hub.contracts.carbon.flow import carbon_flow
from hub.contracts.carbon.powerflow import snapshot_of
from hub.contracts.carbon.tracing import trace
from protos.signing import load_public_key

GRIDTRACE = str(Path(sys.executable).parent / "gridtrace")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_providers(work: Path, count: int) -> tuple[list[subprocess.Popen], list[ProviderEndpoint]]:
    procs, endpoints = [], []
    for i in range(count):
        d = work / f"p{i + 1}"
        subprocess.run([GRIDTRACE, "compute", "init", "--dir", str(d)], check=True, capture_output=True)
        port = free_port()
        p = subprocess.Popen([GRIDTRACE, "--log-level", "WARNING", "compute", "serve", "--dir", str(d),
                              "--listen", f"127.0.0.1:{port}"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
        line = p.stdout.readline()
        if "listening" not in line:
            raise RuntimeError(f"provider {i + 1} did not start: {line}")
        procs.append(p)
        endpoints.append(ProviderEndpoint(f"p{i + 1}", f"localhost:{port}", load_public_key(d / "provider.pub.pem"),
                                          1.0, (d / "tls" / "ca.pem").read_bytes()))
    return procs, endpoints


def measure(case: str, runs: int, out: Outsourcer) -> dict:
    import pandapower as pp
    import pandapower.networks as pn

    net = getattr(pn, case)()
    pp.runpp(net, numba=False)
    snap = snapshot_of(net, "ac")
    factors = parse_factors(made_up_factors(snap.unit_names))
    solver = lambda a, b: out.solve(a, b, cycle=0)
    carbon_flow(snap, factors, solver)  # warm: channels, imports
    t: dict[str, list[float]] = {"plain": [], "masked": [], "plain_shares": [], "masked_shares": []}
    worst = 0.0
    for _ in range(runs):
        t0 = time.perf_counter()
        plain = carbon_flow(snap, factors)
        t1 = time.perf_counter()
        masked = carbon_flow(snap, factors, solver)
        t2 = time.perf_counter()
        trace(plain, load_units(plain))
        t3 = time.perf_counter()
        trace(masked, load_units(masked), solver)
        t4 = time.perf_counter()
        for key, dt in zip(t, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            t[key].append(dt)
        worst = max(worst, float(abs(masked.node_intensity - plain.node_intensity).max()))
    med = {k: statistics.median(v) for k, v in t.items()}
    return {"case": case, "nodes": snap.node_count, **{f"{k}_s": round(v, 5) for k, v in med.items()},
            "masked_over_plain": round(med["masked"] / med["plain"], 3),
            "masked_shares_over_plain_shares": round(med["masked_shares"] / med["plain_shares"], 3),
            "max_intensity_difference": worst, "runs": runs}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    logging.getLogger("pandapower").setLevel(logging.ERROR)
    work = Path(tempfile.mkdtemp(prefix="gridtrace-outsourcing-bench-"))
    procs, endpoints = start_providers(work, 2)
    try:
        with Outsourcer(endpoints, timeout_s=120) as out:
            results = [measure(c, args.runs, out) for c in args.cases.split(",")]
        if any(r.wrong for r in out.records):
            raise RuntimeError("an honest provider was judged wrong: " + str([r.to_json() for r in out.records if r.wrong]))
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)
    print(f"{'case':<16}{'nodes':>7}{'plain s':>10}{'masked s':>10}{'ratio':>8}{'shares s':>10}{'masked sh s':>13}"
          f"{'ratio':>8}{'max |dw|':>10}")
    for r in results:
        print(f"{r['case']:<16}{r['nodes']:>7}{r['plain_s']:>10.4f}{r['masked_s']:>10.4f}{r['masked_over_plain']:>8.2f}"
              f"{r['plain_shares_s']:>10.4f}{r['masked_shares_s']:>13.4f}{r['masked_shares_over_plain_shares']:>8.2f}"
              f"{r['max_intensity_difference']:>10.1e}")
    if args.json:
        print(json.dumps({"results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
