"""What a simulated device serves, independent of the wire: a register map plus fixed words.

A `DeviceProfile` is a `RegisterMap` (where each quantity lives and how it is encoded), the
exponents of the map's scale-factor registers, and words that never change (a SunSpec
device's ``SunS`` marker, model ids and lengths, manufacturer strings). The servers encode a
`SimulatedMeter`'s values through it and have no branch for any meter model: a new model
is a new register map file, or a new entry in `_LAYOUTS` for a layout built in code.

Quantities the map has but the simulated meter does not measure keep their fixed words
where the profile has some (SunSpec's "not implemented" values) and read as 0 otherwise;
values beyond what a register can hold are served saturated at its limit, as a meter's
firmware would clamp them, rather than failing the read.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

from edge.registermap import (
    RegisterMap,
    RegisterMapError,
    available_register_maps,
    load_register_map,
    load_register_map_file,
)

__all__ = ["DeviceProfile", "available_profiles", "load_profile"]

_THREE_PHASE_NAMES = frozenset(
    f"{q}_l{n}" for q in ("voltage", "current", "power") for n in (2, 3)
)

_INT_RANGES = {
    "int16": (-(1 << 15), (1 << 15) - 1),
    "uint16": (0, (1 << 16) - 1),
    "int32": (-(1 << 31), (1 << 31) - 1),
    "uint32": (0, (1 << 32) - 1),
    "int64": (-(1 << 63), (1 << 63) - 1),
    "uint64": (0, (1 << 64) - 1),
}


@dataclass(frozen=True, eq=False)
class DeviceProfile:
    """A register map, its scale factors and the words fixed for the device's lifetime."""

    name: str
    register_map: RegisterMap
    fixed_words: Mapping[int, int] = field(default_factory=dict)
    scale_factors: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for address, word in self.fixed_words.items():
            if not (0 <= address <= 0xFFFF and 0 <= word <= 0xFFFF):
                raise ValueError(
                    f"device profile {self.name!r}: fixed word {word!r} at address {address!r} "
                    "is not a 16-bit word at a 0..65535 address"
                )

    @classmethod
    def from_register_map(cls, regmap: RegisterMap) -> DeviceProfile:
        """A profile that is just a register map (scale factors, if any, all 0)."""
        return cls(regmap.name, regmap)

    @property
    def phases(self) -> int:
        """3 if the map has per-phase quantities of L2 or L3, else 1: the kind of meter to
        simulate behind it."""
        names = {r.name for r in self.register_map.registers}
        return 3 if names & _THREE_PHASE_NAMES else 1

    @cached_property
    def spans(self) -> list[tuple[int, int]]:
        """(start, count) of the address ranges served; a read outside them gets exception 2.

        Gaps the agent's block planner may read through (the map's ``max_gap``) are served
        as zeros so bridged reads work, as on the real meter.
        """
        intervals = [(b.start, b.end) for b in self.register_map.plan(max_registers=0x10000)]
        intervals += [(a, a + 1) for a in self.fixed_words]
        intervals.sort()
        merged: list[list[int]] = []
        for start, end in intervals:
            if merged and start - merged[-1][1] <= self.register_map.max_gap:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        return [(start, end - start) for start, end in merged]

    def encode(self, values: Mapping[str, float], *, swapped_words: bool = False) -> dict[int, int]:
        """Every served word (address -> word) for a meter showing `values`.

        ``swapped_words`` serves multi-register values in the opposite word order (a fault).
        """
        regmap = self._swapped_map if swapped_words else self.register_map
        limits = self._limits
        quantities = {}
        for name in self._quantity_names:
            value = values.get(name)
            if value is None:
                if name in self._fixed_names:
                    continue  # e.g. SunSpec's not-implemented value, already in fixed_words
                value = 0.0
            elif not math.isfinite(value):
                value = 0.0
            limit = limits.get(name)
            if limit is not None:
                value = min(max(value, limit[0]), limit[1])
            quantities[name] = value
        words = dict(self.fixed_words)
        words.update(regmap.encode(quantities, self.scale_factors))
        return words

    @cached_property
    def _quantity_names(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.register_map.quantities)

    @cached_property
    def _fixed_names(self) -> frozenset[str]:
        fixed = self.fixed_words
        return frozenset(r.name for r in self.register_map.quantities if r.address in fixed)

    @cached_property
    def _swapped_map(self) -> RegisterMap:
        regmap = self.register_map
        flipped = tuple(
            replace(r, word_order="little" if (r.word_order or regmap.word_order) == "big" else "big")
            for r in regmap.registers
        )
        return replace(regmap, registers=flipped)

    @cached_property
    def _limits(self) -> dict[str, tuple[float, float]]:
        """The range of values each integer register can hold, in the quantity's units."""
        limits = {}
        for reg in self.register_map.quantities:
            raw = _INT_RANGES.get(reg.type)
            if raw is None:
                continue
            factor = reg.scale
            if reg.scale_register is not None:
                factor *= 10.0 ** self.scale_factors.get(reg.scale_register, 0)
            # The extreme raw value of the sign's far end is SunSpec's "not implemented"
            # (-0x8000, 0xFFFF, ...): saturate one step short of it.
            lo, hi = (raw[0] + 1, raw[1]) if raw[0] < 0 else (0, raw[1] - 1)
            lo, hi = lo * factor, hi * factor
            limits[reg.name] = (min(lo, hi), max(lo, hi))
        return limits


def _sunspec_profile(name: str, meter_model: int) -> Callable[[], DeviceProfile]:
    def build() -> DeviceProfile:
        from edge.sunspec import sunspec_server_layout

        regmap, fixed_words, scale_factors = sunspec_server_layout(
            meter_model, model=f"SIM-{meter_model}"
        )
        return DeviceProfile(name, regmap, dict(fixed_words), dict(scale_factors))

    return build


def _sunspec_available() -> bool:
    try:
        return importlib.util.find_spec("edge.sunspec") is not None
    except ImportError:
        return False


# Layouts built in code rather than read from one map file, with a test of availability.
# "sunspec": marker at 40000, common model 1, a three-phase wye meter (model 203);
# "sunspec_201": the same with a single-phase meter (model 201).
_LAYOUTS: dict[str, tuple[Callable[[], DeviceProfile], Callable[[], bool]]] = {
    "sunspec": (_sunspec_profile("sunspec", 203), _sunspec_available),
    "sunspec_201": (_sunspec_profile("sunspec_201", 201), _sunspec_available),
}


def available_profiles() -> list[str]:
    """Names `load_profile` accepts besides a file path: built-in maps and layouts."""
    built_in = [name for name, (_, available) in _LAYOUTS.items() if available()]
    return sorted({*available_register_maps(), *built_in})


def load_profile(name: str | Path) -> DeviceProfile:
    """The profile called `name` (a built-in map or layout) or of the map file at `name`.

    Raises RegisterMapError naming what exists when `name` is neither.
    """
    text = str(name)
    if text in _LAYOUTS:
        build, available = _LAYOUTS[text]
        if not available():
            raise RegisterMapError(f"the {text!r} device layout is not part of this installation")
        return build()
    if text.endswith(".toml") or "/" in text:
        return DeviceProfile.from_register_map(load_register_map_file(text))
    if text not in available_register_maps():
        raise RegisterMapError(
            f"no simulated device profile {text!r}; built in: {', '.join(available_profiles())}; "
            "or give the path of a register map .toml file"
        )
    return DeviceProfile.from_register_map(load_register_map(text))
