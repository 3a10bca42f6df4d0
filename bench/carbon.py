"""Carbon emission flow against pandapower's own power flow on the same networks.

For each case, in one process and alternating: pandapower's AC power flow (`runpp`, numba off,
as `gridtrace carbon trace` runs it), then the carbon computation on its result. Figures are
medians of --runs:

* power flow: `pandapower.runpp` alone;
* extract: reading the result tables into a snapshot (`powerflow.snapshot_of`);
* carbon: building and factorising the sparse system, intensities, branch and loss carbon
  (`flow.carbon_flow`), what the issue's goal compares with the power flow;
* shares: generator-to-load tracing for every load (`tracing.trace`), reported beside it.

Emission factors are made up per case (a third of the sources coal curves, a third 0.4
tCO2/MWh, a third clean) and do not change the timing. The conservation residual of the last
run is printed too.

    .venv/bin/python bench/carbon.py --runs 7 --json
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hub.contracts.carbon.document import load_units
from hub.contracts.carbon.emission import parse_factors
from hub.contracts.carbon.flow import carbon_flow
from hub.contracts.carbon.powerflow import snapshot_of
from hub.contracts.carbon.tracing import trace

CASES = ("case118", "case1354pegase", "case9241pegase")
COAL = {"coal": {"a": 0.0002, "b": 0.31, "c": 4.2, "carbon_content": 0.62, "oxidation_rate": 0.98}}


def made_up_factors(names: tuple[str, ...]) -> dict:
    out: dict = {}
    for i, name in enumerate(n for n in names if n.startswith(("gen:", "sgen:", "ext_grid:"))):
        if i % 3 == 0:
            out[name] = COAL
        elif i % 3 == 1:
            out[name] = 0.4
    return out


def measure(case: str, runs: int) -> dict:
    import pandapower as pp
    import pandapower.networks as pn

    net = getattr(pn, case)()
    pp.runpp(net, numba=False)  # warm: imports and caches
    factors = parse_factors(made_up_factors(snapshot_of(net, "ac").unit_names))
    times: dict[str, list[float]] = {"power_flow": [], "extract": [], "carbon": [], "shares": []}
    for _ in range(runs):
        t0 = time.perf_counter()
        pp.runpp(net, numba=False)
        t1 = time.perf_counter()
        snap = snapshot_of(net, "ac")
        t2 = time.perf_counter()
        flow = carbon_flow(snap, factors)
        t3 = time.perf_counter()
        shares = trace(flow, load_units(flow))
        t4 = time.perf_counter()
        for key, dt in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            times[key].append(dt)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "case": case, "nodes": snap.node_count, "branches": len(snap.branch_names), "units": len(snap.unit_names),
        **{f"{k}_s": round(v, 5) for k, v in med.items()},
        "carbon_over_power_flow": round(med["carbon"] / med["power_flow"], 4),
        "carbon_and_shares_over_power_flow": round((med["carbon"] + med["shares"]) / med["power_flow"], 4),
        "share_entries": int(shares.mw.nnz),
        "relative_residual": abs(flow.residual_t_per_h) / flow.emission_t_per_h,
        "runs": runs,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default=",".join(CASES), help="pandapower.networks cases, comma-separated")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    logging.getLogger("pandapower").setLevel(logging.ERROR)
    results = [measure(c, args.runs) for c in args.cases.split(",")]
    print(f"{'case':<16}{'nodes':>7}{'power flow s':>14}{'extract s':>11}{'carbon s':>10}{'shares s':>10}"
          f"{'carbon/pf':>11}{'+shares/pf':>12}{'residual':>11}")
    for r in results:
        print(f"{r['case']:<16}{r['nodes']:>7}{r['power_flow_s']:>14.4f}{r['extract_s']:>11.4f}{r['carbon_s']:>10.4f}"
              f"{r['shares_s']:>10.4f}{r['carbon_over_power_flow']:>11.3f}{r['carbon_and_shares_over_power_flow']:>12.3f}"
              f"{r['relative_residual']:>11.1e}")
    if args.json:
        print(json.dumps({"results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
