"""The agent's pollers over each kind of Modbus source, from config to queued readings:
SunSpec discovered over TCP, SDM120 meters on an RTU bus (through a socat pty pair), and a
mixed config whose meters are grouped by bus."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from edge.config import load_agent_config
from edge.poller import ModbusBusPoller, build_pollers
from edge.queue import DurableQueue
from firmware_sim.modbus_server import SerialLine, SimulatedModbusServer
from protos.canonical import decode_entry
from protos.records import Gap, Quality, Reading

HEAD = (
    '[gateway]\nid = "gw-src"\n\n[uplink]\nhub = "127.0.0.1:1"\ninsecure_plaintext = true\n'
    'hub_public_key = "hub.pub.pem"\n\n[polling]\ntimeout_s = 0.3\n'
)


def meters_toml(entries: list[tuple[str, str, str]]) -> str:
    return "".join(
        f'\n[[meters]]\nid = "{mid}"\nsource = "{url}"\nregister_map = "{regmap}"\ninterval_s = 0.2\n'
        for mid, url, regmap in entries
    )


def poll_for(tmp_path: Path, text: str, seconds: float, *servers: SimulatedModbusServer) -> list[Reading | Gap]:
    path = tmp_path / "agent.toml"
    path.write_text(HEAD + text, encoding="utf-8")
    cfg = load_agent_config(path)
    queue = DurableQueue(tmp_path / "queue.sqlite", cfg.gateway_id)

    async def main() -> None:
        for server in servers:
            await server.start()
        stop = asyncio.Event()
        pollers = build_pollers(cfg.meters, queue, 60.0, cfg.polling, cfg.gateway_id)
        tasks = [asyncio.create_task(p.run(stop)) for p in pollers]
        await asyncio.sleep(seconds)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
        for server in servers:
            await server.stop()

    asyncio.run(main())
    queue.close_all_gaps()
    rows = queue._db.execute("SELECT body FROM entries ORDER BY id").fetchall()
    queue.close()
    return [decode_entry(bytes(r[0])) for r in rows]


def readings_of(entries: list[Reading | Gap], meter_id: str) -> list[Reading]:
    return [e for e in entries if isinstance(e, Reading) and e.meter_id == meter_id]


def test_a_sunspec_meter_is_discovered_and_read_without_partial_readings(tmp_path: Path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        fixed = probe.getsockname()[1]
    server = SimulatedModbusServer("127.0.0.1", fixed, 1, register_map="sunspec")
    got = poll_for(
        tmp_path, meters_toml([("PV-1", f"modbus-tcp://127.0.0.1:{fixed}?unit=1", "sunspec")]), 1.5, server
    )
    rs = readings_of(got, "PV-1")
    assert len(rs) >= 4, got
    assert [r.seq for r in rs] == list(range(1, len(rs) + 1))
    names = {q.name for q in rs[-1].quantities}
    assert {"power_total", "energy_import", "voltage_l1", "frequency"} <= names
    # points the device leaves unimplemented are dropped after the first read, not flagged forever
    assert all(Quality.PARTIAL not in r.quality for r in rs[1:]), [r.quality for r in rs]
    assert all(Quality.OUT_OF_RANGE not in r.quality for r in rs)
    assert not [e for e in got if isinstance(e, Gap)]


def test_sdm120_meters_on_an_rtu_bus_share_it_and_a_silent_unit_is_a_gap(tmp_path: Path, serial_pair):
    meter_side, agent_side = serial_pair
    server = SimulatedModbusServer(
        "127.0.0.1", 0, 2, register_map="eastron_sdm120", serial=SerialLine(meter_side, baudrate=19200)
    )
    bus = f"modbus-rtu://{agent_side}?baud=19200"
    text = meters_toml(
        [("R1", f"{bus}&unit=1", "eastron_sdm120"), ("R2", f"{bus}&unit=2", "eastron_sdm120"),
         ("R9", f"{bus}&unit=9", "eastron_sdm120")]
    )
    cfg_path = tmp_path / "agent.toml"
    cfg_path.write_text(HEAD + text, encoding="utf-8")
    pollers = build_pollers(load_agent_config(cfg_path).meters, DurableQueue(tmp_path / "q0.sqlite", "gw-src"), 60.0)
    assert len(pollers) == 1 and isinstance(pollers[0], ModbusBusPoller), "one bus, one poller"
    got = poll_for(tmp_path, text, 2.0, server)
    for meter_id in ("R1", "R2"):
        rs = readings_of(got, meter_id)
        assert len(rs) >= 3, (meter_id, got)
        assert all(r.quality & ~Quality.STALE == Quality.OK for r in rs), [r.quality for r in rs]
        values = {q.name: q.value for q in rs[-1].quantities}
        assert 200 < values["voltage_l1"] < 260 and values["energy_import"] > 0
    gaps = [e for e in got if isinstance(e, Gap)]
    assert [(g.meter_id, g.reason) for g in gaps] == [("R9", "timeout")]
