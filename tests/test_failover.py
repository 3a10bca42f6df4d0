"""Several hub addresses with failover: configuration, receipts checked against any pinned
hub key, an agent whose first hub is dead from the start, and a cold standby that takes
over the data directory of a hub killed mid-stream, with every meter's sequence numbers
compared end to end."""

from __future__ import annotations

import asyncio
import logging
import re
import signal
import time
from pathlib import Path

import pytest
from hubharness import RunningHub, init_hub, register_gateway
from test_end_to_end import assert_every_reading_once, wait_until

from edge.config import (
    ConfigError,
    UplinkConfig,
    load_agent_config,
    render_agent_config,
)
from edge.queue import DurableQueue
from edge.uplink import ReceiptError, Uplink, check_receipt
from gridtrace.demo import (
    Processes,
    free_port,
    hub_status,
    prepare_site,
    wait_for_port,
)
from protos.batch import seal_batch
from protos.canonical import encode_receipt
from protos.records import ClockStatus, Quality, Quantity, Reading, ReceiptStatement
from protos.signing import Signer, write_public_key

METERS = [("MTR-1", "modbus-tcp://127.0.0.1:5020?unit=1")]


# -- configuration ----------------------------------------------------------------------


def _config(tmp_path: Path, uplink_lines: str) -> Path:
    text = render_agent_config("gw1", "127.0.0.1:7700", METERS)
    text = re.sub(r"^hub_public_key = .*$", "", text, count=1, flags=re.MULTILINE)
    text = re.sub(r"^hub = .*$", uplink_lines, text, count=1, flags=re.MULTILINE)
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_hubs_and_keys_lists_load_in_order(tmp_path):
    cfg = load_agent_config(_config(
        tmp_path,
        'hubs = ["h1.example.net:7700", "[::1]:7701"]\n'
        'hub_public_key = "a.pem"\nhub_public_keys = ["b.pem", "/etc/keys/c.pem", "a.pem"]',
    ))
    assert cfg.uplink.hubs == ("h1.example.net:7700", "[::1]:7701") and cfg.uplink.hub == "h1.example.net:7700"
    assert cfg.uplink.hub_public_keys == (tmp_path / "a.pem", tmp_path / "b.pem", Path("/etc/keys/c.pem"))
    # the single forms still work, and mean a list of one
    one = load_agent_config(_config(tmp_path, 'hub = "h1:7700"\nhub_public_key = "k.pem"'))
    assert one.uplink.hubs == ("h1:7700",) and one.uplink.hub_public_keys == (tmp_path / "k.pem",)
    # what `edge init` writes with several hubs loads back
    path = tmp_path / "rendered.toml"
    path.write_text(render_agent_config("gw1", ["h1:7700", "h2:7700"], METERS))
    assert load_agent_config(path).uplink.hubs == ("h1:7700", "h2:7700")
    # callers that build the config in code with one hub get lists of one
    built = UplinkConfig("h:1", None, None, Path("k.pem"), True, 8, 1.0)
    assert built.hubs == ("h:1",) and built.hub_public_keys == (Path("k.pem"),)


@pytest.mark.parametrize(
    "lines,key,problem",
    [
        ('hub = "h1:7700"\nhubs = ["h2:7700"]\nhub_public_key = "k.pem"', "hubs", "either hub or hubs"),
        ('hubs = []\nhub_public_key = "k.pem"', "hubs", "list"),
        ('hubs = "h1:7700"\nhub_public_key = "k.pem"', "hubs", "list"),
        ('hubs = ["h1:7700", 7701]\nhub_public_key = "k.pem"', "hubs", "list"),
        ('hubs = ["h1:7700", "h1"]\nhub_public_key = "k.pem"', "hubs", "'h1' is not \"host:port\""),
        ('hubs = ["h1:99999"]\nhub_public_key = "k.pem"', "hubs", "not \"host:port\""),
        ('hubs = ["h1:7700", "h1:7700"]\nhub_public_key = "k.pem"', "hubs", "twice"),
        ('hubs = ["h1:7700"]', "hub_public_key", "missing"),
        ('hubs = ["h1:7700"]\nhub_public_keys = []', "hub_public_key", "missing"),
        ('hubs = ["h1:7700"]\nhub_public_keys = "k.pem"', "hub_public_keys", "list of key file paths"),
        ("hub_public_key = 'k.pem'", "hub", "missing"),
    ],
)
def test_bad_hub_settings_name_the_line(tmp_path, lines, key, problem):
    path = _config(tmp_path, lines)
    with pytest.raises(ConfigError) as info:
        load_agent_config(path)
    msg = str(info.value)
    assert f"{path}:" in msg and f"[uplink] {key}:" in msg and problem in msg, msg


