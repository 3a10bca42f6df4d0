"""`gridtrace chain ...`: the consensus simulator, and setting up and running replicas."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

from gridtrace.clihelp import add_command
from hub.consensus.simulator import FAULTS, Faults, Outcome, simulate

# The default fault mixes: every network fault, every Byzantine behaviour, and the
# combinations that make a behaviour matter (bad blocks only hurt a replica that must catch up,
# forged view changes only a view change).
DEFAULT_MIXES = (
    "none", "drop", "delay+duplicate", "partition", "crash", "quorum-loss", "drop+delay+duplicate+crash+partition",
    "equivocate", "equivocate+drop", "conflicting-votes+delay", "replay+crash", "silent-primary",
    "forged-view-change+drop", "bad-blocks+partition", "bad-blocks+crash", "twins", "twins+drop",
)


def add_commands(sub: argparse._SubParsersAction) -> None:
    chain = add_command(sub, "chain", "the replicas' consensus", "gridtrace chain simulate --replicas 4 --seeds 200")
    chain_sub = chain.add_subparsers(dest="chain_command", metavar="COMMAND", required=True)
    sim = add_command(
        chain_sub, "simulate", "run the PBFT core over a seeded faulty network and check safety and liveness",
        "gridtrace chain simulate --replicas 4 --seeds 500\n"
        "gridtrace chain simulate --replicas 7 --seeds 50 --faults equivocate+drop,twins\n"
        "gridtrace chain simulate --seed-start 1234 --seeds 1 --faults crash   # replay one seed\n\n"
        f"faults (combine with +, list with commas): {', '.join(FAULTS)}",
    )
    sim.add_argument("--replicas", type=int, default=4, help="consensus replicas n (default 4; f = (n-1)//3)")
    sim.add_argument("--reserves", type=int, default=0, help="reserve replicas besides them (default 0)")
    sim.add_argument("--payload-copies", type=int, default=0,
                     help="custody: replicas that store each batch (at least f+1; default 0, every replica)")
    sim.add_argument("--seeds", type=int, default=100, help="seeds per fault mix (default 100)")
    sim.add_argument("--seed-start", type=int, default=0, help="first seed (default 0)")
    sim.add_argument("--faults", default=",".join(DEFAULT_MIXES), help="fault mixes, comma-separated (default: all)")
    sim.add_argument("--duration", type=float, default=12.0, help="simulated seconds per seed (default 12)")
    sim.set_defaults(func=cmd_simulate)

    init = add_command(
        chain_sub, "init", "create the keys, mutual-TLS files and configs of a substation's replicas",
        "gridtrace chain init --replicas 4 --dir replicas --base-port 7800",
    )
    init.add_argument("--replicas", type=int, default=4, help="consensus replicas n (default 4)")
    init.add_argument("--reserves", type=int, default=0,
                      help="reserve replicas besides them (default 0): promoted when a consensus replica fails")
    init.add_argument("--dir", type=Path, required=True, help="directory to create (must not exist)")
    init.add_argument("--host", default="127.0.0.1", help="address every replica listens on (default 127.0.0.1)")
    init.add_argument("--base-port", type=int, default=7800, help="replica i listens on base-port + i")
    init.add_argument("--base-timeout", type=float, default=1.0, help="seconds before a view change (default 1)")
    init.add_argument("--payload-copies", type=int, default=0,
                      help="custody: replicas that store each batch's entries, at least f+1 (default 0: every one)")
    init.add_argument("--chain-id", default=None,
                      help="also create a hub per replica (DIR/hub-i: hub.toml with [consensus], key, TLS, database) "
                           "for this slave chain")
    init.add_argument("--hub-base-port", type=int, default=7700, help="hub i takes gateways on hub-base-port + i")
    init.add_argument("--insecure", action="store_true",
                      help="development only: replicas and hubs without TLS (plaintext gRPC)")
    init.set_defaults(func=cmd_init)

    run = add_command(chain_sub, "replica", "run one replica", "gridtrace chain replica --config replicas/replica-0.toml")
    run.add_argument("--config", type=Path, required=True)
    run.set_defaults(func=cmd_replica)

    status = add_command(
        chain_sub, "status", "a replica's height, view and decided chain (JSON)",
        "gridtrace chain status --config replicas/replica-0.toml --replica 2",
    )
    status.add_argument("--config", type=Path, required=True, help="a replica's config (its TLS identity is used)")
    status.add_argument("--replica", type=int, default=None, help="which replica to ask (default: the config's own)")
    status.set_defaults(func=cmd_status)


def cmd_simulate(args: argparse.Namespace) -> int:
    if args.replicas < 1:
        print("gridtrace chain simulate: --replicas must be at least 1", file=sys.stderr)
        return 2
    try:
        mixes = [Faults.parse(m) for m in args.faults.split(",") if m.strip()]
    except ValueError as exc:
        print(f"gridtrace chain simulate: --faults: {exc}", file=sys.stderr)
        return 2
    seeds = range(args.seed_start, args.seed_start + args.seeds)
    heal = args.duration * 2 / 3
    reserves = f" and {args.reserves} reserves" if args.reserves else ""
    print(f"{args.replicas} replicas{reserves} (f = {(args.replicas - 1) // 3}), seeds {seeds.start}..{seeds.stop - 1}, "
          f"{args.duration:g} simulated s per seed, faults until {heal:g} s")
    print(f"{'faults':42} {'seeds':>5} {'blocks':>9} {'view changes':>12} {'swaps':>5}  result")
    failed = False
    started = time.monotonic()
    for faults in mixes:
        outcomes = simulate(args.replicas, seeds, faults, duration=args.duration, heal_at=heal, reserves=args.reserves,
                            payload_copies=args.payload_copies)
        failed |= _report(faults, outcomes)
    print(f"{time.monotonic() - started:.1f} s")
    return 1 if failed else 0


def _report(faults: Faults, outcomes: list[Outcome]) -> bool:
    unsafe = [o for o in outcomes if o.violation]
    stalled = [o for o in outcomes if o.stalled and not o.violation]
    blocks = sum(o.blocks for o in outcomes)
    changes = sum(o.view_changes for o in outcomes)
    if unsafe:
        result = f"SAFETY VIOLATION in {len(unsafe)} seeds, first seed {unsafe[0].seed}: {unsafe[0].violation}"
    elif stalled:
        result = f"LIVENESS FAILURE in {len(stalled)} seeds, first seed {stalled[0].seed}: {stalled[0].stalled}"
    else:
        result = "safe and live"
    swaps = sum(o.swaps for o in outcomes)
    print(f"{faults.label:42} {len(outcomes):>5} {blocks:>9} {changes:>12} {swaps:>5}  {result}")
    return bool(unsafe or stalled)


def cmd_init(args: argparse.Namespace) -> int:
    from hub.tls import create_replica_tls
    from protos.signing import write_private_key, write_public_key

    if args.replicas < 1 or args.reserves < 0:
        print("gridtrace chain init: --replicas must be at least 1 and --reserves at least 0", file=sys.stderr)
        return 2
    total = args.replicas + args.reserves
    f = (args.replicas - 1) // 3
    if args.payload_copies and not f + 1 <= args.payload_copies <= total:
        print(f"gridtrace chain init: --payload-copies must be 0 or from f+1 = {f + 1} to {total}", file=sys.stderr)
        return 2
    if args.dir.exists():
        print(f"gridtrace chain init: {args.dir} exists; choose a new directory", file=sys.stderr)
        return 2
    (args.dir / "keys").mkdir(parents=True)
    for i in range(total):
        signer = write_private_key(args.dir / "keys" / f"replica-{i}.key")
        write_public_key(args.dir / "keys" / f"replica-{i}.pub", signer.public_key)
    if not args.insecure:
        create_replica_tls(args.dir / "tls", total, [args.host, "localhost"], "gridtrace")
    peers = "\n".join(
        f'{i} = {{ address = "{args.host}:{args.base_port + i}", public_key = "keys/replica-{i}.pub" }}'
        for i in range(total)
    )
    for i in range(total):
        transport = (
            "insecure_plaintext = true            # development only: no TLS between replicas\n" if args.insecure else
            f'\n[tls]\nca = "tls/ca.pem"\ncert = "tls/replica-{i}.pem"\nkey = "tls/replica-{i}.key"\n'
        )
        (args.dir / f"replica-{i}.toml").write_text(
            f"[replica]\nid = {i}\nlisten = \"{args.host}:{args.base_port + i}\"\ndata = \"replica-{i}\"\n"
            f"signing_key = \"keys/replica-{i}.key\"\nbase_timeout_s = {args.base_timeout}\ncheckpoint_interval = 10\n"
            f"active = {list(range(args.replicas))}   # the first consensus replicas; the other peers are reserves\n"
            + (f"payload_copies = {args.payload_copies}   # custody: replicas that store each batch's entries\n"
               if args.payload_copies else "") +
            f"{transport}\n[peers]\n{peers}\n",
            encoding="utf-8",
        )
    if args.chain_id is None:
        print(f"{args.replicas} replicas and {args.reserves} reserves in {args.dir}: "
              f"gridtrace chain replica --config {args.dir}/replica-0.toml, ...")
        return 0
    from hub.cli import init_hub_dir

    # The replicas made here share one host (--host), and so its cores: a verifier process per
    # replica would add a process hop per batch and no parallelism (measured: bench/README.md).
    shared = (
        "\n[ingest]\nverifier_processes = 0   # replicas on one host share its cores; on a host of its own: 1 or more\n"
        if total > 1 else ""
    )
    for i in range(total):
        init_hub_dir(
            args.dir / f"hub-{i}", args.chain_id, f"{args.host}:{args.hub_base_port + i}", args.insecure, "",
            tls_names=[args.host], extra_config=f'{shared}\n[consensus]\nreplica = "../replica-{i}.toml"\n',
            # One CA for the substation: gateways trust tls/ca.pem for every hub replica.
            tls_files=(f"../tls/replica-{i}.pem", f"../tls/replica-{i}.key", "../tls/ca.pem"),
            # One key per replica: its votes, its receipts and the certificates it issues.
            key_file=f"../keys/replica-{i}.key",
        )
    print(f"{args.replicas} hub replicas and {args.reserves} reserves of chain {args.chain_id} in {args.dir}: "
          f"gridtrace hub serve --config {args.dir}/hub-0/hub.toml, ...; register each gateway with every hub")
    return 0


def cmd_replica(args: argparse.Namespace) -> int:
    from gridtrace.signals import stop_on_signals
    from hub.consensus.process import ReplicaProcess
    from hub.consensus.replica_config import load_replica_config

    cfg = load_replica_config(args.config)

    async def main() -> None:
        stop = asyncio.Event()
        stop_on_signals(stop)
        await ReplicaProcess(cfg).run(stop)

    asyncio.run(main())
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from hub.consensus.process import SERVICE, open_channel
    from hub.consensus.replica_config import load_replica_config

    cfg = load_replica_config(args.config)
    target = cfg.id if args.replica is None else args.replica
    if target not in cfg.peers:
        print(f"gridtrace chain status: no replica {target} in {args.config}", file=sys.stderr)
        return 2

    async def ask() -> bytes:
        async with open_channel(cfg, cfg.peers[target].address) as ch:
            call = ch.unary_unary(f"/{SERVICE}/Status", request_serializer=None, response_deserializer=None)
            return await call(b"", timeout=5)

    import grpc

    try:
        raw = asyncio.run(ask())
    except grpc.RpcError as exc:
        print(f"gridtrace chain status: replica {target} at {cfg.peers[target].address}: {exc.details()}", file=sys.stderr)
        return 1
    print(json.dumps(json.loads(raw), indent=2))
    return 0
