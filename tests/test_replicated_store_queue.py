"""A replica stores the batches its fetches bring through one queue: those that arrive while
the database thread is busy are written together, each fetch learns which of its own are now
stored, and a failed write reaches every fetch that waited on it."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import SimpleNamespace

import pytest

from hub.chain.replicated import ReplicatedChain


@dataclass(frozen=True)
class FakeBatch:
    hash: bytes
    gateway_id: str = "gw"
    seq: int = 1


class FakeIngestor:
    def __init__(self) -> None:
        self.advanced: list[bytes] = []

    async def check(self, raw: bytes) -> SimpleNamespace:
        return SimpleNamespace(batch=FakeBatch(raw))

    def advance_heads(self, batches) -> None:  # noqa: ANN001
        self.advanced += [b.hash for b in batches]


class FakeLedger:
    def __init__(self) -> None:
        self.held: set[bytes] = set()

    def holds(self, digest: bytes) -> bool:
        return digest in self.held

    def hold(self, batches) -> None:  # noqa: ANN001 - held_batch() needs real headers: not built here
        pass


def _chain(write) -> tuple[ReplicatedChain, FakeIngestor]:  # noqa: ANN001
    ingestor = FakeIngestor()
    chain = ReplicatedChain(None, ThreadPoolExecutor(1), ingestor, "c", SimpleNamespace(peers={}, id=0))  # type: ignore[arg-type]
    chain.ledger = FakeLedger()  # type: ignore[assignment]
    chain._store_or_fill = write  # type: ignore[method-assign]
    return chain, ingestor


def test_fetches_answered_during_a_write_are_stored_together_and_each_learns_its_own() -> None:
    writes: list[list[bytes]] = []
    first_started, release = threading.Event(), threading.Event()

    def write(fresh):  # noqa: ANN001, ANN202
        writes.append([b.hash for b in fresh])
        if len(writes) == 1:
            first_started.set()
            release.wait(5)
        return [b for b in fresh if b.hash != b"filled"], [b for b in fresh if b.hash == b"filled"]

    chain, ingestor = _chain(write)

    async def scenario() -> list[set[bytes]]:
        one = asyncio.create_task(chain._store_fetched(1, [b"a"], {b"a"}))
        while not first_started.is_set():  # the database thread is busy with the first fetch
            await asyncio.sleep(0.01)
        two = asyncio.create_task(chain._store_fetched(2, [b"b", b"c"], {b"b", b"c"}))
        three = asyncio.create_task(chain._store_fetched(3, [b"c", b"filled", b"x"], {b"c", b"filled"}))
        await asyncio.sleep(0.05)
        release.set()
        return list(await asyncio.gather(one, two, three))

    got = asyncio.run(scenario())
    assert writes == [[b"a"], [b"b", b"c", b"filled"]]  # the two later fetches: one write, c once
    assert got == [{b"a"}, {b"b", b"c"}, {b"c", b"filled"}]  # x was not asked for
    assert ingestor.advanced == [b"a", b"b", b"c"]  # stored here (not the filled header-only row)
    assert chain._storing is None and chain._to_store == []


def test_a_failed_write_reaches_every_fetch_waiting_on_it_and_the_next_write_still_runs() -> None:
    calls = 0

    def write(fresh):  # noqa: ANN001, ANN202
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("disk full")
        return list(fresh), []

    chain, _ = _chain(write)

    async def scenario() -> tuple[list[object], set[bytes]]:
        failed = await asyncio.gather(chain._store_fetched(1, [b"a"], {b"a"}),
                                      chain._store_fetched(2, [b"b"], {b"b"}), return_exceptions=True)
        return failed, await chain._store_fetched(3, [b"c"], {b"c"})

    failed, later = asyncio.run(scenario())
    assert [type(e) for e in failed] == [OSError, OSError]
    assert later == {b"c"}


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__, "-q"]))
