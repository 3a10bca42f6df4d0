"""Meter register maps: which Modbus registers hold which quantity, and how to decode them.

A register map is data (a TOML file in ``edge/registermaps/`` or anywhere on disk), never
code: supporting a new meter model means writing a file, not a branch. This module loads
and validates such files and does the pure work around them: planning the fewest read
requests that cover a map, and turning 16-bit register words into values and back. The
Modbus source decodes with it and the simulator encodes with it, so both sides share one
definition of the layout.
"""

from __future__ import annotations

import math
import struct
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_MAX_GAP",
    "KINDS",
    "TYPES",
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
    "float32": ("f", 2),
    "float64": ("d", 4),
}
TYPES: tuple[str, ...] = tuple(_TYPE_LAYOUT)
KINDS: tuple[str, ...] = ("instantaneous", "counter")
_ORDERS = ("big", "little")

# Unused registers a read may span to save a request. Small on purpose: some meters answer
# a read that touches an unimplemented register with exception 2, and a map for such a
# meter sets max_gap = 0.
DEFAULT_MAX_GAP = 8

_MAP_FIELDS = {"name", "vendor", "model", "function", "word_order", "byte_order", "max_gap"}
_REGISTER_FIELDS = {"name", "address", "type", "unit", "scale", "kind", "description"}


class RegisterMapError(ValueError):
    """A register map file that cannot be used; the message names file, register and field."""


class RegisterEncodeError(ValueError):
    """A value that does not fit the register it is meant for."""


@dataclass(frozen=True)
class Register:
    """One quantity: where it lives, how it is stored, what it means."""

    name: str
    address: int
    type: str
    unit: str
    scale: float = 1.0
    kind: str = "instantaneous"
    description: str = ""

    @property
    def width(self) -> int:
        """Number of 16-bit registers the value spans."""
        return _TYPE_LAYOUT[self.type][1]

    @property
    def end(self) -> int:
        """First address after this register."""
        return self.address + self.width


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

    def register(self, name: str) -> Register:
        """The register called ``name``; KeyError names the map and what it does have."""
        for reg in self.registers:
            if reg.name == name:
                return reg
        raise KeyError(
            f"register map {self.name!r} has no register {name!r}; "
            f"it has: {', '.join(r.name for r in self.registers)}"
        )

    def blocks(
        self, max_registers: int = 64, max_gap: int | None = None
    ) -> list[tuple[int, int]]:
        """Contiguous (start, count) reads covering every register, as few as possible.

        Registers are never split across reads. Gaps of up to ``max_gap`` unused registers
        (default: the map's own ``max_gap``) are read through rather than costing a request.
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
        blocks: list[tuple[int, int]] = []
        start = end = -1
        for reg in sorted(self.registers, key=lambda r: r.address):
            fits = (
                start >= 0
                and reg.address - end <= max_gap
                and reg.end - start <= max_registers
            )
            if fits:
                end = reg.end
                continue
            if start >= 0:
                blocks.append((start, end - start))
            start, end = reg.address, reg.end
        if start >= 0:
            blocks.append((start, end - start))
        return blocks

    def decode(self, start: int, words: Sequence[int]) -> dict[str, float]:
        """Values of the registers lying wholly inside ``words`` read from ``start``, scaled."""
        stop = start + len(words)
        values: dict[str, float] = {}
        for reg in self.registers:
            if reg.address < start or reg.end > stop:
                continue
            chunk = words[reg.address - start : reg.end - start]
            raw = struct.unpack(">" + _TYPE_LAYOUT[reg.type][0], self._to_bytes(chunk))[0]
            values[reg.name] = raw * reg.scale if reg.scale != 1.0 else float(raw)
        return values

    def encode(self, values: Mapping[str, float]) -> dict[int, int]:
        """Register words (address -> 16-bit word) holding ``values``; the inverse of decode."""
        words: dict[int, int] = {}
        for name, value in values.items():
            reg = self._register_for_encode(name)
            raw = self._raw_value(reg, value)
            packed = struct.pack(">" + _TYPE_LAYOUT[reg.type][0], raw)
            for offset, word in enumerate(self._from_bytes(packed)):
                words[reg.address + offset] = word
        return words

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

    def _to_bytes(self, words: Sequence[int]) -> bytes:
        ordered = list(words) if self.word_order == "big" else list(reversed(words))
        byteorder = "big" if self.byte_order == "big" else "little"
        return b"".join(int(w).to_bytes(2, byteorder) for w in ordered)

    def _from_bytes(self, data: bytes) -> list[int]:
        byteorder = "big" if self.byte_order == "big" else "little"
        words = [int.from_bytes(data[i : i + 2], byteorder) for i in range(0, len(data), 2)]
        return words if self.word_order == "big" else list(reversed(words))


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

    ordered = sorted(registers, key=lambda r: r.address)
    for before, after in zip(ordered, ordered[1:]):
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
    unit = _field(raw, "unit", str, where)
    scale = float(_field(raw, "scale", (int, float), where, 1.0))
    if not math.isfinite(scale) or scale == 0:
        raise RegisterMapError(f"{where}: field 'scale' is {scale}; expected a non-zero number")
    kind = _choice(raw, "kind", KINDS, where, "instantaneous")
    description = _field(raw, "description", str, where, "")
    return Register(
        name=name,
        address=address,
        type=reg_type,
        unit=unit,
        scale=scale,
        kind=kind,
        description=description,
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


def _choice(table: dict, key: str, allowed: Sequence[str], where: str, default: Any = _MISSING) -> str:
    value = _field(table, key, str, where, default)
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
