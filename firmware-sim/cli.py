"""The `gridtrace sim` commands: run simulated meters for demos, tests and field rehearsal."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from edge.registermap import available_register_maps
from gridtrace.clihelp import add_command

from .modbus_server import Fault, SimulatedModbusServer, SimulatorError

__all__ = ["add_commands"]

_MODBUS_EPILOG = """\
example:
  gridtrace sim modbus --port 5020 --meters 3 --fault 2=timeout --fault 3=exception:2

  serves three simulated Eastron SDM630 meters as Modbus TCP units 1..3 on
  127.0.0.1:5020; unit 2 never answers and unit 3 answers every read with
  Modbus exception 2. Point the agent at modbus-tcp://127.0.0.1:5020?unit=1.
  Unit ids without a meter never answer, like an empty address on an RS-485 bus.
"""


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add the `sim` command and its subcommands to the top-level parser's subparsers."""
    sim = add_command(
        subparsers,
        "sim",
        "run simulated meters that behave like the real ones on the wire",
        "gridtrace sim modbus --port 5020 --meters 3",
    )
    kinds = sim.add_subparsers(dest="sim_command", metavar="SIMULATOR", required=True)
    modbus = kinds.add_parser(
        "modbus",
        help="serve simulated meters over Modbus TCP",
        description=(
            "Serve N simulated three-phase meters as Modbus TCP unit ids 1..N, with\n"
            "realistic load curves, exact energy counters and optional faults.\n"
            "Runs until interrupted (Ctrl-C or SIGTERM)."
        ),
        epilog=_MODBUS_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    modbus.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    modbus.add_argument("--port", type=_port, required=True, help="TCP port to listen on")
    modbus.add_argument(
        "--meters", type=_meter_count, default=3, help="number of meters, 1..247 (default: %(default)s)"
    )
    modbus.add_argument(
        "--seed", type=int, default=1, help="seed for the meters' loads and noise (default: %(default)s)"
    )
    modbus.add_argument(
        "--register-map",
        default="eastron_sdm630",
        choices=available_register_maps(),
        help="register layout to serve (default: %(default)s)",
    )
    modbus.add_argument(
        "--fault",
        type=_fault,
        action="append",
        default=[],
        metavar="UNIT=timeout|exception:CODE",
        help="make a unit misbehave; may be repeated",
    )
    modbus.set_defaults(func=run_modbus)


def run_modbus(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM; returns the process exit code."""
    try:
        return asyncio.run(_serve_modbus(args))
    except SimulatorError as exc:
        print(f"gridtrace sim modbus: {exc}", file=sys.stderr)
        return 1


async def _serve_modbus(args: argparse.Namespace) -> int:
    server = SimulatedModbusServer(
        args.host, args.port, args.meters, register_map=args.register_map, seed=args.seed
    )
    for unit, fault in args.fault:
        server.set_fault(unit, fault)
    await server.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    faults = ", ".join(f"unit {u} {f}" for u, f in sorted(server.faults().items())) or "none"
    print(
        f"serving {args.meters} simulated {server.register_map.model} meters "
        f"({server.register_map.name}) as Modbus TCP units 1..{args.meters} on "
        f"{args.host}:{server.port}; faults: {faults}; Ctrl-C to stop",
        flush=True,
    )
    try:
        await stop.wait()
    finally:
        await server.stop()
    return 0


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is not in 0..65535 (0 picks a free port)")
    return port


def _meter_count(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 1 <= count <= 247:
        raise argparse.ArgumentTypeError(f"{count} meters: a Modbus bus has unit ids 1..247")
    return count


def _fault(text: str) -> tuple[int, Fault]:
    unit_text, sep, spec = text.partition("=")
    if not sep or not unit_text.strip().isdigit():
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected UNIT=timeout or UNIT=exception:CODE, e.g. 2=timeout"
        )
    try:
        return int(unit_text), Fault.parse(spec)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None
