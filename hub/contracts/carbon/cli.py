"""`gridtrace carbon ...`: carbon emission flow of a network outside the chain, and its report."""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from gridtrace.clihelp import add_command

if TYPE_CHECKING:
    from pandapower.auxiliary import pandapowerNet

    from hub.compute.outsource import Outsourcer
    from hub.contracts.carbon.flow import SystemSolver


def add_commands(sub: argparse._SubParsersAction) -> None:
    carbon = add_command(sub, "carbon", "carbon emission flow through a network",
                         "gridtrace carbon trace --pandapower-case case118 --emission-factors factors.json --out trace.json")
    carbon_sub = carbon.add_subparsers(dest="carbon_command", metavar="COMMAND", required=True)

    tr = add_command(
        carbon_sub, "trace",
        "solve a network's power flow and trace its carbon: bus intensities, branch flows, load emissions, "
        "generator-to-load shares",
        "gridtrace carbon trace --pandapower-case case118 --emission-factors factors.json --out trace.json\n"
        "gridtrace carbon trace --matpower case30.m --emission-factors factors.json --out trace.json\n\n"
        'factors.json: {"gen:0": {"coal": {"a": 0.0002, "b": 0.31, "c": 4.2, "carbon_content": 0.62,\n'
        '               "oxidation_rate": 0.98}}, "gen:1": 0.39, "ext_grid:0": {"t_per_mwh": 0.58}}\n'
        "(tCO2/MWh, or a coal unit's fuel curve in t coal/h; sources not named emit nothing)",
    )
    _network_arguments(tr)
    tr.add_argument("--emission-factors", type=Path, required=True, metavar="FILE",
                    help="JSON: source name (gen:3, sgen:0, ext_grid:0) -> tCO2/MWh or a coal curve")
    tr.add_argument("--out", type=Path, required=True, metavar="FILE", help="where to write the trace (JSON)")
    tr.add_argument("--dc", action="store_true", help="use a DC power flow (no losses) instead of AC")
    tr.add_argument("--no-shares", action="store_true", help="leave out generator-to-load shares (large networks)")
    _outsourcing_arguments(tr)
    tr.set_defaults(func=cmd_trace)

    mod = add_command(
        carbon_sub, "model", "register a network model: network, emission factors and which meter measures which element",
        "gridtrace carbon model --pandapower-case case118 --emission-factors factors.json --meters meters.json \\\n"
        "    --out model.json\n\nmeters.json: {\"MTR-1\": \"load:0\", \"MTR-2\": \"sgen:4\"}",
    )
    _network_arguments(mod)
    mod.add_argument("--emission-factors", type=Path, required=True, metavar="FILE")
    mod.add_argument("--meters", type=Path, required=True, metavar="FILE", help="JSON: meter id -> load:N, sgen:N, gen:N")
    mod.add_argument("--out", type=Path, required=True, metavar="FILE")
    mod.set_defaults(func=cmd_model)

    itv = add_command(
        carbon_sub, "interval", "carbon emission flow of one interval from the sealed readings of a model's meters",
        "gridtrace carbon interval --model model.json --config hub/hub.toml \\\n"
        "    --from 2026-11-23T10:00:00Z --to 2026-11-23T10:15:00Z --out interval.json",
    )
    itv.add_argument("--model", type=Path, required=True, metavar="FILE", help="written by gridtrace carbon model")
    db = itv.add_mutually_exclusive_group(required=True)
    db.add_argument("--config", type=Path, metavar="FILE", help="the hub's hub.toml (its database)")
    db.add_argument("--database", metavar="URL", help="the hub's database URL instead (sqlite:///..., postgresql+psycopg://...)")
    itv.add_argument("--from", dest="from_", required=True, help="start, ISO 8601 with zone (or ns), inclusive")
    itv.add_argument("--to", required=True, help="end, exclusive")
    itv.add_argument("--out", type=Path, required=True, metavar="FILE")
    itv.add_argument("--no-shares", action="store_true")
    _outsourcing_arguments(itv)
    itv.set_defaults(func=cmd_interval)

    ini = add_command(
        carbon_sub, "runner-init", "create the carbon contract runner's key and config",
        "gridtrace carbon runner-init carbon --id carbon.sub-a --hub 127.0.0.1:7700 --hub-key hub/hub.pub.pem \\\n"
        "    --hub-ca hub/tls/ca.pem --model model.json --hub-config hub/hub.toml\n"
        "gridtrace hub gateway add carbon.sub-a --public-key carbon/runner.pub.pem --config hub/hub.toml",
    )
    ini.add_argument("dir", type=Path)
    ini.add_argument("--id", required=True, help="the runner's gateway id, registered at the hub like a gateway's")
    ini.add_argument("--hub", required=True, metavar="HOST:PORT")
    ini.add_argument("--hub-key", type=Path, required=True, metavar="FILE", help="the hub's hub.pub.pem (receipts)")
    ini.add_argument("--hub-ca", type=Path, metavar="FILE", help="the CA of the hub's TLS certificate")
    ini.add_argument("--insecure", action="store_true", help="plaintext gRPC (development only)")
    ini.add_argument("--model", type=Path, required=True, metavar="FILE", help="written by gridtrace carbon model")
    ini.add_argument("--hub-config", type=Path, required=True, metavar="FILE", help="the hub's hub.toml (its database)")
    ini.add_argument("--interval", type=int, default=900, metavar="SECONDS", help="settlement interval (default 900)")
    ini.set_defaults(func=cmd_runner_init)

    run = add_command(
        carbon_sub, "run", "compute every settlement interval from sealed readings and publish the results to the chain",
        "gridtrace carbon run --config carbon/carbon.toml\ngridtrace carbon run --config carbon/carbon.toml --once",
    )
    run.add_argument("--config", type=Path, required=True, metavar="FILE", help="written by gridtrace carbon runner-init")
    run.add_argument("--once", action="store_true", help="publish the intervals that are due, wait for receipts, exit")
    run.set_defaults(func=cmd_run)

    aud = add_command(
        carbon_sub, "audit", "recompute the published intervals from the chain and compare them with what was published",
        "gridtrace carbon audit --model model.json --config hub/hub.toml --runner carbon.sub-a",
    )
    aud.add_argument("--model", type=Path, required=True, metavar="FILE")
    adb = aud.add_mutually_exclusive_group(required=True)
    adb.add_argument("--config", type=Path, metavar="FILE", help="the hub's hub.toml (its database)")
    adb.add_argument("--database", metavar="URL")
    aud.add_argument("--runner", required=True, metavar="GATEWAY", help="the runner's gateway id")
    aud.add_argument("--from", dest="from_", default=None, help="first interval start (default: all)")
    aud.add_argument("--to", default=None, help="end, exclusive (default: all)")
    aud.set_defaults(func=cmd_audit)

    rep = add_command(
        carbon_sub, "report", "print a trace's totals and its largest emitters, or one load's sources",
        "gridtrace carbon report trace.json\ngridtrace carbon report trace.json --load load:12\n"
        "gridtrace carbon report interval.json --meter MTR-7",
    )
    rep.add_argument("trace", type=Path, help="a file written by gridtrace carbon trace or carbon interval")
    rep.add_argument("more", type=Path, nargs="*", metavar="INTERVAL",
                     help="with --meter: more interval files; prints the meter's emissions per interval and in all")
    who = rep.add_mutually_exclusive_group()
    who.add_argument("--load", metavar="NAME", help="one load's sources (load:12)")
    who.add_argument("--meter", metavar="ID", help="the sources of the load a meter measures (an interval's file)")
    rep.add_argument("--top", type=int, default=10, help="rows of each table (default 10)")
    rep.set_defaults(func=cmd_report)


