"""Test support: a substation of hub replicas (`gridtrace hub serve` with `[consensus]`) as
real processes on loopback, set up by `gridtrace chain init --chain-id`, with mutual TLS
between replicas and TLS towards gateways."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge.config import UplinkConfig
from hub.consensus.process import SERVICE, open_channel
from hub.consensus.replica_config import load_replica_config
from hub.storage.store import Store
from protos.signing import Signer, write_public_key


def _taken(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def free_range(n: int) -> int:
    """A base port with n free ports from it."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + n < 65535 and not any(_taken(base + i) for i in range(n)):
            return base


class ReplicaProcesses:
    """Replica processes on loopback made by `gridtrace chain init` (mutual TLS between them):
    start, kill -9, pause (SIGSTOP, as if cut off), resume, and ask one for its Status."""

    def __init__(self, directory: Path, n: int, reserves: int = 0, base_timeout: float = 0.5) -> None:
        """n consensus replicas and `reserves` reserve replicas (ids n, n+1, ...): self.n counts both."""
        self.dir, self.n = directory, n + reserves
        base = free_range(2 * self.n)  # replica i on base + i; the next n ports for what a subclass serves
        subprocess.run(
            [sys.executable, "-m", "gridtrace", "chain", "init", "--replicas", str(n), "--reserves", str(reserves),
             "--dir", str(directory), "--base-port", str(base), "--base-timeout", str(base_timeout),
             *self.init_args(base + self.n)],
            check=True, capture_output=True,
        )
        self.replica_cfg = load_replica_config(directory / "replica-0.toml")
        self.procs: dict[int, subprocess.Popen] = {}

    def init_args(self, free_port: int) -> tuple[str, ...]:
        """More `chain init` arguments; `free_port` starts n free ports."""
        return ()

    def command(self, i: int) -> list[str]:
        return ["chain", "replica", "--config", str(self.dir / f"replica-{i}.toml")]

    def log_path(self, i: int) -> Path:
        return self.dir / f"replica-{i}.log"

    def start(self, i: int) -> None:
        log = open(self.log_path(i), "ab")  # noqa: SIM115 - the process keeps it
        self.procs[i] = subprocess.Popen(
            [sys.executable, "-m", "gridtrace", "--log-format", "text", *self.command(i)],
            stdout=log, stderr=subprocess.STDOUT,
        )

    def log(self, i: int) -> str:
        return self.log_path(i).read_text(errors="replace")

    def wait_ready(self, replicas: list[int], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        for i in replicas:
            while True:
                try:
                    self.status(i)
                    break
                except Exception:  # noqa: BLE001 - not listening yet
                    if time.monotonic() > deadline or self.procs[i].poll() is not None:
                        pytest.fail(f"replica {i} did not start: {self.log(i)[-3000:]}")
                    time.sleep(0.1)

    def kill(self, i: int) -> None:
        self.procs[i].kill()
        self.procs[i].wait()

    def pause(self, i: int) -> None:
        os.kill(self.procs[i].pid, signal.SIGSTOP)

    def resume(self, i: int) -> None:
        os.kill(self.procs[i].pid, signal.SIGCONT)

    def stop_all(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                os.kill(p.pid, signal.SIGCONT)
                p.terminate()
        for p in self.procs.values():
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()

    async def _call(self, i: int, method: str, data: bytes) -> bytes:
        async with open_channel(self.replica_cfg, self.replica_cfg.peers[i].address) as ch:
            call = ch.unary_unary(f"/{SERVICE}/{method}", request_serializer=None, response_deserializer=None)
            return await call(data, timeout=5)

    def status(self, i: int, chain: bool = False) -> dict:
        """Replica i's consensus state (its Status): with `chain`, the whole decided chain."""
        ask = b"" if chain else (1 << 62).to_bytes(8, "big")
        return json.loads(asyncio.run(self._call(i, "Status", ask)))


class HubReplicas(ReplicaProcesses):
    """The replicas as hubs (`gridtrace hub serve` with `[consensus]`), TLS towards gateways."""

    def __init__(self, directory: Path, n: int = 4, chain_id: str = "sub-test", base_timeout: float = 0.5,
                 reserves: int = 0, payload_copies: int = 0) -> None:
        self.chain_id = chain_id
        self.payload_copies = payload_copies
        super().__init__(directory, n, reserves, base_timeout)

    def init_args(self, free_port: int) -> tuple[str, ...]:
        self.hubs = tuple(f"127.0.0.1:{free_port + i}" for i in range(self.n))
        return ("--chain-id", self.chain_id, "--hub-base-port", str(free_port),
                "--payload-copies", str(self.payload_copies))

    def command(self, i: int) -> list[str]:
        return ["hub", "serve", "--config", str(self.hub_toml(i))]

    def log_path(self, i: int) -> Path:
        return self.dir / f"hub-{i}.log"

    def hub_toml(self, i: int) -> Path:
        return self.dir / f"hub-{i}" / "hub.toml"

    def register(self, gateway_id: str, signer: Signer) -> None:
        pub = self.dir / f"{gateway_id}.pub.pem"
        write_public_key(pub, signer.public_key)
        for i in range(self.n):
            subprocess.run(
                [sys.executable, "-m", "gridtrace", "hub", "gateway", "add", gateway_id, "--public-key", str(pub),
                 "--config", str(self.hub_toml(i))],
                check=True, capture_output=True,
            )

    def uplink_config(self, first: int = 0, max_in_flight: int = 16) -> UplinkConfig:
        """An agent's uplink to every replica, starting with replica `first`."""
        order = [(first + k) % self.n for k in range(self.n)]
        return UplinkConfig(
            hub=self.hubs[order[0]], tls_ca=self.dir / "tls" / "ca.pem", tls_server_name=None,
            hub_public_key=self.dir / f"hub-{order[0]}" / "hub.pub.pem", insecure_plaintext=False,
            max_in_flight=max_in_flight, reconnect_max_s=1.0, hubs=tuple(self.hubs[i] for i in order),
            hub_public_keys=tuple(self.dir / f"hub-{i}" / "hub.pub.pem" for i in order),
        )

    def primary(self) -> int:
        states = []
        for i in range(self.n):
            try:
                states.append(self.status(i))
            except Exception:  # noqa: BLE001 - a replica that is down
                pass
        top = max(states, key=lambda s: (s["view"], s["height"]))
        return top["active"][top["view"] % len(top["active"])]

    def store(self, i: int) -> Store:
        return Store(f"sqlite:///{self.dir / f'hub-{i}' / 'hub.sqlite'}")

    def chain(self, i: int) -> list[tuple[bytes, list[bytes]]]:
        """(block hash, batch hashes) per height, from replica i's database."""
        s = self.store(i)
        try:
            head = s.head()
            return [(s.block(h).hash, s.block_batch_hashes(h)) for h in range(1, (head.height if head else 0) + 1)]
        finally:
            s.close()

    def wait_same_chain(self, replicas: list[int], batches: int, timeout: float = 60.0) -> list:
        """Until `replicas` hold the same chain of at least `batches` batches in their databases."""
        deadline = time.monotonic() + timeout
        while True:
            chains = [self.chain(i) for i in replicas]
            sealed = [sum(len(b) for _, b in c) for c in chains]
            if len({tuple(h for h, _ in c) for c in chains}) == 1 and min(sealed) >= batches:
                return chains[0]
            if time.monotonic() > deadline:
                pytest.fail(f"replicas {replicas} hold {sealed} sealed batches at heights "
                            f"{[len(c) for c in chains]}, want the same chain with {batches}")
            time.sleep(0.2)
