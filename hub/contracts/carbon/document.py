"""The carbon trace document: one JSON file an analyst can check against their own tools.

`gridtrace carbon trace` writes it and `gridtrace carbon report` reads it. Its bytes are a
function of the network and the emission factors only (sorted keys, shortest round-trip
floats), so two replicas that compute the same trace write the same file, and `inputs_sha256`
names the inputs a result was computed from.

Units: power in MW, intensities in tCO2/MWh, carbon flows in tCO2/h. Signs follow pandapower's:
a branch end's power and carbon are what flows into the branch there.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from gridtrace.jsonfile import read_json
from hub.contracts.carbon.emission import EmissionFactors
from hub.contracts.carbon.flow import CarbonFlow
from hub.contracts.carbon.powerflow import SolvedNetwork
from hub.contracts.carbon.tracing import Shares
from protos.records import canonical_json_bytes

FORMAT = "gridtrace-carbon-trace/1"
LOAD_TABLES = ("load:", "motor:", "storage:")  # consuming units traced to their sources


class TraceFileError(ValueError):
    """A trace file that cannot be read; the message names the file and the field."""


def canonical_json(doc: object) -> str:
    """The one JSON encoding of carbon documents (`protos.records.canonical_json_bytes`)."""
    return canonical_json_bytes(doc).decode()


def inputs_digest(network_sha256: str, factors: EmissionFactors, solution: str) -> str:
    return hashlib.sha256(canonical_json(
        {"network_sha256": network_sha256, "emission_factors": factors.to_json(), "solution": solution}
    ).encode()).hexdigest()


def load_units(flow: CarbonFlow) -> np.ndarray:
    s = flow.snapshot
    return np.array([i for i, n in enumerate(s.unit_names) if n.startswith(LOAD_TABLES) and s.unit_p_mw[i] < 0],
                    dtype=np.int64)


def trace_document(solved: SolvedNetwork, factors: EmissionFactors, flow: CarbonFlow,
                   shares: Shares | None) -> dict:
    s = flow.snapshot
    w = flow.node_intensity
    f = lambda x: float(x) + 0.0
    sources, loads, other = {}, {}, {}
    load_idx = set(load_units(flow).tolist())
    for i, name in enumerate(s.unit_names):
        p, c, bus = f(s.unit_p_mw[i]), f(flow.unit_carbon_t_per_h[i]), int(s.unit_bus[i])
        if p > 0:
            sources[name] = {"bus": bus, "p_mw": p, "emission_t_per_h": c, "intensity_t_per_mwh": c / p}
        elif p < 0:
            entry = {"bus": bus, "p_mw": -p, "emission_t_per_h": f(-c), "intensity_t_per_mwh": f(w[s.unit_node[i]])}
            (loads if i in load_idx else other)[name] = entry
    branches: dict[str, dict] = {name: {"buses": [], "p_mw": [], "carbon_t_per_h": []} for name in s.branch_names}
    for t in range(len(s.terminal_branch)):
        b = branches[s.branch_names[s.terminal_branch[t]]]
        b["buses"].append(int(s.terminal_bus[t]))
        b["p_mw"].append(f(s.terminal_p_mw[t]))
        b["carbon_t_per_h"].append(f(flow.terminal_carbon_t_per_h[t]))
    for k, name in enumerate(s.branch_names):
        branches[name].update(intensity_t_per_mwh=f(flow.branch_intensity[k]), loss_mw=f(flow.branch_loss_mw[k]),
                              loss_carbon_t_per_h=f(flow.branch_loss_carbon_t_per_h[k]))
    emission = flow.emission_t_per_h
    load_carbon = sum(e["emission_t_per_h"] for e in loads.values())
    generation = f(s.unit_p_mw[s.unit_p_mw > 0].sum())
    doc: dict = {
        "format": FORMAT,
        "inputs": {
            "network": solved.name,
            "network_sha256": solved.digest,
            "emission_factors": factors.to_json(),
            "solution": s.solution,
            "dc_reason": solved.dc_reason,
        },
        "inputs_sha256": inputs_digest(solved.digest, factors, s.solution),
        "bus_intensity": {str(b): f(w[n]) for b, n in sorted(s.bus_node.items())},
        "branches": branches,
        "sources": sources,
        "loads": loads,
        "other_sinks": other,
        "totals": {
            "generation_mw": generation,
            "load_mw": sum(e["p_mw"] for e in loads.values()),
            "other_sink_mw": sum(e["p_mw"] for e in other.values()),
            "loss_mw": f(flow.branch_loss_mw.sum()),
            "emission_t_per_h": emission,
            "load_emission_t_per_h": load_carbon,
            "other_sink_emission_t_per_h": flow.sink_carbon_t_per_h - load_carbon,
            "loss_emission_t_per_h": flow.loss_carbon_t_per_h,
            "loss_share": flow.loss_carbon_t_per_h / emission if emission else 0.0,
            "average_intensity_t_per_mwh": emission / generation if generation else 0.0,
        },
        "conservation": {
            "residual_t_per_h": flow.residual_t_per_h,
            "relative_residual": abs(flow.residual_t_per_h) / emission if emission else 0.0,
            "max_node_mismatch_mw": flow.power_mismatch_mw,
        },
    }
    if shares is not None:
        mw, carbon = shares.mw.tocsr(), shares.carbon_t_per_h.tocsr()
        out: dict[str, dict] = {}
        for row, unit in enumerate(shares.sinks):
            lo, hi = mw.indptr[row], mw.indptr[row + 1]
            out[s.unit_names[unit]] = {
                s.unit_names[shares.sources[col]]: {"mw": f(mw.data[j]), "t_per_h": f(carbon.data[j])}
                for j, col in zip(range(lo, hi), mw.indices[lo:hi])
            }
        doc["shares"] = out
        res = shares.residual_t_per_h(flow)
        doc["conservation"]["max_share_residual_t_per_h"] = f(np.abs(res).max()) if len(res) else 0.0
    return doc


def read_trace(path: Path) -> dict:
    doc = read_json(path, TraceFileError)
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise TraceFileError(f"{path}: not a carbon trace (format is {doc.get('format') if isinstance(doc, dict) else None!r}, "
                             f"expected {FORMAT!r}); write one with gridtrace carbon trace")
    for key in ("bus_intensity", "loads", "sources", "totals", "conservation", "inputs"):
        if not isinstance(doc.get(key), dict):
            raise TraceFileError(f"{path}: field {key!r} is missing or not an object")
    return doc
