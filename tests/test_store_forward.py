"""Store and forward end to end: the agent killed again and again while it reads and streams,
the hub killed mid-stream, a queue that reaches its disk limit (the gap is stored by the hub
and shown by a verified certificate), and the catch-up after a long outage while live
readings keep coming. Each run ends by comparing every meter's sequence numbers at the hub."""

from __future__ import annotations

import asyncio
import json
import random
import re
import signal
import threading
import time
from pathlib import Path

import pytest
from hubharness import RunningHub, init_hub, register_gateway
from test_end_to_end import assert_every_reading_once, hub_rows, readings_by_meter, wait_until

from edge.agent import Sealer
from edge.config import (
    ConfigError,
    UplinkConfig,
    load_agent_config,
    render_agent_config,
)
from edge.queue import DurableQueue
from edge.queue_status import read_status
from edge.uplink import Uplink
from gridtrace.cli import main as gridtrace_main
from gridtrace.demo import (
    Processes,
    hub_status,
    prepare_site,
    wait_for_port,
)
from hub.certificates.cli import pull_certificate
from hub.certificates.trust import load_trust
from hub.certificates.verify import verify_certificate
from hub.storage.schema import ENTRY_GAP, ENTRY_READING
from hub.storage.store import Store
from protos.canonical import decode_gap
from protos.records import ClockStatus, Gap, Quality, Quantity, Reading
from protos.signing import Signer

S = 10**9


# -- the agent killed repeatedly, the hub once -------------------------------------------------


def test_repeated_sigkill_of_agent_and_hub_loses_and_repeats_nothing(tmp_path):
    rng = random.Random(20261122)
    site = prepare_site(tmp_path / "state", 4, batch_age_s=0.3, block_interval_s=0.3)
    agent_toml = site.gw_dir / "agent.toml"
    text = re.sub(r"^interval_s = .*$", "interval_s = 0.25", agent_toml.read_text(), flags=re.MULTILINE)
    agent_toml.write_text(text.replace("reconnect_max_s = 30.0", "reconnect_max_s = 1.0"))
    procs = Processes(site.state / "logs")
    agent_cmd = ("edge", "run", "--config", str(agent_toml))
    hub_cmd = ("hub", "serve", "--config", str(site.hub_dir / "hub.toml"))
    kills = 0
    try:
        sim = procs.start("sim", "sim", "modbus", "--port", str(site.sim_port), "--meters", "4")
        wait_for_port(site.sim_port, sim, "simulator")
        hub = procs.start("hub", *hub_cmd)
        wait_for_port(site.hub_port, hub, "hub")
        for round_ in range(6):
            procs.start("agent", *agent_cmd)
            if round_ == 0:
                wait_until(lambda: hub_status(site.hub_addr, site.ca).entries_stored >= 8, 20, "first readings")
            time.sleep(rng.uniform(0.7, 2.0))  # somewhere in start-up, polling, sealing or streaming
            if round_ == 2:
                procs.procs["hub"].send_signal(signal.SIGKILL)  # the hub dies mid-stream
                procs.procs.pop("hub").wait()
                time.sleep(rng.uniform(0.5, 1.5))
                hub = procs.start("hub", *hub_cmd)
                wait_for_port(site.hub_port, hub, "restarted hub")
                time.sleep(rng.uniform(0.3, 1.5))
            procs.procs["agent"].send_signal(signal.SIGKILL)
            assert procs.procs.pop("agent").wait() == -signal.SIGKILL
            kills += 1
        procs.start("agent", *agent_cmd)
        before = hub_status(site.hub_addr, site.ca).entries_stored
        wait_until(lambda: hub_status(site.hub_addr, site.ca).entries_stored > before + 8, 30, "catch-up")
        assert procs.stop("agent", timeout=30) == 0  # SIGTERM: drains what it queued
        wait_until(lambda: hub_status(site.hub_addr, site.ca).batches_unsealed == 0, 20, "sealing")
        assert procs.stop("hub") == 0
    finally:
        procs.stop_all()
    assert kills == 6

    rows = hub_rows(site)
    seqs = assert_every_reading_once(site, rows)
    assert all(len(got) >= 20 for got in seqs.values())
    for r in rows:  # a missed poll may only show up as an explicit gap entry
        assert r.kind in (ENTRY_READING, ENTRY_GAP)
        if r.kind == ENTRY_GAP:
            gap = decode_gap(r.body)
            assert gap.from_ns <= gap.to_ns and gap.missed_polls >= 1 and gap.reason


