"""Masking a sparse linear system before it leaves the data owner, and unmasking the answer.

The task is A X = B (n x n sparse A, n x k dense B). The owner draws, for each copy it sends,
a random permutation P, random positive diagonal scalings D_r, D_c and a random shift R
(n x k), and sends

    A' = D_r P A P^T D_c,    B' = D_r P (B + A R).

A provider that solves A' X' = B' returns X' = D_c^-1 P (X + R), from which the owner gets
X = P^T D_c X' - R. Permutations and diagonal scalings are the non-singular transformations that
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


@dataclass(frozen=True, eq=False)
class Mask:
    """What the owner keeps to unmask one copy's answer; it never leaves the owner."""

    perm: np.ndarray  # masked row and column i are original row and column perm[i]
    row_scale: np.ndarray
    col_scale: np.ndarray
    shift: np.ndarray  # R, n x k


@dataclass(frozen=True, eq=False)
class MaskedTask:
    matrix: sp.csc_matrix
    rhs: np.ndarray  # n x k


def _scales(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.exp(rng.uniform(-np.log(SCALE_SPREAD), np.log(SCALE_SPREAD), n))


def mask(a: sp.spmatrix, b: np.ndarray, rng: np.random.Generator) -> tuple[MaskedTask, Mask]:
    a = sp.csr_matrix(a)
    n = a.shape[0]
    b = b.reshape(n, -1)
    perm = rng.permutation(n)
    row_scale, col_scale = _scales(rng, n), _scales(rng, n)
    # The shift hides B and X behind values of their own size: X is at most about |B| / |diag A|.
    diag = np.abs(a.diagonal())
    size = (np.abs(b).max() if b.size else 0.0) / (diag[diag > 0].min() if (diag > 0).any() else 1.0) + 1.0
    shift = rng.uniform(-size, size, b.shape)
    shifted = b + a @ shift
    masked = sp.diags(row_scale) @ a[perm][:, perm] @ sp.diags(col_scale)
    task = MaskedTask(sp.csc_matrix(masked), row_scale[:, None] * shifted[perm])
    return task, Mask(perm, row_scale, col_scale, shift)


def unmask(m: Mask, x_masked: np.ndarray) -> np.ndarray:
    n = len(m.perm)
    z = np.empty((n, m.shift.shape[1]))
    z[m.perm] = x_masked.reshape(n, -1) * m.col_scale[:, None]
    return z - m.shift


def residual_ok(a: sp.spmatrix, x: np.ndarray, b: np.ndarray, rtol: float = RESIDUAL_RTOL) -> bool:
    """Whether X solves A X = B: the owner's own check, one sparse product (no solve)."""
    n = a.shape[0]
    x, b = x.reshape(n, -1), b.reshape(n, -1)
    if x.shape != b.shape or not np.all(np.isfinite(x)):
        return False
    r = np.abs(a @ x - b).max(axis=0) if n else np.zeros(b.shape[1])
    norm_a = abs(a).sum(axis=1).max() if n else 0.0
    bound = rtol * (norm_a * np.abs(x).max(axis=0) + np.abs(b).max(axis=0)) + 1e-300
    return bool(np.all(r <= bound))


def agree(x1: np.ndarray, x2: np.ndarray, rtol: float = AGREE_RTOL) -> bool:
    if x1.shape != x2.shape:
        return False
    size = max(float(np.abs(x1).max(initial=0.0)), float(np.abs(x2).max(initial=0.0)), 1e-300)
    return bool(np.abs(x1 - x2).max(initial=0.0) <= rtol * size)
