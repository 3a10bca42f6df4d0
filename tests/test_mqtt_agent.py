"""MQTT meters through the agent's pollers into the durable queue, against a real mosquitto."""

from __future__ import annotations

import asyncio
from pathlib import Path

from edge.config import load_agent_config
from edge.poller import build_pollers
from edge.queue import DurableQueue
from firmware_sim.mqtt_meter import MqttFault, SimulatedMqttMeters, example_meter_config
from protos.canonical import decode_entry
from protos.records import Gap, Quality, Reading

from brokers import Mosquitto


def agent_config(tmp_path: Path, broker: Mosquitto, units: list[int]) -> Path:
    text = (
        '[gateway]\nid = "gw-mqtt"\n\n[uplink]\nhub = "127.0.0.1:1"\ninsecure_plaintext = true\n'
        'hub_public_key = "hub.pub.pem"\n\n[batching]\ngap_report_s = 1.0\n\n'
    )
    for unit in units:
        text += example_meter_config(
            f"{broker.host}:{broker.port}", f"site/meters/{unit}", f"M{unit}", version="5", interval_s=0.2
        ) + "\n"
    path = tmp_path / "agent.toml"
    path.write_text(text, encoding="utf-8")
    return path


def entries(queue: DurableQueue) -> list[Reading | Gap]:
    rows = queue._db.execute("SELECT body FROM entries ORDER BY id").fetchall()
    return [decode_entry(bytes(r[0])) for r in rows]


def test_mqtt_meters_become_readings_and_silence_or_garbage_becomes_gaps(tmp_path: Path, mosquitto: Mosquitto):
    cfg = load_agent_config(agent_config(tmp_path, mosquitto, [1, 2, 3]))
    queue = DurableQueue(tmp_path / "queue.sqlite", cfg.gateway_id)

    async def main() -> None:
        sim = SimulatedMqttMeters(mosquitto.host, mosquitto.port, 3, interval_s=0.2, version="5")
        await sim.start()
        stop = asyncio.Event()
        pollers = build_pollers(cfg.meters, queue, cfg.batching.gap_report_s, cfg.polling, cfg.gateway_id)
        assert len(pollers) == 1, "three meters on one broker share one connection"
        task = asyncio.create_task(pollers[0].run(stop))
        await asyncio.sleep(1.5)
        sim.set_fault(2, MqttFault.parse("silent"))
        sim.set_fault(3, MqttFault.parse("malformed"))
        await asyncio.sleep(2.0)
        stop.set()
        await asyncio.wait_for(task, 10)
        await sim.stop()

    asyncio.run(main())
    queue.close_all_gaps()
    got = entries(queue)
    readings = [e for e in got if isinstance(e, Reading)]
    gaps = [e for e in got if isinstance(e, Gap)]
    by_meter: dict[str, list[Reading]] = {}
    for r in readings:
        by_meter.setdefault(r.meter_id, []).append(r)
    assert set(by_meter) == {"M1", "M2", "M3"}
    for meter_id, rs in by_meter.items():
        assert [r.seq for r in rs] == list(range(1, len(rs) + 1)), meter_id
    m1 = by_meter["M1"]
    assert len(m1) >= 10
    assert all(r.quality & ~Quality.STALE == Quality.OK for r in m1), [r.quality for r in m1]
    names = {q.name for q in m1[-1].quantities}
    assert {"power_total", "energy_import", "voltage_l1"} <= names
    # the meter stamps its messages: readings carry its time, in order
    assert [r.timestamp_ns for r in m1] == sorted(r.timestamp_ns for r in m1)
    reasons = {(g.meter_id, g.reason) for g in gaps}
    assert ("M2", "no-message") in reasons, reasons
    assert ("M3", "bad-payload") in reasons, reasons
    assert not any(g.meter_id == "M1" for g in gaps)
    queue.close()


def test_an_unreachable_broker_is_recorded_as_a_gap(tmp_path: Path, mosquitto: Mosquitto):
    cfg = load_agent_config(agent_config(tmp_path, mosquitto, [1]))
    mosquitto.stop()
    queue = DurableQueue(tmp_path / "queue.sqlite", cfg.gateway_id)

    async def main() -> None:
        stop = asyncio.Event()
        pollers = build_pollers(cfg.meters, queue, cfg.batching.gap_report_s, cfg.polling, cfg.gateway_id)
        task = asyncio.create_task(pollers[0].run(stop))
        await asyncio.sleep(2.0)
        stop.set()
        await asyncio.wait_for(task, 10)

    asyncio.run(main())
    queue.close_all_gaps()
    gaps = [e for e in entries(queue) if isinstance(e, Gap)]
    assert gaps and all(g.reason == "broker-unreachable" for g in gaps), gaps
    queue.close()
