"""Four replica processes on loopback with mutual TLS: kill -9 the primary, then a backup,
pause one (a partition as far as the others can tell), restart them; every batch given to any
live replica ends up in exactly one block, and every replica holds the same chain."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hub.consensus.process import SERVICE, open_channel
from hub.consensus.replica_config import load_replica_config

from hubharness import free_port

N = 4


class Cluster:
    def __init__(self, directory: Path) -> None:
        base = free_port()
        while any(_taken(base + i) for i in range(N)):
            base = free_port()
        subprocess.run(
            [sys.executable, "-m", "gridtrace", "chain", "init", "--replicas", str(N), "--dir", str(directory),
             "--base-port", str(base), "--base-timeout", "0.5"],
            check=True, capture_output=True,
        )
        self.dir = directory
        self.cfg = load_replica_config(directory / "replica-0.toml")
        self.procs: dict[int, subprocess.Popen] = {}
        self.submitted: list[bytes] = []

    def start(self, i: int) -> None:
        log = open(self.dir / f"replica-{i}.log", "ab")  # noqa: SIM115 - the process keeps it
        self.procs[i] = subprocess.Popen(
            [sys.executable, "-m", "gridtrace", "--log-format", "text", "chain", "replica", "--config",
             str(self.dir / f"replica-{i}.toml")],
            stdout=log, stderr=subprocess.STDOUT,
        )

    def wait_ready(self, replicas: list[int], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        for i in replicas:
            while True:
                try:
                    self.status(i)
                    break
                except Exception:  # noqa: BLE001 - not listening yet
                    if time.monotonic() > deadline or self.procs[i].poll() is not None:
                        pytest.fail(f"replica {i} did not start: {(self.dir / f'replica-{i}.log').read_text()[-2000:]}")
                    time.sleep(0.1)

    def kill(self, i: int) -> None:
        self.procs[i].kill()
        self.procs[i].wait()

    def stop_all(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                os.kill(p.pid, signal.SIGCONT)
                p.terminate()
        for p in self.procs.values():
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()

    async def _call(self, i: int, method: str, data: bytes) -> bytes:
        async with open_channel(self.cfg, self.cfg.peers[i].address) as ch:
            call = ch.unary_unary(f"/{SERVICE}/{method}", request_serializer=None, response_deserializer=None)
            return await call(data, timeout=5)

    def status(self, i: int) -> dict:
        return json.loads(asyncio.run(self._call(i, "Status", b"")))

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
                states = [self.status(i) for i in replicas]
            except Exception:  # noqa: BLE001 - a replica still starting
                states = []
            if states and all(want <= {b for block in s["batches"] for b in block} for s in states) \
                    and len({s["height"] for s in states}) == 1:
                return states
            if time.monotonic() > deadline:
                pytest.fail(f"not all batches decided within {timeout} s: "
                            f"{[(s['id'], s['height'], s['view'], s['pending']) for s in states]}")
            time.sleep(0.2)


def _taken(port: int) -> bool:
    import socket
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


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
