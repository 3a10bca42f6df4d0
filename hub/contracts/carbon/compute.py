"""One interval of the carbon contract computed from a hub's store: the sealed readings of the
model's meters, their powers, the power flow and the carbon emission flow, as the interval's
result document (the format of `gridtrace carbon trace`, with `interval` and `inputs_sha256`).

The shell around the pure parts (interval.py, flow.py, tracing.py, document.py), shared by
`gridtrace carbon interval`, the contract runner and the audit, so that all three compute the
same bytes from the same chain.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from hub.contracts.carbon.document import load_units, trace_document
from hub.contracts.carbon.flow import SystemSolver, carbon_flow
from hub.contracts.carbon.interval import (
    IntervalError,
    interval_digest,
    meter_power,
    network_for_interval,
)
from hub.contracts.carbon.model import NetworkModel
from hub.contracts.carbon.powerflow import solve
from hub.contracts.carbon.tracing import trace
from hub.storage.store import Store
from protos.canonical import decode_entry
from protos.records import ContractRecord


class IncompleteStore(IntervalError):
    """This database cannot compute intervals right now: some sealed batches' entries are
    stored elsewhere. Not a property of the interval, so never recorded as its failure."""


@dataclass(frozen=True)
class Computed:
    doc: dict  # the interval's result document: the same bytes for the same chain and model
    left_out: int  # entries of the period not sealed at or below the document's sealed_height


def compute_interval(store: Store, model: NetworkModel, from_ns: int, to_ns: int,
                     solver: SystemSolver | None = None, shares: bool = True,
                     sealed_height: int | None = None) -> Computed:
    """The interval from the entries sealed in blocks up to `sealed_height` (default: the chain's
    head now). The height is part of the result, so an audit later, when more readings of the
    period may have been sealed, computes from exactly the same readings.

    Raises IntervalError, NetworkError, CarbonFlowError (or OutsourcingError from an
    outsourcing `solver`) naming what is missing or wrong."""
    if store.header_only_batches(limit=1):
        # Some sealed batches' entries are stored at other replicas (custody), so this store's
        # readings of a meter may be a part of the chain's: computed here, the interval would
        # silently differ from the chain's.
        raise IncompleteStore("this database holds some sealed batches by header only (their entries are at other "
                              "replicas: payload_copies); compute intervals at a replica that stores every batch's "
                              "entries, or once the missing entries have been fetched")
    if sealed_height is None:
        head = store.head()
        sealed_height = 0 if head is None else head.height
    readings = hashlib.sha256()
    powers = {}
    left_out = 0
    heights: dict[int, int | None] = {}
    for meter in sorted(model.meters):
        entries = []
        for batch_id, row in store.meter_entries(meter, from_ns, to_ns):
            if batch_id not in heights:
                heights[batch_id] = store.batch_by_id(batch_id).block_height
            height = heights[batch_id]
            if height is None or height > sealed_height:
                left_out += 1  # not in a block at that height: not part of this result
                continue
            entry = decode_entry(row.body)
            if isinstance(entry, ContractRecord):  # a result recorded for the meter, not a measurement
                continue
            readings.update(len(row.body).to_bytes(4, "big") + row.body)
            entries.append(entry)
        powers[meter] = meter_power(meter, entries)
    net = network_for_interval(model, powers)
    solved = solve(net, f"model:{model.version[:16]}")
    flow = carbon_flow(solved.snapshot, model.factors, solver)
    traced = trace(flow, load_units(flow), solver) if shares else None
    doc = trace_document(solved, model.factors, flow, traced)
    doc["inputs"]["model_version"] = model.version
    doc["interval"] = {"from_ns": from_ns, "to_ns": to_ns, "readings_sha256": readings.hexdigest(),
                       "sealed_height": sealed_height,
                       "meters": {m: {"element": model.meters[m], **p.to_json()} for m, p in sorted(powers.items())}}
    doc["inputs_sha256"] = interval_digest(model, from_ns, to_ns, powers, readings.hexdigest(), solved.snapshot.solution)
    return Computed(doc, left_out)
