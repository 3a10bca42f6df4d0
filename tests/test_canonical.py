"""Tests for protos/canonical.py, protos/records.py and protos/batch.py.

The canonical bytes are what gateways and hubs sign and what a clerk checks
years later with standard tools, so besides round trips this file pins the exact
bytes of one record of each kind (golden vectors). Each vector is written as its
fields in layout order (see the module docstring of protos.canonical): a change
of the format must show up here as a failing test, never slip through.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from protos import canonical as c
from protos.batch import BatchError, check_batch, seal_batch
from protos.canonical import CanonicalError
from protos.records import (
    ContractRecord,
    HASH_SIZE,
    ZERO_HASH,
    BatchHeader,
    BlockHeader,
    ClockStatus,
    CommitStatement,
    Gap,
    IssueStatement,
    Quality,
    Quantity,
    Reading,
    ReceiptStatement,
    RecordError,
    check_id,
)
from protos.signing import Signer

T0 = 1_700_000_000_000_000_000  # 2023-11-14T22:13:20Z in ns; 0x17979cfe362a0000

# ---------------------------------------------------------------------------
# Golden vectors: one fixed record of each kind and its canonical bytes,
# written field by field. Tags are u8 length + ASCII; strings u16 length + UTF-8;
# integers big-endian fixed width; floats IEEE-754 binary64 big-endian.
# ---------------------------------------------------------------------------

GOLDEN_READING = Reading(
    meter_id="MTR-1",
    seq=1,
    timestamp_ns=T0,
    clock=ClockStatus.SYNCHRONIZED,
    quality=Quality.STALE | Quality.OUT_OF_RANGE,
    quantities=(Quantity("energy_import", "kWh", 1234.5), Quantity("power", "W", -1.0)),
)
GOLDEN_READING_HEX = "".join([
    "14", "6772696474726163652f72656164696e672f7631",  # tag: 20, "gridtrace/reading/v1"
    "0005", "4d54522d31",                               # meter_id "MTR-1"
    "0000000000000001",                                 # seq u64 = 1
    "17979cfe362a0000",                                 # timestamp_ns i64
    "02",                                               # clock u8 = SYNCHRONIZED
    "00000003",                                         # quality u32 = STALE|OUT_OF_RANGE
    "0002",                                             # quantity count u16
    "000d", "656e657267795f696d706f7274",               # names: "energy_import"
    "0005", "706f776572",                               #        "power"
    "0003", "6b5768",                                   # units: "kWh"
    "0001", "57",                                       #        "W"
    "40934a0000000000",                                 # values: 1234.5
    "bff0000000000000",                                 #         -1.0
])

GOLDEN_GAP = Gap(meter_id="MTR-2", from_ns=-5, to_ns=T0, reason="timeout", missed_polls=3)
GOLDEN_GAP_HEX = "".join([
    "10", "6772696474726163652f6761702f7631",  # tag: 16, "gridtrace/gap/v1"
    "0005", "4d54522d32",                       # meter_id "MTR-2"
    "fffffffffffffffb",                         # from_ns i64 = -5
    "17979cfe362a0000",                         # to_ns i64
    "0007", "74696d656f7574",                   # reason "timeout"
    "00000003",                                 # missed_polls u32
])

GOLDEN_BATCH = BatchHeader(
    gateway_id="gw1",
    key_id="0123456789abcdef",
    seq=7,
    prev_hash=bytes(range(32)),
    entries_root=b"\xaa" * 32,
    entry_count=2,
    first_ns=10,
    last_ns=20,
    created_ns=30,
)
GOLDEN_BATCH_HEX = "".join([
    "19", "6772696474726163652f62617463682d6865616465722f7631",  # tag: 25, "gridtrace/batch-header/v1"
    "0003", "677731",                                             # gateway_id "gw1"
    "0010", "30313233343536373839616263646566",                   # key_id "0123456789abcdef"
    "0000000000000007",                                           # seq u64
    bytes(range(32)).hex(),                                       # prev_hash
    "aa" * 32,                                                    # entries_root
    "00000002",                                                   # entry_count u32
    "000000000000000a",                                           # first_ns i64
    "0000000000000014",                                           # last_ns i64
    "000000000000001e",                                           # created_ns i64
])
GOLDEN_BATCH_HASH = "1dff2927e1000c8539b1e71ed856398ba0b53eb2ff4bff1235a78c108e4dc785"

GOLDEN_BLOCK = BlockHeader(
    chain_id="substation-7",
    height=3,
    prev_hash=b"\x11" * 32,
    time_ns=T0,
    batches_root=b"\x22" * 32,
    batch_count=2,
    entry_count=500,
    log_size=9,
    log_root=b"\x33" * 32,
)
GOLDEN_BLOCK_HEX = "".join([
    "19", "6772696474726163652f626c6f636b2d6865616465722f7631",  # tag: 25, "gridtrace/block-header/v1"
    "000c", "73756273746174696f6e2d37",                           # chain_id "substation-7"
    "0000000000000003",                                           # height u64
    "11" * 32,                                                    # prev_hash
    "17979cfe362a0000",                                           # time_ns i64
    "22" * 32,                                                    # batches_root
    "00000002",                                                   # batch_count u32
    "00000000000001f4",                                           # entry_count u64 = 500
    "0000000000000009",                                           # log_size u64
    "33" * 32,                                                    # log_root
])
GOLDEN_BLOCK_HASH = "cfd96c13ff95169dba5bb800b5da6e836a0d5b433404389b414a6e7d527fab88"

GOLDEN_COMMIT = CommitStatement(chain_id="substation-7", height=3, block_hash=b"\x44" * 32)
GOLDEN_COMMIT_HEX = "".join([
    "19", "6772696474726163652f626c6f636b2d636f6d6d69742f7631",  # tag: 25, "gridtrace/block-commit/v1"
    "000c", "73756273746174696f6e2d37",                           # chain_id
    "0000000000000003",                                           # height u64
    "44" * 32,                                                    # block_hash
])

GOLDEN_RECEIPT = ReceiptStatement(
    chain_id="substation-7", gateway_id="gw1", batch_seq=7, batch_hash=b"\x55" * 32, stored_ns=123456789
)
GOLDEN_RECEIPT_HEX = "".join([
    "14", "6772696474726163652f726563656970742f7631",  # tag: 20, "gridtrace/receipt/v1"
    "000c", "73756273746174696f6e2d37",                 # chain_id
    "0003", "677731",                                   # gateway_id
    "0000000000000007",                                 # batch_seq u64
    "55" * 32,                                          # batch_hash
    "00000000075bcd15",                                 # stored_ns i64 = 123456789
])

GOLDEN_ISSUE = IssueStatement(
    chain_id="substation-7",
    meter_id="MTR-1",
    from_ns=0,
    to_ns=3600 * 10**9,
    issued_ns=3601 * 10**9,
    entries_root=b"\x66" * 32,
)
GOLDEN_ISSUE_HEX = "".join([
    "1e", "6772696474726163652f63657274696669636174652d69737375652f7631",  # tag: 30
    "000c", "73756273746174696f6e2d37",                                     # chain_id
    "0005", "4d54522d31",                                                   # meter_id
    "0000000000000000",                                                     # from_ns
    "0000034630b8a000",                                                     # to_ns = 3600 s
    "000003466c536a00",                                                     # issued_ns = 3601 s
    "66" * 32,                                                              # entries_root
])

GOLDEN_CONTRACT = ContractRecord(
    subject="MTR-1",
    from_ns=0,
    to_ns=900 * 10**9,
    contract="carbon-flow/1",
    kind="meter-interval",
    body=b'{"emission_t":0.5}',
)
GOLDEN_CONTRACT_HEX = "".join([
    "1c", "6772696474726163652f636f6e74726163742d7265636f72642f7631",  # tag: 28
    "0005", "4d54522d31",                                               # subject
    "0000000000000000",                                                 # from_ns
    "000000d18c2e2800",                                                 # to_ns = 900 s
    "000d", "636172626f6e2d666c6f772f31",                               # contract
    "000e", "6d657465722d696e74657276616c",                             # kind
    "00000012", b'{"emission_t":0.5}'.hex(),                            # body length, body
])

# (name the decoder puts in its messages, record, hex, encode, decode, tag)
KINDS = [
    ("reading", GOLDEN_READING, GOLDEN_READING_HEX, c.encode_reading, c.decode_reading, c.TAG_READING),
    ("gap", GOLDEN_GAP, GOLDEN_GAP_HEX, c.encode_gap, c.decode_gap, c.TAG_GAP),
    ("batch header", GOLDEN_BATCH, GOLDEN_BATCH_HEX, c.encode_batch_header, c.decode_batch_header,
     c.TAG_BATCH_HEADER),
    ("block header", GOLDEN_BLOCK, GOLDEN_BLOCK_HEX, c.encode_block_header, c.decode_block_header,
     c.TAG_BLOCK_HEADER),
    ("commit statement", GOLDEN_COMMIT, GOLDEN_COMMIT_HEX, c.encode_commit, c.decode_commit, c.TAG_COMMIT),
    ("receipt", GOLDEN_RECEIPT, GOLDEN_RECEIPT_HEX, c.encode_receipt, c.decode_receipt, c.TAG_RECEIPT),
    ("issue statement", GOLDEN_ISSUE, GOLDEN_ISSUE_HEX, c.encode_issue, c.decode_issue, c.TAG_ISSUE),
    ("contract record", GOLDEN_CONTRACT, GOLDEN_CONTRACT_HEX, c.encode_contract_record, c.decode_contract_record,
     c.TAG_CONTRACT_RECORD),
]
KIND_IDS = [k[0] for k in KINDS]


@pytest.mark.parametrize("name,record,hexstr,encode,decode,tag", KINDS, ids=KIND_IDS)
def test_golden_vector_encodes_exactly(name, record, hexstr, encode, decode, tag):
    assert encode(record).hex() == hexstr
    assert decode(bytes.fromhex(hexstr)) == record


def test_golden_tags_are_the_documented_ones():
    assert c.TAG_READING == b"gridtrace/reading/v1"
    assert c.TAG_GAP == b"gridtrace/gap/v1"
    assert c.TAG_BATCH_HEADER == b"gridtrace/batch-header/v1"
    assert c.TAG_BLOCK_HEADER == b"gridtrace/block-header/v1"
    assert c.TAG_COMMIT == b"gridtrace/block-commit/v1"
    assert c.TAG_RECEIPT == b"gridtrace/receipt/v1"
    assert c.TAG_ISSUE == b"gridtrace/certificate-issue/v1"
    assert c.TAG_CONTRACT_RECORD == b"gridtrace/contract-record/v1"


def test_golden_hashes():
    assert c.batch_hash(GOLDEN_BATCH).hex() == GOLDEN_BATCH_HASH
    assert c.block_hash(GOLDEN_BLOCK).hex() == GOLDEN_BLOCK_HASH


def test_batch_and_block_hash_are_sha256_of_canonical_bytes():
    assert c.batch_hash(GOLDEN_BATCH) == hashlib.sha256(bytes.fromhex(GOLDEN_BATCH_HEX)).digest()
    assert c.block_hash(GOLDEN_BLOCK) == hashlib.sha256(bytes.fromhex(GOLDEN_BLOCK_HEX)).digest()
    other = dataclasses.replace(GOLDEN_BATCH, created_ns=31)
    assert c.batch_hash(other) == hashlib.sha256(c.encode_batch_header(other)).digest()
    assert c.batch_hash(other) != c.batch_hash(GOLDEN_BATCH)


def test_entry_dispatch():
    assert c.decode_entry(c.encode_entry(GOLDEN_READING)) == GOLDEN_READING
    assert c.decode_entry(c.encode_entry(GOLDEN_GAP)) == GOLDEN_GAP
    assert c.decode_entry(c.encode_entry(GOLDEN_CONTRACT)) == GOLDEN_CONTRACT
    # the hub indexes a contract record under its subject and start, like a gap (no seq)
    assert c.scan_entry(c.encode_entry(GOLDEN_CONTRACT)) == ("MTR-1", None, 0)
    with pytest.raises(TypeError):
        c.encode_entry(GOLDEN_BATCH)  # type: ignore[arg-type]
    with pytest.raises(CanonicalError, match="entry"):
        c.decode_entry(bytes.fromhex(GOLDEN_BATCH_HEX))
    with pytest.raises(CanonicalError, match="entry"):
        c.decode_entry(b"")


# ---------------------------------------------------------------------------
# Round trips over generated valid records.
# ---------------------------------------------------------------------------

_ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
ids = st.builds(
    lambda first, rest: first + rest,
    st.sampled_from(_ALNUM),
    st.text(alphabet=_ALNUM + "._:/-", max_size=127),
)
# Counters are u64 on the wire but kept below 2^63 (databases store signed 64-bit).
u64 = st.integers(0, 2**63 - 1)
pos_u64 = st.integers(1, 2**63 - 1)
i64 = st.integers(-(2**63), 2**63 - 1)
u32 = st.integers(0, 2**32 - 1)
hashes = st.binary(min_size=HASH_SIZE, max_size=HASH_SIZE)
units = st.text(max_size=16).filter(lambda u: len(u.encode()) <= 32)
finite = st.floats(allow_nan=False, allow_infinity=False)

quantity_lists = st.lists(st.tuples(ids, units, finite), max_size=6, unique_by=lambda t: t[0]).map(
    lambda qs: tuple(Quantity(n, u, v) for n, u, v in sorted(qs))
)
readings = st.builds(
    Reading,
    meter_id=ids,
    seq=pos_u64,
    timestamp_ns=i64,
    clock=st.sampled_from(list(ClockStatus)),
    quality=st.integers(0, 31).map(Quality),  # defined flags; other bits are reserved (docs/formats.md)
    quantities=quantity_lists,
)
gaps = st.builds(
    lambda m, a, b, reason, missed: Gap(m, min(a, b), max(a, b), reason, missed),
    ids, i64, i64, st.text(min_size=1, max_size=64), u32,
)


@st.composite
def batch_headers(draw):
    a, b = sorted((draw(i64), draw(i64)))
    return BatchHeader(draw(ids), draw(ids), draw(pos_u64), draw(hashes), draw(hashes),
                       draw(st.integers(1, 2**32 - 1)), a, b, draw(i64))


@st.composite
def block_headers(draw):
    log_size = draw(u64)
    return BlockHeader(draw(ids), draw(pos_u64), draw(hashes), draw(i64), draw(hashes),
                       draw(st.integers(0, min(log_size, 2**32 - 1))), draw(u64), log_size, draw(hashes))


commits = st.builds(CommitStatement, ids, pos_u64, hashes)
receipts = st.builds(ReceiptStatement, ids, ids, pos_u64, hashes, i64)


@st.composite
def issues(draw):
    a = draw(st.integers(-(2**63), 2**63 - 2))
    b = draw(st.integers(a + 1, 2**63 - 1))
    return IssueStatement(draw(ids), draw(ids), a, b, draw(i64), draw(hashes))


def _round_trip(encode, decode, record):
    data = encode(record)
    back = decode(data)
    assert back == record
    assert encode(back) == data  # the bytes are a fixed point, not just the value


@settings(max_examples=150, deadline=None)
@given(readings)
def test_reading_round_trip(r):
    _round_trip(c.encode_reading, c.decode_reading, r)
    assert c.decode_entry(c.encode_entry(r)) == r


@settings(max_examples=100, deadline=None)
@given(gaps)
def test_gap_round_trip(g):
    _round_trip(c.encode_gap, c.decode_gap, g)
    assert c.decode_entry(c.encode_entry(g)) == g


@settings(max_examples=100, deadline=None)
@given(batch_headers())
def test_batch_header_round_trip(h):
    _round_trip(c.encode_batch_header, c.decode_batch_header, h)
    assert c.batch_hash(h) == hashlib.sha256(c.encode_batch_header(h)).digest()


@settings(max_examples=100, deadline=None)
@given(block_headers())
def test_block_header_round_trip(h):
    _round_trip(c.encode_block_header, c.decode_block_header, h)
    assert c.block_hash(h) == hashlib.sha256(c.encode_block_header(h)).digest()


@settings(max_examples=100, deadline=None)
@given(commits)
def test_commit_round_trip(s):
    _round_trip(c.encode_commit, c.decode_commit, s)


@settings(max_examples=100, deadline=None)
@given(receipts)
def test_receipt_round_trip(s):
    _round_trip(c.encode_receipt, c.decode_receipt, s)


@settings(max_examples=100, deadline=None)
@given(issues())
def test_issue_round_trip(s):
    _round_trip(c.encode_issue, c.decode_issue, s)


def test_negative_zero_and_extremes_round_trip():
    r = Reading("m", 2**63 - 1, -(2**63), ClockStatus.UNKNOWN, Quality(31),
                (Quantity("a", "", -0.0), Quantity("b", "x" * 32, 1.7976931348623157e308),
                 Quantity("c", "µ", 5e-324)))
    data = c.encode_reading(r)
    back = c.decode_reading(data)
    assert back == r
    assert math.copysign(1.0, back.quantities[0].value) == -1.0
    assert c.encode_reading(back) == data


# ---------------------------------------------------------------------------
# Decoding rejects anything that is not exactly canonical, naming the structure.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name,record,hexstr,encode,decode,tag", KINDS, ids=KIND_IDS)
def test_decode_rejects_every_truncation(name, record, hexstr, encode, decode, tag):
    data = bytes.fromhex(hexstr)
    for n in range(len(data)):
        with pytest.raises(CanonicalError) as err:
            decode(data[:n])
        assert name in str(err.value)
        assert "truncated" in str(err.value)


@pytest.mark.parametrize("extra", [b"\x00", b"\xff" * 9])
@pytest.mark.parametrize("name,record,hexstr,encode,decode,tag", KINDS, ids=KIND_IDS)
def test_decode_rejects_trailing_bytes(name, record, hexstr, encode, decode, tag, extra):
    with pytest.raises(CanonicalError, match="trailing") as err:
        decode(bytes.fromhex(hexstr) + extra)
    assert name in str(err.value)


@pytest.mark.parametrize("name,record,hexstr,encode,decode,tag", KINDS, ids=KIND_IDS)
def test_decode_rejects_other_domain_tags(name, record, hexstr, encode, decode, tag):
    for other_name, _, other_hex, _, _, other_tag in KINDS:
        if other_tag == tag:
            continue
        with pytest.raises(CanonicalError, match="domain tag") as err:
            decode(bytes.fromhex(other_hex))
        assert name in str(err.value)
    # one changed letter of its own tag, and a bumped version
    data = bytearray.fromhex(hexstr)
    data[1] ^= 0x20  # 'g' -> 'G'
    with pytest.raises(CanonicalError, match="domain tag"):
        decode(bytes(data))
    data = bytearray.fromhex(hexstr)
    data[len(tag)] = ord("2")  # ".../v1" -> ".../v2"
    with pytest.raises(CanonicalError, match="domain tag"):
        decode(bytes(data))


@pytest.mark.parametrize("name,record,hexstr,encode,decode,tag", KINDS, ids=KIND_IDS)
def test_decode_rejects_bad_utf8(name, record, hexstr, encode, decode, tag):
    data = bytearray.fromhex(hexstr)
    first_string = 1 + len(tag) + 2  # every structure has a string right after its tag
    data[first_string] = 0xFF
    with pytest.raises(CanonicalError, match="not UTF-8") as err:
        decode(bytes(data))
    assert name in str(err.value)


def _reading_field_offset() -> int:
    """Offset of the seq field in GOLDEN_READING's bytes (after tag and meter id)."""
    return 1 + len(c.TAG_READING) + 2 + len("MTR-1")


