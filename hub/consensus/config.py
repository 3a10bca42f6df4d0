"""What every replica of one chain must agree on to run the protocol together: n, timeouts,
checkpoint interval, and the quorum and primary that follow from n."""

from __future__ import annotations

import math
from dataclasses import dataclass

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

    @property
    def f(self) -> int:
        return (self.n - 1) // 3

    @property
    def quorum(self) -> int:
        return math.ceil((self.n + self.f + 1) / 2)

    def primary(self, view: int) -> int:
        return view % self.n
