"""Canonical bytes of every hashed or signed structure, and their exact inverse.

One function produces the bytes of each structure and its twin parses them back;
nothing else in gridtrace builds signed bytes. The layout is defined in
docs/formats.md so that anyone can rebuild it without our software:

* every structure starts with its domain tag (u8 length + ASCII), so bytes of
  one kind can never be taken for another;
* integers are fixed-width big-endian (u8, u16, u32, u64, i64);
* strings are u16 length + UTF-8; hashes are 32 raw bytes;
* floats are IEEE-754 binary64 big-endian, finite only;
* a reading's quantities are sorted by name, names unique, and laid out in
  columns (all names, all units, all values) so the hub encodes them fast.

Protobuf encodings are deliberately not used here: protobuf does not promise one
byte sequence for one message across library versions.
"""

from __future__ import annotations

import functools
import hashlib
import math
import struct
from collections.abc import Sequence

from protos.records import (
    HASH_SIZE,
    BatchHeader,
    BlockHeader,
    ClockStatus,
    CommitStatement,
    ContractRecord,
    Entry,
    Gap,
    IssueStatement,
    Quality,
    COUNTER_LIMIT,
    QUALITY_KNOWN,
    Quantity,
    Reading,
    ReceiptStatement,
    RecordError,
    check_id,
    check_quantity_names,
    utf8,
)

TAG_READING = b"gridtrace/reading/v1"
TAG_GAP = b"gridtrace/gap/v1"
TAG_CONTRACT_RECORD = b"gridtrace/contract-record/v1"
TAG_BATCH_HEADER = b"gridtrace/batch-header/v1"
TAG_BLOCK_HEADER = b"gridtrace/block-header/v1"
TAG_COMMIT = b"gridtrace/block-commit/v1"
TAG_RECEIPT = b"gridtrace/receipt/v1"
TAG_ISSUE = b"gridtrace/certificate-issue/v1"


class CanonicalError(ValueError):
    """Bytes that are not the canonical encoding of the expected structure."""


def _tag(tag: bytes) -> bytes:
    return bytes([len(tag)]) + tag


def _str(value: str) -> bytes:
    raw = utf8("text field", value)
    if len(raw) > 0xFFFF:
        raise RecordError(f"string too long for canonical encoding: {len(raw)} bytes")
    return struct.pack(">H", len(raw)) + raw


_TAG_READING_FIELD = _tag(TAG_READING)


class _Reader:
    """Cursor over canonical bytes; every read checks the bounds and names the field it was reading."""

    __slots__ = ("data", "pos", "what")

    def __init__(self, data: bytes, what: str) -> None:
        self.data = data
        self.pos = 0
        self.what = what

    def take(self, n: int, field: str) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise CanonicalError(f"{self.what}: {field}: truncated at byte {self.pos}")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def unpack(self, fmt: str, field: str) -> tuple:
        size = struct.calcsize(fmt)
        return struct.unpack(fmt, self.take(size, field))

    def tag(self, expected: bytes) -> None:
        (n,) = self.unpack(">B", "domain tag")
        got = self.take(n, "domain tag")
        if got != expected:
            raise CanonicalError(f"{self.what}: domain tag is {got!r}, expected {expected!r}")

    def string(self, field: str) -> str:
        (n,) = self.unpack(">H", f"{field} length")
        raw = self.take(n, field)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CanonicalError(f"{self.what}: {field} at byte {self.pos - n} is not UTF-8") from exc

    def hash(self, field: str) -> bytes:
        return self.take(HASH_SIZE, field)

    def end(self) -> None:
        if self.pos != len(self.data):
            raise CanonicalError(f"{self.what}: {len(self.data) - self.pos} trailing bytes after the last field")


def _build(what: str, factory, *args):
    try:
        return factory(*args)
    except RecordError as exc:
        raise CanonicalError(f"{what}: {exc}") from exc


# -- readings and gaps (the leaves of a batch's Merkle tree) -------------------


_READING_FIXED = struct.Struct(">QqBI")  # seq, timestamp_ns, clock, quality
_CLOCK_VALUES = frozenset(int(c) for c in ClockStatus)


