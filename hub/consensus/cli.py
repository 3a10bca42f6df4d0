"""`gridtrace chain ...`: the consensus simulator (and, later, replica operations)."""

from __future__ import annotations

import argparse
import sys
import time

from gridtrace.clihelp import add_command
from hub.consensus.simulator import FAULTS, Faults, Outcome, simulate

# The default fault mixes: every network fault, every Byzantine behaviour, and the
# combinations that make a behaviour matter (bad blocks only hurt a replica that must catch up,
# forged view changes only a view change).
DEFAULT_MIXES = (
    "none", "drop", "delay+duplicate", "partition", "crash", "quorum-loss", "drop+delay+duplicate+crash+partition",
    "equivocate", "equivocate+drop", "conflicting-votes+delay", "replay+crash", "silent-primary",
    "forged-view-change+drop", "bad-blocks+partition", "bad-blocks+crash", "twins", "twins+drop",
)


def add_commands(sub: argparse._SubParsersAction) -> None:
    chain = add_command(sub, "chain", "the replicas' consensus", "gridtrace chain simulate --replicas 4 --seeds 200")
    chain_sub = chain.add_subparsers(dest="chain_command", metavar="COMMAND", required=True)
    sim = add_command(
        chain_sub, "simulate", "run the PBFT core over a seeded faulty network and check safety and liveness",
        "gridtrace chain simulate --replicas 4 --seeds 500\n"
        "gridtrace chain simulate --replicas 7 --seeds 50 --faults equivocate+drop,twins\n"
        "gridtrace chain simulate --seed-start 1234 --seeds 1 --faults crash   # replay one seed\n\n"
        f"faults (combine with +, list with commas): {', '.join(FAULTS)}",
    )
    sim.add_argument("--replicas", type=int, default=4, help="n (default 4; f = (n-1)//3)")
    sim.add_argument("--seeds", type=int, default=100, help="seeds per fault mix (default 100)")
    sim.add_argument("--seed-start", type=int, default=0, help="first seed (default 0)")
    sim.add_argument("--faults", default=",".join(DEFAULT_MIXES), help="fault mixes, comma-separated (default: all)")
    sim.add_argument("--duration", type=float, default=12.0, help="simulated seconds per seed (default 12)")
    sim.set_defaults(func=cmd_simulate)


def cmd_simulate(args: argparse.Namespace) -> int:
    if args.replicas < 1:
        print("gridtrace chain simulate: --replicas must be at least 1", file=sys.stderr)
        return 2
    try:
        mixes = [Faults.parse(m) for m in args.faults.split(",") if m.strip()]
    except ValueError as exc:
        print(f"gridtrace chain simulate: --faults: {exc}", file=sys.stderr)
        return 2
    seeds = range(args.seed_start, args.seed_start + args.seeds)
    heal = args.duration * 2 / 3
    print(f"{args.replicas} replicas (f = {(args.replicas - 1) // 3}), seeds {seeds.start}..{seeds.stop - 1}, "
          f"{args.duration:g} simulated s per seed, faults until {heal:g} s")
    print(f"{'faults':42} {'seeds':>5} {'blocks':>9} {'view changes':>12}  result")
    failed = False
    started = time.monotonic()
    for faults in mixes:
        outcomes = simulate(args.replicas, seeds, faults, duration=args.duration, heal_at=heal)
        failed |= _report(faults, outcomes)
    print(f"{time.monotonic() - started:.1f} s")
    return 1 if failed else 0


def _report(faults: Faults, outcomes: list[Outcome]) -> bool:
    unsafe = [o for o in outcomes if o.violation]
    stalled = [o for o in outcomes if o.stalled and not o.violation]
    blocks = sum(o.blocks for o in outcomes)
    changes = sum(o.view_changes for o in outcomes)
    if unsafe:
        result = f"SAFETY VIOLATION in {len(unsafe)} seeds, first seed {unsafe[0].seed}: {unsafe[0].violation}"
    elif stalled:
        result = f"LIVENESS FAILURE in {len(stalled)} seeds, first seed {stalled[0].seed}: {stalled[0].stalled}"
    else:
        result = "safe and live"
    print(f"{faults.label:42} {len(outcomes):>5} {blocks:>9} {changes:>12}  {result}")
    return bool(unsafe or stalled)
