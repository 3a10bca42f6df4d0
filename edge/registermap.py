"""Meter register maps: which Modbus registers hold which quantity, and how to decode them.

A register map is data (a TOML file in ``edge/registermaps/`` or anywhere on disk), never
code: supporting a new meter model means writing a file, not a branch. This module loads
and validates such files and does the pure work around them: planning the fewest read
requests that cover a map, and turning 16-bit register words into values and back. The
Modbus source decodes with it and the simulator encodes with it, so both sides share one
definition of the layout.

The map's ``[map]`` table gives defaults (function code, word and byte order) that any
``[[register]]`` may override, so one generic map can describe a meter that mixes input and
holding registers or orders its 32-bit values differently per block. A value is
``raw * scale * 10**sf`` where ``sf`` is the value of the register named by
``scale_register`` (SunSpec's scale factors); registers of kind ``scale_factor`` are read
but not reported. ``min``/``max`` give the plausible range of a quantity: a value outside
it is still reported, flagged out of range by the poller.
"""

from __future__ import annotations

import math
import struct
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_MAX_GAP",
    "KINDS",
    "TYPES",
    "NOT_IMPLEMENTED_CONVENTIONS",
    "ReadBlock",
    "Register",
    "RegisterEncodeError",
    "RegisterMap",
    "RegisterMapError",
    "available_register_maps",
    "load_register_map",
    "load_register_map_file",
]

# type name -> (struct format character, registers spanned)
_TYPE_LAYOUT: dict[str, tuple[str, int]] = {
    "int16": ("h", 1),
    "uint16": ("H", 1),
    "int32": ("i", 2),
    "uint32": ("I", 2),
    "int64": ("q", 4),
    "uint64": ("Q", 4),
    "float32": ("f", 2),
    "float64": ("d", 4),
}
TYPES: tuple[str, ...] = tuple(_TYPE_LAYOUT)
KINDS: tuple[str, ...] = ("instantaneous", "counter", "scale_factor")
_ORDERS = ("big", "little")

# SunSpec's "not implemented" raw values per type (SunSpec Information Model Reference):
# a meter answers these for points it does not measure. Energy accumulators (acc32/acc64)
# use 0, which is also a real reading, so unsigned wide types have no sentinel here.
_SUNSPEC_NOT_IMPLEMENTED: dict[str, int] = {
    "int16": -0x8000,
    "uint16": 0xFFFF,
    "int32": -0x80000000,
    "uint32": 0xFFFFFFFF,
    "int64": -0x8000000000000000,
}
NOT_IMPLEMENTED_CONVENTIONS: tuple[str, ...] = ("none", "sunspec")

# Unused registers a read may span to save a request. Small on purpose: some meters answer
# a read that touches an unimplemented register with exception 2, and a map for such a
# meter sets max_gap = 0.
DEFAULT_MAX_GAP = 8

_MAP_FIELDS = {
    "name", "vendor", "model", "function", "word_order", "byte_order", "max_gap",
    "not_implemented",
}
_REGISTER_FIELDS = {
    "name", "address", "type", "unit", "scale", "scale_register", "kind", "description",
    "function", "word_order", "byte_order", "min", "max",
}


class RegisterMapError(ValueError):
    """A register map file that cannot be used; the message names file, register and field."""


class RegisterEncodeError(ValueError):
    """A value that does not fit the register it is meant for."""


@dataclass(frozen=True)
class ReadBlock:
    """One Modbus read request: function code 3 or 4, first address, register count."""

    function: int
    start: int
    count: int

    @property
    def end(self) -> int:
        """First address after the block."""
        return self.start + self.count

    @property
    def span(self) -> str:
        """The addresses read, for messages: ``0x0000..0x0045``."""
        return f"0x{self.start:04X}..0x{self.end - 1:04X}"


@dataclass(frozen=True)
class Register:
    """One quantity: where it lives, how it is stored, what it means.

    ``function``, ``word_order`` and ``byte_order`` of None mean "as the map says".
    """

    name: str
    address: int
    type: str
    unit: str
    scale: float = 1.0
    kind: str = "instantaneous"
    description: str = ""
    function: int | None = None
    word_order: str | None = None
    byte_order: str | None = None
    scale_register: str | None = None
    min: float | None = None
    max: float | None = None

    @property
    def width(self) -> int:
        """Number of 16-bit registers the value spans."""
        return _TYPE_LAYOUT[self.type][1]

    @property
    def end(self) -> int:
        """First address after this register."""
        return self.address + self.width

    def plausible(self, value: float) -> bool:
        """Whether `value` lies in the register's plausible range (no range: always)."""
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)