@functools.lru_cache(maxsize=65536)
def _meter_field(meter_id: str) -> bytes:
    check_id("meter_id", meter_id)
    return _str(meter_id)


@functools.lru_cache(maxsize=4096)
def _quantity_names_field(names: tuple[str, ...], units: tuple[str, ...]) -> bytes:
    check_quantity_names(names, units)
    return struct.pack(">H", len(names)) + b"".join(map(_str, names)) + b"".join(map(_str, units))


def encode_reading_fields(
    meter_id: str,
    seq: int,
    timestamp_ns: int,
    clock: int,
    quality: int,
    names: Sequence[str],
    units: Sequence[str],
    values: Sequence[float],
) -> bytes:
    """The canonical bytes of a reading, from its fields; checks them on the way.

    The one definition of a reading's bytes: `encode_reading` calls it with a
    record's fields; a caller holding columns (a load generator, a poller) can
    call it without building a record. Raises RecordError naming the field that
    is wrong.
    """
    names, units = tuple(names), tuple(units)
    if len(values) != len(names):
        raise RecordError(f"meter {meter_id} seq {seq}: {len(names)} quantity names but {len(values)} values")
    if not all(map(math.isfinite, values)):
        raise RecordError(f"meter {meter_id} seq {seq}: quantity values must be finite")
    if not 1 <= seq < COUNTER_LIMIT:
        raise RecordError(f"seq must be an integer in [1, 2^63), got {seq!r}")
    if not -(1 << 63) <= timestamp_ns < 1 << 63:
        raise RecordError(f"timestamp_ns must be a 64-bit signed integer, got {timestamp_ns!r}")
    if clock not in _CLOCK_VALUES:
        raise RecordError(f"meter {meter_id} seq {seq}: unknown clock status {clock}")
    if quality & ~QUALITY_KNOWN or quality < 0:
        raise RecordError(f"meter {meter_id} seq {seq}: undefined quality flag bits {quality:#x}")
    try:
        name_field = _quantity_names_field(names, units)
    except RecordError as exc:
        raise RecordError(f"meter {meter_id} seq {seq}: {exc}") from exc
    return b"".join(
        (
            _TAG_READING_FIELD,
            _meter_field(meter_id),
            _READING_FIXED.pack(seq, timestamp_ns, clock, quality),
            name_field,
            struct.pack(f">{len(values)}d", *values),
        )
    )


def encode_reading(r: Reading) -> bytes:
    return encode_reading_fields(
        r.meter_id,
        r.seq,
        r.timestamp_ns,
        int(r.clock),
        int(r.quality),
        [q.name for q in r.quantities],
        [q.unit for q in r.quantities],
        [q.value for q in r.quantities],
    )


def decode_reading(data: bytes) -> Reading:
    rd = _Reader(data, "reading")
    rd.tag(TAG_READING)
    meter_id = rd.string("meter_id")
    seq, ts, clock, quality = rd.unpack(_READING_FIXED.format, "seq, timestamp_ns, clock, quality")
    (n,) = rd.unpack(">H", "quantity count")
    names = [rd.string(f"quantity name {i}") for i in range(n)]
    units = [rd.string(f"unit {i}") for i in range(n)]
    values = rd.unpack(f">{n}d", "values")
    rd.end()
    try:
        clock_status = ClockStatus(clock)
    except ValueError as exc:
        raise CanonicalError(f"reading: clock: unknown clock status {clock}") from exc
    quantities = tuple(_build("reading quantity", Quantity, nm, u, v) for nm, u, v in zip(names, units, values))
    return _build("reading", Reading, meter_id, seq, ts, clock_status, Quality(quality), quantities)


def encode_gap(g: Gap) -> bytes:
    return b"".join(
        [
            _tag(TAG_GAP),
            _str(g.meter_id),
            struct.pack(">qq", g.from_ns, g.to_ns),
            _str(g.reason),
            struct.pack(">I", g.missed_polls),
        ]
    )


def decode_gap(data: bytes) -> Gap:
    rd = _Reader(data, "gap")
    rd.tag(TAG_GAP)
    meter_id = rd.string("meter_id")
    from_ns, to_ns = rd.unpack(">qq", "from_ns, to_ns")
    reason = rd.string("reason")
    (missed,) = rd.unpack(">I", "missed_polls")
    rd.end()
    return _build("gap", Gap, meter_id, from_ns, to_ns, reason, missed)


