"""How a batch's entries are laid out in the database (pure functions, no I/O).

A batch's entries are stored as they arrive: one `protos.entrypack.EntryPack` (bodies,
offsets, names fields kept once), so the ingest path stores the bytes it checked without
re-encoding them. Reading them back splices the names fields in again (`unpack_payload`);
the batch's Merkle root over the result is what certificates and audits check.

A span lists the positions of one meter's entries in one UTC hour of one batch, as big-endian
u32s.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from hub.storage.engine import StoreError
from hub.storage.schema import HOUR_NS
from protos.entrypack import EntryPack, EntryPackError, entry_offsets, unpack_entries

class PayloadError(StoreError):
    """A stored payload or span does not decode: the database was changed or damaged."""


@dataclass(frozen=True)
class Span:
    """One meter's entries in one UTC hour of one batch: their time range, how many, and
    their positions in the batch as stored (big-endian u32s, ascending)."""

    meter_id: str
    hour: int
    first_ns: int
    last_ns: int
    count: int
    idxs: bytes


def unpack_payload(p: EntryPack, where: str) -> list[bytes]:
    """The canonical entry bodies of a stored payload, names fields spliced back."""
    try:
        return unpack_entries(p, where)
    except EntryPackError as exc:
        raise PayloadError(str(exc)) from exc


def pack_bodies(bodies: Sequence[bytes]) -> tuple[bytes, bytes]:
    """(bodies blob, offsets blob) of a batch's entries, stored whole (the layout of revision
    0002; the data migrations use it)."""
    offsets = [0]
    total = 0
    for b in bodies:
        total += len(b)
        offsets.append(total)
    return b"".join(bodies), struct.pack(f">{len(offsets)}I", *offsets)


def unpack_bodies(blob: bytes, offsets: bytes, where: str) -> list[bytes]:
    try:
        o = entry_offsets(EntryPack(blob, offsets, b""), where)
    except EntryPackError as exc:
        raise PayloadError(str(exc)) from exc
    return [blob[a:b] for a, b in zip(o, o[1:])]


def pack_idxs(idxs: Sequence[int]) -> bytes:
    return struct.pack(f">{len(idxs)}I", *idxs)


def unpack_idxs(blob: bytes, n: int, where: str) -> tuple[int, ...]:
    if len(blob) != 4 * n:
        raise PayloadError(f"{where}: {len(blob)} index bytes for {n} entries")
    return struct.unpack(f">{n}I", blob)


def spans_of(meter_ids: Sequence[str], ts_ns: Sequence[int]) -> list[Span]:
    """The batch's entries grouped by (meter, UTC hour), in first-appearance order."""
    groups: dict[tuple[str, int], list] = {}
    for i, (meter, ts) in enumerate(zip(meter_ids, ts_ns)):
        key = (meter, ts // HOUR_NS)
        g = groups.get(key)
        if g is None:
            groups[key] = [ts, ts, [i]]
        else:
            if ts < g[0]:
                g[0] = ts
            elif ts > g[1]:
                g[1] = ts
            g[2].append(i)
    return [Span(m, h, g[0], g[1], len(g[2]), pack_idxs(g[2])) for (m, h), g in groups.items()]
