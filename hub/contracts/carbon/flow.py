"""Carbon emission flow (Kang et al., Sci. Rep. 2, 479, 2012) in the form that conserves
emissions when the power flow has losses.

Carbon rides on active power. With `docs/carbon.md` for the derivation, the rules are:
* a node's intensity w_i (tCO2/MWh) is the carbon flowing into it per MW flowing out of it;
  what flows in is its producing units (their emissions) and its branches' deliveries;
* carbon travels along a branch at the branch's intensity: the power-weighted mean of the
  intensities of the nodes that feed it (one node for an ordinary line);
* a branch's losses carry that intensity; a branch fed at every terminal is a sink at all of
  them; loads, shunts and absorbing units are sinks at their node's intensity.

So, with T_i the power flowing out of node i (to consuming units and into branches it feeds),
E_i the emissions of its producing units, and d_rk the power branch k delivers at node r,

    T_i w_i - sum_k d_ik w_k = E_i,    w_k = sum_{f feeds k} p_fk w_f / sum_{f feeds k} p_fk

which is one sparse linear system A w = E in the node intensities (A = diag(T) - B), solved with
each row divided by T_i. Every MW leaving node i carries w_i, so the carbon out of a node equals
the carbon into it exactly, and summed over the network: emissions = sink emissions + loss
emissions, to floating point. The snapshot is reconciled first (`FlowSnapshot.reconciled`): the
power flow's mismatch at each node (within its tolerance; reported) is folded into the node's
largest flow, so that what flows out of a node is what flows in, and T_i is both.

Pure: a `FlowSnapshot` and emission factors in, arrays out. The factorisation of A is kept for
upstream tracing (`hub.contracts.carbon.tracing`), which solves A for one right-hand side per
producing unit. Either solve can be handed to compute providers instead (`solver`:
hub.compute.outsource), which see A and the right-hand sides only masked.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from hub.contracts.carbon.emission import EmissionFactors
from hub.contracts.carbon.snapshot import FlowSnapshot


class CarbonFlowError(ArithmeticError):
    """The carbon system could not be solved; the message says what in the network caused it."""


# Solves A X = B for the row-scaled A of a FlowSystem: locally (its own factorisation) or by
# outsourcing (hub.compute.outsource.Outsourcer.solve with the cycle bound).
SystemSolver = Callable[[sp.csc_matrix, np.ndarray], np.ndarray]


@dataclass(frozen=True, eq=False)
class FlowSystem:
    """The sparse system A w = E of a snapshot, factorised once."""

    matrix: sp.csc_matrix  # A = diag(T) - B, each row divided by T (rows of dead nodes: the identity)
    node_out_mw: np.ndarray  # T: power leaving each node
    unit_emission_t_per_h: np.ndarray  # E per producing unit (0 for the others)
    feeding: np.ndarray  # bool per terminal: the node feeds the branch there (p > 0)
    branch_feed_mw: np.ndarray  # power fed into each branch
    dead_nodes: np.ndarray  # nodes with nothing flowing out: intensity 0 by definition
    row_scale: np.ndarray  # 1/T per node (0 for dead nodes): what the rows of A were divided by

    @cached_property
    def lu(self) -> spla.SuperLU:
        """The factorisation, made on first use (an outsourced solve never makes it here)."""
        try:
            return spla.splu(self.matrix)
        except RuntimeError as exc:  # SuperLU: "Factor is exactly singular"
            raise CarbonFlowError(
                f"the carbon system of {self.matrix.shape[0]} nodes is singular ({exc}): active power circulates "
                "in a loop without losses, so no intensity is determined there"
            ) from exc

    def scaled(self, rhs: np.ndarray | sp.spmatrix) -> np.ndarray | sp.csc_matrix:
        """`rhs` with its rows divided as A's were (rows of dead nodes: 0)."""
        if sp.issparse(rhs):
            return sp.csc_matrix(sp.diags(self.row_scale) @ rhs)
        scale = self.row_scale if rhs.ndim == 1 else self.row_scale[:, None]
        return np.ascontiguousarray(rhs * scale)

    def solve(self, rhs: np.ndarray | sp.spmatrix, solver: SystemSolver | None = None) -> np.ndarray | sp.csc_matrix:
        """x with A x = rhs (rhs: one column per right-hand side, or a vector), here or by
        `solver`. A sparse rhs goes to `solver` as it is (its answer is sparse too); solved here,
        it is made dense."""
        if solver is not None:
            return solver(self.matrix, self.scaled(rhs))
        scaled = self.scaled(rhs)
        return self.lu.solve(scaled.toarray() if sp.issparse(scaled) else scaled)


@dataclass(frozen=True, eq=False)
class CarbonFlow:
    """The carbon emission flow of one snapshot. Signs follow the power's: a unit's carbon is
    positive when it emits and negative when it absorbs carbon with the power it consumes; a
    terminal's carbon is what flows into the branch there (negative where the branch delivers)."""

    snapshot: FlowSnapshot  # reconciled
    system: FlowSystem
    power_mismatch_mw: float  # the largest node mismatch of the power flow, folded away by reconciling
    node_intensity: np.ndarray  # tCO2/MWh
    unit_carbon_t_per_h: np.ndarray
    terminal_carbon_t_per_h: np.ndarray
    branch_intensity: np.ndarray  # tCO2/MWh of what travels along each branch
    branch_loss_mw: np.ndarray
    branch_loss_carbon_t_per_h: np.ndarray

    @property
    def emission_t_per_h(self) -> float:
        """What the producing units emit."""
        return float(self.system.unit_emission_t_per_h.sum())

    @property
    def sink_carbon_t_per_h(self) -> float:
        """What consuming units take with their power (loads, shunts, absorbing units)."""
        c = self.unit_carbon_t_per_h
        return float(-c[self.snapshot.unit_p_mw < 0].sum())

    @property
    def loss_carbon_t_per_h(self) -> float:
        return float(self.branch_loss_carbon_t_per_h.sum())

    @property
    def residual_t_per_h(self) -> float:
        """Emissions not accounted for by sinks and losses: 0 up to floating point."""
        return self.emission_t_per_h - self.sink_carbon_t_per_h - self.loss_carbon_t_per_h