def _network_arguments(p: argparse.ArgumentParser) -> None:
    net = p.add_mutually_exclusive_group(required=True)
    net.add_argument("--pandapower-case", metavar="NAME", help="a network of pandapower.networks, e.g. case118")
    net.add_argument("--matpower", type=Path, metavar="FILE", help="a MATPOWER case file (.m or .mat)")
    net.add_argument("--pandapower-json", type=Path, metavar="FILE", help="a network saved with pandapower.to_json")


def _outsourcing_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--providers", type=Path, metavar="FILE",
                   help="outsource the solves, masked, to these compute providers, checked twice (docs/carbon.md)")
    p.add_argument("--provider-book", type=Path, metavar="FILE",
                   help="providers' wrong answers and blacklist, kept between cycles (created if missing)")
    p.add_argument("--cycle", type=int, default=0, help="the computation cycle, for the blacklist (default 0)")


def _fail(message: str) -> int:
    print(f"gridtrace carbon: {message}", file=sys.stderr)
    return 2


def cmd_trace(args: argparse.Namespace) -> int:
    from hub.compute.outsource import OutsourcingError
    from hub.contracts.carbon.document import canonical_json, load_units, trace_document
    from hub.contracts.carbon.emission import EmissionFactorError, load_factors
    from hub.contracts.carbon.flow import CarbonFlowError, carbon_flow
    from hub.contracts.carbon.powerflow import NetworkError, load_network, solve
    from hub.contracts.carbon.tracing import trace

    outsourcer = solver = None
    try:
        factors = load_factors(args.emission_factors)
        outsourcer, solver = _outsourcer(args)
        net, name = load_network(args.pandapower_case, args.matpower, args.pandapower_json)
        t0 = time.perf_counter()
        solved = solve(net, name, dc=args.dc)
        t1 = time.perf_counter()
        factors.check_names(set(solved.snapshot.unit_names) | _out_of_service_units(net))
        flow = carbon_flow(solved.snapshot, factors, solver)
        shares = None if args.no_shares else trace(flow, load_units(flow), solver)
        t2 = time.perf_counter()
    except (EmissionFactorError, NetworkError, CarbonFlowError, OutsourcingError, ValueError) as exc:
        return _fail(str(exc))
    finally:
        _close_outsourcer(args, outsourcer)
    doc = trace_document(solved, factors, flow, shares)
    _add_outsourcing(doc, args, outsourcer)
    _write(args.out, canonical_json(doc))
    _print_totals(doc, f"{name}: {solved.snapshot.solution.upper()} power flow {t1 - t0:.3f} s, "
                       f"carbon{' and shares' if shares else ''} {t2 - t1:.3f} s; written to {args.out}")
    return 0


