"""`gridtrace edge ...`: set up and run the gateway agent."""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
from pathlib import Path

from gridtrace.clihelp import add_command
from gridtrace.tomlconfig import ConfigError


def add_commands(sub: argparse._SubParsersAction) -> None:
    edge = add_command(sub, "edge", "the gateway agent", "gridtrace edge run --config gw1/agent.toml")
    edge_sub = edge.add_subparsers(dest="edge_command", metavar="COMMAND", required=True)

    init = add_command(
        edge_sub, "init", "create a gateway key (mode 0600) and an agent config",
        "gridtrace edge init --dir gw1 --gateway-id gw1 --hub 127.0.0.1:7700 \\\n"
        "    --hub-ca hub/tls/ca.pem --hub-key hub/hub.pub.pem \\\n"
        "    --meter MTR-1=modbus-tcp://10.0.0.5:502?unit=1 --meter MTR-2=modbus-tcp://10.0.0.5:502?unit=2",
    )
    init.add_argument("--dir", type=Path, required=True, help="directory for key, config and queue")
    init.add_argument("--gateway-id", required=True, help="this gateway's id, as registered on the hub")
    init.add_argument("--hub", required=True, help="hub address host:port")
    init.add_argument("--hub-ca", type=Path, help="CA certificate of the hub's TLS (copied into --dir)")
    init.add_argument("--hub-key", type=Path, help="the hub's public signing key (copied into --dir)")
    init.add_argument("--meter", action="append", default=[], metavar="ID=URL", help="a meter; repeatable")
    init.add_argument("--register-map", default="eastron_sdm630", help="register map of the meters")
    init.add_argument("--interval", type=float, default=1.0, help="poll interval in seconds")
    init.add_argument("--insecure", action="store_true", help="plaintext gRPC (development only)")
    init.set_defaults(func=cmd_init)

    run = add_command(edge_sub, "run", "run the agent until SIGTERM/SIGINT", "gridtrace edge run --config gw1/agent.toml")
    run.add_argument("--config", type=Path, required=True)
    run.add_argument("--drain-timeout", type=float, default=10.0, help="seconds to wait for receipts on stop")
    run.set_defaults(func=cmd_run)

    check = add_command(
        edge_sub, "check-config", "validate an agent config; errors name the file and line",
        "gridtrace edge check-config --config gw1/agent.toml",
    )
    check.add_argument("--config", type=Path, required=True)
    check.set_defaults(func=cmd_check_config)

    status = add_command(
        edge_sub, "status", "queue depth and age, last receipt, each meter's last reading and errors",
        "gridtrace edge status --config gw1/agent.toml",
    )
    status.add_argument("--config", type=Path, required=True)
    status.add_argument("--json", action="store_true", help="print JSON instead of tables")
    status.set_defaults(func=cmd_status)

    probe = add_command(
        edge_sub, "probe", "read a meter once and print its decoded values, or what to check",
        "gridtrace edge probe 'modbus-tcp://10.0.0.5:502?unit=3' --profile eastron_sdm630\n"
        "  gridtrace edge probe 'modbus-rtu:///dev/ttyUSB0?baud=9600&parity=N&unit=1' --detect\n"
        "  gridtrace edge probe mqtt://broker/site/meter7",
    )
    probe.add_argument("url", help="meter URL: modbus-tcp://, modbus-rtu:// or mqtt://")
    how = probe.add_mutually_exclusive_group()
    how.add_argument("--profile", help="register map: a built-in name, sunspec, or a .toml file")
    how.add_argument("--detect", action="store_true", help="try SunSpec and every built-in map")
    probe.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for an answer")
    probe.add_argument("--max-block", type=int, default=64, help="most registers per read")
    probe.set_defaults(func=cmd_probe)


