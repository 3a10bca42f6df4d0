"""Conversion between the protobuf wire messages and the evidence records.

Parsing here is strict: a message that does not make a valid record raises
`WireError` naming the field, so a hub can reject a malformed batch with a
message a field engineer can act on.
"""

from __future__ import annotations

from protos import readings_pb2 as pb
from protos.records import (
    BatchHeader,
    ClockStatus,
    Entry,
    Gap,
    Quality,
    Quantity,
    Reading,
    RecordError,
)


class WireError(ValueError):
    """A wire message that does not make a valid record."""


def reading_to_pb(r: Reading) -> pb.Reading:
    return pb.Reading(
        meter_id=r.meter_id,
        seq=r.seq,
        timestamp_ns=r.timestamp_ns,
        clock=int(r.clock),
        quality=int(r.quality),
        names=[q.name for q in r.quantities],
        units=[q.unit for q in r.quantities],
        values=[q.value for q in r.quantities],
    )


def gap_to_pb(g: Gap) -> pb.Gap:
    return pb.Gap(
        meter_id=g.meter_id,
        from_ns=g.from_ns,
        to_ns=g.to_ns,
        reason=g.reason,
        missed_polls=g.missed_polls,
    )


def entry_to_pb(e: Entry) -> pb.Entry:
    if isinstance(e, Reading):
        return pb.Entry(reading=reading_to_pb(e))
    return pb.Entry(gap=gap_to_pb(e))


def entry_from_pb(m: pb.Entry, index: int) -> Entry:
    kind = m.WhichOneof("kind")
    try:
        if kind == "reading":
            r = m.reading
            return Reading(
                meter_id=r.meter_id,
                seq=r.seq,
                timestamp_ns=r.timestamp_ns,
                clock=ClockStatus(r.clock),
                quality=Quality(r.quality),
                quantities=_quantities(r, index),
            )
        if kind == "gap":
            g = m.gap
            return Gap(g.meter_id, g.from_ns, g.to_ns, g.reason, g.missed_polls)
    except (RecordError, ValueError) as exc:
        raise WireError(f"entry {index}: {exc}") from exc
    raise WireError(f"entry {index}: neither a reading nor a gap")


def _quantities(r: pb.Reading, index: int) -> tuple[Quantity, ...]:
    if not len(r.names) == len(r.units) == len(r.values):
        raise WireError(
            f"entry {index}: {len(r.names)} names, {len(r.units)} units and {len(r.values)} values"
        )
    return tuple(Quantity(n, u, v) for n, u, v in zip(r.names, r.units, r.values))


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