def flow_system(s: FlowSnapshot, factors: EmissionFactors) -> FlowSystem:
    n = s.node_count
    producing = s.unit_p_mw > 0
    emission = np.zeros(len(s.unit_names))
    for i in np.flatnonzero(producing):
        emission[i] = factors.emission_t_per_h(s.unit_names[i], float(s.unit_p_mw[i]))

    feeding = s.terminal_p_mw > 0
    delivering = s.terminal_p_mw < 0
    consumed = np.where(producing, 0.0, -s.unit_p_mw)
    node_out = (np.bincount(s.unit_node, consumed, minlength=n)
                + np.bincount(s.terminal_node[feeding], s.terminal_p_mw[feeding], minlength=n))
    branch_feed = np.bincount(s.terminal_branch[feeding], s.terminal_p_mw[feeding], minlength=len(s.branch_names))

    # B[r, f] = d_r * p_f / F_k for each delivering terminal r and feeding terminal f of one
    # branch k: pair them by branch (a branch has two or three terminals, so this stays linear).
    f_idx = np.flatnonzero(feeding)
    f_idx = f_idx[np.argsort(s.terminal_branch[f_idx], kind="stable")]
    f_branch = s.terminal_branch[f_idx]
    r_idx = np.flatnonzero(delivering)
    r_branch = s.terminal_branch[r_idx]
    lo = np.searchsorted(f_branch, r_branch, "left")
    hi = np.searchsorted(f_branch, r_branch, "right")
    count = hi - lo
    r_rep = np.repeat(r_idx, count)
    f_rep = f_idx[np.repeat(lo, count) + (np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count))]
    k_rep = s.terminal_branch[r_rep]
    values = -s.terminal_p_mw[r_rep] * s.terminal_p_mw[f_rep] / branch_feed[k_rep]

    dead = node_out <= 0
    keep = ~dead[s.terminal_node[r_rep]]  # a node with no outflow gets w = 0: drop its row
    rows = s.terminal_node[r_rep][keep]
    # Row i divided by T_i: the diagonal is 1 and the rest are shares of the outflow, so a node
    # where almost nothing flows weighs like any other in the factorisation's pivoting.
    b = sp.coo_matrix((values[keep] / node_out[rows], (rows, s.terminal_node[f_rep][keep])), shape=(n, n))
    a = (sp.identity(n, format="csc") - b.tocsc()).tocsc()
    a.sum_duplicates()
    row_scale = np.where(dead, 0.0, 1.0 / np.where(dead, 1.0, node_out))
    return FlowSystem(a, node_out, emission, feeding, branch_feed, dead, row_scale)


def carbon_flow(s: FlowSnapshot, factors: EmissionFactors, solver: SystemSolver | None = None) -> CarbonFlow:
    """Intensities, branch carbon flows at every terminal, losses' carbon and sinks' carbon, of
    `s` reconciled (the returned flow's snapshot). `solver`: who solves the system (default:
    here, with SuperLU)."""
    mismatch = np.abs(s.node_mismatch_mw())
    s = s.reconciled()
    system = flow_system(s, factors)
    w = system.solve(np.bincount(s.unit_node, system.unit_emission_t_per_h, minlength=s.node_count), solver)
    if not np.all(np.isfinite(w)):
        raise CarbonFlowError("the carbon system's solution is not finite: the network's flows are inconsistent")

    unit_carbon = np.where(s.unit_p_mw > 0, system.unit_emission_t_per_h, s.unit_p_mw * w[s.unit_node])
    feeding = system.feeding
    m = len(s.branch_names)
    fed_carbon = np.bincount(s.terminal_branch[feeding], s.terminal_p_mw[feeding] * w[s.terminal_node[feeding]],
                             minlength=m)
    with np.errstate(invalid="ignore", divide="ignore"):
        branch_w = np.where(system.branch_feed_mw > 0, fed_carbon / system.branch_feed_mw, 0.0)
    terminal_carbon = np.where(feeding, s.terminal_p_mw * w[s.terminal_node],
                               s.terminal_p_mw * branch_w[s.terminal_branch])
    return CarbonFlow(
        snapshot=s,
        system=system,
        power_mismatch_mw=float(mismatch.max()) if len(mismatch) else 0.0,
        node_intensity=w,
        unit_carbon_t_per_h=unit_carbon,
        terminal_carbon_t_per_h=terminal_carbon,
        branch_intensity=branch_w,
        branch_loss_mw=np.bincount(s.terminal_branch, s.terminal_p_mw, minlength=m),
        branch_loss_carbon_t_per_h=np.bincount(s.terminal_branch, terminal_carbon, minlength=m),
    )
