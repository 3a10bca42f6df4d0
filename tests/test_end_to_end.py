"""The whole data path with real processes on loopback: simulator, hub and agent through the CLI.

Faults: the hub is down when the agent starts, the agent is SIGKILLed and restarted,
the hub is restarted while the agent runs, meters time out or answer with exceptions.
After each run, every meter's sequence numbers at the hub are compared end to end.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from edge.queue import DurableQueue
from gridtrace.demo import GATEWAY_ID, Processes, hub_status, prepare_site, wait_for_port
from hub.certificates.cli import pull_certificate
from hub.certificates.trust import load_trust
from hub.certificates.verify import verify_certificate
from hub.config import load_hub_config
from hub.storage.schema import ENTRY_GAP, ENTRY_READING
from hub.storage.store import Store
from protos.canonical import decode_gap

ROOT = Path(__file__).resolve().parent.parent


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except grpc.RpcError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def hub_rows(site) -> list:
    store = Store(load_hub_config(site.hub_dir / "hub.toml").database_url)
    rows = list(store.iter_entries())
    store.close()
    return rows


def readings_by_meter(rows) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for r in rows:
        if r.kind == ENTRY_READING:
            out.setdefault(r.meter_id, []).append(r.seq)
    return {m: sorted(s) for m, s in out.items()}


def assert_every_reading_once(site, rows=None) -> dict[str, list[int]]:
    """The agent's queue is drained, and every reading it ever numbered is at the hub exactly
    once: per meter, sequence numbers 1..last with no gap and no duplicate. Returns them."""
    queue = DurableQueue(site.gw_dir / "queue.sqlite", GATEWAY_ID)
    stats = queue.stats()
    last = {m: queue.next_seq(m) - 1 for m in site.meters}
    queue.close()
    assert stats.batches == 0 and stats.unbatched_entries == 0, "the agent left evidence unreceipted"
    seqs = readings_by_meter(hub_rows(site) if rows is None else rows)
    assert set(seqs) == set(site.meters)
    for meter, got in seqs.items():
        assert got == list(range(1, last[meter] + 1)), f"{meter}: gap or duplicate in {got}"
    return seqs


def stored_entries(site) -> int:
    return hub_status(site.hub_addr, site.ca).entries_stored


def verify_cert(site, meter: str, tmp_path: Path):
    text = pull_certificate(site.hub_addr, meter, 0, 2**62, site.ca)
    subprocess.run(
        [sys.executable, "-m", "gridtrace", "hub", "trust", "--config", str(site.hub_dir / "hub.toml"),
         "-o", str(tmp_path / "trust.json")],
        check=True, capture_output=True,
    )
    return verify_certificate(json.loads(text), load_trust(tmp_path / "trust.json"))


def test_nothing_lost_or_duplicated_through_hub_outages_and_agent_kills(tmp_path):
    site = prepare_site(tmp_path / "state", 3, batch_age_s=0.5, block_interval_s=0.5)
    procs = Processes(site.state / "logs")
    agent_cmd = ("edge", "run", "--config", str(site.gw_dir / "agent.toml"))
    hub_cmd = ("hub", "serve", "--config", str(site.hub_dir / "hub.toml"))
    try:
        sim = procs.start("sim", "sim", "modbus", "--port", str(site.sim_port), "--meters", "3")
        wait_for_port(site.sim_port, sim, "simulator")
        # The hub is not up yet: the agent must queue and keep retrying.
        procs.start("agent", *agent_cmd)
        time.sleep(2.5)
        hub = procs.start("hub", *hub_cmd)
        wait_for_port(site.hub_port, hub, "hub")
        wait_until(lambda: stored_entries(site) >= 9, 20, "first readings at the hub")

        for _ in range(2):
            procs.procs["agent"].kill()  # SIGKILL: no chance to flush anything
            procs.procs.pop("agent").wait()
            time.sleep(0.5)
            procs.start("agent", *agent_cmd)
            time.sleep(1.5)

        before = stored_entries(site)
        assert procs.stop("hub") == 0
        time.sleep(2.5)  # the agent keeps reading into its queue meanwhile
        hub = procs.start("hub", *hub_cmd)
        wait_for_port(site.hub_port, hub, "restarted hub")
        wait_until(lambda: stored_entries(site) > before + 6, 20, "catch-up after the hub restart")

        assert procs.stop("agent", timeout=30) == 0  # drains: seals and sends what it queued
        wait_until(lambda: hub_status(site.hub_addr, site.ca).batches_unsealed == 0, 20, "sealing")
        summary = verify_cert(site, site.meters[0], tmp_path)
        assert procs.stop("hub") == 0
    finally:
        procs.stop_all()

    seqs = assert_every_reading_once(site)
    assert all(len(got) >= 8 for got in seqs.values())
    assert summary.readings == len(seqs[site.meters[0]])
    assert summary.first_seq == 1 and summary.last_seq == seqs[site.meters[0]][-1]
    energy = summary.counter("energy_import")
    assert energy is not None and energy.delta > 0


def test_failing_meters_are_recorded_as_gaps_and_others_keep_reading(tmp_path):
    site = prepare_site(tmp_path / "state", 3, batch_age_s=0.5, block_interval_s=0.5)
    procs = Processes(site.state / "logs")
    try:
        sim = procs.start(
            "sim", "sim", "modbus", "--port", str(site.sim_port), "--meters", "3",
            "--fault", "2=timeout", "--fault", "3=exception:2",
        )
        wait_for_port(site.sim_port, sim, "simulator")
        hub = procs.start("hub", "hub", "serve", "--config", str(site.hub_dir / "hub.toml"))
        wait_for_port(site.hub_port, hub, "hub")
        procs.start("agent", "edge", "run", "--config", str(site.gw_dir / "agent.toml"))
        wait_until(lambda: stored_entries(site) >= 4, 20, "readings of the healthy meter")
        time.sleep(2)
        assert procs.stop("agent", timeout=30) == 0
        wait_until(lambda: hub_status(site.hub_addr, site.ca).batches_unsealed == 0, 20, "sealing")
        summary = verify_cert(site, site.meters[1], tmp_path)
    finally:
        procs.stop_all()

    rows = hub_rows(site)
    seqs = readings_by_meter(rows)
    assert list(seqs) == [site.meters[0]] and len(seqs[site.meters[0]]) >= 4
    gaps = {r.meter_id: decode_gap(r.body) for r in rows if r.kind == ENTRY_GAP}
    assert gaps[site.meters[1]].reason == "timeout"
    assert gaps[site.meters[2]].reason == "modbus-exception-2"
    assert all(g.missed_polls >= 2 and g.to_ns > g.from_ns for g in gaps.values())
    assert summary.readings == 0 and [g.reason for g in summary.gaps] == ["timeout"]
    log = (site.state / "logs" / "agent.log").read_text()
    assert site.meters[1] in log and "timeout" in log.lower()
    assert site.meters[2] in log and "exception" in log.lower()


def children_of(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def test_demo_produces_a_verifying_certificate(tmp_path):
    out = tmp_path / "demo-out"
    done = subprocess.run(
        [sys.executable, "-m", "gridtrace", "demo", "--duration", "5", "--meters", "2", "--out", str(out)],
        capture_output=True, text=True, timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "VERIFIED" in done.stdout and "MTR-0001" in done.stdout and "kWh" in done.stdout
    certs = list(out.glob("*.cert.json"))
    assert [c.name for c in certs] == ["MTR-0001.cert.json"] and (out / "trust.json").exists()
    check = subprocess.run(
        [sys.executable, "-m", "gridtrace", "cert", "verify", str(certs[0]), "--trust", str(out / "trust.json")],
        capture_output=True, text=True,
    )
    assert check.returncode == 0, check.stderr


def test_demo_stops_everything_it_started_on_ctrl_c(tmp_path):
    out = tmp_path / "demo-out"
    # Output to a file, not a pipe nobody reads while waiting: a full pipe would block the demo.
    log = tmp_path / "demo.log"
    with open(log, "wb") as sink:
        demo = subprocess.Popen(
            [sys.executable, "-m", "gridtrace", "demo", "--duration", "60", "--out", str(out)],
            stdout=sink, stderr=subprocess.STDOUT,
            # Ctrl-C as at a terminal: a suite started in the background (`make test &`) runs
            # with SIGINT ignored, which children inherit, and Python then never raises
            # KeyboardInterrupt.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
    try:
        wait_until(lambda: len(children_of(demo.pid)) >= 3, 60, "the demo's three processes")
        children = children_of(demo.pid)
        time.sleep(1)
        demo.send_signal(signal.SIGINT)
        try:
            demo.wait(90)
        except subprocess.TimeoutExpired:
            logs = {p.name: p.read_text(errors="replace")[-2000:] for p in (out / "state" / "logs").glob("*.log")}
            pytest.fail(f"the demo did not stop within 90 s of Ctrl-C\ndemo: {log.read_text(errors='replace')[-3000:]}\n{logs}")
    finally:
        if demo.poll() is None:
            demo.kill()
    assert demo.returncode == 130, log.read_text(errors="replace")[-3000:]
    time.sleep(0.5)
    alive = [pid for pid in children if Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text()]
    for pid in alive:
        os.kill(pid, signal.SIGKILL)
    assert alive == [], "the demo left processes running"
