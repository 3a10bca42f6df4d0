"""Test support: a real hub (`hub.server.serve`) running in a background thread on loopback,
and signed batches built the way an agent builds them."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


from gridtrace.cli import main as gridtrace_main
from hub.config import HubConfig, load_hub_config
from hub.storage.store import Store
from protos import readings_pb2 as pb
from protos.batch import seal_batch
from protos.canonical import encode_reading
from protos.entrypack import EntryPack, pack_entries, unpack_entries
from protos.records import ZERO_HASH, ClockStatus, Quality, Quantity, Reading
from protos.signing import Signer, load_public_key, public_key_pem, write_public_key
from protos.wire import header_to_pb


def wire_bodies(msg: pb.SignedBatch) -> list[bytes]:
    """The canonical entry bytes a wire message carries, packed (v3) or listed (v2)."""
    if msg.HasField("packed_entries"):
        e = msg.packed_entries
        return unpack_entries(EntryPack(e.bodies, e.offsets, e.names), "test batch")
    return list(msg.entry_bytes)


def replace_entry(msg: pb.SignedBatch, index: int, change: Callable[[bytes], bytes]) -> None:
    """Tamper with one entry's canonical bytes in a built batch (header and signature
    untouched), keeping the wire form it was built in."""
    bodies = wire_bodies(msg)
    bodies[index] = change(bodies[index])
    if msg.HasField("packed_entries"):
        p = pack_entries(bodies)
        msg.packed_entries.CopyFrom(pb.EntryPack(bodies=p.bodies, offsets=p.offsets, names=p.names))
    else:
        del msg.entry_bytes[:]
        msg.entry_bytes.extend(bodies)


def reading_layout(body: bytes) -> dict[str, int]:
    """Byte offsets of the fields of a canonical reading (docs/formats.md), for tamper tests."""
    at = {"meter_id": 1 + body[0]}
    at["seq"] = at["meter_id"] + 2 + struct.unpack_from(">H", body, at["meter_id"])[0]
    at["timestamp_ns"], at["clock"], at["quality"] = at["seq"] + 8, at["seq"] + 16, at["seq"] + 17
    at["names"] = pos = at["quality"] + 4
    k = struct.unpack_from(">H", body, pos)[0]
    pos += 2
    for _ in range(2 * k):
        pos += 2 + struct.unpack_from(">H", body, pos)[0]
    at["values"] = pos
    return at


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_hub(
    directory: Path, insecure: bool = True, chain_id: str = "test-chain", block_interval: float = 0.3,
    verifier_processes: int | None = None, metrics: bool = False, database_url: str | None = None,
) -> HubConfig:
    """A hub directory made by `hub init`; metrics (off unless asked: hubs in one test
    process must not share a port) listen on a free loopback port. `database_url` (an empty
    database, e.g. from the `database_url` fixture) goes into hub.toml with `hub init --database`;
    without it the hub has its SQLite file in `directory`."""
    listen = f"127.0.0.1:{free_port()}"
    metrics_listen = f"127.0.0.1:{free_port()}" if metrics else ""
    args = ["hub", "init", "--dir", str(directory), "--chain-id", chain_id, "--listen", listen,
            "--metrics-listen", metrics_listen]
    if database_url is not None:
        args += ["--database", database_url]
    if insecure:
        args.append("--insecure")
    assert gridtrace_main(args) == 0
    cfg_path = directory / "hub.toml"
    text = cfg_path.read_text().replace("block_interval_s = 2.0", f"block_interval_s = {block_interval}")
    if verifier_processes is not None:
        text += f"\n[ingest]\nverifier_processes = {verifier_processes}\n"
    cfg_path.write_text(text)
    return load_hub_config(cfg_path)


def register_gateway(cfg: HubConfig, gateway_id: str, signer: Signer, directory: Path) -> None:
    pub = directory / f"{gateway_id}.pub.pem"
    write_public_key(pub, signer.public_key)
    assert gridtrace_main(["hub", "gateway", "add", gateway_id, "--public-key", str(pub), "--config", str(cfg.path)]) == 0


class RunningHub:
    """`serve()` on its own event loop in a thread; stop() triggers the graceful shutdown."""

    def __init__(self, cfg: HubConfig) -> None:
        self.cfg = cfg
        self.address = cfg.listen
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from hub.server import serve

        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            ready = asyncio.Event()
            task = asyncio.create_task(serve(self.cfg, self._stop, ready))
            await asyncio.wait([task, asyncio.create_task(ready.wait())], return_when=asyncio.FIRST_COMPLETED)
            self._ready.set()
            await task

        try:
            asyncio.run(main())
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            self._error = exc
            self._ready.set()

    def __enter__(self) -> RunningHub:
        self._thread.start()
        assert self._ready.wait(20), "hub did not start"
        if self._error:
            raise self._error
        return self

    def stop(self) -> None:
        if self._loop and self._stop and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        assert not self._thread.is_alive(), "hub did not stop"
        if self._error:
            raise self._error

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def store(self) -> Store:
        return Store(self.cfg.database_url)

    def public_key(self):
        return load_public_key(self.cfg.path.parent / "hub.pub.pem")


@dataclass
class GatewaySim:
    """Builds the signed batches of one gateway, as the agent would."""

    gateway_id: str
    signer: Signer
    meter_id: str = "MTR-1"
    seq: int = 0
    reading_seq: int = 0
    prev_hash: bytes = ZERO_HASH
    energy: float = 1000.0

    @classmethod
    def new(cls, gateway_id: str = "gw-1", meter_id: str = "MTR-1") -> GatewaySim:
        return cls(gateway_id, Signer.generate(), meter_id)

    def readings(self, n: int) -> list[Reading]:
        out = []
        for _ in range(n):
            self.reading_seq += 1
            self.energy += 0.001
            out.append(
                Reading(
                    self.meter_id, self.reading_seq, time.time_ns(), ClockStatus.SYNCHRONIZED, Quality.OK,
                    (Quantity("energy_import", "kWh", self.energy), Quantity("power_total", "W", 1500.0)),
                )
            )
        return out

    def batch(
        self, n: int = 5, readings: list[Reading] | None = None, advance: bool = True, wire: int = 3,
    ) -> pb.SignedBatch:
        """The next batch as an agent sends it: entries packed (wire v3), or listed as an
        agent before 0.2 sends them (`wire=2`)."""
        readings = readings if readings is not None else self.readings(n)
        bodies = [encode_reading(r) for r in readings]
        sealed = seal_batch(
            self.signer, self.gateway_id, self.seq + 1, self.prev_hash,
            bodies, [r.timestamp_ns for r in readings], time.time_ns(),
        )
        if advance:
            self.seq += 1
            self.prev_hash = sealed.hash
        msg = pb.SignedBatch(header=header_to_pb(sealed.header), signature=sealed.signature)
        if wire == 2:
            msg.entry_bytes.extend(bodies)
        else:
            p = pack_entries(bodies)
            msg.packed_entries.CopyFrom(pb.EntryPack(bodies=p.bodies, offsets=p.offsets, names=p.names))
        return msg

    @property
    def public_key_pem(self) -> str:
        return public_key_pem(self.signer.public_key)