def encode_contract_record(c: ContractRecord) -> bytes:
    return b"".join(
        [
            _tag(TAG_CONTRACT_RECORD),
            _str(c.subject),
            struct.pack(">qq", c.from_ns, c.to_ns),
            _str(c.contract),
            _str(c.kind),
            struct.pack(">I", len(c.body)),
            c.body,
        ]
    )


def decode_contract_record(data: bytes) -> ContractRecord:
    rd = _Reader(data, "contract record")
    rd.tag(TAG_CONTRACT_RECORD)
    subject = rd.string("subject")
    from_ns, to_ns = rd.unpack(">qq", "from_ns, to_ns")
    contract = rd.string("contract")
    kind = rd.string("kind")
    (n,) = rd.unpack(">I", "body length")
    body = rd.take(n, "body")
    rd.end()
    return _build("contract record", ContractRecord, subject, from_ns, to_ns, contract, kind, body)


def encode_entry(e: Entry) -> bytes:
    if isinstance(e, Reading):
        return encode_reading(e)
    if isinstance(e, Gap):
        return encode_gap(e)
    if isinstance(e, ContractRecord):
        return encode_contract_record(e)
    raise TypeError(f"not an entry: {type(e).__name__}")


def decode_entry(data: bytes) -> Entry:
    if data[1 : 1 + len(TAG_READING)] == TAG_READING:
        return decode_reading(data)
    if data[1 : 1 + len(TAG_GAP)] == TAG_GAP:
        return decode_gap(data)
    if data[1 : 1 + len(TAG_CONTRACT_RECORD)] == TAG_CONTRACT_RECORD:
        return decode_contract_record(data)
    raise CanonicalError("entry: neither a reading nor a gap nor a contract record (unknown domain tag)")


# -- the hub's fast check of entry bytes --------------------------------------

_READING_PREFIX = _TAG_READING_FIELD  # length byte + tag: 21 bytes
_METER_AT = len(_READING_PREFIX)
_U16 = struct.Struct(">H")
_FIXED_SIZE = _READING_FIXED.size
# A meter sends the same quantity names field, byte for byte, in every reading, so
# the scanner remembers, per meter field (u16 length + id bytes) already checked,
# the meter id and the names field last seen with it; `startswith` then proves a
# body carries that same field. Entries stay small because names fields are shared
# objects (from the lru_cache of `_quantity_names_field`).
_KNOWN_METERS_LIMIT = 1 << 18
_known_meters: dict[bytes, tuple[str, bytes, int, struct.Struct]] = {}
_values_structs: dict[int, struct.Struct] = {}


def scan_entry(body: bytes) -> tuple[str, int | None, int]:
    """Check that `body` is the canonical bytes of a valid entry; return (meter_id, seq,
    timestamp_ns), with seq None for a gap or a contract record (whose subject is the meter
    id here).

    Accepts exactly what `decode_entry` accepts (a property test holds it to that),
    at a fraction of its cost for readings: meter ids and quantity-name fields are
    checked once per distinct byte string and then recognised by comparison, and
    no record objects are built. Anything the fast walk does not recognise goes to
    `decode_entry`, which either accepts it after all or raises CanonicalError
    naming the field.
    """
    if body.startswith(_READING_PREFIX):
        try:
            end = _METER_AT + 2 + _U16.unpack_from(body, _METER_AT)[0]
            known = _known_meters.get(body[_METER_AT:end])
            if known is not None:
                meter_id, names_field, k, values = known
                seq, ts, clock, quality = _READING_FIXED.unpack_from(body, end)
                pos = end + _FIXED_SIZE
                at = pos + len(names_field)
                if (
                    0 < seq < COUNTER_LIMIT
                    and clock in _CLOCK_VALUES
                    and not quality & ~QUALITY_KNOWN
                    and at + 8 * k == len(body)
                    and body.startswith(names_field, pos)
                    # One sum instead of k checks; an overflow to inf only takes the slow path.
                    and math.isfinite(sum(values.unpack_from(body, at)))
                ):
                    return meter_id, seq, ts
        except struct.error:
            pass
    return _scan_slowly(body)


