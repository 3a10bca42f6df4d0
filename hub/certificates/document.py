"""The measurement certificate as JSON: field layout, and strict conversion to and from records.

The layout is documented in docs/certificate.md. Parsing is strict: unknown
keys, missing keys and wrong types are errors naming the JSON path, and every
human-readable convenience field (ISO timestamps, flag names, hex of signed
bytes) must agree exactly with the value it restates, so no value in the file
can change without the verifier noticing.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from protos.records import (
    BatchHeader,
    BlockHeader,
    ClockStatus,
    ContractRecord,
    Gap,
    Quality,
    Quantity,
    Reading,
    RecordError,
    canonical_json_bytes,
)

CERTIFICATE_FORMAT = "gridtrace/measurement-certificate/v1"


class DocumentError(ValueError):
    """The certificate's JSON is not well-formed; the message gives the JSON path."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    keys = [k for k, _ in pairs]
    for k in keys:
        if keys.count(k) > 1:
            # Parsers disagree on which duplicate wins; a reader must not see other values than we check.
            raise DocumentError(f"key {k!r} appears twice in one object")
    return dict(pairs)


def load_json(text: str) -> Any:
    """Parse certificate or trust JSON, refusing duplicate keys."""
    return json.loads(text, object_pairs_hook=_unique_keys)


def iso_ns(ts_ns: int) -> str:
    """UTC ISO 8601 with nanoseconds, e.g. 2026-11-22T20:57:09.123456789Z."""
    seconds, ns = divmod(ts_ns, 1_000_000_000)
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{ns:09d}Z"