def test_decode_rejects_unknown_clock_status():
    data = bytearray.fromhex(GOLDEN_READING_HEX)
    clock_at = _reading_field_offset() + 8 + 8
    assert data[clock_at] == ClockStatus.SYNCHRONIZED
    for bad in (3, 0x7F, 0xFF):
        data[clock_at] = bad
        with pytest.raises(CanonicalError, match=rf"reading: clock: unknown clock status {bad}"):
            c.decode_reading(bytes(data))


def test_decode_rejects_valid_layout_with_invalid_values():
    # seq 0
    data = bytearray.fromhex(GOLDEN_READING_HEX)
    at = _reading_field_offset()
    data[at : at + 8] = bytes(8)
    with pytest.raises(CanonicalError, match="reading") as err:
        c.decode_reading(bytes(data))
    assert "seq" in str(err.value)
    # a NaN and an infinity in place of 1234.5
    for bad in (float("nan"), float("inf")):
        data = bytearray.fromhex(GOLDEN_READING_HEX)
        at = data.find(struct.pack(">d", 1234.5))
        data[at : at + 8] = struct.pack(">d", bad)
        with pytest.raises(CanonicalError, match="finite") as err:
            c.decode_reading(bytes(data))
        assert "reading" in str(err.value) and "energy_import" in str(err.value)
    # quantities in the wrong order
    swapped = Reading("MTR-1", 1, T0, ClockStatus.SYNCHRONIZED, Quality.OK, ())
    raw = bytearray(c.encode_reading(swapped))
    raw[-2:] = struct.pack(">H", 2)
    for name in ("power", "energy_import"):
        raw += struct.pack(">H", len(name)) + name.encode()
    raw += b"\x00\x00" * 2 + struct.pack(">2d", 1.0, 1.0)
    with pytest.raises(CanonicalError, match="sorted"):
        c.decode_reading(bytes(raw))
    # a gap that ends before it starts
    g = bytearray.fromhex(GOLDEN_GAP_HEX)
    start = 1 + len(c.TAG_GAP) + 2 + 5
    g[start : start + 16] = struct.pack(">qq", 10, 5)
    with pytest.raises(CanonicalError, match="gap"):
        c.decode_gap(bytes(g))
    # a block at height 0
    b = bytearray.fromhex(GOLDEN_BLOCK_HEX)
    at = 1 + len(c.TAG_BLOCK_HEADER) + 2 + len("substation-7")
    b[at : at + 8] = bytes(8)
    with pytest.raises(CanonicalError, match="block header") as err:
        c.decode_block_header(bytes(b))
    assert "height" in str(err.value)


