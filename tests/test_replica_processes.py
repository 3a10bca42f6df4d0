"""Four replica processes on loopback with mutual TLS: kill -9 the primary, then a backup,
pause one (a partition as far as the others can tell), restart them; every batch given to any
live replica ends up in exactly one block, and every replica holds the same chain."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import time
from pathlib import Path

import pytest
from replicaharness import ReplicaProcesses

from hub.consensus.process import SERVICE

N = 4


class Cluster(ReplicaProcesses):
    """Digests-only replicas (`gridtrace chain replica`), given batch digests to order."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory, N)
        self.cfg = self.replica_cfg
        self.submitted: list[bytes] = []

    def submit(self, replicas: list[int], count: int, tag: str) -> None:
        for k in range(count):
            digest = hashlib.sha256(f"{tag}-{k}".encode()).digest()
            self.submitted.append(digest)
            asyncio.run(self._call(replicas[k % len(replicas)], "Submit", digest))

    def wait_decided(self, replicas: list[int], timeout: float = 30.0) -> list[dict]:
        """Until every submitted batch is decided at each of `replicas` and they agree."""
        deadline = time.monotonic() + timeout
        want = {d.hex() for d in self.submitted}
        while True:
            try:
                states = [self.status(i, chain=True) for i in replicas]
            except Exception:  # noqa: BLE001 - a replica still starting
                states = []
            if states and all(want <= {b for block in s["batches"] for b in block} for s in states) \
                    and len({s["height"] for s in states}) == 1:
                return states
            if time.monotonic() > deadline:
                pytest.fail(f"not all batches decided within {timeout} s: "
                            f"{[(s['id'], s['height'], s['view'], s['pending']) for s in states]}")
            time.sleep(0.2)


def test_replicas_agree_through_kills_a_pause_and_restarts(tmp_path: Path) -> None:
    c = Cluster(tmp_path / "replicas")
    try:
        for i in range(N):
            c.start(i)
        c.wait_ready(list(range(N)))
        _assert_a_client_without_a_replica_certificate_is_refused(c)
        c.submit([0, 1, 2, 3], 12, "first")
        c.wait_decided([0, 1, 2, 3])
        primary = c.status(1)["view"] % N
        c.kill(primary)  # kill -9 the primary: a view change, and the others go on
        live = [i for i in range(N) if i != primary]
        c.submit(live, 10, "no-primary")
        c.wait_decided(live)
        c.start(primary)  # back from its journal: it catches up by state transfer
        c.wait_ready([primary])
        c.wait_decided(list(range(N)))
        backup = (c.status(0)["view"] + 1) % N
        c.kill(backup)  # then a backup
        c.submit([i for i in range(N) if i != backup], 10, "no-backup")
        c.wait_decided([i for i in range(N) if i != backup])
        c.start(backup)
        c.wait_ready([backup])
        paused = (backup + 1) % N
        os.kill(c.procs[paused].pid, signal.SIGSTOP)  # silent, as if cut off
        c.submit([i for i in range(N) if i != paused], 10, "paused")
        c.wait_decided([i for i in range(N) if i != paused])
        os.kill(c.procs[paused].pid, signal.SIGCONT)
        states = c.wait_decided(list(range(N)))
    finally:
        c.stop_all()
    assert len({tuple(s["chain"]) for s in states}) == 1  # one chain on every replica
    decided = [b for block in states[0]["batches"] for b in block]
    assert len(decided) == len(set(decided))  # each batch in exactly one block
    assert set(decided) == {d.hex() for d in c.submitted}
    assert states[0]["view"] >= 1


def _assert_a_client_without_a_replica_certificate_is_refused(c: Cluster) -> None:
    import grpc

    async def ask() -> bytes:
        creds = grpc.ssl_channel_credentials(root_certificates=c.cfg.tls_ca.read_bytes())  # no client certificate
        async with grpc.aio.secure_channel(c.cfg.peers[1].address, creds) as ch:
            call = ch.unary_unary(f"/{SERVICE}/Status", request_serializer=None, response_deserializer=None)
            return await call(b"", timeout=5)

    with pytest.raises(grpc.RpcError) as refused:
        asyncio.run(ask())
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
