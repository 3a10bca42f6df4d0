"""Conversion between the protobuf batch header and its evidence record.

Entries need no conversion: since wire v2 they travel as their canonical bytes
(`SignedBatch.entry_bytes`, checked by `protos.canonical.scan_entry`).

Parsing here is strict: a header that does not make a valid record raises
`WireError` naming the field, so a hub can reject a malformed batch with a
message a field engineer can act on.
"""

from __future__ import annotations

from protos import readings_pb2 as pb
from protos.records import BatchHeader, RecordError


class WireError(ValueError):
    """A wire message that does not make a valid record."""


def header_to_pb(h: BatchHeader) -> pb.BatchHeader:
    return pb.BatchHeader(
        gateway_id=h.gateway_id,
        key_id=h.key_id,
        seq=h.seq,
        prev_hash=h.prev_hash,
        entries_root=h.entries_root,
        entry_count=h.entry_count,
        first_ns=h.first_ns,
        last_ns=h.last_ns,
        created_ns=h.created_ns,
    )


def header_from_pb(m: pb.BatchHeader) -> BatchHeader:
    try:
        return BatchHeader(
            gateway_id=m.gateway_id,
            key_id=m.key_id,
            seq=m.seq,
            prev_hash=bytes(m.prev_hash),
            entries_root=bytes(m.entries_root),
            entry_count=m.entry_count,
            first_ns=m.first_ns,
            last_ns=m.last_ns,
            created_ns=m.created_ns,
        )
    except RecordError as exc:
        raise WireError(f"batch header: {exc}") from exc