# ---------------------------------------------------------------------------
# Records reject out-of-range fields, naming the field.
# ---------------------------------------------------------------------------


def _reading(**kw) -> Reading:
    fields = dict(meter_id="MTR-1", seq=1, timestamp_ns=T0, clock=ClockStatus.SYNCHRONIZED,
                  quality=Quality.OK, quantities=(Quantity("power", "W", 1.0),))
    fields.update(kw)
    return Reading(**fields)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), 1, "1.0", None])
def test_quantity_rejects_non_finite_or_non_float(value):
    with pytest.raises(RecordError, match="value of power must be a finite float"):
        Quantity("power", "W", value)


def test_quantity_unit_limit():
    # Names and units are checked with their reading, once per set of names.
    _reading(quantities=(Quantity("power", "x" * 32, 1.0),))
    with pytest.raises(RecordError, match="unit of power"):
        _reading(quantities=(Quantity("power", "x" * 33, 1.0),))
    with pytest.raises(RecordError, match="unit of power"):
        _reading(quantities=(Quantity("power", "µ" * 17, 1.0),))  # 34 bytes


def test_reading_rejects_unsorted_or_duplicate_quantities():
    a, b = Quantity("a", "", 1.0), Quantity("b", "", 2.0)
    _reading(quantities=(a, b))
    with pytest.raises(RecordError, match="sorted by name"):
        _reading(quantities=(b, a))
    with pytest.raises(RecordError, match="unique"):
        _reading(quantities=(a, a))


