"""The hub's per-reading work on a batch: check packed entries in columns, hash the leaves.

A batch arrives as an `EntryPack` (wire v3): readings with their quantity-names field cut
out and kept once. Readings of one meter model have one length and one layout, so instead
of walking each reading in Python this module looks at all readings of a layout at once,
as a 2-D numpy array: the domain tag and the meter-field length column by column, seq,
clock and quality flags as vectors, every value finite, and each distinct meter field and
names field checked once (cached across batches). The leaves (0x00, the reading with its
names field back in place) are hashed in one call over the rows as they are
(`protos.merkle.spliced_leaf_hashes`, native where built).

Anything the column check does not recognise (a gap, a reading stored whole, a layout
that does not add up) is checked entry by entry with `protos.canonical.scan_entry`; and if
any entry fails, the whole batch goes through `scan_pack_slowly` (unpack, `scan_entry`,
hash), which names the entry and the field. `scan_pack` therefore accepts exactly what
`scan_pack_slowly` accepts, with the same results: a property test holds it to that.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hub.storage.payload import Span, spans_of
from hub.storage.schema import HOUR_NS
from protos import merkle
from protos.canonical import (
    CLOCK_VALUES,
    READING_FIXED,
    READING_PREFIX,
    CanonicalError,
    meter_id_of_field,
    quantity_count_of_names_field,
    scan_entry,
)
from protos.entrypack import EntryPack, EntryPackError, iter_entries, names_table
from protos.records import COUNTER_LIMIT, QUALITY_KNOWN
from protos.wire import WireError

_METER_AT = len(READING_PREFIX)
_FIXED = READING_FIXED.size
_PREFIX = np.frombuffer(READING_PREFIX, np.uint8)
_CLOCK_OK = np.isin(np.arange(256), sorted(CLOCK_VALUES))  # by the clock byte's value
_UNKNOWN_QUALITY = np.uint32(~QUALITY_KNOWN & 0xFFFFFFFF)
_MIX = np.uint64(0x9E3779B97F4A7C15)
_MAX_LAYOUTS = 16  # distinct (stored length, names field) pairs the column check takes on
_WHERE = "packed entries"  # odd: the multiply-add of `_distinct_rows` loses no bits


@dataclass(frozen=True)
class ScannedPack:
    """What the hub takes from a batch's entries: the (meter, hour) spans it indexes, the
    time range the header must state, and the Merkle leaf hashes (None when not asked for)."""

    spans: tuple[Span, ...]
    first_ns: int
    last_ns: int
    leaf_hashes: bytes | None  # 32 bytes per entry, in batch order

    @property
    def entries_root(self) -> bytes:
        assert self.leaf_hashes is not None
        return merkle.root_from_hash_string(self.leaf_hashes)


def scan_pack(p: EntryPack, leaves: bool = True) -> ScannedPack:
    """Check every entry of a packed batch; raise WireError naming the entry and field (the
    caller adds which gateway and batch)."""
    fast = _scan_columns(p, leaves)
    return fast if fast is not None else scan_pack_slowly(p, leaves)


def scan_pack_slowly(p: EntryPack, leaves: bool = True) -> ScannedPack:
    """`scan_pack` entry by entry: the names table, then each entry spliced, scanned and
    hashed in turn (at most one spliced body held). The reference the column check is held
    to, and what names a bad entry."""
    try:
        fields, refs = names_table(p, _WHERE)
        _check_names_fields(fields, refs)
        meter_ids, timestamps, hashes = [], [], []
        for i, body in enumerate(iter_entries(p, _WHERE)):
            try:
                meter_id, _seq, ts = scan_entry(body)
            except CanonicalError as exc:
                raise WireError(f"entry {i}: {exc}") from exc
            meter_ids.append(meter_id)
            timestamps.append(ts)
            if leaves:
                hashes.append(merkle.leaf_hash(body))
    except EntryPackError as exc:
        raise WireError(str(exc)) from exc
    if not timestamps:
        raise WireError("no entries")
    return ScannedPack(
        tuple(spans_of(meter_ids, timestamps)), min(timestamps), max(timestamps), b"".join(hashes) if leaves else None,
    )


def _check_names_fields(fields: list[bytes], refs: tuple[int, ...]) -> None:
    """Every field in the table is a whole, valid names field, used by some entry, and
    there once: nothing travels or is stored that the entries' Merkle root does not cover."""
    first_use: dict[int, int] = {}
    for i, ref in enumerate(refs):
        if ref and ref not in first_use:
            first_use[ref] = i
    for j, field in enumerate(fields, 1):
        if j not in first_use:
            raise WireError(f"{_WHERE}: names field {j} is used by no entry")
        try:
            quantity_count_of_names_field(field)
        except CanonicalError as exc:
            raise WireError(f"entry {first_use[j]}: {exc}") from exc
    if len(set(fields)) != len(fields):
        raise WireError(f"{_WHERE}: a names field is in the table twice")