# -- receipts against several pinned keys ----------------------------------------------------


def _receipt(signer: Signer, seq: int = 1, digest: bytes = b"\x07" * 32, key_id: str | None = None):
    from protos import ingest_pb2

    stmt = ReceiptStatement("chain", "gw1", seq, digest, 123)
    return ingest_pb2.Receipt(
        chain_id="chain", gateway_id="gw1", batch_seq=seq, batch_hash=digest, stored_ns=123,
        key_id=key_id or signer.key_id, signature=signer.sign(encode_receipt(stmt)),
    )


def test_a_receipt_is_good_if_any_pinned_key_verifies_it():
    a, b, stranger = (Signer.generate() for _ in range(3))
    pinned = [a.public_key, b.public_key]
    assert check_receipt(_receipt(b), "gw1", 1, b"\x07" * 32, pinned).batch_seq == 1
    assert check_receipt(_receipt(a), "gw1", 1, b"\x07" * 32, pinned).batch_seq == 1
    with pytest.raises(ReceiptError, match="unknown hub key"):
        check_receipt(_receipt(stranger), "gw1", 1, b"\x07" * 32, pinned)
    # signed by a stranger but claiming a pinned key's id: the signature decides
    with pytest.raises(ReceiptError, match="does not verify"):
        check_receipt(_receipt(stranger, key_id=a.key_id), "gw1", 1, b"\x07" * 32, pinned)
    # and a pinned key's receipt must still name the batch that was sent
    with pytest.raises(ReceiptError, match="another hash"):
        check_receipt(_receipt(b, digest=b"\x08" * 32), "gw1", 1, b"\x07" * 32, pinned)


# -- the first hub is dead from the start ------------------------------------------------------


def _sealer(signer: Signer):
    def seal(s, prev, bodies, ts):
        b = seal_batch(signer, "gw-f", s, prev, bodies, ts, time.time_ns())
        return b.header, b.signature, b.hash

    return seal


def _queue_with_batches(path: Path, signer: Signer, batches: int, size: int) -> DurableQueue:
    q = DurableQueue(path, "gw-f")
    seq = 0
    for _ in range(batches):
        rs = []
        for _ in range(size):
            seq += 1
            rs.append(Reading("MTR-1", seq, time.time_ns(), ClockStatus.SYNCHRONIZED, Quality.OK,
                              (Quantity("energy_import", "kWh", float(seq)),)))
        q.append_readings(rs)
        q.seal_next_batch(size, _sealer(signer))
    return q


