"""What makes a batch acceptable: signature, structure, and its place in the gateway's chain.

Pure functions over wire messages (wire v3: the entries packed, `protos.entrypack`;
wire v2: each entry's canonical bytes; docs/formats.md) and known keys; they raise `Rejection` with
the gRPC status that fits and a message naming gateway, batch and problem.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from hub.ingest.packscan import scan_pack
from hub.storage.payload import Span
from hub.storage.store import NewBatch
from protos import readings_pb2 as pb
from protos.batch import BatchError, check_batch_contents, check_header_signature
from protos.canonical import encode_batch_header
from protos.entrypack import EntryPack, pack_entries
from protos.records import ZERO_HASH, BatchHeader
from protos.signing import PublicKey
from protos.wire import WireError, header_from_pb


class Reason(enum.Enum):
    """Why a batch was rejected (the value is its label in metrics and logs); each maps to
    one gRPC status code. Values must differ: two equal values would make one reason an
    alias of the other (bad signatures were counted as unknown gateways that way)."""

    MALFORMED = "malformed"
    UNKNOWN_GATEWAY = "unknown-gateway"
    BAD_SIGNATURE = "bad-signature"
    GAP = "gap"
    FORK = "fork"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"

    @property
    def label(self) -> str:
        return self.value

    @property
    def status(self) -> str:
        """The grpc.StatusCode name the stream ends with."""
        return _STATUS[self]


_STATUS = {
    Reason.MALFORMED: "INVALID_ARGUMENT",
    Reason.UNKNOWN_GATEWAY: "UNAUTHENTICATED",
    Reason.BAD_SIGNATURE: "UNAUTHENTICATED",
    Reason.GAP: "FAILED_PRECONDITION",
    Reason.FORK: "ALREADY_EXISTS",
    Reason.UNAVAILABLE: "UNAVAILABLE",
    Reason.INTERNAL: "INTERNAL",
}


class Rejection(Exception):
    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class CheckedBatch:
    header: BatchHeader
    batch: NewBatch


@dataclass(frozen=True)
class Verdict:
    """A passed check: what a verifier process sends back to the server process: the header,
    hash, signature and the (meter, hour) spans the store indexes. The server process does
    no per-reading work: it takes the packed entries from the message it holds (one protobuf
    parse, no per-entry step), or from here for wire v2, which the verifier packed."""

    header: BatchHeader
    hash: bytes
    signature: bytes
    payload: EntryPack | None  # None: as the message carries it (wire v3), see `without_payload`
    spans: tuple[Span, ...]

    def without_payload(self, msg: pb.SignedBatch) -> Verdict:
        """This verdict for the trip back to the server process: a wire v3 payload is left
        out, since the server holds the message and takes it from there (`checked_batch`)
        instead of receiving a copy of a third of the batch."""
        return dataclasses.replace(self, payload=None) if msg.HasField("packed_entries") else self


def entries_of(msg: pb.SignedBatch, where: str) -> EntryPack:
    """The batch's entries packed, from wire v3 (`packed_entries`, taken as they are) or
    wire v2 (`entry_bytes`, packed here)."""
    if msg.HasField("packed_entries"):
        if msg.entry_bytes:
            raise Rejection(Reason.MALFORMED, f"{where}: batch carries both packed_entries and entry_bytes; send one")
        e = msg.packed_entries
        return EntryPack(e.bodies, e.offsets, e.names)
    if msg.entry_bytes:
        return pack_entries(msg.entry_bytes)
    raise Rejection(
        Reason.MALFORMED,
        f"{where}: batch has no entries in packed_entries or entry_bytes (an agent older than wire v2 "
        "sends them in field 3, which this hub no longer reads: upgrade the agent)",
    )


def verify_signed_batch(msg: pb.SignedBatch, keys: dict[str, dict[str, PublicKey]]) -> Verdict:
    """Structure, entries and signature; not yet the chain position."""
    try:
        header = header_from_pb(msg.header)
    except WireError as exc:
        raise Rejection(Reason.MALFORMED, f"gateway {msg.header.gateway_id or '?'} batch {msg.header.seq}: {exc}") from exc
    where = f"gateway {header.gateway_id} batch {header.seq}"
    gw_keys = keys.get(header.gateway_id)
    if gw_keys is None:
        raise Rejection(
            Reason.UNKNOWN_GATEWAY,
            f"{where}: gateway is not registered with this hub (gridtrace hub gateway add)",
        )
    key = gw_keys.get(header.key_id)
    if key is None:
        raise Rejection(Reason.UNKNOWN_GATEWAY, f"{where}: key {header.key_id} is not registered for this gateway")
    signature = bytes(msg.signature)
    # Signature first: only a holder of the gateway's key makes the hub unpack and hash entries.
    try:
        check_header_signature(header, signature, key)
    except BatchError as exc:
        raise Rejection(Reason.BAD_SIGNATURE, str(exc)) from exc
    pack = entries_of(msg, where)
    try:
        scanned = scan_pack(pack)
    except WireError as exc:
        raise Rejection(Reason.MALFORMED, f"{where}: {exc}") from exc
    try:
        digest = check_batch_contents(header, pack.entry_count, scanned.first_ns, scanned.last_ns, scanned.entries_root)
    except BatchError as exc:
        raise Rejection(Reason.MALFORMED, str(exc)) from exc
    return Verdict(header, digest, signature, pack, scanned.spans)


def checked_batch(v: Verdict, raw: bytes | None = None) -> CheckedBatch:
    """The batch to store, from a verdict; `raw`, the message's bytes, when the verdict
    left the payload in it."""
    if v.payload is None:
        if raw is None:
            raise ValueError("a verdict without its payload needs the message it came from")
        where = f"gateway {v.header.gateway_id} batch {v.header.seq}"
        v = dataclasses.replace(v, payload=entries_of(parse_raw_batch(raw), where))
    return CheckedBatch(
        v.header,
        NewBatch(
            gateway_id=v.header.gateway_id,
            seq=v.header.seq,
            hash=v.hash,
            header=encode_batch_header(v.header),
            signature=v.signature,
            payload=v.payload,
            spans=v.spans,
        ),
    )


def check_signed_batch(msg: pb.SignedBatch, keys: dict[str, dict[str, PublicKey]]) -> CheckedBatch:
    """Structure, entries and signature, and the batch to store; not yet the chain position."""
    return checked_batch(verify_signed_batch(msg, keys))


def parse_raw_batch(raw: bytes | memoryview) -> pb.SignedBatch:
    try:
        return pb.SignedBatch.FromString(raw)
    except DecodeError as exc:
        raise Rejection(Reason.MALFORMED, f"not a SignedBatch message ({len(raw)} bytes): {exc}") from exc


def check_raw_batch(raw: bytes | memoryview, keys: dict[str, dict[str, PublicKey]]) -> CheckedBatch:
    """`check_signed_batch` on the bytes of a SignedBatch message as they came off the wire."""
    return check_signed_batch(parse_raw_batch(raw), keys)


class Placement(enum.Enum):
    NEXT = "next"  # extends the gateway's chain
    SEEN = "seen"  # at or below the head: a re-send, or a fork if its hash differs


def place_in_chain(header: BatchHeader, head: tuple[int, bytes] | None) -> Placement:
    """Where a checked batch falls relative to the gateway's last accepted batch."""
    last_seq, last_hash = head if head is not None else (0, ZERO_HASH)
    where = f"gateway {header.gateway_id} batch {header.seq}"
    if header.seq <= last_seq:
        return Placement.SEEN
    if header.seq > last_seq + 1:
        raise Rejection(
            Reason.GAP,
            f"{where}: out of order; this hub holds batches up to {last_seq}, expected {last_seq + 1}",
        )
    if header.prev_hash != last_hash:
        raise Rejection(
            Reason.FORK,
            f"{where}: prev_hash does not match batch {last_seq} held by this hub (a fork of the gateway's chain)",
        )
    return Placement.NEXT
