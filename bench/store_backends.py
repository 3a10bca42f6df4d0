"""Cost of the hub's durable store per reading, on SQLite and on PostgreSQL.

Stores checked batches (SDM630 readings, 41 quantities, as bench/ingest_core.py builds them)
with `Store.store_batches` in groups as the ingest writer commits them, on a fresh database of
each backend: a SQLite file (WAL, synchronous=FULL) and a throwaway local PostgreSQL server
(fsync and synchronous_commit on) started like the tests' (tests/pgserver.py). Reports
readings/s, the hub process's CPU per reading, and on PostgreSQL the server's CPU per reading.

    python bench/store_backends.py --batches 40 --batch-size 500 --runs 3 [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from ingest_core import make_batches  # noqa: E402
from pgserver import find_pg_bindir, running_postgres  # noqa: E402
from procstats import cpu_seconds  # noqa: E402

from hub.ingest.check import check_signed_batch  # noqa: E402
from hub.storage.store import NewBatch, Store, sqlite_url  # noqa: E402
from protos.signing import Signer  # noqa: E402


def _server_cpu(data_dir: Path) -> float:
    """CPU seconds of the PostgreSQL server tree (postmaster and backends)."""
    pid = int((data_dir / "postmaster.pid").read_text().split()[0])
    total = cpu_seconds(pid)
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        try:
            total += cpu_seconds(int(child))
        except FileNotFoundError:
            pass  # a backend that just exited: counted in the parent's cutime
    return total


def run_once(url: str, checked: list[NewBatch], group: int, server_dir: Path | None) -> dict:
    store = Store(url)
    store.create("bench")
    readings = sum(b.entry_count for b in checked)
    server0 = _server_cpu(server_dir) if server_dir else 0.0
    cpu0, t0 = time.process_time(), time.perf_counter()
    for i in range(0, len(checked), group):
        store.store_batches(checked[i : i + group], time.time_ns())
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    server = (_server_cpu(server_dir) - server0) if server_dir else 0.0
    store.close()
    return {"readings_per_s": readings / wall, "hub_cpu_us": cpu / readings * 1e6,
            "server_cpu_us": server / readings * 1e6}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--group", type=int, default=8, help="batches per commit")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    signer = Signer.generate()
    keys = {"gw-bench": {signer.key_id: signer.public_key}}
    checked = [check_signed_batch(b, keys).batch for b in make_batches(args.batches, args.batch_size, signer)]

    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as d:
        runs = [run_once(sqlite_url(Path(d) / f"hub{i}.sqlite"), checked, args.group, None) for i in range(args.runs)]
    results["sqlite"] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    bindir = find_pg_bindir()
    if bindir is None:
        print("PostgreSQL is not installed (scripts/install-system-deps.sh); SQLite only", file=sys.stderr)
    else:
        with running_postgres(bindir) as server:
            runs = []
            for _ in range(args.runs):
                name = server.new_database()
                runs.append(run_once(server.url(name), checked, args.group, server.data_dir))
                server.drop_database(name)
        results["postgresql"] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}

    print(f"{args.batches * args.batch_size} readings (41 quantities) in batches of {args.batch_size}, "
          f"{args.group} batches per commit; median of {args.runs} runs")
    for backend, r in results.items():
        extra = f", server {r['server_cpu_us']:5.1f} us CPU/reading" if backend == "postgresql" else ""
        print(f"{backend:10s} {r['readings_per_s']:10,.0f} readings/s  hub {r['hub_cpu_us']:5.1f} us CPU/reading{extra}")
    if args.json:
        print(json.dumps({b: {k: round(v, 1) for k, v in r.items()} for b, r in results.items()}
                         | {"batch_size": args.batch_size, "group": args.group, "runs": args.runs}))


if __name__ == "__main__":
    main()
