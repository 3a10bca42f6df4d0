"""The agent process: pollers, the batch sealer and the uplink, started and stopped together.

On SIGTERM or SIGINT the agent stops polling, seals what is queued, and waits a
bounded time for the hub's receipts before it exits; whatever is not receipted
stays in the queue for the next start. SIGKILL loses nothing either: every
reading was committed before anything else was done with it.
"""

from __future__ import annotations

import asyncio
import logging

from edge.config import AgentConfig
from edge.clock import now_ns
from edge.poller import build_pollers
from edge.queue import DurableQueue
from edge.uplink import Uplink
from gridtrace.signals import stop_on_signals
from protos.batch import seal_batch
from protos.signing import Signer

log = logging.getLogger("gridtrace.edge.agent")


class Sealer:
    """Seals queued entries into signed batches: when max_entries are waiting, or the
    oldest has waited max_age_s."""

    def __init__(self, queue: DurableQueue, signer: Signer, gateway_id: str, max_entries: int, max_age_s: float):
        self.queue = queue
        self.signer = signer
        self.gateway_id = gateway_id
        self.max_entries = max_entries
        self.max_age_ns = int(max_age_s * 1e9)

    def _seal(self, seq: int, prev_hash: bytes, bodies: list[bytes], timestamps: list[int]):
        sealed = seal_batch(self.signer, self.gateway_id, seq, prev_hash, bodies, timestamps, now_ns())
        return sealed.header, sealed.signature, sealed.hash

    def seal_due(self, force: bool = False) -> int:
        """Seal every batch that is due; return how many were sealed."""
        sealed = 0
        while True:
            count, oldest = self.queue.oldest_unbatched()
            if count == 0:
                return sealed
            if not force and count < self.max_entries and now_ns() - oldest < self.max_age_ns:
                return sealed
            self.queue.seal_next_batch(self.max_entries, self._seal)
            sealed += 1

    async def run(self, stop: asyncio.Event, on_sealed: asyncio.Event) -> None:
        tick = min(0.25, self.max_age_ns / 4e9)
        while not stop.is_set():
            if await asyncio.to_thread(self.seal_due):
                on_sealed.set()
            try:
                await asyncio.wait_for(stop.wait(), tick)
            except TimeoutError:
                pass


async def run_agent(cfg: AgentConfig, drain_timeout_s: float = 10.0, stop: asyncio.Event | None = None) -> int:
    stop = stop or asyncio.Event()
    stop_on_signals(stop)

    # pymodbus logs every timeout as an ERROR with raw frame dumps; our own
    # MeterReadError messages say what to check, once per change of state.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    signer = Signer.from_file(cfg.key)
    queue = DurableQueue(cfg.queue, cfg.gateway_id, max_bytes=cfg.queue_max_bytes)
    # Gaps left open by a crash are closed first: their outage ended with the process.
    queue.close_all_gaps()
    for gap in queue.record_downtime({m.id: m.interval_s for m in cfg.meters}, now_ns()):
        log.warning(
            "meter %s: %d polls missed while the agent was not running (%.0f s); recorded as a gap",
            gap.meter_id, gap.missed_polls, (gap.to_ns - gap.from_ns) / 1e9,
        )
    pollers = build_pollers(
        cfg.meters, queue, cfg.batching.gap_report_s, cfg.polling, gateway_id=cfg.gateway_id
    )
    sealer = Sealer(queue, signer, cfg.gateway_id, cfg.batching.max_entries, cfg.batching.max_age_s)
    uplink = Uplink(cfg.uplink, queue, cfg.gateway_id)
    stats = queue.stats()
    log.info(
        "agent %s (key %s): %d meters, hub %s%s; queue holds %d batches and %d unbatched entries "
        "(%.1f of %.0f MB)%s",
        cfg.gateway_id, signer.key_id, len(cfg.meters), ", then ".join(cfg.uplink.hubs),
        " (PLAINTEXT, development only)" if cfg.uplink.insecure_plaintext else " (TLS)",
        stats.batches, stats.unbatched_entries, stats.bytes / 2**20, cfg.queue_max_bytes / 2**20,
        "; FULL: new readings are recorded as gaps until receipts free room" if stats.full else "",
    )

    polling_stop = asyncio.Event()
    uplink_stop = asyncio.Event()
    tasks = [asyncio.create_task(p.run(polling_stop), name="poller") for p in pollers]
    sealer_task = asyncio.create_task(sealer.run(polling_stop, uplink.wakeup), name="sealer")
    uplink_task = asyncio.create_task(uplink.run(uplink_stop), name="uplink")
    exit_code = 0
    try:
        workers = [*tasks, sealer_task, uplink_task]
        stop_waiter = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([stop_waiter, *workers], return_when=asyncio.FIRST_COMPLETED)
        stop_waiter.cancel()
        for t in workers:
            if t in done:
                # A worker that ends by itself is a defect or a broken disk: stop with an
                # error so the service manager restarts the agent, after a best-effort drain.
                exc = None if t.cancelled() else t.exception()
                log.error("agent task %s stopped unexpectedly: %r; stopping the agent", t.get_name(), exc)
                exit_code = 1
        log.info("stopping: sealing queued readings and waiting up to %.0f s for receipts", drain_timeout_s)
        polling_stop.set()
        await asyncio.gather(*tasks, sealer_task, return_exceptions=True)
        queue.close_all_gaps()
        await asyncio.to_thread(sealer.seal_due, True)
        uplink.wakeup.set()
        drained = await uplink.drain(drain_timeout_s)
        left = queue.stats()
        if not drained:
            log.warning("%d batches not yet receipted; they stay queued for the next start", left.batches)
    finally:
        polling_stop.set()
        uplink_stop.set()
        for t in [*tasks, sealer_task]:
            t.cancel()
        await asyncio.gather(*tasks, sealer_task, uplink_task, return_exceptions=True)
        queue.close()
    return exit_code
