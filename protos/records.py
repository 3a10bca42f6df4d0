"""The evidence records as plain data: readings, gaps, contract records, batch and block headers.

These are what the canonical encoder (`protos.canonical`) turns into hashed and
signed bytes. They carry no behaviour beyond validation, so that the agent, the
hub and the offline verifier share one definition of each record.
"""

from __future__ import annotations

import enum
import functools
import json
import math
import re
from dataclasses import dataclass

HASH_SIZE = 32
ZERO_HASH = bytes(HASH_SIZE)

# Identifiers end up in file names, log lines and certificates: keep them plain.
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")


class RecordError(ValueError):
    """A record field is out of its allowed range; the message names the field."""


class ClockStatus(enum.IntEnum):
    """How far a timestamp can be trusted (OCMF time status)."""

    UNKNOWN = 0
    INFORMATIVE = 1
    SYNCHRONIZED = 2


class Quality(enum.IntFlag):
    """Quality flags of a reading; 0 means the value is good."""

    OK = 0
    STALE = 1 << 0  # the meter returned the same frame as last time
    OUT_OF_RANGE = 1 << 1  # a value outside the plausible range of its quantity
    COUNTER_BACKWARDS = 1 << 2  # an energy counter decreased
    COUNTER_RESET = 1 << 3  # an energy counter restarted near zero
    PARTIAL = 1 << 4  # some registers of the map could not be read


# Bits without a defined flag must be 0 (docs/formats.md), so a flag added later
# cannot be mistaken for noise in old evidence.
QUALITY_KNOWN = int(Quality.STALE | Quality.OUT_OF_RANGE | Quality.COUNTER_BACKWARDS | Quality.COUNTER_RESET | Quality.PARTIAL)


def utf8(field: str, value: str) -> bytes:
    """The UTF-8 bytes of a text field; RecordError (not UnicodeEncodeError) if it has none."""
    if not isinstance(value, str):
        raise RecordError(f"{field} must be text, got {value!r:.40}")
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise RecordError(f"{field} is not valid Unicode text (position {exc.start})") from exc


def check_id(field: str, value: str) -> str:
    if not isinstance(value, str) or not _ID_RE.fullmatch(value):
        raise RecordError(
            f"{field} {value!r} is not a valid identifier "
            "(1-128 characters: letters, digits and . _ : / -, starting with a letter or digit)"
        )
    return value


# Counters and sequence numbers are u64 in canonical bytes but stay below 2^63,
# so that every database stores them as a plain signed 64-bit integer.
COUNTER_LIMIT = 1 << 63


def _check_count(field: str, value: int, minimum: int = 0, limit: int = COUNTER_LIMIT) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not minimum <= value < limit:
        raise RecordError(f"{field} must be an integer in [{minimum}, 2^{limit.bit_length() - 1}), got {value!r}")


def _check_i64(field: str, value: int) -> None:
    if not isinstance(value, int) or not -(1 << 63) <= value < 1 << 63:
        raise RecordError(f"{field} must be a 64-bit signed integer, got {value!r}")


def _check_hash(field: str, value: bytes) -> None:
    if not isinstance(value, bytes) or len(value) != HASH_SIZE:
        raise RecordError(f"{field} must be {HASH_SIZE} bytes, got {value!r:.80}")


@functools.lru_cache(maxsize=4096)
def check_quantity_names(names: tuple[str, ...], units: tuple[str, ...]) -> None:
    """Names valid, sorted and unique; one unit (at most 32 bytes) per name.

    Cached: a gateway sends the same names for every reading of a meter model.
    """
    if len(units) != len(names):
        raise RecordError(f"{len(names)} quantity names but {len(units)} units")
    for n in names:
        check_id("quantity name", n)
    if list(names) != sorted(set(names)):
        raise RecordError(f"quantities must be sorted by name and unique, got {list(names)}")
    for n, u in zip(names, units):
        if len(utf8(f"unit of {n}", u)) > 32:
            raise RecordError(f"unit of {n} must be a string of at most 32 bytes")


@dataclass(frozen=True, slots=True)
class Quantity:
    name: str
    unit: str
    value: float

    def __post_init__(self) -> None:
        # Names and units are checked with their reading (check_quantity_names).
        if not isinstance(self.value, float) or not math.isfinite(self.value):
            raise RecordError(f"value of {self.name} must be a finite float, got {self.value!r}")


