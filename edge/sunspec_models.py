"""SunSpec model layouts: the data files, the register maps built from them, the served image.

A SunSpec device holds the marker ``SunS`` at a base address, then a chain of models, each
a model id, a length and that many registers, ending with id 0xFFFF. Model 1 (common)
names the manufacturer, model and serial number; models 201-204 are AC meters (single
phase, split phase, wye, delta) whose integer values are scaled by scale-factor registers
in the same model.

The layouts of those models are data (``edge/registermaps/sunspec/model_<id>.toml``,
transcribed from the SunSpec Alliance's model definitions), never code. This module loads
and checks them, turns a meter model into an ordinary `RegisterMap` with absolute
addresses, scale-factor registers and SunSpec's not-implemented values (so the poller
reads a SunSpec meter like any other), encodes and decodes SunSpec strings, and gives the
simulator the whole register image a SunSpec meter serves (`sunspec_server_layout`).

Everything here is pure: no device, no I/O beyond the packaged data files. Finding a
device's marker and walking its chain is `edge.sunspec`, which re-exports these names.
"""

from __future__ import annotations

import functools
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from edge.registermap import KINDS, Register, RegisterMap

__all__ = [
    "COMMON_MODEL_ID",
    "DEFAULT_SCALE_FACTORS",
    "END_MODEL_ID",
    "MARKER",
    "METER_MODEL_IDS",
    "SunSpecError",
    "SunSpecModel",
    "SunSpecModelError",
    "SunSpecPoint",
    "available_models",
    "decode_string",
    "encode_string",
    "load_model",
    "model_register_map",
    "parse_model",
    "sunspec_server_layout",
]

# The framing of a model chain: shared by discovery (edge.sunspec), which reads it, and
# sunspec_server_layout below, which writes it.
#: "SunS" in two registers, high byte first.
MARKER: tuple[int, int] = (0x5375, 0x6E53)
END_MODEL_ID = 0xFFFF
COMMON_MODEL_ID = 1
METER_MODEL_IDS: tuple[int, ...] = (201, 202, 203, 204)
#: SunSpec registers are holding registers (Modbus function 3).
_HOLDING = 3


# SunSpec point type -> (registers spanned, RegisterMap type or None for types we never
# report). acc32/acc64 are unsigned accumulators.
_POINT_TYPES: dict[str, tuple[int, str | None]] = {
    "int16": (1, "int16"),
    "uint16": (1, "uint16"),
    "count": (1, "uint16"),
    "acc16": (1, "uint16"),
    "enum16": (1, "uint16"),
    "bitfield16": (1, "uint16"),
    "sunssf": (1, "int16"),
    "pad": (1, None),
    "int32": (2, "int32"),
    "uint32": (2, "uint32"),
    "acc32": (2, "uint32"),
    "enum32": (2, "uint32"),
    "bitfield32": (2, "uint32"),
    "float32": (2, "float32"),
    "int64": (4, "int64"),
    "uint64": (4, "uint64"),
    "acc64": (4, "uint64"),
    "float64": (4, "float64"),
    "string": (0, None),  # size given per point
}

# The words a SunSpec device answers for a point it does not implement (SunSpec
# Information Model Reference). Accumulators use 0; the simulator serves these for every
# point it has no value for, as a real meter would.
_NOT_IMPLEMENTED_WORDS: dict[str, tuple[int, ...]] = {
    "int16": (0x8000,),
    "sunssf": (0x8000,),
    "pad": (0x8000,),
    "uint16": (0xFFFF,),
    "enum16": (0xFFFF,),
    "bitfield16": (0xFFFF,),
    "count": (0,),
    "acc16": (0,),
    "int32": (0x8000, 0),
    "uint32": (0xFFFF, 0xFFFF),
    "enum32": (0xFFFF, 0xFFFF),
    "bitfield32": (0xFFFF, 0xFFFF),
    "acc32": (0, 0),
    "float32": (0x7FC0, 0),
    "int64": (0x8000, 0, 0, 0),
    "uint64": (0xFFFF,) * 4,
    "acc64": (0,) * 4,
    "float64": (0x7FF8, 0, 0, 0),
}

#: Scale factors the simulator serves unless told otherwise. Chosen so a household or
#: small commercial meter fits int16: 0.01 A up to 327 A, 0.1 V up to 3276 V, 0.01 Hz,
#: 10 W/VA/var up to 327 kW (a 40 kW PV export does not fit W_SF = 0), PF in 0.01 %,
#: energies in whole Wh up to 4.29 GWh.
DEFAULT_SCALE_FACTORS: Mapping[str, int] = {
    "A_SF": -2,
    "V_SF": -1,
    "Hz_SF": -2,
    "W_SF": 1,
    "VA_SF": 1,
    "VAR_SF": 1,
    "PF_SF": -2,
    "TotWh_SF": 0,
}


