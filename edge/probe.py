"""`gridtrace edge probe`: read a meter once and say what was found, or what to check.

The judgement is pure and testable: given values decoded with a map, which look implausible,
whether the other word order would explain them, and which built-in map fits a meter best.
The I/O (one read per candidate map) is in `probe_modbus`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from edge.registermap import RegisterMap, available_register_maps, load_register_map
from edge.sources.modbus import MeterReadError, ModbusSource

__all__ = ["ProbeResult", "ProbeRow", "assess", "probe_modbus", "probe_sunspec"]


@dataclass(frozen=True)
class ProbeRow:
    name: str
    value: float
    unit: str
    plausible: bool


@dataclass(frozen=True)
class ProbeResult:
    """What one read with one map showed."""

    map_name: str
    rows: tuple[ProbeRow, ...]
    advice: tuple[str, ...] = ()

    @property
    def implausible(self) -> int:
        return sum(1 for r in self.rows if not r.plausible)

    @property
    def read(self) -> int:
        return sum(1 for r in self.rows if math.isfinite(r.value))


def assess(regmap: RegisterMap, values: Mapping[str, float]) -> ProbeResult:
    """Rows for every quantity of `regmap`, each judged against the map's plausible range."""
    rows = []
    for reg in regmap.quantities:
        value = values.get(reg.name, math.nan)
        ok = not math.isfinite(value) or reg.plausible(value)
        rows.append(ProbeRow(reg.name, value, reg.unit, ok))
    return ProbeResult(regmap.name, tuple(rows))


def _score(result: ProbeResult) -> tuple[int, int]:
    # Fewest implausible values first, then most values read.
    return (-result.implausible, result.read)


async def probe_modbus(
    source: ModbusSource, unit: int, regmap: RegisterMap | None, max_block: int = 64
) -> ProbeResult:
    """Read `unit` once with `regmap`, or with SunSpec and every built-in map when None
    (``--detect``), and return the best fitting result with advice."""
    if regmap is not None:
        values = await source.read(unit, regmap, max_block)
        return _with_word_order_advice(regmap, assess(regmap, values), values)

    tried: list[str] = []
    candidates: list[ProbeResult] = []
    sunspec = await probe_sunspec(source, unit)
    if sunspec is not None:
        return sunspec
    tried.append("sunspec (no SunS marker at 40000, 0 or 50000)")
    last_error: MeterReadError | None = None
    for name in available_register_maps():
        candidate = load_register_map(name)
        try:
            values = await source.read(unit, candidate, max_block)
        except MeterReadError as exc:
            if exc.reason in ("timeout", "unreachable"):
                raise  # nothing answers: no map will do better
            tried.append(f"{name} ({exc.reason})")
            last_error = exc
            continue
        candidates.append(assess(candidate, values))
        tried.append(f"{name} ({candidates[-1].implausible} implausible values)")
    if not candidates:
        assert last_error is not None
        raise last_error
    best = max(candidates, key=_score)
    advice = [f"tried: {', '.join(tried)}"]
    if best.implausible:
        advice.append(
            f"no built-in map reads this meter plausibly; the closest is {best.map_name}. "
            "Describe the meter in a map file of your own (docs/registermaps.md)"
        )
    else:
        advice.append(f"detected: register_map = \"{best.map_name}\"")
    return ProbeResult(best.map_name, best.rows, tuple(advice))


async def probe_sunspec(source: ModbusSource, unit: int) -> ProbeResult | None:
    from edge.sunspec import SunSpecError, discover

    async def read(function: int, start: int, count: int) -> list[int]:
        return await source.read_registers(unit, function, start, count)

    try:
        device = await discover(read)
    except (SunSpecError, MeterReadError):
        return None
    regmap = device.register_map()
    values = await source.read(unit, regmap)
    result = assess(regmap, values)
    return ProbeResult(
        result.map_name, result.rows, (f"SunSpec device: {device}", 'detected: register_map = "sunspec"')
    )


def _with_word_order_advice(
    regmap: RegisterMap, result: ProbeResult, values: Mapping[str, float]
) -> ProbeResult:
    if not result.implausible:
        return result
    advice = [f"{result.implausible} value(s) outside their plausible range"]
    if any(r.width > 1 for r in regmap.registers):
        other = "little" if regmap.word_order == "big" else "big"
        swapped = assess(regmap.with_orders(other), _swap_words(regmap, values))
        if swapped.implausible < result.implausible and swapped.read >= result.read:
            advice.append(
                f"with word_order = \"{other}\" only {swapped.implausible} would be: the meter "
                f"(or a gateway in front of it) orders 32-bit words {other}-word first; set "
                f"word_order = \"{other}\" in the register map"
            )
        else:
            advice.append(
                "the other word order does not explain them: check that the register map "
                "matches the meter model (--detect tries the built-in maps)"
            )
    return ProbeResult(result.map_name, result.rows, tuple(advice))


def _swap_words(regmap: RegisterMap, values: Mapping[str, float]) -> dict[str, float]:
    """The values the same registers would give read in the other word order (pure:
    re-encode what was decoded, then decode with the swapped map)."""
    other = regmap.with_orders("little" if regmap.word_order == "big" else "big")
    finite = {k: v for k, v in values.items() if math.isfinite(v)}
    try:
        words = regmap.encode(finite)
    except ValueError:
        return {}
    decoded: dict[str, float] = {}
    for block in regmap.plan(0x10000, max_gap=0x10000):
        chunk = [words.get(a, 0) for a in range(block.start, block.end)]
        decoded.update(other.decode_blocks([(block, chunk)]))
    return {k: v for k, v in decoded.items() if k in finite}
