"""The messages replicas exchange to agree on blocks (PBFT), and their canonical bytes.

Every message a replica sends is `Signed`: its canonical bytes (one function, `encode`, and
its twin `decode`) signed by the sender's replica key. A replica counts only distinct
signers, so quorums cannot be faked by repeating one replica's message. Proposals carry the
batch digests a block seals, in the order the primary chose, and the header of the block they
make (built by the primary's ledger, checked by every backup's before it votes).
`Proposal.digest` is what replicas vote on; it commits to the header's hash and to the batch
list's hash, so a commit certificate can be checked against a block header alone
(`proposal_digest`, used by `gridtrace cert verify`).

Layout (big-endian; the same conventions as protos/canonical.py): a domain tag, then the
fields in the order declared here; integers u64, digests 32 bytes, lists u32 count + items,
nested messages u32 length + bytes.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

DIGEST = 32


class MessageError(ValueError):
    """Bytes that are not a canonical consensus message."""


@dataclass(frozen=True)
class Proposal:
    """What the primary proposes for one height: the batches to seal, after the previous block,
    and the header of the block they make."""

    height: int
    prev: bytes  # digest of the proposal committed at height - 1 (zeros at height 1)
    batches: tuple[bytes, ...]  # batch digests, in the order they are sealed
    header: bytes = b""  # the block header's canonical bytes (the ledger's format)
    view: int = 0  # the view it was first proposed in (a new view may carry it on unchanged)
    # The commit votes for the block at height - 1 its primary gathered: who took part, the
    # evidence the replicas' points are settled by (hub/consensus/membership.py).
    last_commit: tuple[Signed, ...] = ()

    @cached_property  # asked for at every vote and check; the proposal never changes
    def digest(self) -> bytes:
        return proposal_digest(
            self.height, self.prev, hashlib.sha256(self.header).digest(),
            contents_digest(self.view, self.batches, self.last_commit),
        )


def contents_digest(view: int, batches: tuple[bytes, ...], last_commit: tuple[Signed, ...]) -> bytes:
    """What a proposal carries besides its header, hashed: its view, batch list and votes."""
    return hashlib.sha256(_u64(view) + _list(batches, _digest) + _list(last_commit, lambda v: _nested(encode(v)))).digest()


_PROPOSAL_DIGEST_TAG = b"gridtrace/pbft/proposal-digest/v1"


def proposal_digest(height: int, prev: bytes, header_hash: bytes, contents: bytes) -> bytes:
    """What replicas vote on for a proposal. Defined over hashes, so that a verifier holding
    only a block header (whose hash is `header_hash`) and a certificate's `prev` and
    `contents` digest can recompute what the commit signatures cover."""
    return hashlib.sha256(
        bytes([len(_PROPOSAL_DIGEST_TAG)]) + _PROPOSAL_DIGEST_TAG + _u64(height) + _digest(prev)
        + _digest(header_hash) + _digest(contents)
    ).digest()


@dataclass(frozen=True)
class Forward:
    """A replica tells the others which batches it stores (those gateways gave it, and, with
    custody, those it fetched), so that a batch that reached any correct replica is proposed
    even by a primary that did not receive it. With custody (`ConsensusConfig.payload_copies`)
    each batch's header comes along (`headers[i]` for `batches[i]`, opaque to the core, checked
    by the ledger), so that replicas that will not store the batch can still check a block
    header that seals it; without custody `headers` is empty."""

    batches: tuple[bytes, ...]
    headers: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class PrePrepare:
    view: int
    proposal: Proposal


@dataclass(frozen=True)
class Prepare:
    view: int
    height: int
    digest: bytes


@dataclass(frozen=True)
class Commit:
    view: int
    height: int
    digest: bytes


@dataclass(frozen=True)
class Checkpoint:
    height: int
    digest: bytes  # digest of the proposal committed at `height`


@dataclass(frozen=True)
class Signed:
    """A message with its sender and the sender's signature over `encode(body)`."""

    body: Message
    replica: int
    signature: bytes = field(repr=False)


@dataclass(frozen=True)
class CommitCertificate:
    """2f+1 (the quorum) signed commits for one proposal: the proof a block was agreed on."""

    proposal: Proposal
    commits: tuple[Signed, ...]


@dataclass(frozen=True)
class PreparedCertificate:
    """A pre-prepare and a quorum - 1 of matching prepares: the proposal may have committed
    somewhere, so a new view must propose it again."""

    pre_prepare: Signed
    prepares: tuple[Signed, ...]


