"""End-to-end ingest: readings/s a real hub verifies, durably stores, receipts and seals,
against a baseline that only decodes and stores the same rows.

For each backend (SQLite; PostgreSQL with --backend postgresql|both, on a throwaway
server on loopback started by tests/pgserver.py's running_postgres: initdb + pg_ctl, as
the postgres user when run as root; fsync and synchronous_commit on, the defaults):

1. `gridtrace hub init --database URL` (TLS on, as in production), the fleets' gateway keys
   registered with `gridtrace hub gateway add`, then `gridtrace hub serve` and the
   baseline server (bench/ingest_baseline.py) started as processes of their own;
2. **full rate**, --runs times, hub and baseline alternated: `gridtrace sim fleet`
   (separate processes, batches prebuilt before the clock starts) sends as fast as
   the server answers (or at --rate). Figures: receipted readings/s over the window
   (first send to last receipt) and CPU per reading of the server's process tree
   (plus PostgreSQL's) from /proc, from the fleet's start until every receipted
   batch is sealed. After each run the database must hold exactly what was receipted
   (readings, batches, each gateway's head) and, for the hub, all of it sealed;
3. **half rate**: one hub run paced at half the median full-rate figure, for the
   receipt latency p50/p99 (send of a batch to its checked receipt);
4. the **baseline** receives the same kind of fleet on the same TLS, decodes each
   batch with the hub's decode and inserts the same rows through the hub's Store
   into a fresh database of the same kind, without signatures, Merkle roots,
   chaining, blocks or signed receipts (plain acks after the commit).

Prints the medians of both rates, their ratio, CPU/reading and p50/p99; with --json
the last line is one JSON object. --profile DIR records the hub with py-spy during
one more full-rate run (the figures above come from runs without the profiler) and
prints the top leaf frames. The machine's other load counts: say how busy it was.

    .venv/bin/python bench/ingest.py --gateways 8 --seconds 10 --runs 3 --max-rate 120000 --json
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from procstats import sample_tree  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from pgserver import PostgresServer, PostgresStartError, find_pg_bindir, running_postgres  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
GRIDTRACE = str(BIN / "gridtrace")


class BenchError(Exception):
    """The bench could not measure; the message says which step failed and why."""


class BackendUnavailable(BenchError):
    """This backend cannot run here (yet); reported, never replaced by made-up figures."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd: list[str], what: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess:  # noqa: ANN003
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if p.returncode != 0:
        raise BenchError(f"{what} failed (exit {p.returncode}): {(p.stderr or p.stdout).strip()[-2000:]}")
    return p


