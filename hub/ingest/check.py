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

from hub.storage.schema import ENTRY_GAP, ENTRY_READING
from hub.storage.store import EntryRow, NewBatch
from protos import readings_pb2 as pb
from protos.batch import BatchError, check_batch
from protos.canonical import CanonicalError, encode_batch_header, scan_entry
from protos.records import ZERO_HASH, BatchHeader
from protos.signing import PublicKey
from protos.wire import WireError, header_from_pb


class Reason(enum.Enum):
    """Why a batch was rejected; each maps to one gRPC status code."""

    MALFORMED = "INVALID_ARGUMENT"
    UNKNOWN_GATEWAY = "UNAUTHENTICATED"
    BAD_SIGNATURE = "UNAUTHENTICATED"
    GAP = "FAILED_PRECONDITION"
    FORK = "ALREADY_EXISTS"
    UNAVAILABLE = "UNAVAILABLE"
    INTERNAL = "INTERNAL"

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", "-")


class Rejection(Exception):
    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class CheckedBatch:
    header: BatchHeader
    batch: NewBatch


def _entry_rows(bodies: Sequence[bytes]) -> tuple[list[EntryRow], list[int]]:
    """Index rows and timestamps of a batch's entries, checked straight from their canonical bytes.

    This loop is the hub's per-reading cost: `scan_entry` recognises the fields a
    meter repeats in every reading instead of decoding them again.
    """
    rows, timestamps = [], []
    for i, body in enumerate(bodies):
        try:
            meter_id, seq, ts = scan_entry(body)
        except CanonicalError as exc:
            raise WireError(f"entry {i}: {exc}") from exc
        rows.append(EntryRow(i, meter_id, ENTRY_GAP if seq is None else ENTRY_READING, seq, ts, body))
        timestamps.append(ts)
    return rows, timestamps


def check_signed_batch(
    msg: pb.SignedBatch, keys: dict[str, dict[str, PublicKey]]
) -> CheckedBatch:
    """Structure and signature; not yet the chain position."""
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
    bodies = list(msg.entry_bytes)
    if not bodies:
        raise Rejection(
            Reason.MALFORMED,
            f"{where}: batch has no entries in entry_bytes (an agent older than wire v2 sends them in "
            "field 3, which this hub no longer reads: upgrade the agent)",
        )
    try:
        rows, timestamps = _entry_rows(bodies)
    except WireError as exc:
        raise Rejection(Reason.MALFORMED, f"{where}: {exc}") from exc
    try:
        digest = check_batch(header, bytes(msg.signature), bodies, timestamps, key)
    except BatchError as exc:
        reason = Reason.BAD_SIGNATURE if "signature" in str(exc) else Reason.MALFORMED
        raise Rejection(reason, str(exc)) from exc
    return CheckedBatch(
        header,
        NewBatch(
            gateway_id=header.gateway_id,
            seq=header.seq,
            hash=digest,
            header=encode_batch_header(header),
            signature=bytes(msg.signature),
            entries=tuple(rows),
        ),
    )


def check_raw_batch(raw: bytes | memoryview, keys: dict[str, dict[str, PublicKey]]) -> CheckedBatch:
    """`check_signed_batch` on the bytes of a SignedBatch message as they came off the wire."""
    try:
        msg = pb.SignedBatch.FromString(raw)
    except DecodeError as exc:
        raise Rejection(Reason.MALFORMED, f"not a SignedBatch message ({len(raw)} bytes): {exc}") from exc
    return check_signed_batch(msg, keys)


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