# -- [queue] max_mb ---------------------------------------------------------------------------


def test_queue_limit_setting(tmp_path):
    path = tmp_path / "agent.toml"
    text = render_agent_config("gw1", "127.0.0.1:7700", [("MTR-1", "modbus-tcp://127.0.0.1:5020?unit=1")])
    path.write_text(text)
    assert load_agent_config(path).queue_max_bytes == 1024 * 2**20  # what `edge init` writes
    path.write_text(text.replace("max_mb = 1024", "max_mb = 2.5"))
    assert load_agent_config(path).queue_max_bytes == int(2.5 * 2**20)
    path.write_text(re.sub(r"^\[queue\]\nmax_mb = .*\n", "", text, flags=re.MULTILINE))
    assert "max_mb" not in path.read_text()
    assert load_agent_config(path).queue_max_bytes == 1024 * 2**20  # the default without the table
    for bad, problem in (("0", "must be > 0"), ("0.5", "at least 1 MB"), ('"1G"', "must be float")):
        path.write_text(text.replace("max_mb = 1024", f"max_mb = {bad}"))
        with pytest.raises(ConfigError, match=rf"{path}:\d+: \[queue\] max_mb: .*{problem}"):
            load_agent_config(path)
    path.write_text(text.replace("max_mb = 1024", "max_mb = 1024\nmax_gb = 1"))
    with pytest.raises(ConfigError, match=r"\[queue\] max_gb: unknown setting"):
        load_agent_config(path)


# -- a full queue: the gap reaches the hub and the certificate ----------------------------------

LIMIT = 100_000  # bytes


def _reading(meter: str, seq: int, ts: int) -> Reading:
    return Reading(meter, seq, ts, ClockStatus.SYNCHRONIZED, Quality.OK,
                   (Quantity("energy_import", "kWh", 1000.0 + seq / 1000), Quantity("power_total", "W", 3600.0)))


def _poll(q: DurableQueue, meters: list[str], ts: int) -> None:
    q.append_readings([_reading(m, q.next_seq(m), ts) for m in meters])


def _uplink_cfg(hub_cfg, hub_dir: Path) -> UplinkConfig:
    return UplinkConfig(
        hub=hub_cfg.listen, tls_ca=None, tls_server_name=None, hub_public_key=hub_dir / "hub.pub.pem",
        insecure_plaintext=True, max_in_flight=8, reconnect_max_s=1.0,
    )


async def _deliver(queue: DurableQueue, cfg: UplinkConfig, gateway_id: str, timeout: float = 30) -> Uplink:
    uplink = Uplink(cfg, queue, gateway_id)
    stop = asyncio.Event()
    task = asyncio.create_task(uplink.run(stop))
    drained = await uplink.drain(timeout)
    stop.set()
    await asyncio.wait_for(task, 10)
    assert drained, f"not drained: {queue.stats()} {uplink.stats}"
    return uplink