@functools.lru_cache(maxsize=65536)
def meter_id_of_field(field: bytes) -> str:
    """The meter id held by a reading's meter field (u16 length + UTF-8 id), checked as
    `decode_reading` checks it; for scanners that meet the same few fields in every batch."""
    rd = _Reader(field, "reading")
    meter_id = rd.string("meter_id")
    rd.end()
    _build("reading", check_id, "meter_id", meter_id)
    return meter_id


@functools.lru_cache(maxsize=4096)
def quantity_count_of_names_field(field: bytes) -> int:
    """How many quantities a reading's names field declares (u16 count, the names, the units),
    checked as `decode_reading` checks it: sorted, unique, valid names and units."""
    rd = _Reader(field, "reading")
    (n,) = rd.unpack(">H", "quantity count")
    names = tuple(rd.string(f"quantity name {i}") for i in range(n))
    units = tuple(rd.string(f"unit {i}") for i in range(n))
    rd.end()
    _build("reading quantities", check_quantity_names, names, units)
    return n


READING_PREFIX = _READING_PREFIX  # a reading's first bytes: the domain tag field
READING_FIXED = _READING_FIXED  # seq, timestamp_ns, clock, quality after the meter field
CLOCK_VALUES = _CLOCK_VALUES


def names_field_at(body: bytes) -> int | None:
    """Where the quantity names field starts in bytes laid out as a reading (after the
    domain tag, meter id and fixed fields), or None if `body` does not start like one.

    Reads only the bytes before that offset, so it gives the same answer for a body whose
    names field was cut out (the hub's payload store splices it back there). It does not
    check the body: the caller decides what the offset is good for.
    """
    if not body.startswith(_READING_PREFIX) or len(body) < _METER_AT + 2:
        return None
    return _METER_AT + 2 + _U16.unpack_from(body, _METER_AT)[0] + _FIXED_SIZE


def names_field_end(body: bytes, at: int) -> int | None:
    """End of the names field starting at `at` in a whole reading's bytes (its `k` 8-byte
    values follow it up to the end), or None if the lengths do not fit."""
    if at + 2 > len(body):
        return None
    end = len(body) - 8 * _U16.unpack_from(body, at)[0]
    return end if end > at else None


def _scan_slowly(body: bytes) -> tuple[str, int | None, int]:
    entry = decode_entry(body)
    if not isinstance(entry, Reading):  # a gap or a contract record: indexed by subject and time, no seq
        return entry.meter_id, None, entry.timestamp_ns
    names_field = _quantity_names_field(
        tuple(q.name for q in entry.quantities), tuple(q.unit for q in entry.quantities)
    )
    k = len(entry.quantities)
    values = _values_structs.get(k) or _values_structs.setdefault(k, struct.Struct(f">{k}d"))
    if len(_known_meters) >= _KNOWN_METERS_LIMIT:
        _known_meters.clear()  # a stream of ever new meter ids must not grow the hub without bound
    _known_meters[_meter_field(entry.meter_id)] = (entry.meter_id, names_field, k, values)
    return entry.meter_id, entry.seq, entry.timestamp_ns


# -- batch headers (signed by the gateway) ------------------------------------


def encode_batch_header(h: BatchHeader) -> bytes:
    return b"".join(
        [
            _tag(TAG_BATCH_HEADER),
            _str(h.gateway_id),
            _str(h.key_id),
            struct.pack(">Q", h.seq),
            h.prev_hash,
            h.entries_root,
            struct.pack(">Iqqq", h.entry_count, h.first_ns, h.last_ns, h.created_ns),
        ]
    )


def decode_batch_header(data: bytes) -> BatchHeader:
    rd = _Reader(data, "batch header")
    rd.tag(TAG_BATCH_HEADER)
    gateway_id = rd.string("gateway_id")
    key_id = rd.string("key_id")
    (seq,) = rd.unpack(">Q", "seq")
    prev_hash = rd.hash("prev_hash")
    entries_root = rd.hash("entries_root")
    count, first_ns, last_ns, created_ns = rd.unpack(">Iqqq", "entry_count, first_ns, last_ns, created_ns")
    rd.end()
    return _build(
        "batch header",
        BatchHeader,
        gateway_id,
        key_id,
        seq,
        prev_hash,
        entries_root,
        count,
        first_ns,
        last_ns,
        created_ns,
    )


