"""Checking the carbon contract's published results against the chain they came from.

For every interval record a runner published (and the hub sealed), compute the interval
again from the same sealed readings and the registered model, and compare:

- `inputs_sha256` must be identical: it covers the model version, the interval, the meters'
  powers and the readings, so a difference means the runner used other readings or another
  model than the chain holds;
- computed here, the same inputs give the same bytes: the recomputed records must equal the
  published ones byte for byte;
- outsourced intervals went through masked solves whose answers differ from a local solve in
  the last bits; there, every meter's figures must agree to `OUTSOURCED_RTOL`, and the
  published conservation residual must be small.

Any replica of a substation, or an auditor with a copy of its database, runs this
(`gridtrace carbon audit`): a result on the chain is evidence only as long as anyone can
recompute it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

from hub.contracts.carbon.model import NetworkModel
from hub.contracts.carbon.records import (
    KIND_INTERVAL,
    KIND_METER,
    SUBJECT,
    interval_records,
)
from hub.storage.store import Store
from protos.canonical import decode_entry
from protos.records import ContractRecord

OUTSOURCED_RTOL = 1e-9
_FIGURES = ("intensity_t_per_mwh", "emission_t_per_h", "emission_t")


@dataclass(frozen=True)
class AuditRow:
    from_ns: int
    to_ns: int
    verdict: str  # identical, agrees, failed-as-recorded, differs, not-recomputable
    detail: str


def published(store: Store, gateway_id: str, subject: str, from_ns: int, to_ns: int) -> Iterator[ContractRecord]:
    """The sealed contract records of one runner about one subject, in chain order."""
    batches: dict[int, bool] = {}
    for batch_id, row in store.meter_entries(subject, from_ns, to_ns):
        if batch_id not in batches:
            b = store.batch_by_id(batch_id)
            batches[batch_id] = b.block_height is not None and b.gateway_id == gateway_id
        if batches[batch_id]:
            record = decode_entry(row.body)
            if isinstance(record, ContractRecord):
                yield record


def _close(a: float, b: float, rtol: float) -> bool:
    return a == b or math.isclose(a, b, rel_tol=rtol, abs_tol=1e-12 if rtol else 0.0)


def _compare(chain: list[ContractRecord], again: list[ContractRecord], outsourced: bool) -> str | None:
    """Why the published records differ from the recomputed ones (None: they agree). A meter's
    figures are compared first, as they say more than a differing hash."""
    pub = {(r.subject, r.kind): r for r in chain}
    rtol = OUTSOURCED_RTOL if outsourced else 0.0
    pairs = []
    for r in again:
        p = pub.get((r.subject, r.kind))
        if p is None:
            return f"no {r.kind} record for {r.subject} on the chain"
        a, b = p.document(), r.document()
        if a.get("inputs_sha256") != b.get("inputs_sha256"):
            return (f"{r.subject}: inputs differ (inputs_sha256 {str(a.get('inputs_sha256'))[:16]} on the chain, "
                    f"{b['inputs_sha256'][:16]} from the chain's readings and model)")
        if r.kind == KIND_METER:
            wrong = [f"{f} {a.get(f)} published, {b[f]} recomputed" for f in _FIGURES
                     if not isinstance(a.get(f), float) or not _close(a[f], b[f], rtol)]
            if wrong:
                return f"{r.subject}: {'; '.join(wrong)}"
        pairs.append((p, r))
    if outsourced:
        itv = next((p for p, _ in pairs if p.kind == KIND_INTERVAL), None)
        residual = itv.document().get("conservation", {}).get("relative_residual", math.inf) if itv else math.inf
        if not residual <= OUTSOURCED_RTOL:
            return f"conservation residual {residual} is over {OUTSOURCED_RTOL:g}"
        return None
    for p, r in pairs:
        if p.body != r.body:
            return f"{r.subject}: {r.kind} record differs from the recomputed one (same figures, other bytes)"
    return None


def audit_intervals(store: Store, model: NetworkModel, gateway_id: str, from_ns: int, to_ns: int) -> list[AuditRow]:
    from hub.compute.outsource import OutsourcingError
    from hub.contracts.carbon.compute import compute_interval
    from hub.contracts.carbon.flow import CarbonFlowError
    from hub.contracts.carbon.interval import IntervalError
    from hub.contracts.carbon.powerflow import NetworkError

    rows = []
    for itv in published(store, gateway_id, SUBJECT, from_ns, to_ns):
        if itv.kind != KIND_INTERVAL:
            continue
        body = itv.document()
        if body.get("model_version") != model.version:
            rows.append(AuditRow(itv.from_ns, itv.to_ns, "not-recomputable",
                                 f"model {body.get('model_version', '?')[:16]}, not the given {model.version[:16]}"))
            continue
        shares = any("sources_t_per_h" in r.document() for m in model.meters
                     for r in published(store, gateway_id, m, itv.from_ns, itv.from_ns + 1) if r.to_ns == itv.to_ns)
        try:
            doc = compute_interval(store, model, itv.from_ns, itv.to_ns, shares=shares)
        except (IntervalError, NetworkError, CarbonFlowError, OutsourcingError) as exc:
            if "error" in body:
                rows.append(AuditRow(itv.from_ns, itv.to_ns, "failed-as-recorded", body["error"]))
            else:
                rows.append(AuditRow(itv.from_ns, itv.to_ns, "differs", f"published, but does not compute here: {exc}"))
            continue
        if "error" in body:
            rows.append(AuditRow(itv.from_ns, itv.to_ns, "differs",
                                 f"recorded as failed ({body['error']}), but computes from the chain"))
            continue
        outsourced = "outsourcing" in body
        if outsourced:
            doc["outsourcing"] = body["outsourcing"]  # part of the published interval record, not recomputable
        again = interval_records(doc)
        chain = [itv] + [r for m in sorted(model.meters)
                         for r in published(store, gateway_id, m, itv.from_ns, itv.from_ns + 1)
                         if r.kind == KIND_METER and r.to_ns == itv.to_ns]
        why = _compare(chain, again, outsourced)
        if why is not None:
            rows.append(AuditRow(itv.from_ns, itv.to_ns, "differs", why))
        elif outsourced:
            rows.append(AuditRow(itv.from_ns, itv.to_ns, "agrees",
                                 f"outsourced: {len(again) - 1} meters within {OUTSOURCED_RTOL:g}"))
        else:
            rows.append(AuditRow(itv.from_ns, itv.to_ns, "identical", f"{len(again) - 1} meters, byte for byte"))
    return rows