# The base of every SunSpec error lives here, with the model-data error, so that callers
# catch one class whether a data file or a device was at fault; the device-side errors
# derive from it in edge.sunspec.
class SunSpecError(Exception):
    """A device that cannot be read as a SunSpec meter; the message says what to check."""


class SunSpecModelError(SunSpecError):
    """A SunSpec model data file that cannot be used; names file, point and field."""


@dataclass(frozen=True)
class SunSpecPoint:
    """One point of a model, and what gridtrace calls it (``quantity`` None: not read)."""

    name: str
    offset: int
    type: str
    size: int
    units: str = ""
    sf: str | None = None
    quantity: str | None = None
    quantity_unit: str = ""
    scale: float = 1.0
    kind: str = "instantaneous"
    min: float | None = None
    max: float | None = None
    description: str = ""


@dataclass(frozen=True)
class SunSpecModel:
    """A model's layout: id, length (registers after ID and L) and points in order."""

    id: int
    length: int
    label: str
    points: tuple[SunSpecPoint, ...]

    def point(self, name: str) -> SunSpecPoint:
        for point in self.points:
            if point.name == name:
                return point
        raise KeyError(f"SunSpec model {self.id} has no point {name!r}")


# -- model data ------------------------------------------------------------------------------


def available_models() -> list[int]:
    """Ids of the SunSpec models whose layout ships as data, sorted."""
    return sorted(
        int(entry.name.removeprefix("model_").removesuffix(".toml"))
        for entry in _model_dir().iterdir()
        if entry.name.startswith("model_") and entry.name.endswith(".toml")
    )


@functools.cache
def load_model(model_id: int) -> SunSpecModel:
    """The layout of SunSpec model ``model_id`` from its data file, validated."""
    if model_id not in available_models():
        raise SunSpecModelError(
            f"no layout for SunSpec model {model_id}; models with a layout: "
            f"{', '.join(map(str, available_models()))}"
        )
    source = _model_dir().joinpath(f"model_{model_id}.toml")
    return parse_model(source.read_text(encoding="utf-8"), f"SunSpec model data model_{model_id}.toml")


def _model_dir() -> Any:
    # importlib.resources so the data is found inside a wheel or zip too
    return resources.files("edge").joinpath("registermaps", "sunspec")


_MODEL_FIELDS = {"id", "length", "label"}
_POINT_FIELDS = {
    "name", "offset", "type", "size", "units", "sf", "quantity", "quantity_unit", "scale",
    "kind", "min", "max", "description",
}


