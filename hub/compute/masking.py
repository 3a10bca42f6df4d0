"""Masking a sparse linear system before it leaves the data owner, and unmasking the answer.

The task is A X = B (n x n sparse A, n x k dense B). The owner draws, for each copy it sends,
a random permutation P, random positive diagonal scalings D_r, D_c and a random shift R
(n x k), and sends

    A' = D_r P A P^T D_c,    B' = D_r P (B + A R).

A provider that solves A' X' = B' returns X' = D_c^-1 P (X + R), from which the owner gets
X = P^T D_c X' - R.

A sparse B (tracing: one source per column) keeps a sparse shift: R has DECOYS random entries
per column, so B + A R hides the source among some thirty entries and the answer stays sparse
(X + R has the source's downstream and the decoys only). Dense 9,241 x 256 blocks shifted, sent
and checked twice made masked tracing 8 to 26 times the plain one. Permutations and diagonal scalings are the non-singular transformations that
keep A sparse (a dense one would make a 9,241-node task 680 MB). Rows and columns share one
permutation so that the diagonal stays on the diagonal: with independent ones, SuperLU's
pivoting on case9241pegase filled in so much that a provider's solve took 9 times longer.

What the provider does not learn: which node is which, the flows and emissions (B), the
intensities (X), A's entries. What it can learn: the network's graph up to relabelling, and
products of A's entries around its cycles (the scalings cancel out of them). docs/carbon.md
says so too.

Pure: numpy and scipy in, numpy and scipy out; the random generator is passed in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

SCALE_SPREAD = 8.0  # scalings are log-uniform in [1/8, 8]
RESIDUAL_RTOL = 1e-8  # an answer passes when |A X - B| <= this x (|A| |X| + |B|), per column
AGREE_RTOL = 1e-7  # two answers agree when they differ by at most this x the larger's size
DECOYS = 8  # random shift entries per column of a sparse B
DROP_BELOW = 1e-13  # a sparse answer leaves out entries this small against their column's largest

Matrix = np.ndarray | sp.spmatrix


@dataclass(frozen=True, eq=False)
class Mask:
    """What the owner keeps to unmask one copy's answer; it never leaves the owner."""

    perm: np.ndarray  # masked row and column i are original row and column perm[i]
    row_scale: np.ndarray
    col_scale: np.ndarray
    shift: Matrix  # R, n x k: dense for a dense B, sparse for a sparse one


@dataclass(frozen=True, eq=False)
class MaskedTask:
    matrix: sp.csc_matrix
    rhs: Matrix  # n x k, dense or sparse (CSC)


def _scales(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.exp(rng.uniform(-np.log(SCALE_SPREAD), np.log(SCALE_SPREAD), n))


def mask(a: sp.spmatrix, b: Matrix, rng: np.random.Generator) -> tuple[MaskedTask, Mask]:
    a = sp.csr_matrix(a)
    n = a.shape[0]
    b = sp.csc_matrix(b) if sp.issparse(b) else np.asarray(b, dtype=float).reshape(n, -1)
    k = b.shape[1]
    perm = rng.permutation(n)
    row_scale, col_scale = _scales(rng, n), _scales(rng, n)
    # The shift hides B and X behind values of their own size, column by column (a column of a
    # small source shifted by a large value would lose its digits when unmasked): X is at most
    # about |B| / |diag A|.
    diag = np.abs(a.diagonal())
    size = _column_max(b) / (diag[diag > 0].min() if (diag > 0).any() else 1.0)
    size = np.where(size > 0, size, 1.0)
    if sp.issparse(b):
        rows = rng.integers(0, n, DECOYS * k)
        cols = np.repeat(np.arange(k), DECOYS)
        values = rng.uniform(-1.0, 1.0, DECOYS * k) * size[cols]
        shift = sp.csc_matrix((values, (rows, cols)), shape=(n, k))
        rhs = sp.csc_matrix(sp.diags(row_scale) @ (b + a @ shift).tocsr()[perm])
    else:
        shift = rng.uniform(-1.0, 1.0, b.shape) * size
        rhs = row_scale[:, None] * (b + a @ shift)[perm]
    masked = sp.diags(row_scale) @ a[perm][:, perm] @ sp.diags(col_scale)
    return MaskedTask(sp.csc_matrix(masked), rhs), Mask(perm, row_scale, col_scale, shift)


def unmask(m: Mask, x_masked: Matrix) -> Matrix:
    n = len(m.perm)
    if sp.issparse(x_masked):
        back = sp.csr_matrix((m.col_scale, (m.perm, np.arange(n))), shape=(n, n))  # P^T D_c
        return sp.csc_matrix(back @ x_masked - m.shift)
    z = np.empty((n, m.shift.shape[1]))
    z[m.perm] = x_masked.reshape(n, -1) * m.col_scale[:, None]
    return z - m.shift


def _column_max(x: Matrix) -> np.ndarray:
    if sp.issparse(x):
        return abs(x).max(axis=0).toarray().ravel() if x.shape[0] else np.zeros(x.shape[1])
    return np.abs(x).max(axis=0) if x.shape[0] else np.zeros(x.shape[1])


def _as_columns(x: Matrix, n: int) -> Matrix:
    return sp.csc_matrix(x) if sp.issparse(x) else np.asarray(x).reshape(n, -1)


def residual_ok(a: sp.spmatrix, x: Matrix, b: Matrix, rtol: float = RESIDUAL_RTOL) -> bool:
    """Whether X solves A X = B: the owner's own check, one sparse product (no solve)."""
    n = a.shape[0]
    x, b = _as_columns(x, n), _as_columns(b, n)
    values = x.data if sp.issparse(x) else x
    if x.shape != b.shape or not np.all(np.isfinite(values)):
        return False
    r = _column_max(a @ x - b)
    norm_a = abs(a).sum(axis=1).max() if n else 0.0
    bound = rtol * (norm_a * _column_max(x) + _column_max(b)) + 1e-300
    return bool(np.all(r <= bound))


def agree(x1: Matrix, x2: Matrix, rtol: float = AGREE_RTOL) -> bool:
    if x1.shape != x2.shape:
        return False
    size = max(float(_column_max(x1).max(initial=0.0)), float(_column_max(x2).max(initial=0.0)), 1e-300)
    return bool(_column_max(x1 - x2).max(initial=0.0) <= rtol * size)


def sparse_answer(x: np.ndarray, drop_below: float = DROP_BELOW) -> sp.csc_matrix:
    """A dense solution as the sparse answer to a sparse task: entries at most `drop_below` of
    their column's largest are rounding residue of the shift cancelling, and left out."""
    x = np.asarray(x)
    keep = np.abs(x) > drop_below * np.abs(x).max(axis=0, initial=0.0)
    return sp.csc_matrix(np.where(keep, x, 0.0))
