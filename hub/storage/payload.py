"""How a batch's entries are laid out in the database (pure functions, no I/O).

A batch's entries are stored as one `Payload`: the canonical entry bodies concatenated in
Merkle-leaf order, with `entry_count + 1` big-endian u32 offsets (stored body i is
`bodies[o[i]:o[i + 1]]`), and a `names` blob. A meter model sends the same quantity names
field (about 70 % of a 41-quantity reading) in every reading, so each distinct names field is
kept once per batch in `names`, cut out of the stored bodies, and spliced back byte for byte
on read (`unpack_payload`). The splice needs no trust: the batch's Merkle root over the
spliced-back bodies is what certificates and audits check, so a changed dictionary, reference
or body shows as a root mismatch.

`names` layout: u16 F, then F fields as (u32 length, bytes), then entry_count u16 references:
0 = the body is stored whole, j = field j was cut out at the reading's names offset
(`protos.canonical.names_field_at`).

A span lists the positions of one meter's entries in one UTC hour of one batch, as big-endian
u32s.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from hub.storage.engine import StoreError
from hub.storage.schema import HOUR_NS
from protos.canonical import names_field_at, names_field_end

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_MAX_FIELDS = 0xFFFF  # references are u16; further distinct fields stay in their bodies


class PayloadError(StoreError):
    """A stored payload or span does not decode: the database was changed or damaged."""


@dataclass(frozen=True)
class Span:
    meter_id: str
    hour: int
    first_ns: int
    last_ns: int
    idxs: tuple[int, ...]


@dataclass(frozen=True)
class Payload:
    """A batch's entries as stored (see the module docstring)."""

    bodies: bytes
    offsets: bytes
    names: bytes

    @property
    def entry_count(self) -> int:
        return len(self.offsets) // 4 - 1


def pack_payload(bodies: Sequence[bytes]) -> Payload:
    """The stored form of a batch's canonical entry bodies, names fields kept once."""
    fields: dict[bytes, int] = {}
    parts: list[bytes] = []
    refs: list[int] = []
    offsets = [0]
    total = 0
    last, last_ref = b"", 0  # the field of the previous reading: usually every reading's
    for b in bodies:
        at = names_field_at(b)
        ref = 0
        if at is not None:
            if last_ref and b.startswith(last, at):
                # Any cut reads back exactly (the field goes back where it was cut); this spares
                # slicing and hashing the field for each reading of the same meter model.
                ref, end = last_ref, at + len(last)
            else:
                end = names_field_end(b, at)
                if end is not None:
                    field = b[at:end]
                    ref = fields.get(field, 0)
                    if not ref and len(fields) < _MAX_FIELDS:
                        ref = fields[field] = len(fields) + 1
                    if ref:
                        last, last_ref = field, ref
        if ref:
            parts.append(b[:at])
            parts.append(b[end:])
            total += len(b) - (end - at)
        else:
            parts.append(b)
            total += len(b)
        refs.append(ref)
        offsets.append(total)
    names = [_U16.pack(len(fields))]
    for field in fields:  # insertion order = reference order
        names.append(_U32.pack(len(field)))
        names.append(field)
    names.append(struct.pack(f">{len(refs)}H", *refs))
    return Payload(b"".join(parts), struct.pack(f">{len(offsets)}I", *offsets), b"".join(names))


def unpack_payload(p: Payload, where: str) -> list[bytes]:
    """The canonical entry bodies of a stored payload, names fields spliced back."""
    stored = unpack_bodies(p.bodies, p.offsets, where)
    names = p.names
    try:
        (count,) = _U16.unpack_from(names, 0)
        at = 2
        fields = []
        for _ in range(count):
            (n,) = _U32.unpack_from(names, at)
            if at + 4 + n > len(names):
                raise PayloadError(f"{where}: names field {len(fields) + 1} runs past the end of the names blob")
            fields.append(names[at + 4 : at + 4 + n])
            at += 4 + n
    except struct.error as exc:
        raise PayloadError(f"{where}: names blob of {len(names)} bytes is cut short") from exc
    if len(names) - at != 2 * len(stored):
        raise PayloadError(f"{where}: names blob holds {(len(names) - at) / 2:g} references for {len(stored)} entries")
    refs = struct.unpack_from(f">{len(stored)}H", names, at)
    out = []
    for i, (body, ref) in enumerate(zip(stored, refs)):
        if ref:
            if ref > count:
                raise PayloadError(f"{where} entry {i}: names field {ref} of {count}")
            cut = names_field_at(body)
            if cut is None or cut > len(body):
                raise PayloadError(f"{where} entry {i}: stored without its names field but is not laid out as a reading")
            body = body[:cut] + fields[ref - 1] + body[cut:]
        out.append(body)
    return out


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
    if len(offsets) % 4 or len(offsets) < 4:
        raise PayloadError(f"{where}: offsets of {len(offsets)} bytes are not a u32 array")
    o = struct.unpack(f">{len(offsets) // 4}I", offsets)
    if o[0] != 0 or o[-1] != len(blob) or any(a > b for a, b in zip(o, o[1:])):
        raise PayloadError(f"{where}: offsets do not cover the {len(blob)} payload bytes in order")
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
    return [Span(m, h, g[0], g[1], tuple(g[2])) for (m, h), g in groups.items()]