def test_a_full_queue_records_a_gap_that_the_hub_stores_and_the_certificate_shows(tmp_path):
    hub_cfg = init_hub(tmp_path / "hub", block_interval=0.2)
    signer = Signer.generate()
    register_gateway(hub_cfg, "gw-full", signer, tmp_path)
    q = DurableQueue(tmp_path / "queue.sqlite", "gw-full", max_bytes=LIMIT)
    sealer = Sealer(q, signer, "gw-full", max_entries=100, max_age_s=1.0)
    meters = ["MTR-1", "MTR-2"]
    base = time.time_ns() - 3600 * S
    polls = 0
    # The uplink is down: the queue fills, then 40 more polls are refused.
    while not q.full:
        _poll(q, meters, base + polls * S)
        polls += 1
        sealer.seal_due()
    stored = q.next_seq("MTR-1") - 1
    first_refused = base + (min(polls, stored)) * S
    refused_in_first = int(stored < polls)
    for _ in range(40):
        _poll(q, meters, base + polls * S)
        polls += 1
    last_refused = base + (polls - 1) * S
    assert q.next_seq("MTR-1") == stored + 1
    status = read_status(q.path)
    assert status.full_since_ns is not None and status.open_gaps[0].reason == "queue-full"
    sealer.seal_due(force=True)

    with RunningHub(hub_cfg) as hub:
        asyncio.run(_deliver(q, _uplink_cfg(hub_cfg, hub_cfg.path.parent), "gw-full"))
        # Receipts freed the disk: the next poll is queued and closes the gap into an entry.
        _poll(q, meters, base + polls * S)
        polls += 1
        assert not q.full and q.next_seq("MTR-1") == stored + 2
        sealer.seal_due(force=True)
        asyncio.run(_deliver(q, _uplink_cfg(hub_cfg, hub_cfg.path.parent), "gw-full"))
        wait_until(lambda: hub.store().counts()[1] == 0, 20, "blocks sealing every batch")
        cert = pull_certificate(hub_cfg.listen, "MTR-1", base, base + (polls + 1) * S, None)
        assert gridtrace_main(["hub", "trust", "--config", str(hub_cfg.path), "-o", str(tmp_path / "trust.json")]) == 0
    q.close()

    summary = verify_certificate(json.loads(cert), load_trust(tmp_path / "trust.json"))
    assert summary.gaps == (Gap("MTR-1", first_refused, last_refused, "queue-full", 40 + refused_in_first),)
    assert summary.readings == stored + 1
    assert (summary.first_seq, summary.last_seq) == (1, stored + 1)
    assert summary.last_ts_ns == base + (polls - 1) * S  # the reading after the gap


# -- catch-up after an hour's outage, with live readings ---------------------------------------


