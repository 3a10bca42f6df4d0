"""What every replica of one chain must agree on to run the protocol together: the replicas
(n of them, ids 0..n-1) and which of them start as consensus replicas (the rest are reserves),
timeouts, checkpoint interval. Who votes later follows from the chain (membership.py)."""

from __future__ import annotations

from dataclasses import dataclass

from hub.consensus.membership import Membership
from hub.consensus.messages import DIGEST

GENESIS = bytes(DIGEST)


@dataclass(frozen=True)
class ConsensusConfig:
    n: int
    checkpoint_interval: int = 10
    base_timeout: float = 1.0  # seconds without a decision, while work is pending, before a view change
    max_timeout: float = 60.0
    max_batches: int = 1000  # per proposal
    # A primary waits until its oldest pending batch is this old (or max_batches are pending)
    # before proposing, and replicas forward what gateways gave them once per tick: without it
    # a busy replica seals a block (two fsyncs) and signs a forward per batch. 0: at once.
    batch_delay: float = 0.0
    fetch_batch: int = 50  # blocks per state-transfer answer
    active: tuple[int, ...] = ()  # the first consensus replicas; () = all n (no reserves)
    # Custody: how many replicas store each batch's entries (the one a gateway gave it to, and
    # custodians picked by the batch's digest). The others keep its header and vote for a block
    # sealing it once f+1 consensus replicas said they store it. 0: every replica stores every batch.
    payload_copies: int = 0

    def __post_init__(self) -> None:
        f = self.initial_membership().f
        if self.payload_copies and not f + 1 <= self.payload_copies:
            raise ValueError(f"payload_copies must be 0 (every replica) or at least f+1 = {f + 1}, "
                             f"got {self.payload_copies}")

    @property
    def custody(self) -> bool:
        return 0 < self.payload_copies < self.n

    def initial_membership(self) -> Membership:
        active = self.active or tuple(range(self.n))
        return Membership(0, 1, active, tuple(r for r in range(self.n) if r not in active))

    # The first membership's figures (those of the chain's first epoch).
    @property
    def f(self) -> int:
        return self.initial_membership().f

    @property
    def quorum(self) -> int:
        return self.initial_membership().quorum

    def primary(self, view: int) -> int:
        return self.initial_membership().primary(view)
