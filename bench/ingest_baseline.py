"""The baseline server of bench/ingest.py: the same wire and the same rows, none of the evidence.

It serves `gridtrace.v1.Ingest/Stream` on the same TLS as the hub, decodes each
SignedBatch with the hub's own decode (`hub.ingest.check.entries_of` and
`hub.ingest.packscan.scan_pack` without the leaf hashes: every entry checked, its meter
and time read for the spans) and inserts the same rows through the
hub's `Store` into a fresh database of the same kind, committing in groups as the
hub's writer does. It does not check signatures, Merkle roots, chaining or time
ranges, seals no blocks, and answers each batch with a plain ack (gateway, seq and
batch hash, no signature) after its commit. So hub / baseline is what the
evidence costs on top of "receive and durably store".

    python bench/ingest_baseline.py --listen 127.0.0.1:7799 --database /tmp/base.sqlite \\
        --tls-cert hub/tls/hub.pem --tls-key hub/tls/hub.key

Runs until SIGTERM/SIGINT. Prints "listening" on stdout once it accepts streams.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

from gridtrace.signals import stop_on_signals
from hub.ingest.check import Verdict, checked_batch, entries_of  # the hub's decode, so both sides pay the same
from hub.ingest.packscan import scan_pack
from hub.storage.store import NewBatch, Store, sqlite_url
from protos import ingest_pb2 as ipb
from protos import readings_pb2 as pb
from protos.canonical import batch_hash
from protos.wire import header_from_pb


def decode(msg: pb.SignedBatch) -> NewBatch:
    """The rows the hub stores for this batch, decoded as the hub decodes them (entry scan,
    header), without any check of what they prove: no Merkle root, no signature."""
    header = header_from_pb(msg.header)
    where = f"gateway {header.gateway_id} batch {header.seq}"
    pack = entries_of(msg, where)
    scanned = scan_pack(pack, leaves=False)
    verdict = Verdict(header, batch_hash(header), bytes(msg.signature), pack, scanned.spans)
    return checked_batch(verdict).batch


class BaselineWriter:
    """Group commit on one database thread, as the hub's writer: whatever queued meanwhile."""

    def __init__(self, store: Store, max_group: int = 256) -> None:
        self.store = store
        self.max_group = max_group
        self.db = ThreadPoolExecutor(max_workers=1, thread_name_prefix="baseline-db")
        self._queue: list[tuple[NewBatch, asyncio.Future]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    def submit(self, b: NewBatch) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        self._queue.append((b, fut))
        self._wake.set()
        return fut

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                group, self._queue = self._queue[: self.max_group], self._queue[self.max_group :]
                stored_ns = time.time_ns()
                try:
                    await loop.run_in_executor(self.db, self.store.store_batches, [b for b, _ in group], stored_ns)
                except Exception as exc:  # noqa: BLE001 - every waiter learns it
                    for _, fut in group:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                for b, fut in group:
                    if not fut.done():
                        fut.set_result(ipb.Receipt(
                            gateway_id=b.gateway_id, batch_seq=b.seq, batch_hash=b.hash, stored_ns=stored_ns,
                        ))

    async def stop(self) -> None:
        while self._queue:
            self._wake.set()
            await asyncio.sleep(0.01)
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.db.shutdown(wait=True)


def stream_handler(writer: BaselineWriter):  # noqa: ANN201
    async def stream(request_iterator, context: grpc.aio.ServicerContext):  # noqa: ANN001, ANN202
        results: asyncio.Queue = asyncio.Queue()

        async def read() -> None:
            try:
                async for msg in request_iterator:
                    try:
                        await results.put(writer.submit(decode(msg)))
                    except Exception as exc:  # noqa: BLE001 - a malformed batch ends the stream
                        await results.put(exc)
                        return
            except (asyncio.CancelledError, grpc.aio.AioRpcError):
                pass
            finally:
                await results.put(None)

        reader = asyncio.create_task(read())
        try:
            while (item := await results.get()) is not None:
                if isinstance(item, Exception):
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"baseline: {item}")
                try:
                    yield await asyncio.shield(item)
                except Exception as exc:  # noqa: BLE001
                    await context.abort(grpc.StatusCode.UNAVAILABLE, f"baseline: commit failed: {exc}")
        finally:
            reader.cancel()

    return stream


async def serve(listen: str, database: str, tls_cert: Path | None, tls_key: Path | None, max_group: int) -> int:
    stop = asyncio.Event()
    stop_on_signals(stop)
    store = Store(database, background_checkpoints=True)  # the hub's storage settings
    store.create("baseline")
    writer = BaselineWriter(store, max_group)
    writer.start()
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)])
    handler = grpc.stream_stream_rpc_method_handler(
        stream_handler(writer), request_deserializer=pb.SignedBatch.FromString,
        response_serializer=ipb.Receipt.SerializeToString,
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("gridtrace.v1.Ingest", {"Stream": handler}),))
    if tls_cert is None or tls_key is None:
        port = server.add_insecure_port(listen)
    else:
        creds = grpc.ssl_server_credentials([(tls_key.read_bytes(), tls_cert.read_bytes())])
        port = server.add_secure_port(listen, creds)
    if port == 0:
        print(f"baseline: cannot listen on {listen}", file=sys.stderr)
        return 2
    await server.start()
    print(f"baseline listening on {listen}, database {database}", flush=True)
    try:
        await stop.wait()
    finally:
        await server.stop(grace=5.0)
        await writer.stop()
        store.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--listen", required=True)
    ap.add_argument("--database", required=True, help="a file path (SQLite) or an SQLAlchemy URL")
    ap.add_argument("--tls-cert", type=Path)
    ap.add_argument("--tls-key", type=Path)
    ap.add_argument("--max-group", type=int, default=256, help="batches per commit at most, as the hub")
    args = ap.parse_args(argv)
    database = args.database if "://" in args.database else sqlite_url(Path(args.database))
    return asyncio.run(serve(args.listen, database, args.tls_cert, args.tls_key, args.max_group))


if __name__ == "__main__":
    sys.exit(main())
