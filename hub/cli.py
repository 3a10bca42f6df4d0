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
    init.add_argument("--metrics-listen", default="127.0.0.1:9464", help='Prometheus /metrics address ("" = off)')
    init.add_argument(
        "--database", default="hub.sqlite",
        help="SQLite file (relative to --dir) or an SQLAlchemy URL such as "
             "postgresql+psycopg://gridtrace@db.example.net/gridtrace; migrated to the current schema",
    )
    init.set_defaults(func=cmd_init)

    serve_p = add_command(hub_sub, "serve", "run the hub until SIGTERM/SIGINT", "gridtrace hub serve --config hub/hub.toml")
    serve_p.add_argument("--config", type=Path, required=True)
    serve_p.set_defaults(func=cmd_serve)

    def running_hub_command(name: str, summary: str, func, timeout: float) -> argparse.ArgumentParser:  # noqa: ANN001
        """A command that asks the running hub over gRPC, with the address and TLS of its config."""
        p = add_command(hub_sub, name, summary, f"gridtrace hub {name} --config hub/hub.toml")
        p.add_argument("--config", type=Path, default=Path("hub.toml"))
        p.add_argument("--timeout", type=float, default=timeout, help=f"seconds (default {timeout:g})")
        p.set_defaults(func=func)
        return p

    health_p = running_hub_command(
        "health", "ask the running hub whether it serves (exit 0) or not (exit 1); for health checks", cmd_health, 5.0
    )
    health_p.add_argument("--service", default="gridtrace.v1.Ingest", help='service to ask about ("" = the whole hub)')
    running_hub_command(
        "status", "height, lag, unsealed batches, peers, gateways and streams of the running hub", cmd_status, 10.0
    ).add_argument("--json", action="store_true", help="one JSON object instead of text")
    running_hub_command(
        "gateways", "each gateway's last batch, rate and rejects, from the running hub", cmd_gateways, 10.0
    ).add_argument("--json", action="store_true", help="one JSON object instead of a table")

    verify_p = add_command(
        hub_sub, "verify", "audit every stored block and batch (links, roots, seals, signatures, entries)",
        "gridtrace hub verify --config hub/hub.toml",
    )
    verify_p.add_argument("--config", type=Path, default=Path("hub.toml"))
    verify_p.add_argument("--seal-key", type=Path, action="append", default=[],
                          help="public key (PEM) of another replica whose seals count (repeatable)")
    verify_p.add_argument("--deep", action="store_true",
                          help="also decode every entry and check each batch's time range (slower)")
    verify_p.set_defaults(func=cmd_verify)

    backup_p = add_command(
        hub_sub, "backup", "copy the whole chain into a new SQLite file, then audit the copy",
        "gridtrace hub backup --config hub/hub.toml --output /backup/substation-7.sqlite",
    )
    backup_p.add_argument("--config", type=Path, default=Path("hub.toml"))
    backup_p.add_argument("--output", type=Path, required=True, help="a new file (an existing one is refused)")
    backup_p.set_defaults(func=cmd_backup)

    restore_p = add_command(
        hub_sub, "restore", "copy a backup into the config's (empty) database, then audit every block",
        "gridtrace hub restore --config hub/hub.toml --input /backup/substation-7.sqlite",
    )
    restore_p.add_argument("--config", type=Path, default=Path("hub.toml"))
    restore_p.add_argument("--input", type=Path, required=True, help="a file written by `hub backup`")
    restore_p.add_argument("--seal-key", type=Path, action="append", default=[],
                           help="public key (PEM) of the hub that sealed the chain, if not this config's key")
    restore_p.set_defaults(func=cmd_restore)

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
    trust.add_argument("--contract-runner", action="append", default=[], metavar="CONTRACT=GATEWAY",
                       help="a registered gateway whose contract records clerks believe, e.g. carbon-flow/1=carbon.sub-a "
                            "(repeatable)")
    trust.set_defaults(func=cmd_trust)


def cmd_init(args: argparse.Namespace) -> int:
    init_hub_dir(args.dir, args.chain_id, args.listen, args.insecure, args.metrics_listen, args.database, args.tls_name)
    return 0


