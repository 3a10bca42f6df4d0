"""JSON payloads of meters, mapped to quantities by a path per quantity (pure, no I/O).

The MQTT source decodes every message with this; a meter that publishes JSON by another
transport could use it as well.

Payload map (the meter's table in the agent config)::

    [[meters]]
    id = "pv-inverter-1"
    source = "mqtt://meter-reader:secret@10.0.0.2/site/meters/1?version=5&qos=1"
    interval_s = 1.0          # how often the meter publishes (a silent meter is a gap)

    [meters.fields]
    power_total   = { path = "power.total", unit = "W" }
    voltage_l1    = { path = "voltage[0]", unit = "V", min = 180, max = 280 }
    energy_import = { path = "energy.import_wh", unit = "kWh", kind = "counter", scale = 0.001, min = 0 }

    [meters.timestamp]        # optional: the meter's own clock, informative only
    path = "ts"
    format = "epoch_ms"       # epoch_s | epoch_ms | iso8601 (with a UTC offset or Z)

Each field has ``path`` and ``unit`` (the unit after scaling, as in the register maps), and
optionally ``kind`` (instantaneous|counter), ``scale`` (value = JSON number * scale) and
``min``/``max`` (the plausible range; a value outside it is still reported, flagged).

Path syntax: keys separated by dots, array elements by ``[index]`` (from 0):
``data.phases[0].v``. A key that contains ``.``, ``[`` or ``]`` is written quoted in
brackets: ``data["E.in"]``. Keys cannot contain double quotes.

Decoding (`decode_payload`, pure):

* The payload must be UTF-8 JSON whose top level is an object (at most 256 KiB).
  NaN/Infinity and duplicate keys in one object are refused: both make the value ambiguous.
* A number is a JSON number or a string holding one in JSON's number syntax (``"230.1"``;
  some gateways quote every value). Booleans, other strings, objects and arrays are not
  numbers, and nor is a value too large for a float. Any of these is a `PayloadError`
  naming the field and its path.
* A field whose key is absent, whose array is shorter than its index, or whose value is
  ``null`` (meters send null for what they cannot measure) is listed in ``missing``: the
  reading is partial, not an error.
* Timestamps: ``epoch_s``/``epoch_ms`` are numbers (or numeric strings), ``iso8601`` a
  string with a UTC offset (precision: microseconds). A time outside 2000..2100 is an
  error whose message suggests the right format (milliseconds sent as seconds, ...).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from protos.records import RecordError, check_id

__all__ = [
    "FIELD_KINDS",
    "MAX_PAYLOAD_BYTES",
    "TIMESTAMP_FORMATS",
    "DecodedMessage",
    "JsonField",
    "PayloadError",
    "PayloadMap",
    "PayloadMapError",
    "TimestampField",
    "decode_payload",
    "parse_json_path",
    "parse_payload_map",
]

FIELD_KINDS: tuple[str, ...] = ("instantaneous", "counter")
TIMESTAMP_FORMATS: tuple[str, ...] = ("epoch_s", "epoch_ms", "iso8601")
# Meters publish a few hundred bytes; a payload far larger is a misrouted topic or an attack
# on the gateway's memory, not a reading.
MAX_PAYLOAD_BYTES = 256 * 1024


class PayloadMapError(ValueError):
    """A payload map that cannot work. `key` is the config key at fault (``fields.NAME`` or
    ``timestamp``), `problem` the message without the location, for config loaders that
    name file and line themselves."""

    def __init__(self, where: str, key: str, problem: str) -> None:
        super().__init__(f"{where}: {key}: {problem}" if where else f"{key}: {problem}")
        self.key = key
        self.problem = problem


class PayloadError(ValueError):
    """A message that does not fit the payload map; `path` is the JSON path at fault, if any."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


# -- payload maps -------------------------------------------------------------------------

_PATH_KEY = re.compile(r'[^.\[\]"]+')
_PATH_INDEX = re.compile(r"\[(0|[1-9][0-9]{0,8})\]")
_PATH_QUOTED = re.compile(r'\["([^"]+)"\]')


