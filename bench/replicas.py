"""Committed readings/s of a substation's hub as 4 PBFT replicas against the same load on 1
replica, commit latency, and the time from killing the primary to the next block.

Each configuration is made by `gridtrace chain init --chain-id bench` (mutual TLS between
replicas, TLS towards gateways), the fleet's gateways registered with every hub, and every hub
started as its own `gridtrace hub serve` process on this machine. `gridtrace sim fleet` then
streams signed SDM630 batches, the gateways spread over the replicas; a receipt comes only
once its batch is in a decided block written to that replica's database, so receipted
readings/s are committed readings/s, and the receipt latency (send of a batch to its checked
receipt) is the commit latency from batch receipt to commit, plus the network hop.

1. **full rate**, --runs times, 1 and 4 replicas alternated: the fleet sends as fast as the
   replicas receipt (capped by --max-rate); after each run every replica must hold the same
   chain with every receipted batch in exactly one block;
2. **half rate**: one 4-replica run paced at half its median full rate: p50/p99 latency;
3. **failover**: a 4-replica run at a quarter of that rate; halfway through, the primary is
   killed with SIGKILL; the figure is the time from the kill to the first block a live
   replica decides in a later view (from the replicas' logs, wall clock in ms).

With --payload-copies K a third configuration runs too, alternated with the others: 4 replicas
with custody (K of them store each batch's entries, the others its header); the half-rate and
failover runs then use it.

Prints the medians, the ratio 4/1 and the failover time; with --json the last line is one
JSON object. Every replica process of both configurations shares this machine's cores with
the fleet: say how busy the machine was.

    .venv/bin/python bench/replicas.py --gateways 8 --meters 32 --batch-size 500 --seconds 8 --runs 3 --json
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from firmware_sim.loadgen import ensure_keys, gateway_ids  # noqa: E402
from ingest import GRIDTRACE, ROOT, BenchError, Server  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from replicaharness import free_range  # noqa: E402


class Substation:
    """n hub replicas as processes, set up by `gridtrace chain init --chain-id`."""

    def __init__(self, work: Path, n: int, keys_dir: Path, gateways: tuple[str, ...], base_timeout: float,
                 payload_copies: int = 0) -> None:
        from hub.config import load_hub_config
        from hub.storage.store import Store
        from protos.signing import key_id, load_public_key, public_key_pem

        self.dir, self.n = work / f"replicas-{n}", n
        base = free_range(2 * n)
        subprocess.run(
            [GRIDTRACE, "chain", "init", "--replicas", str(n), "--dir", str(self.dir), "--chain-id", "bench",
             "--base-port", str(base), "--hub-base-port", str(base + n), "--base-timeout", str(base_timeout),
             "--payload-copies", str(payload_copies if n > 1 else 0)],
            check=True, capture_output=True, cwd=ROOT,
        )
        self.ports = [base + n + i for i in range(n)]
        self.tls_ca = self.dir / "tls" / "ca.pem"
        now = time.time_ns()
        for i in range(n):
            store = Store(load_hub_config(self.hub_toml(i)).database_url)
            try:
                for gw in gateways:
                    pub = load_public_key(keys_dir / f"{gw}.pub.pem")
                    store.add_gateway(gw, key_id(pub), public_key_pem(pub), now)
            finally:
                store.close()
        self.servers: dict[int, Server] = {}

    def hub_toml(self, i: int) -> Path:
        return self.dir / f"hub-{i}" / "hub.toml"

    def log(self, i: int) -> Path:
        return self.dir / f"hub-{i}.log"

    def start(self) -> None:
        for i in range(self.n):
            self.servers[i] = Server(
                [GRIDTRACE, "--log-format", "text", "hub", "serve", "--config", str(self.hub_toml(i))],
                self.log(i), f"hub replica {i}",
            )
        for i in range(self.n):
            self.servers[i].wait_listening(self.ports[i])
        time.sleep(1.0)  # the replicas' peer streams connect

    def stop(self) -> None:
        for s in self.servers.values():
            s.stop()

    def hub_keys(self) -> list[str]:
        return [a for i in range(self.n) for a in ("--hub-key", str(self.dir / f"hub-{i}" / "hub.pub.pem"))]

    def chains(self) -> list[list[tuple[bytes, list[bytes]]]]:
        from hub.config import load_hub_config
        from hub.storage.store import Store

        out = []
        for i in range(self.n):
            store = Store(load_hub_config(self.hub_toml(i)).database_url)
            try:
                head = store.head()
                out.append([(store.block(h).hash, store.block_batch_hashes(h))
                            for h in range(1, (head.height if head else 0) + 1)])
            finally:
                store.close()
        return out

    def check(self, receipted_batches: int, alive: list[int], timeout: float = 60.0) -> float:
        """Seconds until every live replica holds the same chain with every receipted batch in
        exactly one block (it may hold more: batches stored but not receipted when the run ended)."""
        t0 = time.monotonic()
        while True:
            chains = [c for i, c in enumerate(self.chains()) if i in alive]
            heads = {tuple(h for h, _ in c) for c in chains}
            sealed = [[b for _, bs in c for b in bs] for c in chains]
            if len(heads) == 1 and all(len(s) == len(set(s)) >= receipted_batches for s in sealed):
                return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                raise BenchError(f"replicas {alive} do not agree on a chain holding the {receipted_batches} receipted "
                                 f"batches: heights {[len(c) for c in chains]}, sealed {[len(s) for s in sealed]}")
            time.sleep(0.3)


def fleet(args: argparse.Namespace, site: Substation, keys_dir: Path, prefix: str, rate: float, log: Path,
          allow_errors: bool = False) -> dict:
    """One fleet run with its own gateways (`prefix`): each run starts fresh gateway chains.
    `allow_errors`: gateways whose replica was killed stop (the load generator does not fail
    over as agents do); the figures of the others still count."""
    hubs = ",".join(f"127.0.0.1:{p}" for p in site.ports)
    cmd = [GRIDTRACE, "sim", "fleet", "--hub", hubs, "--ca", str(site.tls_ca), "--keys-dir", str(keys_dir),
           "--gateway-prefix", prefix, "--gateways", str(args.gateways), "--meters", str(args.meters),
           "--batch-size", str(args.batch_size), "--seconds", str(args.seconds), "--processes", str(args.processes),
           "--window", str(args.window), "--rate", f"{rate:.0f}", "--prebuild", "--json", *site.hub_keys()]
    if not rate:
        cmd += ["--max-readings", str(int(args.max_rate * args.seconds))]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.seconds * 10 + 300, cwd=ROOT)
    log.write_text(p.stdout + p.stderr)
    lines = p.stdout.strip().splitlines()
    if (p.returncode != 0 and not allow_errors) or not lines or not lines[-1].startswith("{"):
        raise BenchError(f"sim fleet against {site.n} replicas exited with {p.returncode}: {p.stderr.strip()[-2000:]}")
    return json.loads(lines[-1])


_DECIDED = re.compile(r"^(\S+ \S+) INFO gridtrace\.chain: decided up to height (\d+) \(view (\d+)\)")


def decisions(log: Path) -> list[tuple[float, int, int]]:
    """(wall time, height, view) of each 'decided up to' line of a replica's log."""
    out = []
    for line in log.read_text(errors="replace").splitlines():
        m = _DECIDED.match(line)
        if m:
            t = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            out.append((t, int(m.group(2)), int(m.group(3))))
    return out


