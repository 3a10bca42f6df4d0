"""Networks in, power flow solved by pandapower, a `FlowSnapshot` out.

This is the one module that talks to pandapower: it loads a network (a case of
`pandapower.networks`, a MATPOWER case file, or a pandapower JSON file), runs an AC power flow
and, only when that does not converge, a DC one (the snapshot says which), and reads the
active power of every in-service element from the result tables. Which tables hold units and
branches, and which columns their power is in, is data (`UNIT_TABLES`, `BRANCH_TABLES`).

An element type it does not know would leave power unaccounted at its buses; the per-node
balance check after extraction turns that into an error naming the bus, not a silent error in
the intensities.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from hub.contracts.carbon.snapshot import FlowSnapshot

if TYPE_CHECKING:  # pandapower takes seconds to import: only where a network is loaded or solved
    import pandas as pd
    from pandapower.auxiliary import pandapowerNet

log = logging.getLogger("gridtrace.carbon")
# pandapower logs at INFO on import that plotly is missing; a carbon trace does not plot
logging.getLogger("pandapower").setLevel(logging.WARNING)

# table -> sign turning its result p_mw into an injection into the bus
UNIT_TABLES: dict[str, float] = {
    "ext_grid": 1.0, "gen": 1.0, "sgen": 1.0,
    "load": -1.0, "motor": -1.0, "shunt": -1.0, "storage": -1.0, "ward": -1.0, "xward": -1.0,
}
# table -> its terminals, in order: (bus column, result column of the power flowing into the branch)
BRANCH_TABLES: dict[str, tuple[tuple[str, str], ...]] = {
    "line": (("from_bus", "p_from_mw"), ("to_bus", "p_to_mw")),
    "trafo": (("hv_bus", "p_hv_mw"), ("lv_bus", "p_lv_mw")),
    "trafo3w": (("hv_bus", "p_hv_mw"), ("mv_bus", "p_mv_mw"), ("lv_bus", "p_lv_mw")),
    "impedance": (("from_bus", "p_from_mw"), ("to_bus", "p_to_mw")),
    "dcline": (("from_bus", "p_from_mw"), ("to_bus", "p_to_mw")),
}
# element tables whose power the carbon computation would not see: refuse a network using them
UNSUPPORTED_TABLES = ("svc", "tcsc", "ssc", "vsc", "line_dc", "bus_dc", "source_dc", "load_dc",
                      "asymmetric_load", "asymmetric_sgen")
BALANCE_TOLERANCE_MW = 1e-3


class NetworkError(ValueError):
    """A network that cannot be loaded or traced; the message names the file, case or element."""


@dataclass(frozen=True)
class SolvedNetwork:
    name: str  # "pandapower:case118", "matpower:/path/case.m", "pandapower-json:/path/net.json"
    digest: str  # sha256 of the network's pandapower JSON before the power flow: which model was used
    snapshot: FlowSnapshot
    dc_reason: str | None  # why the AC power flow was not used


def load_network(case: str | None = None, matpower: Path | None = None,
                 pandapower_json: Path | None = None) -> tuple[pandapowerNet, str]:
    """The network named by exactly one of the arguments, and a name for it."""
    import pandapower as pp
    import pandapower.networks as pn

    if sum(x is not None for x in (case, matpower, pandapower_json)) != 1:
        raise NetworkError("name exactly one network: a pandapower case, a MATPOWER file or a pandapower JSON file")
    if case is not None:
        fn = getattr(pn, case, None)
        if not callable(fn) or case.startswith("_"):
            raise NetworkError(f"pandapower has no network named {case!r} (see pandapower.networks, e.g. case118, "
                               "case1354pegase, case9241pegase, mv_oberrhein)")
        return fn(), f"pandapower:{case}"
    path = Path(matpower if matpower is not None else pandapower_json)
    if not path.is_file():
        raise NetworkError(f"{path}: no such file")
    try:
        if matpower is not None:
            from pandapower.converter.matpower.from_mpc import from_mpc

            if path.suffix not in (".m", ".mat"):
                raise NetworkError(f"{path}: a MATPOWER case is a .m or .mat file")
            return from_mpc(str(path), f_hz=50), f"matpower:{path}"
        return pp.from_json(str(path)), f"pandapower-json:{path}"
    except NetworkError:
        raise
    except Exception as exc:  # the converters raise anything: what is wrong is the file, so name it
        raise NetworkError(f"{path}: cannot read as a {'MATPOWER case' if matpower else 'pandapower network'}: "
                           f"{type(exc).__name__}: {exc}") from exc


def network_digest(net: pandapowerNet) -> str:
    import pandapower as pp

    return hashlib.sha256(pp.to_json(net).encode()).hexdigest()


def solve(net: pandapowerNet, name: str, dc: bool = False) -> SolvedNetwork:
    """Run the power flow (AC; DC when asked or when AC does not converge) and extract it."""
    import pandapower as pp

    digest = network_digest(net)
    reason = "asked for (--dc)" if dc else None
    if not dc:
        try:
            pp.runpp(net, numba=False)
        except pp.LoadflowNotConverged as exc:
            reason = f"the AC power flow did not converge ({exc})"
            log.warning("%s: %s; using a DC power flow", name, reason)
    if reason is not None:
        try:
            pp.rundcpp(net)
        except Exception as exc:  # pandapower's own errors: the network cannot be solved at all
            raise NetworkError(f"{name}: neither the AC nor the DC power flow solved: {exc}") from exc
    return SolvedNetwork(name, digest, snapshot_of(net, "dc" if reason else "ac"), reason)


def _switch_groups(net: pandapowerNet) -> dict[int, int]:
    """Each bus's representative: buses joined by closed bus-bus switches are one node."""
    parent: dict[int, int] = {}

    def find(b: int) -> int:
        while parent.get(b, b) != b:
            parent[b] = parent.get(parent[b], parent[b])
            b = parent[b]
        return b

    sw = net.switch
    if len(sw):
        closed = sw[(sw.et == "b") & sw.closed.astype(bool)]
        for a, b in zip(closed.bus.astype(int), closed.element.astype(int)):
            ra, rb = find(a), find(b)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    return {int(b): find(int(b)) for b in net.bus.index}


