"""The uplink: one long-lived gRPC stream to a hub, batches up, receipts down.

A batch leaves the queue only when a receipt for it arrives that names its
exact hash and carries a valid signature of a pinned hub key, so neither a
confused hub nor a man in the middle can make the agent forget evidence. On any
stream failure the agent reconnects and re-sends everything unreceipted; the hub
acknowledges re-sent batches again (as duplicates) without storing them twice.

With several hub addresses (`hubs = [...]`, e.g. a cold standby on the same data)
a failed session moves on to the next address at once; the agent backs off only
after every address failed in a row, and stays with a hub that works.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

import grpc

from edge.clock import now_ns
from edge.config import UplinkConfig
from edge.queue import DurableQueue
from protos import ingest_pb2_grpc
from protos import readings_pb2 as pb
from protos.canonical import decode_batch_header, encode_receipt
from protos.entrypack import pack_entries
from protos.records import ReceiptStatement, RecordError
from protos.signing import PublicKey, key_id, load_public_key, verify_signature
from protos.wire import header_to_pb

log = logging.getLogger("gridtrace.edge.uplink")

# A hub that accepted batches but sends no receipt for this long is treated as gone.
RECEIPT_TIMEOUT_S = 60.0
# A hub address that neither connects nor refuses within this long (a dropped SYN,
# a dead route) is given up for the next one.
CONNECT_TIMEOUT_S = 10.0


class ReceiptError(Exception):
    """A receipt that must not be acted on: wrong batch, wrong hash, or a bad signature."""


@dataclass
class UplinkStats:
    connected: bool = False
    receipts: int = 0
    duplicates: int = 0  # receipts for batches the hub already held (re-sends after a failure)
    last_receipt_seq: int | None = None
    last_error: str | None = None
    hub: str | None = None  # the address in use (or last tried)
    failovers: int = 0


def _keys_by_id(hub_key: PublicKey | Iterable[PublicKey]) -> dict[str, PublicKey]:
    keys = [hub_key] if isinstance(hub_key, PublicKey) else list(hub_key)
    return {key_id(k): k for k in keys}


def check_receipt(
    receipt,
    expected_gateway: str,
    expected_seq: int,
    expected_hash: bytes,
    hub_key: PublicKey | Iterable[PublicKey] | dict[str, PublicKey],
) -> ReceiptStatement:
    """Pure check of one receipt against the batch it must acknowledge.

    `hub_key` is the pinned key, or several (by key id): the receipt must name one
    of them and verify against it.
    """
    keys = hub_key if isinstance(hub_key, dict) else _keys_by_id(hub_key)
    key = keys.get(receipt.key_id)
    if key is None:
        raise ReceiptError(
            f"receipt for batch {receipt.batch_seq} signed by unknown hub key {receipt.key_id!r} "
            f"(pinned: {', '.join(sorted(keys))})"
        )
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
    if not verify_signature(key, bytes(receipt.signature), encode_receipt(stmt)):
        raise ReceiptError(f"receipt for batch {expected_seq}: hub signature does not verify")
    return stmt


def load_pending(queue: DurableQueue, after_seq: int, limit: int) -> list[tuple[int, bytes, pb.SignedBatch]]:
    """(seq, hash, wire message) of the next unreceipted batches; run in a worker thread so
    that reading a large backlog keeps off the event loop the pollers share.

    Entries go out as the canonical bytes the queue holds, the very leaves this agent
    hashed into the signed header, packed with each quantity-names field once (wire v3,
    `protos.entrypack`): a third of the bytes, which the hub stores as they arrive.
    """
    out = []
    for seq, header, signature, digest, bodies in queue.pending_raw(after_seq, limit):
        p = pack_entries(bodies)
        msg = pb.SignedBatch(
            header=header_to_pb(decode_batch_header(header)), signature=signature,
            packed_entries=pb.EntryPack(bodies=p.bodies, offsets=p.offsets, names=p.names),
        )
        out.append((seq, digest, msg))
    return out


def open_channel(cfg: UplinkConfig, hub: str | None = None) -> grpc.aio.Channel:
    target = hub or cfg.hubs[0]
    options = [
        ("grpc.keepalive_time_ms", 20_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        # Keep pinging on a stream that is idle for hours (no batches while meters are down).
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ]
    if cfg.insecure_plaintext:
        return grpc.aio.insecure_channel(target, options=options)
    assert cfg.tls_ca is not None  # enforced by the config loader
    creds = grpc.ssl_channel_credentials(root_certificates=cfg.tls_ca.read_bytes())
    if cfg.tls_server_name:
        options.append(("grpc.ssl_target_name_override", cfg.tls_server_name))
    return grpc.aio.secure_channel(target, creds, options=options)


async def _connected(channel: grpc.aio.Channel, hub: str) -> bool:
    """Wait until the channel connects (True) or fails (False). A failure is left to the
    stream call to report (its status says why: refused, TLS, name); only silence is
    raised here."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + CONNECT_TIMEOUT_S
    state = channel.get_state(try_to_connect=True)
    while state not in (grpc.ChannelConnectivity.READY, grpc.ChannelConnectivity.TRANSIENT_FAILURE):
        remaining = deadline - loop.time()
        try:
            if remaining <= 0:
                raise TimeoutError
            await asyncio.wait_for(channel.wait_for_state_change(state), remaining)
        except TimeoutError:
            raise ConnectionError(
                f"no answer from hub {hub} within {CONNECT_TIMEOUT_S:.0f} s; check the address and firewall"
            ) from None
        state = channel.get_state(try_to_connect=True)
    return state == grpc.ChannelConnectivity.READY


