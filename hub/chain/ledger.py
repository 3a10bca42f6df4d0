"""The hub's blocks as the consensus core's ledger (hub/consensus/ledger.py).

A replicated hub's primary proposes a block header built here, from the batches it holds;
every backup rebuilds the header from its own copy of the batches and its own chain before it
votes. Both go through `hub.chain.block.next_block`, the one definition of a block, so a header
that differs in any field (entry count, log root, previous block) gets no vote. The block time
is the primary's clock; a backup refuses one too far ahead of its own (or before the previous
block, which `next_block` never builds).

State kept in memory, restored at start from the store and the consensus journal: the last
decided header, the log frontier after it, and the entry count of every held batch not yet
decided.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import fields

from hub.chain.block import next_block
from hub.consensus.messages import Proposal
from protos import merkle
from protos.canonical import CanonicalError, decode_block_header, encode_block_header
from protos.merkle import CompactRange
from protos.records import BlockHeader, RecordError


class BlockLedger:
    def __init__(
        self,
        chain_id: str,
        head: BlockHeader | None,
        frontier: CompactRange,
        held: Iterable[tuple[bytes, int]] = (),
        clock_ns: Callable[[], int] = time.time_ns,
        max_ahead_s: float = 30.0,
    ) -> None:
        self.chain_id = chain_id
        self.head = head
        self.frontier = frontier
        self.entry_counts: dict[bytes, int] = dict(held)
        self.clock_ns = clock_ns
        self.max_ahead_ns = int(max_ahead_s * 1e9)

    def hold(self, batches: Iterable[tuple[bytes, int]]) -> None:
        """Batches now stored here: (hash, entry count)."""
        self.entry_counts.update(batches)

    def holds(self, batch: bytes) -> bool:
        return batch in self.entry_counts

    def _header(self, batches: tuple[bytes, ...], time_ns: int) -> BlockHeader:
        count = sum(self.entry_counts[b] for b in batches)
        header, _ = next_block(self.chain_id, self.head, batches, count, self.frontier, time_ns)
        return header

    def build(self, height: int, prev: bytes, batches: tuple[bytes, ...], now: float) -> bytes:
        header = self._header(batches, self.clock_ns())
        assert header.height == height, (header.height, height)
        return encode_block_header(header)

    def check(self, p: Proposal, now: float) -> str | None:
        try:
            h = decode_block_header(p.header)
        except (CanonicalError, RecordError, ValueError) as exc:
            return f"block {p.height}: the proposed header does not decode: {exc}"
        missing = [b for b in p.batches if b not in self.entry_counts]
        if missing:
            return f"block {p.height}: {len(missing)} of its batches are not held here"
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
        for b in p.batches:
            self.frontier.append(merkle.leaf_hash(b))
            self.entry_counts.pop(b, None)