@dataclass(frozen=True, slots=True)
class Reading:
    meter_id: str
    seq: int
    timestamp_ns: int
    clock: ClockStatus
    quality: Quality
    quantities: tuple[Quantity, ...]

    def __post_init__(self) -> None:
        check_id("meter_id", self.meter_id)
        _check_count("seq", self.seq, minimum=1)
        _check_i64("timestamp_ns", self.timestamp_ns)
        if not isinstance(self.clock, ClockStatus):
            raise RecordError(f"clock of meter {self.meter_id} seq {self.seq} must be a ClockStatus, got {self.clock!r}")
        if not isinstance(self.quality, Quality) or int(self.quality) & ~QUALITY_KNOWN:
            raise RecordError(
                f"quality of meter {self.meter_id} seq {self.seq} has undefined flag bits: {int(self.quality):#x}"
            )
        try:
            check_quantity_names(tuple(q.name for q in self.quantities), tuple(q.unit for q in self.quantities))
        except RecordError as exc:
            raise RecordError(f"meter {self.meter_id} seq {self.seq}: {exc}") from exc

    def value(self, name: str) -> float | None:
        for q in self.quantities:
            if q.name == name:
                return q.value
        return None


@dataclass(frozen=True, slots=True)
class Gap:
    """A span in which a meter could not be read, with the reason."""

    meter_id: str
    from_ns: int
    to_ns: int
    reason: str
    missed_polls: int

    def __post_init__(self) -> None:
        check_id("meter_id", self.meter_id)
        _check_i64("from_ns", self.from_ns)
        _check_i64("to_ns", self.to_ns)
        if self.to_ns < self.from_ns:
            raise RecordError(f"gap of meter {self.meter_id} ends before it starts")
        if not self.reason or len(utf8("gap reason", self.reason)) > 256:
            raise RecordError("gap reason must be 1-256 bytes")
        if not 0 <= self.missed_polls < 1 << 32:
            raise RecordError(f"missed_polls out of range: {self.missed_polls}")

    @property
    def timestamp_ns(self) -> int:
        return self.to_ns


CONTRACT_BODY_LIMIT = 1 << 20  # bytes of a contract record's JSON body


def canonical_json_bytes(doc: object) -> bytes:
    """The one JSON encoding of what gridtrace hashes or signs as JSON: sorted keys, no
    spaces, floats as Python's shortest round-trip repr, no NaN or infinity, non-ASCII
    characters as \\u escapes (so the bytes are ASCII)."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


@dataclass(frozen=True, slots=True)
class ContractRecord:
    """What a contract computed about one subject over [from_ns, to_ns), as a batch entry.

    A contract runner (the carbon-flow contract, later settlement) is a gateway of its own:
    it signs batches of these, and the hub stores, seals and proves them like readings. The
    subject is usually a meter, so a meter's certificate carries the results computed for
    it; an interval-wide or model record names the contract's own subject instead. The body
    is canonical JSON (`canonical_json_bytes`), whose schema the contract and kind name.
    """

    subject: str
    from_ns: int
    to_ns: int
    contract: str  # e.g. carbon-flow/1: the contract and the version of its record schemas
    kind: str  # e.g. meter-interval, interval, model
    body: bytes

    def __post_init__(self) -> None:
        check_id("subject", self.subject)
        check_id("contract", self.contract)
        check_id("kind", self.kind)
        _check_i64("from_ns", self.from_ns)
        _check_i64("to_ns", self.to_ns)
        if self.to_ns < self.from_ns:
            raise RecordError("contract record to_ns is before from_ns")
        if len(self.body) > CONTRACT_BODY_LIMIT:
            raise RecordError(f"contract record body is {len(self.body)} bytes, over {CONTRACT_BODY_LIMIT}")
        try:
            doc = json.loads(self.body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise RecordError(f"contract record body is not UTF-8 JSON: {exc}") from exc
        except RecursionError as exc:  # nesting deeper than the parser goes: no result is shaped so
            raise RecordError("contract record body is nested too deeply") from exc
        if not isinstance(doc, dict):
            raise RecordError("contract record body must be a JSON object")
        try:
            canonical = canonical_json_bytes(doc)
        except ValueError as exc:  # NaN or infinity, which json.loads accepts
            raise RecordError(f"contract record body: {exc}") from exc
        except RecursionError as exc:
            raise RecordError("contract record body is nested too deeply") from exc
        if canonical != self.body:
            raise RecordError("contract record body is not canonical JSON (sorted keys, no spaces, exact floats)")

    @property
    def timestamp_ns(self) -> int:
        return self.from_ns

    @property
    def meter_id(self) -> str:
        """The subject, under the name the hub's index and certificates use for every entry."""
        return self.subject

    def document(self) -> dict:
        return json.loads(self.body)


