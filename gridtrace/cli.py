"""The one `gridtrace` command: each part of the system adds its subcommands here."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from gridtrace import __version__
from gridtrace.tomlconfig import ConfigError

EPILOG = """examples:
  gridtrace demo                      # everything on loopback, then a verified certificate
  gridtrace sim modbus --port 5020 --meters 4
  gridtrace edge init --dir gw1 --gateway-id gw1 --hub 127.0.0.1:7700 --meter MTR-1=modbus-tcp://127.0.0.1:5020?unit=1
  gridtrace hub serve --config hub/hub.toml
  gridtrace cert verify MTR-1.cert.json --trust trust.json
"""


def build_parser() -> argparse.ArgumentParser:
    from edge.cli import add_commands as add_edge
    from firmware_sim.cli import add_commands as add_sim
    from gridtrace.demo import add_commands as add_demo
    from hub.certificates.cli import add_commands as add_cert
    from hub.cli import add_commands as add_hub

    parser = argparse.ArgumentParser(
        prog="gridtrace",
        description="Meter readings turned into evidence: signed at the edge, sealed on a chain, provable offline.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"gridtrace {__version__}")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR (default INFO)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in (add_demo, add_sim, add_edge, add_hub, add_cert):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"gridtrace: config error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
