"""The Query gRPC service: measurement certificates and hub status for clerks and operators."""

from __future__ import annotations

import asyncio
import json
import time
from concurrent.futures import Executor
from typing import Protocol

import grpc

from hub.certificates.build import CertificateUnavailable, EntriesUnavailable, build_certificate
from hub.metrics import HubMetrics
from hub.storage.store import Store
from protos import ingest_pb2 as ipb
from protos import ingest_pb2_grpc
from protos.canonical import decode_block_header
from protos.records import RecordError, check_id
from protos.signing import Signer


class PeriodSource(Protocol):
    async def complete_period(self, from_ns: int, to_ns: int) -> None:
        """Make every sealed entry of the period readable from this store (a replica with
        custody fetches the entries of header-only batches from the replicas that store them)."""


class QueryService(ingest_pb2_grpc.QueryServicer):
    def __init__(
        self, store: Store, db: Executor, signer: Signer, chain_id: str, ingestor=None,  # noqa: ANN001
        metrics: HubMetrics | None = None, peers: tuple[str, ...] = (), period_source: PeriodSource | None = None,
    ) -> None:
        self.period_source = period_source
        self.store = store
        self.db = db
        self.signer = signer
        self.chain_id = chain_id
        self.ingestor = ingestor
        self.metrics = metrics
        self.peers = peers

    async def GetCertificate(self, request, context):  # noqa: N802, ANN001
        try:
            check_id("meter_id", request.meter_id)
        except RecordError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if request.to_ns <= request.from_ns:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the period must end after it starts")
        loop = asyncio.get_running_loop()
        if self.period_source is not None:
            try:
                await self.period_source.complete_period(request.from_ns, request.to_ns)
            except EntriesUnavailable as exc:
                await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        try:
            built = await loop.run_in_executor(
                self.db, build_certificate, self.store, self.signer, self.chain_id,
                request.meter_id, request.from_ns, request.to_ns, time.time_ns(),
            )
        except CertificateUnavailable as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        return ipb.CertificateResponse(
            certificate_json=json.dumps(built.document, indent=1), unsealed_entries=built.unsealed_entries
        )

    async def GetStatus(self, request, context):  # noqa: N802, ANN001
        loop = asyncio.get_running_loop()

        def read():
            head = self.store.head()
            return head, self.store.counts(), sorted(self.store.gateway_keys())

        head, (n_batches, unsealed, n_entries), gateways = await loop.run_in_executor(self.db, read)
        return ipb.HubStatus(
            chain_id=self.chain_id,
            height=head.height if head else 0,
            head_hash=head.hash if head else b"",
            batches_stored=n_batches,
            batches_unsealed=unsealed,
            entries_stored=n_entries,
            gateways=gateways,
            head_time_ns=decode_block_header(head.header).time_ns if head else 0,
            now_ns=time.time_ns(),
            streams=self.ingestor.streams if self.ingestor is not None else 0,
            connected_gateways=self.metrics.connected() if self.metrics is not None else [],
            peers=list(self.peers),
        )

    async def GetGateways(self, request, context):  # noqa: N802, ANN001
        """Registered gateways with their last stored batch, and what this process saw of them."""
        loop = asyncio.get_running_loop()
        activity = dict(self.metrics.activity) if self.metrics is not None else {}

        def read():
            keys, heads = self.store.gateway_keys(), self.store.gateway_heads()
            last_ns = {}
            for gw, (seq, _) in heads.items():
                act = activity.get(gw)
                if act is not None and act.last_seq == seq:
                    last_ns[gw] = act.last_ns
                else:
                    stored = self.store.find_batch(gw, seq)
                    last_ns[gw] = stored.stored_ns if stored else 0
            return keys, heads, last_ns

        keys, heads, last_ns = await loop.run_in_executor(self.db, read)
        connected = set(self.metrics.connected()) if self.metrics is not None else set()
        now = time.time()
        out = ipb.GatewayList()
        for gw in sorted(set(keys) | set(heads)):
            act = activity.get(gw)
            info = out.gateways.add(
                gateway_id=gw, key_ids=sorted(keys.get(gw, {})), last_seq=heads.get(gw, (0, b""))[0],
                last_stored_ns=last_ns.get(gw, 0) or 0, connected=gw in connected,
            )
            if act is not None:
                info.batches, info.readings, info.duplicates = act.batches, act.readings, act.duplicates
                info.readings_per_s_1m = act.rate(now, 60)
                info.readings_per_s_15m = act.rate(now, 900)
                for reason, n in act.rejects.items():
                    info.rejects[reason] = n
        return out
