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


# Compared last (as bytes), or for an outsourced interval not at all: a hash over every last bit,
# and what only the runner's solve produced (its residual, its providers' records).
_NOT_COMPARED = {"result_sha256"}
_NOT_COMPARED_OUTSOURCED = {"result_sha256", "outsourcing", "conservation"}


def _difference(a: object, b: object, rtol: float, path: str) -> str | None:
    """The first place where published `a` and recomputed `b` differ, numbers within `rtol`."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if key in (_NOT_COMPARED_OUTSOURCED if rtol else _NOT_COMPARED):
                continue
            if key not in a or key not in b:
                return f"{path}{key}: {'missing on the chain' if key not in a else 'not in the recomputed result'}"
            why = _difference(a[key], b[key], rtol, f"{path}{key}.")
            if why:
                return why
        return None
    if isinstance(a, float) and isinstance(b, float) and not isinstance(a, bool):
        if a == b or (rtol and math.isclose(a, b, rel_tol=rtol, abs_tol=1e-12)):
            return None
        return f"{path.rstrip('.')} {a!r} published, {b!r} recomputed"
    return None if a == b else f"{path.rstrip('.')} {a!r} published, {b!r} recomputed"


def _compare(chain: list[ContractRecord], again: list[ContractRecord], outsourced: bool) -> str | None:
    """Why the published records differ from the recomputed ones (None: they agree). A meter's
    figures are compared first, as they say more than a differing hash."""
    pub: dict[tuple[str, str], ContractRecord] = {}
    for r in chain:
        if (r.subject, r.kind) in pub:  # a second result beside the first: certificates would count both
            return f"{r.subject}: {r.kind} record published twice for this interval"
        pub[(r.subject, r.kind)] = r
    extra = set(pub) - {(r.subject, r.kind) for r in again}
    if extra:
        return f"{min(extra)[0]}: a record for a meter the model does not have"
    rtol = OUTSOURCED_RTOL if outsourced else 0.0
    for r in sorted(again, key=lambda r: r.kind == KIND_INTERVAL):
        p = pub.get((r.subject, r.kind))
        if p is None:
            return f"no {r.kind} record for {r.subject} on the chain"
        if p.body == r.body:
            continue
        a, b = p.document(), r.document()
        if a.get("inputs_sha256") != b.get("inputs_sha256"):
            return (f"{r.subject}: inputs differ (inputs_sha256 {str(a.get('inputs_sha256'))[:16]} on the chain, "
                    f"{b['inputs_sha256'][:16]} from the chain's readings and model)")
        why = _difference(a, b, rtol, "")
        if why is not None:
            return f"{r.subject}: {why}"
    if not outsourced:
        for r in again:
            if pub[(r.subject, r.kind)].body != r.body:
                return f"{r.subject}: {r.kind} record differs from the recomputed one (same figures, other bytes)"
    else:
        residual = pub[(SUBJECT, KIND_INTERVAL)].document().get("conservation", {}).get("relative_residual", math.inf)
        if not residual <= OUTSOURCED_RTOL:
            return f"conservation residual {residual} is over {OUTSOURCED_RTOL:g}"
    return None


def audit_intervals(store: Store, model: NetworkModel, gateway_id: str, from_ns: int, to_ns: int) -> list[AuditRow]:
    from hub.compute.outsource import OutsourcingError
    from hub.contracts.carbon.compute import IncompleteStore, compute_interval
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
        meters = [r for m in sorted(model.meters) for r in published(store, gateway_id, m, itv.from_ns, itv.from_ns + 1)
                  if r.kind == KIND_METER and r.to_ns == itv.to_ns]
        shares = any("sources_t_per_h" in r.document() for r in meters)
        height = body.get("sealed_height")
        if not isinstance(height, int):
            rows.append(AuditRow(itv.from_ns, itv.to_ns, "differs", "the record does not say up to which block it read"))
            continue
        try:
            doc = compute_interval(store, model, itv.from_ns, itv.to_ns, shares=shares, sealed_height=height).doc
        except IncompleteStore as exc:
            rows.append(AuditRow(itv.from_ns, itv.to_ns, "not-recomputable", str(exc)))
            continue
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
        chain = [r for r in published(store, gateway_id, SUBJECT, itv.from_ns, itv.from_ns + 1)
                 if r.kind == KIND_INTERVAL and r.to_ns == itv.to_ns]
        chain += meters
        why = _compare(chain, again, outsourced)
        if why is not None:
            rows.append(AuditRow(itv.from_ns, itv.to_ns, "differs", why))
        elif outsourced:
            rows.append(AuditRow(itv.from_ns, itv.to_ns, "agrees",
                                 f"outsourced: {len(again) - 1} meters within {OUTSOURCED_RTOL:g}"))
        else:
            rows.append(AuditRow(itv.from_ns, itv.to_ns, "identical", f"{len(again) - 1} meters, byte for byte"))
    return rows
