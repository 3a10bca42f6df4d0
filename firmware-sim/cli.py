"""The `gridtrace sim` commands: run simulated meters for demos, tests and field rehearsal."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

from gridtrace.clihelp import add_command

from .arguments import meter_count
from .faults import FAULT_SPECS
from .fleet import SimulatedFleet
from .modbus_server import (
    MAX_UNITS,
    Fault,
    SerialLine,
    SimulatedModbusServer,
    SimulatorError,
)
from .mqtt_meter import add_mqtt_command
from .profiles import available_profiles

__all__ = ["add_commands"]

_MODBUS_EPILOG = """\
examples:
  gridtrace sim modbus --port 5020 --meters 3 --fault 2=timeout --fault 3=exception:2

  serves three simulated Eastron SDM630 meters as Modbus TCP units 1..3 on
  127.0.0.1:5020; unit 2 never answers and unit 3 answers every read with
  Modbus exception 2. Point the agent at modbus-tcp://127.0.0.1:5020?unit=1.
  Unit ids without a meter never answer, like an empty address on an RS-485 bus.

  gridtrace sim modbus --serial /dev/ttyUSB0 --baud 9600 --parity N --register-map eastron_sdm120

  serves three single-phase SDM120 meters as Modbus RTU units 1..3 on a serial
  port (an RS-485 adapter, or one end of `socat -d -d pty,raw,echo=0,link=/tmp/a
  pty,raw,echo=0,link=/tmp/b` to rehearse without hardware).

  gridtrace sim modbus --port 5020 --meters 3000

  a load-test fleet: more than 247 meters are spread over consecutive ports, 247
  units per port (5020..5032 here); the port -> meters mapping is printed at start.
  --fault then takes the fleet meter number (1..3000).

faults (UNIT=SPEC, one per unit):
  timeout            never answers
  exception:CODE     answers every read with Modbus exception CODE (1-6, 8, 10, 11)
  stuck              registers freeze at their last values
  counter-reset[:S]  energy counters restart from 0 (S seconds after start), then count on
  swapped-words      32/64-bit values served in the opposite word order
  clock-drift:PPM    the meter's clock runs PPM parts per million fast (negative: slow),
                     so its energy counters drift from the true energy
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
    _add_modbus(kinds)
    add_mqtt_command(kinds)
    _add_fleet(kinds)