class _NotColumnar(Exception):
    """The column check does not vouch for this batch; the entry-by-entry path decides."""


def _scan_columns(p: EntryPack, leaves: bool) -> ScannedPack | None:
    try:
        return _columns(p, leaves)
    except (_NotColumnar, EntryPackError, CanonicalError, ValueError):
        return None


def _columns(p: EntryPack, leaves: bool) -> ScannedPack:
    n = p.entry_count
    if n < 1 or len(p.offsets) % 4:
        raise _NotColumnar
    offsets = np.frombuffer(p.offsets, ">u4").astype(np.int64)
    lengths = np.diff(offsets)
    if offsets[0] != 0 or offsets[-1] != len(p.bodies) or (lengths < 0).any():
        raise _NotColumnar
    fields, _ = names_table(p, _WHERE)  # its checks; the references are read as a vector below
    refs = np.frombuffer(p.names, ">u2", count=n, offset=len(p.names) - 2 * n).astype(np.int64)
    if len(set(fields)) != len(fields) or len(np.unique(refs[refs > 0])) != len(fields):
        raise _NotColumnar  # a field twice or unused: the slow path names it
    body = np.frombuffer(p.bodies, np.uint8)

    meter_index = np.empty(n, np.int64)
    ts = np.empty(n, np.int64)
    leaf = np.empty((n, 32), np.uint8) if leaves else None  # row i: entry i's leaf hash
    meters: dict[str, int] = {}

    # Readings of one layout: same stored length, same names field. One group in the common
    # case (one meter model per gateway), so it is a reshape, not a gather.
    keys = lengths << 16 | refs
    if (keys == keys[0]).all():
        groups = [(int(lengths[0]), int(refs[0]), None)]
    else:
        uniq, inverse = np.unique(keys, return_inverse=True)
        if len(uniq) > _MAX_LAYOUTS:
            raise _NotColumnar  # a few numpy passes per layout: not worth it for many
        rows_of = np.split(np.argsort(inverse.ravel(), kind="stable"), np.cumsum(np.bincount(inverse.ravel()))[:-1])
        groups = [(int(k >> 16), int(k & 0xFFFF), rows) for k, rows in zip(uniq.tolist(), rows_of)]
    for width, ref, rows in groups:
        if ref == 0:
            _entry_by_entry(p.bodies, offsets, rows, n, meters, meter_index, ts, leaf)
            continue
        field = fields[ref - 1]
        if rows is None:
            block = body.reshape(n, width)
            rows = np.arange(n)
        else:
            block = np.frombuffer(b"".join(p.bodies[offsets[i] : offsets[i + 1]] for i in rows.tolist()), np.uint8)
            block = block.reshape(len(rows), width)
        _reading_block(block, field, rows, meters, meter_index, ts, leaf)

    return ScannedPack(
        _spans(meter_index, ts, list(meters)),
        int(ts.min()),
        int(ts.max()),
        leaf.tobytes() if leaf is not None else None,  # every row was filled above
    )


