"""Consensus among replica processes: decided batches/s on 4 replicas against 1, commit latency,
and the time from killing the primary to the first block of the new view.

For each replica count, `gridtrace chain init` then `gridtrace chain replica` processes on
loopback (mutual TLS, journals fsync'd); a client submits batch digests to the replicas in
turn, `--chunk` per call from 8 concurrent callers, as fast as they are taken or at half the
full rate, for `--seconds`, and polls
every replica's status every 20 ms. Figures:

* decided batches/s: batches decided by every replica over the window (first submit to last
  decision); with 500 readings per batch, ×500 is the readings/s the chain can seal, if the
  hub's ingest keeps up (bench/ingest.py measures that part);
* latency: submit of a batch to the first poll that sees it decided at every replica (so
  ±20 ms), p50 and p99, in a run at half the full rate;
* failover (4 replicas): the primary is killed with SIGKILL under load; the time until the
  others decide a block in a higher view.

This measures the consensus alone: the hub does not run on the replicas yet.

    .venv/bin/python bench/consensus.py --seconds 8 --runs 3 --json
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SUBMITTERS = 8  # concurrent Submit calls, as a hub's ingest streams would make
sys.path.insert(0, str(ROOT))

from hub.consensus.process import SERVICE, open_channel  # noqa: E402
from hub.consensus.replica_config import load_replica_config  # noqa: E402


def free_base_port(n: int) -> int:
    import socket
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + n < 65000 and all(_free(base + i) for i in range(n)):
            return base
    raise RuntimeError("no free ports")


def _free(port: int) -> bool:
    import socket
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


class Replicas:
    def __init__(self, n: int, work: Path) -> None:
        self.n = n
        self.dir = work / f"n{n}"
        subprocess.run([sys.executable, "-m", "gridtrace", "chain", "init", "--replicas", str(n), "--dir",
                        str(self.dir), "--base-port", str(free_base_port(n)), "--base-timeout", "0.5"],
                       check=True, capture_output=True)
        self.cfg = load_replica_config(self.dir / "replica-0.toml")
        self.procs = [
            subprocess.Popen([sys.executable, "-m", "gridtrace", "--log-level", "WARNING", "chain", "replica",
                              "--config", str(self.dir / f"replica-{i}.toml")],
                             stdout=subprocess.DEVNULL, stderr=open(self.dir / f"replica-{i}.log", "wb"))  # noqa: SIM115
            for i in range(n)
        ]

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


async def _status(channels, i: int, start: int = 1) -> dict:  # noqa: ANN001
    call = channels[i].unary_unary(f"/{SERVICE}/Status", request_serializer=None, response_deserializer=None)
    return json.loads(await call(start.to_bytes(8, "big"), timeout=5))


async def run_load(r: Replicas, seconds: float, rate: float, chunk: int, kill_primary_at: float | None = None) -> dict:
    channels = {i: open_channel(r.cfg, r.cfg.peers[i].address) for i in range(r.n)}
    alive = set(range(r.n))
    for i in range(r.n):  # ready
        for _ in range(200):
            try:
                await _status(channels, i)
                break
            except Exception:  # noqa: BLE001
                await asyncio.sleep(0.05)
    submitted: dict[str, float] = {}
    decided_at: dict[str, float] = {}
    start = time.monotonic()
    stop_at = start + seconds
    failover: dict[str, float] = {}
    k = 0

    async def submitter() -> None:
        nonlocal k
        calls = {i: channels[i].unary_unary(f"/{SERVICE}/Submit", request_serializer=None, response_deserializer=None)
                 for i in range(r.n)}
        while time.monotonic() < stop_at:
            mine, k = k, k + chunk
            target = mine // chunk % r.n
            if target not in alive:
                continue
            digests = [hashlib.sha256(f"{start}-{mine + j}".encode()).digest() for j in range(chunk)]
            now = time.monotonic()
            for d in digests:
                submitted[d.hex()] = now
            try:
                await calls[target](b"".join(digests), timeout=5)
            except Exception:  # noqa: BLE001 - the killed replica: these were not taken
                for d in digests:
                    submitted.pop(d.hex(), None)
                continue
            if rate:
                await asyncio.sleep(max(0.0, (k / rate) - (time.monotonic() - start)))
            else:
                await asyncio.sleep(0)

    seen_height: dict[int, int] = {}
    seen_by: dict[str, int] = {}  # batch -> replicas that decided it

    async def poller() -> None:
        killed_view = None
        while True:
            now = time.monotonic()
            if kill_primary_at is not None and "killed" not in failover and now - start >= kill_primary_at:
                view = (await _status(channels, 1))["view"]
                primary = view % r.n
                r.procs[primary].kill()
                alive.discard(primary)
                failover["killed"] = time.monotonic()
                killed_view = view
            states = []
            for i in sorted(alive):
                try:
                    s = await _status(channels, i, seen_height.get(i, 0) + 1)  # only what is new
                except Exception:  # noqa: BLE001
                    continue
                seen_height[i] = s["height"]
                for blk in s["batches"]:
                    for b in blk:
                        seen_by[b] = seen_by.get(b, 0) + 1
                states.append(s)
            if states:
                t = time.monotonic()
                for b, count in seen_by.items():
                    if count >= len(alive) and b not in decided_at:
                        decided_at[b] = t
                if killed_view is not None and "new_view_block" not in failover:
                    if all(s["view"] > killed_view for s in states) and min(s["height"] for s in states) > failover.setdefault("height", min(s["height"] for s in states)):
                        failover["new_view_block"] = t
            if now > stop_at and all(b in decided_at for b in submitted):
                return
            if now > stop_at + 30:
                return
            await asyncio.sleep(0.02)

    await asyncio.gather(*(submitter() for _ in range(SUBMITTERS)), poller())
    for ch in channels.values():
        await ch.close()
    done = [b for b in submitted if b in decided_at]
    window = max(decided_at[b] for b in done) - start if done else float("nan")
    lat = sorted((decided_at[b] - submitted[b]) * 1000 for b in done)
    out = {
        "batches_submitted": len(submitted), "batches_decided": len(done),
        "decided_per_s": len(done) / window if done else 0.0,
        "p50_ms": lat[len(lat) // 2] if lat else None, "p99_ms": lat[int(len(lat) * 0.99)] if lat else None,
    }
    if "new_view_block" in failover:
        out["failover_s"] = failover["new_view_block"] - failover["killed"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--chunk", type=int, default=8, help="batch digests per Submit call (default 8)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="gridtrace-consensus-") as tmp:
        runs: dict[int, list[dict]] = {1: [], 4: []}
        for run in range(args.runs):
            for n in (1, 4):  # alternated: the machine's other load falls on both
                r = Replicas(n, Path(tmp) / f"run{run}")
                try:
                    res = asyncio.run(run_load(r, args.seconds, 0.0, args.chunk))
                finally:
                    r.stop()
                runs[n].append(res)
                print(f"run {run + 1}, {n} replica(s): {res['decided_per_s']:,.0f} batches/s decided "
                      f"({res['batches_decided']} of {res['batches_submitted']})", flush=True)
        full = {n: statistics.median(x["decided_per_s"] for x in rs) for n, rs in runs.items()}
        half = {}
        for n in (1, 4):
            r = Replicas(n, Path(tmp) / "half")
            try:
                half[n] = asyncio.run(run_load(r, args.seconds, full[n] / 2, args.chunk))
            finally:
                r.stop()
        r = Replicas(4, Path(tmp) / "failover")
        try:
            fo = asyncio.run(run_load(r, args.seconds, full[4] / 2, args.chunk, kill_primary_at=args.seconds / 2))
        finally:
            r.stop()
    ratio = full[4] / full[1] if full[1] else 0.0
    print(f"1 replica:  {full[1]:,.0f} batches/s decided (median of {args.runs}); at half rate p50 "
          f"{half[1]['p50_ms']:.0f} ms, p99 {half[1]['p99_ms']:.0f} ms")
    print(f"4 replicas: {full[4]:,.0f} batches/s decided (median of {args.runs}); at half rate p50 "
          f"{half[4]['p50_ms']:.0f} ms, p99 {half[4]['p99_ms']:.0f} ms; ratio 4/1 {ratio:.2f}")
    print(f"failover: primary killed under load, first block of the new view {fo.get('failover_s', float('nan')):.2f} s later "
          f"({fo['batches_decided']} of {fo['batches_submitted']} batches decided)")
    results = {
        "decided_per_s_1": full[1], "decided_per_s_4": full[4], "ratio": round(ratio, 3),
        "p50_ms_1": half[1]["p50_ms"], "p99_ms_1": half[1]["p99_ms"],
        "p50_ms_4": half[4]["p50_ms"], "p99_ms_4": half[4]["p99_ms"],
        "failover_s": fo.get("failover_s"), "runs": {str(n): rs for n, rs in runs.items()},
    }
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