def batch_hash(h: BatchHeader) -> bytes:
    """The identity of a batch: SHA-256 of its canonical header bytes."""
    return hashlib.sha256(encode_batch_header(h)).digest()


# -- block headers and what seals sign ----------------------------------------


def encode_block_header(h: BlockHeader) -> bytes:
    return b"".join(
        [
            _tag(TAG_BLOCK_HEADER),
            _str(h.chain_id),
            struct.pack(">Q", h.height),
            h.prev_hash,
            struct.pack(">q", h.time_ns),
            h.batches_root,
            struct.pack(">IQQ", h.batch_count, h.entry_count, h.log_size),
            h.log_root,
        ]
    )


def decode_block_header(data: bytes) -> BlockHeader:
    rd = _Reader(data, "block header")
    rd.tag(TAG_BLOCK_HEADER)
    chain_id = rd.string("chain_id")
    (height,) = rd.unpack(">Q", "height")
    prev_hash = rd.hash("prev_hash")
    (time_ns,) = rd.unpack(">q", "time_ns")
    batches_root = rd.hash("batches_root")
    batch_count, entry_count, log_size = rd.unpack(">IQQ", "batch_count, entry_count, log_size")
    log_root = rd.hash("log_root")
    rd.end()
    return _build(
        "block header",
        BlockHeader,
        chain_id,
        height,
        prev_hash,
        time_ns,
        batches_root,
        batch_count,
        entry_count,
        log_size,
        log_root,
    )


def block_hash(h: BlockHeader) -> bytes:
    return hashlib.sha256(encode_block_header(h)).digest()


def encode_commit(c: CommitStatement) -> bytes:
    return _tag(TAG_COMMIT) + _str(c.chain_id) + struct.pack(">Q", c.height) + c.block_hash


def decode_commit(data: bytes) -> CommitStatement:
    rd = _Reader(data, "commit statement")
    rd.tag(TAG_COMMIT)
    chain_id = rd.string("chain_id")
    (height,) = rd.unpack(">Q", "height")
    digest = rd.hash("block_hash")
    rd.end()
    return _build("commit statement", CommitStatement, chain_id, height, digest)


def encode_receipt(r: ReceiptStatement) -> bytes:
    return b"".join(
        [
            _tag(TAG_RECEIPT),
            _str(r.chain_id),
            _str(r.gateway_id),
            struct.pack(">Q", r.batch_seq),
            r.batch_hash,
            struct.pack(">q", r.stored_ns),
        ]
    )


def decode_receipt(data: bytes) -> ReceiptStatement:
    rd = _Reader(data, "receipt")
    rd.tag(TAG_RECEIPT)
    chain_id = rd.string("chain_id")
    gateway_id = rd.string("gateway_id")
    (seq,) = rd.unpack(">Q", "batch_seq")
    digest = rd.hash("batch_hash")
    (stored_ns,) = rd.unpack(">q", "stored_ns")
    rd.end()
    return _build("receipt", ReceiptStatement, chain_id, gateway_id, seq, digest, stored_ns)


def encode_issue(s: IssueStatement) -> bytes:
    return b"".join(
        [
            _tag(TAG_ISSUE),
            _str(s.chain_id),
            _str(s.meter_id),
            struct.pack(">qqq", s.from_ns, s.to_ns, s.issued_ns),
            s.entries_root,
        ]
    )


def decode_issue(data: bytes) -> IssueStatement:
    rd = _Reader(data, "certificate issue statement")
    rd.tag(TAG_ISSUE)
    chain_id = rd.string("chain_id")
    meter_id = rd.string("meter_id")
    from_ns, to_ns, issued_ns = rd.unpack(">qqq", "from_ns, to_ns, issued_ns")
    root = rd.hash("entries_root")
    rd.end()
    return _build("issue statement", IssueStatement, chain_id, meter_id, from_ns, to_ns, issued_ns, root)