BAD_IDS = ["", " MTR-1", "MTR 1", "-MTR", ".hidden", "MTR-1;", "x" * 129, "Zähler", "a\x00b", 5, None, b"MTR-1"]


@pytest.mark.parametrize("bad", BAD_IDS, ids=repr)
def test_ids_are_checked_and_named(bad):
    with pytest.raises(RecordError, match="meter_id .* is not a valid identifier"):
        _reading(meter_id=bad)
    with pytest.raises(RecordError, match="gateway_id"):
        dataclasses.replace(GOLDEN_BATCH, gateway_id=bad)
    with pytest.raises(RecordError, match="key_id"):
        dataclasses.replace(GOLDEN_BATCH, key_id=bad)
    with pytest.raises(RecordError, match="chain_id"):
        dataclasses.replace(GOLDEN_BLOCK, chain_id=bad)
    with pytest.raises(RecordError, match="chain_id"):
        dataclasses.replace(GOLDEN_COMMIT, chain_id=bad)
    with pytest.raises(RecordError, match="gateway_id"):
        dataclasses.replace(GOLDEN_RECEIPT, gateway_id=bad)
    with pytest.raises(RecordError, match="meter_id"):
        dataclasses.replace(GOLDEN_ISSUE, meter_id=bad)
    with pytest.raises(RecordError, match="meter_id"):
        dataclasses.replace(GOLDEN_GAP, meter_id=bad)
    if isinstance(bad, str) and bad:
        with pytest.raises(RecordError, match="quantity name"):
            _reading(quantities=(Quantity(bad, "W", 1.0),))