def _add_modbus(kinds: argparse._SubParsersAction) -> None:
    modbus = kinds.add_parser(
        "modbus",
        help="serve simulated meters over Modbus TCP or RTU",
        description=(
            "Serve N simulated meters as Modbus unit ids 1..N, over TCP or on a serial\n"
            "line (RTU), with realistic load, PV and EV charging curves, exact energy\n"
            "counters and optional faults. Runs until interrupted (Ctrl-C or SIGTERM)."
        ),
        epilog=_MODBUS_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    modbus.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    modbus.add_argument("--port", type=_port, help="TCP port to listen on (required unless --serial)")
    modbus.add_argument(
        "--serial",
        metavar="DEVICE",
        help="serve Modbus RTU on this serial device (e.g. /dev/ttyUSB0) instead of TCP",
    )
    modbus.add_argument("--baud", type=int, default=9600, help="serial baud rate (default: %(default)s)")
    modbus.add_argument(
        "--parity", choices=("N", "E", "O"), default="N", help="serial parity (default: %(default)s)"
    )
    modbus.add_argument(
        "--stopbits", type=int, choices=(1, 2), default=1, help="serial stop bits (default: %(default)s)"
    )
    modbus.add_argument(
        "--bytesize", type=int, choices=(7, 8), default=8, help="serial data bits (default: %(default)s)"
    )
    modbus.add_argument(
        "--meters",
        type=meter_count,
        default=3,
        help=f"number of meters (default: %(default)s); over TCP more than {MAX_UNITS} "
        f"spread over consecutive ports, {MAX_UNITS} per port",
    )
    modbus.add_argument(
        "--seed", type=int, default=1, help="seed for the meters' loads and noise (default: %(default)s)"
    )
    modbus.add_argument(
        "--register-map",
        type=_profile,
        default="eastron_sdm630",
        metavar="NAME|FILE.toml",
        help=f"what to serve: {', '.join(available_profiles())}, or a register map file "
        "(default: %(default)s)",
    )
    modbus.add_argument(
        "--ev-every",
        type=int,
        default=7,
        metavar="N",
        help="give every N-th meter an EV charger (meters numbered 4 modulo N: 4, 11, 18, ... "
        "for 7); 0 for none (default: %(default)s)",
    )
    modbus.add_argument(
        "--fault",
        type=_fault,
        action="append",
        default=[],
        metavar="UNIT=SPEC",
        help=f"make a unit misbehave, SPEC one of {', '.join(FAULT_SPECS)}; may be repeated",
    )
    modbus.set_defaults(func=run_modbus)


def run_modbus(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM; returns the process exit code."""
    problem = _check_modbus_args(args)
    if problem:
        print(f"gridtrace sim modbus: {problem}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_serve_modbus(args))
    except SimulatorError as exc:
        print(f"gridtrace sim modbus: {exc}", file=sys.stderr)
        return 1


def _check_modbus_args(args: argparse.Namespace) -> str | None:
    if args.serial is None and args.port is None:
        return "give --port (Modbus TCP) or --serial DEVICE (Modbus RTU)"
    if args.serial is not None and args.meters > MAX_UNITS:
        return f"one serial bus has unit ids 1..{MAX_UNITS}; {args.meters} meters do not fit"
    if args.ev_every < 0:
        return f"--ev-every {args.ev_every}: give 0 (no EV chargers) or a positive number"
    seen: dict[int, Fault] = {}
    for unit, fault in args.fault:
        if unit in seen:
            return f"unit {unit} has two faults ({seen[unit]} and {fault}); give one per unit"
        seen[unit] = fault
    return None


async def _serve_modbus(args: argparse.Namespace) -> int:
    sim: SimulatedModbusServer | SimulatedFleet
    if args.serial is not None:
        serial = SerialLine(args.serial, args.baud, args.parity, args.stopbits, args.bytesize)
        sim = SimulatedModbusServer(
            args.host, 0, args.meters, register_map=args.register_map, seed=args.seed,
            serial=serial, ev_every=args.ev_every,
        )
    else:
        sim = SimulatedFleet(
            args.host, args.port, args.meters, register_map=args.register_map, seed=args.seed,
            ev_every=args.ev_every,
        )
    for unit, fault in args.fault:
        sim.set_fault(unit, fault)
    await sim.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    print(_banner(args, sim), flush=True)
    try:
        await stop.wait()
    finally:
        await sim.stop()
    return 0


def _banner(args: argparse.Namespace, sim: SimulatedModbusServer | SimulatedFleet) -> str:
    faults = ", ".join(f"unit {u} {f}" for u, f in sorted(sim.faults().items())) or "none"
    servers = [sim] if isinstance(sim, SimulatedModbusServer) else sim.servers
    regmap = servers[0].register_map
    what = f"{args.meters} simulated {regmap.model} meters ({servers[0].profile.name})"
    if isinstance(sim, SimulatedModbusServer):
        where = f"Modbus RTU units 1..{args.meters} on {sim.endpoint}"
    elif len(sim.servers) == 1:
        where = f"Modbus TCP units 1..{args.meters} on {sim.servers[0].endpoint}"
    else:
        ports = sim.ports
        where = (
            f"Modbus TCP on {len(ports)} ports {ports[0].port}..{ports[-1].port} of {args.host}, "
            f"{sim.units_per_port} units per port"
        )
    lines = [f"serving {what} as {where}; faults: {faults}; Ctrl-C to stop"]
    if isinstance(sim, SimulatedFleet) and len(sim.servers) > 1:
        lines += [f"  {port}" for port in sim.ports]
    return "\n".join(lines)


_FLEET_EPILOG = """\
example:
  gridtrace sim fleet --hub 127.0.0.1:7700 --ca hub/tls/ca.pem --hub-key hub/hub.pub.pem \\
      --keys-dir fleet-keys --gateways 32 --meters 32 --rate 50000 --seconds 20 --processes 2 --prebuild

  32 simulated gateways (gateway ids fleet-gw-0001..0032), each with 32 SDM630
  meters, stream 50,000 readings/s in all for 20 s from 2 processes, in signed
  batches of 500 readings built before the clock starts. Each gateway's key is
  fleet-keys/<id>.key (created when missing, mode 0600) with <id>.pub.pem beside
  it; register them first:

  gridtrace sim fleet --keys-dir fleet-keys --gateways 32 --keys-only
  for f in fleet-keys/*.pub.pem; do
    gridtrace hub gateway add "$(basename "$f" .pub.pem)" --public-key "$f" --config hub/hub.toml
  done

  --rate 0 sends as fast as the hub receipts (8 batches in flight per stream,
  like the agent). Prints readings sent and receipted, receipted readings/s and
  receipt latency p50/p99; --json adds one JSON object as the last line.
"""


def _add_fleet(kinds: argparse._SubParsersAction) -> None:
    fleet = kinds.add_parser(
        "fleet",
        help="load-test a hub: many gateways streaming real signed batches",
        description=(
            "Simulated gateways, each with its own Ed25519 key, stream real signed batches\n"
            "of SDM630 readings to a hub over gRPC (TLS unless --insecure), paced to a total\n"
            "rate, from separate processes; every receipt is checked as the agent checks it."
        ),
        epilog=_FLEET_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fleet.add_argument("--hub", metavar="HOST:PORT",
                       help="the hub's ingest address (required unless --keys-only); several, comma-separated, "
                            "spread the gateways over a substation's replicas")
    fleet.add_argument("--gateways", type=_positive_int, default=4, metavar="G", help="gateways (default: %(default)s)")
    fleet.add_argument("--meters", type=meter_count, default=32, metavar="M",
                       help="meters per gateway (default: %(default)s)")
    fleet.add_argument("--rate", type=_non_negative_float, default=0.0, metavar="R",
                       help="readings/s over the whole fleet; 0 = as fast as the hub receipts (default)")
    fleet.add_argument("--seconds", type=_positive_float, default=10.0, metavar="S",
                       help="how long to send (default: %(default)s)")
    fleet.add_argument("--processes", type=_positive_int, default=1, metavar="P",
                       help="load processes; the gateways are shared out between them (default: %(default)s)")
    fleet.add_argument("--batch-size", type=_positive_int, default=500, metavar="N",
                       help="readings per signed batch (default: %(default)s)")
    fleet.add_argument("--window", type=_positive_int, default=8, metavar="W",
                       help="batches in flight per stream before waiting for receipts (default: %(default)s)")
    fleet.add_argument("--max-readings", type=_positive_int, metavar="N",
                       help="send at most this many readings (default with --rate: rate x seconds)")
    fleet.add_argument("--prebuild", action="store_true",
                       help="build and serialize every batch before the clock starts")
    fleet.add_argument("--ca", type=Path, metavar="FILE", help="the hub's TLS CA certificate (its tls/ca.pem)")
    fleet.add_argument("--tls-server-name", metavar="NAME", help="name to check in the hub's certificate")
    fleet.add_argument("--insecure", action="store_true", help="plaintext gRPC (a hub with insecure_plaintext)")
    fleet.add_argument("--hub-key", type=Path, metavar="FILE", action="append",
                       help="the hub's public key (hub.pub.pem): every receipt's signature is checked; "
                            "repeat for replicas (a receipt verifies with any)")
    fleet.add_argument("--unsigned-acks", action="store_true", help=argparse.SUPPRESS)  # bench baseline only
    fleet.add_argument("--keys-dir", type=Path, default=Path("fleet-keys"), metavar="DIR",
                       help="gateway keys: DIR/<id>.key (0600) and DIR/<id>.pub.pem (default: %(default)s)")
    fleet.add_argument("--gateway-prefix", default="fleet-gw", metavar="PREFIX",
                       help="gateway ids are PREFIX-0001, PREFIX-0002, ... (default: %(default)s)")
    fleet.add_argument("--keys-only", action="store_true",
                       help="create the missing keys, list the gateway ids and stop")
    fleet.add_argument("--json", action="store_true", help="end with one JSON line of the figures")
    fleet.set_defaults(func=run_fleet_command)


def run_fleet_command(args: argparse.Namespace) -> int:
    import json

    from protos.records import RecordError, check_id

    from .loadgen import FleetError, FleetSpec, ensure_keys, gateway_ids, run_fleet

    ids = gateway_ids(args.gateway_prefix, args.gateways)
    try:
        check_id("gateway id", ids[-1])
    except RecordError as exc:
        print(f"gridtrace sim fleet: --gateway-prefix: {exc}", file=sys.stderr)
        return 2
    if args.keys_only:
        try:
            ensure_keys(args.keys_dir, ids)
        except FleetError as exc:
            print(f"gridtrace sim fleet: {exc}", file=sys.stderr)
            return 1
        for gw in ids:
            print(f"{gw} {args.keys_dir / (gw + '.pub.pem')}")
        return 0
    problem = _check_fleet_args(args)
    if problem:
        print(f"gridtrace sim fleet: {problem}", file=sys.stderr)
        return 2
    spec = FleetSpec(
        hub=args.hub, gateways=ids, keys_dir=args.keys_dir, meters=args.meters, rate=args.rate,
        seconds=args.seconds, batch_size=args.batch_size, processes=args.processes, window=args.window,
        prebuild=args.prebuild, max_readings=args.max_readings, ca=args.ca, insecure=args.insecure,
        server_name=args.tls_server_name, hub_key=args.hub_key[0] if args.hub_key else None,
        hub_keys=tuple(args.hub_key or ()), unsigned_acks=args.unsigned_acks,
    )
    print(
        f"fleet: {args.gateways} gateways x {args.meters} meters in {args.processes} processes -> {args.hub}, "
        f"{'%g readings/s' % args.rate if args.rate else 'as fast as the hub receipts'} for {args.seconds:g} s, "
        f"batches of {args.batch_size}{', prebuilt' if args.prebuild else ''}",
        flush=True,
    )
    try:
        result = run_fleet(spec, on_ready=lambda s: print(
            f"fleet: connected; built {s:.1f} s; sending", flush=True))
    except FleetError as exc:
        print(f"gridtrace sim fleet: {exc}", file=sys.stderr)
        return 1
    s = result.summary()
    print(f"readings sent {s['readings_sent']:,}, receipted {s['readings_receipted']:,} "
          f"({s['batches_receipted']:,} of {s['batches_sent']:,} batches) in {s['window_s']:.2f} s: "
          f"{s['readings_per_s']:,} readings/s receipted")
    if s["receipt_p50_ms"] is not None:
        print(f"receipt latency: p50 {s['receipt_p50_ms']:.1f} ms, p99 {s['receipt_p99_ms']:.1f} ms, "
              f"max {s['receipt_max_ms']:.1f} ms")
    for err in s["errors"][:3]:
        print(f"gridtrace sim fleet: {err}", file=sys.stderr)
    if len(s["errors"]) > 3:
        print(f"gridtrace sim fleet: ... and {len(s['errors']) - 3} more gateways failed", file=sys.stderr)
    if args.json:
        s.update(gateways=args.gateways, meters=args.meters, processes=args.processes, rate=args.rate,
                 seconds=args.seconds, batch_size=args.batch_size, prebuild=args.prebuild)
        print(json.dumps(s))
    return 1 if s["errors"] else 0


def _check_fleet_args(args: argparse.Namespace) -> str | None:
    if not args.hub:
        return "give --hub HOST:PORT (the hub's [server] listen address)"
    if args.insecure and args.ca:
        return "--insecure and --ca contradict each other: give one"
    if not args.insecure and not args.ca:
        return "give --ca FILE (the hub's tls/ca.pem), or --insecure for a plaintext hub"
    if not args.unsigned_acks and not args.hub_key:
        return "give --hub-key FILE (the hub's hub.pub.pem): receipts are checked as the agent checks them"
    if args.processes > args.gateways:
        return f"--processes {args.processes} is more than --gateways {args.gateways}: each process needs a gateway"
    if args.prebuild and not args.rate and not args.max_readings:
        return "--prebuild with --rate 0 needs --max-readings: how many readings to build before the clock starts"
    return None


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n}: expected 1 or more")
    return n


def _positive_float(text: str) -> float:
    x = _non_negative_float(text)
    if x == 0:
        raise argparse.ArgumentTypeError("expected a number above 0")
    return x


def _non_negative_float(text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not x >= 0 or x == float("inf"):
        raise argparse.ArgumentTypeError(f"{text}: expected a finite number, 0 or more")
    return x


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is not in 0..65535 (0 picks a free port)")
    return port


def _profile(text: str) -> str:
    if text in available_profiles():
        return text
    if text.endswith(".toml"):
        if not Path(text).is_file():
            raise argparse.ArgumentTypeError(f"register map file {text} does not exist")
        return text
    raise argparse.ArgumentTypeError(
        f"{text!r} is not a built-in register map ({', '.join(available_profiles())}) "
        "nor a .toml register map file"
    )


def _fault(text: str) -> tuple[int, Fault]:
    unit_text, sep, spec = text.partition("=")
    if not sep or not unit_text.strip().isdigit():
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected UNIT=SPEC with SPEC one of {', '.join(FAULT_SPECS)}, e.g. 2=timeout"
        )
    try:
        return int(unit_text), Fault.parse(spec)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None
