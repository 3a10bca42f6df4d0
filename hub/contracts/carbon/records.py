"""What the carbon-flow contract writes to the chain: its results as contract records.

An interval's full result (the trace document `gridtrace carbon interval` writes: every bus,
branch and share) can be megabytes; the chain carries what a clerk and an auditor need, each
as a `ContractRecord` entry in a batch signed by the contract's runner:

- `model` (subject `contract:carbon-flow:models`): a model's version, its network's name and
  SHA-256, its emission factors and its meter map. The network itself is named by hash: the
  model file whose version matches is the registration.
- `interval` (subject `contract:carbon-flow`, the interval's time range): model version, the hash of the
  inputs (sealed readings and model) and of the whole result document, totals, the
  conservation residual, and the outsourcing records with the provider book when the
  linear algebra was done by providers.
- `meter-interval` (subject: the meter): the meter's power, its carbon intensity and
  emissions over the interval, and, for a load, each source's part. Because the subject is
  the meter, the meter's measurement certificate carries these records beside its readings.

An interval that cannot be computed (a meter without readings, a network that does not
solve) is recorded too, once the runner gives up on it: an `interval` record whose body has
`error` and no results, so a missing result is on record with its reason.

Pure: documents in, records out (and back). docs/carbon.md lists the fields.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from protos.records import ContractRecord, canonical_json_bytes

if TYPE_CHECKING:  # a clerk's verifier reads records without the computing side (pandapower, scipy)
    from hub.contracts.carbon.model import NetworkModel

CONTRACT = "carbon-flow/1"
SUBJECT = "contract:carbon-flow"  # the contract's interval records
MODEL_SUBJECT = "contract:carbon-flow:models"  # its model registrations
KIND_MODEL = "model"
KIND_INTERVAL = "interval"
KIND_METER = "meter-interval"
NS_PER_H = 3_600_000_000_000


class RecordsError(ValueError):
    """An interval document that cannot be turned into records; the message says what is missing."""


def _record(subject: str, from_ns: int, to_ns: int, kind: str, body: dict) -> ContractRecord:
    return ContractRecord(subject, from_ns, to_ns, CONTRACT, kind, canonical_json_bytes(body))


def result_sha256(doc: dict) -> str:
    """The hash of an interval's whole result, as `gridtrace carbon interval` writes it."""
    return hashlib.sha256(canonical_json_bytes(doc)).hexdigest()


def model_record(model: NetworkModel, registered_ns: int) -> ContractRecord:
    body = {
        "model_version": model.version,
        "network": {"name": model.name, "sha256": model.network_sha256},
        "emission_factors": model.factors.to_json(),
        "meters": dict(sorted(model.meters.items())),
    }
    return _record(MODEL_SUBJECT, registered_ns, registered_ns, KIND_MODEL, body)


def failed_interval_record(model: NetworkModel, from_ns: int, to_ns: int, sealed_height: int,
                           error: str) -> ContractRecord:
    return _record(SUBJECT, from_ns, to_ns, KIND_INTERVAL,
                   {"model_version": model.version, "sealed_height": sealed_height, "error": error})


def interval_records(doc: dict) -> list[ContractRecord]:
    """The interval record, then one record per meter of the model, from an interval's result."""
    itv = doc.get("interval")
    if not isinstance(itv, dict) or "model_version" not in doc.get("inputs", {}):
        raise RecordsError("not an interval result: write it with gridtrace carbon interval (a trace has no interval)")
    from_ns, to_ns = itv["from_ns"], itv["to_ns"]
    hours = (to_ns - from_ns) / NS_PER_H
    common = {
        "model_version": doc["inputs"]["model_version"],
        "inputs_sha256": doc["inputs_sha256"],
        "result_sha256": result_sha256(doc),
        "solution": doc["inputs"]["solution"],
    }
    interval = {
        **common,
        "readings_sha256": itv["readings_sha256"],
        "sealed_height": itv["sealed_height"],
        "meters": len(itv["meters"]),
        "totals": doc["totals"],
        "conservation": doc["conservation"],
    }
    if "outsourcing" in doc:
        interval["outsourcing"] = doc["outsourcing"]
    out = [_record(SUBJECT, from_ns, to_ns, KIND_INTERVAL, interval)]
    shares = doc.get("shares") or {}
    for meter, m in sorted(itv["meters"].items()):
        element = m["element"]
        unit = doc["loads"].get(element) or doc["other_sinks"].get(element) or doc["sources"].get(element)
        body = {**common, "element": element, "hours": hours,
                "power": {k: m[k] for k in ("mw", "method", "readings", "gaps")}}
        if unit is None:  # a unit at zero power: in no table, and it carries no carbon
            body.update(intensity_t_per_mwh=0.0, emission_t_per_h=0.0, emission_t=0.0)
        else:
            body.update(intensity_t_per_mwh=unit["intensity_t_per_mwh"], emission_t_per_h=unit["emission_t_per_h"],
                        emission_t=unit["emission_t_per_h"] * hours)
        if element in shares:
            body["sources_t_per_h"] = {src: s["t_per_h"] for src, s in sorted(shares[element].items())}
        out.append(_record(meter, from_ns, to_ns, KIND_METER, body))
    return out


@dataclass(frozen=True)
class MeterCarbon:
    """A meter's carbon over one interval, as its record on the chain states it."""

    meter_id: str
    from_ns: int
    to_ns: int
    element: str
    mw: float
    intensity_t_per_mwh: float
    emission_t: float
    model_version: str
    result_sha256: str
    sources_t_per_h: dict[str, float]


def meter_carbon(record: ContractRecord) -> MeterCarbon:
    if (record.contract, record.kind) != (CONTRACT, KIND_METER):
        raise RecordsError(f"a {record.contract} {record.kind} record, not a {CONTRACT} {KIND_METER} one")
    b = record.document()
    try:
        return MeterCarbon(record.subject, record.from_ns, record.to_ns, b["element"], b["power"]["mw"],
                           b["intensity_t_per_mwh"], b["emission_t"], b["model_version"], b["result_sha256"],
                           dict(b.get("sources_t_per_h", {})))
    except (KeyError, TypeError) as exc:
        raise RecordsError(f"{record.subject} {record.from_ns}: the record's body lacks {exc}") from exc
