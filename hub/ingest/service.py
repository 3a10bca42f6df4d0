"""The Ingest gRPC service: verify each batch, commit in groups, receipt only what is durable.

Batches from all gateway streams are checked on arrival (structure, signature,
chain position) and handed to one writer task that commits whatever has
accumulated in a single transaction. Each stream answers with receipts in the
order its batches arrived, each sent only after its batch's commit returned.
A re-sent batch gets a receipt marked `duplicate` and is not stored again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator
from concurrent.futures import Executor

import grpc

from hub.ingest.check import Placement, Reason, Rejection, check_signed_batch, place_in_chain
from hub.storage.store import NewBatch, Store
from protos import ingest_pb2 as ipb
from protos import ingest_pb2_grpc
from protos.canonical import encode_receipt
from protos.records import ReceiptStatement
from protos.signing import PublicKey, Signer, parse_public_key_pem

log = logging.getLogger("gridtrace.hub.ingest")


class StoreFailure(Exception):
    """The database refused a commit; the batches involved were not receipted."""


class Ingestor:
    """The ingest core shared by all streams: gateway keys, chain heads, the group-commit writer."""

    def __init__(self, store: Store, db: Executor, signer: Signer, chain_id: str, max_group: int = 256):
        self.store = store
        self.db = db
        self.signer = signer
        self.chain_id = chain_id
        self.max_group = max_group
        self.keys: dict[str, dict[str, PublicKey]] = {}
        self.heads: dict[str, tuple[int, bytes]] = {}
        self.pending: dict[tuple[str, int], tuple[bytes, asyncio.Future]] = {}
        self.accepted = Counter()
        self.rejected = Counter()
        self.streams = 0
        self._queue: list[tuple[NewBatch, asyncio.Future]] = []
        self._wake = asyncio.Event()
        self._writer: asyncio.Task | None = None
        self._keys_loaded_at = 0.0
        # Gateways whose in-memory head may be ahead of the database (after a failed commit).
        self._stale_heads: set[str] = set()

    async def _run_db(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.db, fn, *args)

    async def start(self) -> None:
        await self._load_keys()
        self.heads = await self._run_db(self.store.gateway_heads)
        self._writer = asyncio.create_task(self._write_loop(), name="ingest-writer")

    async def stop(self) -> None:
        """Commit what was accepted, then stop the writer."""
        while self._queue and self._writer is not None and not self._writer.done():
            self._wake.set()
            await asyncio.sleep(0.01)
        if self._writer:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)

    async def _load_keys(self) -> None:
        raw = await self._run_db(self.store.gateway_keys)
        self.keys = {
            gw: {kid: parse_public_key_pem(pem, f"key {kid} of gateway {gw}") for kid, pem in ks.items()}
            for gw, ks in raw.items()
        }
        self._keys_loaded_at = time.monotonic()

    async def submit(self, msg) -> asyncio.Future:
        """Check one batch; return a future that resolves to its receipt once durable."""
        try:
            try:
                checked = check_signed_batch(msg, self.keys)
            except Rejection as exc:
                # A gateway registered while we run: look again, at most once a second.
                if exc.reason is not Reason.UNKNOWN_GATEWAY or time.monotonic() - self._keys_loaded_at < 1.0:
                    raise
                await self._load_keys()
                checked = check_signed_batch(msg, self.keys)
            b = checked.batch
            if b.gateway_id in self._stale_heads:
                await self._reload_head(b.gateway_id)
            if place_in_chain(checked.header, self.heads.get(b.gateway_id)) is Placement.SEEN:
                return await self._resent(b)
        except Rejection as exc:
            self.rejected[exc.reason.label] += 1
            raise
        self.heads[b.gateway_id] = (b.seq, b.hash)
        fut = asyncio.get_running_loop().create_future()
        self.pending[(b.gateway_id, b.seq)] = (b.hash, fut)
        self._queue.append((b, fut))
        self._wake.set()
        return fut

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
        if stored is None or stored.hash != b.hash:
            raise fork
        fut = loop.create_future()
        fut.set_result(self._receipt(b, stored.stored_ns, duplicate=True))
        self.accepted["duplicate"] += 1
        return fut

    def _receipt(self, b: NewBatch, stored_ns: int, duplicate: bool) -> ipb.Receipt:
        stmt = ReceiptStatement(self.chain_id, b.gateway_id, b.seq, b.hash, stored_ns)
        return ipb.Receipt(
            chain_id=self.chain_id, gateway_id=b.gateway_id, batch_seq=b.seq, batch_hash=b.hash,
            stored_ns=stored_ns, duplicate=duplicate, key_id=self.signer.key_id,
            signature=self.signer.sign(encode_receipt(stmt)),
        )

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
            await self._run_db(self.store.store_batches, [b for b, _ in group], stored_ns)
        except Exception as exc:  # noqa: BLE001 - any database failure: nothing of the group receipted
            if len(group) == 1:
                self._fail_gateways(group, {group[0][0].gateway_id}, f"database commit failed: {exc}")
                return
            log.warning("commit of %d batches failed (%s); committing them one by one", len(group), exc)
            await self._commit_singly(group)
            return
        for b, fut in group:
            self._stored(b, fut, stored_ns)

    async def _commit_singly(self, group: list[tuple[NewBatch, asyncio.Future]]) -> None:
        """After a failed group commit, one bad batch must not fail the others; but a batch
        whose predecessor of the same gateway failed cannot be stored either."""
        failed: dict[str, str] = {}
        for b, fut in group:
            if b.gateway_id in failed:
                continue
            stored_ns = time.time_ns()
            try:
                await self._run_db(self.store.store_batches, [b], stored_ns)
            except Exception as exc:  # noqa: BLE001
                failed[b.gateway_id] = f"database commit failed: {exc}"
                continue
            self._stored(b, fut, stored_ns)
        for gw, why in failed.items():
            self._fail_gateways([item for item in group if item[0].gateway_id == gw], {gw}, why)

    def _stored(self, b: NewBatch, fut: asyncio.Future, stored_ns: int) -> None:
        self.pending.pop((b.gateway_id, b.seq), None)
        self.accepted["batches"] += 1
        self.accepted["entries"] += b.entry_count
        if not fut.done():
            fut.set_result(self._receipt(b, stored_ns, duplicate=False))

    def _fail_gateways(self, items: list[tuple[NewBatch, asyncio.Future]], gateways: set[str], why: str) -> None:
        """Nothing receipted for these batches, nor for queued later ones of the same gateways
        (they build on what was lost); those gateways' heads are re-read from the database."""
        later = [item for item in self._queue if item[0].gateway_id in gateways]
        self._queue = [item for item in self._queue if item[0].gateway_id not in gateways]
        for b, fut in [*items, *later]:
            log.error("gateway %s batch %d not stored: %s", b.gateway_id, b.seq, why)
            self.pending.pop((b.gateway_id, b.seq), None)
            if not fut.done():
                fut.set_exception(StoreFailure(why))
        self._stale_heads |= gateways


