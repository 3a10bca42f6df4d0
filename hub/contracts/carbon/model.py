"""The network model a carbon contract runs on: network, emission factors, and which meter
measures which load or generator, under one version (the SHA-256 of their canonical form).

Every interval result names the version it used, so a change of the network, a factor or a
meter's mapping is a new version and never silently changes an old result. The model file is
JSON (`gridtrace carbon model` writes it); the network is kept as pandapower JSON inside it."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from gridtrace.jsonfile import read_json
from hub.contracts.carbon.document import canonical_json
from hub.contracts.carbon.emission import (
    EmissionFactorError,
    EmissionFactors,
    parse_factors,
)

FORMAT = "gridtrace-carbon-model/1"
# Tables whose power a meter sets for an interval. External grids are not among them: the
# power flow decides what they supply (they are the slack).
METERED_TABLES = ("load", "sgen", "gen", "storage", "motor")
_ELEMENT = re.compile(r"^([a-z_]+):([0-9]+)$")


class ModelError(ValueError):
    """A model file or mapping that cannot be used; the message names the entry."""


@dataclass(frozen=True, eq=False)
class NetworkModel:
    network_json: str  # pandapower.to_json of the network, as registered
    factors: EmissionFactors
    meters: dict[str, str]  # meter id -> element, e.g. "MTR-7" -> "load:3"
    name: str = ""  # where the network came from, for people

    @cached_property
    def network_sha256(self) -> str:
        return hashlib.sha256(self.network_json.encode()).hexdigest()

    @cached_property
    def version(self) -> str:
        return hashlib.sha256(canonical_json({
            "network_sha256": self.network_sha256, "emission_factors": self.factors.to_json(),
            "meters": dict(sorted(self.meters.items())),
        }).encode()).hexdigest()

    def to_json(self) -> dict:
        return {"format": FORMAT, "version": self.version, "name": self.name,
                "emission_factors": self.factors.to_json(), "meters": dict(sorted(self.meters.items())),
                "network": self.network_json}


def check_meters(meters: dict[str, str], net: object, where: str = "meters") -> None:
    """Every meter names an in-service element of a metered table; no element has two meters."""
    seen: dict[str, str] = {}
    for meter, element in sorted(meters.items()):
        m = _ELEMENT.match(element) if isinstance(element, str) else None
        if not m or m.group(1) not in METERED_TABLES:
            raise ModelError(f"{where}: meter {meter} maps to {element!r}; expected table:index with table one of "
                             f"{', '.join(METERED_TABLES)}")
        table, index = m.group(1), int(m.group(2))
        if table not in net or index not in net[table].index:  # type: ignore[operator,index]
            raise ModelError(f"{where}: meter {meter} maps to {element}, which the network does not have")
        if element in seen:
            raise ModelError(f"{where}: meters {seen[element]} and {meter} both map to {element}")
        seen[element] = meter


def build_model(net: object, name: str, factors: EmissionFactors, meters: dict[str, str]) -> NetworkModel:
    import pandapower as pp

    check_meters(meters, net)
    return NetworkModel(pp.to_json(net), factors, dict(meters), name)


def read_model(path: Path) -> NetworkModel:
    doc = read_json(path, ModelError)
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ModelError(f"{path}: not a carbon network model (expected format {FORMAT!r}); write one with "
                         "gridtrace carbon model")
    if not isinstance(doc.get("network"), str) or not isinstance(doc.get("meters"), dict):
        raise ModelError(f"{path}: needs \"network\" (pandapower JSON) and \"meters\" (meter id -> element)")
    try:
        factors = parse_factors(doc.get("emission_factors", {}), f"{path}: emission_factors")
    except EmissionFactorError as exc:
        raise ModelError(str(exc)) from exc
    model = NetworkModel(doc["network"], factors, {str(k): v for k, v in doc["meters"].items()}, str(doc.get("name", "")))
    if doc.get("version") != model.version:
        raise ModelError(f"{path}: recorded version {doc.get('version')} is not the model's ({model.version}): "
                         "the file was changed after it was written")
    return model


def read_meter_map(path: Path) -> dict[str, str]:
    doc = read_json(path, ModelError)
    if not isinstance(doc, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in doc.items()):
        raise ModelError(f"{path}: expected a JSON object mapping meter ids to elements, e.g. {{\"MTR-7\": \"load:3\"}}")
    return dict(doc)
