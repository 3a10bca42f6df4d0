"""The block producer: periodically seals stored batches into the next signed block."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Executor

from hub.chain.block import next_block, seal
from hub.metrics import HubMetrics
from hub.storage.store import Store
from protos.canonical import block_hash, decode_block_header, encode_block_header
from protos.records import BlockHeader
from protos.signing import Signer

log = logging.getLogger("gridtrace.hub.chain")


class BlockProducer:
    def __init__(
        self, store: Store, db: Executor, signer: Signer, chain_id: str, interval_s: float, max_batches: int,
        metrics: HubMetrics | None = None,
    ):
        self.store = store
        self.metrics = metrics
        self.db = db
        self.signer = signer
        self.chain_id = chain_id
        self.interval_s = interval_s
        self.max_batches = max_batches
        self.height = 0

    def seal_pending(self) -> BlockHeader | None:
        """Seal up to max_batches stored batches into one block (runs on the DB thread)."""
        batches = self.store.unsealed_batches(self.max_batches)
        if not batches:
            return None
        head = self.store.head()
        prev = decode_block_header(head.header) if head else None
        header, frontier = next_block(
            self.chain_id,
            prev,
            [b.hash for b in batches],
            sum(b.entry_count for b in batches),
            self.store.log_frontier(),
            time.time_ns(),
        )
        self.store.append_block(
            header.height, block_hash(header), encode_block_header(header), header.time_ns,
            [b.id for b in batches], header.entry_count, header.log_size, frontier,
            [seal(header, self.signer)],
        )
        self.height = header.height
        if self.metrics is not None:
            self.metrics.block_sealed(header.height, header.time_ns, header.batch_count)
        log.info(
            "sealed block %d: %d batches, %d entries", header.height, header.batch_count, header.entry_count,
            extra={"height": header.height, "batches": header.batch_count, "entries": header.entry_count},
        )
        return header

    def seal_all(self) -> int:
        """Seal until nothing is left (on shutdown: what was receipted gets sealed)."""
        n = 0
        while self.seal_pending() is not None:
            n += 1
        return n

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), self.interval_s)
            except TimeoutError:
                pass
            try:
                await loop.run_in_executor(self.db, self.seal_pending)
            except Exception:  # noqa: BLE001 - keep producing; the cause is logged
                log.exception("sealing a block failed; will retry", extra={"height": self.height + 1})
