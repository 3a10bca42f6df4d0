"""The column check of packed entries accepts exactly what the entry-by-entry check accepts.

`hub.ingest.packscan.scan_pack` is the hub's per-reading hot path: it checks a batch's
readings as numpy columns and hashes its Merkle leaves. These tests hold it to
`scan_pack_slowly` (unpack, `scan_entry` per entry, hash) and that to the decoder itself,
on valid batches of mixed layouts and on batches damaged anywhere.
"""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hub.ingest import packscan
from hub.ingest.packscan import scan_pack, scan_pack_slowly
from hub.storage.payload import spans_of
from hub.storage.schema import HOUR_NS
from protos import merkle
from protos.canonical import decode_entry, encode_entry, encode_reading_fields
from protos.canonical import names_field_at
from protos.entrypack import EntryPack, names_table, pack_entries, unpack_entries
from protos.records import Gap, Reading
from protos.wire import WireError

T0 = 1_795_000_000_000_000_000
MODELS = {
    "sdm630": ([f"q{i:02d}" for i in range(41)], [f"u{i % 5}" for i in range(41)]),
    "sdm120": (["energy_import", "power", "voltage"], ["kWh", "W", "V"]),
}
METERS = ["M1", "MTR-0001", "MTR-0002", "meter/with:longer.id-7"]


def reading(meter: str, seq: int, ts: int, model: str = "sdm630", clock: int = 0, quality: int = 0) -> bytes:
    names, units = MODELS[model]
    return encode_reading_fields(meter, seq, ts, clock, quality, names, units, [seq * 0.25 + i for i in range(len(names))])


def gap(meter: str, ts: int) -> bytes:
    return encode_entry(Gap(meter, ts - 10, ts, "timeout", 2))


def reference(bodies: list[bytes]):  # noqa: ANN201
    """What a batch's entries are, by the decoder itself: (meter ids, times, leaf hashes)."""
    meters, times = [], []
    for body in bodies:
        e = decode_entry(body)
        meters.append(e.meter_id)
        times.append(e.timestamp_ns if isinstance(e, Reading) else e.timestamp_ns)
    return meters, times, b"".join(merkle.leaf_hash(b) for b in bodies)


@st.composite
def batches(draw) -> list[bytes]:  # noqa: ANN001
    """Valid batches: meters with ids of several lengths, two meter models, gaps, hours crossed."""
    n = draw(st.integers(1, 60))
    model_of = {m: draw(st.sampled_from(sorted(MODELS))) for m in METERS}
    out = []
    for i in range(n):
        meter = draw(st.sampled_from(METERS))
        ts = T0 + draw(st.integers(-2 * HOUR_NS, 2 * HOUR_NS))
        if draw(st.integers(0, 9)) == 0:
            out.append(gap(meter, ts))
        else:
            out.append(reading(meter, i + 1, ts, model_of[meter], draw(st.sampled_from([0, 1, 2])), draw(st.sampled_from([0, 1, 5]))))
    return out


_SPECIAL = [struct.pack(">d", v) for v in (math.nan, math.inf, -math.inf)] + [b"\x7f\xf0" + bytes(6), b"\xff" * 8, bytes(8)]


@st.composite
def damaged_packs(draw) -> EntryPack:  # noqa: ANN001
    """A valid batch's pack with one of its three parts damaged somewhere."""
    p = pack_entries(draw(batches()))
    part = draw(st.sampled_from(["bodies", "bodies", "bodies", "offsets", "names"]))
    data = getattr(p, part)
    how = draw(st.sampled_from(["flip", "overwrite", "special", "truncate", "insert"]))
    at = draw(st.integers(0, max(len(data) - 1, 0)))
    if how == "flip" and data:
        data = data[:at] + bytes([data[at] ^ (1 << draw(st.integers(0, 7)))]) + data[at + 1 :]
    elif how == "overwrite":
        data = data[:at] + draw(st.binary(min_size=1, max_size=8)) + data[at + 1 :]
    elif how == "special":
        data = data[:at] + draw(st.sampled_from(_SPECIAL)) + data[at + 8 :]
    elif how == "truncate":
        data = data[:at]
    elif how == "insert":
        data = data[:at] + draw(st.binary(min_size=1, max_size=4)) + data[at:]
    return EntryPack(**{**p.__dict__, part: data})