def init_hub_dir(
    directory: Path, chain_id: str, listen: str, insecure: bool, metrics_listen: str,
    database: str = "hub.sqlite", tls_names: list[str] | tuple[str, ...] = (), extra_config: str = "",
    tls_files: tuple[str, str, str] | None = None, key_file: str | None = None,
) -> None:
    """A hub directory: hub.toml (plus `extra_config`), the hub key (0600; or `key_file`, an
    existing key relative to the directory, as a replica's), TLS files unless insecure or given
    (`tls_files`: cert, key, CA, relative to the directory), and a database created for
    `chain_id`. hub.pub.pem is the public key either way (what agents pin)."""
    from hub.config import render_hub_config
    from hub.storage.store import Store, StoreError, sqlite_url
    from hub.tls import create_tls_files
    from protos.records import RecordError, check_id
    from protos.signing import KeyFileError, Signer, create_key_pair, key_id, write_public_key

    try:
        check_id("chain id", chain_id)
    except RecordError as exc:
        raise ConfigError(f"--chain-id: {exc}") from exc
    directory.mkdir(parents=True, exist_ok=True)
    config_path = directory / "hub.toml"
    if config_path.exists():
        raise ConfigError(f"{config_path} exists; refusing to overwrite")
    try:
        if key_file is None:
            key = create_key_pair(directory, "hub")
        else:
            key = Signer.from_file(directory / key_file)
            write_public_key(directory / "hub.pub.pem", key.public_key)
    except KeyFileError as exc:
        raise ConfigError(str(exc)) from exc
    if not insecure and tls_files is None:
        names = list(dict.fromkeys(["localhost", "127.0.0.1", *tls_names]))
        create_tls_files(directory / "tls", names, chain_id)
    text = render_hub_config(chain_id, listen, insecure, metrics_listen, *([tls_files] if tls_files else []))
    if key_file is not None:
        text = text.replace('key = "hub.key"      ', f"key = {json.dumps(key_file)}", 1)
    if database != "hub.sqlite":
        text, n = re.subn(r'(?m)^database = "hub\.sqlite"', lambda _: f"database = {json.dumps(database)}", text)
        if n != 1:
            raise ConfigError("--database: the hub.toml template has no `database = \"hub.sqlite\"` line to set")
    url = database if "://" in database else sqlite_url(directory / database)
    store = Store(url)
    try:
        store.create(chain_id)
    except StoreError as exc:
        raise ConfigError(f"--database: {exc}") from exc
    finally:
        store.close()
    config_path.write_text(text + extra_config, encoding="utf-8")
    print(f"created {config_path}, hub key {key_id(key.public_key)} and database {store.where}")
    if not insecure:
        ca = directory / (tls_files[2] if tls_files else "tls/ca.pem")
        print(f"gateways need {ca} (TLS) and {directory / 'hub.pub.pem'} (receipts)")


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
        with migrate.reporting_steps():
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
    from gridtrace.logjson import configure_logging
    from hub.config import load_hub_config

    cfg = load_hub_config(args.config)
    # the command line's --log-level/--log-format win over the config's [logging]; set before
    # the server's modules are imported, so that whatever they log comes out in that format
    configure_logging(args.log_level or cfg.log_level, args.log_format or cfg.log_format)
    from hub.server import serve
    from hub.storage.store import StoreError
    from protos.signing import KeyFileError

    try:
        # serve() refuses an old or foreign schema itself, before binding ports.
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
    gateways = {
        gw: [parse_public_key_pem(pem) for _, pem in sorted(keys.items())]
        for gw, keys in store.gateway_keys().items()
    }
    if cfg.consensus_replica is not None:
        # Replicated: blocks carry the commit votes of a quorum of the replicas' keys.
        from hub.consensus.config import ConsensusConfig
        from hub.consensus.replica_config import load_replica_config

        rcfg = load_replica_config(cfg.consensus_replica)
        quorum = ConsensusConfig(n=rcfg.n, active=rcfg.active).quorum
        replicas = [(f"replica-{i}", p.public_key) for i, p in sorted(rcfg.peers.items())]
    else:
        quorum, replicas = 1, [(cfg.chain_id, Signer.from_file(cfg.key).public_key)]
    contracts: dict[str, list[str]] = {}
    for spec in args.contract_runner:
        contract, sep, gateway = spec.partition("=")
        if not sep or not contract or gateway not in gateways:
            print(f"gridtrace hub trust: --contract-runner {spec!r}: must be CONTRACT=GATEWAY with a registered gateway "
                  f"({', '.join(sorted(gateways)) or 'none registered'})", file=sys.stderr)
            return 2
        contracts.setdefault(contract, []).append(gateway)
    doc = trust_document(gateways, {cfg.chain_id: (quorum, replicas)}, contracts)
    args.output.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.output}: chain {cfg.chain_id} (quorum {quorum} of {len(replicas)}) and {len(gateways)} gateways")
    return 0


