"""The rules of a signed batch, shared by the gateway that seals it and the hub that checks it.

A batch commits to its entries through the RFC 6962 root over their canonical
bytes, to its place in the gateway's history through `seq` and `prev_hash`, and
to its time range. The gateway signs the canonical header bytes with Ed25519.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


from protos import merkle
from protos.canonical import batch_hash, encode_batch_header
from protos.records import BatchHeader
from protos.signing import PublicKey, Signer, verify_signature


class BatchError(ValueError):
    """A batch whose header does not match its entries or whose signature fails."""


@dataclass(frozen=True)
class SealedBatch:
    header: BatchHeader
    signature: bytes
    hash: bytes


def entry_time_range(timestamps: Sequence[int]) -> tuple[int, int]:
    return min(timestamps), max(timestamps)


def seal_batch(
    signer: Signer,
    gateway_id: str,
    seq: int,
    prev_hash: bytes,
    entry_bytes: Sequence[bytes],
    timestamps: Sequence[int],
    created_ns: int,
) -> SealedBatch:
    """Build and sign the header over canonical entries (gateway side)."""
    if not entry_bytes:
        raise BatchError("a batch needs at least one entry")
    first_ns, last_ns = entry_time_range(timestamps)
    header = BatchHeader(
        gateway_id=gateway_id,
        key_id=signer.key_id,
        seq=seq,
        prev_hash=prev_hash,
        entries_root=merkle.root(entry_bytes),
        entry_count=len(entry_bytes),
        first_ns=first_ns,
        last_ns=last_ns,
        created_ns=created_ns,
    )
    return SealedBatch(header, signer.sign(encode_batch_header(header)), batch_hash(header))


def check_batch(
    header: BatchHeader,
    signature: bytes,
    entry_bytes: Sequence[bytes],
    timestamps: Sequence[int],
    public_key: PublicKey,
) -> bytes:
    """Check a batch against its header and signature; return its hash. The one statement of
    the rules over a list of entries (the hub applies the same two checks to packed entries,
    signature first: `hub.ingest.check`)."""
    first_ns, last_ns = entry_time_range(timestamps) if timestamps else (None, None)
    digest = check_batch_contents(header, len(entry_bytes), first_ns, last_ns, merkle.root(entry_bytes))
    check_header_signature(header, signature, public_key)
    return digest


def check_header_signature(header: BatchHeader, signature: bytes, public_key: PublicKey) -> None:
    """The gateway's Ed25519 signature over the canonical header bytes (about 130 µs)."""
    if not verify_signature(public_key, signature, encode_batch_header(header)):
        raise BatchError(
            f"batch {header.seq} of gateway {header.gateway_id}: signature does not verify with key {header.key_id}"
        )


def check_batch_contents(
    header: BatchHeader, entry_count: int, first_ns: int | None, last_ns: int | None, entries_root: bytes,
) -> bytes:
    """The header states the entries' count, time range and Merkle root; return the batch hash."""
    where = f"batch {header.seq} of gateway {header.gateway_id}"
    if entry_count != header.entry_count:
        raise BatchError(f"{where}: header says {header.entry_count} entries, got {entry_count}")
    if (first_ns, last_ns) != (header.first_ns, header.last_ns):
        raise BatchError(f"{where}: time range in header does not match its entries")
    if entries_root != header.entries_root:
        raise BatchError(f"{where}: entries_root does not match the entries")
    return batch_hash(header)