def cmd_model(args: argparse.Namespace) -> int:
    from hub.contracts.carbon.document import canonical_json
    from hub.contracts.carbon.emission import EmissionFactorError, load_factors
    from hub.contracts.carbon.model import ModelError, build_model, read_meter_map
    from hub.contracts.carbon.powerflow import NetworkError, load_network

    try:
        factors = load_factors(args.emission_factors)
        meters = read_meter_map(args.meters)
        net, name = load_network(args.pandapower_case, args.matpower, args.pandapower_json)
        factors.check_names(_out_of_service_units(net))
        model = build_model(net, name, factors, meters)
    except (EmissionFactorError, ModelError, NetworkError) as exc:
        return _fail(str(exc))
    _write(args.out, canonical_json(model.to_json()))
    print(f"model {model.version} of {name}: {len(meters)} meters; written to {args.out}")
    return 0


def _write(path: Path, text: str) -> None:
    from gridtrace.jsonfile import write_durably

    write_durably(path, text + "\n")


def cmd_interval(args: argparse.Namespace) -> int:
    from hub.certificates.document import parse_time
    from hub.compute.outsource import OutsourcingError
    from hub.config import load_hub_config
    from hub.contracts.carbon.compute import compute_interval
    from hub.contracts.carbon.document import canonical_json
    from hub.contracts.carbon.flow import CarbonFlowError
    from hub.contracts.carbon.interval import IntervalError
    from hub.contracts.carbon.model import ModelError, read_model
    from hub.contracts.carbon.powerflow import NetworkError
    from hub.storage.engine import StoreError
    from hub.storage.store import Store

    try:
        from_ns, to_ns = parse_time(args.from_), parse_time(args.to)
    except ValueError as exc:
        return _fail(f"--from/--to: {exc}")
    if to_ns <= from_ns:
        return _fail("--to must be after --from")
    try:
        model = read_model(args.model)
        outsourcer, solver = _outsourcer(args)  # opens no connection yet: nothing to close on failure
        store = Store(args.database or load_hub_config(args.config).database_url)
    except (ModelError, StoreError, ValueError) as exc:
        return _fail(str(exc))
    try:
        computed = compute_interval(store, model, from_ns, to_ns, solver, shares=not args.no_shares)
    except (IntervalError, NetworkError, CarbonFlowError, OutsourcingError) as exc:
        return _fail(f"interval {args.from_} .. {args.to}: {exc}")
    finally:
        store.close()
        _close_outsourcer(args, outsourcer)
    doc = computed.doc
    _add_outsourcing(doc, args, outsourcer)
    _write(args.out, canonical_json(doc))
    _print_totals(doc, f"model {model.version[:16]}, {args.from_} .. {args.to}, sealed up to block "
                       f"{doc['interval']['sealed_height']}; written to {args.out}")
    if computed.left_out:
        print(f"{computed.left_out} entries of the period are not sealed yet and were left out")
    return 0


