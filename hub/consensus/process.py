"""A replica as a process: the consensus core behind gRPC with mutual TLS, its journal on disk.

`gridtrace chain replica --config replica-0.toml` runs one. Everything the core does goes
through one asyncio task in order: a message, a submitted batch or a clock tick goes in; the
journal makes the core's Persist and Decide durable (fsync) before the sends they precede go
to the per-peer outboxes. Each peer gets one client stream; a peer that is down costs only
its messages (the core resends and changes views as it must), and the stream reconnects.

Services (raw bytes, the consensus canonical encoding; `gridtrace.v1.Replica`):
* `Deliver` (client stream): signed consensus messages from a peer;
* `Submit`: batch digests (32 bytes each) given to this replica (digests-only replicas);
* `Status`: JSON with height, view, and the decided chain (proposal digests and batches), all
  of it or from a height on;
* whatever the `ReplicaApp` adds: a replicated hub serves its batches to peers (`Batches`).

Two ways to run it. A hub replica (`gridtrace hub serve` with `[consensus]`) passes its
`BlockLedger` and itself as the `ReplicaApp`: it submits the batches its ingest stored, builds
blocks from what is decided, and fetches the batches the core asks for. Without an app
(`gridtrace chain replica`), a replica orders digests only (`DigestLedger`): a batch it is told
of counts as held at once, there being no data to fetch; benchmarks of consensus alone use it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import grpc

from typing import Protocol

from hub.consensus.config import ConsensusConfig
from hub.consensus.core import Decide, Fetch, Persist, Replica, Send
from hub.consensus.journal import ConsensusJournal
from hub.consensus.keys import Ed25519ReplicaKeys
from hub.consensus.ledger import DigestLedger, Ledger
from hub.consensus.messages import DIGEST, CommitCertificate, MessageError, Signed, decode, encode
from hub.consensus.replica_config import ReplicaConfig

log = logging.getLogger("gridtrace.chain")

SERVICE = "gridtrace.v1.Replica"
TICK_S = 0.05
OUTBOX = 10_000  # messages held for a peer that is down; the oldest go first


def channel_credentials(cfg: ReplicaConfig) -> grpc.ChannelCredentials:
    assert cfg.tls_ca and cfg.tls_cert and cfg.tls_key
    return grpc.ssl_channel_credentials(
        root_certificates=cfg.tls_ca.read_bytes(), private_key=cfg.tls_key.read_bytes(),
        certificate_chain=cfg.tls_cert.read_bytes(),
    )


# Batches fetched from a peer come in answers of up to 32 MiB (hub/chain/replicated.py).
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 64 << 20)]


def open_channel(cfg: ReplicaConfig, address: str) -> grpc.aio.Channel:
    if cfg.insecure_plaintext:
        return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
    return grpc.aio.secure_channel(address, channel_credentials(cfg), options=CHANNEL_OPTIONS)


class ReplicaApp(Protocol):
    """What runs on top of a replica process (the hub): told of decisions, asked for batches."""

    def decided(self, certificates: list[CommitCertificate]) -> None:
        """Blocks decided, in height order, already durable in the journal."""

    def fetch(self, request: Fetch) -> None:
        """Get these batches from a peer; call `ReplicaProcess.arrived` once they are stored."""

    def handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        """Extra methods of the replica service (between replicas, over their mutual TLS)."""


def load_journal(cfg: ReplicaConfig) -> tuple[ConsensusJournal, object, list[CommitCertificate]]:
    """The replica's journal and what it holds (durable state, decided blocks)."""
    cfg.data.mkdir(parents=True, exist_ok=True)
    journal = ConsensusJournal(cfg.data / "journal.sqlite")
    durable, decided = journal.load()
    return journal, durable, decided


