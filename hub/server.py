"""`gridtrace hub serve`: the hub process with its gRPC services and block producer.

All database work runs on one thread, in order, so SQLite sees one writer and
the ingest writer and block producer never interleave inside a transaction.
Batch checks run in verifier processes (`[ingest] verifier_processes`).
On SIGTERM/SIGINT the hub reports NOT_SERVING, its streams stop reading and
finish the batches they hold (checked, committed, receipted), the server stops,
everything receipted is sealed into blocks, the verifiers stop, and it exits.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from gridtrace.signals import stop_on_signals
from hub.chain.producer import BlockProducer
from hub.config import HubConfig
from hub.ingest.service import IngestService, Ingestor
from hub.ingest.verifier import InlineVerifier, VerifierPool
from hub.query import QueryService
from hub.storage.store import Store, StoreError
from protos import ingest_pb2, ingest_pb2_grpc
from protos.signing import Signer

log = logging.getLogger("gridtrace.hub")

SERVICE_NAMES = (
    ingest_pb2.DESCRIPTOR.services_by_name["Ingest"].full_name,
    ingest_pb2.DESCRIPTOR.services_by_name["Query"].full_name,
)


def server_credentials(cfg: HubConfig) -> grpc.ServerCredentials:
    assert cfg.tls_cert is not None and cfg.tls_key is not None
    return grpc.ssl_server_credentials([(cfg.tls_key.read_bytes(), cfg.tls_cert.read_bytes())])


async def serve(cfg: HubConfig, stop: asyncio.Event | None = None, ready: asyncio.Event | None = None) -> int:
    stop = stop or asyncio.Event()
    stop_on_signals(stop)
    loop = asyncio.get_running_loop()

    signer = Signer.from_file(cfg.key)
    store = Store(cfg.database_url)
    db = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hub-db")
    stored_chain = await loop.run_in_executor(db, store.chain_id)
    if stored_chain != cfg.chain_id:
        raise StoreError(f"database holds chain {stored_chain!r} but the config says {cfg.chain_id!r}")

    # Verifiers start before gRPC does, so the first batch finds them ready.
    verifier = VerifierPool(cfg.verifier_processes) if cfg.verifier_processes else InlineVerifier()
    ingestor = Ingestor(
        store, db, signer, cfg.chain_id, cfg.max_group_commit, verifier,
        max_pending_bytes=cfg.max_pending_mb << 20, max_in_flight_per_stream=cfg.max_in_flight_per_stream,
    )
    await ingestor.start()
    producer = BlockProducer(store, db, signer, cfg.chain_id, cfg.block_interval_s, cfg.max_batches_per_block)

    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            # Find gateways that lost power without closing their stream...
            ("grpc.keepalive_time_ms", 60_000),
            ("grpc.keepalive_timeout_ms", 20_000),
            # ...and accept the agents' own 20 s keepalive pings on idle streams.
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
        ]
    )
    server.add_generic_rpc_handlers((IngestService(ingestor).handler(),))
    ingest_pb2_grpc.add_QueryServicer_to_server(QueryService(store, db, signer, cfg.chain_id, ingestor), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    if cfg.insecure_plaintext:
        port = server.add_insecure_port(cfg.listen)
        log.warning("listening on %s WITHOUT TLS (insecure_plaintext, development only)", cfg.listen)
    else:
        port = server.add_secure_port(cfg.listen, server_credentials(cfg))
    if port == 0:
        raise OSError(f"cannot listen on {cfg.listen} (address in use or not available)")
    await server.start()
    for name in ("", *SERVICE_NAMES):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("hub %s (key %s) serving on %s", cfg.chain_id, signer.key_id, cfg.listen)

    producer_stop = asyncio.Event()
    producer_task = asyncio.create_task(producer.run(producer_stop), name="block-producer")
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        log.info("shutting down: finishing in-flight batches")
        for name in ("", *SERVICE_NAMES):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        # Streams read nothing more, finish what they hold (checked, committed, receipted)
        # and end with UNAVAILABLE; then the server stops and the writer drains.
        await ingestor.close(grace_s=5.0)
        await server.stop(grace=1.0)
        await ingestor.stop()
        producer_stop.set()
        await asyncio.gather(producer_task, return_exceptions=True)
        sealed = await loop.run_in_executor(db, producer.seal_all)
        if sealed:
            log.info("sealed %d final blocks", sealed)
        db.shutdown(wait=True)
        store.close()
    return 0
