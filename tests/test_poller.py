"""The poller's pure core: quality flags and clock status of readings, and config checks."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from edge.config import MeterConfig, load_agent_config
from edge.poller import CLOCK_TOLERANCE_NS, new_meter_state, to_reading
from edge.registermap import load_register_map
from edge.sources import parse_source_url
from gridtrace.tomlconfig import ConfigError
from protos.canonical import encode_reading
from protos.records import ClockStatus, Quality

T0 = 1_760_000_000_000_000_000
SYNC = ClockStatus.SYNCHRONIZED


def sdm630_state():
    regmap = load_register_map("eastron_sdm630")
    url = "modbus-tcp://127.0.0.1:502?unit=1"
    return new_meter_state(MeterConfig("MTR-1", url, 1.0, parse_source_url(url), regmap.name, regmap))


def good_values() -> dict[str, float]:
    regmap = load_register_map("eastron_sdm630")
    values = {r.name: 1.0 for r in regmap.quantities}
    values.update(voltage_l1=231.0, voltage_l2=229.5, voltage_l3=230.2, frequency=50.01)
    return values


def test_a_good_reading_has_every_quantity_with_its_unit_and_no_flags():
    state = sdm630_state()
    reading = to_reading(state, 1, T0, good_values(), SYNC)
    assert reading.quality == Quality.OK
    assert reading.clock is SYNC
    assert len(reading.quantities) == len(state.specs)
    assert {q.name: q.unit for q in reading.quantities}["voltage_l1"] == "V"
    encode_reading(reading)


def test_out_of_range_value_is_kept_and_flagged():
    state = sdm630_state()
    values = good_values()
    values["voltage_l1"] = 4.2e9  # what a wrong word order makes of 230 V
    reading = to_reading(state, 1, T0, values, SYNC)
    assert Quality.OUT_OF_RANGE in reading.quality
    assert {q.name: q.value for q in reading.quantities}["voltage_l1"] == 4.2e9


def test_same_frame_twice_is_stale_and_a_changed_one_is_not():
    state = sdm630_state()
    assert Quality.STALE not in to_reading(state, 1, T0, good_values(), SYNC).quality
    assert Quality.STALE in to_reading(state, 2, T0 + 10**9, good_values(), SYNC).quality
    changed = good_values() | {"voltage_l1": 231.1}
    assert Quality.STALE not in to_reading(state, 3, T0 + 2 * 10**9, changed, SYNC).quality


def test_counter_going_backwards_and_resetting_are_told_apart():
    state = sdm630_state()
    to_reading(state, 1, T0, good_values() | {"energy_import": 1000.0}, SYNC)
    back = to_reading(state, 2, T0, good_values() | {"energy_import": 999.0}, SYNC)
    assert Quality.COUNTER_BACKWARDS in back.quality and Quality.COUNTER_RESET not in back.quality
    reset = to_reading(state, 3, T0, good_values() | {"energy_import": 0.2}, SYNC)
    assert Quality.COUNTER_RESET in reset.quality and Quality.COUNTER_BACKWARDS not in reset.quality


def test_missing_and_nan_values_make_a_partial_reading():
    state = sdm630_state()
    values = good_values()
    del values["frequency"]
    values["phase_angle_l1"] = math.nan
    reading = to_reading(state, 1, T0, values, SYNC)
    assert Quality.PARTIAL in reading.quality
    names = {q.name for q in reading.quantities}
    assert "frequency" not in names and "phase_angle_l1" not in names


def test_a_meter_timestamp_is_used_and_synchronised_only_when_it_agrees_with_ours():
    state = sdm630_state()
    near = to_reading(state, 1, T0, good_values(), SYNC, meter_time_ns=T0 - 500_000_000)
    assert near.timestamp_ns == T0 - 500_000_000 and near.clock is SYNC
    drifted = to_reading(
        state, 2, T0, good_values() | {"voltage_l1": 232.0}, SYNC, meter_time_ns=T0 - CLOCK_TOLERANCE_NS - 1
    )
    assert drifted.clock is ClockStatus.INFORMATIVE
    ours_unsynced = to_reading(
        state, 3, T0, good_values() | {"voltage_l1": 233.0}, ClockStatus.INFORMATIVE, meter_time_ns=T0
    )
    assert ours_unsynced.clock is ClockStatus.INFORMATIVE


# -- config: errors name the line ------------------------------------------------------------

HEAD = """\
[gateway]
id = "gw1"