class ReplicaProcess:
    def __init__(
        self, cfg: ReplicaConfig, ledger: Ledger | None = None, app: ReplicaApp | None = None,
        journal: tuple[ConsensusJournal, object, list[CommitCertificate]] | None = None,
    ) -> None:
        self.cfg = cfg
        self.journal, durable, decided = journal if journal is not None else load_journal(cfg)
        self.io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="journal")
        keys = Ed25519ReplicaKeys(cfg.id, cfg.signer, {i: p.public_key for i, p in cfg.peers.items()})
        config = ConsensusConfig(n=cfg.n, checkpoint_interval=cfg.checkpoint_interval, base_timeout=cfg.base_timeout_s,
                                 batch_delay=min(TICK_S, cfg.base_timeout_s / 10), active=cfg.active,
                                 payload_copies=cfg.payload_copies)
        self.app = app
        self.ledger = ledger if ledger is not None else DigestLedger()
        self.core = Replica(config, keys, self.ledger, committed=decided, durable=durable)  # type: ignore[arg-type]
        self.inputs: asyncio.Queue = asyncio.Queue()
        self.outboxes: dict[int, asyncio.Queue] = {i: asyncio.Queue(OUTBOX) for i in cfg.peers if i != cfg.id}
        self.started = time.monotonic()
        self.logged_height = self.core.height

    def _now(self) -> float:
        return time.monotonic() - self.started

    # -- the core, in order ---------------------------------------------------------------

    async def _drive(self) -> None:
        await self._apply(self.core.start(self._now()))
        while True:
            kind, value = await self.inputs.get()
            now = self._now()
            try:
                if kind == "message":
                    actions = self.core.receive(value, now)
                elif kind == "submit":
                    actions = self.core.submit(value, now)
                elif kind == "arrived":
                    actions = self.core.batches_arrived(value, now)
                else:
                    actions = self.core.tick(now)
            except Exception:  # noqa: BLE001 - one bad input must not stop the replica
                log.exception("consensus core failed on a %s input; input dropped", kind)
                continue
            await self._apply(actions)

    async def _apply(self, actions: list) -> None:
        # fsync'd on the journal's thread, the loop serving meanwhile; the next input waits,
        # so nothing below leaves before what it depends on is on disk.
        if any(isinstance(a, Persist | Decide) for a in actions):
            sends = await asyncio.get_running_loop().run_in_executor(self.io, self.journal.record, actions)
        else:  # nothing to make durable: no thread hop (a tick, a forward, a message already held)
            sends = [a for a in actions if isinstance(a, Send)]
        for send in sends:
            self._send(send)
        decided = [a.certificate for a in actions if isinstance(a, Decide)]
        if decided and self.app is not None:
            self.app.decided(decided)
        for f in (a for a in actions if isinstance(a, Fetch)):
            if self.app is not None:
                self.app.fetch(f)
            elif isinstance(self.ledger, DigestLedger):  # digests only: nothing to fetch
                self.ledger.held.update(f.batches)
                await self.inputs.put(("arrived", list(f.batches)))
        if self.core.height > self.logged_height:
            self.logged_height = self.core.height
            log.info("decided up to height %d (view %d)", self.core.height, self.core.view,
                     extra={"height": self.core.height, "view": self.core.view})

    def _send(self, s: Send) -> None:
        data = encode(s.message)
        for peer in ([s.to] if s.to is not None else list(self.outboxes)):
            box = self.outboxes.get(peer)
            if box is None:
                continue
            if box.full():
                box.get_nowait()
            box.put_nowait(data)

    async def _ticks(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            await self.inputs.put(("tick", None))

    async def _peer(self, peer: int) -> None:
        """One client stream to a peer, reconnected with backoff while the peer is away."""
        address = self.cfg.peers[peer].address
        box = self.outboxes[peer]
        backoff = 0.1
        while True:
            channel = open_channel(self.cfg, address)
            try:
                call = channel.stream_unary(f"/{SERVICE}/Deliver", request_serializer=None, response_deserializer=None)

                async def stream():  # noqa: ANN202
                    while True:
                        yield await box.get()

                await call(stream())
            except (grpc.aio.AioRpcError, OSError) as exc:
                log.debug("stream to replica %d at %s ended: %s", peer, address, exc)
            finally:
                await channel.close()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    # -- services -------------------------------------------------------------------------

    async def deliver(self, requests, context: grpc.aio.ServicerContext) -> bytes:  # noqa: ANN001
        async for raw in requests:
            try:
                m = decode(raw)
            except MessageError as exc:
                log.warning("a peer sent bytes that are not a consensus message: %s", exc)
                continue
            if isinstance(m, Signed):
                await self.inputs.put(("message", m))
        return b""

    def give(self, digests: list[bytes]) -> None:
        """Batches stored from gateways (held by the ledger already): to be ordered."""
        self.inputs.put_nowait(("submit", digests))

    def arrived(self, digests: list[bytes]) -> None:
        """Batches the app fetched and stored (held by the ledger already)."""
        self.inputs.put_nowait(("arrived", digests))

    async def submit(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        if self.app is not None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "this replica is a hub: send batches to its ingest")
        if not raw or len(raw) % DIGEST:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{len(raw)} bytes are not 32-byte batch digests")
        digests = [raw[i : i + DIGEST] for i in range(0, len(raw), DIGEST)]
        if isinstance(self.ledger, DigestLedger):
            self.ledger.held.update(digests)
        await self.inputs.put(("submit", digests))
        return b""

    async def status(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """The request is empty (the whole chain) or a big-endian u64: the chain from that height on."""
        c = self.core
        start = int.from_bytes(raw, "big") if len(raw) == 8 else 1
        blocks = c.certificates[max(start, 1) - 1 :]
        return json.dumps({
            "id": self.cfg.id, "height": c.height, "view": c.view, "changing_to": c.changing_to,
            "view_changes": c.view_change_count, "pending": len(c.pending),
            "epoch": c.m.epoch, "active": list(c.m.active), "reserve": list(c.m.reserve),
            "points": {str(r): p for r, p in sorted(c.scores.points.items())},
            "pending_batches": sorted(b.hex() for b in c.pending),
            "from": max(start, 1),
            "chain": [cert.proposal.digest.hex() for cert in blocks],
            "batches": [[b.hex() for b in cert.proposal.batches] for cert in blocks],
        }).encode()

    def handler(self) -> grpc.GenericRpcHandler:
        raw = {"request_deserializer": None, "response_serializer": None}
        return grpc.method_handlers_generic_handler(SERVICE, {
            "Deliver": grpc.stream_unary_rpc_method_handler(self.deliver, **raw),
            "Submit": grpc.unary_unary_rpc_method_handler(self.submit, **raw),
            "Status": grpc.unary_unary_rpc_method_handler(self.status, **raw),
            **(self.app.handlers() if self.app is not None else {}),
        })

    async def run(self, stop: asyncio.Event) -> None:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((self.handler(),))
        if self.cfg.insecure_plaintext:
            port = server.add_insecure_port(self.cfg.listen)
        else:
            assert self.cfg.tls_ca and self.cfg.tls_cert and self.cfg.tls_key
            creds = grpc.ssl_server_credentials(
                [(self.cfg.tls_key.read_bytes(), self.cfg.tls_cert.read_bytes())],
                root_certificates=self.cfg.tls_ca.read_bytes(), require_client_auth=True,
            )
            port = server.add_secure_port(self.cfg.listen, creds)
        if port == 0:
            raise OSError(f"cannot listen on {self.cfg.listen} (address in use or not available)")
        await server.start()
        tasks = [asyncio.create_task(self._drive()), asyncio.create_task(self._ticks())]
        tasks += [asyncio.create_task(self._peer(p)) for p in self.outboxes]
        log.info("replica %d of %d listening on %s (height %d, view %d)", self.cfg.id, self.cfg.n,
                 self.cfg.listen, self.core.height, self.core.view)
        print(f"replica {self.cfg.id} listening on {self.cfg.listen}", flush=True)
        try:
            await stop.wait()
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await server.stop(1.0)
            self.io.shutdown(wait=True)
            self.journal.close()