async def _drain(requests, idle_s: float = 0.3, limit_s: float = 2.0) -> None:  # noqa: ANN001
    """Read and drop what a gateway still has in flight before rejecting its stream.

    A gateway writing while the stream ends sees only a local write error, not our
    status; letting its window of in-flight batches arrive first means it is
    waiting for receipts, and reads the rejection with its reason.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    iterator = aiter(requests)
    while loop.time() < deadline:
        try:
            await asyncio.wait_for(anext(iterator), idle_s)
        except (StopAsyncIteration, TimeoutError, grpc.aio.AioRpcError):
            return


class IngestService(ingest_pb2_grpc.IngestServicer):
    def __init__(self, ingestor: Ingestor) -> None:
        self.ingestor = ingestor

    async def Stream(self, request_iterator, context: grpc.aio.ServicerContext) -> AsyncIterator[ipb.Receipt]:  # noqa: N802
        results: asyncio.Queue = asyncio.Queue()
        peer = context.peer()

        async def read() -> None:
            try:
                async for msg in request_iterator:
                    try:
                        fut = await self.ingestor.submit(msg)
                    except Rejection as exc:
                        await _drain(request_iterator)
                        await results.put(exc)
                        return
                    await results.put(fut)
            except (asyncio.CancelledError, grpc.aio.AioRpcError):
                pass
            except Exception as exc:  # noqa: BLE001 - reported to the gateway, not swallowed
                log.exception("ingest stream from %s failed", peer)
                await results.put(Rejection(Reason.INTERNAL, f"internal error: {exc}"))
                return
            finally:
                await results.put(None)

        self.ingestor.streams += 1
        reader = asyncio.create_task(read())
        try:
            while True:
                item = await results.get()
                if item is None:
                    return
                if isinstance(item, Rejection):
                    log.warning("rejected from %s: %s", peer, item.message)
                    await context.abort(getattr(grpc.StatusCode, item.reason.value), item.message)
                try:
                    # shield: a cancelled stream must not cancel a commit others wait on
                    receipt = await asyncio.shield(item)
                except StoreFailure as exc:
                    await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
                yield receipt
        finally:
            self.ingestor.streams -= 1
            reader.cancel()