def cmd_runner_init(args: argparse.Namespace) -> int:
    import shutil

    from protos.records import RecordError, check_id
    from protos.signing import KeyFileError, create_key_pair

    try:
        check_id("--id", args.id)
    except RecordError as exc:
        return _fail(str(exc))
    if not args.insecure and args.hub_ca is None:
        return _fail("--hub-ca is required unless --insecure (TLS is on by default)")
    config = args.dir / "carbon.toml"
    if config.exists():
        return _fail(f"{config} exists; refusing to overwrite")
    try:
        args.dir.mkdir(parents=True, exist_ok=True)
        signer = create_key_pair(args.dir, "runner")
        shutil.copyfile(args.hub_key, args.dir / "hub.pub.pem")
        if args.hub_ca:
            shutil.copyfile(args.hub_ca, args.dir / "hub-ca.pem")
    except (KeyFileError, OSError) as exc:
        return _fail(str(exc))
    tls = "insecure_plaintext = true  # development only" if args.insecure else 'tls_ca = "hub-ca.pem"'
    # The first interval is the one running now: written down, so that every later start of the
    # runner (until it has published one) begins there too.
    import time

    from hub.certificates.document import iso_ns

    interval_ns = args.interval * 1_000_000_000
    start = iso_ns(time.time_ns() // interval_ns * interval_ns)
    config.write_text(
        "# The carbon-flow contract's runner: docs/carbon.md, \"On the chain\"\n"
        f'[runner]\nid = "{args.id}"\nkey = "runner.key"\nqueue = "runner-queue.sqlite"\n\n'
        f'[uplink]\nhub = "{args.hub}"\nhub_public_key = "hub.pub.pem"\n{tls}\n\n'
        f'[carbon]\nmodel = "{args.model.resolve()}"\nhub_config = "{args.hub_config.resolve()}"\n'
        f'results = "results"\ninterval_s = {args.interval}\nsettle_s = 60\ngive_up_s = 3600\nstart = "{start}"\n',
        encoding="utf-8",
    )
    print(f"runner {args.id} (key {signer.key_id}) in {args.dir}; register it at the hub:\n"
          f"  gridtrace hub gateway add {args.id} --public-key {args.dir / 'runner.pub.pem'} --config HUB.toml")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    import asyncio

    from edge.queue import QueueError
    from gridtrace.signals import stop_on_signals
    from gridtrace.tomlconfig import ConfigError
    from hub.compute.providers import ProvidersFileError
    from hub.contracts.carbon.model import ModelError
    from hub.contracts.carbon.runner import load_runner_config, run_carbon
    from hub.storage.engine import StoreError
    from hub.storage.payload import PayloadError
    from protos.signing import KeyFileError

    async def main() -> int:
        stop = asyncio.Event()
        if not args.once:
            stop_on_signals(stop)
        return await run_carbon(cfg, stop, once=args.once)

    try:
        cfg = load_runner_config(args.config)
        return asyncio.run(main())
    except (ConfigError, ModelError, StoreError, KeyFileError, ProvidersFileError, QueueError, PayloadError,
            OSError) as exc:
        return _fail(str(exc))


def cmd_audit(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from hub.certificates.document import iso_ns, parse_time
    from hub.config import load_hub_config
    from hub.contracts.carbon.audit import audit_intervals
    from hub.contracts.carbon.model import ModelError, read_model
    from hub.storage.engine import StoreError
    from hub.storage.payload import PayloadError
    from hub.storage.store import Store

    try:
        from_ns = parse_time(args.from_) if args.from_ else -(1 << 63)
        to_ns = parse_time(args.to) if args.to else (1 << 63) - 1
        model = read_model(args.model)
        store = Store(args.database or load_hub_config(args.config).database_url)
    except (ModelError, StoreError, ValueError) as exc:
        return _fail(str(exc))
    try:
        rows = audit_intervals(store, model, args.runner, from_ns, to_ns)
    except (StoreError, PayloadError) as exc:
        return _fail(str(exc))
    finally:
        store.close()
    table = Table(title=f"carbon intervals published by {args.runner}, recomputed from the chain")
    for col in ("from", "to", "verdict", "detail"):
        table.add_column(col)
    for r in rows:
        style = "red" if r.verdict == "differs" else ""
        table.add_row(iso_ns(r.from_ns), iso_ns(r.to_ns), f"[{style}]{r.verdict}[/]" if style else r.verdict, r.detail)
    Console().print(table)
    bad = sum(r.verdict == "differs" for r in rows)
    print(f"{len(rows)} intervals, {bad} differ")
    return 1 if bad else 0


def _report_meter_intervals(args: argparse.Namespace) -> int:
    """A meter's emissions interval by interval and summed: tCO2 = tCO2/h x the interval's hours."""
    from rich.console import Console
    from rich.table import Table

    from hub.certificates.document import iso_ns
    from hub.contracts.carbon.document import TraceFileError, read_trace

    rows = []
    for path in [args.trace, *args.more]:
        try:
            doc = read_trace(path)
        except TraceFileError as exc:
            return _fail(str(exc))
        meter = (doc.get("interval") or {}).get("meters", {}).get(args.meter)
        if meter is None:
            return _fail(f"{path}: no meter {args.meter!r} in it (an interval's file for a model with that meter)")
        load = doc["loads"].get(meter["element"])
        if load is None:
            return _fail(f"{path}: meter {args.meter} measures {meter['element']}, which is not a load here")
        itv = doc["interval"]
        hours = (itv["to_ns"] - itv["from_ns"]) / 3.6e12
        rows.append((itv["from_ns"], itv["to_ns"], load, hours, doc["inputs"].get("model_version", "")[:16], path))
    rows.sort(key=lambda r: r[0])
    overlaps = [(a[5], b[5]) for a, b in itertools.pairwise(rows) if b[0] < a[1]]
    if overlaps:
        return _fail(f"intervals overlap: {overlaps[0][0]} and {overlaps[0][1]}; each interval counts once")
    table = Table()
    for col in ("from", "to", "MW", "tCO2/MWh", "tCO2", "model"):
        table.add_column(col, justify="left" if col in ("from", "to", "model") else "right")
    total_t = total_mwh = 0.0
    for from_ns, to_ns, load, hours, model, _ in rows:
        tonnes = load["emission_t_per_h"] * hours
        total_t += tonnes
        total_mwh += load["p_mw"] * hours
        table.add_row(iso_ns(from_ns), iso_ns(to_ns), f"{load['p_mw']:.6g}",
                      f"{load['intensity_t_per_mwh']:.4f}", f"{tonnes:.6g}", model)
    console = Console()
    console.print(f"meter {args.meter}: {len(rows)} intervals, {total_mwh:.6g} MWh, {total_t:.6g} tCO2"
                  f" ({total_t / total_mwh if total_mwh else 0.0:.4f} tCO2/MWh)")
    console.print(table)
    return 0


def _outsourcer(args: argparse.Namespace) -> tuple[Outsourcer | None, SystemSolver | None]:
    """The outsourcer `--providers` asks for, and the solver that uses it (None, None: solve here)."""
    from hub.compute.providers import outsourcer_from_files

    if not args.providers:
        return None, None
    out = outsourcer_from_files(args.providers, args.provider_book)
    return out, lambda a, b: out.solve(a, b, args.cycle)


def _close_outsourcer(args: argparse.Namespace, outsourcer: Outsourcer | None) -> None:
    """Close its channels and keep its book (durably), whatever happened to the computation."""
    if outsourcer is None:
        return
    outsourcer.close()
    if args.provider_book:
        from hub.compute.providers import save_book

        save_book(args.provider_book, outsourcer.book)


def _add_outsourcing(doc: dict, args: argparse.Namespace, outsourcer: Outsourcer | None) -> None:
    if outsourcer is not None:
        doc["outsourcing"] = {"cycle": args.cycle, "records": [r.to_json() for r in outsourcer.records],
                              "provider_book": outsourcer.book.to_json()}


def _out_of_service_units(net: pandapowerNet) -> set[str]:
    """Names of units that exist but carry no power now: naming them in the factors is not a typo."""
    from hub.contracts.carbon.powerflow import UNIT_TABLES

    return {f"{t}:{i}" for t in UNIT_TABLES if t in net for i in net[t].index}


def _print_totals(doc: dict, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    t, c = doc["totals"], doc["conservation"]
    console = Console()
    console.print(title)  # above the table, not its title: a long title wraps inside the table's width
    table = Table(show_header=True)
    table.add_column("quantity")
    table.add_column("value", justify="right")
    for label, value in (
        ("generation, MW", t["generation_mw"]), ("loads, MW", t["load_mw"]), ("losses, MW", t["loss_mw"]),
        ("emissions, tCO2/h", t["emission_t_per_h"]), ("  of which loads", t["load_emission_t_per_h"]),
        ("  of which losses", t["loss_emission_t_per_h"]), ("  of which other sinks", t["other_sink_emission_t_per_h"]),
        ("average intensity, tCO2/MWh", t["average_intensity_t_per_mwh"]),
        ("conservation residual, tCO2/h", c["residual_t_per_h"]),
    ):
        table.add_row(label, f"{value:.6g}")
    console.print(table)


def cmd_report(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from hub.contracts.carbon.document import TraceFileError, read_trace

    if args.more:
        if not args.meter:
            return _fail("several files are read only with --meter (a meter's emissions across intervals)")
        return _report_meter_intervals(args)
    try:
        doc = read_trace(args.trace)
    except TraceFileError as exc:
        return _fail(str(exc))
    console = Console()
    inputs = doc["inputs"]
    title = f"{inputs['network']} ({inputs['solution'].upper()}), inputs {doc['inputs_sha256'][:16]}"
    if args.meter:
        meter = (doc.get("interval") or {}).get("meters", {}).get(args.meter)
        if meter is None:
            return _fail(f"{args.trace}: no meter {args.meter!r} in it (meters are in files written by "
                         "gridtrace carbon interval, for the model's meters)")
        if meter["element"] not in doc["loads"]:
            return _fail(f"{args.trace}: meter {args.meter} measures {meter['element']}, which is not a load here")
        args.load = meter["element"]
    if args.load:
        load = doc["loads"].get(args.load)
        if load is None:
            return _fail(f"{args.trace}: no load named {args.load!r} (loads are named like "
                         f"{', '.join(sorted(doc['loads'])[:3])})")
        shares = (doc.get("shares") or {}).get(args.load)
        if shares is None:
            return _fail(f"{args.trace}: the trace has no shares (it was written with --no-shares)")
        console.print(title)
        console.print(f"{args.load} at bus {load['bus']}: {load['p_mw']:.6g} MW, {load['emission_t_per_h']:.6g} tCO2/h "
                      f"({load['intensity_t_per_mwh']:.4f} tCO2/MWh)")
        table = Table()
        for col in ("source", "bus", "MW", "tCO2/h", "share of emissions"):
            table.add_column(col, justify="left" if col == "source" else "right")
        total = load["emission_t_per_h"]
        rows = sorted(shares.items(), key=lambda kv: (-kv[1]["t_per_h"], -kv[1]["mw"], kv[0]))
        for name, share in rows[: args.top]:
            src = doc["sources"].get(name, {})
            table.add_row(name, str(src.get("bus", "")), f"{share['mw']:.6g}", f"{share['t_per_h']:.6g}",
                          f"{share['t_per_h'] / total:.1%}" if total else "-")
        if len(rows) > args.top:
            table.caption = f"{len(rows) - args.top} more sources"
        console.print(table)
        return 0
    _print_totals(doc, title)
    table = Table(title=f"largest load emissions (of {len(doc['loads'])} loads)")
    for col in ("load", "bus", "MW", "tCO2/MWh", "tCO2/h"):
        table.add_column(col, justify="left" if col == "load" else "right")
    for name, load in sorted(doc["loads"].items(), key=lambda kv: (-kv[1]["emission_t_per_h"], kv[0]))[: args.top]:
        table.add_row(name, str(load["bus"]), f"{load['p_mw']:.6g}", f"{load['intensity_t_per_mwh']:.4f}",
                      f"{load['emission_t_per_h']:.6g}")
    console.print(table)
    return 0
