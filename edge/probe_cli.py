"""The shell of `gridtrace edge probe`: open the meter's connection, probe, print a table."""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from edge.config import SUNSPEC, resolve_register_map
from edge.probe import ProbeResult, probe_modbus, probe_sunspec
from edge.registermap import RegisterMapError
from edge.sources import parse_source_url
from edge.sources.modbus import MeterConfigError, MeterReadError, open_source

__all__ = ["run_probe"]


def run_probe(args: argparse.Namespace) -> int:
    """Exit 0: values read and plausible; 1: read failed or implausible; 2: bad arguments."""
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    try:
        target = parse_source_url(args.url)
    except ValueError as exc:
        print(f"gridtrace edge probe: {exc}", file=sys.stderr)
        return 2
    if args.url.split(":", 1)[0].lower() in ("mqtt", "mqtts"):
        return _probe_mqtt(target, args.timeout)
    try:
        regmap = _profile(args.profile) if args.profile else None
        result = asyncio.run(_probe(target, regmap, args))
    except MeterConfigError as exc:
        print(f"gridtrace edge probe: {exc}", file=sys.stderr)
        return 2
    except MeterReadError as exc:
        print(f"gridtrace edge probe: {exc}", file=sys.stderr)
        return 1
    _print(result, args.url)
    return 1 if result.implausible else 0


def _profile(name: str):
    if name == SUNSPEC:
        return SUNSPEC
    try:
        return resolve_register_map(name, Path.cwd())
    except RegisterMapError as exc:
        raise MeterConfigError(f"--profile {name}: {exc}") from exc


async def _probe(target, regmap, args: argparse.Namespace) -> ProbeResult:
    source = open_source(target, timeout=args.timeout)
    try:
        if regmap == SUNSPEC:
            found = await probe_sunspec(source, target.unit)
            if found is None:
                raise MeterReadError(
                    f"unit {target.unit} at {source.endpoint}: no SunSpec marker 'SunS' at "
                    "register 40000, 0 or 50000: the device is not SunSpec, or the unit id is "
                    "wrong; try --detect",
                    unit=target.unit,
                    reason="sunspec-discovery",
                )
            return found
        return await probe_modbus(source, target.unit, regmap, args.max_block)
    finally:
        await source.close()


def _print(result: ProbeResult, url: str) -> None:
    table = Table(title=f"{url} read with {result.map_name}")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    table.add_column("unit")
    table.add_column("")
    for row in result.rows:
        value = "-" if not math.isfinite(row.value) else f"{row.value:.6g}"
        table.add_row(row.name, value, row.unit, "" if row.plausible else "IMPLAUSIBLE")
    console = Console()
    console.print(table)
    for line in result.advice:
        console.print(line, markup=False)


def _probe_mqtt(target, timeout: float) -> int:
    from edge.sources.mqtt import MqttUnreachableError, receive_raw

    try:
        topic, payload = asyncio.run(receive_raw(target, timeout))
    except MqttUnreachableError as exc:
        print(f"gridtrace edge probe: {exc}", file=sys.stderr)
        return 1
    except TimeoutError as exc:  # MqttNoMessageError: says what to check
        print(f"gridtrace edge probe: {exc}", file=sys.stderr)
        return 1
    rows = _flatten_json(payload)
    if rows is None:
        print(f"gridtrace edge probe: the message on {topic} is not JSON: {payload[:200]!r}", file=sys.stderr)
        return 1
    table = Table(title=f"{topic}: numeric fields, with the path to put in [meters.fields]")
    table.add_column("path")
    table.add_column("value", justify="right")
    for path, value in rows:
        table.add_row(path, f"{value:.6g}")
    Console().print(table)
    return 0


def _flatten_json(payload: bytes) -> list[tuple[str, float]] | None:
    import json

    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None
    rows: list[tuple[str, float]] = []

    def walk(node, path: str) -> None:
        if isinstance(node, dict):
            for key, child in node.items():
                walk(child, f"{path}.{key}" if path else str(key))
        elif isinstance(node, list):
            for i, child in enumerate(node):
                walk(child, f"{path}[{i}]")
        elif isinstance(node, (int, float)) and not isinstance(node, bool):
            rows.append((path, float(node)))

    walk(doc, "")
    return rows
