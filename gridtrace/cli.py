"""The one `gridtrace` command: each part of the system adds its subcommands here."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from gridtrace import __version__
from gridtrace.logjson import configure_logging
from gridtrace.tomlconfig import ConfigError

EPILOG = """examples:
  gridtrace demo                      # everything on loopback, then a verified certificate
  gridtrace sim modbus --port 5020 --meters 4
  gridtrace edge init --dir gw1 --gateway-id gw1 --hub 127.0.0.1:7700 --meter MTR-1=modbus-tcp://127.0.0.1:5020?unit=1
  gridtrace hub serve --config hub/hub.toml
  gridtrace cert verify MTR-1.cert.json --trust trust.json
  gridtrace carbon trace --pandapower-case case118 --emission-factors factors.json --out trace.json
"""


# Each part of the system adds its subcommands under one name. Only the part a command
# names is imported, so that `edge run` on a small gateway does not carry the simulator,
# the demo's console or the hub in memory (several MB of modules it never uses).
PARTS: dict[str, str] = {
    "demo": "gridtrace.demo",
    "sim": "firmware_sim.cli",
    "edge": "edge.cli",
    "hub": "hub.cli",
    "cert": "hub.certificates.cli",
    "chain": "hub.consensus.cli",
    "carbon": "hub.contracts.carbon.cli",
    "compute": "hub.compute.cli",
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser for `command` only (its part's subcommands), or for all parts when None."""
    parser = argparse.ArgumentParser(
        prog="gridtrace",
        description="Meter readings turned into evidence: signed at the edge, sealed on a chain, provable offline.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"gridtrace {__version__}")
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING or ERROR (default INFO, or the config's)")
    parser.add_argument(
        "--log-format", default=None, choices=("auto", "json", "text"),
        help="json: one object per line; auto (default, or the config's): json unless stderr is a terminal",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module in PARTS.items():
        if command is None or command == name:
            importlib.import_module(module).add_commands(sub)
    return parser


def command_named(argv: Sequence[str]) -> str | None:
    """The part `argv` runs, if its first word that is not an option names one."""
    words = iter(argv)
    for word in words:
        if word in ("--log-level", "--log-format"):
            next(words, None)
        elif not word.startswith("-"):
            return word if word in PARTS else None
    return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(command_named(argv)).parse_args(argv)
    # Commands that read a config (hub serve) configure logging again from it; flags win.
    configure_logging(args.log_level or "INFO", args.log_format or "text")
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"gridtrace: config error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