def parse_json_path(path: str) -> tuple[str | int, ...]:
    """``data.phases[0]["E.in"]`` -> ``("data", "phases", 0, "E.in")``; ValueError if bad."""
    if not isinstance(path, str) or not path:
        raise ValueError("the path is empty; write keys separated by dots, e.g. \"data.power\"")
    steps: list[str | int] = []
    pos = 0
    while pos < len(path):
        if path[pos] == "[":
            m = _PATH_INDEX.match(path, pos) or _PATH_QUOTED.match(path, pos)
            if m is None:
                raise ValueError(
                    f"bad bracket at position {pos} of {path!r}; write [0] for an array "
                    "element or [\"key.with.dots\"] for a key"
                )
            steps.append(int(m.group(1)) if m.re is _PATH_INDEX else m.group(1))
            pos = m.end()
            continue
        if steps:
            if path[pos] != ".":
                raise ValueError(f"expected '.' or '[' at position {pos} of {path!r}")
            pos += 1
        m = _PATH_KEY.match(path, pos)
        if m is None:
            raise ValueError(
                f"empty or bad key at position {pos} of {path!r}; quote keys containing "
                "dots or brackets as [\"a.b\"]"
            )
        steps.append(m.group(0))
        pos = m.end()
    return tuple(steps)


@dataclass(frozen=True)
class JsonField:
    """One quantity in a JSON payload (same duck type as a register: name, unit, kind,
    plausible)."""

    name: str
    path: str
    unit: str
    kind: str = "instantaneous"
    scale: float = 1.0
    min: float | None = None
    max: float | None = None
    steps: tuple[str | int, ...] = field(default=(), repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.steps:
            object.__setattr__(self, "steps", parse_json_path(self.path))

    def plausible(self, value: float) -> bool:
        """Whether `value` lies in the field's plausible range (no range: always)."""
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)


@dataclass(frozen=True)
class TimestampField:
    """Where the meter puts its own time, and in which format."""

    path: str
    format: str
    steps: tuple[str | int, ...] = field(default=(), repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.steps:
            object.__setattr__(self, "steps", parse_json_path(self.path))


@dataclass(frozen=True)
class PayloadMap:
    """How one meter's JSON payload maps to quantities (the register map of an MQTT meter)."""

    fields: tuple[JsonField, ...]
    timestamp: TimestampField | None = None

    name = "mqtt-json"

    @property
    def quantities(self) -> tuple[JsonField, ...]:
        """The fields reported as quantities (all of them; as `RegisterMap.quantities`)."""
        return self.fields

    def register(self, name: str) -> JsonField:
        """The field called `name` (named like `RegisterMap.register` for the poller)."""
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"the payload map has no field {name!r}; it has: {', '.join(f.name for f in self.fields)}")


_FIELD_KEYS = ("path", "unit", "kind", "scale", "min", "max")
_TIMESTAMP_KEYS = ("path", "format")


def parse_payload_map(table: Mapping[str, Any], where: str) -> PayloadMap:
    """A `PayloadMap` from a meter's config table: ``fields`` (required) and ``timestamp``.

    `where` names the table for messages, e.g. ``"agent.toml: [meters #2]"``; errors are
    `PayloadMapError` with the key (``fields.power_total``) and what is expected.
    """

    def fail(key: str, problem: str) -> PayloadMapError:
        return PayloadMapError(where, key, problem)

    if not isinstance(table, Mapping):
        raise fail("fields", "expected a table of fields")
    for key in table:
        if key not in ("fields", "timestamp"):
            raise fail(str(key), "unknown setting of a payload map (known: fields, timestamp)")
    raw_fields = table.get("fields")
    if not isinstance(raw_fields, Mapping) or not raw_fields:
        raise fail(
            "fields",
            "expected a table with one entry per quantity, e.g. "
            'power_total = { path = "power.total", unit = "W" }',
        )
    fields = tuple(_parse_field(str(name), spec, fail) for name, spec in raw_fields.items())
    timestamp = None
    if "timestamp" in table:
        timestamp = _parse_timestamp(table["timestamp"], fail)
    return PayloadMap(fields, timestamp)


def _parse_field(
    name: str, spec: Any, fail: Callable[[str, str], PayloadMapError]
) -> JsonField:
    key = f"fields.{name}"
    try:
        check_id("quantity name", name)
    except RecordError as exc:
        raise fail(key, str(exc)) from None
    if not isinstance(spec, Mapping):
        raise fail(key, f'expected {{ path = "...", unit = "..." }}, got {spec!r}')
    for k in spec:
        if k not in _FIELD_KEYS:
            raise fail(key, f"unknown setting {k!r} (known: {', '.join(_FIELD_KEYS)})")
    path = spec.get("path")
    if not isinstance(path, str):
        raise fail(key, 'path is missing or not text; give the JSON path, e.g. path = "power.total"')
    try:
        steps = parse_json_path(path)
    except ValueError as exc:
        raise fail(key, f"path: {exc}") from None
    unit = spec.get("unit")
    if not isinstance(unit, str):
        raise fail(key, 'unit is missing or not text; give the unit after scaling, e.g. unit = "W" ("" for none)')
    if len(unit.encode("utf-8")) > 32:
        raise fail(key, "unit is longer than 32 bytes")
    kind = spec.get("kind", "instantaneous")
    if kind not in FIELD_KINDS:
        raise fail(key, f"kind = {kind!r}; expected one of {', '.join(FIELD_KINDS)}")
    scale = _number_setting(spec, "scale", 1.0, key, fail)
    if scale == 0:
        raise fail(key, "scale = 0 would turn every value into 0")
    lo = _number_setting(spec, "min", None, key, fail)
    hi = _number_setting(spec, "max", None, key, fail)
    if lo is not None and hi is not None and lo > hi:
        raise fail(key, f"min = {lo:g} is above max = {hi:g}")
    return JsonField(name, path, unit, kind, scale, lo, hi, steps)