@dataclass(frozen=True)
class RegisterMap:
    """The registers of one meter model and how its words are ordered."""

    name: str
    vendor: str
    model: str
    function: int
    word_order: str
    byte_order: str
    registers: tuple[Register, ...]
    max_gap: int = DEFAULT_MAX_GAP
    not_implemented: str = "none"

    def register(self, name: str) -> Register:
        """The register called ``name``; KeyError names the map and what it does have."""
        for reg in self.registers:
            if reg.name == name:
                return reg
        raise KeyError(
            f"register map {self.name!r} has no register {name!r}; "
            f"it has: {', '.join(r.name for r in self.registers)}"
        )

    @property
    def quantities(self) -> tuple[Register, ...]:
        """The registers reported as quantities (all but scale factors)."""
        return tuple(r for r in self.registers if r.kind != "scale_factor")

    def function_of(self, reg: Register) -> int:
        """The function code that reads `reg`."""
        return reg.function if reg.function is not None else self.function

    def plan(self, max_registers: int = 64, max_gap: int | None = None) -> list[ReadBlock]:
        """The fewest contiguous reads covering every register, input registers first.

        Registers are never split across reads, and one read never mixes function codes.
        Gaps of up to ``max_gap`` unused registers (default: the map's own ``max_gap``) are
        read through rather than costing a request.
        """
        if max_gap is None:
            max_gap = self.max_gap
        if max_gap < 0:
            raise ValueError(f"max_gap must be >= 0, got {max_gap}")
        widest = max((r.width for r in self.registers), default=1)
        if max_registers < widest:
            raise ValueError(
                f"max_registers={max_registers} is smaller than the widest register "
                f"({widest}) of map {self.name!r}"
            )
        blocks: list[ReadBlock] = []
        for function in (4, 3):
            start = end = -1
            regs = sorted(
                (r for r in self.registers if self.function_of(r) == function),
                key=lambda r: r.address,
            )
            for reg in regs:
                fits = (
                    start >= 0
                    and reg.address - end <= max_gap
                    and reg.end - start <= max_registers
                )
                if fits:
                    end = max(end, reg.end)
                    continue
                if start >= 0:
                    blocks.append(ReadBlock(function, start, end - start))
                start, end = reg.address, reg.end
            if start >= 0:
                blocks.append(ReadBlock(function, start, end - start))
        return blocks

    def decode(self, start: int, words: Sequence[int], function: int | None = None) -> dict[str, float]:
        """Values of the registers lying wholly inside one read of ``words`` from ``start``."""
        block = ReadBlock(function or self.function, start, len(words))
        return self.decode_blocks([(block, words)])

    def decode_blocks(self, reads: Sequence[tuple[ReadBlock, Sequence[int]]]) -> dict[str, float]:
        """Values of every quantity whose registers were read, scaled; NaN for a value the
        meter marks as not implemented or whose scale-factor register was not read."""
        raw: dict[str, int | float] = {}
        for reg in self.registers:
            function = self.function_of(reg)
            for block, words in reads:
                if block.function == function and block.start <= reg.address and reg.end <= block.start + len(words):
                    chunk = words[reg.address - block.start : reg.end - block.start]
                    raw[reg.name] = self._unpack(reg, chunk)
                    break
        values: dict[str, float] = {}
        for reg in self.registers:
            if reg.kind == "scale_factor" or reg.name not in raw:
                continue
            value = raw[reg.name]
            if self._not_implemented(reg, value):
                values[reg.name] = math.nan
                continue
            scaled = float(value) * reg.scale if reg.scale != 1.0 else float(value)
            if reg.scale_register is not None:
                sf = raw.get(reg.scale_register)
                sf_reg = self.register(reg.scale_register)
                if sf is None or self._not_implemented(sf_reg, sf) or not -10 <= sf <= 10:
                    values[reg.name] = math.nan
                    continue
                # Multiply or divide by an exact power of ten: 10**-2 is inexact in binary.
                scaled = scaled * 10 ** int(sf) if sf >= 0 else scaled / 10 ** -int(sf)
            values[reg.name] = scaled
        return values

    def encode(self, values: Mapping[str, float], scale_factors: Mapping[str, int] | None = None) -> dict[int, int]:
        """Register words (address -> 16-bit word) holding ``values``; the inverse of decode.

        ``scale_factors`` gives the exponent of each scale-factor register (default 0); they
        are encoded too, and a value with a ``scale_register`` is stored divided by 10**sf.
        """
        factors = dict(scale_factors or {})
        words: dict[int, int] = {}
        for reg in self.registers:
            if reg.kind == "scale_factor":
                self._put(words, reg, factors.get(reg.name, 0))
        for name, value in values.items():
            reg = self._register_for_encode(name)
            if reg.kind == "scale_factor":
                raise RegisterEncodeError(
                    f"register map {self.name!r}, register {name!r} is a scale factor; "
                    "pass it in scale_factors"
                )
            if reg.scale_register is not None:
                sf = factors.get(reg.scale_register, 0)
                value = value / 10**sf if sf >= 0 else value * 10**-sf
            self._put(words, reg, self._raw_value(reg, value))
        return words

    def _put(self, words: dict[int, int], reg: Register, raw: int | float) -> None:
        packed = struct.pack(">" + _TYPE_LAYOUT[reg.type][0], raw)
        for offset, word in enumerate(self._from_bytes(reg, packed)):
            words[reg.address + offset] = word

    def _not_implemented(self, reg: Register, raw: int | float) -> bool:
        if self.not_implemented != "sunspec":
            return False
        return raw == _SUNSPEC_NOT_IMPLEMENTED.get(reg.type)

    def _register_for_encode(self, name: str) -> Register:
        try:
            return self.register(name)
        except KeyError as exc:
            raise RegisterEncodeError(exc.args[0]) from None

    def _raw_value(self, reg: Register, value: float) -> int | float:
        scaled = value / reg.scale if reg.scale != 1.0 else value
        if reg.type.startswith("float"):
            try:
                struct.pack(">" + _TYPE_LAYOUT[reg.type][0], scaled)
            except OverflowError:
                raise RegisterEncodeError(
                    f"register map {self.name!r}, register {reg.name!r}: {value!r} "
                    f"is out of range for {reg.type}"
                ) from None
            return scaled
        if not math.isfinite(scaled):
            raise RegisterEncodeError(
                f"register map {self.name!r}, register {reg.name!r}: {value!r} "
                f"cannot be stored in an {reg.type} register"
            )
        raw = round(scaled)
        bits = 16 * reg.width
        low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if reg.type.startswith(
            "int"
        ) else (0, (1 << bits) - 1)
        if not low <= raw <= high:
            raise RegisterEncodeError(
                f"register map {self.name!r}, register {reg.name!r}: {value!r} "
                f"(raw {raw} at scale {reg.scale}) is out of range {low}..{high} of {reg.type}"
            )
        return raw

    def _unpack(self, reg: Register, words: Sequence[int]) -> int | float:
        return struct.unpack(">" + _TYPE_LAYOUT[reg.type][0], self._to_bytes(reg, words))[0]

    def _orders(self, reg: Register) -> tuple[str, str]:
        return (reg.word_order or self.word_order, reg.byte_order or self.byte_order)

    def _to_bytes(self, reg: Register, words: Sequence[int]) -> bytes:
        word_order, byte_order = self._orders(reg)
        ordered = list(words) if word_order == "big" else list(reversed(words))
        return b"".join(int(w).to_bytes(2, byte_order) for w in ordered)  # type: ignore[arg-type]

    def _from_bytes(self, reg: Register, data: bytes) -> list[int]:
        word_order, byte_order = self._orders(reg)
        words = [int.from_bytes(data[i : i + 2], byte_order) for i in range(0, len(data), 2)]  # type: ignore[arg-type]
        return words if word_order == "big" else list(reversed(words))

    def with_orders(self, word_order: str, byte_order: str | None = None) -> RegisterMap:
        """This map with every register read in another word (and byte) order: what
        `edge probe` tries when values look implausible."""
        regs = tuple(
            replace(r, word_order=word_order, byte_order=byte_order or r.byte_order)
            for r in self.registers
        )
        return replace(self, registers=regs)


