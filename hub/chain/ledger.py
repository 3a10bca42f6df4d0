"""The hub's blocks as the consensus core's ledger (hub/consensus/ledger.py).

A replicated hub's primary proposes a block header built here, from the batches it holds;
every backup rebuilds the header from its own copy of the batches and its own chain before it
votes. Both go through `hub.chain.block.next_block`, the one definition of a block, so a header
that differs in any field (entry count, log root, previous block) gets no vote. The block time
is the primary's clock; a backup refuses one too far ahead of its own (or before the previous
block, which `next_block` never builds).

A gateway's batches form a chain (each names its predecessor's hash), and a block keeps
them in that order: a batch may go into a block only after its predecessor, decided before or
earlier in the same block. The primary orders by it (`select`), backups check it.

With custody (`payload_copies`), a replica also knows batches it does not store: their
gateway-signed headers came with forwards (`learn` checks the digest and the gateway's
signature), which is all a block header needs. Decided ones among them are written to the
store as header-only rows with their block (`decided_known`).

State kept in memory, restored at start from the store and the consensus journal: the last
decided header, the log frontier after it, every held batch not yet decided (its entry count
and place in its gateway's chain), each gateway's last decided batch, and the decided batches
this replica does not hold yet (their gateways unknown until they are fetched).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields

from hub.chain.block import next_block
from hub.consensus.messages import Proposal
from protos import merkle
from protos.canonical import (
    CanonicalError,
    decode_batch_header,
    decode_block_header,
    encode_block_header,
)
from protos.merkle import CompactRange
from protos.records import ZERO_HASH, BatchHeader, BlockHeader, RecordError

SIGNATURE = 64  # Ed25519: a forwarded header is the canonical header bytes, then the gateway's signature

log = logging.getLogger("gridtrace.hub.chain")


@dataclass(frozen=True)
class HeldBatch:
    """What the ledger knows of a batch stored here."""

    hash: bytes
    entry_count: int
    gateway_id: str
    seq: int
    prev_hash: bytes
    header: bytes = b""  # canonical batch header bytes (what its hash is over)
    signature: bytes = b""  # the gateway's

    @property
    def forwarded(self) -> bytes:
        """What a forward carries of it (custody): header and signature."""
        return self.header + self.signature


def known_batch(digest: bytes, header: bytes, signature: bytes) -> HeldBatch:
    h = decode_batch_header(header)
    return HeldBatch(digest, h.entry_count, h.gateway_id, h.seq, h.prev_hash, header, signature)


class BlockLedger:
    def __init__(
        self,
        chain_id: str,
        head: BlockHeader | None,
        frontier: CompactRange,
        held: Iterable[HeldBatch] = (),
        gateway_heads: dict[str, tuple[int, bytes]] | None = None,
        clock_ns: Callable[[], int] = time.time_ns,
        max_ahead_s: float = 30.0,
        signed_by_gateway: Callable[[BatchHeader, bytes], bool] = lambda h, s: False,
    ) -> None:
        self.chain_id = chain_id
        self.head = head
        self.frontier = frontier
        self.held: dict[bytes, HeldBatch] = {b.hash: b for b in held}
        # gateway -> (seq, hash) of its last decided batch
        self.gateway_heads: dict[str, tuple[int, bytes]] = dict(gateway_heads or {})
        self.decided_unheld: set[bytes] = set()
        # Custody: batches known by their header only, undecided; and decided, not yet written.
        self.known: dict[bytes, HeldBatch] = {}
        self.decided_known: dict[bytes, HeldBatch] = {}
        self.signed_by_gateway = signed_by_gateway
        self.clock_ns = clock_ns
        self.max_ahead_ns = int(max_ahead_s * 1e9)

    def hold(self, batches: Iterable[HeldBatch]) -> None:
        """Batches now stored here."""
        for b in batches:
            if b.hash in self.decided_unheld:  # decided before it got here: its gateway's chain moves on
                self.decided_unheld.discard(b.hash)
                self._advance(b)
            elif b.hash not in self.decided_known:  # (decided and known: its gateway moved on already)
                self.known.pop(b.hash, None)
                self.held[b.hash] = b

    def holds(self, batch: bytes) -> bool:
        return batch in self.held

    def knows(self, batch: bytes) -> bool:
        return batch in self.held or batch in self.known

    def _summary(self, batch: bytes) -> HeldBatch | None:
        return self.held.get(batch) or self.known.get(batch)

    def header(self, batch: bytes) -> bytes:
        b = self._summary(batch)
        return b.forwarded if b is not None else b""

    def learn(self, batch: bytes, forwarded: bytes) -> bool:
        b = self._summary(batch)
        if b is not None:
            return b.forwarded == forwarded
        header, signature = forwarded[:-SIGNATURE], forwarded[-SIGNATURE:]
        if not header:
            return False
        try:
            h = decode_batch_header(header)
        except (CanonicalError, RecordError, ValueError):
            return False
        if hashlib.sha256(header).digest() != batch or not self.signed_by_gateway(h, signature):
            return False
        self.known[batch] = HeldBatch(batch, h.entry_count, h.gateway_id, h.seq, h.prev_hash, header, signature)
        return True

    def _follows(self, b: HeldBatch, before: set[bytes], seqs: set[tuple[str, int]]) -> bool:
        """Its predecessor is decided, or in `before` (earlier in the same block); and no batch
        with its gateway and sequence number is decided or in `seqs` (earlier in the block). A
        gateway that signed two batches with one number (a fork of its chain) gets one sealed."""
        head = self.gateway_heads.get(b.gateway_id)
        if (b.gateway_id, b.seq) in seqs or (head is not None and b.seq <= head[0]):
            return False
        if b.prev_hash in before or b.prev_hash in self.decided_unheld:
            return True
        if head is None:
            return b.seq == 1 and b.prev_hash == ZERO_HASH
        return b.prev_hash == head[1]

    def select(self, batches: tuple[bytes, ...], limit: int) -> tuple[bytes, ...]:
        """Each gateway's held batches in chain order, from its last decided one on; gateways in
        the order their oldest batch was first seen."""
        known = [b for b in (self._summary(d) for d in batches) if b is not None]
        by_prev: dict[bytes, HeldBatch] = {b.prev_hash: b for b in known}
        out: list[bytes] = []
        chosen: set[bytes] = set()
        seqs: set[tuple[str, int]] = set()
        for digest in batches:
            b = self._summary(digest)
            if b is None or digest in chosen or not self._follows(b, chosen, seqs):
                continue
            while b is not None and len(out) < limit and b.hash not in chosen and (b.gateway_id, b.seq) not in seqs:
                out.append(b.hash)
                chosen.add(b.hash)
                seqs.add((b.gateway_id, b.seq))
                b = by_prev.get(b.hash)
            if len(out) >= limit:
                break
        return tuple(out)

    def _header(self, batches: tuple[bytes, ...], time_ns: int) -> BlockHeader:
        count = sum(self._summary(b).entry_count for b in batches)  # type: ignore[union-attr]
        header, _ = next_block(self.chain_id, self.head, batches, count, self.frontier, time_ns)
        return header

    def build(self, height: int, prev: bytes, batches: tuple[bytes, ...], now: float) -> bytes:
        header = self._header(batches, self.clock_ns())
        assert header.height == height, (header.height, height)
        return encode_block_header(header)

    def check(self, p: Proposal, now: float) -> str | None:
        why = self._check(p)
        if why is not None:  # the core votes no and changes views; the operator learns why here
            log.warning("refusing the proposal for block %d: %s", p.height, why, extra={"height": p.height})
        return why

    def _check(self, p: Proposal) -> str | None:
        try:
            h = decode_block_header(p.header)
        except (CanonicalError, RecordError, ValueError) as exc:
            return f"block {p.height}: the proposed header does not decode: {exc}"
        missing = [b for b in p.batches if not self.knows(b)]
        if missing:
            return f"block {p.height}: {len(missing)} of its batches are not held here"
        before: set[bytes] = set()
        seqs: set[tuple[str, int]] = set()
        for i, digest in enumerate(p.batches):
            b = self._summary(digest)
            assert b is not None
            if not self._follows(b, before, seqs):
                return (f"block {p.height}: batch {i} (gateway {b.gateway_id} batch {b.seq}) does not follow the "
                        "gateway's chain (it comes before the batch it follows, or that number is taken)")
            before.add(digest)
            seqs.add((b.gateway_id, b.seq))
        expected = self._header(p.batches, h.time_ns)
        if h != expected:
            wrong = [f.name for f in fields(BlockHeader) if getattr(h, f.name) != getattr(expected, f.name)]
            return f"block {p.height}: the proposed header differs from this replica's in {', '.join(wrong)}"
        ahead = h.time_ns - self.clock_ns()
        if ahead > self.max_ahead_ns:
            return f"block {p.height}: its time is {ahead / 1e9:.1f} s ahead of this replica's clock"
        return None

    def decided(self, p: Proposal) -> None:
        self.head = decode_block_header(p.header)
        for digest in p.batches:
            self.frontier.append(merkle.leaf_hash(digest))
            b = self.held.pop(digest, None)
            if b is None and digest in self.known:  # written as a header-only row with its block
                b = self.decided_known[digest] = self.known.pop(digest)
            if b is None:
                self.decided_unheld.add(digest)
            else:
                self._advance(b)

    def superseded(self, batch: bytes) -> bool:
        b = self._summary(batch)
        head = None if b is None else self.gateway_heads.get(b.gateway_id)
        return b is not None and head is not None and b.seq <= head[0] and head[1] != batch

    def _advance(self, b: HeldBatch) -> None:
        head = self.gateway_heads.get(b.gateway_id)
        if head is None or b.seq > head[0]:
            self.gateway_heads[b.gateway_id] = (b.seq, b.hash)
