"""Readings per second through one gRPC ingest stream into a real hub (SQLite, TLS off).

The hub runs `hub.server.serve` in this process (a thread with its own event
loop); the client streams pre-built, pre-serialized signed batches (wire v2) and counts
receipts. Client
and hub share this process and its GIL, so this is a floor for one hub core, not
the separate-process load test (bench/ingest.py with `gridtrace sim fleet`,
which comes with the production hub).

    python bench/ingest_stream.py --batches 60 --batch-size 500 --runs 3 [--json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from hubharness import RunningHub, init_hub, register_gateway  # noqa: E402
from ingest_core import make_batches  # noqa: E402
from protos import ingest_pb2  # noqa: E402
from protos.signing import Signer  # noqa: E402


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _start_profiler(out: str) -> list[subprocess.Popen]:
    """py-spy on this process (FILE) and each process it started, verifiers included (FILE.PID),
    for the streaming window only."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    procs = []
    for pid, path in [(os.getpid(), out), *((p, f"{out}.{p}") for p in _descendants(os.getpid()))]:
        procs.append(subprocess.Popen([spy, "record", "--format", "raw", "--rate", "250", "-o", path,
                                       "--pid", str(pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    time.sleep(1.0)  # let them attach
    return procs


def run_once(n_batches: int, size: int, verifiers: int, profile: str | None = None) -> float:
    with tempfile.TemporaryDirectory() as d:
        cfg = init_hub(Path(d) / "hub", block_interval=1.0, verifier_processes=verifiers)
        logging.disable(logging.INFO)  # the hub's per-block log lines would drown the figures
        signer = Signer.generate()
        register_gateway(cfg, "gw-bench", signer, Path(d))
        batches = [b.SerializeToString() for b in make_batches(n_batches, size, signer)]
        with RunningHub(cfg) as hub, grpc.insecure_channel(hub.address) as channel:
            stream = channel.stream_stream(
                "/gridtrace.v1.Ingest/Stream", request_serializer=None,
                response_deserializer=ingest_pb2.Receipt.FromString,
            )
            spy = _start_profiler(profile) if profile else None
            t = time.perf_counter()
            receipts = list(stream(iter(batches), timeout=600))
            elapsed = time.perf_counter() - t
            for p in spy or []:
                p.send_signal(signal.SIGINT)
                p.wait(30)
        assert len(receipts) == n_batches
    return n_batches * size / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--verifiers", type=int, default=1, help="[ingest] verifier_processes (0: check in the hub's process)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--profile", metavar="FILE", help="py-spy raw profile of the streaming window of the first run")
    args = ap.parse_args()
    rates = [run_once(args.batches, args.batch_size, args.verifiers, args.profile if i == 0 else None)
             for i in range(args.runs)]
    median = statistics.median(rates)
    print(f"one stream, {args.batches} batches of {args.batch_size} SDM630 readings (41 quantities), "
          f"verified ({args.verifiers} verifier processes), durably stored and receipted: median {median:,.0f} readings/s over {args.runs} runs "
          f"({', '.join(f'{r:,.0f}' for r in rates)})")
    if args.json:
        print(json.dumps({"readings_per_s": round(median), "runs": [round(r) for r in rates],
                          "batch_size": args.batch_size,
                          "verifier_processes": args.verifiers}))


if __name__ == "__main__":
    main()
