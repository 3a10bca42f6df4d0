"""The Ingest gRPC service: verify each batch, commit in groups, receipt only what is durable.

Each stream's batches arrive as raw bytes and are checked (structure, entries,
Merkle root, signature) by verifier processes (`hub.ingest.verifier`), several
at a time; their chain position is then decided here, in the stream's order, and
they go to one writer task that commits whatever has accumulated in a single
transaction. Each stream answers with receipts in the order its batches arrived,
each sent only after its batch's commit returned, or, on a replicated hub (`Sealing`, see
hub/chain/replicated.py), only once the batch is in a block the replicas decided. A re-sent batch gets a receipt
marked `duplicate` and is not stored again. The raw bytes held between arrival
and commit are capped; above the cap no stream is read, so gRPC flow control
slows the gateways down instead of the hub running out of memory.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Sequence
from functools import partial
from concurrent.futures import Executor
from typing import Protocol

import grpc

from hub.ingest.check import CheckedBatch, Placement, Reason, Rejection, place_in_chain
from hub.ingest.verifier import InlineVerifier, VerifierPool
from hub.metrics import HubMetrics
from hub.storage.store import NewBatch, Store
from protos import ingest_pb2 as ipb
from protos import readings_pb2 as pb
from protos.canonical import encode_receipt
from protos.records import ReceiptStatement
from protos.signing import Signer

log = logging.getLogger("gridtrace.hub.ingest")


class StoreFailure(Exception):
    """The database refused a commit; the batches involved were not receipted."""


class Sealing(Protocol):
    """A replicated hub's chain, as ingest sees it: what it stored goes to consensus, and a
    receipt waits until the batch is in a decided block (hub.chain.replicated.ReplicatedChain)."""

    def stored(self, batches: Sequence[NewBatch]) -> None: ...

    def remember(self, digest: bytes, raw: bytes) -> None: ...

    def when_sealed(self, digest: bytes) -> asyncio.Future: ...


class Ingestor:
    """The ingest core shared by all streams: gateway keys, chain heads, the group-commit writer."""

    def __init__(
        self,
        store: Store,
        db: Executor,
        signer: Signer,
        chain_id: str,
        max_group: int = 256,
        verifier: InlineVerifier | VerifierPool | None = None,
        max_pending_bytes: int = 256 << 20,
        max_in_flight_per_stream: int = 16,
        metrics: HubMetrics | None = None,
        sealing: Sealing | None = None,
    ):
        self.store = store
        self.sealing = sealing
        self.metrics = metrics
        self.db = db
        self.signer = signer
        self.chain_id = chain_id
        self.max_group = max_group
        self.verifier = verifier if verifier is not None else InlineVerifier()
        self.max_pending_bytes = max_pending_bytes
        self.max_in_flight_per_stream = max_in_flight_per_stream
        self.heads: dict[str, tuple[int, bytes]] = {}
        self.pending: dict[tuple[str, int], tuple[bytes, asyncio.Future]] = {}
        self.accepted = Counter()
        self.rejected = Counter()
        self.streams = 0
        self.pending_bytes = 0  # raw bytes of batches between arrival and commit (or rejection)
        self.room = asyncio.Event()  # set while pending_bytes is under the cap
        self.room.set()
        self.closing = asyncio.Event()  # shutdown: streams read nothing more
        self._no_streams = asyncio.Event()
        self._no_streams.set()
        self._queue: list[tuple[NewBatch, asyncio.Future]] = []
        self._wake = asyncio.Event()
        self._writer: asyncio.Task | None = None
        self._keys_loaded_at = 0.0
        # Gateways whose in-memory head may be ahead of the database (after a failed commit).
        self._stale_heads: set[str] = set()

    async def _run_db(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.db, fn, *args)

    async def start(self) -> None:
        await self.verifier.start()
        await self._load_keys()
        self.heads = await self._run_db(self.store.gateway_heads)
        self._writer = asyncio.create_task(self._write_loop(), name="ingest-writer")

    async def close(self, grace_s: float) -> None:
        """Shutdown, first step: streams stop reading, finish the batches in hand (checked,
        committed, receipted) and end with UNAVAILABLE; wait at most `grace_s` for them."""
        self.closing.set()
        try:
            await asyncio.wait_for(self._no_streams.wait(), grace_s)
        except TimeoutError:
            log.warning("%d ingest streams still open after %.0f s of shutdown", self.streams, grace_s)

    async def stop(self) -> None:
        """Commit what was accepted, then stop the writer and the verifiers."""
        while self._queue and self._writer is not None and not self._writer.done():
            self._wake.set()
            await asyncio.sleep(0.01)
        if self._writer:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
        await self.verifier.stop()

    @property
    def commit_queue_depth(self) -> int:
        """Batches accepted and waiting for the group commit."""
        return len(self._queue)

    def stream_opened(self) -> None:
        self.streams += 1
        self._no_streams.clear()

    def stream_closed(self) -> None:
        self.streams -= 1
        if self.streams == 0:
            self._no_streams.set()

    def hold(self, size: int) -> None:
        self.pending_bytes += size
        if self.pending_bytes >= self.max_pending_bytes:
            self.room.clear()

    def release(self, size: int) -> None:
        self.pending_bytes -= size
        if self.pending_bytes < self.max_pending_bytes:
            self.room.set()

    async def _load_keys(self) -> None:
        self.verifier.update_keys(await self._run_db(self.store.gateway_keys))
        self._keys_loaded_at = time.monotonic()

    async def check(self, raw: bytes) -> CheckedBatch:
        """Structure, entries and signature, by a verifier; not yet the chain position."""
        try:
            try:
                checked = await self.verifier.check(raw)
                if self.sealing is not None:
                    self.sealing.remember(checked.batch.hash, raw)
                return checked
            except Rejection as exc:
                # A gateway registered while we run: look again, at most once a second.
                if exc.reason is not Reason.UNKNOWN_GATEWAY or time.monotonic() - self._keys_loaded_at < 1.0:
                    raise
                await self._load_keys()
                return await self.verifier.check(raw)
        except Rejection as exc:
            self.rejected[exc.reason.label] += 1
            if self.metrics is not None:
                gateway_id, entries = _claimed_gateway(raw)
                self.metrics.batch_rejected(gateway_id, exc.reason.label, entries)
            raise

    async def accept(self, checked: CheckedBatch, arrived: float | None = None) -> asyncio.Future:
        """Place a checked batch in its gateway's chain; return a future that resolves to its
        receipt once durable. Called in each stream's order."""
        b = checked.batch
        try:
            if b.gateway_id in self._stale_heads:
                await self._reload_head(b.gateway_id)
            try:
                placement = place_in_chain(checked.header, self.heads.get(b.gateway_id))
            except Rejection as exc:
                if exc.reason is not Reason.GAP or self.sealing is None:
                    raise
                # A replica may not have fetched the batches before it from its peers yet.
                raise Rejection(Reason.UNAVAILABLE, f"{exc.message}; this replica may still be fetching them from "
                                "its peers: send it again, or to another replica") from exc
            if placement is Placement.SEEN:
                fut = await self._resent(b)
            else:
                self.heads[b.gateway_id] = (b.seq, b.hash)
                fut = asyncio.get_running_loop().create_future()
                self.pending[(b.gateway_id, b.seq)] = (b.hash, fut)
                self._queue.append((b, fut))
                self._wake.set()
        except Rejection as exc:
            self.rejected[exc.reason.label] += 1
            if self.metrics is not None:
                self.metrics.batch_rejected(b.gateway_id, exc.reason.label, b.entry_count)
            raise
        if self.metrics is not None:
            # metrics: outcome, latency (from arrival) and per-gateway activity (hub/metrics.py)
            started = time.monotonic() if arrived is None else arrived
            fut.add_done_callback(partial(self.metrics.batch_done, b.gateway_id, b.seq, b.entry_count, started))
        return fut

    async def submit(self, msg) -> asyncio.Future:  # noqa: ANN001 - a SignedBatch or its bytes
        """Check one batch and place it; return a future that resolves to its receipt once durable."""
        raw = msg if isinstance(msg, bytes) else msg.SerializeToString()
        return await self.accept(await self.check(raw))

    async def _reload_head(self, gateway_id: str) -> None:
        try:
            head = await self._run_db(self.store.gateway_head, gateway_id)
        except Exception as exc:  # noqa: BLE001
            raise Rejection(Reason.UNAVAILABLE, f"gateway {gateway_id}: database unavailable ({exc})") from exc
        if head is None:
            self.heads.pop(gateway_id, None)
        else:
            self.heads[gateway_id] = head
        self._stale_heads.discard(gateway_id)

    async def _resent(self, b: NewBatch) -> asyncio.Future:
        fork = Rejection(
            Reason.FORK,
            f"gateway {b.gateway_id} batch {b.seq}: this hub already holds a different batch {b.seq} "
            "(a fork of the gateway's chain)",
        )
        loop = asyncio.get_running_loop()
        pending = self.pending.get((b.gateway_id, b.seq))
        if pending is not None:
            digest, original = pending
            if digest != b.hash:
                raise fork

            async def after_original() -> ipb.Receipt:
                first = await asyncio.shield(original)
                return self._receipt(b, first.stored_ns, duplicate=True)

            return asyncio.ensure_future(after_original())
        try:
            stored = await self._run_db(self.store.find_batch, b.gateway_id, b.seq)
        except Exception as exc:  # noqa: BLE001
            raise Rejection(Reason.UNAVAILABLE, f"gateway {b.gateway_id} batch {b.seq}: database unavailable ({exc})") from exc
        if stored is None and self.sealing is not None:
            # Its successors came from the other replicas, not this one yet: not a fork.
            raise Rejection(
                Reason.UNAVAILABLE,
                f"gateway {b.gateway_id} batch {b.seq}: this replica is still fetching it from its peers; send it again",
            )
        if stored is None or stored.hash != b.hash:
            raise fork
        fut = loop.create_future()
        if self.sealing is not None and stored.block_height is None:
            self.sealing.stored([b])  # ordered again: the forward may have been lost with a restart
        self._receipt_when_sealed(fut, self._receipt(b, stored.stored_ns, duplicate=True), b.hash,
                                  sealed=stored.block_height is not None)
        self.accepted["duplicate"] += 1
        return fut

    def _receipt_when_sealed(self, fut: asyncio.Future, receipt: ipb.Receipt, digest: bytes, sealed: bool) -> None:
        """Resolve `fut` with the receipt now (a single hub, or a batch already in a block) or
        once the replicas decided a block holding it."""
        if self.sealing is None or sealed:
            if not fut.done():
                fut.set_result(receipt)
            return

        def release(done: asyncio.Future) -> None:
            if not fut.done() and not done.cancelled():
                fut.set_result(receipt)

        self.sealing.when_sealed(digest).add_done_callback(release)

    def advance_heads(self, batches: Sequence[NewBatch]) -> None:
        """Batches of gateways stored by another path (fetched from a peer replica): a gateway
        re-sending one of them gets a duplicate receipt, not a gap."""
        for b in batches:
            head = self.heads.get(b.gateway_id)
            if head is None or b.seq > head[0]:
                self.heads[b.gateway_id] = (b.seq, b.hash)

    def _receipt(self, b: NewBatch, stored_ns: int, duplicate: bool) -> ipb.Receipt:
        stmt = ReceiptStatement(self.chain_id, b.gateway_id, b.seq, b.hash, stored_ns)
        return ipb.Receipt(
            chain_id=self.chain_id, gateway_id=b.gateway_id, batch_seq=b.seq, batch_hash=b.hash,
            stored_ns=stored_ns, duplicate=duplicate, key_id=self.signer.key_id,
            signature=self.signer.sign(encode_receipt(stmt)),
        )

    def _store_batches(self, batches: list[NewBatch], stored_ns: int) -> None:
        """On the database thread. A replicated hub may hold some already, fetched from the
        replica a gateway sent them to first: those are skipped, and their receipts wait for
        the block like the others'."""
        if self.sealing is None:
            self.store.store_batches(batches, stored_ns)
        else:
            self.store.store_batches(batches, stored_ns, skip_stored=True)

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                group, self._queue = self._queue[: self.max_group], self._queue[self.max_group :]
                try:
                    await self._commit(group)
                except Exception:  # noqa: BLE001 - the writer must outlive any one failure
                    log.exception("ingest writer: unexpected failure; failing the group")
                    self._fail_gateways(group, {b.gateway_id for b, _ in group}, "internal error while storing")

    async def _commit(self, group: list[tuple[NewBatch, asyncio.Future]]) -> None:
        stored_ns = time.time_ns()
        try:
            await self._run_db(self._store_batches, [b for b, _ in group], stored_ns)
        except Exception as exc:  # noqa: BLE001 - any database failure: nothing of the group receipted
            if len(group) == 1:
                self._fail_gateways(group, {group[0][0].gateway_id}, f"database commit failed: {exc}")
                return
            log.warning("commit of %d batches failed (%s); committing them one by one", len(group), exc)
            await self._commit_singly(group)
            return
        for b, fut in group:
            self._stored(b, fut, stored_ns)
        if self.sealing is not None:
            self.sealing.stored([b for b, _ in group])

    async def _commit_singly(self, group: list[tuple[NewBatch, asyncio.Future]]) -> None:
        """After a failed group commit, one bad batch must not fail the others; but a batch
        whose predecessor of the same gateway failed cannot be stored either."""
        failed: dict[str, str] = {}
        for b, fut in group:
            if b.gateway_id in failed:
                continue
            stored_ns = time.time_ns()
            try:
                await self._run_db(self._store_batches, [b], stored_ns)
            except Exception as exc:  # noqa: BLE001
                failed[b.gateway_id] = f"database commit failed: {exc}"
                continue
            self._stored(b, fut, stored_ns)
            if self.sealing is not None:
                self.sealing.stored([b])
        for gw, why in failed.items():
            self._fail_gateways([item for item in group if item[0].gateway_id == gw], {gw}, why)

    def _stored(self, b: NewBatch, fut: asyncio.Future, stored_ns: int) -> None:
        self.pending.pop((b.gateway_id, b.seq), None)
        self.accepted["batches"] += 1
        self.accepted["entries"] += b.entry_count
        self._receipt_when_sealed(fut, self._receipt(b, stored_ns, duplicate=False), b.hash, sealed=False)

    def _fail_gateways(self, items: list[tuple[NewBatch, asyncio.Future]], gateways: set[str], why: str) -> None:
        """Nothing receipted for these batches, nor for queued later ones of the same gateways
        (they build on what was lost); those gateways' heads are re-read from the database."""
        later = [item for item in self._queue if item[0].gateway_id in gateways]
        self._queue = [item for item in self._queue if item[0].gateway_id not in gateways]
        for b, fut in [*items, *later]:
            log.error(
                "gateway %s batch %d not stored: %s", b.gateway_id, b.seq, why,
                extra={"gateway": b.gateway_id, "batch_seq": b.seq, "reason": "unavailable"},
            )
            self.pending.pop((b.gateway_id, b.seq), None)
            if not fut.done():
                fut.set_exception(StoreFailure(why))
        self._stale_heads |= gateways


