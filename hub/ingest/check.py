"""What makes a batch acceptable: signature, structure, and its place in the gateway's chain.

Pure functions over wire messages (wire v2: each entry as its canonical bytes,
docs/formats.md) and known keys; they raise `Rejection` with
the gRPC status that fits and a message naming gateway, batch and problem.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from hub.storage.payload import Payload, pack_payload
from hub.storage.store import NewBatch
from protos import readings_pb2 as pb
from protos.batch import BatchError, check_batch
from protos.canonical import CanonicalError, encode_batch_header, scan_entry
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
    """A passed check: what a verifier process sends back to the server process. The entry
    bytes come as their stored payload (names fields kept once, about a third of the raw
    size), so the server process neither parses the message again nor packs the bodies:
    that work stays on the verifier's core. Columns, not a row object per entry."""

    header: BatchHeader
    hash: bytes
    signature: bytes
    payload: Payload
    meter_ids: list[str]
    timestamps: list[int]


def scan_entries(bodies: Sequence[bytes]) -> tuple[list[str], list[int]]:
    """Meter ids and timestamps of a batch's entries (the columns the store indexes), each
    entry checked straight from its canonical bytes.

    This loop is the hub's per-reading cost: `scan_entry` recognises the fields a
    meter repeats in every reading instead of decoding them again.
    """
    meter_ids, timestamps = [], []
    for i, body in enumerate(bodies):
        try:
            meter_id, _seq, ts = scan_entry(body)
        except CanonicalError as exc:
            raise WireError(f"entry {i}: {exc}") from exc
        meter_ids.append(meter_id)
        timestamps.append(ts)
    return meter_ids, timestamps


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
    bodies = msg.entry_bytes
    if not bodies:
        raise Rejection(
            Reason.MALFORMED,
            f"{where}: batch has no entries in entry_bytes (an agent older than wire v2 sends them in "
            "field 3, which this hub no longer reads: upgrade the agent)",
        )
    try:
        meter_ids, timestamps = scan_entries(bodies)
    except WireError as exc:
        raise Rejection(Reason.MALFORMED, f"{where}: {exc}") from exc
    signature = bytes(msg.signature)
    try:
        digest = check_batch(header, signature, bodies, timestamps, key)
    except BatchError as exc:
        reason = Reason.BAD_SIGNATURE if "signature" in str(exc) else Reason.MALFORMED
        raise Rejection(reason, str(exc)) from exc
    return Verdict(header, digest, signature, pack_payload(bodies), meter_ids, timestamps)


def checked_batch(v: Verdict) -> CheckedBatch:
    """The batch to store, from a verdict."""
    return CheckedBatch(
        v.header,
        NewBatch(
            gateway_id=v.header.gateway_id,
            seq=v.header.seq,
            hash=v.hash,
            header=encode_batch_header(v.header),
            signature=v.signature,
            payload=v.payload,
            meter_ids=tuple(v.meter_ids),
            ts_ns=tuple(v.timestamps),
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