def test_id_limits_accepted():
    for good in ["a", "0", "x" * 128, "MTR-1", "site.a/feeder_2:meter-3"]:
        assert check_id("meter_id", good) == good


def test_id_with_trailing_newline_is_rejected():
    with pytest.raises(RecordError, match="meter_id"):
        _reading(meter_id="MTR-1\n")


@pytest.mark.parametrize("bad", [b"", b"\x00" * 31, b"\x00" * 33, "00" * 32, bytearray(32), None])
def test_hashes_must_be_32_bytes(bad):
    cases = [
        (GOLDEN_BATCH, "prev_hash"), (GOLDEN_BATCH, "entries_root"),
        (GOLDEN_BLOCK, "prev_hash"), (GOLDEN_BLOCK, "batches_root"), (GOLDEN_BLOCK, "log_root"),
        (GOLDEN_COMMIT, "block_hash"), (GOLDEN_RECEIPT, "batch_hash"), (GOLDEN_ISSUE, "entries_root"),
    ]
    for record, field in cases:
        with pytest.raises(RecordError, match=rf"{field} must be 32 bytes"):
            dataclasses.replace(record, **{field: bad})


def test_sequence_numbers_start_at_one():
    with pytest.raises(RecordError, match=r"^seq must be"):
        _reading(seq=0)
    with pytest.raises(RecordError, match=r"^seq must be"):
        _reading(seq=2**64)
    with pytest.raises(RecordError, match=r"^seq must be"):
        _reading(seq=2**63)  # would not fit a signed 64-bit database column
    with pytest.raises(RecordError, match="batch seq"):
        dataclasses.replace(GOLDEN_BATCH, seq=0)
    with pytest.raises(RecordError, match="height"):
        dataclasses.replace(GOLDEN_BLOCK, height=0)
    with pytest.raises(RecordError, match="height"):
        dataclasses.replace(GOLDEN_COMMIT, height=0)
    with pytest.raises(RecordError, match="batch_seq"):
        dataclasses.replace(GOLDEN_RECEIPT, batch_seq=0)
    with pytest.raises(RecordError, match="seq"):
        _reading(seq=-1)


