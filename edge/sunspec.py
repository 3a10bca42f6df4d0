"""SunSpec discovery: find the ``SunS`` marker, walk the model chain, read the common model.

A SunSpec device describes itself: at a base address (40000, 0 or 50000) it holds the
marker ``SunS``, then a chain of models (id, length, that many registers) ending with id
0xFFFF. `discover` finds the marker, walks the chain through a ``read`` callable (so
discovery is pure of any Modbus library and testable against a register image), reads the
common model 1 and returns a `SunSpecDevice` whose `register_map` reads its meter model
(201-204) like any other meter.

The model layouts, the register maps built from them and the simulator's served image
live in `edge.sunspec_models`; their names are re-exported here, so ``edge.sunspec`` stays
the one import for everything SunSpec.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

# Discovery reads the chain framing that the models module also writes; the rest of these
# are re-exported (see __all__) so importers keep using edge.sunspec alone.
from edge.registermap import RegisterMap
from edge.sunspec_models import (
    _HOLDING,
    COMMON_MODEL_ID,
    DEFAULT_SCALE_FACTORS,
    END_MODEL_ID,
    MARKER,
    METER_MODEL_IDS,
    SunSpecError,
    SunSpecModel,
    SunSpecModelError,
    SunSpecPoint,
    available_models,
    decode_string,
    encode_string,
    load_model,
    model_register_map,
    parse_model,
    sunspec_server_layout,
)

__all__ = [
    "BASES",
    "COMMON_MODEL_ID",
    "DEFAULT_SCALE_FACTORS",
    "END_MODEL_ID",
    "MARKER",
    "MAX_MODELS",
    "METER_MODEL_IDS",
    "CommonInfo",
    "ModelRef",
    "ReadRegisters",
    "SunSpecChainError",
    "SunSpecDevice",
    "SunSpecError",
    "SunSpecModel",
    "SunSpecModelError",
    "SunSpecNoMeterModel",
    "SunSpecNotFound",
    "SunSpecPoint",
    "available_models",
    "decode_string",
    "discover",
    "encode_string",
    "load_model",
    "model_register_map",
    "parse_model",
    "sunspec_server_layout",
]

#: Where SunSpec devices put the marker, in the order the specification says to try them.
BASES: tuple[int, ...] = (40000, 0, 50000)
#: A chain longer than this is a device whose model lengths are wrong, not a real device:
#: stop rather than walk the whole register space two registers at a time.
MAX_MODELS = 200
#: Modbus limit for one read of holding registers.
_MAX_READ = 125

#: read(function, start, count) -> count 16-bit words; raises on any failure.
ReadRegisters = Callable[[int, int, int], Awaitable[list[int]]]


class SunSpecNotFound(SunSpecError):
    """No ``SunS`` marker at any of the standard base addresses."""


class SunSpecChainError(SunSpecError):
    """The model chain after the marker is broken, runs away or lacks the common model."""


class SunSpecNoMeterModel(SunSpecError):
    """A SunSpec device without a meter model 201-204 (an inverter, a battery...)."""


class ModelRef(NamedTuple):
    """One model of a device's chain: its id, the address of its ID register, its length
    (registers after ID and L)."""

    id: int
    address: int
    length: int


@dataclass(frozen=True)
class CommonInfo:
    """What the common model (1) says about the device; empty strings where it says nothing."""

    manufacturer: str
    model: str
    options: str
    version: str
    serial: str
    device_address: int | None


@dataclass(frozen=True)
class SunSpecDevice:
    """A discovered SunSpec device: marker base, model chain, common model contents.

    ``end_marker`` is False when the chain stopped at a read error after the meter model
    instead of at model 0xFFFF (some devices leave the end marker out).
    """

    base: int
    models: tuple[ModelRef, ...]
    common: CommonInfo
    end_marker: bool = True

    @property
    def meter_model(self) -> ModelRef:
        """The first meter model (201-204) in the chain."""
        for ref in self.models:
            if ref.id in METER_MODEL_IDS:
                return ref
        raise SunSpecNoMeterModel(_no_meter_message(self.base, self.models))

    def __str__(self) -> str:
        # What `probe` and the agent's log show: who answered and where its meter is.
        c = self.common
        who = " ".join(x for x in (c.manufacturer, c.model) if x) or "unnamed device"
        serial = f" serial {c.serial}" if c.serial else ""
        meters = [m for m in self.models if m.id in METER_MODEL_IDS]
        meter = f"meter model {meters[0].id} at {meters[0].address}" if meters else "no meter model"
        return f"{who}{serial}, {meter} (SunSpec base {self.base}, models {', '.join(str(m.id) for m in self.models)})"

    def register_map(self) -> RegisterMap:
        """The meter model's quantities as a register map with absolute addresses."""
        ref = self.meter_model
        return model_register_map(
            ref.id,
            ref.address,
            vendor=self.common.manufacturer or "unknown",
            model=self.common.model or f"SunSpec {ref.id}",
        )


# -- discovery -------------------------------------------------------------------------------