def test_catch_up_of_an_hour_of_32_meters_while_live_readings_keep_arriving(tmp_path):
    n_meters, seconds = 32, 3600
    hub_cfg = init_hub(tmp_path / "hub", block_interval=0.5)
    signer = Signer.generate()
    register_gateway(hub_cfg, "gw-cu", signer, tmp_path)
    q = DurableQueue(tmp_path / "queue.sqlite", "gw-cu")
    sealer = Sealer(q, signer, "gw-cu", max_entries=500, max_age_s=0.2)
    meters = [f"MTR-{i:02d}" for i in range(1, n_meters + 1)]
    base = time.time_ns() - (seconds + 60) * S
    # An hour of readings, many poll rounds per transaction to fill the queue fast; the
    # sealer keeps sealing during the outage, as in the agent.
    for start in range(0, seconds, 120):
        q.append_readings([
            _reading(m, t + 1, base + t * S) for t in range(start, min(start + 120, seconds)) for m in meters
        ])
        sealer.seal_due()
    sealer.seal_due(force=True)
    backlog = q.stats().batches
    assert backlog == (seconds // 120) * 8 and q.stats().unbatched_entries == 0  # 3840 readings: 8 batches

    live_stop = threading.Event()
    during: list[tuple[int, int]] = []  # (live round, batches still queued when it was committed)
    sealed_live: list[int] = []  # batches pending whenever the sealer sealed live readings

    def live() -> None:
        """The pollers and the sealer, as the agent runs them, during the catch-up."""
        t = seconds
        while not live_stop.is_set():
            _poll(q, meters, base + t * S)
            t += 1
            during.append((t, q.stats().batches))
            if sealer.seal_due():
                sealed_live.append(q.stats().batches)
            time.sleep(0.1)  # ten times faster than 1 Hz polling: plenty of live readings

    procs = Processes(tmp_path)  # the hub in its own process, as in the field: its own CPU
    try:
        hub = procs.start("hub", "hub", "serve", "--config", str(hub_cfg.path))
        wait_for_port(int(hub_cfg.listen.rsplit(":", 1)[1]), hub, "hub")
        worker = threading.Thread(target=live)

        async def run() -> Uplink:
            uplink = Uplink(_uplink_cfg(hub_cfg, hub_cfg.path.parent), q, "gw-cu")
            stop = asyncio.Event()
            task = asyncio.create_task(uplink.run(stop))
            worker.start()
            while q.stats().batches > backlog // 4:  # most of the backlog, with live polls alongside
                await asyncio.sleep(0.1)
            live_stop.set()
            await asyncio.to_thread(worker.join)
            sealer.seal_due(force=True)
            uplink.wakeup.set()
            drained = await uplink.drain(60)
            stop.set()
            await asyncio.wait_for(task, 10)
            assert drained, f"not drained: {q.stats()} {uplink.stats}"
            return uplink

        uplink = asyncio.run(run())
        assert procs.stop("hub") == 0
    finally:
        procs.stop_all()
    store = Store(hub_cfg.database_url)
    got = list(store.iter_entries())
    store.close()
    q.close()
    last = during[-1][0]
    # Live polls were committed while the backlog was still being sent, and sealed meanwhile.
    assert len(during) >= 5 and during[0][1] > backlog // 2
    assert sealed_live and max(sealed_live) > backlog // 4
    assert uplink.stats.receipts >= backlog
    # Every reading arrived, the hour and the live ones, each once.
    seqs = readings_by_meter(got)
    assert set(seqs) == set(meters)
    for m in meters:
        assert seqs[m] == list(range(1, last + 1)), m


def test_the_agent_sends_its_queued_entry_bytes_verbatim_and_the_hub_checks_them(tmp_path):
    """Wire v3: the bytes on the wire unpack to the leaves the agent hashed into the signed
    header, gaps included; the hub's check accepts them and stores exactly those bytes."""
    from edge.uplink import load_pending
    from hub.ingest.check import check_signed_batch
    from protos.batch import seal_batch
    from protos.canonical import decode_entry
    from hubharness import wire_bodies

    signer = Signer.generate()
    queue = DurableQueue(tmp_path / "queue.sqlite", "gw-1")

    def seal(seq, prev_hash, bodies, timestamps):
        b = seal_batch(signer, "gw-1", seq, prev_hash, bodies, timestamps, time.time_ns())
        return b.header, b.signature, b.hash

    try:
        t0 = time.time_ns()
        queue.append_readings([
            Reading("MTR-1", s, t0 + s, ClockStatus.SYNCHRONIZED, Quality.OK,
                    (Quantity("energy_import", "kWh", 1.5 * s), Quantity("voltage_l1", "V", 230.0)))
            for s in (1, 2, 3)
        ])
        queue.record_failure("MTR-2", t0, "timeout", report_after_ns=10**12)
        queue.close_all_gaps()
        assert queue.seal_next_batch(100, seal) is not None
        ((seq, digest, msg),) = load_pending(queue, 0, 10)
        raw = list(queue.pending_raw(0, 10))
    finally:
        queue.close()
    assert not msg.entry_bytes
    bodies = wire_bodies(msg)
    assert bodies == raw[0][4]
    assert any(isinstance(decode_entry(b), Gap) for b in bodies)
    # the names field of the three readings travels once
    assert len(msg.packed_entries.bodies) < sum(map(len, bodies))
    checked = check_signed_batch(msg, {"gw-1": {signer.key_id: signer.public_key}})
    assert checked.batch.hash == digest and seq == 1
    assert checked.batch.bodies() == bodies
    assert checked.batch.payload.bodies == msg.packed_entries.bodies  # stored as it arrived
