"""`gridtrace demo`: the whole data path on loopback, ending in a verified certificate.

Starts a simulated Modbus TCP meter server, a hub on its embedded SQLite
default (with TLS), and an edge agent polling the meters, each as its own
process through the real CLI. After `--duration` seconds it stops the agent
(which drains its queue), waits for the hub to seal everything, runs the
carbon-flow contract over the run's whole 10 s intervals (its runner publishes
each meter's carbon to the chain), pulls a measurement certificate for one
meter, verifies it offline against the trust file, and prints the summary:
the meter's readings and its carbon. Every process it started is stopped when it ends,
also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
from rich.console import Console

from gridtrace.clihelp import add_command

CHAIN_ID = "demo-substation"
GATEWAY_ID = "gw-demo"


def add_commands(sub: argparse._SubParsersAction) -> None:
    demo = add_command(
        sub, "demo", "run meter simulator, hub and agent on loopback; pull and verify a certificate",
        "gridtrace demo --duration 20 --meters 4 --out ./demo-out",
    )
    demo.add_argument("--duration", type=float, default=20.0, help="seconds of metering (default 20)")
    demo.add_argument("--meters", type=int, default=4, help="simulated meters (default 4)")
    demo.add_argument("--out", type=Path, default=Path("demo-out"), help="output folder (default ./demo-out)")
    demo.set_defaults(func=cmd_demo)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} during start-up")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not open port {port} within {timeout:.0f} s")


class Processes:
    """Child processes, each in its own session so the demo decides the stopping order."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, *args: str) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            [sys.executable, "-m", "gridtrace", *args],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        log.close()
        self.procs[name] = proc
        return proc

    def stop(self, name: str, timeout: float = 20.0) -> int | None:
        proc = self.procs.pop(name, None)
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def stop_all(self) -> None:
        for name in list(reversed(self.procs)):
            self.stop(name, timeout=10.0)