# -- PostgreSQL on loopback: the tests' throwaway server (tests/pgserver.py) ---------------


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    bindir = find_pg_bindir()
    if bindir is None:
        raise BackendUnavailable("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    try:
        with running_postgres(bindir) as server:
            yield server
    except PostgresStartError as exc:
        raise BenchError(str(exc)) from exc


def postmaster_pid(server: PostgresServer) -> int:
    """The server's first process: its tree holds the backends serving the hub and the
    baseline, and exited backends' CPU is in its children's times."""
    return int((server.data_dir / "postmaster.pid").read_text().split()[0])


# -- the hub and the baseline as processes ------------------------------------------------


class Server:
    """A process this bench started; stopped by its pid with SIGTERM, then SIGKILL."""

    def __init__(self, cmd: list[str], log: Path, what: str) -> None:
        self.what = what
        self.log = log
        self._out = log.open("w")
        self.proc = subprocess.Popen(cmd, stdout=self._out, stderr=subprocess.STDOUT, cwd=ROOT)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_listening(self, port: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"{self.what} exited with {self.proc.returncode}: {self.tail()}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.1)
        raise BenchError(f"{self.what} did not listen on port {port} within {timeout:.0f} s: {self.tail()}")

    def tail(self) -> str:
        self._out.flush()
        return self.log.read_text(errors="replace")[-2000:].strip()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._out.close()


def cpu_of(pids: list[int]) -> float:
    return sum(sample_tree(p).cpu_s for p in pids)


def register(hub_toml: Path, keys_dir: Path, ids: tuple[str, ...]) -> None:
    from gridtrace.cli import main as gridtrace_main

    for gw in ids:
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                code = gridtrace_main(["hub", "gateway", "add", gw, "--public-key", str(keys_dir / f"{gw}.pub.pem"),
                                       "--config", str(hub_toml)])
        except ModuleNotFoundError as exc:
            raise BackendUnavailable(f"the hub cannot use this database yet: `gridtrace hub gateway add` needs {exc.name!r} ({exc})") from exc
        except Exception as exc:  # noqa: BLE001 - e.g. a database driver error, reported as what it is
            raise BackendUnavailable(f"`gridtrace hub gateway add` failed on this database: "
                                     f"{type(exc).__name__}: {exc}") from exc
        if code != 0:
            raise BenchError(f"gridtrace hub gateway add {gw} exited with {code}")


# -- one fleet run -------------------------------------------------------------------------


@dataclass
class FleetRun:
    figures: dict
    cpu_s: float
    seal_wait_s: float | None


def fleet(args: argparse.Namespace, port: int, keys_dir: Path, prefix: str, rate: float, measured: list[int],
          tls: Path, hub_key: Path | None, log: Path, check=None) -> FleetRun:  # noqa: ANN001
    cmd = [GRIDTRACE, "sim", "fleet", "--hub", f"127.0.0.1:{port}", "--ca", str(tls / "ca.pem"),
           "--keys-dir", str(keys_dir), "--gateway-prefix", prefix, "--gateways", str(args.gateways),
           "--meters", str(args.meters), "--batch-size", str(args.batch_size), "--seconds", str(args.seconds),
           "--processes", str(args.processes), "--rate", f"{rate:.0f}", "--prebuild", "--json"]
    cmd += ["--hub-key", str(hub_key)] if hub_key else ["--unsigned-acks"]
    if not rate:
        cmd += ["--max-readings", str(int(args.max_rate * args.seconds))]
    cpu0 = cpu_of(measured)
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.seconds * 10 + 300, cwd=ROOT)
    log.write_text(p.stdout + p.stderr)
    lines = p.stdout.strip().splitlines()
    if p.returncode != 0 or not lines or not lines[-1].startswith("{"):
        raise BenchError(f"sim fleet ({prefix}) exited with {p.returncode}: {p.stderr.strip()[-2000:]}")
    figures = json.loads(lines[-1])
    seal_wait = check(figures) if check else None
    return FleetRun(figures, cpu_of(measured) - cpu0, seal_wait)


def stored_check(url: str, before: tuple[int, int, int], sealed: bool, timeout: float = 60):  # noqa: ANN201
    """A check for fleet(): the database holds exactly what was receipted (and all of it is
    sealed, for the hub). Returns seconds waited after the fleet ended until it was."""
    from hub.storage.store import Store

    def check(figures: dict) -> float:
        store = Store(url)
        try:
            t0 = time.monotonic()
            while True:
                n_batches, unsealed, n_entries = store.counts()
                done = n_batches - before[0] >= figures["batches_receipted"] and (not sealed or unsealed == 0)
                if done or time.monotonic() - t0 > timeout:
                    break
                time.sleep(0.1)
            waited = time.monotonic() - t0
            problems = []
            if n_entries - before[2] != figures["readings_receipted"]:
                problems.append(f"{n_entries - before[2]} readings stored, {figures['readings_receipted']} receipted")
            if n_batches - before[0] != figures["batches_receipted"]:
                problems.append(f"{n_batches - before[0]} batches stored, {figures['batches_receipted']} receipted")
            if sealed and unsealed:
                problems.append(f"{unsealed} batches still unsealed {timeout:.0f} s after the run")
            heads = store.gateway_heads()
            wrong = [gw for gw, seq in figures["last_seq"].items() if seq and heads.get(gw, (0,))[0] != seq]
            if wrong:
                problems.append(f"gateways whose stored head is not their last receipted batch: {wrong[:5]}")
            if problems:
                raise BenchError(f"database {url} does not match the receipts: {'; '.join(problems)}")
            return waited
        finally:
            store.close()

    return check


def counts(url: str) -> tuple[int, int, int]:
    from hub.storage.store import Store

    store = Store(url)
    try:
        return store.counts()
    finally:
        store.close()


# -- py-spy --------------------------------------------------------------------------------

IDLE_FRAMES = ("_worker (concurrent/futures/thread.py", "select (selectors.py", "wait (threading.py",
               "Thread.run (threading.py", "_bootstrap_inner (threading.py")


def top_frames(raw: Path, n: int = 15) -> list[tuple[str, float]]:
    """Leaf frames by share of busy samples, from py-spy's raw (collapsed) output."""
    leaves: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        leaf = stack.rsplit(";", 1)[-1]
        if any(idle in leaf for idle in IDLE_FRAMES):
            continue
        leaves[leaf] += int(count)
        total += int(count)
    return [(leaf, 100 * c / total) for leaf, c in leaves.most_common(n)] if total else []


def py_spy() -> str:
    path = shutil.which("py-spy", path=str(BIN)) or shutil.which("py-spy")
    if not path:
        raise BenchError("--profile needs py-spy: .venv/bin/pip install py-spy")
    return path


# -- one backend ---------------------------------------------------------------------------


def measure_backend(args: argparse.Namespace, backend: str, work: Path) -> dict:
    with contextlib.ExitStack() as stack:
        hub_dir, keys = work / "hub", work / "keys"
        port, base_port = free_port(), free_port()
        extra_pids: list[int] = []
        if backend == "postgresql":
            pg = stack.enter_context(postgres_server())
            hub_url, base_url = pg.url(pg.new_database()), pg.url(pg.new_database())
            extra_pids = [postmaster_pid(pg)]
        else:
            hub_url = f"sqlite:///{(hub_dir / 'hub.sqlite').resolve()}"
            base_url = f"sqlite:///{(work / 'baseline.sqlite').resolve()}"
        # `hub init --database` creates the schema (at the current revision) and the chain in it.
        run([GRIDTRACE, "hub", "init", "--dir", str(hub_dir), "--chain-id", f"bench-{backend}",
             "--listen", f"127.0.0.1:{port}", "--database", hub_url,
             # not the default port: another hub on this machine may hold it
             "--metrics-listen", f"127.0.0.1:{free_port()}"], "gridtrace hub init")
        hub_toml, tls, hub_key = hub_dir / "hub.toml", hub_dir / "tls", hub_dir / "hub.pub.pem"

        from firmware_sim.loadgen import ensure_keys, gateway_ids

        # Fresh gateway ids per run: a gateway's chain starts at batch 1 in each.
        rounds = [f"r{i + 1}" for i in range(args.runs)]
        for prefix in [*rounds, "half", *(["prof"] if args.profile else [])]:
            ids = gateway_ids(prefix, args.gateways)
            ensure_keys(keys, ids)
            register(hub_toml, keys, ids)

        # Both servers stay up; an idle one costs nothing measurable, and alternating them
        # run by run spreads the machine's other load over both figures.
        hub = Server([GRIDTRACE, "--log-level", "WARNING", "hub", "serve", "--config", str(hub_toml)],
                     work / "hub.log", "gridtrace hub serve")
        stack.callback(hub.stop)
        base = Server([sys.executable, str(ROOT / "bench" / "ingest_baseline.py"), "--listen",
                       f"127.0.0.1:{base_port}", "--database", base_url, "--tls-cert", str(tls / "hub.pem"),
                       "--tls-key", str(tls / "hub.key")], work / "baseline.log", "baseline server")
        stack.callback(base.stop)
        hub.wait_listening(port)
        base.wait_listening(base_port)
        print(f"[{backend}] hub on 127.0.0.1:{port} (pid {hub.pid}), baseline on 127.0.0.1:{base_port} "
              f"(pid {base.pid})", flush=True)

        def hub_run(prefix: str, rate: float, profiled: bool = False) -> FleetRun:
            check = None if profiled else stored_check(hub_url, counts(hub_url), sealed=True)
            return fleet(args, port, keys, prefix, rate, [hub.pid, *extra_pids], tls, hub_key,
                         work / f"fleet-hub-{prefix}.log", check)

        def base_run(prefix: str) -> FleetRun:
            return fleet(args, base_port, keys, prefix, args.rate, [base.pid, *extra_pids], tls, None,
                         work / f"fleet-baseline-{prefix}.log", stored_check(base_url, counts(base_url), sealed=False))

        pairs: list[tuple[FleetRun, FleetRun]] = []
        for i, prefix in enumerate(rounds):
            if i % 2 == 0:
                h = hub_run(prefix, args.rate)
                b = base_run(prefix)
            else:
                b = base_run(prefix)
                h = hub_run(prefix, args.rate)
            pairs.append((h, b))
            print(f"[{backend}] run {i + 1}: hub {h.figures['readings_per_s']:,} readings/s, "
                  f"baseline {b.figures['readings_per_s']:,} readings/s", flush=True)
        hub_rate = statistics.median(h.figures["readings_per_s"] for h, _ in pairs)
        base_rate = statistics.median(b.figures["readings_per_s"] for _, b in pairs)
        if not hub_rate:
            raise BenchError(f"[{backend}] the hub receipted nothing: see {work}/fleet-hub-*.log")
        half_rate = (args.rate or hub_rate) / 2
        print(f"[{backend}] half-rate run at {half_rate:,.0f} readings/s", flush=True)
        half = hub_run("half", half_rate)

        profile = None
        if args.profile:
            args.profile.mkdir(parents=True, exist_ok=True)
            raw = args.profile / f"hub-{backend}.txt"
            spy = subprocess.Popen([py_spy(), "record", "--pid", str(hub.pid), "--subprocesses", "--format", "raw",
                                    "--rate", "100", "-o", str(raw)], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True)
            try:
                print(f"[{backend}] profiled full-rate run (py-spy -> {raw})", flush=True)
                hub_run("prof", args.rate, profiled=True)
            finally:
                spy.send_signal(signal.SIGINT)
                _, err = spy.communicate(timeout=60)
            if not raw.exists():
                raise BenchError(f"py-spy wrote no profile: {err.strip()[-1000:]}")
            profile = {"file": str(raw), "top": [[leaf, round(pct, 1)] for leaf, pct in top_frames(raw)]}

    def per_reading(r: FleetRun) -> float:
        return 1e6 * r.cpu_s / r.figures["readings_receipted"]

    h_mid = min(pairs, key=lambda p: abs(p[0].figures["readings_per_s"] - hub_rate))[0]
    return {
        "backend": backend,
        "available": True,
        "readings_per_s": round(hub_rate),
        "baseline_readings_per_s": round(base_rate),
        "ratio": round(hub_rate / base_rate, 3) if base_rate else None,
        "cpu_us_per_reading": round(statistics.median(per_reading(h) for h, _ in pairs), 2),
        "baseline_cpu_us_per_reading": round(statistics.median(per_reading(b) for _, b in pairs), 2),
        "fleet_cpu_us_per_reading": statistics.median(h.figures["fleet_cpu_us_per_reading"] for h, _ in pairs),
        "receipt_p50_ms": half.figures["receipt_p50_ms"],
        "receipt_p99_ms": half.figures["receipt_p99_ms"],
        "half_rate": round(half_rate),
        "half_readings_per_s": half.figures["readings_per_s"],
        "full_receipt_p50_ms": h_mid.figures["receipt_p50_ms"],
        "full_receipt_p99_ms": h_mid.figures["receipt_p99_ms"],
        "runs": [[h.figures["readings_per_s"], b.figures["readings_per_s"]] for h, b in pairs],
        "readings_receipted": h_mid.figures["readings_receipted"],
        "window_s": h_mid.figures["window_s"],
        "seal_wait_s": round(max(h.seal_wait_s or 0 for h, _ in pairs), 2),
        "stored_and_sealed": True,
        "profile": profile,
    }


def report(r: dict) -> None:
    if not r["available"]:
        print(f"[{r['backend']}] UNAVAILABLE: {r['reason']}")
        return
    print(f"[{r['backend']}] hub:      {r['readings_per_s']:>9,} readings/s verified, stored, receipted and sealed "
          f"(median of {len(r['runs'])}; all sealed at most {r['seal_wait_s']:.1f} s after the last receipt), "
          f"{r['cpu_us_per_reading']:.1f} us CPU/reading")
    print(f"[{r['backend']}] baseline: {r['baseline_readings_per_s']:>9,} readings/s decoded, stored and acked, "
          f"{r['baseline_cpu_us_per_reading']:.1f} us CPU/reading")
    print(f"[{r['backend']}] load generator during the hub's runs: {r['fleet_cpu_us_per_reading']:.1f} us CPU/reading "
          f"(batches prebuilt)")
    print(f"[{r['backend']}] ratio hub/baseline {r['ratio']}; receipt latency at {r['half_rate']:,} readings/s: "
          f"p50 {r['receipt_p50_ms']} ms, p99 {r['receipt_p99_ms']} ms (at full rate: p50 "
          f"{r['full_receipt_p50_ms']} ms, p99 {r['full_receipt_p99_ms']} ms)")
    if r.get("profile"):
        print(f"[{r['backend']}] py-spy top leaf frames of the hub (busy samples, {r['profile']['file']}):")
        for leaf, pct in r["profile"]["top"]:
            print(f"    {pct:5.1f} %  {leaf}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="sqlite")
    ap.add_argument("--gateways", type=int, default=8)
    ap.add_argument("--meters", type=int, default=32, help="meters per gateway")
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--seconds", type=float, default=10.0, help="sending time of each fleet run")
    ap.add_argument("--processes", type=int, default=2, help="load processes of each fleet")
    ap.add_argument("--runs", type=int, default=3,
                    help="full-rate runs of hub and baseline, alternated; medians are reported")
    ap.add_argument("--rate", type=float, default=0.0,
                    help="full-run rate in readings/s; 0 (default) = as fast as the hub receipts")
    ap.add_argument("--max-rate", type=float, default=120_000,
                    help="with --rate 0, build at most max-rate x seconds readings before the clock starts")
    ap.add_argument("--profile", type=Path, metavar="DIR", help="record the hub with py-spy into DIR")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, databases)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.processes > args.gateways:
        ap.error("--processes must not exceed --gateways")
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    results, failed = [], False
    print(f"{args.gateways} gateways x {args.meters} SDM630 meters, batches of {args.batch_size}, "
          f"{args.processes} load processes, {args.seconds:g} s per run; machine: {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    for backend in backends:
        work = Path(tempfile.mkdtemp(prefix=f"gridtrace-bench-{backend}."))
        try:
            results.append(measure_backend(args, backend, work))
        except BackendUnavailable as exc:
            results.append({"backend": backend, "available": False, "reason": str(exc), "readings_per_s": None,
                            "baseline_readings_per_s": None, "ratio": None})
            failed = True
        except BenchError as exc:
            print(f"bench/ingest.py [{backend}]: {exc} (work directory {work} kept)", file=sys.stderr)
            args.keep = True
            return 1
        finally:
            if args.keep:
                print(f"[{backend}] work directory kept: {work}")
            else:
                shutil.rmtree(work, ignore_errors=True)
        report(results[-1])
    if args.json:
        out = dict(results[0])
        out.update(backends=results, gateways=args.gateways, meters=args.meters, batch_size=args.batch_size,
                   seconds=args.seconds, processes=args.processes, load_average=round(os.getloadavg()[0], 2))
        print(json.dumps(out))
    return 3 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
