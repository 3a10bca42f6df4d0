"""What a hub replica spends per reading on a batch it fetches from a peer, one core, no network.

The steps of hub/chain/replicated.py's fetch path on SQLite, each timed over --batches signed
batches of --batch-size SDM630 readings (41 quantities), --runs times (medians printed):

* serve (database): the peer rebuilds the SignedBatch from its store (`_wire_batches`), as it
  does when the bytes are no longer in memory;
* frame + unframe: the answer's framing on both sides;
* check: what ingest checks (protobuf parse, Ed25519 over the header, entry scan and spans,
  Merkle leaves and root), split into its parts;
* store: `Store.store_batches(..., skip_stored=True)` in groups of 10, fsync'd.

    .venv/bin/python bench/replica_fetch.py --batches 60 --runs 3 --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ingest_core import make_batches  # noqa: E402

from hub.chain.replicated import ReplicatedChain, frame, unframe  # noqa: E402
from hub.ingest.check import check_raw_batch, entries_of, parse_raw_batch  # noqa: E402
from hub.ingest.packscan import scan_pack  # noqa: E402
from hub.ingest.verifier import parse_keys  # noqa: E402
from hub.storage.store import Store, sqlite_url  # noqa: E402
from protos.batch import check_header_signature  # noqa: E402
from protos.signing import Signer, key_id, public_key_pem  # noqa: E402
from protos.wire import header_from_pb  # noqa: E402


def once(n: int, size: int) -> dict[str, float]:
    signer = Signer.generate()
    msgs = make_batches(n, size, signer)
    raws = [m.SerializeToString() for m in msgs]
    keys = parse_keys({msgs[0].header.gateway_id: {key_id(signer.public_key): public_key_pem(signer.public_key)}})
    work = Path(tempfile.mkdtemp(prefix="gridtrace-fetch-bench-"))
    src, dst = Store(sqlite_url(work / "a.sqlite")), Store(sqlite_url(work / "b.sqlite"))
    src.create("bench")
    dst.create("bench")
    out: dict[str, float] = {}

    def timed(name: str, fn):  # noqa: ANN001, ANN202
        t = time.perf_counter()
        result = fn()
        out[name] = (time.perf_counter() - t) / (n * size) * 1e6
        return result

    checked = [check_raw_batch(r, keys) for r in raws]
    src.store_batches([c.batch for c in checked], 1)
    chain = ReplicatedChain.__new__(ReplicatedChain)
    chain.store = src
    wire = timed("serve_from_database", lambda: chain._wire_batches([c.batch.hash for c in checked]))
    back = timed("frame_unframe", lambda: unframe(frame(wire)))
    parsed = timed("check_parse", lambda: [parse_raw_batch(r) for r in back])
    heads = [header_from_pb(m.header) for m in parsed]
    timed("check_signature", lambda: [check_header_signature(h, bytes(m.signature), signer.public_key)
                                      for h, m in zip(heads, parsed)])
    packs = [entries_of(m, "bench") for m in parsed]
    timed("check_scan_without_leaves", lambda: [scan_pack(p, leaves=False) for p in packs])
    timed("check_scan_with_merkle", lambda: [scan_pack(p) for p in packs])
    fetched = timed("check_whole", lambda: [check_raw_batch(r, keys) for r in back])
    timed("store", lambda: [dst.store_batches([c.batch for c in fetched[i : i + 10]], 2, True)
                            for i in range(0, n, 10)])
    src.close()
    dst.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    runs = [once(args.batches, args.batch_size) for _ in range(args.runs)]
    med = {k: round(statistics.median(r[k] for r in runs), 2) for k in runs[0]}
    for k, v in med.items():
        print(f"{k:28} {v:6.2f} us/reading")
    fetch = med["serve_from_database"] + med["frame_unframe"] + med["check_whole"] + med["store"]
    print(f"{'fetch path, served from db':28} {fetch:6.2f} us/reading (plus gRPC and TLS)")
    if args.json:
        print(json.dumps({"config": vars(args), "median_us_per_reading": med}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
