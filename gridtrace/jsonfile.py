"""Files people exchange: reading JSON with an error that names the file and what is wrong,
and writing a file so that a crash leaves the old version or the new one, never half of it."""

from __future__ import annotations

import json
import os
from pathlib import Path


def write_durably(path: Path, text: str) -> None:
    """Write `text` next to `path`, fsync it, rename it over `path` and fsync the directory:
    once this returns, the new content survives a crash or power loss."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_json(path: Path, error: type[Exception]) -> object:
    """The parsed contents of `path`; `error` (with the path and the reason) when it cannot be
    read or is not JSON."""
    try:
        return json.loads(Path(path).read_text())
    except OSError as exc:
        raise error(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except json.JSONDecodeError as exc:
        raise error(f"{path}: not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from exc