def test_other_range_checks_name_the_field():
    with pytest.raises(RecordError, match="timestamp_ns"):
        _reading(timestamp_ns=2**63)
    with pytest.raises(RecordError, match="ends before it starts"):
        dataclasses.replace(GOLDEN_GAP, from_ns=10, to_ns=9)
    with pytest.raises(RecordError, match="reason"):
        dataclasses.replace(GOLDEN_GAP, reason="")
    with pytest.raises(RecordError, match="reason"):
        dataclasses.replace(GOLDEN_GAP, reason="x" * 257)
    with pytest.raises(RecordError, match="missed_polls"):
        dataclasses.replace(GOLDEN_GAP, missed_polls=2**32)
    with pytest.raises(RecordError, match="entry_count"):
        dataclasses.replace(GOLDEN_BATCH, entry_count=0)
    with pytest.raises(RecordError, match="last_ns"):
        dataclasses.replace(GOLDEN_BATCH, first_ns=21)
    with pytest.raises(RecordError, match="created_ns"):
        dataclasses.replace(GOLDEN_BATCH, created_ns=-(2**63) - 1)
    with pytest.raises(RecordError, match="batch_count exceeds log_size"):
        dataclasses.replace(GOLDEN_BLOCK, batch_count=10)
    with pytest.raises(RecordError, match="stored_ns"):
        dataclasses.replace(GOLDEN_RECEIPT, stored_ns=2**63)
    with pytest.raises(RecordError, match="period"):
        dataclasses.replace(GOLDEN_ISSUE, to_ns=0)


def test_reading_rejects_clock_and_quality_it_cannot_encode():
    with pytest.raises(RecordError, match="clock"):
        _reading(clock=7)
    with pytest.raises(RecordError, match="quality"):
        _reading(quality=Quality(2**40))
    with pytest.raises(RecordError, match="quality"):
        _reading(quality=Quality(32))


def test_string_too_long_for_u16_length():
    # Unit and id limits keep strings short; a gap reason is capped at 256 bytes.
    with pytest.raises(RecordError, match="too long"):
        c._str("x" * 0x10000)


# ---------------------------------------------------------------------------
# protos/batch.py: seal and check.
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def signer() -> Signer:
    return Signer.generate()


def _entries():
    rs = [_reading(seq=i, timestamp_ns=T0 + i * 10**9, quantities=(Quantity("power", "W", float(i)),))
          for i in (1, 2, 3)]
    gap = Gap("MTR-2", T0, T0 + 5 * 10**9, "timeout", 5)
    entries = [*rs, gap]
    return [c.encode_entry(e) for e in entries], [e.timestamp_ns for e in entries]


