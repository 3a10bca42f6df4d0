"""A real hub chain in a temp dir, built without the network (a helper for tests, not a conftest).

`build_chain(tmp_dir)` does what the edge agent and the hub do, through the same
code paths, minus gRPC:

* two gateways with fresh Ed25519 keys, registered in the store (SQLite unless a URL is given);
* meters polled every `POLL_NS` with contiguous per-meter seqs and plausible
  values (voltage around 230 V, power in W, energy counters in kWh that are the
  integral of power), one meter missing three polls and recording a Gap;
* each gateway seals a batch every `ROUNDS_PER_BATCH` poll rounds
  (`protos.batch.seal_batch` over canonical entry bytes), chained by prev_hash;
* each batch goes through `hub.ingest.check.check_signed_batch` as a protobuf
  `SignedBatch`, so the stored rows are exactly what the real ingest stores,
  then `Store.store_batches`;
* blocks are sealed by `BlockProducer.seal_pending` with a small `max_batches`,
  at irregular points, so blocks hold different numbers of batches, the log sizes
  are not powers of two, and a meter's batches span non-consecutive heights.

The layout (defaults):

    gateway gw-a: meters MTR-1, MTR-2      gateway gw-b: meter MTR-3
    24 poll rounds, 10 s apart, from T0
    MTR-1 misses rounds 9, 10, 11 (timeout) -> one Gap entry, seqs stay contiguous
    MTR-1's reading in round 5 carries the quality flag `stale`
    batches of 4 rounds -> 6 per gateway, 12 in all
    blocks: max 3 batches each, sealed after rounds 8, 12, 20, 24 -> 6 blocks
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path


from hub.certificates.trust import Trust, parse_trust, trust_document
from hub.chain.producer import BlockProducer
from hub.ingest.check import Placement, check_signed_batch, place_in_chain
from hub.storage.store import Store, sqlite_url
from protos import readings_pb2 as pb
from protos.batch import seal_batch
from protos.canonical import encode_entry
from protos.records import ZERO_HASH, ClockStatus, Entry, Gap, Quality, Quantity, Reading
from protos.signing import Signer, parse_public_key_pem, public_key_pem
from protos.wire import header_to_pb

CHAIN_ID = "substation-7"
HUB_REPLICA_ID = "hub-7a"
T0_NS = 1_762_128_000_000_000_000  # 2025-11-03T00:00:00Z
POLL_NS = 10_000_000_000
ROUNDS = 24
ROUNDS_PER_BATCH = 4
MAX_BATCHES_PER_BLOCK = 3
SEAL_AFTER_ROUNDS = (8, 12, 20, 24)
GATEWAYS = {"gw-a": ("MTR-1", "MTR-2"), "gw-b": ("MTR-3",)}
GAP_METER = "MTR-1"
GAP_ROUNDS = (9, 10, 11)  # 0-based poll rounds MTR-1 does not answer
STALE = ("MTR-1", 5)  # (meter, round) of a reading flagged stale


@dataclass(frozen=True)
class Chain:
    store: Store
    chain_id: str
    hub_signer: Signer
    hub_replica_id: str
    gateway_signers: dict[str, Signer]  # gateway id -> its signer
    meters: dict[str, tuple[str, ...]]  # gateway id -> its meter ids
    entries: dict[str, tuple[Entry, ...]]  # meter id -> its entries, in time order
    from_ns: int  # the first entry's time
    to_ns: int  # after the last entry's time (exclusive end of a period covering all)
    db_path: Path
    block_heights: tuple[int, ...] = field(default=())

    @property
    def meter_ids(self) -> tuple[str, ...]:
        return tuple(m for ms in self.meters.values() for m in ms)

    def readings(self, meter_id: str) -> list[Reading]:
        return [e for e in self.entries[meter_id] if isinstance(e, Reading)]

    def gaps(self, meter_id: str) -> list[Gap]:
        return [e for e in self.entries[meter_id] if isinstance(e, Gap)]

    def trust_doc(
        self,
        *,
        hub_key=None,  # noqa: ANN001 - a PublicKey to use instead of the hub's
        without_gateway: str | None = None,
    ) -> dict:
        gateways = {
            gw: [s.public_key] for gw, s in self.gateway_signers.items() if gw != without_gateway
        }
        key = hub_key if hub_key is not None else self.hub_signer.public_key
        return trust_document(gateways, {self.chain_id: (1, [(self.hub_replica_id, key)])})

    def trust(self, **kwargs) -> Trust:  # noqa: ANN003
        return parse_trust(self.trust_doc(**kwargs), "test trust")


def _reading(meter_id: str, meter_no: int, seq: int, ts_ns: int, energy_kwh: float, power_w: float,
             quality: Quality) -> Reading:
    phase = seq / 5.0 + meter_no
    voltage = round(230.0 + 3.0 * math.sin(phase), 3)
    current = round(power_w / 3.0 / voltage, 4)
    values = {
        "current_l1": ("A", current),
        "energy_export": ("kWh", 0.0 if meter_no != 2 else 12.25),
        "energy_import": ("kWh", energy_kwh),
        "frequency": ("Hz", round(50.0 + 0.02 * math.cos(phase), 4)),
        "power_factor_total": ("", 0.97),
        "power_l1": ("W", round(power_w / 3.0, 2)),
        "power_total": ("W", power_w),
        "voltage_l1": ("V", voltage),
    }
    return Reading(
        meter_id=meter_id,
        seq=seq,
        timestamp_ns=ts_ns,
        clock=ClockStatus.SYNCHRONIZED,
        quality=quality,
        quantities=tuple(Quantity(name, unit, float(v)) for name, (unit, v) in sorted(values.items())),
    )


def build_chain(tmp_dir: Path, database_url: str | None = None) -> Chain:
    """Build the chain described in the module docstring in `tmp_dir` (a fresh directory), in the
    empty database `database_url` (default: a SQLite file in `tmp_dir`)."""
    tmp_dir = Path(tmp_dir)
    tmp_dir.mkdir(parents=True, exist_ok=True)
    db_path = tmp_dir / "hub.sqlite"
    store = Store(database_url or sqlite_url(db_path))
    store.create(CHAIN_ID)

    hub_signer = Signer.generate()
    gw_signers = {gw: Signer.generate() for gw in GATEWAYS}
    for gw, s in gw_signers.items():
        assert store.add_gateway(gw, s.key_id, public_key_pem(s.public_key), T0_NS)
    keys = {
        gw: {kid: parse_public_key_pem(pem) for kid, pem in ks.items()}
        for gw, ks in store.gateway_keys().items()
    }

    producer = BlockProducer(
        store, ThreadPoolExecutor(max_workers=1), hub_signer, CHAIN_ID,
        interval_s=1.0, max_batches=MAX_BATCHES_PER_BLOCK,
    )

    meter_no = {m: i + 1 for i, m in enumerate(m for ms in GATEWAYS.values() for m in ms)}
    energy = {m: 1000.0 * n + 0.5 for m, n in meter_no.items()}  # kWh on the register at T0
    seq = dict.fromkeys(meter_no, 0)
    entries: dict[str, list[Entry]] = {m: [] for m in meter_no}
    pending: dict[str, list[Entry]] = {gw: [] for gw in GATEWAYS}
    batch_seq = dict.fromkeys(GATEWAYS, 0)
    prev_hash = dict.fromkeys(GATEWAYS, ZERO_HASH)
    missed_since: int | None = None

    def flush(gw: str, created_ns: int) -> None:
        batch = pending[gw]
        if not batch:
            return
        batch_seq[gw] += 1
        bodies = [encode_entry(e) for e in batch]
        sealed = seal_batch(
            gw_signers[gw], gw, batch_seq[gw], prev_hash[gw], bodies,
            [e.timestamp_ns for e in batch], created_ns,
        )
        msg = pb.SignedBatch(header=header_to_pb(sealed.header), signature=sealed.signature, entry_bytes=bodies)
        checked = check_signed_batch(msg, keys)
        assert place_in_chain(checked.header, store.gateway_heads().get(gw)) is Placement.NEXT
        assert checked.batch.hash == sealed.hash
        store.store_batches([checked.batch], created_ns + 1_000_000)
        prev_hash[gw] = sealed.hash
        pending[gw] = []

    for rnd in range(ROUNDS):
        ts = T0_NS + rnd * POLL_NS
        for gw, meters in GATEWAYS.items():
            for m in meters:
                n = meter_no[m]
                # Power follows a slow swing; the energy register is its integral and
                # keeps counting while the meter does not answer.
                power_w = round(1500.0 * n + 800.0 * math.sin(rnd / 4.0 + n), 1)
                if rnd > 0:
                    energy[m] = round(energy[m] + power_w * (POLL_NS / 1e9) / 3600.0 / 1000.0, 6)
                if m == GAP_METER and rnd in GAP_ROUNDS:
                    if missed_since is None:
                        missed_since = ts
                    continue
                if m == GAP_METER and missed_since is not None:
                    gap = Gap(m, missed_since, ts - POLL_NS, "timeout", len(GAP_ROUNDS))
                    entries[m].append(gap)
                    pending[gw].append(gap)
                    missed_since = None
                seq[m] += 1
                quality = Quality.STALE if (m, rnd) == STALE else Quality.OK
                r = _reading(m, n, seq[m], ts + n * 1_000_000, energy[m], power_w, quality)
                entries[m].append(r)
                pending[gw].append(r)
        if (rnd + 1) % ROUNDS_PER_BATCH == 0:
            for gw in GATEWAYS:
                flush(gw, ts + 500_000_000)
        if rnd + 1 in SEAL_AFTER_ROUNDS:
            producer.seal_all()
    for gw in GATEWAYS:
        flush(gw, T0_NS + ROUNDS * POLL_NS)
    producer.seal_all()
    producer.db.shutdown()

    head = store.head()
    assert head is not None
    all_ts = [e.timestamp_ns for es in entries.values() for e in es]
    return Chain(
        store=store,
        chain_id=CHAIN_ID,
        hub_signer=hub_signer,
        hub_replica_id=HUB_REPLICA_ID,
        gateway_signers=gw_signers,
        meters=dict(GATEWAYS),
        entries={m: tuple(es) for m, es in entries.items()},
        from_ns=min(all_ts),
        to_ns=max(all_ts) + 1,
        db_path=db_path,
        block_heights=tuple(range(1, head.height + 1)),
    )
