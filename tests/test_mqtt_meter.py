"""The simulated MQTT meter: what it publishes decodes, by the map it documents, to its physics."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from brokers import Mosquitto
from firmware_sim.meter import SimulatedMeter
from firmware_sim.mqtt_meter import (
    PAYLOAD_FIELDS,
    TIMESTAMP,
    MqttFault,
    MqttFaultKind,
    MqttSimulatorError,
    SimulatedMqttMeters,
    example_meter_config,
    meter_time_ms,
    render_payload,
)

from edge.sources.mqtt import (
    DecodedMessage,
    MqttMeter,
    MqttSubscriber,
    PayloadError,
    decode_payload,
    parse_mqtt_url,
    parse_payload_map,
    receive_one,
)

WAIT_S = 10.0
PM = parse_payload_map({"fields": PAYLOAD_FIELDS, "timestamp": TIMESTAMP}, "simulator map")
T0_MS = 1_714_564_800_000  # 2024-05-01T12:00:00Z: PV meters export at noon
INSTANT = ("voltage_l1", "voltage_l2", "voltage_l3", "current_l1", "current_l2", "current_l3",
           "power_l1", "power_l2", "power_l3", "power_total", "reactive_power_total",
           "power_factor_total", "frequency")


def _expected(unit: int, t_ms: int, seed: int = 1) -> dict[str, float]:
    return SimulatedMeter.for_unit(unit, seed).advance(t_ms / 1000.0)


def _check_physics(unit: int, msg: DecodedMessage, true_ms: int, seed: int = 1) -> None:
    expected = _expected(unit, true_ms, seed)
    for name in INSTANT:
        assert msg.values[name] == expected[name], name  # JSON floats round-trip exactly
    for name in ("energy_import", "energy_export"):
        assert msg.values[name] >= 0


@pytest.mark.parametrize("unit", [1, 2, 5])
def test_payload_decodes_to_the_meters_quantities(unit: int) -> None:
    meter = SimulatedMeter.for_unit(unit, 1)
    values = meter.advance(T0_MS / 1000.0)
    msg = decode_payload(render_payload(unit, values, T0_MS), PM)
    assert msg.missing == ()
    assert msg.meter_time_ns == T0_MS * 1_000_000
    assert set(msg.values) == set(PAYLOAD_FIELDS)
    _check_physics(unit, msg, T0_MS)
    # energy is published in Wh and scaled back to the meter's kWh
    assert msg.values["energy_import"] == pytest.approx(values["energy_import"], rel=1e-12)
    for name, value in msg.values.items():
        assert PM.register(name).plausible(value), (name, value)
    if unit == 2:  # a PV meter at noon exports
        assert msg.values["power_total"] < 0


def test_counters_integrate_power_between_messages() -> None:
    meter = SimulatedMeter.for_unit(1, 1)
    first = decode_payload(render_payload(1, meter.advance(T0_MS / 1000), T0_MS), PM)
    later_ms = T0_MS + 60_000
    second = decode_payload(render_payload(1, meter.advance(later_ms / 1000), later_ms), PM)
    kwh = sum(meter.power_at(T0_MS / 1000 + s) for s in range(60)) / 3.6e6
    assert second.values["energy_import"] - first.values["energy_import"] == pytest.approx(kwh, rel=1e-9)


def test_faults_in_the_payload() -> None:
    values = SimulatedMeter.for_unit(1, 1).advance(T0_MS / 1000)
    assert render_payload(1, values, T0_MS, MqttFault.parse("silent")) is None
    with pytest.raises(PayloadError, match="not valid JSON"):
        decode_payload(render_payload(1, values, T0_MS, MqttFault.parse("malformed")), PM)
    partial = decode_payload(render_payload(1, values, T0_MS, MqttFault.parse("missing")), PM)
    assert partial.missing == ("frequency",) and "frequency" not in partial.values


def test_clock_faults() -> None:
    offset = MqttFault.parse("clock-offset:-90.5")
    assert meter_time_ms(T0_MS, offset, 0) == T0_MS - 90_500
    drift = MqttFault.parse("clock-drift:500")  # 500 ppm fast: 43 s a day
    since = T0_MS - 86_400_000
    assert meter_time_ms(T0_MS, drift, since) == T0_MS + 43_200
    assert meter_time_ms(T0_MS, None, since) == T0_MS
    assert meter_time_ms(T0_MS, MqttFault.parse("malformed"), since) == T0_MS


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("loud", "unknown fault 'loud'"),
        ("clock-offset", "needs an amount"),
        ("clock-drift:fast", "not a number"),
        ("clock-offset:nan", "finite"),
        ("silent:3", "takes no amount"),
    ],
)
def test_bad_fault_specs(spec: str, expected: str) -> None:
    with pytest.raises(ValueError, match=expected):
        MqttFault.parse(spec)


def test_example_config_is_the_payload_map() -> None:
    text = example_meter_config("127.0.0.1:1883", "site/meters/1", "sim-1", version="5", interval_s=0.5)
    meter = tomllib.loads(text)["meters"][0]
    assert meter["id"] == "sim-1" and meter["interval_s"] == 0.5
    target = parse_mqtt_url(meter["source"])
    assert (target.topic, target.version, target.qos) == ("site/meters/1", "5", 1)
    assert parse_payload_map({"fields": meter["fields"], "timestamp": meter["timestamp"]}, "x") == PM


def test_simulator_refuses_bad_settings() -> None:
    for kwargs, expected in (
        ({"meters": 0}, "at least one"),
        ({"interval_s": 0}, "positive"),
        ({"version": "4"}, "3.1.1 or 5"),
        ({"topic_prefix": "site/+"}, "plain topic"),
    ):
        args = {"meters": 2, **kwargs}
        with pytest.raises(MqttSimulatorError, match=expected):
            SimulatedMqttMeters("127.0.0.1", 1883, **args)
    sim = SimulatedMqttMeters("127.0.0.1", 1883, 2)
    with pytest.raises(MqttSimulatorError, match="meters are 1..2"):
        sim.set_fault(3, MqttFault(MqttFaultKind.SILENT))


def test_simulator_cannot_reach_broker() -> None:
    async def main() -> None:
        sim = SimulatedMqttMeters("127.0.0.1", _closed_port(), 1)
        with pytest.raises(MqttSimulatorError, match="cannot connect to broker"):
            await sim.start()

    asyncio.run(main())


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("version", ["3.1.1", "5"])
def test_published_meters_reach_the_agent_side(mosquitto: Mosquitto, version: str) -> None:
    async def main() -> None:
        sim = SimulatedMqttMeters(mosquitto.host, mosquitto.port, 3, topic_prefix="plant/m",
                                  interval_s=0.05, version=version, seed=7)
        sim.set_fault(2, MqttFault.parse("clock-offset:3600"))
        sim.set_fault(3, MqttFault.parse("missing"))
        meters = [
            MqttMeter(f"sim-{u}", parse_mqtt_url(f"mqtt://{mosquitto.address}/plant/m/{u}?version={version}"), PM)
            for u in (1, 2, 3)
        ]
        got: dict[str, list[tuple[int, DecodedMessage | PayloadError]]] = {m.id: [] for m in meters}
        states: dict[str, str | None] = {}
        sub = MqttSubscriber(meters, "gw-sim-test", reconnect_min_s=0.05, reconnect_max_s=0.2)
        stop = asyncio.Event()
        task = asyncio.create_task(
            sub.run(stop, lambda m, a, r: got[m].append((a, r)), lambda m, e: states.__setitem__(m, e))
        )
        await _until(lambda: len(states) == 3 and all(e is None for e in states.values()))
        await sim.start()
        await _until(lambda: all(len(v) >= 3 for v in got.values()))
        sim.set_fault(1, MqttFault.parse("malformed"))
        await _until(lambda: any(isinstance(r, PayloadError) for _, r in got["sim-1"]))
        sim.set_fault(1, MqttFault.parse("silent"))
        await asyncio.sleep(0.1)  # let messages already under way arrive
        silenced_at = sim.published[1]
        count = len(got["sim-1"])
        await _until(lambda: sim.published[2] >= silenced_at + 5)
        await sim.stop()
        stop.set()
        await task

        assert sim.published[1] == silenced_at and len(got["sim-1"]) == count
        good = [r for _, r in got["sim-1"] if isinstance(r, DecodedMessage)]
        for msg in good:
            assert msg.meter_time_ns is not None
            _check_physics(1, msg, msg.meter_time_ns // 1_000_000, seed=7)
        imports = [m.values["energy_import"] for m in good]
        assert imports == sorted(imports)
        for arrival, msg in got["sim-2"]:
            assert isinstance(msg, DecodedMessage) and msg.meter_time_ns is not None
            # the meter's clock is an hour fast; its values are those of true time
            assert 3590e9 < msg.meter_time_ns - arrival < 3610e9
            _check_physics(2, msg, msg.meter_time_ns // 1_000_000 - 3_600_000, seed=7)
        assert all(isinstance(r, DecodedMessage) and r.missing == ("frequency",) for _, r in got["sim-3"])

    asyncio.run(main())


async def _until(predicate, what: str = "the simulator") -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"waited {WAIT_S} s for {what}")
        await asyncio.sleep(0.01)


def test_sim_mqtt_command(mosquitto: Mosquitto, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gridtrace.cli", "sim", "mqtt", "--broker", mosquitto.address,
         "--meters", "2", "--interval", "0.1", "--mqtt-version", "5", "--fault", "2=clock-drift:100"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=env,
    )
    try:
        assert proc.stdout is not None
        banner = proc.stdout.readline()
        assert f"mqtt://{mosquitto.address}/site/meters/1..2" in banner, banner + proc.stderr.read()
        assert "meter 2 clock-drift:100" in banner
        lines = []
        for line in proc.stdout:
            if line.startswith('format = '):
                lines.append(line)
                break
            lines.append(line)
        meter = tomllib.loads("".join(lines))["meters"][0]
        pm = parse_payload_map({"fields": meter["fields"], "timestamp": meter["timestamp"]}, "banner")
        msg = asyncio.run(receive_one(parse_mqtt_url(meter["source"]), pm, timeout=WAIT_S))
        assert msg.missing == () and abs(msg.meter_time_ns - time.time_ns()) < 60e9
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=WAIT_S)
    assert proc.returncode == 0, err


@pytest.mark.parametrize(
    ("args", "code", "expected"),
    [
        (["--fault", "3=silent"], 1, "meters are 1..2"),
        (["--fault", "1=loud"], 2, "unknown fault 'loud'"),
        (["--broker", "nowhere"], 2, "expected HOST:PORT"),
        (["--interval", "0"], 2, "more than 0 s"),
    ],
)
def test_sim_mqtt_bad_arguments(args: list[str], code: int, expected: str, capsys: pytest.CaptureFixture[str]) -> None:
    from gridtrace.cli import main

    try:
        result = main(["sim", "mqtt", "--meters", "2", "--broker", f"127.0.0.1:{_closed_port()}", *args])
    except SystemExit as exc:
        result = exc.code
    assert result == code
    assert expected in capsys.readouterr().err


def test_payload_json_shape_is_documented() -> None:
    """The module docstring's example payload has exactly the keys the simulator sends."""
    import firmware_sim.mqtt_meter as module

    doc = module.__doc__ or ""
    start = doc.index("{\"ts\"")
    example = json.loads(doc[start: doc.index("}}", start) + 2])
    sent = json.loads(render_payload(1, _expected(1, T0_MS), T0_MS) or b"")
    assert set(example) == set(sent)
    assert set(example["power"]) == set(sent["power"]) and set(example["energy"]) == set(sent["energy"])