async def _drain(iterator, in_hand: asyncio.Future | None, idle_s: float = 0.3, limit_s: float = 2.0) -> None:  # noqa: ANN001
    """Read and drop what a gateway still has in flight before rejecting its stream.

    A gateway writing while the stream ends sees only a local write error, not our
    status; letting its window of in-flight batches arrive first means it is
    waiting for receipts, and reads the rejection with its reason.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while loop.time() < deadline:
        nxt = in_hand if in_hand is not None else asyncio.ensure_future(anext(iterator))
        in_hand = None
        try:
            await asyncio.wait_for(nxt, idle_s)
        except (StopAsyncIteration, TimeoutError, grpc.aio.AioRpcError):
            return


def _claimed_gateway(raw: bytes) -> tuple[str, int]:
    """The gateway id and entry count a rejected batch claims in its header, for the
    per-gateway reject counts; parsed again only on this rare path."""
    try:
        h = pb.SignedBatch.FromString(raw).header
    except Exception:  # noqa: BLE001 - not even a message: nobody to count it against
        return "", 0
    return h.gateway_id, h.entry_count


STREAM_METHOD = "/gridtrace.v1.Ingest/Stream"


class IngestService:
    """`Ingest.Stream` with a raw-bytes request deserializer: the server process never parses
    a batch, the verifier processes do."""

    def __init__(self, ingestor: Ingestor) -> None:
        self.ingestor = ingestor

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            "gridtrace.v1.Ingest",
            {
                "Stream": grpc.stream_stream_rpc_method_handler(
                    self.Stream, request_deserializer=None, response_serializer=ipb.Receipt.SerializeToString
                )
            },
        )

    async def _read(self, requests, results: asyncio.Queue, peer: str, gateway: list[str] | None = None) -> None:  # noqa: ANN001
        """Read raw batches, have up to a window of them checked at once, and place them in
        the stream's order; put each receipt future (or the rejection that ends the stream)
        on `results`."""
        ing = self.ingestor
        iterator = aiter(requests)
        checking: deque[tuple[asyncio.Future, int, float]] = deque()  # (check, raw size, arrival), in arrival order
        next_msg: asyncio.Future | None = None
        closing = asyncio.ensure_future(ing.closing.wait())
        ended = False
        try:
            while True:
                while checking and checking[0][0].done():
                    task, size, arrived = checking.popleft()
                    try:
                        fut = await ing.accept(task.result(), arrived)
                    except Rejection as exc:
                        ing.release(size)
                        for t, n, _ in checking:
                            t.cancel()
                            ing.release(n)
                        checking.clear()
                        if not ended:
                            await _drain(iterator, next_msg)
                        next_msg = None
                        await results.put(exc)
                        return
                    fut.add_done_callback(lambda _f, n=size: ing.release(n))
                    if ing.metrics is not None and gateway is not None and not gateway:
                        gateway.append(task.result().batch.gateway_id)
                        ing.metrics.stream_gateway(gateway[0])
                    await results.put(fut)
                if ing.closing.is_set() and next_msg is not None and not next_msg.done():
                    next_msg.cancel()  # nothing more is read; what did not arrive yet is re-sent later
                    next_msg = None
                if ended or (ing.closing.is_set() and next_msg is None):
                    if not checking:
                        if not ended:
                            await results.put(Rejection(
                                Reason.UNAVAILABLE, "hub shutting down; batches not receipted must be re-sent"
                            ))
                        return
                    await asyncio.wait({checking[0][0]})
                    continue
                if next_msg is None and len(checking) < ing.max_in_flight_per_stream and ing.room.is_set():
                    next_msg = asyncio.ensure_future(anext(iterator))
                waits: set[asyncio.Future] = {closing}
                if checking:
                    waits.add(checking[0][0])
                room = None
                if next_msg is not None:
                    waits.add(next_msg)
                elif not ing.room.is_set():
                    room = asyncio.ensure_future(ing.room.wait())
                    waits.add(room)
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                if room is not None:
                    room.cancel()
                if next_msg is not None and next_msg.done():
                    done, next_msg = next_msg, None
                    try:
                        raw = done.result()
                    except StopAsyncIteration:
                        ended = True
                        continue
                    ing.hold(len(raw))
                    checking.append((asyncio.ensure_future(ing.check(raw)), len(raw), time.monotonic()))
        except (asyncio.CancelledError, grpc.aio.AioRpcError):
            pass
        except Exception as exc:  # noqa: BLE001 - reported to the gateway, not swallowed
            log.exception("ingest stream from %s failed", peer, extra={"peer": peer})
            await results.put(Rejection(Reason.INTERNAL, f"internal error: {exc}"))
        finally:
            closing.cancel()
            if next_msg is not None:
                next_msg.cancel()
            for t, n, _ in checking:
                t.cancel()
                ing.release(n)
            await results.put(None)

    async def Stream(self, request_iterator, context: grpc.aio.ServicerContext) -> AsyncIterator[ipb.Receipt]:  # noqa: N802
        results: asyncio.Queue = asyncio.Queue()
        peer = context.peer()
        metrics = self.ingestor.metrics
        gateway: list[str] = []  # metrics: the gateway this stream carries, once a batch was accepted
        self.ingestor.stream_opened()
        if metrics is not None:
            metrics.stream_opened()
        reader = asyncio.create_task(self._read(request_iterator, results, peer, gateway))
        try:
            while True:
                item = await results.get()
                if item is None:
                    return
                if isinstance(item, Rejection):
                    if item.reason is Reason.UNAVAILABLE:
                        log.info("ending stream from %s: %s", peer, item.message)
                    else:
                        log.warning(
                            "rejected from %s: %s", peer, item.message, extra={"peer": peer, "reason": item.reason.label}
                        )
                    await context.abort(getattr(grpc.StatusCode, item.reason.status), item.message)
                try:
                    # shield: a cancelled stream must not cancel a commit others wait on
                    receipt = await asyncio.shield(item)
                except StoreFailure as exc:
                    await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
                yield receipt
        finally:
            self.ingestor.stream_closed()
            if metrics is not None:
                metrics.stream_closed(gateway[0] if gateway else None)
            reader.cancel()
