"""A contract runner's way onto the chain: it is a gateway whose entries are results.

A runner (the carbon-flow contract's today, settlement's later) has a gateway id and an
Ed25519 key of its own, registered at the hub like any gateway (`gridtrace hub gateway
add`). Its contract records go through the agent's machinery unchanged: the durable queue
(committed before anything else happens to them), signed batches chained by the runner's
key, the uplink that forgets a batch only on a valid hub receipt. The hub stores, seals and
proves them like readings; the trust file names which runners a verifier believes
(`gridtrace hub trust --contract-runner`).

Config: `[runner]` (id, key, queue) and the agent's `[uplink]` table.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edge.agent import Sealer
from edge.config import UplinkConfig, parse_uplink
from edge.queue import DurableQueue
from edge.uplink import Uplink
from gridtrace.tomlconfig import Section
from protos.records import ContractRecord
from protos.signing import load_private_key

log = logging.getLogger("gridtrace.hub.contracts")

RUNNER_KEYS = {"id", "key", "queue"}


@dataclass(frozen=True)
class RunnerIdentity:
    gateway_id: str
    key: Path
    queue: Path
    uplink: UplinkConfig


def parse_runner(path: Path, doc: dict) -> RunnerIdentity:
    """The [runner] and [uplink] tables of a contract's config file."""
    rn = Section(path, "runner", doc.get("runner", {}), RUNNER_KEYS)
    return RunnerIdentity(
        gateway_id=rn.identifier("id"),
        key=rn.path_value("key", "runner.key"),
        queue=rn.path_value("queue", "runner-queue.sqlite"),
        uplink=parse_uplink(path, doc),
    )


class Publisher:
    """Records in, receipted batches out. `publish` commits and seals at once (a contract's
    results are few and each set belongs together in one batch); `run` keeps the uplink
    going until `stop`, and `drain` runs it until every batch has its receipt."""

    def __init__(self, identity: RunnerIdentity, max_entries: int = 10_000) -> None:
        self.identity = identity
        self.signer = load_private_key(identity.key)
        self.queue = DurableQueue(identity.queue, identity.gateway_id)
        self.sealer = Sealer(self.queue, self.signer, identity.gateway_id, max_entries, max_age_s=1.0)
        self.uplink = Uplink(identity.uplink, self.queue, identity.gateway_id)
        # Records committed by a process that died before sealing them: sealed now, or they
        # would wait for the next publish (forever, once a model's runner has reached its end).
        self.sealer.seal_due(force=True)

    def publish(self, records: Sequence[ContractRecord]) -> None:
        """Commit and seal (any thread); `wake` the uplink afterwards, from its event loop."""
        self.queue.append_records(records)
        self.sealer.seal_due(force=True)

    def wake(self) -> None:
        self.uplink.wakeup.set()

    def last_timestamp(self, subject: str) -> int | None:
        return self.queue.last_timestamp(subject)

    def pending_batches(self) -> int:
        return self.queue.stats().batches

    async def run(self, stop: asyncio.Event) -> None:
        await self.uplink.run(stop)

    async def drain(self, timeout_s: float) -> bool:
        """Until every published batch has its receipt, or the timeout."""
        stop = asyncio.Event()
        task = asyncio.create_task(self.uplink.run(stop))
        try:
            return await self.uplink.drain(timeout_s)
        finally:
            stop.set()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def close(self) -> None:
        self.queue.close()