@pytest.fixture(scope="module")
def sealed(signer):
    bodies, ts = _entries()
    return seal_batch(signer, "gw1", 4, b"\x07" * 32, bodies, ts, T0 + 10**10), bodies, ts


def test_sealed_batch_checks(signer, sealed):
    batch, bodies, ts = sealed
    h = batch.header
    assert (h.gateway_id, h.key_id, h.seq, h.prev_hash) == ("gw1", signer.key_id, 4, b"\x07" * 32)
    assert h.entry_count == 4
    assert (h.first_ns, h.last_ns) == (T0 + 10**9, T0 + 5 * 10**9)  # a gap counts at its end
    assert h.created_ns == T0 + 10**10
    assert batch.hash == c.batch_hash(h)
    assert check_batch(h, batch.signature, bodies, ts, signer.public_key) == batch.hash
    # the signature is plain Ed25519 over the canonical header bytes: another implementation agrees
    Ed25519PublicKey.from_public_bytes(signer.public_key.raw).verify(batch.signature, c.encode_batch_header(h))


def test_empty_batch_is_refused(signer):
    with pytest.raises(BatchError, match="at least one entry"):
        seal_batch(signer, "gw1", 1, ZERO_HASH, [], [], T0)


def test_any_changed_entry_byte_is_detected(signer, sealed):
    batch, bodies, ts = sealed
    for i, body in enumerate(bodies):
        for j in range(len(body)):
            changed = list(bodies)
            b = bytearray(body)
            b[j] ^= 0x01
            changed[i] = bytes(b)
            with pytest.raises(BatchError, match="entries_root does not match"):
                check_batch(batch.header, batch.signature, changed, ts, signer.public_key)


def test_reordered_missing_or_extra_entries_are_detected(signer, sealed):
    batch, bodies, ts = sealed
    with pytest.raises(BatchError, match="entries_root"):
        check_batch(batch.header, batch.signature, [bodies[1], bodies[0], *bodies[2:]],
                    [ts[1], ts[0], *ts[2:]], signer.public_key)
    with pytest.raises(BatchError, match="header says 4 entries, got 3"):
        check_batch(batch.header, batch.signature, bodies[:3], ts[:3], signer.public_key)
    with pytest.raises(BatchError, match="header says 4 entries, got 5"):
        check_batch(batch.header, batch.signature, [*bodies, bodies[0]], [*ts, ts[0]], signer.public_key)


def test_changed_count_is_detected(signer, sealed):
    batch, bodies, ts = sealed
    h = dataclasses.replace(batch.header, entry_count=5)
    with pytest.raises(BatchError, match="header says 5 entries, got 4"):
        check_batch(h, batch.signature, bodies, ts, signer.public_key)


def test_changed_time_range_is_detected(signer, sealed):
    batch, bodies, ts = sealed
    for h in (dataclasses.replace(batch.header, first_ns=T0 - 1),
              dataclasses.replace(batch.header, last_ns=T0 + 6 * 10**9)):
        with pytest.raises(BatchError, match="time range"):
            check_batch(h, batch.signature, bodies, ts, signer.public_key)
    with pytest.raises(BatchError, match="time range"):
        check_batch(batch.header, batch.signature, bodies, [*ts[:-1], ts[-1] + 1], signer.public_key)


def test_changed_root_is_detected(signer, sealed):
    batch, bodies, ts = sealed
    root = bytearray(batch.header.entries_root)
    root[31] ^= 0x80
    h = dataclasses.replace(batch.header, entries_root=bytes(root))
    with pytest.raises(BatchError, match="entries_root does not match"):
        check_batch(h, batch.signature, bodies, ts, signer.public_key)


def test_changed_signature_is_detected(signer, sealed):
    batch, bodies, ts = sealed
    for j in (0, 31, 32, 63):
        sig = bytearray(batch.signature)
        sig[j] ^= 0x01
        with pytest.raises(BatchError, match="signature does not verify"):
            check_batch(batch.header, bytes(sig), bodies, ts, signer.public_key)
    for sig in (b"", batch.signature[:63], batch.signature + b"\x00"):
        with pytest.raises(BatchError, match="signature does not verify"):
            check_batch(batch.header, sig, bodies, ts, signer.public_key)


def test_changed_signed_header_fields_are_detected(signer, sealed):
    batch, bodies, ts = sealed
    for change in (dict(seq=5), dict(prev_hash=ZERO_HASH), dict(created_ns=T0), dict(gateway_id="gw2"),
                   dict(key_id="0000000000000000")):
        h = dataclasses.replace(batch.header, **change)
        with pytest.raises(BatchError, match="signature does not verify"):
            check_batch(h, batch.signature, bodies, ts, signer.public_key)


def test_another_key_is_detected(sealed):
    batch, bodies, ts = sealed
    other = Signer.generate().public_key
    with pytest.raises(BatchError, match=f"signature does not verify with key {batch.header.key_id}"):
        check_batch(batch.header, batch.signature, bodies, ts, other)


# ---------------------------------------------------------------------------
# The hub's fast scanner accepts exactly what the decoder accepts.
# ---------------------------------------------------------------------------