def _number_setting(
    spec: Mapping[str, Any], name: str, default: float | None, key: str,
    fail: Callable[[str, str], PayloadMapError],
) -> float | None:
    if name not in spec:
        return default
    value = spec[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise fail(key, f"{name} = {value!r}; expected a finite number")
    return float(value)


def _parse_timestamp(spec: Any, fail: Callable[[str, str], PayloadMapError]) -> TimestampField:
    if not isinstance(spec, Mapping):
        raise fail("timestamp", f'expected {{ path = "...", format = "epoch_ms" }}, got {spec!r}')
    for k in spec:
        if k not in _TIMESTAMP_KEYS:
            raise fail("timestamp", f"unknown setting {k!r} (known: path, format)")
    path = spec.get("path")
    if not isinstance(path, str):
        raise fail("timestamp", 'path is missing or not text, e.g. path = "ts"')
    try:
        steps = parse_json_path(path)
    except ValueError as exc:
        raise fail("timestamp", f"path: {exc}") from None
    fmt = spec.get("format")
    if fmt not in TIMESTAMP_FORMATS:
        # No default on purpose: seconds read as milliseconds is a classic field error.
        raise fail("timestamp", f"format = {fmt!r}; expected one of {', '.join(TIMESTAMP_FORMATS)}")
    return TimestampField(path, fmt, steps)


# -- decoding -----------------------------------------------------------------------------


@dataclass(frozen=True)
class DecodedMessage:
    """One message's quantities (scaled, by field name), the meter's own time if the map
    has one, and the fields the message did not carry."""

    values: dict[str, float]
    meter_time_ns: int | None
    missing: tuple[str, ...]


_MISSING = object()
# JSON's number grammar; Python's float() also takes "nan", "1_0" and " 1", which a meter
# never means as a reading.
_JSON_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_TIME_MIN_NS = 946_684_800 * 10**9  # 2000-01-01T00:00:00Z
_TIME_MAX_NS = 4_102_444_800 * 10**9  # 2100-01-01T00:00:00Z
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise ValueError(f"key {key!r} appears twice in one object")
        obj[key] = value
    return obj


def _json_kind(value: Any) -> str:
    if value is True or value is False:
        return f"{'true' if value else 'false'} (a boolean)"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return f"the text {value[:40]!r}"
    return repr(value)


def decode_payload(payload: bytes, pm: PayloadMap) -> DecodedMessage:
    """Decode one message by the payload map (pure; see the module docstring for the rules)."""
    raw = bytes(payload)
    if len(raw) > MAX_PAYLOAD_BYTES:
        raise PayloadError(
            f"payload of {len(raw)} bytes is larger than {MAX_PAYLOAD_BYTES}; "
            "is this topic really the meter's?"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadError(f"payload is not UTF-8 text (byte {exc.start}); first bytes {raw[:40]!r}") from None
    try:
        doc = json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as exc:
        raise PayloadError(
            f"payload is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}; "
            f"it starts {text[:60]!r}"
        ) from None
    except (ValueError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise PayloadError(f"payload is not usable JSON: {reason}") from None
    if not isinstance(doc, dict):
        raise PayloadError(
            f"payload is {_json_kind(doc)}, not a JSON object; the payload map reads fields "
            "by path from an object {...}"
        )
    values: dict[str, float] = {}
    missing: list[str] = []
    for f in pm.fields:
        value = _lookup(doc, f.steps, f"field {f.name} (path {f.path})")
        if value is _MISSING:
            missing.append(f.name)
            continue
        number = _number(value, f"field {f.name} (path {f.path})", f.path) * f.scale
        if not math.isfinite(number):
            raise PayloadError(
                f"field {f.name} (path {f.path}): {value!r} times scale {f.scale:g} is not a finite number",
                path=f.path,
            )
        values[f.name] = number
    meter_time_ns = None
    if pm.timestamp is not None:
        ts = pm.timestamp
        value = _lookup(doc, ts.steps, f"timestamp (path {ts.path})")
        if value is not _MISSING:
            meter_time_ns = _timestamp_ns(value, ts)
    return DecodedMessage(values, meter_time_ns, tuple(missing))


def _lookup(doc: Any, steps: tuple[str | int, ...], what: str) -> Any:
    node = doc
    walked = ""
    for step in steps:
        if isinstance(step, int):
            if not isinstance(node, list):
                raise PayloadError(
                    f"{what}: expected an array at {walked or 'the top'}, found {_json_kind(node)}",
                    path=walked,
                )
            if step >= len(node):
                return _MISSING
            node = node[step]
            walked += f"[{step}]"
        else:
            if not isinstance(node, dict):
                raise PayloadError(
                    f"{what}: expected an object at {walked or 'the top'}, found {_json_kind(node)}",
                    path=walked,
                )
            if step not in node:
                return _MISSING
            node = node[step]
            walked += f".{step}" if walked else step
        if node is None:
            return _MISSING
    return node


def _number(value: Any, what: str, path: str) -> float:
    if isinstance(value, bool):
        raise PayloadError(f"{what}: value is {_json_kind(value)}, expected a number", path=path)
    if isinstance(value, (int, float)):
        try:
            number = float(value)
        except OverflowError:
            raise PayloadError(f"{what}: {str(value)[:30]}... is too large for a number", path=path) from None
    elif isinstance(value, str) and _JSON_NUMBER.fullmatch(value):
        number = float(value)
    else:
        raise PayloadError(f"{what}: value is {_json_kind(value)}, expected a number", path=path)
    if not math.isfinite(number):
        raise PayloadError(f"{what}: {value!r} is too large for a number", path=path)
    return number


def _timestamp_ns(value: Any, ts: TimestampField) -> int:
    what = f"timestamp (path {ts.path}, format {ts.format})"
    if ts.format == "iso8601":
        if not isinstance(value, str):
            raise PayloadError(f"{what}: value is {_json_kind(value)}, expected ISO 8601 text", path=ts.path)
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise PayloadError(
                f"{what}: {value[:40]!r} is not an ISO 8601 time such as 2024-05-01T12:00:00Z",
                path=ts.path,
            ) from None
        if moment.tzinfo is None:
            raise PayloadError(
                f"{what}: {value[:40]!r} has no UTC offset, so the time is ambiguous; "
                "the meter must send Z or +hh:mm",
                path=ts.path,
            )
        delta = moment - _EPOCH
        ns = (delta.days * 86_400 + delta.seconds) * 10**9 + delta.microseconds * 1000
    else:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise PayloadError(f"{what}: value is {_json_kind(value)}, expected a number", path=ts.path)
        if isinstance(value, str) and not _JSON_NUMBER.fullmatch(value):
            raise PayloadError(f"{what}: value is {_json_kind(value)}, expected a number", path=ts.path)
        try:
            # Decimal keeps integer seconds and milliseconds exact; floats to their shortest repr.
            exact = Decimal(value if isinstance(value, (int, str)) else repr(value))
            ns = int(exact * (10**9 if ts.format == "epoch_s" else 10**6))
        except (InvalidOperation, OverflowError, ValueError):
            raise PayloadError(f"{what}: {str(value)[:30]!r} is not a usable number", path=ts.path) from None
    if not _TIME_MIN_NS <= ns < _TIME_MAX_NS:
        raise PayloadError(f"{what}: {str(value)[:40]} is not between 2000 and 2100{_format_hint(ns, ts.format)}", path=ts.path)
    return ns


def _format_hint(ns: int, fmt: str) -> str:
    """A guess at the format the meter really uses, for the error message."""
    if fmt == "epoch_s":
        alternatives = (("epoch_ms", ns // 1000), ("microseconds", ns // 10**6))
    elif fmt == "epoch_ms":
        alternatives = (("epoch_s", ns * 1000), ("microseconds", ns // 1000))
    else:
        alternatives = ()
    for name, guess in alternatives:
        if _TIME_MIN_NS <= guess < _TIME_MAX_NS:
            if name == "microseconds":
                return "; the value looks like microseconds since 1970, which the payload map cannot read"
            return f'; the value looks like format = "{name}"'
    return "; check the meter's clock and the timestamp format"
