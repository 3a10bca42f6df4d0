"""The Query gRPC service: measurement certificates and hub status for clerks and operators."""

from __future__ import annotations

import asyncio
import json
import time
from concurrent.futures import Executor

import grpc

from hub.certificates.build import CertificateUnavailable, build_certificate
from hub.storage.store import Store
from protos import ingest_pb2 as ipb
from protos import ingest_pb2_grpc
from protos.records import RecordError, check_id
from protos.signing import Signer


class QueryService(ingest_pb2_grpc.QueryServicer):
    def __init__(self, store: Store, db: Executor, signer: Signer, chain_id: str, ingestor=None) -> None:  # noqa: ANN001
        self.store = store
        self.db = db
        self.signer = signer
        self.chain_id = chain_id
        self.ingestor = ingestor

    async def GetCertificate(self, request, context):  # noqa: N802, ANN001
        try:
            check_id("meter_id", request.meter_id)
        except RecordError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if request.to_ns <= request.from_ns:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the period must end after it starts")
        loop = asyncio.get_running_loop()
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
        )
