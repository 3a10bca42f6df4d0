"""How a batch's entries are laid out in the database (pure functions, no I/O).

A batch's canonical entry bodies are stored as one blob, concatenated in Merkle-leaf order, with
`entry_count + 1` big-endian u32 offsets; body i is `bodies[o[i]:o[i + 1]]`. A span lists the
positions of one meter's entries in one UTC hour of one batch, as big-endian u32s.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from hub.storage.engine import StoreError
from hub.storage.schema import HOUR_NS


class PayloadError(StoreError):
    """A stored payload or span does not decode: the database was changed or damaged."""


@dataclass(frozen=True)
class Span:
    meter_id: str
    hour: int
    first_ns: int
    last_ns: int
    idxs: tuple[int, ...]


def pack_bodies(bodies: Sequence[bytes]) -> tuple[bytes, bytes]:
    """(bodies blob, offsets blob) of a batch's entries."""
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