_SPECIAL_DOUBLES = [struct.pack(">d", v) for v in (math.nan, math.inf, -math.inf, 1e308)] + [b"\x7f\xf0" + bytes(6)]


@st.composite
def damaged_entries(draw):
    """(valid canonical entry, the same bytes perhaps damaged): flips, overwrites (NaN/inf
    included), truncations, insertions, and fields that parse but break a rule."""
    entry = draw(st.one_of(readings, readings, gaps))
    body = c.encode_entry(entry)
    how = draw(st.sampled_from(["keep", "overwrite", "special", "truncate", "insert", "flip"]))
    at = draw(st.integers(0, len(body)))
    if how == "overwrite":
        body = body[:at] + draw(st.binary(min_size=1, max_size=9)) + body[at + 1 :]
    elif how == "special":
        body = body[:at] + draw(st.sampled_from(_SPECIAL_DOUBLES)) + body[at + 8 :]
    elif how == "truncate":
        body = body[:at]
    elif how == "insert":
        body = body[:at] + draw(st.binary(min_size=1, max_size=4)) + body[at:]
    elif how == "flip" and body:
        i = min(at, len(body) - 1)
        body = body[:i] + bytes([body[i] ^ (1 << draw(st.integers(0, 7)))]) + body[i + 1 :]
    return c.encode_entry(entry), body


def _outcome(fn, body):
    try:
        return "ok", fn(body)
    except CanonicalError:
        return "rejected", None


@settings(max_examples=1500, deadline=None)
@given(damaged_entries())
def test_scan_entry_accepts_exactly_what_the_decoder_accepts(pair):
    valid, body = pair
    c.scan_entry(valid)  # seen before: the damaged copy meets the scanner's fast path
    scanned, decoded = _outcome(c.scan_entry, body), _outcome(c.decode_entry, body)
    assert scanned[0] == decoded[0], (body.hex(), scanned, decoded)
    if decoded[0] == "ok":
        entry = decoded[1]
        assert c.encode_entry(entry) == body  # accepted bytes are canonical
        seq = entry.seq if isinstance(entry, Reading) else None
        assert scanned[1] == (entry.meter_id, seq, entry.timestamp_ns)


def test_scan_entry_rejections_name_the_field():
    data = bytearray.fromhex(GOLDEN_READING_HEX)
    c.scan_entry(bytes(data))
    values_at = len(data) - 8 * len(GOLDEN_READING.quantities)
    data[values_at : values_at + 8] = struct.pack(">d", math.nan)
    with pytest.raises(CanonicalError, match=f"value of {GOLDEN_READING.quantities[0].name} must be a finite"):
        c.scan_entry(bytes(data))
    with pytest.raises(CanonicalError, match="reading: values: truncated"):
        c.scan_entry(bytes.fromhex(GOLDEN_READING_HEX)[:-1])


def test_scan_entry_accepts_finite_values_whose_sum_overflows():
    r = Reading("MTR-9", 1, 0, ClockStatus.SYNCHRONIZED, Quality.OK,
                (Quantity("a", "", 1.7e308), Quantity("b", "", 1.7e308)))
    body = c.encode_entry(r)
    assert c.scan_entry(body) == c.scan_entry(body) == ("MTR-9", 1, 0)


@pytest.mark.parametrize("body, says", [
    (b'{"b":1,"a":2}', "not canonical JSON"),
    (b'{"a": 2}', "not canonical JSON"),
    (b'{"a":1.50}', "not canonical JSON"),
    (b'{"a":NaN}', "contract record body"),
    (b'[1,2]', "must be a JSON object"),
    (b'{"a":"\xff"}', "not UTF-8 JSON"),
    (b"", "not UTF-8 JSON"),
    (b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
])
def test_a_contract_record_body_must_be_one_canonical_json_object(body, says):
    """One result, one byte string: a body that parses but is not in canonical form is refused,
    both as a record and as bytes a hub receives."""
    with pytest.raises(RecordError, match=says):
        dataclasses.replace(GOLDEN_CONTRACT, body=body)
    raw = bytes.fromhex(GOLDEN_CONTRACT_HEX)
    at = raw.index(b'{"emission_t"') - 4
    forged = raw[:at] + struct.pack(">I", len(body)) + body
    with pytest.raises(CanonicalError, match=f"contract record: .*{says}"):
        c.decode_entry(forged)


def test_a_contract_record_is_bounded_and_named_by_identifiers():
    big = b'{"a":"' + b"x" * (1 << 20) + b'"}'
    with pytest.raises(RecordError, match="over 1048576"):
        dataclasses.replace(GOLDEN_CONTRACT, body=big)
    with pytest.raises(RecordError, match="contract"):
        dataclasses.replace(GOLDEN_CONTRACT, contract="carbon flow")
    with pytest.raises(RecordError, match="before from_ns"):
        dataclasses.replace(GOLDEN_CONTRACT, from_ns=10, to_ns=9)
    assert dataclasses.replace(GOLDEN_CONTRACT, to_ns=0).timestamp_ns == 0  # a point in time (a registration)