@dataclass(frozen=True)
class ViewChange:
    view: int  # the view the sender moves to
    committed: CommitCertificate | None  # its highest committed block (None: nothing yet)
    prepared: PreparedCertificate | None  # prepared at committed height + 1, if any


@dataclass(frozen=True)
class NewView:
    view: int
    view_changes: tuple[Signed, ...]  # a quorum of signed ViewChange for `view`
    pre_prepare: Signed | None  # the new primary's proposal for the next height, if one is due


@dataclass(frozen=True)
class FetchBlocks:
    """State transfer: ask a peer for committed blocks from `height` on."""

    height: int


@dataclass(frozen=True)
class Blocks:
    certificates: tuple[CommitCertificate, ...]


Message = (
    Proposal | Forward | PrePrepare | Prepare | Commit | Checkpoint | ViewChange | NewView | FetchBlocks | Blocks
    | CommitCertificate | PreparedCertificate | Signed
)

# -- canonical bytes ------------------------------------------------------------------

_U64 = struct.Struct(">Q")
_U32 = struct.Struct(">I")


def _u64(v: int) -> bytes:
    return _U64.pack(v)


def _digest(d: bytes) -> bytes:
    if len(d) != DIGEST:
        raise MessageError(f"a digest is {DIGEST} bytes, got {len(d)}")
    return d


def _nested(b: bytes) -> bytes:
    return _U32.pack(len(b)) + b


def _list(items: tuple, enc: Callable[[object], bytes]) -> bytes:
    return _U32.pack(len(items)) + b"".join(enc(i) for i in items)


def _opt(item: object | None) -> bytes:
    return b"\x00" if item is None else b"\x01" + _nested(encode(item))


_TAGS: dict[type, bytes] = {
    Proposal: b"gridtrace/pbft/proposal/v2",
    Forward: b"gridtrace/pbft/forward/v2",
    PrePrepare: b"gridtrace/pbft/pre-prepare/v1",
    Prepare: b"gridtrace/pbft/prepare/v1",
    Commit: b"gridtrace/pbft/commit/v1",
    Checkpoint: b"gridtrace/pbft/checkpoint/v1",
    Signed: b"gridtrace/pbft/signed/v1",
    CommitCertificate: b"gridtrace/pbft/commit-certificate/v1",
    PreparedCertificate: b"gridtrace/pbft/prepared-certificate/v1",
    ViewChange: b"gridtrace/pbft/view-change/v1",
    NewView: b"gridtrace/pbft/new-view/v1",
    FetchBlocks: b"gridtrace/pbft/fetch-blocks/v1",
    Blocks: b"gridtrace/pbft/blocks/v1",
}
_BY_TAG = {tag: cls for cls, tag in _TAGS.items()}


def _fields(m: object) -> bytes:
    if isinstance(m, Proposal):
        return (_u64(m.height) + _digest(m.prev) + _list(m.batches, _digest) + _nested(m.header) + _u64(m.view)
                + _list(m.last_commit, lambda v: _nested(encode(v))))
    if isinstance(m, Forward):
        return _list(m.batches, _digest) + _list(m.headers, _nested)
    if isinstance(m, PrePrepare):
        return _u64(m.view) + _nested(encode(m.proposal))
    if isinstance(m, Prepare | Commit):
        return _u64(m.view) + _u64(m.height) + _digest(m.digest)
    if isinstance(m, Checkpoint):
        return _u64(m.height) + _digest(m.digest)
    if isinstance(m, Signed):
        return _nested(encode(m.body)) + _u64(m.replica) + _nested(m.signature)
    if isinstance(m, CommitCertificate):
        return _nested(encode(m.proposal)) + _list(m.commits, lambda s: _nested(encode(s)))
    if isinstance(m, PreparedCertificate):
        return _nested(encode(m.pre_prepare)) + _list(m.prepares, lambda s: _nested(encode(s)))
    if isinstance(m, ViewChange):
        return _u64(m.view) + _opt(m.committed) + _opt(m.prepared)
    if isinstance(m, NewView):
        return _u64(m.view) + _list(m.view_changes, lambda s: _nested(encode(s))) + _opt(m.pre_prepare)
    if isinstance(m, FetchBlocks):
        return _u64(m.height)
    if isinstance(m, Blocks):
        return _list(m.certificates, lambda c: _nested(encode(c)))
    raise TypeError(f"not a consensus message: {type(m).__name__}")


