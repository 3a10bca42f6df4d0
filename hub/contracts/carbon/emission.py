"""What each generating unit emits per MWh it produces: fixed factors and coal units' curves.

A source is named as in pandapower's tables (`"gen:3"`, `"sgen:0"`, `"ext_grid:0"`). Hydro,
wind and PV are zero, and so is any source the emission-factors file does not name. Gas and
oil units are given by a factor (tCO2/MWh). A coal unit is given by its power-emission
characteristic (seed 002, section 4.2.1): its coal burn is a quadratic fuel curve of its output,

    F(P) = a P^2 + b P + c        (t coal/h, P in MW)
    E(P) = F(P) * C * O * 44/12   (tCO2/h; C carbon content of the coal, O oxidation rate)

so its intensity E(P)/P rises at low load, where the no-load burn c weighs most.

The file is JSON: each name maps to a number (tCO2/MWh), to `{"t_per_mwh": x}`, or to
`{"coal": {"a": .., "b": .., "c": .., "carbon_content": .., "oxidation_rate": ..}}`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from gridtrace.jsonfile import read_json

CO2_PER_C = 44.0 / 12.0  # t CO2 per t carbon oxidised
SOURCE_NAME = re.compile(r"^[a-z_0-9]+:[0-9]+$")


class EmissionFactorError(ValueError):
    """An emission-factors file or entry that cannot be used; the message names the entry."""


@dataclass(frozen=True)
class Factor:
    """A unit that emits in proportion to its output (gas, oil, an average grid import)."""

    t_per_mwh: float

    def emission_t_per_h(self, p_mw: float) -> float:
        return self.t_per_mwh * p_mw if p_mw > 0 else 0.0


@dataclass(frozen=True)
class CoalCurve:
    """A coal unit's power-emission characteristic (seed 002, section 4.2.1)."""

    a: float  # t coal / (MW^2 h)
    b: float  # t coal / MWh
    c: float  # t coal / h, burnt at no load
    carbon_content: float  # t carbon per t coal (as received)
    oxidation_rate: float  # share of that carbon oxidised to CO2

    def coal_t_per_h(self, p_mw: float) -> float:
        return (self.a * p_mw + self.b) * p_mw + self.c

    def emission_t_per_h(self, p_mw: float) -> float:
        """tCO2/h at output `p_mw`; a unit that produces nothing is not a source here (its
        no-load burn belongs to no consumer), so 0 at or below 0 MW."""
        if p_mw <= 0:
            return 0.0
        return self.coal_t_per_h(p_mw) * self.carbon_content * self.oxidation_rate * CO2_PER_C


EmissionModel = Factor | CoalCurve


@dataclass(frozen=True)
class EmissionFactors:
    """The emission model of each named source; sources not named emit nothing."""

    by_source: dict[str, EmissionModel]

    def emission_t_per_h(self, source: str, p_mw: float) -> float:
        model = self.by_source.get(source)
        return model.emission_t_per_h(p_mw) if model is not None else 0.0

    def check_names(self, known: set[str]) -> None:
        """Every named source exists in the network: a typo would silently make a unit clean."""
        unknown = sorted(set(self.by_source) - known)
        if unknown:
            raise EmissionFactorError(
                f"emission factors name sources the network does not have: {', '.join(unknown[:10])}"
                f"{' ...' if len(unknown) > 10 else ''} (names are table:index of an in-service element, "
                "e.g. gen:3, sgen:0, ext_grid:0)"
            )

    def to_json(self) -> dict:
        """The canonical JSON form of these factors (what a result records as its input)."""
        out: dict[str, object] = {}
        for name in sorted(self.by_source):
            m = self.by_source[name]
            if isinstance(m, Factor):
                out[name] = {"t_per_mwh": m.t_per_mwh}
            else:
                out[name] = {"coal": {"a": m.a, "b": m.b, "c": m.c, "carbon_content": m.carbon_content,
                                      "oxidation_rate": m.oxidation_rate}}
        return out


_COAL_FIELDS = ("a", "b", "c", "carbon_content", "oxidation_rate")


def _number(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise EmissionFactorError(f"{where}: expected a number, got {value!r}")
    x = float(value)
    if not math.isfinite(x) or x < 0:
        raise EmissionFactorError(f"{where}: must be a finite number >= 0, got {value!r}")
    return x


def parse_model(name: str, value: object, where: str = "emission factors") -> EmissionModel:
    at = f"{where}: {name}"
    if not SOURCE_NAME.match(name):
        raise EmissionFactorError(f"{at}: a source is named table:index, e.g. gen:3 or ext_grid:0")
    if isinstance(value, dict):
        if set(value) == {"t_per_mwh"}:
            return Factor(_number(value["t_per_mwh"], f"{at}.t_per_mwh"))
        if set(value) == {"coal"} and isinstance(value["coal"], dict):
            coal = value["coal"]
            missing = [f for f in _COAL_FIELDS if f not in coal]
            extra = sorted(set(coal) - set(_COAL_FIELDS))
            if missing or extra:
                raise EmissionFactorError(
                    f"{at}.coal: needs exactly {', '.join(_COAL_FIELDS)}"
                    + (f"; missing {', '.join(missing)}" if missing else "")
                    + (f"; unknown {', '.join(extra)}" if extra else "")
                )
            curve = CoalCurve(*(_number(coal[f], f"{at}.coal.{f}") for f in _COAL_FIELDS))
            if curve.oxidation_rate > 1 or curve.carbon_content > 1:
                raise EmissionFactorError(f"{at}.coal: carbon_content and oxidation_rate are fractions (0..1)")
            return curve
        raise EmissionFactorError(f"{at}: expected a number, {{\"t_per_mwh\": x}} or {{\"coal\": {{...}}}}, "
                                  f"got keys {sorted(value)}")
    return Factor(_number(value, at))


def parse_factors(doc: object, where: str = "emission factors") -> EmissionFactors:
    if not isinstance(doc, dict):
        raise EmissionFactorError(f"{where}: expected a JSON object mapping source names to factors")
    return EmissionFactors({str(k): parse_model(str(k), v, where) for k, v in doc.items()})


def load_factors(path: Path) -> EmissionFactors:
    return parse_factors(read_json(path, EmissionFactorError), str(path))
