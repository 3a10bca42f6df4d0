"""`gridtrace edge probe`: one read, a table of decoded values, and advice that names the fix."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from dataclasses import replace

import pytest

from edge.probe import assess, probe_modbus
from edge.registermap import load_register_map
from edge.sources.modbus import MeterTimeoutError, ModbusTcpSource
from firmware_sim.modbus_server import Fault, SimulatedModbusServer

NOW = 1_760_000_000.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_with_sim(probe, meters: int = 2, fault: tuple[int, Fault] | None = None):
    async def main():
        server = SimulatedModbusServer("127.0.0.1", 0, meters, clock=lambda: NOW)
        if fault:
            server.set_fault(*fault)
        await server.start()
        source = ModbusTcpSource("127.0.0.1", server.port, timeout=0.3)
        try:
            return await probe(source)
        finally:
            await source.close()
            await server.stop()

    return asyncio.run(main())


def test_profile_read_gives_plausible_values_with_units():
    sdm630 = load_register_map("eastron_sdm630")
    result = run_with_sim(lambda src: probe_modbus(src, 1, sdm630))
    assert result.implausible == 0 and not result.advice
    rows = {r.name: r for r in result.rows}
    assert rows["voltage_l1"].unit == "V" and 200 < rows["voltage_l1"].value < 260
    assert len(rows) == len(sdm630.quantities)


def test_wrong_word_order_is_diagnosed_and_the_fix_named():
    # The engineer's map says little-endian words; the meter sends big-endian ones.
    wrong = load_register_map("eastron_sdm630").with_orders("little")
    wrong = replace(wrong, word_order="little")
    result = run_with_sim(lambda src: probe_modbus(src, 1, wrong))
    assert result.implausible > 0
    assert any('word_order = "big"' in line for line in result.advice), result.advice


def test_detect_finds_the_meter_model():
    result = run_with_sim(lambda src: probe_modbus(src, 2, None))
    assert result.map_name == "eastron_sdm630"
    assert any('register_map = "eastron_sdm630"' in line for line in result.advice), result.advice


def test_a_silent_unit_says_what_to_check():
    with pytest.raises(MeterTimeoutError) as err:
        run_with_sim(lambda src: probe_modbus(src, 9, None))
    assert "unit id" in str(err.value) and "baud" in str(err.value)


def test_assess_judges_each_value_against_its_range():
    sdm630 = load_register_map("eastron_sdm630")
    result = assess(sdm630, {"voltage_l1": 230.0, "frequency": 5000.0})
    flags = {r.name: r.plausible for r in result.rows}
    assert flags["voltage_l1"] and not flags["frequency"]
    assert result.implausible == 1 and result.read == 2


def test_probe_command_prints_a_table_and_exit_code_follows_the_outcome():
    port = free_port()
    sim = subprocess.Popen(
        [sys.executable, "-m", "gridtrace", "sim", "modbus", "--port", str(port), "--meters", "2"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert "serving" in sim.stdout.readline()
        ok = subprocess.run(
            [sys.executable, "-m", "gridtrace", "edge", "probe", f"modbus-tcp://127.0.0.1:{port}?unit=1",
             "--profile", "eastron_sdm630"],
            capture_output=True, text=True, timeout=60,
        )
        assert ok.returncode == 0, ok.stderr
        assert "voltage_l1" in ok.stdout and "kWh" in ok.stdout
        silent = subprocess.run(
            [sys.executable, "-m", "gridtrace", "edge", "probe", f"modbus-tcp://127.0.0.1:{port}?unit=7",
             "--profile", "eastron_sdm630", "--timeout", "0.3"],
            capture_output=True, text=True, timeout=60,
        )
        assert silent.returncode == 1 and "unit id" in silent.stderr
        bad = subprocess.run(
            [sys.executable, "-m", "gridtrace", "edge", "probe", "modbus-tcp://127.0.0.1?unit=0"],
            capture_output=True, text=True, timeout=60,
        )
        assert bad.returncode == 2 and "1..247" in bad.stderr
    finally:
        sim.terminate()
        sim.wait(10)
