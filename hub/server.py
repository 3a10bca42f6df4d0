"""`gridtrace hub serve`: the hub process with its gRPC services and block producer.

With `[consensus] replica` in hub.toml the hub is one of a substation's PBFT replicas: no
block producer; blocks are what the replicas decide (hub/chain/replicated.py), and receipts
wait for them.

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
from hub.chain.replicated import ReplicatedChain
from hub.consensus.replica_config import load_replica_config
from hub.config import HubConfig, redact_url
from hub.ingest.service import IngestService, Ingestor
from hub.ingest.verifier import InlineVerifier, VerifierPool
from hub.metrics import HubMetrics
from hub.query import QueryService
from hub.storage.store import Store
from protos import ingest_pb2, ingest_pb2_grpc, merkle
from protos.canonical import decode_block_header
from protos.signing import Signer

log = logging.getLogger("gridtrace.hub")

SERVICE_NAMES = (
    ingest_pb2.DESCRIPTOR.services_by_name["Ingest"].full_name,
    ingest_pb2.DESCRIPTOR.services_by_name["Query"].full_name,
)


def server_credentials(cfg: HubConfig) -> grpc.ServerCredentials:
    assert cfg.tls_cert is not None and cfg.tls_key is not None
    return grpc.ssl_server_credentials([(cfg.tls_key.read_bytes(), cfg.tls_cert.read_bytes())])


class DatabaseWatch:
    """Keeps gRPC health in step with the database: a failing database (a health query that
    fails or hangs, or an ingest commit that failed last) turns every service NOT_SERVING, so
    load balancers and container health checks stop sending gateways to this hub."""

    def __init__(self, store: Store, db: ThreadPoolExecutor, health_servicer: health.aio.HealthServicer,
                 metrics: HubMetrics, interval_s: float, chain: ReplicatedChain | None = None) -> None:
        self.store, self.db, self.health, self.metrics = store, db, health_servicer, metrics
        self.chain = chain
        self.interval_s = interval_s
        self.serving: bool | None = None

    async def check(self) -> bool:
        loop = asyncio.get_running_loop()
        problem = None
        try:
            # On the database thread: a writer stuck in a commit is a failing database too.
            await asyncio.wait_for(loop.run_in_executor(self.db, self.store.chain_id), max(5.0, self.interval_s))
        except TimeoutError:
            problem = "the database did not answer in time"
        except Exception as exc:  # noqa: BLE001 - any failure means not serving; the cause is logged
            problem = f"the database failed: {exc}"
        if problem is None and self.metrics.last_commit_failed:
            problem = "the last ingest commit failed"
        if problem is None and self.chain is not None and self.chain.stopped:
            problem = self.chain.stopped
        await self.set(problem is None, problem)
        return problem is None

    async def set(self, serving: bool, problem: str | None = None) -> None:
        self.metrics.database_health(serving)
        if serving == self.serving:
            return
        self.serving = serving
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, status)
        if serving:
            log.info("database healthy: serving", extra={"status": "SERVING"})
        elif problem is None:
            log.info("not serving: shutting down", extra={"status": "NOT_SERVING"})
        else:
            log.error("%s: NOT_SERVING until it recovers", problem, extra={"status": "NOT_SERVING", "reason": problem})

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), self.interval_s)
            except TimeoutError:
                pass
            if not stop.is_set():
                await self.check()


async def serve(
    cfg: HubConfig, stop: asyncio.Event | None = None, ready: asyncio.Event | None = None,
    metrics: HubMetrics | None = None,
) -> int:
    stop = stop or asyncio.Event()
    stop_on_signals(stop)
    loop = asyncio.get_running_loop()
    metrics = metrics or HubMetrics()

    signer = Signer.from_file(cfg.key)
    replica_cfg = load_replica_config(cfg.consensus_replica) if cfg.consensus_replica else None
    raw_store = Store(cfg.database_url, background_checkpoints=True)
    store = metrics.timed_store(raw_store)
    db = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hub-db")
    # Refuse a database at another schema revision (or on another chain) before binding any port:
    # the message tells the operator to run `gridtrace hub migrate --config <this hub.toml>`.
    try:
        await loop.run_in_executor(db, raw_store.open_existing, cfg.chain_id, str(cfg.path))
    except BaseException:
        db.shutdown(wait=True)
        raw_store.close()
        raise

    def chain_state() -> None:
        head = store.head()
        _, unsealed, _ = store.counts()
        time_ns = decode_block_header(head.header).time_ns if head else 0
        metrics.chain_state(head.height if head else 0, time_ns, unsealed)

    await loop.run_in_executor(db, chain_state)
    # Verifiers start before gRPC does, so the first batch finds them ready.
    verifier = VerifierPool(cfg.verifier_processes) if cfg.verifier_processes else InlineVerifier()
    ingestor = Ingestor(
        store, db, signer, cfg.chain_id, cfg.max_group_commit, verifier,
        max_pending_bytes=cfg.max_pending_mb << 20, max_in_flight_per_stream=cfg.max_in_flight_per_stream,
        metrics=metrics,
    )
    await ingestor.start()
    metrics.queue_depth.labels("commit").set_function(lambda: ingestor.commit_queue_depth)
    chain: ReplicatedChain | None = None
    producer: BlockProducer | None = None
    if replica_cfg is not None:
        chain = ReplicatedChain(store, db, ingestor, cfg.chain_id, replica_cfg, metrics=metrics)
        ingestor.sealing = chain
        await chain.start()
    else:
        producer = BlockProducer(
            store, db, signer, cfg.chain_id, cfg.block_interval_s, cfg.max_batches_per_block, metrics=metrics
        )

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
    ingest_pb2_grpc.add_QueryServicer_to_server(
        QueryService(store, db, signer, cfg.chain_id, ingestor, metrics=metrics, peers=cfg.replicas,
                     period_source=chain), server
    )
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
    try:
        metrics_server = metrics.serve_http(cfg.metrics_listen) if cfg.metrics_listen else None
    except OSError as exc:
        raise OSError(f"cannot serve metrics on {cfg.metrics_listen} ([metrics] listen): {exc.strerror}") from exc
    await server.start()
    watch = DatabaseWatch(store, db, health_servicer, metrics, cfg.health_interval_s, chain)
    await watch.check()
    log.info(
        "hub %s (key %s) serving on %s, database %s, metrics %s", cfg.chain_id, signer.key_id, cfg.listen,
        redact_url(cfg.database_url), cfg.metrics_listen or "off",
        extra={"chain": cfg.chain_id, "key_id": signer.key_id, "address": cfg.listen},
    )

    producer_stop = asyncio.Event()
    producer_task = asyncio.create_task(
        producer.run(producer_stop) if producer is not None else producer_stop.wait(), name="block-producer"
    )
    watch_stop = asyncio.Event()
    watch_task = asyncio.create_task(watch.run(watch_stop), name="database-watch")
    if not merkle.NATIVE:
        log.warning(
            "Merkle hashing through hashlib: the native module was not built (no OpenSSL headers at install "
            "time), so ingest needs more CPU per reading; install libssl-dev and reinstall gridtrace"
        )
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        log.info("shutting down: finishing in-flight batches")
        watch_stop.set()
        await asyncio.gather(watch_task, return_exceptions=True)
        await watch.set(False)
        # Streams read nothing more, finish what they hold (checked, committed, receipted)
        # and end with UNAVAILABLE; then the server stops and the writer drains.
        await ingestor.close(grace_s=5.0)
        await server.stop(grace=1.0)
        await ingestor.stop()
        producer_stop.set()
        await asyncio.gather(producer_task, return_exceptions=True)
        if producer is not None:
            sealed = await loop.run_in_executor(db, producer.seal_all)
            if sealed:
                log.info("sealed %d final blocks", sealed, extra={"height": producer.height})
        if chain is not None:
            await chain.stop()
        db.shutdown(wait=True)
        raw_store.close()
        if metrics_server is not None:
            metrics_server.shutdown()
            metrics_server.server_close()
    return 0
