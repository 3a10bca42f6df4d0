"""Reading a JSON file people exchange, with an error that names the file and what is wrong."""

from __future__ import annotations

import json
from pathlib import Path


def read_json(path: Path, error: type[Exception]) -> object:
    """The parsed contents of `path`; `error` (with the path and the reason) when it cannot be
    read or is not JSON."""
    try:
        return json.loads(Path(path).read_text())
    except OSError as exc:
        raise error(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except json.JSONDecodeError as exc:
        raise error(f"{path}: not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from exc
