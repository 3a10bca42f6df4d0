"""The uplink: one long-lived gRPC stream to the hub, batches up, receipts down.

A batch leaves the queue only when a receipt for it arrives that names its
exact hash and carries a valid signature of the hub's pinned key, so neither a
confused hub nor a man in the middle can make the agent forget evidence. On any
stream failure the agent reconnects with capped exponential backoff and re-sends
everything unreceipted; the hub acknowledges re-sent batches again without
storing them twice.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from dataclasses import dataclass

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.config import UplinkConfig
from edge.queue import DurableQueue, QueuedBatch
from protos import ingest_pb2_grpc
from protos import readings_pb2 as pb
from protos.canonical import encode_receipt
from protos.records import RecordError, ReceiptStatement
from protos.signing import key_id, load_public_key, verify_signature
from protos.wire import entry_to_pb, header_to_pb

log = logging.getLogger("gridtrace.edge.uplink")

# A hub that accepted batches but sends no receipt for this long is treated as gone.
RECEIPT_TIMEOUT_S = 60.0


class ReceiptError(Exception):
    """A receipt that must not be acted on: wrong batch, wrong hash, or a bad signature."""


@dataclass
class UplinkStats:
    connected: bool = False
    receipts: int = 0
    last_receipt_seq: int | None = None
    last_error: str | None = None


def check_receipt(
    receipt, expected_gateway: str, expected_seq: int, expected_hash: bytes, hub_key: Ed25519PublicKey
) -> ReceiptStatement:
    """Pure check of one receipt against the batch it must acknowledge."""
    if receipt.key_id != key_id(hub_key):
        raise ReceiptError(f"receipt for batch {receipt.batch_seq} signed by unknown hub key {receipt.key_id!r}")
    try:
        stmt = ReceiptStatement(
            receipt.chain_id, receipt.gateway_id, receipt.batch_seq, bytes(receipt.batch_hash), receipt.stored_ns
        )
    except RecordError as exc:
        raise ReceiptError(f"malformed receipt: {exc}") from exc
    if stmt.gateway_id != expected_gateway or stmt.batch_seq != expected_seq:
        raise ReceiptError(
            f"receipt names {stmt.gateway_id} batch {stmt.batch_seq}, expected {expected_gateway} batch {expected_seq}"
        )
    if stmt.batch_hash != expected_hash:
        raise ReceiptError(f"receipt for batch {expected_seq} names another hash than the batch sent")
    if not verify_signature(hub_key, bytes(receipt.signature), encode_receipt(stmt)):
        raise ReceiptError(f"receipt for batch {expected_seq}: hub signature does not verify")
    return stmt


def batch_to_pb(b: QueuedBatch) -> pb.SignedBatch:
    return pb.SignedBatch(
        header=header_to_pb(b.header), signature=b.signature, entries=[entry_to_pb(e) for e in b.entries]
    )


def open_channel(cfg: UplinkConfig) -> grpc.aio.Channel:
    options = [
        ("grpc.keepalive_time_ms", 20_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        # Keep pinging on a stream that is idle for hours (no batches while meters are down).
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ]
    if cfg.insecure_plaintext:
        return grpc.aio.insecure_channel(cfg.hub, options=options)
    assert cfg.tls_ca is not None  # enforced by the config loader
    creds = grpc.ssl_channel_credentials(root_certificates=cfg.tls_ca.read_bytes())
    if cfg.tls_server_name:
        options.append(("grpc.ssl_target_name_override", cfg.tls_server_name))
    return grpc.aio.secure_channel(cfg.hub, creds, options=options)


class Uplink:
    def __init__(self, cfg: UplinkConfig, queue: DurableQueue, gateway_id: str) -> None:
        self.cfg = cfg
        self.queue = queue
        self.gateway_id = gateway_id
        self.hub_key = load_public_key(cfg.hub_public_key)
        self.stats = UplinkStats()
        self.wakeup = asyncio.Event()  # set by the sealer when a new batch exists

    async def run(self, stop: asyncio.Event) -> None:
        backoff = 0.5
        while not stop.is_set():
            try:
                await self._session(stop)
                backoff = 0.5
            except (grpc.aio.AioRpcError, ReceiptError, ConnectionError) as exc:
                self.stats.connected = False
                self.stats.last_error = _describe(exc)
                log.warning("uplink to %s: %s; retrying in %.1f s", self.cfg.hub, self.stats.last_error, backoff)
            except Exception as exc:  # noqa: BLE001 - the uplink must never stop for good
                self.stats.connected = False
                self.stats.last_error = _describe(exc)
                log.exception("uplink to %s failed unexpectedly; retrying in %.1f s", self.cfg.hub, backoff)
            if stop.is_set():
                break
            try:
                await asyncio.wait_for(stop.wait(), backoff * (0.8 + 0.4 * random.random()))
            except TimeoutError:
                pass
            backoff = min(backoff * 2, self.cfg.reconnect_max_s)

    async def _session(self, stop: asyncio.Event) -> None:
        async with open_channel(self.cfg) as channel:
            call = ingest_pb2_grpc.IngestStub(channel).Stream()
            in_flight: deque[tuple[int, bytes]] = deque()
            window_open = asyncio.Event()
            window_open.set()

            async def receive() -> None:
                async for receipt in call:
                    if not in_flight:
                        raise ReceiptError(f"unexpected receipt for batch {receipt.batch_seq}")
                    seq, digest = in_flight[0]
                    check_receipt(receipt, self.gateway_id, seq, digest, self.hub_key)
                    await asyncio.to_thread(self.queue.delete_batch, seq)
                    in_flight.popleft()
                    window_open.set()
                    self.stats.receipts += 1
                    self.stats.last_receipt_seq = seq
                    self.stats.connected = True
                raise ConnectionError("hub closed the stream")

            receiver = asyncio.create_task(receive())
            loop = asyncio.get_running_loop()
            last_sent = 0
            last_progress = loop.time()
            receipts_seen = self.stats.receipts
            try:
                while not stop.is_set() and not receiver.done():
                    room = self.cfg.max_in_flight - len(in_flight)
                    # Clear before looking, so a batch sealed meanwhile still wakes us.
                    self.wakeup.clear()
                    batches = (
                        await asyncio.to_thread(self.queue.pending_batches, last_sent, room) if room > 0 else []
                    )
                    for b in batches:
                        in_flight.append((b.header.seq, b.hash))
                        last_sent = b.header.seq
                        try:
                            await call.write(batch_to_pb(b))
                        except (asyncio.InvalidStateError, grpc.aio.AioRpcError):
                            # The hub ended the stream while we wrote; its status says why.
                            raise await _why_ended(call, receiver) from None
                        last_progress = loop.time()
                    if self.stats.receipts != receipts_seen:
                        receipts_seen, last_progress = self.stats.receipts, loop.time()
                    if in_flight and loop.time() - last_progress > RECEIPT_TIMEOUT_S:
                        raise ConnectionError(f"no receipt from the hub for {RECEIPT_TIMEOUT_S:.0f} s")
                    if not batches:
                        window_open.clear()
                        waiters = [asyncio.create_task(e.wait()) for e in (stop, self.wakeup, window_open)]
                        done, pending = await asyncio.wait(
                            [*waiters, receiver], timeout=1.0, return_when=asyncio.FIRST_COMPLETED
                        )
                        for w in waiters:
                            w.cancel()
                if receiver.done():
                    receiver.result()  # re-raise what ended the stream
            finally:
                if not receiver.done():
                    receiver.cancel()
                    try:
                        await receiver
                    except (asyncio.CancelledError, grpc.aio.AioRpcError):
                        pass
                call.cancel()

    async def drain(self, timeout_s: float) -> bool:
        """Wait until the queue has no unreceipted batches (used on graceful stop)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            if (await asyncio.to_thread(self.queue.stats)).batches == 0:
                return True
            self.wakeup.set()
            await asyncio.sleep(0.1)
        return False


async def _why_ended(call, receiver: asyncio.Task) -> Exception:  # noqa: ANN001
    """Why the hub ended a stream we were writing to: the call's final status, which
    carries the hub's reason (a failed write itself only says "internal error")."""
    try:
        await asyncio.wait_for(asyncio.shield(receiver), 5.0)
    except Exception as exc:  # noqa: BLE001
        if isinstance(exc, ReceiptError):
            return exc
    return ConnectionError(f"hub ended the stream: {(await call.code()).name}: {await call.details()}")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return str(exc)
