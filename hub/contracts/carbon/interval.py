"""One settlement interval of the carbon contract: meters' sealed readings -> the power of the
elements they measure -> power flow -> carbon emission flow, named by the model's version.

A meter's power over [from, to) is its net energy drawn from the grid divided by the time it
was measured over (energy registers: `energy_import` minus `energy_export`, first and last
reading in the interval), or, with fewer than two energy readings, the mean of its
`power_total` readings. Positive is drawn from the grid: a load's power is that figure, a
generator's its negative. A meter with neither is an error naming it: an interval is not
computed on a guess.

Pure: readings in, powers out, and a network with those powers set; `gridtrace carbon
interval` reads the hub's store and writes the result.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from hub.contracts.carbon.document import canonical_json
from hub.contracts.carbon.model import NetworkModel
from protos.records import Gap, Reading

POWER_UNITS = {"W": 1e-6, "kW": 1e-3, "MW": 1.0}
ENERGY_UNITS = {"Wh": 1e-6, "kWh": 1e-3, "MWh": 1.0}
NS_PER_H = 3_600_000_000_000
CONSUMING = ("load", "storage", "motor")  # their p_mw is power drawn; generators' is power produced


class IntervalError(ValueError):
    """An interval that cannot be computed; the message names the meters and what is missing."""


@dataclass(frozen=True)
class MeterPower:
    meter_id: str
    mw: float  # drawn from the grid: positive for a consuming meter
    method: str  # "energy" or "power"
    readings: int
    gaps: int  # gap records of the meter in the interval

    def to_json(self) -> dict:
        return {"mw": self.mw, "method": self.method, "readings": self.readings, "gaps": self.gaps}


def _quantity(r: Reading, name: str, units: Mapping[str, float]) -> float | None:
    for q in r.quantities:
        if q.name == name and q.unit in units:
            return q.value * units[q.unit]
    return None


def meter_power(meter_id: str, entries: Sequence[Reading | Gap]) -> MeterPower:
    readings = sorted((e for e in entries if isinstance(e, Reading)), key=lambda r: r.timestamp_ns)
    gaps = sum(1 for e in entries if isinstance(e, Gap))
    energy = []
    for r in readings:
        imp, exp = _quantity(r, "energy_import", ENERGY_UNITS), _quantity(r, "energy_export", ENERGY_UNITS)
        if imp is not None:
            energy.append((r.timestamp_ns, imp - (exp or 0.0)))
    if len(energy) >= 2 and energy[-1][0] > energy[0][0]:
        hours = (energy[-1][0] - energy[0][0]) / NS_PER_H
        return MeterPower(meter_id, (energy[-1][1] - energy[0][1]) / hours, "energy", len(readings), gaps)
    power = [p for r in readings if (p := _quantity(r, "power_total", POWER_UNITS)) is not None]
    if power:
        return MeterPower(meter_id, sum(power) / len(power), "power", len(readings), gaps)
    raise IntervalError(f"meter {meter_id}: {len(readings)} readings and {gaps} gaps in the interval, "
                        "without two energy_import readings or any power_total (W, kW or MW)")


def network_for_interval(model: NetworkModel, powers: Mapping[str, MeterPower]) -> object:
    """The model's network with every metered element's power set from its meter."""
    import pandapower as pp

    missing = sorted(set(model.meters) - set(powers))
    if missing:
        raise IntervalError(f"no power for meters {', '.join(missing)}: the interval needs all of the model's meters")
    net = pp.from_json_string(model.network_json)
    for meter, element in sorted(model.meters.items()):
        table, index = element.split(":")
        drawn = powers[meter].mw
        net[table].loc[int(index), "p_mw"] = drawn if table in CONSUMING else -drawn
    return net


def interval_digest(model: NetworkModel, from_ns: int, to_ns: int, powers: Mapping[str, MeterPower],
                    readings_sha256: str, solution: str) -> str:
    """What an interval result was computed from: the model's version, the interval, the meters'
    powers and the readings they came from."""
    return hashlib.sha256(canonical_json({
        "model_version": model.version, "from_ns": from_ns, "to_ns": to_ns,
        "meters": {m: p.to_json() for m, p in sorted(powers.items())}, "readings_sha256": readings_sha256,
        "solution": solution,
    }).encode()).hexdigest()
