"""Masked tasks and answers on the wire (protos/compute.proto), and what a provider signs.

One definition each: `task_message`/`task_arrays` and `answer_x` are twins, and a provider signs
`answer_statement(task_digest(task bytes), x bytes)` which the owner checks with the provider's
key."""

from __future__ import annotations

import hashlib

import numpy as np
import scipy.sparse as sp

from hub.compute.masking import MaskedTask
from protos import compute_pb2 as cpb

ANSWER_DOMAIN = b"gridtrace compute answer v1\x00"
MAX_MESSAGE = 512 << 20  # a 9,241-node task with 1,878 right-hand sides is about 140 MB


class WireError(ValueError):
    """A task or answer whose arrays do not fit together; the message says which."""


def task_message(task_id: str, task: MaskedTask) -> cpb.SolveTask:
    a = task.matrix
    return cpb.SolveTask(
        task_id=task_id, n=a.shape[0], k=task.rhs.shape[1],
        indptr=a.indptr.astype("<i8").tobytes(), indices=a.indices.astype("<i8").tobytes(),
        data=a.data.astype("<f8").tobytes(), rhs=np.asfortranarray(task.rhs).astype("<f8").tobytes(order="F"),
    )


def task_arrays(msg: cpb.SolveTask) -> MaskedTask:
    n, k = msg.n, msg.k
    indptr = np.frombuffer(msg.indptr, "<i8")
    indices = np.frombuffer(msg.indices, "<i8")
    data = np.frombuffer(msg.data, "<f8")
    if len(indptr) != n + 1 or len(indices) != len(data) or (n and indptr[-1] != len(data)):
        raise WireError(f"task {msg.task_id}: sparse arrays do not fit n={n} "
                        f"(indptr {len(indptr)}, indices {len(indices)}, data {len(data)})")
    if len(msg.rhs) != 8 * n * k:
        raise WireError(f"task {msg.task_id}: right-hand side has {len(msg.rhs)} bytes, expected {8 * n * k}")
    if len(indices) and (indices.min() < 0 or indices.max() >= n or np.any(np.diff(indptr) < 0)):
        raise WireError(f"task {msg.task_id}: sparse indices out of range")
    matrix = sp.csc_matrix((data, indices, indptr), shape=(n, n))
    rhs = np.frombuffer(msg.rhs, "<f8").reshape((n, k), order="F")
    return MaskedTask(matrix, rhs)


def task_digest(raw: bytes) -> bytes:
    """SHA-256 of the task's bytes as sent: the owner digests what it sends, the provider what
    it received, and the answer's signature binds the two."""
    return hashlib.sha256(raw).digest()


def x_bytes(x: np.ndarray) -> bytes:
    return np.asfortranarray(x).astype("<f8").tobytes(order="F")


def answer_x(msg: cpb.SolveAnswer, n: int, k: int) -> np.ndarray:
    if len(msg.x) != 8 * n * k:
        raise WireError(f"answer to {msg.task_id}: {len(msg.x)} bytes, expected {8 * n * k}")
    return np.frombuffer(msg.x, "<f8").reshape((n, k), order="F")


def answer_statement(task_digest_: bytes, x: bytes) -> bytes:
    return ANSWER_DOMAIN + task_digest_ + hashlib.sha256(x).digest()