[uplink]
hub = "127.0.0.1:7700"
insecure_plaintext = true
hub_public_key = "hub.pub.pem"
"""


def write(tmp_path: Path, meters: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(HEAD + meters, encoding="utf-8")
    return path


def error_of(path: Path) -> str:
    with pytest.raises(ConfigError) as err:
        load_agent_config(path)
    return str(err.value)


def line_of(path: Path, needle: str) -> int:
    lines = path.read_text(encoding="utf-8").splitlines()
    return next(i for i, line in enumerate(lines, start=1) if needle in line)


def test_bad_source_url_is_named_with_its_line(tmp_path: Path):
    path = write(
        tmp_path,
        '\n[[meters]]\nid = "A"\nsource = "modbus-tcp://10.0.0.5?unit=1"\n'
        '\n[[meters]]\nid = "B"\nsource = "modbus-tcp://10.0.0.5?unit=900"\n',
    )
    msg = error_of(path)
    assert msg.startswith(f"{path}:{line_of(path, 'unit=900')}: [meters #2] source:"), msg
    assert "1..247" in msg


def test_unknown_register_map_and_bad_max_block_are_named(tmp_path: Path):
    path = write(tmp_path, '\n[[meters]]\nid = "A"\nsource = "modbus-tcp://h?unit=1"\nregister_map = "acme_x1"\n')
    msg = error_of(path)
    assert f":{line_of(path, 'acme_x1')}: [meters #1] register_map:" in msg and "eastron_sdm630" in msg
    path = write(tmp_path, '\n[[meters]]\nid = "A"\nsource = "modbus-tcp://h?unit=1"\nmax_block = 200\n')
    assert f":{line_of(path, 'max_block')}: [meters #1] max_block:" in error_of(path)


def test_protocol_settings_must_match_the_source(tmp_path: Path):
    path = write(
        tmp_path,
        '\n[[meters]]\nid = "A"\nsource = "modbus-tcp://h?unit=1"\n'
        '[meters.fields]\npower_total = { path = "P", unit = "W" }\n',
    )
    assert "MQTT setting" in error_of(path)


def test_unknown_table_and_key_are_refused(tmp_path: Path):
    path = write(tmp_path, '\n[[meters]]\nid = "A"\nsource = "modbus-tcp://h?unit=1"\nintervall_s = 5\n')
    msg = error_of(path)
    assert f":{line_of(path, 'intervall_s')}: [meters #1] intervall_s: unknown setting" in msg


# -- edge status -----------------------------------------------------------------------------


def test_status_shows_queue_and_meters_while_the_queue_is_in_use(tmp_path: Path, capsys):
    import json
    import time

    from edge.poller import Observation, QueueSink
    from edge.queue import DurableQueue
    from edge.status import print_status

    cfg_path = write(
        tmp_path,
        '\n[[meters]]\nid = "A"\nsource = "modbus-tcp://h?unit=1"\n'
        '\n[[meters]]\nid = "B"\nsource = "modbus-tcp://h?unit=2"\n'
        '\n[[meters]]\nid = "C"\nsource = "modbus-tcp://h?unit=3"\n',
    )
    cfg = load_agent_config(cfg_path)
    queue = DurableQueue(cfg.queue, cfg.gateway_id)
    sink = QueueSink(queue, gap_report_s=60)
    a = new_meter_state(cfg.meters[0])
    now = time.time_ns()
    sink.commit([Observation(a, now - 10**9, good_values())])
    sink.commit([Observation(a, now, good_values() | {"voltage_l1": 232.0})])
    sink.failure("B", now, "timeout", "unit 2 at h:502 did not answer: check the unit id")
    assert print_status(cfg) == 0  # while the writer's connection is open
    out = capsys.readouterr().out
    assert "2 entries" in out and "A" in out and "timeout x1" in out and "never" in out
    assert print_status(cfg, as_json=True) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["meters_never_seen"] == ["C"]
    b = next(m for m in doc["meters"] if m["meter_id"] == "B")
    assert b["open_gap"]["reason"] == "timeout" and "unit id" in b["last_error"]
    queue.close()


def test_status_of_a_missing_queue_says_so(tmp_path: Path, capsys):
    from edge.status import print_status

    cfg = load_agent_config(write(tmp_path, '\n[[meters]]\nid = "A"\nsource = "modbus-tcp://h?unit=1"\n'))
    assert print_status(cfg) == 1
    assert str(cfg.queue) in capsys.readouterr().err


def test_the_deploy_example_config_is_valid_and_check_config_lists_every_meter(capsys):
    from gridtrace.cli import main

    example = Path(__file__).parent.parent / "deploy" / "agent.example.toml"
    cfg = load_agent_config(example)
    assert {m.protocol for m in cfg.meters} == {"modbus", "mqtt"}
    assert len(cfg.uplink.hubs) == 2
    # the example's key and CA files do not exist here: check-config must say so, exit 1
    assert main(["edge", "check-config", "--config", str(example)]) == 1
    captured = capsys.readouterr()
    for meter in cfg.meters:
        assert meter.id in captured.out
    assert "gateway.key" in captured.err and "does not exist" in captured.err


def test_malloc_arena_cap_respects_an_operators_setting(monkeypatch):
    from edge.footprint import limit_malloc_arenas

    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_malloc_arenas() is False
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    assert limit_malloc_arenas() is True  # glibc: Debian, the gateways' usual OS