def _ask(args: argparse.Namespace, call):  # noqa: ANN001, ANN202
    """Run `call(stub)` against the hub of --config; print why it failed and return None."""
    import grpc

    from hub.channel import HubUnreachable, describe_rpc_error, hub_channel
    from hub.config import load_hub_config
    from protos import ingest_pb2_grpc

    cfg = load_hub_config(args.config)
    try:
        with hub_channel(cfg) as channel:
            return call(ingest_pb2_grpc.QueryStub(channel), channel)
    except HubUnreachable as exc:
        print(f"gridtrace hub: {exc}", file=sys.stderr)
    except grpc.RpcError as exc:
        print(f"gridtrace hub: {describe_rpc_error(cfg, exc)}", file=sys.stderr)
    return None


def cmd_health(args: argparse.Namespace) -> int:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    def call(_stub, channel):  # noqa: ANN001, ANN202
        req = health_pb2.HealthCheckRequest(service=args.service)
        return health_pb2_grpc.HealthStub(channel).Check(req, timeout=args.timeout)

    reply = _ask(args, call)
    if reply is None:
        return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{args.service or 'hub'}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


def _ns(ns: int) -> str:
    if not ns:
        return "-"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ns / 1e9))


def cmd_status(args: argparse.Namespace) -> int:
    from protos import ingest_pb2 as ipb

    st = _ask(args, lambda stub, _ch: stub.GetStatus(ipb.StatusRequest(), timeout=args.timeout))
    if st is None:
        return 1
    lag_s = (st.now_ns - st.head_time_ns) / 1e9 if st.head_time_ns else None
    doc = {
        "chain_id": st.chain_id, "height": st.height, "head_hash": st.head_hash.hex(),
        "head_time": _ns(st.head_time_ns), "lag_s": None if lag_s is None else round(lag_s, 3),
        "batches_stored": st.batches_stored, "batches_unsealed": st.batches_unsealed,
        "entries_stored": st.entries_stored, "peers": list(st.peers), "gateways": list(st.gateways),
        "connected_gateways": list(st.connected_gateways), "streams": st.streams,
    }
    if args.json:
        print(json.dumps(doc))
        return 0
    print(f"chain     {st.chain_id}")
    print(f"height    {st.height}  head {st.head_hash.hex()[:16] or '-'}  at {doc['head_time']}"
          + (f"  (lag {lag_s:.1f} s)" if lag_s is not None else ""))
    print(f"batches   {st.batches_stored} stored, {st.batches_unsealed} awaiting a block; {st.entries_stored} entries")
    print(f"gateways  {len(st.gateways)} registered, {len(st.connected_gateways)} connected, {st.streams} streams")
    print(f"peers     {', '.join(st.peers) or '(none configured)'}")
    return 0


def cmd_gateways(args: argparse.Namespace) -> int:
    from protos import ingest_pb2 as ipb

    gl = _ask(args, lambda stub, _ch: stub.GetGateways(ipb.GatewaysRequest(), timeout=args.timeout))
    if gl is None:
        return 1
    rows = [
        {
            "gateway": g.gateway_id, "keys": list(g.key_ids), "connected": g.connected,
            "last_seq": g.last_seq, "last_stored": _ns(g.last_stored_ns), "batches": g.batches,
            "readings": g.readings, "duplicates": g.duplicates,
            "readings_per_s_1m": round(g.readings_per_s_1m, 2), "readings_per_s_15m": round(g.readings_per_s_15m, 2),
            "rejects": dict(sorted(g.rejects.items())),
        }
        for g in gl.gateways
    ]
    if args.json:
        print(json.dumps({"gateways": rows}))
        return 0
    print(f"{'gateway':<20} {'conn':<4} {'last seq':>9} {'last stored':<20} {'r/s 1m':>9} {'r/s 15m':>9}  rejects")
    for r in rows:
        rejects = ", ".join(f"{k} {v}" for k, v in r["rejects"].items()) or "-"
        print(f"{r['gateway']:<20} {'yes' if r['connected'] else 'no':<4} {r['last_seq']:>9} {r['last_stored']:<20} "
              f"{r['readings_per_s_1m']:>9.1f} {r['readings_per_s_15m']:>9.1f}  {rejects}")
    return 0