def run_cli(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "gridtrace", *args], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"gridtrace {' '.join(args)} failed:\n{done.stderr or done.stdout}")
    return done.stdout


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM ends the demo like Ctrl-C does, so the cleanup below always runs."""

    def handler(signum, frame):  # noqa: ANN001
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def hub_status(hub: str, ca: Path):
    from protos import ingest_pb2, ingest_pb2_grpc

    with grpc.secure_channel(hub, grpc.ssl_channel_credentials(ca.read_bytes())) as ch:
        return ingest_pb2_grpc.QueryStub(ch).GetStatus(ingest_pb2.StatusRequest(), timeout=5)


@dataclass(frozen=True)
class Site:
    """A loopback substation: hub and gateway directories, ports and meter ids."""

    state: Path
    hub_dir: Path
    gw_dir: Path
    sim_port: int
    hub_port: int
    meters: tuple[str, ...]

    @property
    def hub_addr(self) -> str:
        return f"127.0.0.1:{self.hub_port}"

    @property
    def ca(self) -> Path:
        return self.hub_dir / "tls" / "ca.pem"


def prepare_site(state: Path, n_meters: int, batch_age_s: float = 1.0, block_interval_s: float = 1.0) -> Site:
    """Initialise a hub and a gateway through the real CLI, register the gateway."""
    (state / "logs").mkdir(parents=True, exist_ok=True)
    site = Site(
        state, state / "hub", state / GATEWAY_ID, free_port(), free_port(),
        tuple(f"MTR-{i:04d}" for i in range(1, n_meters + 1)),
    )
    run_cli("hub", "init", "--dir", str(site.hub_dir), "--chain-id", CHAIN_ID, "--listen", site.hub_addr,
            "--metrics-listen", "")
    meter_args = [
        x for i, m in enumerate(site.meters, 1)
        for x in ("--meter", f"{m}=modbus-tcp://127.0.0.1:{site.sim_port}?unit={i}")
    ]
    run_cli(
        "edge", "init", "--dir", str(site.gw_dir), "--gateway-id", GATEWAY_ID, "--hub", site.hub_addr,
        "--hub-ca", str(site.ca), "--hub-key", str(site.hub_dir / "hub.pub.pem"), *meter_args,
    )
    # Shorter batches and blocks than production, so a short run shows several of each.
    agent_toml = site.gw_dir / "agent.toml"
    agent_toml.write_text(agent_toml.read_text().replace("max_age_s = 2.0", f"max_age_s = {batch_age_s}"))
    hub_toml = site.hub_dir / "hub.toml"
    hub_toml.write_text(hub_toml.read_text().replace("block_interval_s = 2.0", f"block_interval_s = {block_interval_s}"))
    run_cli("hub", "gateway", "add", GATEWAY_ID, "--public-key", str(site.gw_dir / "gateway.pub.pem"),
            "--config", str(hub_toml))
    return site


CARBON_RUNNER = "carbon.demo"
CARBON_INTERVAL_S = 10  # production: 900; short here so that a 20 s run shows two


def publish_carbon(site: Site, started_ns: int, ended_ns: int) -> str:
    """The carbon contract over the run: the meters as low-voltage loads of pandapower's
    example_multivoltage network, every whole interval of the run computed from the sealed
    readings and published to the chain by a runner registered at the hub. Returns its id."""
    state = site.state
    (state / "factors.json").write_text(json.dumps({"ext_grid:0": 0.58, "gen:0": 0.82}))
    # Low-voltage loads fed partly by the coal unit and the grid, partly by PV: a mixed intensity.
    loads = (14, 16, 20, 19, 15, 17, 18, 13, 7, 8, 9)
    (state / "meters.json").write_text(json.dumps({m: f"load:{n}" for m, n in zip(site.meters, loads)}))
    model, runner, hub_toml = state / "model.json", state / "carbon", site.hub_dir / "hub.toml"
    run_cli("carbon", "model", "--pandapower-case", "example_multivoltage", "--emission-factors",
            str(state / "factors.json"), "--meters", str(state / "meters.json"), "--out", str(model))
    run_cli("carbon", "runner-init", str(runner), "--id", CARBON_RUNNER, "--hub", site.hub_addr, "--hub-key",
            str(site.hub_dir / "hub.pub.pem"), "--hub-ca", str(site.ca), "--model", str(model),
            "--hub-config", str(hub_toml), "--interval", str(CARBON_INTERVAL_S))
    interval = CARBON_INTERVAL_S * 10**9
    first, end = -(-started_ns // interval) * interval, ended_ns // interval * interval
    conf = runner / "carbon.toml"
    # Every reading is sealed by now: no settling time, and only the run's whole intervals.
    text = re.sub(r"(?m)^start = .*$", f"start = {json.dumps(str(first))}", conf.read_text())
    conf.write_text(text.replace("settle_s = 60", "settle_s = 0") + f"end = {json.dumps(str(max(end, first + interval)))}\n")
    run_cli("hub", "gateway", "add", CARBON_RUNNER, "--public-key", str(runner / "runner.pub.pem"),
            "--config", str(hub_toml))
    run_cli("carbon", "run", "--config", str(conf), "--once")
    return CARBON_RUNNER


def cmd_demo(args: argparse.Namespace) -> int:
    from hub.certificates.cli import pull_certificate
    from hub.certificates.summary import print_summary
    from hub.certificates.trust import load_trust
    from hub.certificates.verify import verify_certificate

    console = Console()
    if args.meters < 1 or args.duration <= 0:
        console.print("[red]--meters must be at least 1 and --duration positive[/]")
        return 2
    out: Path = args.out
    state = out / "state"
    if state.exists():
        shutil.rmtree(state)  # our own previous run; keys and databases of a demo are throwaway
    site = prepare_site(state, args.meters)
    hub_dir, gw_dir, hub_addr, meters = site.hub_dir, site.gw_dir, site.hub_addr, site.meters
    sim_port, hub_port = site.sim_port, site.hub_port

    procs = Processes(state / "logs")
    ca = site.ca
    try:
        with sigterm_as_interrupt():
            console.print(f"[bold]gridtrace demo[/]: {args.meters} simulated SDM630 meters, hub {CHAIN_ID}, gateway {GATEWAY_ID}")
            sim = procs.start("sim", "sim", "modbus", "--port", str(sim_port), "--meters", str(args.meters))
            wait_for_port(sim_port, sim, "meter simulator")
            hub = procs.start("hub", "hub", "serve", "--config", str(hub_dir / "hub.toml"))
            wait_for_port(hub_port, hub, "hub")
            started_ns = time.time_ns()
            agent = procs.start("agent", "edge", "run", "--config", str(gw_dir / "agent.toml"))

            with console.status("metering") as status:
                deadline = time.monotonic() + args.duration
                while time.monotonic() < deadline:
                    for name, p in (("simulator", sim), ("hub", hub), ("agent", agent)):
                        if p.poll() is not None:
                            raise RuntimeError(f"the {name} exited early (code {p.returncode}); see {state / 'logs'}")
                    with contextlib.suppress(grpc.RpcError):
                        st = hub_status(hub_addr, ca)
                        status.update(
                            f"metering: {deadline - time.monotonic():4.1f} s left; hub height {st.height}, "
                            f"{st.entries_stored} readings stored, {st.batches_unsealed} batches awaiting a block"
                        )
                    time.sleep(0.5)

                status.update("stopping the agent: sealing and sending what it queued")
                code = procs.stop("agent", timeout=30)
                if code not in (0, None):
                    raise RuntimeError(f"the agent stopped with code {code}; see {state / 'logs' / 'agent.log'}")
                ended_ns = time.time_ns()
                status.update("waiting for the hub to seal every stored batch")
                for _ in range(100):
                    st = hub_status(hub_addr, ca)
                    if st.batches_unsealed == 0:
                        break
                    time.sleep(0.2)

                status.update("carbon: computing each 10 s interval from the sealed readings and publishing it")
                runner = publish_carbon(site, started_ns, ended_ns)
                for _ in range(100):
                    st = hub_status(hub_addr, ca)
                    if st.batches_unsealed == 0:
                        break
                    time.sleep(0.2)

            meter = meters[0]
            cert_path = out / f"{meter}.cert.json"
            # The period in whole seconds around the run, as a clerk would ask for it.
            second = 10**9
            text = pull_certificate(hub_addr, meter, started_ns // second * second, (ended_ns // second + 2) * second, ca)
            cert_path.write_text(text + "\n", encoding="utf-8")
            trust_path = out / "trust.json"
            run_cli("hub", "trust", "--config", str(hub_dir / "hub.toml"), "-o", str(trust_path),
                    "--contract-runner", f"carbon-flow/1={runner}")
    except KeyboardInterrupt:
        console.print("[yellow]interrupted; stopping everything the demo started[/]")
        return 130
    except (RuntimeError, grpc.RpcError) as exc:
        detail = f"{exc.code().name}: {exc.details()}" if isinstance(exc, grpc.RpcError) else str(exc)
        console.print(f"[red]demo failed:[/] {detail}\nlogs: {state / 'logs'}")
        return 1
    finally:
        procs.stop_all()

    # Offline: only the certificate file and the trust file from here on.
    summary = verify_certificate(json.loads(cert_path.read_text()), load_trust(trust_path))
    print_summary(summary, cert_path, console)
    console.print(
        f"\nfiles: {cert_path} and {trust_path}\n"
        f"check it yourself: gridtrace cert verify {cert_path} --trust {trust_path}\n"
        f"(logs and the demo's throwaway keys and databases: {state}{os.sep})"
    )
    return 0
