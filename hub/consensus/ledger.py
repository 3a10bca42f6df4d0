"""What the consensus core asks of the blocks it agrees on: the `Ledger` interface.

The core orders batch digests; the ledger says which batches this replica holds (stored, so it
can vote for a block that seals them and serve them to others), builds the header of the block
a primary proposes, and checks the header of a block a backup is asked to vote for. Its answers
must depend only on the decided chain and the batches held, so that every correct replica
judges a proposal alike (time is the exception: a header's time must be close to the judge's).

`DigestLedger` is the simulator's: a small header over the same facts (height, previous proposal,
batches root, entry count), so that the core's checks are exercised without a database. The
hub's is `hub.chain.ledger.BlockLedger`, whose headers are real block headers.
"""

from __future__ import annotations

import struct
from typing import Protocol

from hub.consensus.messages import Proposal
from protos import merkle


class Ledger(Protocol):
    def holds(self, batch: bytes) -> bool:
        """This replica has the batch stored (durably) and can serve it."""

    def knows(self, batch: bytes) -> bool:
        """This replica holds the batch, or has its header (`learn`): enough to build or check a
        block header that seals it."""

    def header(self, batch: bytes) -> bytes:
        """What a forward carries of a held batch for replicas that will not store it (custody)."""

    def learn(self, batch: bytes, header: bytes) -> bool:
        """A forwarded header of `batch`: True if it is that batch's (checked: its digest, and its
        gateway's signature in the hub; or equal to the one known), after which `knows(batch)`."""

    def select(self, batches: tuple[bytes, ...], limit: int) -> tuple[bytes, ...]:
        """Of these held batches (longest known first), those that may go into the next block,
        in the order they must have there, at most `limit` (a gateway's batches follow its
        chain: one goes in only after its predecessor)."""

    def build(self, height: int, prev: bytes, batches: tuple[bytes, ...], now: float) -> bytes:
        """The header of the block sealing `batches` after the last decided one (all held)."""

    def check(self, p: Proposal, now: float) -> str | None:
        """None if `p.header` is the header this replica would build for `p` (all its batches
        held, `p` for the height after the last decided one); else what is wrong."""

    def decided(self, p: Proposal) -> None:
        """`p` was decided (by this replica's protocol or a certificate): the next block follows it."""

    def superseded(self, batch: bytes) -> bool:
        """A batch that can never be sealed: its gateway already has a decided batch with its
        sequence number (the gateway forked its chain). The core stops waiting for it."""


_SIM_HEADER = struct.Struct(">8sQ32s32sQ")


def sim_entry_count(batch: bytes) -> int:
    """The digest ledger's stand-in for a batch's entry count: a fact only its digest determines."""
    return batch[0] + 1


def sim_header(batch: bytes) -> bytes:
    """The digest ledger's stand-in for a batch's header: a function of its digest."""
    return b"hdr:" + batch[:8]


class DigestLedger:
    """Holds a set of digests: what the simulated network delivered to this replica, or what a
    digests-only replica process was given."""

    def __init__(self, held: set[bytes] | None = None) -> None:
        self.held: set[bytes] = held if held is not None else set()
        self.known: set[bytes] = set()  # headers learnt from forwards

    def holds(self, batch: bytes) -> bool:
        return batch in self.held

    def knows(self, batch: bytes) -> bool:
        return batch in self.held or batch in self.known

    def header(self, batch: bytes) -> bytes:
        return sim_header(batch)

    def learn(self, batch: bytes, header: bytes) -> bool:
        if header != sim_header(batch):
            return False
        self.known.add(batch)
        return True

    def select(self, batches: tuple[bytes, ...], limit: int) -> tuple[bytes, ...]:
        return batches[:limit]

    def build(self, height: int, prev: bytes, batches: tuple[bytes, ...], now: float) -> bytes:
        return _SIM_HEADER.pack(
            b"simblock", height, prev, merkle.root(list(batches)), sum(sim_entry_count(b) for b in batches)
        )

    def check(self, p: Proposal, now: float) -> str | None:
        if p.header != self.build(p.height, p.prev, p.batches, now):
            return f"block {p.height}: the header does not match its batches"
        return None

    def decided(self, p: Proposal) -> None:
        pass

    def superseded(self, batch: bytes) -> bool:
        return False