def _seal_keys(cfg, extra: list[Path]) -> tuple[dict, int]:  # noqa: ANN001
    """The keys whose seals count on this hub's blocks, and how many must have sealed each:
    the hub's own key (and `extra` keys, each enough alone), or a replicated hub's replica keys
    with the PBFT quorum."""
    from protos.signing import Signer, key_id, load_public_key

    if cfg.consensus_replica is not None:
        from hub.consensus.config import ConsensusConfig
        from hub.consensus.replica_config import load_replica_config

        rcfg = load_replica_config(cfg.consensus_replica)
        return {key_id(p.public_key): p.public_key for p in rcfg.peers.values()}, ConsensusConfig(n=rcfg.n, active=rcfg.active).quorum
    own = Signer.from_file(cfg.key)
    keys = {own.key_id: own.public_key}
    for path in extra:
        pub = load_public_key(path)
        keys[key_id(pub)] = pub
    return keys, 1


def _audit(store, cfg, seal_keys: tuple[dict, int], what: str, deep: bool = False) -> int:  # noqa: ANN001
    from hub.chain.audit import audit_store

    report = audit_store(store, cfg.chain_id, seal_keys[0], quorum=seal_keys[1], deep=deep)
    if report.ok:
        elsewhere = (f" ({report.header_only} of the batches by header and signature only: their entries are "
                     "stored at other replicas)" if report.header_only else "")
        print(f"{what}: {report.blocks} blocks, {report.batches} batches, {report.entries} entries: all check out"
              f"{elsewhere}")
        return 0
    print(f"{what}: FAILED at {report.findings[0]}", file=sys.stderr)
    for f in report.findings[1:20]:
        print(f"  also: {f}", file=sys.stderr)
    if len(report.findings) > 20:
        print(f"  ... and {len(report.findings) - 20} more", file=sys.stderr)
    return 1


def _existing_store(cfg):  # noqa: ANN001, ANN202
    from hub.storage.store import Store

    store = Store(cfg.database_url)
    store.chain_id()  # raises StoreError for a database that was never initialised
    return store


def cmd_verify(args: argparse.Namespace) -> int:
    from hub.config import load_hub_config, redact_url
    from hub.storage.store import StoreError

    cfg = load_hub_config(args.config)
    try:
        store = _existing_store(cfg)
    except StoreError as exc:
        print(f"gridtrace hub verify: {exc}", file=sys.stderr)
        return 2
    return _audit(
        store, cfg, _seal_keys(cfg, args.seal_key), f"chain {cfg.chain_id} in {redact_url(cfg.database_url)}",
        deep=args.deep,
    )


def cmd_backup(args: argparse.Namespace) -> int:
    from hub.backup import BackupError, copy_chain
    from hub.config import load_hub_config
    from hub.storage.store import Store, StoreError, sqlite_url

    cfg = load_hub_config(args.config)
    if args.output.exists():
        print(f"gridtrace hub backup: {args.output} exists; choose a new file", file=sys.stderr)
        return 2
    try:
        src = _existing_store(cfg)
        dst = Store(sqlite_url(args.output))
        counts = copy_chain(src, dst, cfg.chain_id, time.time_ns())
    except (BackupError, StoreError) as exc:
        print(f"gridtrace hub backup: {exc}", file=sys.stderr)
        args.output.unlink(missing_ok=True)
        return 1
    args.output.chmod(0o600)
    print(f"wrote {args.output}: {counts.blocks} blocks, {counts.batches} batches, {counts.entries} entries, "
          f"{counts.gateway_keys} gateway keys")
    return _audit(dst, cfg, _seal_keys(cfg, []), f"backup {args.output}")


def cmd_restore(args: argparse.Namespace) -> int:
    from hub.backup import BackupError, copy_chain
    from hub.config import load_hub_config, redact_url
    from hub.storage.store import Store, StoreError, sqlite_url

    cfg = load_hub_config(args.config)
    if not args.input.exists():
        print(f"gridtrace hub restore: {args.input} does not exist", file=sys.stderr)
        return 2
    try:
        src = Store(sqlite_url(args.input))
        src.chain_id()
        counts = copy_chain(src, Store(cfg.database_url), cfg.chain_id, time.time_ns())
    except (BackupError, StoreError) as exc:
        print(f"gridtrace hub restore: {exc}", file=sys.stderr)
        return 1
    print(f"restored {counts.blocks} blocks, {counts.batches} batches, {counts.entries} entries into "
          f"{redact_url(cfg.database_url)}")
    status = _audit(Store(cfg.database_url), cfg, _seal_keys(cfg, args.seal_key), "restored chain")
    if status:
        print("gridtrace hub restore: the restored chain does not check out; do not start the hub on it",
              file=sys.stderr)
    return status