def _reading_block(
    block: np.ndarray,
    field: bytes,
    rows: np.ndarray,
    meters: dict[str, int],
    meter_index: np.ndarray,
    ts: np.ndarray,
    leaf: np.ndarray | None,
) -> None:
    """Check readings of one layout, rows of `block`; fill their meter, time and leaf slots."""
    count, width = block.shape
    k = quantity_count_of_names_field(field)
    cut = width - 8 * k  # where the names field was cut out: before the values
    meter_len = cut - _FIXED - _METER_AT - 2
    if meter_len < 1:
        raise _NotColumnar
    fixed = _METER_AT + 2 + meter_len
    # Views, not copies: each row's bytes are contiguous, so a byte range reads as numbers.
    seq = block[:, fixed : fixed + 8].view(">u8")
    stamp = block[:, fixed + 8 : fixed + 16].view(">i8")
    quality = block[:, fixed + 17 : fixed + 21].view(">u4")
    if not (
        (block[:, :_METER_AT] == _PREFIX).all()
        and (block[:, _METER_AT : _METER_AT + 2].view(">u2") == meter_len).all()
        and ((seq >= 1) & (seq < COUNTER_LIMIT)).all()
        and _CLOCK_OK[block[:, fixed + 16]].all()
        and not (quality & _UNKNOWN_QUALITY).any()
        and np.isfinite(block[:, cut:].view(">f8")).all()
    ):
        raise _NotColumnar
    first, inverse = _distinct_rows(block[:, _METER_AT:fixed])
    fields = [block[i, _METER_AT:fixed].tobytes() for i in first.tolist()]
    index = np.array([meters.setdefault(meter_id_of_field(f), len(meters)) for f in fields], np.int64)
    meter_index[rows] = index[inverse]
    ts[rows] = stamp.ravel()
    if leaf is None:
        return
    # Each leaf is 0x00 || the reading as the gateway hashed it: its names field back in place.
    hashes = merkle.spliced_leaf_hashes(block, width, cut, field)
    leaf[rows] = np.frombuffer(hashes, np.uint8).reshape(count, 32)


def _distinct_rows(cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(a row of each distinct byte string in `cols`, which of them each row is): np.unique
    on a 64-bit fingerprint of each row, then an exact comparison of every row with its
    group's row (a collision leaves the batch to the entry-by-entry check)."""
    count, width = cols.shape
    padded = np.zeros((count, width + -width % 8), np.uint8)
    padded[:, :width] = cols
    words = padded.view("<u8")
    fingerprint = words[:, 0].copy()
    for j in range(1, words.shape[1]):
        fingerprint = fingerprint * _MIX + words[:, j]  # wraps modulo 2^64
    _, first, inverse = np.unique(fingerprint, return_index=True, return_inverse=True)
    inverse = inverse.ravel()
    if not (padded == padded[first[inverse]]).all():
        raise _NotColumnar
    return first, inverse


def _entry_by_entry(
    bodies: bytes,
    offsets: np.ndarray,
    rows: np.ndarray,
    n: int,
    meters: dict[str, int],
    meter_index: np.ndarray,
    ts: np.ndarray,
    leaf: np.ndarray | None,
) -> None:
    """Entries stored whole (gaps, readings without a names field in the table)."""
    for i in rows.tolist() if rows is not None else range(n):
        b = bodies[offsets[i] : offsets[i + 1]]
        meter_id, _seq, t = scan_entry(b)  # CanonicalError: the slow path names it
        meter_index[i] = meters.setdefault(meter_id, len(meters))
        ts[i] = t
        if leaf is not None:
            leaf[i] = np.frombuffer(merkle.leaf_hash(b), np.uint8)


def _spans(meter_index: np.ndarray, ts: np.ndarray, meter_ids: list[str]) -> tuple[Span, ...]:
    """`spans_of` on columns: entries grouped by (meter, UTC hour), groups in order of first
    appearance, positions ascending."""
    hours = ts // HOUR_NS
    # i64 nanoseconds span about 5.1 million hours, so an hour offset fits in the low 32 bits.
    key = meter_index << 32 | (hours - hours.min())
    order = np.argsort(key, kind="stable")  # positions grouped by key, ascending within each
    sorted_key = key[order]
    starts = np.flatnonzero(np.concatenate(([True], sorted_key[1:] != sorted_key[:-1])))
    ends = np.append(starts[1:], len(order))
    sorted_ts = ts[order]
    lo = np.minimum.reduceat(sorted_ts, starts).tolist()
    hi = np.maximum.reduceat(sorted_ts, starts).tolist()
    first = order[starts]
    meter_of = meter_index[first].tolist()
    hour_of = hours[first].tolist()
    packed = order.astype(">u4").tobytes()
    s_list, e_list = starts.tolist(), ends.tolist()
    return tuple(
        Span(meter_ids[meter_of[g]], hour_of[g], lo[g], hi[g], e_list[g] - s_list[g], packed[4 * s_list[g] : 4 * e_list[g]])
        for g in np.argsort(first, kind="stable").tolist()
    )