def parse_time(text: str) -> int:
    """ISO 8601 (Z or offset) or integer nanoseconds -> ns since the epoch."""
    text = text.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    frac_ns = 0
    main = text
    if "." in text:
        main, rest = text.split(".", 1)
        digits = "".join(ch for ch in rest if ch.isdigit())
        tz = rest[len(digits):]
        frac_ns = int((digits + "000000000")[:9])
        main += tz
    dt = datetime.fromisoformat(main.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        raise ValueError(f"time {text!r} has no time zone; add Z for UTC")
    return int(dt.timestamp()) * 1_000_000_000 + frac_ns


class Obj:
    """A JSON object read field by field; errors carry the JSON path."""

    def __init__(self, value: Any, path: str, keys: set[str]) -> None:
        if not isinstance(value, dict):
            raise DocumentError(f"{path}: expected an object")
        extra = sorted(set(value) - keys)
        if extra:
            raise DocumentError(f"{path}.{extra[0]}: unexpected key")
        self.value, self.path = value, path

    def get(self, key: str, kind: type) -> Any:
        if key not in self.value:
            raise DocumentError(f"{self.path}.{key}: missing")
        v = self.value[key]
        if kind is float and isinstance(v, int) and not isinstance(v, bool):
            try:
                v = float(v)
            except OverflowError as exc:
                raise DocumentError(f"{self.path}.{key}: {v:.3g} is out of range for a float") from exc
        if not isinstance(v, kind) or (kind in (int, float) and isinstance(v, bool)):
            raise DocumentError(f"{self.path}.{key}: expected {kind.__name__}, got {v!r:.60}")
        return v

    def hex(self, key: str, size: int | None = None) -> bytes:
        text = self.get(key, str)
        try:
            raw = bytes.fromhex(text)
        except ValueError as exc:
            raise DocumentError(f"{self.path}.{key}: not hex") from exc
        if text != raw.hex():
            raise DocumentError(f"{self.path}.{key}: hex must be lower case without spaces")
        if size is not None and len(raw) != size:
            raise DocumentError(f"{self.path}.{key}: expected {size} bytes, got {len(raw)}")
        return raw

    def hex_list(self, key: str) -> list[bytes]:
        items = self.get(key, list)
        out = []
        for i, item in enumerate(items):
            if not isinstance(item, str) or len(item) != 64:
                raise DocumentError(f"{self.path}.{key}[{i}]: expected a 32-byte hash in hex")
            try:
                raw = bytes.fromhex(item)
            except ValueError as exc:
                raise DocumentError(f"{self.path}.{key}[{i}]: not hex") from exc
            if raw.hex() != item:
                raise DocumentError(f"{self.path}.{key}[{i}]: hex must be lower case")
            out.append(raw)
        return out

    def time(self, key_ns: str, key_iso: str) -> int:
        ts = self.get(key_ns, int)
        if not -(1 << 63) <= ts < 1 << 63:
            raise DocumentError(f"{self.path}.{key_ns}: {ts} is not a 64-bit nanosecond timestamp")
        if self.get(key_iso, str) != iso_ns(ts):
            raise DocumentError(f"{self.path}.{key_iso}: does not match {key_ns} ({iso_ns(ts)})")
        return ts


def _record(path: str, factory, **fields):
    try:
        return factory(**fields)
    except RecordError as exc:
        raise DocumentError(f"{path}: {exc}") from exc


def flag_names(q: Quality) -> list[str]:
    return [f.name.lower() for f in Quality if f and f in q]


# -- readings and gaps ---------------------------------------------------------------


def reading_to_json(r: Reading) -> dict:
    return {
        "meter_id": r.meter_id,
        "seq": r.seq,
        "timestamp_ns": r.timestamp_ns,
        "timestamp": iso_ns(r.timestamp_ns),
        "clock": r.clock.name.lower(),
        "quality": flag_names(r.quality),
        "quantities": [{"name": q.name, "unit": q.unit, "value": q.value} for q in r.quantities],
    }


def reading_from_json(value: Any, path: str) -> Reading:
    o = Obj(value, path, {"meter_id", "seq", "timestamp_ns", "timestamp", "clock", "quality", "quantities"})
    clock_name = o.get("clock", str)
    try:
        clock = ClockStatus[clock_name.upper()]
    except KeyError as exc:
        raise DocumentError(f"{path}.clock: unknown clock status {clock_name!r}") from exc
    if clock.name.lower() != clock_name:
        raise DocumentError(f"{path}.clock: must be lower case")
    quality = Quality.OK
    names = o.get("quality", list)
    for i, name in enumerate(names):
        try:
            quality |= Quality[str(name).upper()]
        except KeyError as exc:
            raise DocumentError(f"{path}.quality[{i}]: unknown flag {name!r}") from exc
    if flag_names(quality) != names:
        raise DocumentError(f"{path}.quality: flags must be listed once each, in order {flag_names(quality)}")
    quantities = []
    for i, q in enumerate(o.get("quantities", list)):
        qo = Obj(q, f"{path}.quantities[{i}]", {"name", "unit", "value"})
        quantities.append(
            _record(qo.path, Quantity, name=qo.get("name", str), unit=qo.get("unit", str), value=qo.get("value", float))
        )
    return _record(
        path, Reading,
        meter_id=o.get("meter_id", str), seq=o.get("seq", int),
        timestamp_ns=o.time("timestamp_ns", "timestamp"),
        clock=clock, quality=quality, quantities=tuple(quantities),
    )


def gap_to_json(g: Gap) -> dict:
    return {
        "meter_id": g.meter_id,
        "from_ns": g.from_ns,
        "from": iso_ns(g.from_ns),
        "to_ns": g.to_ns,
        "to": iso_ns(g.to_ns),
        "reason": g.reason,
        "missed_polls": g.missed_polls,
    }


def gap_from_json(value: Any, path: str) -> Gap:
    o = Obj(value, path, {"meter_id", "from_ns", "from", "to_ns", "to", "reason", "missed_polls"})
    return _record(
        path, Gap,
        meter_id=o.get("meter_id", str), from_ns=o.time("from_ns", "from"), to_ns=o.time("to_ns", "to"),
        reason=o.get("reason", str), missed_polls=o.get("missed_polls", int),
    )


def contract_record_to_json(c: ContractRecord) -> dict:
    return {
        "subject": c.subject,
        "from_ns": c.from_ns,
        "from": iso_ns(c.from_ns),
        "to_ns": c.to_ns,
        "to": iso_ns(c.to_ns),
        "contract": c.contract,
        "kind": c.kind,
        "body": c.document(),
    }


def contract_record_from_json(value: Any, path: str) -> ContractRecord:
    """The record a certificate shows; its body is hashed as its canonical JSON, so a body
    edited in the certificate no longer matches the batch's signed root."""
    o = Obj(value, path, {"subject", "from_ns", "from", "to_ns", "to", "contract", "kind", "body"})
    try:
        body = canonical_json_bytes(o.get("body", dict))
    except ValueError as exc:
        raise DocumentError(f"{path}.body: {exc}") from exc
    return _record(
        path, ContractRecord,
        subject=o.get("subject", str), from_ns=o.time("from_ns", "from"), to_ns=o.time("to_ns", "to"),
        contract=o.get("contract", str), kind=o.get("kind", str), body=body,
    )


# -- headers -------------------------------------------------------------------------


def batch_header_to_json(h: BatchHeader) -> dict:
    return {
        "gateway_id": h.gateway_id,
        "key_id": h.key_id,
        "seq": h.seq,
        "prev_hash": h.prev_hash.hex(),
        "entries_root": h.entries_root.hex(),
        "entry_count": h.entry_count,
        "first_ns": h.first_ns,
        "last_ns": h.last_ns,
        "created_ns": h.created_ns,
    }


def batch_header_from_json(value: Any, path: str) -> BatchHeader:
    o = Obj(value, path, _BATCH_KEYS)
    return _record(
        path, BatchHeader,
        gateway_id=o.get("gateway_id", str), key_id=o.get("key_id", str), seq=o.get("seq", int),
        prev_hash=o.hex("prev_hash", 32), entries_root=o.hex("entries_root", 32),
        entry_count=o.get("entry_count", int), first_ns=o.get("first_ns", int),
        last_ns=o.get("last_ns", int), created_ns=o.get("created_ns", int),
    )


_BATCH_KEYS = {
    "gateway_id", "key_id", "seq", "prev_hash", "entries_root", "entry_count", "first_ns", "last_ns", "created_ns",
}


def block_header_to_json(h: BlockHeader) -> dict:
    return {
        "chain_id": h.chain_id,
        "height": h.height,
        "prev_hash": h.prev_hash.hex(),
        "time_ns": h.time_ns,
        "time": iso_ns(h.time_ns),
        "batches_root": h.batches_root.hex(),
        "batch_count": h.batch_count,
        "entry_count": h.entry_count,
        "log_size": h.log_size,
        "log_root": h.log_root.hex(),
    }


def block_header_from_json(value: Any, path: str) -> BlockHeader:
    o = Obj(
        value, path,
        {"chain_id", "height", "prev_hash", "time_ns", "time", "batches_root", "batch_count",
         "entry_count", "log_size", "log_root"},
    )
    return _record(
        path, BlockHeader,
        chain_id=o.get("chain_id", str), height=o.get("height", int), prev_hash=o.hex("prev_hash", 32),
        time_ns=o.time("time_ns", "time"), batches_root=o.hex("batches_root", 32),
        batch_count=o.get("batch_count", int), entry_count=o.get("entry_count", int),
        log_size=o.get("log_size", int), log_root=o.hex("log_root", 32),
    )