def test_agent_moves_past_a_dead_first_hub_and_says_which_hub_it_uses(tmp_path, caplog):
    cfg = init_hub(tmp_path / "hub")
    signer = Signer.generate()
    register_gateway(cfg, "gw-f", signer, tmp_path)
    other_key = tmp_path / "old-hub.pub.pem"  # a second pinned key, as during a key rotation
    write_public_key(other_key, Signer.generate().public_key)
    dead = f"127.0.0.1:{free_port()}"  # nothing listens here
    queue = _queue_with_batches(tmp_path / "queue.sqlite", signer, batches=6, size=50)
    uplink_cfg = UplinkConfig(
        hub=dead, tls_ca=None, tls_server_name=None, hub_public_key=other_key, insecure_plaintext=True,
        max_in_flight=4, reconnect_max_s=1.0, hubs=(dead, cfg.listen),
        hub_public_keys=(other_key, cfg.path.parent / "hub.pub.pem"),
    )
    with RunningHub(cfg) as hub, caplog.at_level(logging.INFO, logger="gridtrace.edge.uplink"):
        async def run() -> tuple[bool, Uplink]:
            uplink = Uplink(uplink_cfg, queue, "gw-f")
            stop = asyncio.Event()
            task = asyncio.create_task(uplink.run(stop))
            drained = await uplink.drain(20)
            # live batches after the failover go to the same hub
            queue.append_readings([Reading("MTR-1", 301, time.time_ns(), ClockStatus.UNKNOWN, Quality.OK, ())])
            queue.seal_next_batch(10, _sealer(signer))
            uplink.wakeup.set()
            drained = drained and await uplink.drain(10)
            stop.set()
            await asyncio.wait_for(task, 10)
            return drained, uplink

        drained, uplink = asyncio.run(run())
        assert drained, f"not drained: {queue.stats()} {uplink.stats}"
        assert hub.store().counts()[0] == 7
    queue.close()
    assert uplink.stats.hub == cfg.listen and uplink.stats.failovers == 1 and uplink.stats.receipts == 7
    text = caplog.text
    assert f"uplink to hub {dead}" in text and f"trying hub {cfg.listen} next" in text
    assert f"connected to hub {cfg.listen} (2 of 2)" in text
    from edge.queue_status import read_status

    st = read_status(tmp_path / "queue.sqlite")
    assert (st.last_receipt_seq, st.last_receipt_hub, st.batches) == (7, cfg.listen, 0)


# -- a cold standby takes over the data directory of a killed hub ---------------------------------


def test_cold_standby_on_the_same_data_takes_over_without_gap_or_duplicate(tmp_path):
    site = prepare_site(tmp_path / "state", 3, batch_age_s=0.3, block_interval_s=0.3)
    standby_port = free_port()
    standby_addr = f"127.0.0.1:{standby_port}"
    hub_a = site.hub_dir / "hub.toml"
    hub_b = site.hub_dir / "hub-standby.toml"  # same key, database and TLS files; another address
    hub_b.write_text(hub_a.read_text().replace(site.hub_addr, standby_addr))
    agent_toml = site.gw_dir / "agent.toml"
    text = agent_toml.read_text()
    text = re.sub(r'^hub = .*$', f'hubs = ["{site.hub_addr}", "{standby_addr}"]', text, count=1, flags=re.MULTILINE)
    agent_toml.write_text(text.replace("reconnect_max_s = 30.0", "reconnect_max_s = 1.0"))

    procs = Processes(site.state / "logs")
    try:
        sim = procs.start("sim", "sim", "modbus", "--port", str(site.sim_port), "--meters", "3")
        wait_for_port(site.sim_port, sim, "simulator")
        hub = procs.start("hub-a", "hub", "serve", "--config", str(hub_a))
        wait_for_port(site.hub_port, hub, "hub A")
        procs.start("agent", "edge", "run", "--config", str(agent_toml))
        wait_until(lambda: hub_status(site.hub_addr, site.ca).entries_stored >= 12, 20, "readings at hub A")

        procs.procs["hub-a"].send_signal(signal.SIGKILL)  # mid-stream, no chance to finish anything
        procs.procs.pop("hub-a").wait()
        time.sleep(1.0)  # the agent finds neither hub for a moment and keeps queueing
        standby = procs.start("hub-b", "hub", "serve", "--config", str(hub_b))
        wait_for_port(standby_port, standby, "standby hub")
        before = hub_status(standby_addr, site.ca).entries_stored
        wait_until(lambda: hub_status(standby_addr, site.ca).entries_stored >= before + 9, 20, "readings at hub B")

        assert procs.stop("agent", timeout=30) == 0  # drains to the standby
        wait_until(lambda: hub_status(standby_addr, site.ca).batches_unsealed == 0, 20, "sealing at hub B")
        assert procs.stop("hub-b") == 0
    finally:
        procs.stop_all()

    assert_every_reading_once(site)
    log = (site.state / "logs" / "agent.log").read_text()
    assert f"trying hub {standby_addr} next" in log
    assert f"connected to hub {standby_addr} (2 of 2)" in log