def cmd_init(args: argparse.Namespace) -> int:
    from edge.config import render_agent_config
    from protos.signing import KeyFileError, create_key_pair

    meters = []
    for item in args.meter:
        meter_id, sep, url = item.partition("=")
        if not sep or not meter_id or not url:
            raise ConfigError(f"--meter {item!r}: expected ID=URL, e.g. MTR-1=modbus-tcp://10.0.0.5:502?unit=1")
        meters.append((meter_id, url))
    if not meters:
        raise ConfigError("give at least one --meter ID=URL")
    from protos.records import RecordError, check_id

    try:
        check_id("--gateway-id", args.gateway_id)
        for meter_id, _ in meters:
            check_id("--meter id", meter_id)
    except RecordError as exc:
        raise ConfigError(str(exc)) from exc
    if not args.insecure and args.hub_ca is None:
        raise ConfigError("--hub-ca is required unless --insecure (TLS is on by default)")
    if args.hub_key is None:
        raise ConfigError("--hub-key is required: receipts are checked against the hub's public key")
    args.dir.mkdir(parents=True, exist_ok=True)
    config_path = args.dir / "agent.toml"
    if config_path.exists():
        raise ConfigError(f"{config_path} exists; refusing to overwrite")
    try:
        key = create_key_pair(args.dir, "gateway")
    except KeyFileError as exc:
        raise ConfigError(str(exc)) from exc
    if args.hub_ca:
        shutil.copyfile(args.hub_ca, args.dir / "hub-ca.pem")
    shutil.copyfile(args.hub_key, args.dir / "hub.pub.pem")
    config_path.write_text(
        render_agent_config(
            args.gateway_id, args.hub, meters, insecure_plaintext=args.insecure,
            register_map=args.register_map, interval_s=args.interval,
        ),
        encoding="utf-8",
    )
    from protos.signing import key_id

    print(f"created {config_path} and gateway key {key_id(key.public_key)} ({args.dir / 'gateway.key'}, mode 0600)")
    print(f"next, on the hub: gridtrace hub gateway add {args.gateway_id} --public-key {args.dir / 'gateway.pub.pem'}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from edge.footprint import limit_malloc_arenas

    limit_malloc_arenas()  # before any import below starts a thread
    from edge.agent import run_agent
    from edge.config import load_agent_config
    from edge.queue import QueueError
    from edge.sources.modbus import MeterConfigError
    from protos.signing import KeyFileError

    try:
        cfg = load_agent_config(args.config)
        return asyncio.run(run_agent(cfg, drain_timeout_s=args.drain_timeout))
    except (KeyFileError, QueueError, MeterConfigError) as exc:
        print(f"gridtrace edge: {exc}", file=sys.stderr)
        return 2


def cmd_check_config(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from edge.config import load_agent_config

    cfg = load_agent_config(args.config)
    problems = _check_files(cfg)
    table = Table(title=f"{args.config}: gateway {cfg.gateway_id}, {len(cfg.meters)} meters")
    for column in ("meter", "source", "reads", "every"):
        table.add_column(column)
    for m in cfg.meters:
        if m.protocol == "mqtt":
            reads = f"{len(m.payload.fields)} JSON fields"
        elif m.regmap is None:
            reads = "sunspec (discovered at start)"
        else:
            reads = f"{m.register_map}: {len(m.regmap.quantities)} quantities in {len(m.regmap.plan(m.max_block))} reads"
        table.add_row(m.id, m.source, reads, f"{m.interval_s:g} s")
    console = Console()
    console.print(table)
    for problem in problems:
        print(f"{args.config}: {problem}", file=sys.stderr)
    if problems:
        return 1
    print(f"{args.config}: OK")
    return 0


def _check_files(cfg) -> list[str]:
    """What loading cannot see but starting would trip over: missing or unsafe files."""
    import os
    import stat

    problems = []
    if not cfg.key.exists():
        problems.append(f"[gateway] key: {cfg.key} does not exist (gridtrace edge init creates it)")
    elif cfg.key.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        problems.append(f"[gateway] key: {cfg.key} is readable by other users; chmod 600 {cfg.key}")
    uplink = cfg.uplink
    for label, p in (("tls_ca", uplink.tls_ca), *_public_key_paths(uplink)):
        if p is not None and not Path(p).exists():
            problems.append(f"[uplink] {label}: {p} does not exist")
    queue_dir = cfg.queue.parent
    if queue_dir.exists() and not os.access(queue_dir, os.W_OK):
        problems.append(f"[gateway] queue: cannot write in {queue_dir}")
    return problems


def _public_key_paths(uplink) -> list[tuple[str, Path]]:
    keys = getattr(uplink, "hub_public_keys", None)
    if keys:
        return [("hub_public_keys", Path(k)) for k in keys]
    return [("hub_public_key", uplink.hub_public_key)]


def cmd_status(args: argparse.Namespace) -> int:
    from edge.config import load_agent_config
    from edge.status import print_status

    cfg = load_agent_config(args.config)
    return print_status(cfg, as_json=args.json)


def cmd_probe(args: argparse.Namespace) -> int:
    from edge.probe_cli import run_probe

    return run_probe(args)
