"""A compute provider: solves masked sparse systems for data owners and signs its answers.

`gridtrace compute serve` runs it. It sees only masked tasks (hub/compute/masking.py). The
solver is a parameter so that tests can stand up providers that answer wrongly, randomly or
never, through the same service."""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent import futures

import grpc
import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from google.protobuf.message import DecodeError

from hub.compute.masking import MaskedTask, sparse_answer
from hub.compute.wire import (
    MAX_MESSAGE,
    WireError,
    answer_statement,
    fill_answer,
    task_arrays,
    task_digest,
)
from protos import compute_pb2 as cpb
from protos.signing import Signer

log = logging.getLogger("gridtrace.compute")

Solver = Callable[[MaskedTask], np.ndarray]


DIAG_PIVOT_THRESH = 0.01


def sparse_lu_solve(task: MaskedTask) -> np.ndarray:
    """The honest solver: SuperLU, one factorisation for all right-hand sides (dense result).

    Pivots stay on the diagonal unless it is under 1 % of its column's largest entry. With
    SuperLU's default (the largest entry, always) the masking's random scalings made it pivot
    off the diagonal on some masks, filling in the factors: one 256-column block of
    case9241pegase took 12 s instead of 0.4 s. The carbon system is diagonally dominant, and
    masking with one permutation keeps its diagonal there, so diagonal pivots are stable."""
    rhs = task.rhs.toarray() if sp.issparse(task.rhs) else np.ascontiguousarray(task.rhs)
    return spla.splu(task.matrix, diag_pivot_thresh=DIAG_PIVOT_THRESH).solve(rhs)


SERVICE = "gridtrace.compute.v1.Compute"
SOLVE_METHOD = f"/{SERVICE}/Solve"


class ComputeService:
    """Solve takes the task's bytes as received, so that the digest it signs is of those bytes."""

    def __init__(self, signer: Signer, solver: Solver = sparse_lu_solve) -> None:
        self.signer = signer
        self.solver = solver

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(SERVICE, {"Solve": grpc.unary_unary_rpc_method_handler(
            self.Solve, request_deserializer=None, response_serializer=cpb.SolveAnswer.SerializeToString)})

    def Solve(self, raw: bytes, context: grpc.ServicerContext) -> cpb.SolveAnswer:
        try:
            request = cpb.SolveTask.FromString(raw)
            task = task_arrays(request)
        except WireError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except DecodeError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"not a SolveTask: {exc}")
        try:
            x = self.solver(task)
        except RuntimeError as exc:  # SuperLU: singular
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"task {request.task_id}: {exc}")
        if sp.issparse(task.rhs):
            x = sparse_answer(x, request.drop_below)
        answer = cpb.SolveAnswer(task_id=request.task_id, provider_id=self.signer.key_id)
        x_raw = fill_answer(answer, x)
        answer.signature = self.signer.sign(answer_statement(task_digest(raw), x_raw))
        log.info("solved task %s: n=%d k=%d", request.task_id, request.n, request.k)
        return answer


def start_provider(listen: str, signer: Signer, solver: Solver = sparse_lu_solve,
                   credentials: grpc.ServerCredentials | None = None) -> tuple[grpc.Server, int]:
    """A running provider server and its port (`listen` may end in :0)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4),
                         options=[("grpc.max_receive_message_length", MAX_MESSAGE),
                                  ("grpc.max_send_message_length", MAX_MESSAGE)])
    server.add_generic_rpc_handlers((ComputeService(signer, solver).handler(),))
    port = server.add_secure_port(listen, credentials) if credentials else server.add_insecure_port(listen)
    server.start()
    return server, port
