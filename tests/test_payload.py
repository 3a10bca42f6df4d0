"""Stored payloads: names fields kept once per batch and spliced back byte for byte."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hub.storage.payload import PayloadError, pack_bodies, unpack_payload
from protos.entrypack import EntryPack, pack_entries
from protos import merkle
from protos.canonical import encode_entry, encode_reading_fields, names_field_at
from protos.records import Gap

SDM = ([f"q{i:02d}" for i in range(41)], [f"u{i % 5}" for i in range(41)])
SMALL = (["E", "P"], ["kWh", "W"])


def reading(meter: str, seq: int, model: tuple[list[str], list[str]] = SDM) -> bytes:
    names, units = model
    return encode_reading_fields(meter, seq, 1_700_000_000_000_000_000 + seq, 0, 0, names, units,
                                 [seq * 0.5 + i for i in range(len(names))])


def gap(meter: str) -> bytes:
    return encode_entry(Gap(meter, 1, 2, "timeout", 3))


def test_a_batch_reads_back_byte_for_byte_with_each_names_field_stored_once() -> None:
    bodies = [reading(f"M{i % 4}", i + 1, SDM if i % 3 else SMALL) for i in range(60)] + [gap("M9")]
    p = pack_entries(bodies)
    assert unpack_payload(p, "test") == bodies
    assert p.entry_count == len(bodies)
    # Two distinct names fields, each stored once; every reading refers to one, the gap to none.
    assert struct.unpack_from(">H", p.names)[0] == 2
    refs = struct.unpack(f">{len(bodies)}H", p.names[-2 * len(bodies):])
    assert refs[-1] == 0 and all(refs[:-1]) and set(refs[:-1]) == {1, 2}
    f1 = struct.unpack_from(">I", p.names, 2)[0]
    f2 = struct.unpack_from(">I", p.names, 6 + f1)[0]
    assert len(p.names) == 2 + 4 + f1 + 4 + f2 + 2 * len(bodies)
    cut = {1: f1, 2: f2}
    assert len(p.bodies) == sum(map(len, bodies)) - sum(cut[r] for r in refs if r)
    # The Merkle root over what is read back is the root the gateway signed.
    assert merkle.root(unpack_payload(p, "test")) == merkle.root(bodies)


def test_bodies_not_laid_out_as_readings_are_stored_whole() -> None:
    bodies = [b"", b"\x01", reading("M1", 1)[:30], gap("M2"), reading("M1", 2)[:-1]]
    p = pack_entries(bodies)
    assert unpack_payload(p, "test") == bodies
    assert unpack_payload(pack_entries([]), "test") == []


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(
    st.binary(max_size=120),
    st.builds(reading, st.sampled_from(["A", "B", "MTR-1"]), st.integers(1, 1000), st.sampled_from([SDM, SMALL])),
), max_size=20))
def test_any_list_of_bodies_round_trips(bodies: list[bytes]) -> None:
    assert unpack_payload(pack_entries(bodies), "test") == bodies


def test_the_whole_body_layout_reads_as_a_payload_without_names_only_through_the_migration() -> None:
    """A 0002 payload (bodies whole) has no names blob; 0003's data migration builds it."""
    bodies = [reading("M1", 1), reading("M1", 2)]
    blob, offsets = pack_bodies(bodies)
    assert unpack_payload(EntryPack(blob, offsets, struct.pack(">H2H", 0, 0, 0)), "test") == bodies


@pytest.mark.parametrize("change,problem", [
    (lambda p: EntryPack(p.bodies, p.offsets, p.names[:-1]), "references for 2 entries"),
    (lambda p: EntryPack(p.bodies, p.offsets, b"\x00"), "cut short"),
    (lambda p: EntryPack(p.bodies, p.offsets, p.names[:-2] + b"\x00\x09"), "entry 1: names field 9 of 1"),
    (lambda p: EntryPack(p.bodies, p.offsets, b"\x00\x01\xff\xff\xff\xff" + p.names[6:]), "runs past the end"),
    (lambda p: EntryPack(b"\x00" + p.bodies[1:], p.offsets, p.names), "entry 0: stored without its names field"),
])
def test_a_damaged_payload_is_named(change, problem: str) -> None:  # noqa: ANN001
    p = pack_entries([reading("M1", 1), reading("M1", 2)])
    with pytest.raises(PayloadError, match=problem):
        unpack_payload(change(p), "payload of batch 7")


def test_a_changed_names_field_changes_the_root() -> None:
    bodies = [reading("M1", i) for i in range(1, 9)]
    p = pack_entries(bodies)
    names = bytearray(p.names)
    names[2 + 4 + 5] ^= 0x01  # inside the shared field: every reading of the batch changes
    back = unpack_payload(EntryPack(p.bodies, p.offsets, bytes(names)), "test")
    assert all(a != b for a, b in zip(back, bodies))
    assert merkle.root(back) != merkle.root(bodies)


def test_names_field_at_reads_only_the_prefix() -> None:
    body = reading("MTR-42", 5)
    at = names_field_at(body)
    assert at is not None and names_field_at(body[:at]) == at
    assert names_field_at(gap("MTR-42")) is None