def load_register_map_file(path: str | Path) -> RegisterMap:
    """Load and validate a register map TOML file from disk."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RegisterMapError(f"{path}: cannot read register map: {exc.strerror}") from None
    return _parse(text, str(path))


def load_register_map(name: str) -> RegisterMap:
    """Load a built-in register map by name (e.g. ``eastron_sdm630``)."""
    if name not in available_register_maps():
        raise RegisterMapError(
            f"no built-in register map named {name!r}; built-in maps: "
            f"{', '.join(available_register_maps()) or '(none)'}; "
            "for a map of your own, give the path of its .toml file"
        )
    source = _builtin_dir().joinpath(f"{name}.toml")
    return _parse(source.read_text(encoding="utf-8"), f"built-in register map {name}.toml")


def available_register_maps() -> list[str]:
    """Names of the built-in register maps, sorted."""
    return sorted(
        entry.name.removesuffix(".toml")
        for entry in _builtin_dir().iterdir()
        if entry.name.endswith(".toml")
    )


def _builtin_dir() -> Any:
    # importlib.resources rather than __file__ so the maps are found inside a wheel or zip too.
    return resources.files("edge").joinpath("registermaps")


def _parse(text: str, origin: str) -> RegisterMap:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RegisterMapError(f"{origin}: not valid TOML: {exc}") from None

    head = doc.get("map")
    if not isinstance(head, dict):
        raise RegisterMapError(f"{origin}: missing [map] table (name, vendor, model, function, ...)")
    unknown = set(doc) - {"map", "register"}
    if unknown:
        raise RegisterMapError(
            f"{origin}: unknown top-level key(s) {', '.join(sorted(unknown))}; "
            "expected [map] and [[register]]"
        )
    where = f"{origin}: [map]"
    _reject_unknown(head, _MAP_FIELDS, where)
    name = _field(head, "name", str, where)
    vendor = _field(head, "vendor", str, where)
    model = _field(head, "model", str, where)
    function = _field(head, "function", int, where)
    if function not in (3, 4):
        raise RegisterMapError(
            f"{where}: field 'function' is {function}; expected 3 (holding registers) "
            "or 4 (input registers)"
        )
    word_order = _choice(head, "word_order", _ORDERS, where)
    byte_order = _choice(head, "byte_order", _ORDERS, where)
    max_gap = _field(head, "max_gap", int, where, DEFAULT_MAX_GAP)
    if max_gap < 0:
        raise RegisterMapError(f"{where}: field 'max_gap' is {max_gap}; expected 0 or more")
    not_implemented = _choice(head, "not_implemented", NOT_IMPLEMENTED_CONVENTIONS, where, "none")

    raw_registers = doc.get("register")
    if not isinstance(raw_registers, list) or not raw_registers:
        raise RegisterMapError(f"{origin}: no [[register]] tables; a map needs at least one")
    registers: list[Register] = []
    seen: set[str] = set()
    for index, raw in enumerate(raw_registers, start=1):
        reg = _parse_register(raw, f"{origin}: register #{index}")
        if reg.name in seen:
            raise RegisterMapError(
                f"{origin}: register #{index} {reg.name!r}: field 'name' is used twice; "
                "register names must be unique"
            )
        seen.add(reg.name)
        registers.append(reg)

    by_name = {r.name: r for r in registers}
    for index, reg in enumerate(registers, start=1):
        if reg.scale_register is None:
            continue
        sf = by_name.get(reg.scale_register)
        if sf is None or sf.kind != "scale_factor" or sf.type != "int16":
            raise RegisterMapError(
                f"{origin}: register #{index} {reg.name!r}: field 'scale_register' names "
                f"{reg.scale_register!r}, which is not an int16 register of kind "
                "'scale_factor' in this map"
            )

    ordered = sorted(registers, key=lambda r: (r.function or function, r.address))
    for before, after in zip(ordered, ordered[1:]):
        if (before.function or function) != (after.function or function):
            continue
        if after.address < before.end:
            raise RegisterMapError(
                f"{origin}: register {after.name!r}: field 'address' {after.address} "
                f"(0x{after.address:04X}) overlaps register {before.name!r} "
                f"({before.type} at 0x{before.address:04X}..0x{before.end - 1:04X})"
            )

    return RegisterMap(
        name=name,
        vendor=vendor,
        model=model,
        function=function,
        word_order=word_order,
        byte_order=byte_order,
        registers=tuple(registers),
        max_gap=max_gap,
        not_implemented=not_implemented,
    )


def _parse_register(raw: Any, where: str) -> Register:
    if not isinstance(raw, dict):
        raise RegisterMapError(f"{where}: expected a [[register]] table")
    name = _field(raw, "name", str, where)
    if not name:
        raise RegisterMapError(f"{where}: field 'name' is empty")
    where = f"{where} {name!r}"
    _reject_unknown(raw, _REGISTER_FIELDS, where)
    reg_type = _choice(raw, "type", TYPES, where)
    width = _TYPE_LAYOUT[reg_type][1]
    address = _field(raw, "address", int, where)
    if not 0 <= address <= 0xFFFF - (width - 1):
        raise RegisterMapError(
            f"{where}: field 'address' is {address}; a {reg_type} must lie within "
            f"0..65535 (so start at most {0xFFFF - (width - 1)}); use the 0-based "
            "protocol address, not the 30001/40001-style register number"
        )
    # a scale factor is a bare exponent
    unit = _field(raw, "unit", str, where, "" if raw.get("kind") == "scale_factor" else _MISSING)
    scale = float(_field(raw, "scale", (int, float), where, 1.0))
    if not math.isfinite(scale) or scale == 0:
        raise RegisterMapError(f"{where}: field 'scale' is {scale}; expected a non-zero number")
    kind = _choice(raw, "kind", KINDS, where, "instantaneous")
    description = _field(raw, "description", str, where, "")
    function = _field(raw, "function", int, where, None)
    if function is not None and function not in (3, 4):
        raise RegisterMapError(
            f"{where}: field 'function' is {function}; expected 3 (holding registers) "
            "or 4 (input registers)"
        )
    word_order = _choice(raw, "word_order", _ORDERS, where, None)
    byte_order = _choice(raw, "byte_order", _ORDERS, where, None)
    scale_register = _field(raw, "scale_register", str, where, None)
    low = _field(raw, "min", (int, float), where, None)
    high = _field(raw, "max", (int, float), where, None)
    if low is not None and high is not None and low > high:
        raise RegisterMapError(f"{where}: field 'min' ({low}) is greater than 'max' ({high})")
    return Register(
        name=name,
        address=address,
        type=reg_type,
        unit=unit,
        scale=scale,
        kind=kind,
        description=description,
        function=function,
        word_order=word_order,
        byte_order=byte_order,
        scale_register=scale_register,
        min=None if low is None else float(low),
        max=None if high is None else float(high),
    )


_MISSING = object()


def _field(table: dict, key: str, kind: type | tuple[type, ...], where: str, default: Any = _MISSING) -> Any:
    if key not in table:
        if default is _MISSING:
            raise RegisterMapError(f"{where}: field {key!r} is missing")
        return default
    value = table[key]
    # bool is an int subclass; `address = true` is a typo, not register 1
    if isinstance(value, bool) or not isinstance(value, kind):
        expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise RegisterMapError(
            f"{where}: field {key!r} is {value!r} ({type(value).__name__}); expected {expected}"
        )
    return value


def _choice(table: dict, key: str, allowed: Sequence[str], where: str, default: Any = _MISSING) -> Any:
    value = _field(table, key, str, where, default)
    if value is None and default is None:
        return None
    if value not in allowed:
        raise RegisterMapError(
            f"{where}: field {key!r} is {value!r}; expected one of {', '.join(allowed)}"
        )
    return value


def _reject_unknown(table: dict, known: set[str], where: str) -> None:
    unknown = set(table) - known
    if unknown:
        raise RegisterMapError(
            f"{where}: unknown field(s) {', '.join(sorted(unknown))}; "
            f"known fields: {', '.join(sorted(known))}"
        )