Entry = Reading | Gap | ContractRecord


@dataclass(frozen=True, slots=True)
class BatchHeader:
    gateway_id: str
    key_id: str
    seq: int
    prev_hash: bytes
    entries_root: bytes
    entry_count: int
    first_ns: int
    last_ns: int
    created_ns: int

    def __post_init__(self) -> None:
        check_id("gateway_id", self.gateway_id)
        check_id("key_id", self.key_id)
        _check_count("batch seq", self.seq, minimum=1)
        _check_hash("prev_hash", self.prev_hash)
        _check_hash("entries_root", self.entries_root)
        if not 1 <= self.entry_count < 1 << 32:
            raise RecordError(f"entry_count must be in [1, 2^32), got {self.entry_count}")
        for f in ("first_ns", "last_ns", "created_ns"):
            _check_i64(f, getattr(self, f))
        if self.last_ns < self.first_ns:
            raise RecordError("batch last_ns is before first_ns")


@dataclass(frozen=True, slots=True)
class BlockHeader:
    """A sealed block of the slave chain.

    Who vouches for the block (a hub's signature today, a PBFT commit
    certificate of 2f+1 replicas later, a master-chain anchor after that) is not
    part of the header: those seals sign `CommitStatement`, which names the
    header's hash. Adding seals therefore never changes the header or what a
    certificate proves about the batches under it.
    """

    chain_id: str
    height: int
    prev_hash: bytes
    time_ns: int
    batches_root: bytes  # RFC 6962 root over this block's batch hashes
    batch_count: int
    entry_count: int
    log_size: int  # batches in the whole chain up to and including this block
    log_root: bytes  # RFC 6962 root over all batch hashes of the chain so far

    def __post_init__(self) -> None:
        check_id("chain_id", self.chain_id)
        _check_count("height", self.height, minimum=1)
        _check_hash("prev_hash", self.prev_hash)
        _check_i64("time_ns", self.time_ns)
        _check_hash("batches_root", self.batches_root)
        _check_count("batch_count", self.batch_count, limit=1 << 32)
        _check_count("entry_count", self.entry_count)
        _check_count("log_size", self.log_size)
        _check_hash("log_root", self.log_root)
        if self.batch_count > self.log_size:
            raise RecordError("block batch_count exceeds log_size")


@dataclass(frozen=True, slots=True)
class CommitStatement:
    """What a seal signs: this chain's block at this height has this hash."""

    chain_id: str
    height: int
    block_hash: bytes

    def __post_init__(self) -> None:
        check_id("chain_id", self.chain_id)
        _check_count("height", self.height, minimum=1)
        _check_hash("block_hash", self.block_hash)


@dataclass(frozen=True, slots=True)
class ReceiptStatement:
    """What a hub signs when it has durably stored a batch."""

    chain_id: str
    gateway_id: str
    batch_seq: int
    batch_hash: bytes
    stored_ns: int

    def __post_init__(self) -> None:
        check_id("chain_id", self.chain_id)
        check_id("gateway_id", self.gateway_id)
        _check_count("batch_seq", self.batch_seq, minimum=1)
        _check_hash("batch_hash", self.batch_hash)
        _check_i64("stored_ns", self.stored_ns)


@dataclass(frozen=True, slots=True)
class IssueStatement:
    """What a hub signs when it issues a measurement certificate: for this meter and
    period, these entries (in this order) are what its chain holds. It binds the
    period and the selection, which the chain's own proofs cannot."""

    chain_id: str
    meter_id: str
    from_ns: int
    to_ns: int
    issued_ns: int
    entries_root: bytes  # RFC 6962 root over the certificate's entries, in order

    def __post_init__(self) -> None:
        check_id("chain_id", self.chain_id)
        check_id("meter_id", self.meter_id)
        for f in ("from_ns", "to_ns", "issued_ns"):
            _check_i64(f, getattr(self, f))
        if self.to_ns <= self.from_ns:
            raise RecordError("certificate period must end after it starts")
        _check_hash("entries_root", self.entries_root)
