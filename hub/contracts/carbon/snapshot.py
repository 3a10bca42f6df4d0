"""A solved power flow reduced to what carbon follows: the active power at every terminal.

Carbon emission flow needs nothing of a power flow but where active power enters and leaves
each node. A snapshot holds that as flat arrays, whatever produced it (pandapower's AC or DC
solution, a test's hand-made network, later a masked task's unmasked answer), so that the
carbon computation is a pure function of a snapshot and the emission factors.

Two kinds of element touch the nodes:
* units, with one terminal: generators, external grids, loads, shunts, storage, wards. Their
  power is an injection into the node: positive when they produce, negative when they consume.
* branches, with two or more terminals: lines, transformers (two or three windings), series
  impedances, DC lines. Their power at a terminal is what flows into the branch from that node
  (pandapower's `p_from_mw`, `p_to_mw`, `p_hv_mw`, ...): positive where the node feeds the branch,
  negative where the branch delivers to the node. The sum over a branch's terminals is its loss.

Nodes are positions 0..n-1. `bus_node` says which node each network bus is (buses joined by a
closed bus-bus switch are one node).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

NOISE_MW = 1e-8  # pandapower's default power flow tolerance (1e-8 MVA): flows below it are not told from 0


class SnapshotError(ValueError):
    """A snapshot whose arrays do not describe one network; the message says which."""


@dataclass(frozen=True, eq=False)
class FlowSnapshot:
    bus_node: dict[int, int]  # network bus index -> node
    node_count: int
    unit_names: tuple[str, ...]  # "gen:3", "load:0", ...
    unit_node: np.ndarray  # int64, per unit
    unit_p_mw: np.ndarray  # float64, per unit: injection into its node
    unit_bus: np.ndarray  # int64, per unit: the network bus it is connected to
    branch_names: tuple[str, ...]  # "line:7", "trafo:2", ...
    terminal_branch: np.ndarray  # int64, per terminal: index into branch_names
    terminal_node: np.ndarray  # int64, per terminal
    terminal_p_mw: np.ndarray  # float64, per terminal: flow into the branch
    terminal_bus: np.ndarray  # int64, per terminal: the network bus it is connected to
    solution: str = "ac"  # "ac", or "dc" when the AC power flow did not converge

    def __post_init__(self) -> None:
        n_units, n_terms = len(self.unit_names), len(self.terminal_branch)
        for name, arr, size in (("unit_node", self.unit_node, n_units), ("unit_p_mw", self.unit_p_mw, n_units),
                                ("unit_bus", self.unit_bus, n_units), ("terminal_node", self.terminal_node, n_terms),
                                ("terminal_p_mw", self.terminal_p_mw, n_terms),
                                ("terminal_bus", self.terminal_bus, n_terms)):
            if arr.shape != (size,):
                raise SnapshotError(f"{name} has shape {arr.shape}, expected ({size},)")
        for name, arr in (("unit_node", self.unit_node), ("terminal_node", self.terminal_node)):
            if arr.size and (arr.min() < 0 or arr.max() >= self.node_count):
                raise SnapshotError(f"{name} refers to a node outside 0..{self.node_count - 1}")
        if self.terminal_branch.size and (self.terminal_branch.min() < 0
                                          or self.terminal_branch.max() >= len(self.branch_names)):
            raise SnapshotError("terminal_branch refers to a branch that is not named")
        for name, arr in (("unit_p_mw", self.unit_p_mw), ("terminal_p_mw", self.terminal_p_mw)):
            if not np.all(np.isfinite(arr)):
                raise SnapshotError(f"{name} holds values that are not finite")
        if self.solution not in ("ac", "dc"):
            raise SnapshotError(f"solution is {self.solution!r}, expected 'ac' or 'dc'")

    def node_mismatch_mw(self) -> np.ndarray:
        """Per node: injections of units minus flows into branches; 0 in a solved power flow up
        to the solver's tolerance (pandapower's default is 1e-8 MVA)."""
        n = self.node_count
        return (np.bincount(self.unit_node, self.unit_p_mw, minlength=n)
                - np.bincount(self.terminal_node, self.terminal_p_mw, minlength=n))

    def reconciled(self, noise_mw: float = NOISE_MW) -> FlowSnapshot:
        """This snapshot made to balance at every node: flows smaller than `noise_mw` set to 0,
        then each node's mismatch folded into the largest flow at that node, so that what flows
        into every node is what flows out of it (up to rounding). Both changes are within the
        power flow's tolerance. They let a node's intensity be both the mean of what flows in
        and the carbon per MW flowing out, and keep a node where nothing really flows from getting
        an intensity that is the ratio of two rounding errors."""
        unit_p = np.where(np.abs(self.unit_p_mw) < noise_mw, 0.0, self.unit_p_mw)
        terminal_p = np.where(np.abs(self.terminal_p_mw) < noise_mw, 0.0, self.terminal_p_mw)
        n = self.node_count
        mismatch = np.bincount(self.unit_node, unit_p, minlength=n) - np.bincount(self.terminal_node, terminal_p,
                                                                                   minlength=n)
        n_units = len(self.unit_names)
        nodes = np.concatenate([self.unit_node, self.terminal_node])
        size = np.abs(np.concatenate([unit_p, terminal_p]))
        order = np.lexsort((np.arange(len(nodes)), -size, nodes))  # per node: largest first, then lowest index
        largest = order[np.r_[True, nodes[order][1:] != nodes[order][:-1]]] if len(order) else order
        largest = largest[mismatch[nodes[largest]] != 0]
        in_units = largest[largest < n_units]
        unit_p[in_units] -= mismatch[nodes[in_units]]
        in_terminals = largest[largest >= n_units]
        terminal_p[in_terminals - n_units] += mismatch[nodes[in_terminals]]
        return replace(self, unit_p_mw=unit_p, terminal_p_mw=terminal_p)
