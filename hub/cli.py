"""`gridtrace hub ...`: set up, run and administer a hub."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from pathlib import Path

from gridtrace.clihelp import add_command
from gridtrace.tomlconfig import ConfigError


def add_commands(sub: argparse._SubParsersAction) -> None:
    hub = add_command(sub, "hub", "the substation hub", "gridtrace hub serve --config hub/hub.toml")
    hub_sub = hub.add_subparsers(dest="hub_command", metavar="COMMAND", required=True)

    init = add_command(
        hub_sub, "init", "create the hub's keys, TLS files, config and database",
        "gridtrace hub init --dir hub --chain-id substation-7 --listen 0.0.0.0:7700 --tls-name hub7.example.net",
    )
    init.add_argument("--dir", type=Path, required=True)
    init.add_argument("--chain-id", required=True, help="name of the slave chain this hub seals")
    init.add_argument("--listen", default="127.0.0.1:7700")
    init.add_argument("--tls-name", action="append", default=[], help="DNS name or IP in the TLS certificate (repeatable; localhost and 127.0.0.1 are always added)")
    init.add_argument("--insecure", action="store_true", help="plaintext gRPC (development only)")
    init.add_argument(
        "--database", default="hub.sqlite",
        help="SQLite file (relative to --dir) or an SQLAlchemy URL such as "
             "postgresql+psycopg://gridtrace@db.example.net/gridtrace; migrated to the current schema",
    )
    init.set_defaults(func=cmd_init)

    serve_p = add_command(hub_sub, "serve", "run the hub until SIGTERM/SIGINT", "gridtrace hub serve --config hub/hub.toml")
    serve_p.add_argument("--config", type=Path, required=True)
    serve_p.set_defaults(func=cmd_serve)

    mig = add_command(
        hub_sub, "migrate", "bring the hub's database to the schema this version needs",
        "gridtrace hub migrate --config hub/hub.toml",
    )
    mig.add_argument("--config", type=Path, required=True)
    mig.add_argument("--status", action="store_true", help="only show the database's schema revision and what is pending")
    mig.set_defaults(func=cmd_migrate)

    gw = add_command(hub_sub, "gateway", "manage the gateways this hub accepts", "gridtrace hub gateway add gw1 --public-key gw1/gateway.pub.pem --config hub/hub.toml")
    gw_sub = gw.add_subparsers(dest="gateway_command", metavar="COMMAND", required=True)
    add = add_command(gw_sub, "add", "register a gateway's public key", "gridtrace hub gateway add gw1 --public-key gw1/gateway.pub.pem --config hub/hub.toml")
    add.add_argument("name", help="gateway id, as in its agent.toml")
    add.add_argument("--public-key", type=Path, required=True, help="the gateway's gateway.pub.pem")
    add.add_argument("--config", type=Path, default=Path("hub.toml"))
    add.set_defaults(func=cmd_gateway_add)

    trust = add_command(hub_sub, "trust", "write the trust file clerks verify certificates with", "gridtrace hub trust --config hub/hub.toml -o trust.json")
    trust.add_argument("--config", type=Path, default=Path("hub.toml"))
    trust.add_argument("-o", "--output", type=Path, required=True)
    trust.set_defaults(func=cmd_trust)


def cmd_init(args: argparse.Namespace) -> int:
    from hub.config import render_hub_config
    from hub.storage.store import Store, StoreError, sqlite_url
    from hub.tls import create_tls_files
    from protos.records import RecordError, check_id
    from protos.signing import KeyFileError, create_key_pair, key_id

    try:
        check_id("chain id", args.chain_id)
    except RecordError as exc:
        raise ConfigError(f"--chain-id: {exc}") from exc
    args.dir.mkdir(parents=True, exist_ok=True)
    config_path = args.dir / "hub.toml"
    if config_path.exists():
        raise ConfigError(f"{config_path} exists; refusing to overwrite")
    try:
        key = create_key_pair(args.dir, "hub")
    except KeyFileError as exc:
        raise ConfigError(str(exc)) from exc
    if not args.insecure:
        names = list(dict.fromkeys(["localhost", "127.0.0.1", *args.tls_name]))
        create_tls_files(args.dir / "tls", names, args.chain_id)
    text = render_hub_config(args.chain_id, args.listen, args.insecure)
    if args.database != "hub.sqlite":
        text, n = re.subn(r'(?m)^database = "hub\.sqlite"', lambda _: f"database = {json.dumps(args.database)}", text)
        if n != 1:
            raise ConfigError("--database: the hub.toml template has no `database = \"hub.sqlite\"` line to set")
    url = args.database if "://" in args.database else sqlite_url(args.dir / args.database)
    store = Store(url)
    try:
        store.create(args.chain_id)
    except StoreError as exc:
        raise ConfigError(f"--database: {exc}") from exc
    finally:
        store.close()
    config_path.write_text(text, encoding="utf-8")
    print(f"created {config_path}, hub key {key_id(key.public_key)} and database {store.where}")
    if not args.insecure:
        print(f"gateways need {args.dir / 'tls/ca.pem'} (TLS) and {args.dir / 'hub.pub.pem'} (receipts)")
    return 0


def _store(config: Path):
    """The configured store, checked to be at the schema head and on the configured chain."""
    from hub.config import load_hub_config
    from hub.storage.store import Store

    from hub.storage.store import StoreError

    cfg = load_hub_config(config)
    store = Store(cfg.database_url)
    try:
        store.open_existing(cfg.chain_id, str(config))
    except StoreError as exc:
        # Reported like a config problem: the operator fixes the file or runs `hub migrate`.
        raise ConfigError(str(exc)) from exc
    return cfg, store


def cmd_migrate(args: argparse.Namespace) -> int:
    from hub.config import load_hub_config
    from hub.storage import migrate
    from hub.storage.engine import StoreError, engine_for

    cfg = load_hub_config(args.config)
    engine = engine_for(cfg.database_url)
    where = engine.url.render_as_string(hide_password=True)
    try:
        before = migrate.status(engine)
        if args.status:
            pending = " ".join(before.pending) or "none"
            print(f"database {where}: revision {before.current or 'none (empty)'}, head {before.head}, "
                  f"pending: {pending}")
            return 0 if before.at_head else 1
        after = migrate.upgrade(engine)
    except StoreError as exc:
        print(f"gridtrace hub migrate: {exc}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    if before.current == after.current:
        print(f"database {where} is at revision {after.current} (head); nothing to do")
    else:
        print(f"database {where} migrated from {before.current or 'empty'} to {after.current}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from hub.config import load_hub_config
    from hub.server import serve
    from hub.storage.store import Store, StoreError
    from protos.signing import KeyFileError

    cfg = load_hub_config(args.config)
    try:
        # Refuse to serve an old or foreign schema before binding ports or touching the chain.
        store = Store(cfg.database_url)
        try:
            store.open_existing(cfg.chain_id, str(args.config))
        finally:
            store.close()
        return asyncio.run(serve(cfg))
    except (KeyFileError, StoreError, OSError) as exc:
        print(f"gridtrace hub: {exc}", file=sys.stderr)
        return 2


def cmd_gateway_add(args: argparse.Namespace) -> int:
    from protos.signing import KeyFileError, key_id, load_public_key, public_key_pem
    from protos.records import RecordError, check_id

    try:
        check_id("gateway id", args.name)
        pub = load_public_key(args.public_key)
    except (RecordError, KeyFileError) as exc:
        print(f"gridtrace hub gateway add: {exc}", file=sys.stderr)
        return 2
    _, store = _store(args.config)
    added = store.add_gateway(args.name, key_id(pub), public_key_pem(pub), time.time_ns())
    print(f"gateway {args.name} key {key_id(pub)} {'registered' if added else 'was already registered'}")
    return 0


def cmd_trust(args: argparse.Namespace) -> int:
    from hub.certificates.trust import trust_document
    from protos.signing import Signer, parse_public_key_pem

    cfg, store = _store(args.config)
    signer = Signer.from_file(cfg.key)
    gateways = {
        gw: [parse_public_key_pem(pem) for _, pem in sorted(keys.items())]
        for gw, keys in store.gateway_keys().items()
    }
    doc = trust_document(gateways, {cfg.chain_id: (1, [(cfg.chain_id, signer.public_key)])})
    args.output.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.output}: chain {cfg.chain_id} (quorum 1) and {len(gateways)} gateways")
    return 0
