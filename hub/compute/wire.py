"""Masked tasks and answers on the wire (protos/compute.proto), and what a provider signs.

One definition each: `task_message`/`task_arrays` and `answer_x` are twins, and a provider signs
`answer_statement(task_digest(task bytes), x bytes)` which the owner checks with the provider's
key."""

from __future__ import annotations

import hashlib

import numpy as np
import scipy.sparse as sp

from hub.compute.masking import DROP_BELOW, MaskedTask, Matrix
from protos import compute_pb2 as cpb

ANSWER_DOMAIN = b"gridtrace compute answer v1\x00"
MAX_MESSAGE = 512 << 20  # a 9,241-node task with 1,878 right-hand sides is about 140 MB


class WireError(ValueError):
    """A task or answer whose arrays do not fit together; the message says which."""


def _csc_fields(m: sp.csc_matrix) -> tuple[bytes, bytes, bytes]:
    m = sp.csc_matrix(m)
    m.sort_indices()
    return m.indptr.astype("<i8").tobytes(), m.indices.astype("<i8").tobytes(), m.data.astype("<f8").tobytes()


def _csc(indptr: bytes, indices: bytes, data: bytes, shape: tuple[int, int], what: str) -> sp.csc_matrix:
    p, i, d = np.frombuffer(indptr, "<i8"), np.frombuffer(indices, "<i8"), np.frombuffer(data, "<f8")
    n, k = shape
    if len(p) != k + 1 or len(i) != len(d) or (k and p[-1] != len(d)) or (len(p) and p[0] != 0):
        raise WireError(f"{what}: sparse arrays do not fit n={n} (indptr {len(p)}, indices {len(i)}, data {len(d)})")
    if len(i) and (i.min() < 0 or i.max() >= n or np.any(np.diff(p) < 0)):
        raise WireError(f"{what}: sparse indices out of range")
    return sp.csc_matrix((d, i, p), shape=shape)


def task_message(task_id: str, task: MaskedTask) -> cpb.SolveTask:
    a = task.matrix
    indptr, indices, data = _csc_fields(a)
    msg = cpb.SolveTask(task_id=task_id, n=a.shape[0], k=task.rhs.shape[1], indptr=indptr, indices=indices, data=data)
    if sp.issparse(task.rhs):
        msg.rhs_indptr, msg.rhs_indices, msg.rhs_data = _csc_fields(task.rhs)
        msg.drop_below = DROP_BELOW
    else:
        msg.rhs = np.asfortranarray(task.rhs).astype("<f8").tobytes(order="F")
    return msg


def task_arrays(msg: cpb.SolveTask) -> MaskedTask:
    n, k = msg.n, msg.k
    matrix = _csc(msg.indptr, msg.indices, msg.data, (n, n), f"task {msg.task_id}")
    if msg.rhs_indptr:
        return MaskedTask(matrix, _csc(msg.rhs_indptr, msg.rhs_indices, msg.rhs_data, (n, k),
                                       f"task {msg.task_id}: right-hand side"))
    if len(msg.rhs) != 8 * n * k:
        raise WireError(f"task {msg.task_id}: right-hand side has {len(msg.rhs)} bytes, expected {8 * n * k}")
    return MaskedTask(matrix, np.frombuffer(msg.rhs, "<f8").reshape((n, k), order="F"))


def task_digest(raw: bytes) -> bytes:
    """SHA-256 of the task's bytes as sent: the owner digests what it sends, the provider what
    it received, and the answer's signature binds the two."""
    return hashlib.sha256(raw).digest()


def fill_answer(msg: cpb.SolveAnswer, x: Matrix) -> bytes:
    """Put X in the answer (sparse X in the sparse fields); the bytes its signature covers."""
    if sp.issparse(x):
        msg.x_indptr, msg.x_indices, msg.x_data = _csc_fields(x)
    else:
        msg.x = np.asfortranarray(x).astype("<f8").tobytes(order="F")
    return answer_payload(msg)


def answer_payload(msg: cpb.SolveAnswer) -> bytes:
    """The bytes of X in an answer, as its signature covers them."""
    return msg.x if msg.x else msg.x_indptr + msg.x_indices + msg.x_data


def answer_x(msg: cpb.SolveAnswer, n: int, k: int) -> Matrix:
    if msg.x_indptr:
        return _csc(msg.x_indptr, msg.x_indices, msg.x_data, (n, k), f"answer to {msg.task_id}")
    if len(msg.x) != 8 * n * k:
        raise WireError(f"answer to {msg.task_id}: {len(msg.x)} bytes, expected {8 * n * k}")
    return np.frombuffer(msg.x, "<f8").reshape((n, k), order="F").copy()


def matrix_digest(x: Matrix) -> str:
    """SHA-256 of a (dense or sparse) solution's values, for the records."""
    h = hashlib.sha256()
    if sp.issparse(x):
        for part in _csc_fields(x):
            h.update(part)
    else:
        h.update(np.asfortranarray(x).astype("<f8").tobytes(order="F"))
    return h.hexdigest()


def answer_statement(task_digest_: bytes, x: bytes) -> bytes:
    return ANSWER_DOMAIN + task_digest_ + hashlib.sha256(x).digest()