def encode(m: object) -> bytes:
    """The canonical bytes of a consensus message (what signatures cover). Messages are
    immutable, and one is encoded again at every signature check and inside every message that
    carries it: the bytes are kept on the message the first time."""
    cached = getattr(m, "__dict__", {}).get("_canonical")
    if cached is not None:
        return cached
    tag = _TAGS.get(type(m))
    if tag is None:
        raise TypeError(f"not a consensus message: {type(m).__name__}")
    data = bytes([len(tag)]) + tag + _fields(m)
    object.__setattr__(m, "_canonical", data)
    return data


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise MessageError(f"truncated at byte {self.pos}")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u64(self) -> int:
        return _U64.unpack(self.take(8))[0]

    def digest(self) -> bytes:
        return self.take(DIGEST)

    def nested(self) -> bytes:
        return self.take(_U32.unpack(self.take(4))[0])

    def items(self, read: Callable[[], object]) -> tuple:
        n = _U32.unpack(self.take(4))[0]
        if n > len(self.data):
            raise MessageError(f"a list of {n} items in {len(self.data)} bytes")
        return tuple(read() for _ in range(n))

    def digests(self) -> tuple[bytes, ...]:
        """A list of digests (`items(self.digest)`, sliced at once: proposals carry many)."""
        n = _U32.unpack(self.take(4))[0]
        data = self.take(n * DIGEST)
        return tuple(data[i : i + DIGEST] for i in range(0, len(data), DIGEST))

    def optional(self, expected: type) -> object | None:
        flag = self.take(1)
        if flag == b"\x00":
            return None
        if flag != b"\x01":
            raise MessageError(f"optional field flag is {flag!r}")
        return _decode_as(self.nested(), expected)


def _decode_as(data: bytes, expected: type | tuple[type, ...]) -> object:
    m = decode(data)
    if not isinstance(m, expected):
        raise MessageError(f"expected {expected}, got {type(m).__name__}")
    return m


def decode(data: bytes) -> object:
    """The message whose canonical bytes are `data`; MessageError if they are not exactly that."""
    if not data:
        raise MessageError("empty message")
    tag = data[1 : 1 + data[0]]
    cls = _BY_TAG.get(tag)
    if cls is None:
        raise MessageError(f"unknown message tag {tag!r}")
    r = _Reader(data)
    r.pos = 1 + data[0]
    if cls is Proposal:
        m: object = Proposal(r.u64(), r.digest(), r.digests(), r.nested(), r.u64(),
                             r.items(lambda: _decode_as(r.nested(), Signed)))
    elif cls is Forward:
        m = Forward(r.digests(), r.items(r.nested))
    elif cls is PrePrepare:
        m = PrePrepare(r.u64(), _decode_as(r.nested(), Proposal))
    elif cls in (Prepare, Commit):
        m = cls(r.u64(), r.u64(), r.digest())
    elif cls is Checkpoint:
        m = Checkpoint(r.u64(), r.digest())
    elif cls is Signed:
        body = decode(r.nested())
        m = Signed(body, r.u64(), r.nested())
    elif cls is CommitCertificate:
        m = CommitCertificate(_decode_as(r.nested(), Proposal), r.items(lambda: _decode_as(r.nested(), Signed)))
    elif cls is PreparedCertificate:
        m = PreparedCertificate(_decode_as(r.nested(), Signed), r.items(lambda: _decode_as(r.nested(), Signed)))
    elif cls is ViewChange:
        m = ViewChange(r.u64(), r.optional(CommitCertificate), r.optional(PreparedCertificate))
    elif cls is NewView:
        m = NewView(r.u64(), r.items(lambda: _decode_as(r.nested(), Signed)), r.optional(Signed))
    elif cls is FetchBlocks:
        m = FetchBlocks(r.u64())
    else:
        m = Blocks(r.items(lambda: _decode_as(r.nested(), CommitCertificate)))
    if r.pos != len(data):
        raise MessageError(f"{len(data) - r.pos} trailing bytes after a {cls.__name__}")
    # The layout has one encoding per message: fixed widths, length prefixes, the optional flag
    # checked, nothing left over; and every nested message went through here too. So bytes that
    # parse are the canonical bytes (a fuzz test holds it), and `encode` need not build them
    # again to compare: they are kept as the message's encoding.
    object.__setattr__(m, "_canonical", bytes(data))
    return m