def outcome(fn, p: EntryPack):  # noqa: ANN001, ANN201
    try:
        return "ok", fn(p)
    except WireError as exc:
        return "rejected", str(exc)


@settings(max_examples=150, deadline=None)
@given(batches())
def test_valid_batches_give_what_the_decoder_gives(bodies: list[bytes]) -> None:
    p = pack_entries(bodies)
    fast, slow = scan_pack(p), scan_pack_slowly(p)
    assert fast == slow
    meters, times, leaves = reference(bodies)
    assert fast.leaf_hashes == leaves
    assert fast.entries_root == merkle.root(bodies)
    assert (fast.first_ns, fast.last_ns) == (min(times), max(times))
    assert list(fast.spans) == spans_of(meters, times)


@settings(max_examples=600, deadline=None)
@given(damaged_packs())
def test_damaged_batches_are_rejected_exactly_when_the_slow_check_rejects_them(p: EntryPack) -> None:
    fast, slow = outcome(scan_pack, p), outcome(scan_pack_slowly, p)
    assert fast == slow
    if slow[0] == "ok":
        bodies = unpack_entries(p, "batch")
        meters, times, leaves = reference(bodies)  # accepted means the decoder accepts every entry
        assert slow[1].leaf_hashes == leaves and list(slow[1].spans) == spans_of(meters, times)


