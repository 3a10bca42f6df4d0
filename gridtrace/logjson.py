"""Log records as JSON, one object per line, for journald, Loki or any log shipper.

Each line has `ts` (RFC 3339 UTC, milliseconds), `level`, `logger` and `msg`, then the
context a caller passed with ``extra=`` (gateway, batch_seq, height, reason, peer, ...), and
`exc` with the traceback when there is one. Only the fields listed in CONTEXT_FIELDS are
copied from a record, so an object that happens to be attached to a record (a config with a
database password, a key) never reaches the log by accident.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

CONTEXT_FIELDS = (
    "gateway", "batch_seq", "batches", "entries", "height", "reason", "peer", "chain", "key_id",
    "address", "service", "status", "duration_ms",
)


def _timestamp(created: float) -> str:
    seconds = int(created)
    millis = int((created - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": _timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                out[name] = value if isinstance(value, (int, float, bool, str)) else str(value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a record is emitted (as logging's last-resort
    handler does), not to the object it was when the handler was made: that one may have
    been replaced and closed since (test capture, daemon redirection)."""

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


def configure_logging(level: str = "INFO", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Send all logging to `stream` (stderr) as JSON or text, replacing the handler an earlier
    call installed.

    "auto" is JSON unless the stream is a terminal, where a person reads it.
    """
    if fmt == "auto":
        fmt = "text" if getattr(stream or sys.stderr, "isatty", lambda: False)() else "json"
    handler = logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    handler.gridtrace = True  # type: ignore[attr-defined]
    root = logging.getLogger()
    # Only our own earlier handler is replaced; others (pytest's capture, an embedding
    # program's) stay.
    for old in [h for h in root.handlers if getattr(h, "gridtrace", False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
