"""A batch's entries packed: each quantity-names field once, the bytes a hub receives and stores.

A meter model repeats the same quantity names field (about 70 % of a 41-quantity reading) in
every reading, so a batch's entries travel (wire v3, `SignedBatch.packed_entries`) and are
stored (`batch_payloads`) as one `EntryPack` (docs/formats.md, "On the wire"):

* `bodies`: the canonical entry bodies concatenated in Merkle-leaf order, each reading's names
  field cut out;
* `offsets`: `entry_count + 1` big-endian u32, body i is `bodies[o[i]:o[i + 1]]`;
* `names`: u16 F, then F fields as (u32 length, bytes), then `entry_count` u16 references:
  0 = the body is whole, j = field j was cut out at the reading's names offset
  (`protos.canonical.names_field_at`).

Splicing back is byte for byte and needs no trust: the batch's Merkle root over the spliced
bodies is what the gateway signed and what certificates and audits check, so a changed field,
reference or body shows as a root mismatch. Pure functions, shared by the agent that packs and
the hub that unpacks.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from protos.canonical import names_field_at, names_field_end

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
MAX_FIELDS = 0xFFFF  # references are u16; further distinct fields stay in their bodies


class EntryPackError(ValueError):
    """Packed entries that do not unpack; the message names the entry or the part that is wrong."""


@dataclass(frozen=True)
class EntryPack:
    bodies: bytes
    offsets: bytes
    names: bytes

    @property
    def entry_count(self) -> int:
        return len(self.offsets) // 4 - 1

    @property
    def size(self) -> int:
        return len(self.bodies) + len(self.offsets) + len(self.names)


def pack_entries(bodies: Sequence[bytes]) -> EntryPack:
    """The packed form of a batch's canonical entry bodies, names fields kept once."""
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
                    if not ref and len(fields) < MAX_FIELDS:
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
    return EntryPack(b"".join(parts), struct.pack(f">{len(offsets)}I", *offsets), b"".join(names))


def entry_offsets(p: EntryPack, where: str) -> tuple[int, ...]:
    """The `entry_count + 1` body offsets, checked to cover `bodies` in order."""
    if len(p.offsets) % 4 or len(p.offsets) < 4:
        raise EntryPackError(f"{where}: offsets of {len(p.offsets)} bytes are not a u32 array")
    o = struct.unpack(f">{len(p.offsets) // 4}I", p.offsets)
    if o[0] != 0 or o[-1] != len(p.bodies) or any(a > b for a, b in zip(o, o[1:])):
        raise EntryPackError(f"{where}: offsets do not cover the {len(p.bodies)} body bytes in order")
    return o


def names_table(p: EntryPack, where: str) -> tuple[list[bytes], tuple[int, ...]]:
    """(the distinct names fields, each entry's reference), checked against each other."""
    names = p.names
    n = p.entry_count
    try:
        (count,) = _U16.unpack_from(names, 0)
        at = 2
        fields = []
        for _ in range(count):
            (size,) = _U32.unpack_from(names, at)
            if at + 4 + size > len(names):
                raise EntryPackError(f"{where}: names field {len(fields) + 1} runs past the end of the names blob")
            fields.append(names[at + 4 : at + 4 + size])
            at += 4 + size
    except struct.error as exc:
        raise EntryPackError(f"{where}: names blob of {len(names)} bytes is cut short") from exc
    if len(names) - at != 2 * n:
        raise EntryPackError(f"{where}: names blob holds {(len(names) - at) / 2:g} references for {n} entries")
    refs = struct.unpack_from(f">{n}H", names, at)
    for i, ref in enumerate(refs):
        if ref > count:
            raise EntryPackError(f"{where}, entry {i}: names field {ref} of {count}")
    return fields, refs


def iter_entries(p: EntryPack, where: str) -> Iterator[bytes]:
    """The canonical entry bodies one at a time, names fields spliced back: a reader that
    stops at the first bad entry never holds more than one spliced body."""
    o = entry_offsets(p, where)
    fields, refs = names_table(p, where)
    blob = p.bodies
    for i, ref in enumerate(refs):
        body = blob[o[i] : o[i + 1]]
        if ref:
            cut = names_field_at(body)
            if cut is None or cut > len(body):
                raise EntryPackError(f"{where}, entry {i}: stored without its names field but is not laid out as a reading")
            body = body[:cut] + fields[ref - 1] + body[cut:]
        yield body


def unpack_entries(p: EntryPack, where: str) -> list[bytes]:
    """The canonical entry bodies, names fields spliced back."""
    return list(iter_entries(p, where))
