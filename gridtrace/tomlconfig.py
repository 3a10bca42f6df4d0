"""Reading TOML config files with errors that name the file, the line, the table and the key.

Shared by the agent's and the hub's config loaders so that both report a bad
setting the same way: ``agent.toml:23: [meters #2] source: ...``, the form editors and
terminals turn into a jump to the line. tomllib keeps no positions, so the line is found
again in the text from the table's header and the key's name.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

from protos.records import RecordError, check_id


class ConfigError(ValueError):
    """A config file that cannot be used; the message names file and key."""


def read_toml(path: Path, tables: set[str]) -> dict[str, Any]:
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); save the file as UTF-8") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    unknown = sorted(set(doc) - tables)
    if unknown:
        raise ConfigError(f"{path}: unknown table [{unknown[0]}] (known: {', '.join(sorted(tables))})")
    return doc


class Section:
    """Typed access to one TOML table."""

    def __init__(self, path: Path, name: str, table: Any, known: set[str]) -> None:
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: [{name}] must be a table")
        self.path, self.name, self.table = Path(path), name, table
        unknown = sorted(set(table) - known)
        if unknown:
            raise self.fail(unknown[0], f"unknown setting (known: {', '.join(sorted(known))})")

    def fail(self, key: str, problem: str) -> ConfigError:
        line = locate_key(self.path, self.name, key)
        where = f"{self.path}:{line}" if line else str(self.path)
        return ConfigError(f"{where}: [{self.name}] {key}: {problem}")

    def get(self, key: str, kind: type, default: Any = ...) -> Any:
        if key not in self.table:
            if default is ...:
                raise self.fail(key, "missing")
            return default
        value = self.table[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.fail(key, f"must be {kind.__name__}, got {value!r}")
        return value

    def positive(self, key: str, kind: type, default: Any = ...) -> Any:
        value = self.get(key, kind, default)
        if value <= 0:
            raise self.fail(key, f"must be > 0, got {value}")
        return value

    def path_value(self, key: str, default: Any = ...) -> Path | None:
        """A path setting; relative paths are relative to the config file."""
        value = self.get(key, str, default)
        if value is None or value == "":
            return None
        p = Path(value)
        return p if p.is_absolute() else self.path.parent / p

    def identifier(self, key: str) -> str:
        value = self.get(key, str)
        try:
            return check_id(key, value)
        except RecordError as exc:
            raise self.fail(key, str(exc)) from exc


_HEADER = re.compile(r"^\s*\[\[?\s*([A-Za-z0-9_.\-\" ]+?)\s*\]\]?")


def locate_key(path: Path, section: str, key: str) -> int | None:
    """1-based line of `key` in the table `section` ("uplink", or "meters #2" for the second
    [[meters]]), else the line of the table's header; None if the file cannot be read.

    Keys of nested tables (`fields.power_total`) are looked for by their last part, inside
    the table and its sub-tables.
    """
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    table, _, ordinal = section.partition(" #")
    wanted = int(ordinal) if ordinal.isdigit() else 1
    leaf = key.split(".")[-1].strip('"')
    key_line = re.compile(r'^\s*"?' + re.escape(leaf) + r'"?\s*=')
    seen = 0
    start: int | None = None
    for number, text in enumerate(lines, start=1):
        header = _HEADER.match(text)
        if header:
            name = header.group(1).strip()
            if start is not None and not name.startswith(table + "."):
                break  # the table ended without the key
            if name == table:
                seen += 1
                if seen == wanted:
                    start = number
            continue
        if start is not None and key_line.match(text):
            return number
    if start is None and table and not ordinal:
        # keys at the top level, before any header
        for number, text in enumerate(lines, start=1):
            if _HEADER.match(text):
                break
            if key_line.match(text):
                return number
    return start
