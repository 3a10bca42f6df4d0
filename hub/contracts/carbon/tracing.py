"""Upstream tracing: how much of each consuming unit's power and carbon comes from each source.

The carbon system is linear in the emissions: solving A y_g = P_g e_node(g) for one producing
unit g gives y_g[i], the share of node i's outflow that came from g (proportional sharing).
A load L at node i then takes P_L y_g[i] MW from g, carrying P_L y_g[i] e_g tCO2/h, where e_g is
g's intensity. Summed over the producing units these are the load's power and its emissions
P_L w_i, the same figure `carbon_flow` gives, because w = sum_g e_g y_g.

The factorisation of A is the one `flow_system` made; the right-hand sides are solved in
blocks, so memory stays at nodes x block whatever the number of units.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from hub.contracts.carbon.flow import CarbonFlow, SystemSolver

BLOCK = 256  # right-hand sides per solve: 256 x nodes doubles (19 MB at 9,241 nodes)


@dataclass(frozen=True, eq=False)
class Shares:
    """Rows: the consuming units traced (`sinks`, indices into the snapshot's units); columns:
    the producing units (`sources`). Entries: MW and tCO2/h the sink takes from the source; the
    two matrices have one sparsity pattern (a clean source's share is an entry with 0 tCO2/h)."""

    sinks: np.ndarray
    sources: np.ndarray
    mw: sp.csr_matrix
    carbon_t_per_h: sp.csr_matrix

    def residual_t_per_h(self, flow: CarbonFlow) -> np.ndarray:
        """Per sink: its carbon minus the sum of its shares (0 up to floating point)."""
        total = -flow.unit_carbon_t_per_h[self.sinks]
        return total - np.asarray(self.carbon_t_per_h.sum(axis=1)).ravel()


def trace(flow: CarbonFlow, sinks: np.ndarray | None = None, solver: SystemSolver | None = None,
          block: int = BLOCK) -> Shares:
    """Shares of every producing unit in each of `sinks` (default: every consuming unit).
    `solver`: who solves each block of right-hand sides (default: here)."""
    s = flow.snapshot
    producing = np.flatnonzero(s.unit_p_mw > 0)
    if sinks is None:
        sinks = np.flatnonzero(s.unit_p_mw < 0)
    sinks = np.asarray(sinks, dtype=np.int64)
    n = s.node_count
    sink_nodes = s.unit_node[sinks]
    sink_mw = -s.unit_p_mw[sinks]
    intensity = flow.system.unit_emission_t_per_h[producing] / s.unit_p_mw[producing]

    blocks = []
    for start in range(0, len(producing), block):
        cols = producing[start : start + block]
        # one column per unit, its power on its node (sparse: an outsourced solve keeps it so)
        rhs = sp.csc_matrix((s.unit_p_mw[cols], (s.unit_node[cols], np.arange(len(cols)))), shape=(n, len(cols)))
        y = flow.system.solve(rhs, solver)  # share of each node's outflow from each unit
        if sp.issparse(y):
            mw = sp.csr_matrix(sp.csr_matrix(y)[sink_nodes].multiply(sink_mw[:, None]))
            mw.data[mw.data <= 0] = 0.0  # proportional sharing only adds; tiny negatives are rounding
            mw.eliminate_zeros()
        else:
            mw = y[sink_nodes] * sink_mw[:, None]
            mw[mw <= 0] = 0.0
            mw = sp.csr_matrix(mw)
        blocks.append(mw)
    mw = sp.hstack(blocks, format="csr") if blocks else sp.csr_matrix((len(sinks), 0))
    mw.sum_duplicates()
    carbon = sp.csr_matrix((mw.data * intensity[mw.indices], mw.indices, mw.indptr), shape=mw.shape)
    return Shares(sinks, producing, mw, carbon)
