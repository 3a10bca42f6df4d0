"""Cost of the hub's ingest core per reading, without the network.

Measures, on batches built as an agent builds them (SDM630 readings with --quantities
quantities each, 41 by default; entries packed, wire v3):

* check: protobuf parse of the serialized batch -> column check of the packed entries
  and their leaf hashes (hub.ingest.packscan) -> RFC 6962 root -> Ed25519 verify
  (hub.ingest.check.check_signed_batch), on one core;
* store: the durable SQLite commit of those batches (Store.store_batches, WAL,
  synchronous=FULL), in groups as the ingest writer commits them.

Prints the median of --runs runs; with --json the last line is one JSON object.
This is not the end-to-end ingest benchmark (bench/ingest.py, with gRPC and
separate load processes, comes with the production hub).

    python bench/ingest_core.py --batches 200 --batch-size 500 --runs 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path


from edge.registermap import load_register_map
from hub.ingest.check import check_signed_batch
from hub.storage.store import Store, sqlite_url
from protos import readings_pb2 as pb
from protos.entrypack import pack_entries
from protos.batch import seal_batch
from protos.canonical import encode_reading
from protos.records import ZERO_HASH, ClockStatus, Quality, Quantity, Reading
from protos.signing import Signer
from protos.wire import header_to_pb


def make_batches(n_batches: int, size: int, signer: Signer, quantities: int = 41) -> list[pb.SignedBatch]:
    regmap = load_register_map("eastron_sdm630")
    names = sorted(r.name for r in regmap.registers)[:quantities]
    units = {r.name: r.unit for r in regmap.registers}
    prev, out, seq_by_meter = ZERO_HASH, [], {}
    t0 = time.time_ns()
    for b in range(n_batches):
        readings = []
        for i in range(size):
            meter = f"MTR-{i % 32:04d}"
            seq_by_meter[meter] = seq_by_meter.get(meter, 0) + 1
            readings.append(
                Reading(
                    meter, seq_by_meter[meter], t0 + (b * size + i) * 1000, ClockStatus.SYNCHRONIZED, Quality.OK,
                    tuple(Quantity(n, units[n], 230.0 + j) for j, n in enumerate(names)),
                )
            )
        sealed = seal_batch(signer, "gw-bench", b + 1, prev, [encode_reading(r) for r in readings],
                            [r.timestamp_ns for r in readings], t0)
        prev = sealed.hash
        p = pack_entries([encode_reading(r) for r in readings])
        out.append(pb.SignedBatch(header=header_to_pb(sealed.header), signature=sealed.signature,
                                  packed_entries=pb.EntryPack(bodies=p.bodies, offsets=p.offsets, names=p.names)))
    return out


def run_once(batches: list[pb.SignedBatch], signer: Signer, group: int) -> tuple[float, float]:
    """(check, store) readings per second over these batches."""
    keys = {"gw-bench": {signer.key_id: signer.public_key}}
    readings = sum(b.header.entry_count for b in batches)
    raw = [b.SerializeToString() for b in batches]
    t = time.perf_counter()
    checked = [check_signed_batch(pb.SignedBatch.FromString(r), keys).batch for r in raw]
    check_rate = readings / (time.perf_counter() - t)
    with tempfile.TemporaryDirectory() as d:
        store = Store(sqlite_url(Path(d) / "hub.sqlite"))
        store.create("bench")
        t = time.perf_counter()
        for i in range(0, len(checked), group):
            store.store_batches(checked[i : i + group], time.time_ns())
        store_rate = readings / (time.perf_counter() - t)
        store.close()
    return check_rate, store_rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--group", type=int, default=8, help="batches per commit")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--quantities", type=int, default=41, help="quantities per reading (SDM630 map: 41)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    signer = Signer.generate()
    batches = make_batches(args.batches, args.batch_size, signer, args.quantities)
    runs = [run_once(batches, signer, args.group) for _ in range(args.runs)]
    check = statistics.median(r[0] for r in runs)
    store = statistics.median(r[1] for r in runs)
    combined = 1 / (1 / check + 1 / store)
    print(f"readings per run: {args.batches * args.batch_size} with {args.quantities} quantities each, "
          f"in batches of {args.batch_size}; median of {args.runs} runs")
    print(f"check (parse, column check, leaves, Merkle, Ed25519):     {check:12,.0f} readings/s  ({1e6 / check:6.2f} us/reading)")
    print(f"store (SQLite WAL, synchronous=FULL, {args.group} batches/commit): {store:12,.0f} readings/s  ({1e6 / store:6.2f} us/reading)")
    print(f"both on one core, in series:                    {combined:12,.0f} readings/s")
    if args.json:
        print(json.dumps({"check_readings_per_s": round(check), "store_readings_per_s": round(store),
                          "serial_readings_per_s": round(combined), "batch_size": args.batch_size,
                          "quantities": args.quantities,
                          "runs": args.runs}))


if __name__ == "__main__":
    main()