def failover(args: argparse.Namespace, site: Substation, keys_dir: Path, rate: float, work: Path) -> dict:
    """Kill the primary halfway through a paced run; time to the first block in a later view."""
    import threading

    before = {i: decisions(site.log(i)) for i in range(site.n)}
    view = max((d[-1][2] for d in before.values() if d), default=0)
    primary = view % site.n
    killed_at: list[float] = []

    def kill() -> None:
        time.sleep(args.seconds / 2)
        killed_at.append(time.time())
        site.servers[primary].proc.kill()

    t = threading.Thread(target=kill)
    t.start()
    figures = fleet(args, site, keys_dir, "failover", rate, work / "fleet-failover.log", allow_errors=True)
    t.join()
    alive = [i for i in range(site.n) if i != primary]
    after = [d for i in alive for d in decisions(site.log(i)) if d[0] >= killed_at[0] and d[2] > view]
    if not after:
        raise BenchError(f"no block decided in a view after {view} once primary {primary} was killed")
    first = min(after)
    lost = figures["batches_sent"] - figures["batches_receipted"]
    return {"primary": primary, "old_view": view, "new_view": first[2],
            "first_block_after_kill_s": round(first[0] - killed_at[0], 3),
            "receipted_readings_per_s": figures["readings_per_s"], "unreceipted_batches": lost,
            "errors": figures["errors"][:3]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gateways", type=int, default=8)
    ap.add_argument("--meters", type=int, default=32, help="meters per gateway")
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--seconds", type=float, default=8.0, help="sending time of each fleet run")
    ap.add_argument("--processes", type=int, default=2, help="load processes of each fleet")
    ap.add_argument("--window", type=int, default=16, help="batches in flight per gateway stream")
    ap.add_argument("--runs", type=int, default=3, help="full-rate runs of each configuration")
    ap.add_argument("--max-rate", type=float, default=150_000, help="readings/s cap of the full-rate runs")
    ap.add_argument("--base-timeout", type=float, default=1.0, help="replicas' base view-change timeout, s (default 1, "
                    "as gridtrace chain init)")
    ap.add_argument("--payload-copies", type=int, default=0,
                    help="also run 4 replicas with custody: this many store each batch (f+1 = 2 or more)")
    ap.add_argument("--no-failover", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, databases)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="gridtrace-replicas-bench-"))
    keys_dir = work / "fleet-keys"
    # Configurations: 1 replica, 4 replicas each storing every batch, and (--payload-copies) 4
    # with custody. Keyed by name; "4" is the default the half-rate and failover runs use.
    configs = {"1": (1, 0), "4": (4, 0)}
    if args.payload_copies:
        configs["4-custody"] = (4, args.payload_copies)
    prefixes = [f"r{r}{name}" for r in range(args.runs) for name in configs] + ["half", "failover"]
    ids = tuple(gw for p in prefixes for gw in gateway_ids(p, args.gateways))
    ensure_keys(keys_dir, ids)
    sites = {name: Substation(work / name, n, keys_dir, ids, args.base_timeout, copies)
             for name, (n, copies) in configs.items()}
    result: dict = {"config": vars(args), "runs": {name: [] for name in configs}}
    med = dict.fromkeys(configs, 0.0)
    try:
        for site in sites.values():
            site.start()
        for r in range(args.runs):
            for name, site in sites.items():
                f = fleet(args, site, keys_dir, f"r{r}{name}", 0.0, work / f"fleet-{name}-{r}.log")
                wait = site.check(f["batches_receipted"], list(range(site.n)))
                result["runs"][name].append({"readings_per_s": f["readings_per_s"], "p50_ms": f["receipt_p50_ms"],
                                             "p99_ms": f["receipt_p99_ms"], "settle_s": round(wait, 2),
                                             "errors": f["errors"][:3]})
                print(f"run {r + 1}, {name} replica{'s' if site.n > 1 else ''}: {f['readings_per_s']:,} readings/s "
                      f"committed, p50 {f['receipt_p50_ms']:.0f} ms, p99 {f['receipt_p99_ms']:.0f} ms", flush=True)
        med = {name: statistics.median(x["readings_per_s"] for x in result["runs"][name]) for name in configs}
        result["median_readings_per_s"] = med
        result["ratio_4_to_1"] = round(med["4"] / med["1"], 3) if med["1"] else None
        if "4-custody" in med:
            result["ratio_4_custody_to_1"] = round(med["4-custody"] / med["1"], 3) if med["1"] else None
        main4 = "4-custody" if "4-custody" in sites else "4"  # what half rate and failover run on
        half = fleet(args, sites[main4], keys_dir, "half", med[main4] / 2, work / "fleet-half.log")
        sites[main4].check(half["batches_receipted"], list(range(4)))
        result["half_rate"] = {"replicas": main4, "rate": round(med[main4] / 2), "readings_per_s": half["readings_per_s"],
                               "p50_ms": half["receipt_p50_ms"], "p99_ms": half["receipt_p99_ms"]}
        print(f"{main4} replicas at half rate ({med[main4] / 2:,.0f}/s): p50 {half['receipt_p50_ms']:.0f} ms, "
              f"p99 {half['receipt_p99_ms']:.0f} ms", flush=True)
        if not args.no_failover:
            result["failover"] = failover(args, sites[main4], keys_dir, med[main4] / 4, work)
            print(f"failover: primary {result['failover']['primary']} killed; first block in view "
                  f"{result['failover']['new_view']} after {result['failover']['first_block_after_kill_s']:.2f} s",
                  flush=True)
    finally:
        for site in sites.values():
            site.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}")
    print(f"median committed readings/s: 1 replica {med['1']:,.0f}, 4 replicas {med['4']:,.0f}, "
          f"ratio {result.get('ratio_4_to_1')}")
    if "4-custody" in med:
        print(f"4 replicas with custody ({args.payload_copies} copies): {med['4-custody']:,.0f}, "
              f"ratio {result.get('ratio_4_custody_to_1')}")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