def test_batches_of_one_or_several_layouts_take_the_column_path() -> None:
    """The fast path must actually run: one layout (a reshape), several (gathered), gaps between."""
    one = [reading("MTR-0001", s, T0 + s) for s in range(1, 41)]
    mixed = [
        reading(m, s, T0 + s * HOUR_NS // 7, "sdm120" if m == "M1" else "sdm630")
        for s in range(1, 41) for m in METERS[:3]
    ] + [gap("MTR-0002", T0)]
    for bodies in (one, mixed):
        p = pack_entries(bodies)
        assert packscan._scan_columns(p, True) is not None
        assert scan_pack(p) == scan_pack_slowly(p)


def test_a_batch_of_many_layouts_is_checked_entry_by_entry() -> None:
    """Each layout costs a few numpy passes; past a handful the entry-by-entry path is cheaper
    (a batch of thousands of layouts must not cost seconds)."""
    bodies = [reading("M" + "x" * i, i + 1, T0 + i) for i in range(40)]
    p = pack_entries(bodies)
    assert packscan._scan_columns(p, True) is None
    assert scan_pack(p) == scan_pack_slowly(p)
    assert scan_pack(p).leaf_hashes == reference(bodies)[2]


def test_a_fingerprint_collision_falls_back_to_the_slow_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a multiplier of 0 only the last 8-byte word of a meter field counts: the fields
    of A-MTR-0001 and B-MTR-0001 (u16 length + 10 bytes) share it, and the exact comparison
    must catch that."""
    monkeypatch.setattr(packscan, "_MIX", np.uint64(0))
    bodies = [reading("A-MTR-0001", 1, T0), reading("B-MTR-0001", 2, T0 + 1), reading("A-MTR-0001", 3, T0 + 2)]
    p = pack_entries(bodies)
    assert packscan._scan_columns(p, True) is None
    assert [s.meter_id for s in scan_pack(p).spans] == ["A-MTR-0001", "B-MTR-0001"]
    assert scan_pack(p) == scan_pack_slowly(p)


def _bad(body: bytes, field: str, value: bytes) -> bytes:
    """`body` (an SDM630 reading of meter MTR-0001) with one field overwritten."""
    at = {"seq": 31, "clock": 31 + 16, "quality": 31 + 17, "value": len(body) - 8}[field]
    return body[:at] + value + body[at + len(value):]


@pytest.mark.parametrize("field,value,problem", [
    ("value", struct.pack(">d", math.nan), "entry 3: reading quantity: value of q40 must be a finite float"),
    ("value", struct.pack(">d", -math.inf), "entry 3: reading quantity: value of q40 must be a finite float"),
    ("seq", bytes(8), "entry 3: reading: seq must be an integer in \\[1"),
    ("seq", b"\x80" + bytes(7), "entry 3: reading: seq must be an integer in \\[1"),
    ("clock", b"\x07", "entry 3: reading: clock: unknown clock status 7"),
    ("quality", b"\x00\x00\x80\x00", "entry 3: reading: quality of meter MTR-0001 seq 4 has undefined flag bits"),
])
def test_a_bad_reading_among_good_ones_is_named(field: str, value: bytes, problem: str) -> None:
    bodies = [reading("MTR-0001", s, T0 + s) for s in range(1, 9)]
    bodies[3] = _bad(bodies[3], field, value)
    with pytest.raises(WireError, match=problem):
        scan_pack(pack_entries(bodies))


def test_a_damaged_pack_is_named() -> None:
    p = pack_entries([reading("MTR-0001", s, T0 + s) for s in range(1, 4)])
    with pytest.raises(WireError, match="packed entries: names blob holds 2 references for 3 entries"):
        scan_pack(EntryPack(p.bodies, p.offsets, p.names[:-2]))
    with pytest.raises(WireError, match="packed entries: offsets do not cover"):
        scan_pack(EntryPack(p.bodies[:-1], p.offsets, p.names))
    with pytest.raises(WireError, match="packed entries, entry 2: names field 2 of 1"):
        scan_pack(EntryPack(p.bodies, p.offsets, p.names[:-2] + b"\x00\x02"))
    with pytest.raises(WireError, match="no entries"):
        scan_pack(pack_entries([]))


def _with_table(p: EntryPack, fields: list[bytes], refs: list[int]) -> EntryPack:
    names = struct.pack(">H", len(fields)) + b"".join(struct.pack(">I", len(f)) + f for f in fields)
    return EntryPack(p.bodies, p.offsets, names + struct.pack(f">{len(refs)}H", *refs))


def test_the_names_table_holds_nothing_the_root_does_not_cover() -> None:
    """Every field is a whole valid names field, used, and there once: otherwise bytes
    outside the signed Merkle root would be stored as evidence."""
    bodies = [reading("MTR-0001", s, T0 + s, "sdm120") for s in range(1, 4)]
    p = pack_entries(bodies)
    (field,), refs = names_table(p, "t")
    with pytest.raises(WireError, match="packed entries: names field 2 is used by no entry"):
        scan_pack(_with_table(p, [field, b"\x00\x00"], list(refs)))
    with pytest.raises(WireError, match="a names field is in the table twice"):
        scan_pack(_with_table(p, [field, field], [1, 2, 1]))
    # A field cut short (its rest left in the bodies) splices back to valid readings, but the
    # table must hold whole names fields: rejected, and by both paths.
    half = len(field) // 2
    cut = names_field_at(bodies[0])
    short = [b[:cut] + b[cut + half :] for b in bodies]
    offsets = struct.pack(">4I", 0, *[sum(map(len, short[: i + 1])) for i in range(3)])
    cut_short = _with_table(EntryPack(b"".join(short), offsets, b""), [field[:half]], [1, 1, 1])
    assert unpack_entries(cut_short, "t") == bodies
    with pytest.raises(WireError, match="entry 0: reading"):
        scan_pack(cut_short)


def test_a_large_names_field_used_by_many_entries_is_checked_before_it_is_spliced() -> None:
    """A table field is checked once before any entry is spliced, and entries are spliced one
    at a time, so a big invalid field referenced by thousands of entries costs no memory."""
    bodies = [reading("M1", s, T0 + s, "sdm120") for s in range(1, 2001)]
    p = pack_entries(bodies)
    (_field,), refs = names_table(p, "t")
    big = b"\xff\xff" + bytes(500_000)
    with pytest.raises(WireError, match="entry 0: reading"):
        scan_pack(_with_table(p, [big], list(refs)))