async def discover(read: ReadRegisters) -> SunSpecDevice:
    """Find a SunSpec device's marker, walk its model chain and read its common model.

    ``read(function, start, count)`` reads holding registers (function 3) and raises on
    failure. Raises `SunSpecNotFound`, `SunSpecChainError` or `SunSpecNoMeterModel` with
    what to check.
    """
    base = await _find_marker(read)
    models, end_marker, stop = await _walk_chain(read, base)
    if not any(ref.id in METER_MODEL_IDS for ref in models):
        if stop is not None:
            raise SunSpecChainError(
                f"SunSpec chain at base {base} is broken: {stop}; models read before it: "
                f"{_model_list(models)}; check the register base and that the device "
                "answers reads across its whole model chain"
            )
        raise SunSpecNoMeterModel(_no_meter_message(base, models))
    common_ref = next((ref for ref in models if ref.id == COMMON_MODEL_ID), None)
    if common_ref is None:
        raise SunSpecChainError(
            f"SunSpec device at base {base} has no common model 1 (models: "
            f"{_model_list(models)}); every SunSpec device starts its chain with it: "
            "check the register base"
        )
    common = await _read_common(read, common_ref)
    device = SunSpecDevice(base=base, models=tuple(models), common=common, end_marker=end_marker)
    meter = device.meter_model
    expected = load_model(meter.id).length
    if meter.length < expected:
        raise SunSpecChainError(
            f"SunSpec meter model {meter.id} at address {meter.address} declares length "
            f"{meter.length}, but model {meter.id} has {expected} registers: the device "
            "does not follow the standard layout; describe it with a register map file"
        )
    return device


async def _find_marker(read: ReadRegisters) -> int:
    seen: list[str] = []
    failure: Exception | None = None
    answered = False
    for base in BASES:
        try:
            words = list(await read(_HOLDING, base, 2))
        except Exception as exc:  # noqa: BLE001 - any failure means "not here": try the next base
            seen.append(f"{base}: read failed ({_describe(exc)})")
            failure = exc
            continue
        answered = True
        if tuple(words) == MARKER:
            return base
        seen.append(f"{base}: {' '.join(f'0x{w:04X}' for w in words) or 'no data'}")
    hint = "" if answered else (
        "; no read was answered, so check the connection and unit id first (a device that "
        "answers other registers but none of these is not a SunSpec device)"
    )
    # The last read failure is chained as __cause__, so a caller can tell a timeout from
    # a device that answered "no such register".
    raise SunSpecNotFound(
        "no SunSpec marker 'SunS' (0x5375 0x6E53) at register 40000, 0 or 50000 "
        f"({'; '.join(seen)}): not a SunSpec device or wrong unit id / register base; "
        f"for a meter with its own register layout use a register map instead{hint}"
    ) from failure


async def _walk_chain(read: ReadRegisters, base: int) -> tuple[list[ModelRef], bool, str | None]:
    """The models after the marker; whether the end marker was reached; why the walk
    stopped early (a read error), if it did."""
    models: list[ModelRef] = []
    address = base + 2
    while True:
        if address > 0xFFFE:
            raise SunSpecChainError(
                f"SunSpec chain at base {base} runs past register 65535 (models: "
                f"{_model_list(models)}) without the end marker 0xFFFF: a model length is wrong"
            )
        try:
            header = list(await read(_HOLDING, address, 2))
            if len(header) != 2:
                raise ValueError(f"{len(header)} words for 2 registers")
        except Exception as exc:
            stop = f"reading the model header at {address} failed ({_describe(exc)})"
            if not models:
                raise SunSpecChainError(
                    f"SunSpec marker found at {base} but {stop}: check the register base "
                    "and the unit id"
                ) from exc
            # Some devices leave out the end marker; what was read so far may do.
            return models, False, stop
        model_id, length = header
        if model_id == END_MODEL_ID:
            return models, True, None
        if model_id == 0:
            raise SunSpecChainError(
                f"SunSpec chain at base {base} is broken at {address}: model id 0 "
                f"(after {_model_list(models)}); a previous model's length is probably wrong"
            )
        if len(models) == MAX_MODELS:
            raise SunSpecChainError(
                f"SunSpec chain at base {base} has more than {MAX_MODELS} models without "
                f"the end marker 0xFFFF (first: {_model_list(models[:5])}): the model "
                "lengths are wrong or this is not a SunSpec device"
            )
        models.append(ModelRef(model_id, address, length))
        address += 2 + length


async def _read_common(read: ReadRegisters, ref: ModelRef) -> CommonInfo:
    layout = load_model(COMMON_MODEL_ID)
    count = min(ref.length, layout.length)
    try:
        words = await _read_span(read, ref.address + 2, count)
    except Exception as exc:
        raise SunSpecChainError(
            f"SunSpec common model 1 at {ref.address} could not be read ({_describe(exc)}); "
            "the device announced it in its chain: check the connection"
        ) from exc
    values: dict[str, Sequence[int]] = {}
    for point in layout.points:
        start = point.offset - 2
        if start + point.size <= len(words):
            values[point.name] = words[start : start + point.size]

    def text(name: str) -> str:
        return decode_string(values[name]) if name in values else ""

    da = values.get("DA")
    return CommonInfo(
        manufacturer=text("Mn"),
        model=text("Md"),
        options=text("Opt"),
        version=text("Vr"),
        serial=text("SN"),
        device_address=None if da is None or da[0] == 0xFFFF else int(da[0]),
    )


async def _read_span(read: ReadRegisters, start: int, count: int) -> list[int]:
    words: list[int] = []
    while len(words) < count:
        chunk = min(_MAX_READ, count - len(words))
        got = list(await read(_HOLDING, start + len(words), chunk))
        if len(got) != chunk:
            raise ValueError(f"{len(got)} words for {chunk} registers")
        words.extend(got)
    return words


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _model_list(models: Sequence[ModelRef]) -> str:
    return ", ".join(f"{m.id}@{m.address}" for m in models) or "none"


def _no_meter_message(base: int, models: Sequence[ModelRef]) -> str:
    return (
        f"SunSpec device at base {base} has no meter model 201-204 (models: "
        f"{', '.join(str(m.id) for m in models) or 'none'}); it is probably an inverter or "
        "another device: check the unit id of the meter itself (a meter behind an inverter "
        "often answers on its own unit id)"
    )