def parse_model(text: str, origin: str) -> SunSpecModel:
    """Parse and check a model data file: points must tile the model exactly, in order,
    and every ``sf`` must name a ``sunssf`` point, so a transcription slip fails here
    rather than as a wrong reading in the field."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SunSpecModelError(f"{origin}: not valid TOML: {exc}") from None
    head = doc.get("model")
    if not isinstance(head, dict):
        raise SunSpecModelError(f"{origin}: missing [model] table (id, length, label)")
    _known(head, _MODEL_FIELDS, f"{origin}: [model]")
    model_id = _get(head, "id", int, f"{origin}: [model]")
    length = _get(head, "length", int, f"{origin}: [model]")
    label = _get(head, "label", str, f"{origin}: [model]", "")
    raw_points = doc.get("point")
    if not isinstance(raw_points, list) or not raw_points:
        raise SunSpecModelError(f"{origin}: no [[point]] tables")

    points: list[SunSpecPoint] = []
    offset = 2  # after ID and L
    for index, raw in enumerate(raw_points, start=1):
        where = f"{origin}: point #{index}"
        if not isinstance(raw, dict):
            raise SunSpecModelError(f"{where}: expected a [[point]] table")
        name = _get(raw, "name", str, where)
        where = f"{where} {name!r}"
        _known(raw, _POINT_FIELDS, where)
        point_type = _get(raw, "type", str, where)
        if point_type not in _POINT_TYPES:
            raise SunSpecModelError(
                f"{where}: field 'type' is {point_type!r}; expected one of {', '.join(_POINT_TYPES)}"
            )
        width, reg_type = _POINT_TYPES[point_type]
        size = _get(raw, "size", int, where, width if width else None)
        if size is None or size < 1 or (width and size != width):
            raise SunSpecModelError(
                f"{where}: field 'size' is {size}; a {point_type} spans "
                f"{width or 'a given number of (at least 1)'} registers"
            )
        at = _get(raw, "offset", int, where)
        if at != offset:
            raise SunSpecModelError(
                f"{where}: field 'offset' is {at}; the points before it end at {offset} "
                "(points must follow each other without gaps or overlaps)"
            )
        offset += size
        quantity = _get(raw, "quantity", str, where, None)
        if quantity is not None and reg_type is None:
            raise SunSpecModelError(f"{where}: field 'quantity': a {point_type} point cannot be a quantity")
        kind = _get(raw, "kind", str, where, "instantaneous")
        if kind not in KINDS or kind == "scale_factor":
            raise SunSpecModelError(f"{where}: field 'kind' is {kind!r}; expected instantaneous or counter")
        scale = float(_get(raw, "scale", (int, float), where, 1.0))
        if scale == 0:
            raise SunSpecModelError(f"{where}: field 'scale' is 0; expected a non-zero number")
        low = _get(raw, "min", (int, float), where, None)
        high = _get(raw, "max", (int, float), where, None)
        points.append(
            SunSpecPoint(
                name=name,
                offset=at,
                type=point_type,
                size=size,
                units=_get(raw, "units", str, where, ""),
                sf=_get(raw, "sf", str, where, None),
                quantity=quantity,
                quantity_unit=_get(raw, "quantity_unit", str, where, ""),
                scale=scale,
                kind=kind,
                min=None if low is None else float(low),
                max=None if high is None else float(high),
                description=_get(raw, "description", str, where, ""),
            )
        )
    if offset != length + 2:
        raise SunSpecModelError(
            f"{origin}: [model] field 'length' is {length} but the points cover "
            f"{offset - 2} registers after ID and L"
        )
    by_name: dict[str, SunSpecPoint] = {}
    by_quantity: dict[str, SunSpecPoint] = {}
    for point in points:
        if point.name in by_name:
            raise SunSpecModelError(f"{origin}: point {point.name!r}: field 'name' is used twice")
        by_name[point.name] = point
        if point.quantity is not None:
            if point.quantity in by_quantity:
                raise SunSpecModelError(
                    f"{origin}: point {point.name!r}: field 'quantity' {point.quantity!r} is "
                    f"already the quantity of point {by_quantity[point.quantity].name!r}"
                )
            by_quantity[point.quantity] = point
    for point in points:
        if point.sf is not None and (point.sf not in by_name or by_name[point.sf].type != "sunssf"):
            raise SunSpecModelError(
                f"{origin}: point {point.name!r}: field 'sf' names {point.sf!r}, "
                "which is not a sunssf point of this model"
            )
        if point.sf is not None and by_name[point.sf].quantity is not None:
            raise SunSpecModelError(f"{origin}: point {point.sf!r} is a scale factor and a quantity")
    return SunSpecModel(id=model_id, length=length, label=label, points=tuple(points))


def _get(table: dict, key: str, kind: type | tuple[type, ...], where: str, default: Any = ...) -> Any:
    if key not in table:
        if default is ...:
            raise SunSpecModelError(f"{where}: field {key!r} is missing")
        return default
    value = table[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        raise SunSpecModelError(f"{where}: field {key!r} is {value!r} ({type(value).__name__})")
    return value


def _known(table: dict, known: set[str], where: str) -> None:
    unknown = set(table) - known
    if unknown:
        raise SunSpecModelError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")


def model_register_map(model_id: int, address: int, *, vendor: str, model: str) -> RegisterMap:
    """A register map of model ``model_id``'s quantities, the model's ID register at
    ``address``: holding registers, big-endian words and bytes, one scale-factor register
    per ``sf`` point used, SunSpec's not-implemented values read as NaN."""
    layout = load_model(model_id)
    if not 0 <= address <= 0xFFFF - (layout.length + 1):
        raise ValueError(f"SunSpec model {model_id} at address {address} would run past 65535")
    used_sf = {p.sf for p in layout.points if p.quantity is not None and p.sf is not None}
    registers: list[Register] = []
    for point in layout.points:
        reg_type = _POINT_TYPES[point.type][1]
        if point.name in used_sf:
            registers.append(
                Register(
                    name=point.name,
                    address=address + point.offset,
                    type="int16",
                    unit="",
                    kind="scale_factor",
                    description=f"SunSpec {model_id} {point.name}: {point.description}",
                )
            )
        elif point.quantity is not None and reg_type is not None:
            registers.append(
                Register(
                    name=point.quantity,
                    address=address + point.offset,
                    type=reg_type,
                    unit=point.quantity_unit,
                    scale=point.scale,
                    kind=point.kind,
                    description=f"SunSpec {model_id} {point.name}: {point.description}",
                    scale_register=point.sf,
                    min=point.min,
                    max=point.max,
                )
            )
    return RegisterMap(
        name=f"sunspec_{model_id}",
        vendor=vendor,
        model=model,
        function=_HOLDING,
        word_order="big",
        byte_order="big",
        registers=tuple(registers),
        # SunSpec requires every register of a model to be readable, so a read may span
        # any unused points; the block size is the only limit.
        max_gap=layout.length,
        not_implemented="sunspec",
    )