def _live(net: pandapowerNet, table: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The in-service rows of `table` that have finite results, and those results."""
    df, res = net[table], net[f"res_{table}"]
    if not len(df):
        return df, res
    rows = df.index[df.in_service.astype(bool)] if "in_service" in df else df.index
    rows = rows.intersection(res.index)
    return df.loc[rows], res.loc[rows]


def snapshot_of(net: pandapowerNet, solution: str) -> FlowSnapshot:
    """The snapshot of a solved pandapower network."""
    for table in UNSUPPORTED_TABLES:
        if table in net and len(net[table]) and bool(net[table].get("in_service", True).astype(bool).any()):
            raise NetworkError(f"the network has in-service {table} elements, whose active power gridtrace's "
                               "carbon computation does not follow yet; take them out of service or model them "
                               "as loads/generators")
    rep = _switch_groups(net)
    p_bus = net.res_bus.p_mw.reindex(net.bus.index)
    live_buses = net.bus.index[np.isfinite(p_bus.to_numpy(dtype=float))].to_numpy(dtype=np.int64)
    reps = np.array([rep[int(b)] for b in live_buses], dtype=np.int64)
    distinct, node_of_live = np.unique(reps, return_inverse=True)
    bus_node = dict(zip(live_buses.tolist(), node_of_live.tolist()))
    order = np.argsort(live_buses)
    sorted_buses, sorted_nodes = live_buses[order], node_of_live[order].astype(np.int64)

    def node_of(buses: np.ndarray) -> np.ndarray:
        """The node of each bus; -1 for a bus that is out of service or has no result."""
        at = np.minimum(np.searchsorted(sorted_buses, buses), max(len(sorted_buses) - 1, 0))
        found = sorted_buses[at] == buses if len(sorted_buses) else np.zeros(len(buses), dtype=bool)
        return np.where(found, sorted_nodes[at] if len(sorted_buses) else -1, -1)

    names: list[str] = []
    nodes: list[np.ndarray] = []
    buses: list[np.ndarray] = []
    powers: list[np.ndarray] = []
    for table, sign in UNIT_TABLES.items():
        if table not in net:
            continue
        df, res = _live(net, table)
        if not len(df):
            continue
        p = res.p_mw.to_numpy(dtype=float) * sign
        bus = df.bus.to_numpy(dtype=np.int64)
        node = node_of(bus)
        ok = np.isfinite(p) & (node >= 0)
        names += [f"{table}:{i}" for i in df.index[ok]]
        buses.append(bus[ok])
        nodes.append(node[ok])
        powers.append(p[ok])

    b_names: list[str] = []
    t_branch: list[np.ndarray] = []
    t_node: list[np.ndarray] = []
    t_bus: list[np.ndarray] = []
    t_p: list[np.ndarray] = []
    for table, terminals in BRANCH_TABLES.items():
        if table not in net:
            continue
        df, res = _live(net, table)
        if not len(df):
            continue
        ps = np.column_stack([res[col].to_numpy(dtype=float) for _, col in terminals])
        bus = np.column_stack([df[col].to_numpy(dtype=np.int64) for col, _ in terminals])
        node = node_of(bus.ravel()).reshape(bus.shape)
        ok = (node >= 0).all(axis=1) & np.isfinite(ps).all(axis=1)
        first = len(b_names)
        b_names += [f"{table}:{i}" for i in df.index[ok]]
        k = np.arange(first, len(b_names), dtype=np.int64)
        for j in range(len(terminals)):
            t_branch.append(k)
            t_bus.append(bus[ok, j])
            t_node.append(node[ok, j])
            t_p.append(ps[ok, j])

    def cat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
        return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype=dtype)

    snap = FlowSnapshot(
        bus_node=bus_node, node_count=len(distinct), unit_names=tuple(names),
        unit_node=cat(nodes, np.int64), unit_p_mw=cat(powers, float), unit_bus=cat(buses, np.int64),
        branch_names=tuple(b_names), terminal_branch=cat(t_branch, np.int64),
        terminal_node=cat(t_node, np.int64), terminal_p_mw=cat(t_p, float), terminal_bus=cat(t_bus, np.int64),
        solution=solution,
    )
    mismatch = snap.node_mismatch_mw()
    worst = int(np.argmax(np.abs(mismatch))) if len(mismatch) else 0
    if len(mismatch) and abs(mismatch[worst]) > BALANCE_TOLERANCE_MW:
        joined = sorted(b for b, n in bus_node.items() if n == worst)
        raise NetworkError(
            f"bus {joined[0]}{' (with ' + ', '.join(map(str, joined[1:])) + ')' if len(joined) > 1 else ''}: active power "
            f"does not balance by {mismatch[worst]:.6g} MW: an element there is one gridtrace does not read"
        )
    return snap