class Uplink:
    def __init__(self, cfg: UplinkConfig, queue: DurableQueue, gateway_id: str) -> None:
        self.cfg = cfg
        self.queue = queue
        self.gateway_id = gateway_id
        self.hubs = cfg.hubs
        self.hub_keys = _keys_by_id(load_public_key(p) for p in cfg.hub_public_keys)
        self.stats = UplinkStats()
        self.wakeup = asyncio.Event()  # set by the sealer when a new batch exists
        self._current = 0  # index into hubs

    @property
    def hub_key(self) -> PublicKey:
        """The first pinned key (kept for callers that know one hub)."""
        return next(iter(self.hub_keys.values()))

    async def run(self, stop: asyncio.Event) -> None:
        backoff = 0.5
        failed_in_row = 0
        while not stop.is_set():
            hub = self.hubs[self._current]
            self.stats.hub = hub
            receipts_before = self.stats.receipts
            try:
                await self._session(stop, hub)
            except (grpc.aio.AioRpcError, ReceiptError, ConnectionError) as exc:
                self.stats.last_error = _describe(exc)
                level = logging.WARNING
            except Exception as exc:  # the uplink must never stop for good
                self.stats.last_error = _describe(exc)
                level = logging.ERROR
                log.exception("uplink to hub %s failed unexpectedly", hub)
            else:
                continue  # ended because stop was set
            finally:
                self.stats.connected = False
            if self.stats.receipts > receipts_before:
                # The hub worked for a while: a fresh start, not one more failure in a row.
                backoff, failed_in_row = 0.5, 0
            failed_in_row += 1
            if stop.is_set():
                break
            if len(self.hubs) > 1:
                self._current = (self._current + 1) % len(self.hubs)
                self.stats.failovers += 1
            # Back off only when every address failed in a row; moving on is immediate.
            wait = backoff * (0.8 + 0.4 * random.random()) if failed_in_row % len(self.hubs) == 0 else 0.1
            nxt = self.hubs[self._current]
            log.log(
                level, "uplink to hub %s: %s; %s in %.1f s", hub, self.stats.last_error,
                f"trying hub {nxt} next" if nxt != hub else "retrying", wait,
            )
            try:
                await asyncio.wait_for(stop.wait(), wait)
            except TimeoutError:
                pass
            if failed_in_row % len(self.hubs) == 0:
                backoff = min(backoff * 2, self.cfg.reconnect_max_s)

    async def _session(self, stop: asyncio.Event, hub: str) -> None:
        async with open_channel(self.cfg, hub) as channel:
            if await _connected(channel, hub):
                log.info("uplink: connected to hub %s (%d of %d)", hub, self._current + 1, len(self.hubs))
            call = ingest_pb2_grpc.IngestStub(channel).Stream()
            in_flight: deque[tuple[int, bytes]] = deque()
            window_open = asyncio.Event()
            window_open.set()
            announced = False

            async def receive() -> None:
                nonlocal announced
                async for receipt in call:
                    if not in_flight:
                        raise ReceiptError(f"unexpected receipt for batch {receipt.batch_seq}")
                    seq, digest = in_flight[0]
                    check_receipt(receipt, self.gateway_id, seq, digest, self.hub_keys)
                    await asyncio.to_thread(self.queue.delete_batch, seq, now_ns(), hub)
                    in_flight.popleft()
                    window_open.set()
                    self.stats.receipts += 1
                    self.stats.duplicates += bool(receipt.duplicate)
                    self.stats.last_receipt_seq = seq
                    self.stats.connected = True
                    if not announced:
                        announced = True
                        log.info(
                            "uplink: hub %s (%d of %d) receipted batch %d%s", hub, self._current + 1,
                            len(self.hubs), seq, " (it already held it)" if receipt.duplicate else "",
                        )
                raise ConnectionError("hub closed the stream")

            receiver = asyncio.create_task(receive())
            loop = asyncio.get_running_loop()
            last_sent = 0  # a new session re-sends everything unreceipted: the hub says what it has
            last_progress = loop.time()
            receipts_seen = self.stats.receipts
            try:
                while not stop.is_set() and not receiver.done():
                    room = self.cfg.max_in_flight - len(in_flight)
                    # Clear before looking, so a batch sealed meanwhile still wakes us.
                    self.wakeup.clear()
                    batches = (
                        await asyncio.to_thread(load_pending, self.queue, last_sent, room) if room > 0 else []
                    )
                    for seq, digest, msg in batches:
                        in_flight.append((seq, digest))
                        last_sent = seq
                        try:
                            await call.write(msg)
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
                        await asyncio.wait([*waiters, receiver], timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
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


async def _why_ended(call, receiver: asyncio.Task) -> Exception:
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