# -- strings ---------------------------------------------------------------------------------


def decode_string(words: Sequence[int]) -> str:
    """A SunSpec string: two characters per register, high byte first, up to the first NUL."""
    data = b"".join(int(w).to_bytes(2, "big") for w in words)
    return data.split(b"\0", 1)[0].decode("ascii", errors="replace").strip()


def encode_string(text: str, size: int) -> list[int]:
    """``text`` as ``size`` registers, NUL padded; ValueError if it does not fit or is not ASCII."""
    try:
        data = text.encode("ascii")
    except UnicodeEncodeError:
        raise ValueError(f"SunSpec string {text!r} is not ASCII") from None
    if len(data) > 2 * size:
        raise ValueError(f"SunSpec string {text!r} is longer than {2 * size} characters")
    data = data.ljust(2 * size, b"\0")
    return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]


# -- the serving side ------------------------------------------------------------------------


def sunspec_server_layout(
    meter_model: int = 203,
    base: int = 40000,
    manufacturer: str = "gridtrace-sim",
    model: str = "SIM-203",
    serial: str = "SIM000001",
    scale_factors: Mapping[str, int] | None = None,
) -> tuple[RegisterMap, dict[int, int], dict[str, int]]:
    """What a simulated SunSpec meter serves as holding registers.

    Returns (map, fixed_words, scale_factors): ``fixed_words`` covers the whole layout
    (marker, common model 1, the meter model with SunSpec's not-implemented value in every
    point and no events, end marker); serve it overlaid with
    ``map.encode(values, scale_factors)``, so quantities without a value read as not
    implemented. `discover` finds that image at ``base`` and the map decodes it back to
    the values within each scale factor's resolution. Scale factors default to
    `DEFAULT_SCALE_FACTORS`; pick others (e.g. W_SF = 0 for 1 W resolution) when the
    values fit int16.
    """
    if meter_model not in METER_MODEL_IDS:
        raise ValueError(f"meter_model must be one of {METER_MODEL_IDS}, got {meter_model}")
    common = load_model(COMMON_MODEL_ID)
    meter = load_model(meter_model)
    common_address = base + 2
    meter_address = common_address + 2 + common.length
    end_address = meter_address + 2 + meter.length
    if base < 0 or end_address + 1 > 0xFFFF:
        raise ValueError(f"a SunSpec layout at base {base} would run past register 65535")

    fixed: dict[int, int] = {base: MARKER[0], base + 1: MARKER[1]}
    fixed[common_address] = COMMON_MODEL_ID
    fixed[common_address + 1] = common.length
    strings = {"Mn": manufacturer, "Md": model, "Opt": "", "Vr": "1.0", "SN": serial}
    for point in common.points:
        if point.type == "string":
            try:
                words = encode_string(strings[point.name], point.size)
            except ValueError as exc:
                raise ValueError(f"common model point {point.name}: {exc}") from None
        elif point.name == "DA":
            words = [1]
        else:
            words = list(_NOT_IMPLEMENTED_WORDS[point.type])
        _place(fixed, common_address + point.offset, words)
    fixed[meter_address] = meter_model
    fixed[meter_address + 1] = meter.length
    for point in meter.points:
        # A simulated meter raises no events; every other point starts as not implemented.
        words = [0, 0] if point.name == "Evt" else list(_NOT_IMPLEMENTED_WORDS[point.type])
        _place(fixed, meter_address + point.offset, words)
    fixed[end_address] = END_MODEL_ID
    fixed[end_address + 1] = 0

    regmap = model_register_map(meter_model, meter_address, vendor=manufacturer, model=model)
    names = [r.name for r in regmap.registers if r.kind == "scale_factor"]
    chosen = {name: DEFAULT_SCALE_FACTORS.get(name, 0) for name in names}
    for name, value in (scale_factors or {}).items():
        if name not in chosen:
            raise ValueError(
                f"scale factor {name!r} is not used by SunSpec model {meter_model}; "
                f"its scale factors: {', '.join(names)}"
            )
        if isinstance(value, bool) or not isinstance(value, int) or not -10 <= value <= 10:
            raise ValueError(f"scale factor {name!r} is {value!r}; expected an integer -10..10")
        chosen[name] = value
    return regmap, fixed, chosen


def _place(words: dict[int, int], address: int, values: Sequence[int]) -> None:
    for i, value in enumerate(values):
        words[address + i] = value
