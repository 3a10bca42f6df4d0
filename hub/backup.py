"""Backup and restore: a chain copied block by block through `Store`'s public methods.

A backup is a hub database of its own (SQLite, written by the same `Store`), so it is
portable between backends, inspectable with `sqlite3`, and restorable with the same copy.
The copy takes stored bytes as they are (headers, signatures, seals, entry bodies, the
stored_ns receipts name); it does not judge them. Judging is the audit's job
(hub/chain/audit.py), run on the result of every backup and restore.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import groupby

from hub.chain.audit import batch_record
from hub.ingest.packscan import scan_pack
from hub.storage.store import HeaderOnlyBatch, NewBatch, StoredBatch
from protos import merkle
from protos.canonical import CanonicalError, decode_block_header
from protos.entrypack import pack_entries
from protos.merkle import CompactRange
from protos.records import RecordError
from protos.wire import WireError


class BackupError(Exception):
    """A backup or restore that cannot go on; the message says what to do."""


@dataclass(frozen=True)
class CopyCounts:
    blocks: int
    batches: int
    entries: int
    gateway_keys: int


def new_batch(b: StoredBatch, bodies: Sequence[bytes]) -> NewBatch:
    """A stored batch as `Store.store_batches` takes it, its spans recovered from the
    canonical bytes (the same strict scan the hub's ingest uses)."""
    pack = pack_entries(bodies)
    try:
        scanned = scan_pack(pack, leaves=False)
    except WireError as exc:
        raise BackupError(f"gateway {b.gateway_id} batch {b.seq}: {exc}; the source is damaged") from exc
    return NewBatch(b.gateway_id, b.seq, b.hash, b.header, b.signature, pack, scanned.spans)


def _copy_batches(src, dst, batches: list[StoredBatch]) -> list[int]:  # noqa: ANN001
    """Store `batches` in `dst` (grouped by their original commit time); return their new ids."""
    ids = []
    for stored_ns, group in groupby(batches, key=lambda b: b.stored_ns):
        new = []
        for b in group:
            new.append(new_batch(b, batch_record(src, b).bodies))
        dst.store_batches(new, stored_ns)
        ids.extend(dst.find_batch(n.gateway_id, n.seq).id for n in new)
    return ids


def copy_chain(src, dst, chain_id: str, now_ns: int) -> CopyCounts:  # noqa: ANN001
    """Copy gateways, blocks with their seals, and unsealed batches from `src` into the empty `dst`."""
    if src.chain_id() != chain_id:
        raise BackupError(f"the source holds chain {src.chain_id()!r}, not {chain_id!r}")
    dst.create(chain_id)
    if dst.head() is not None or dst.counts()[0] != 0:
        raise BackupError(f"the target {dst.url} already holds batches or blocks; restore needs an empty database")
    n_keys = 0
    for gw, keys in src.gateway_keys().items():
        for kid, pem in keys.items():
            dst.add_gateway(gw, kid, pem, now_ns)
            n_keys += 1
    log = CompactRange()
    head = src.head()
    n_batches = n_entries = 0
    for height in range(1, (head.height if head else 0) + 1):
        blk = src.block(height)
        if blk is None:
            raise BackupError(f"block {height} is missing from the source")
        batches = src.block_batches(height)
        elsewhere = src.header_only([b.id for b in batches])  # custody: entries at other replicas
        copied = iter(_copy_batches(src, dst, [b for b in batches if b.id not in elsewhere]))
        ids: list[int | HeaderOnlyBatch] = [
            HeaderOnlyBatch.of(b)
            if b.id in elsewhere else next(copied) for b in batches
        ]
        for b in batches:
            log.append(merkle.leaf_hash(b.hash))
        try:
            time_ns = decode_block_header(blk.header).time_ns
        except (CanonicalError, RecordError) as exc:
            raise BackupError(f"block {height}: stored header does not decode ({exc}); the source is damaged") from exc
        dst.append_block(
            height, blk.hash, blk.header, time_ns, ids, blk.entry_count, log.size, log, blk.seals, blk.quorum,
        )
        n_batches += len(batches) - len(elsewhere)
        n_entries += sum(b.entry_count for b in batches if b.id not in elsewhere)
    unsealed = src.unsealed_batches(10**9)
    _copy_batches(src, dst, unsealed)
    n_batches += len(unsealed)
    n_entries += sum(b.entry_count for b in unsealed)
    return CopyCounts(head.height if head else 0, n_batches, n_entries, n_keys)
