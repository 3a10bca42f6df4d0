"""How fast `hub verify` audits and `hub backup` copies a stored chain (SQLite).

A hub in this process ingests pre-built signed batches (SDM630 readings, 41 quantities),
seals them, and stops; then the audit (hub/chain/audit.py) and the backup copy
(hub/backup.py, audit of the copy not included) run over the database and are timed.

    python bench/audit.py --batches 100 --batch-size 500 [--json]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from hubharness import RunningHub, init_hub, register_gateway  # noqa: E402
from ingest_core import make_batches  # noqa: E402
from hub.backup import copy_chain  # noqa: E402
from hub.chain.audit import audit_store  # noqa: E402
from hub.storage.store import Store, sqlite_url  # noqa: E402
from protos import ingest_pb2_grpc  # noqa: E402
from protos.signing import Signer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        cfg = init_hub(Path(d) / "hub", block_interval=0.5)
        logging.disable(logging.INFO)
        signer = Signer.generate()
        register_gateway(cfg, "gw-bench", signer, Path(d))
        batches = make_batches(args.batches, args.batch_size, signer)
        with RunningHub(cfg) as hub, grpc.insecure_channel(hub.address) as channel:
            receipts = list(ingest_pb2_grpc.IngestStub(channel).Stream(iter(batches), timeout=600))
        assert len(receipts) == args.batches
        store = Store(cfg.database_url)
        hub_key = Signer.from_file(cfg.key)
        t = time.perf_counter()
        report = audit_store(store, cfg.chain_id, {hub_key.key_id: hub_key.public_key})
        audit_s = time.perf_counter() - t
        assert report.ok and report.entries == args.batches * args.batch_size, report.findings[:3]
        t = time.perf_counter()
        counts = copy_chain(store, Store(sqlite_url(Path(d) / "backup.sqlite")), cfg.chain_id, time.time_ns())
        copy_s = time.perf_counter() - t
        assert counts.entries == report.entries
    n = report.entries
    result = {
        "blocks": report.blocks, "batches": report.batches, "readings": n,
        "verify_readings_per_s": round(n / audit_s), "verify_s": round(audit_s, 3),
        "backup_readings_per_s": round(n / copy_s), "backup_s": round(copy_s, 3),
    }
    print(f"{report.blocks} blocks, {report.batches} batches, {n:,} readings: hub verify {audit_s:.2f} s "
          f"({result['verify_readings_per_s']:,} readings/s), hub backup copy {copy_s:.2f} s "
          f"({result['backup_readings_per_s']:,} readings/s)")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
