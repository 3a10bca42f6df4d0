"""The meter simulator and the Modbus TCP source: dynamics, and both ends over real TCP."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

from edge.registermap import load_register_map
from edge.sources.modbus import (
    MeterConfigError,
    MeterExceptionError,
    MeterTimeoutError,
    MeterUnreachableError,
    ModbusTcpSource,
    ModbusTcpTarget,
    parse_meter_url,
)
from firmware_sim.cli import add_commands
from firmware_sim.meter import SLOT_S, SimulatedMeter, quantity_names
from firmware_sim.modbus_server import Fault, FaultKind, SimulatedModbusServer, SimulatorError

SDM630 = load_register_map("eastron_sdm630")
T0 = 1_717_200_000.0  # 2024-06-01 00:00 UTC, a Saturday; aligned to a slot boundary
DAY = 86_400.0


# -- simulator dynamics --------------------------------------------------------------------


def test_meter_quantities_are_the_sdm630_maps() -> None:
    assert set(quantity_names()) == {r.name for r in SDM630.registers}
    assert set(SimulatedMeter.for_unit(1, 7).advance(T0)) == set(quantity_names())


def assert_plausible(v: dict[str, float], tol: float = 1e-6) -> None:
    for n in (1, 2, 3):
        assert 215.0 <= v[f"voltage_l{n}"] <= 245.0
        s = v[f"apparent_power_l{n}"]
        assert v[f"current_l{n}"] == pytest.approx(s / v[f"voltage_l{n}"], rel=1e-3)
        assert abs(v[f"power_l{n}"]) <= s * (1 + tol)
        pf = v[f"power_factor_l{n}"]
        assert -1.0 <= pf <= 1.0
        # I = P / (V * pf)
        assert v[f"current_l{n}"] == pytest.approx(v[f"power_l{n}"] / (v[f"voltage_l{n}"] * pf), rel=1e-3)
        assert 370.0 <= v["voltage_l1_l2"] <= 425.0
    assert 49.95 <= v["frequency"] <= 50.05
    assert v["power_total"] == pytest.approx(v["power_l1"] + v["power_l2"] + v["power_l3"], rel=1e-3, abs=0.5)
    assert v["energy_total"] == pytest.approx(v["energy_import"] + v["energy_export"], rel=1e-6)
    assert 100.0 < v["energy_import"] < 200_000.0
    assert v["energy_export"] >= 0.0


def test_one_simulated_day_counters_are_the_integral_of_power() -> None:
    meter = SimulatedMeter.for_unit(2, seed=3)  # unit 2 has PV: it both imports and exports
    first = previous = meter.advance(T0)
    riemann_kwh = 0.0
    step = 10.0
    t = T0
    while t < T0 + DAY:
        t += step
        riemann_kwh += previous["power_total"] * step / 3.6e6
        v = meter.advance(t)
        for name in ("energy_import", "energy_export", "energy_total", "energy_reactive_import"):
            assert v[name] >= previous[name], f"{name} went down at t={t}"
        previous = v
        if int(t) % 3600 == 0:
            assert_plausible(v)
    net = (v["energy_import"] - v["energy_export"]) - (first["energy_import"] - first["energy_export"])
    # power is sampled only every 10 s here, so the Riemann sum is close, not exact
    assert net == pytest.approx(riemann_kwh, rel=0.01, abs=0.01)
    assert 1.0 < v["energy_import"] - first["energy_import"] < 100.0  # a few kWh a day
    assert v["energy_export"] > first["energy_export"], "a PV meter exports around noon"


def test_a_meter_without_pv_never_exports() -> None:
    meter = SimulatedMeter.for_unit(1, seed=3)
    first = meter.advance(T0 + 8 * 3600)
    for minute in range(1, 8 * 60):
        v = meter.advance(T0 + 8 * 3600 + 60 * minute)
        assert v["power_total"] > 0
    assert v["energy_export"] == first["energy_export"]
    assert v["energy_import"] > first["energy_import"]


def test_counters_are_exactly_the_integral_of_the_slotwise_power() -> None:
    meter = SimulatedMeter.for_unit(2, seed=3)
    t = T0 + 11 * 3600  # around noon, where a PV meter swings between import and export
    first = meter.advance(t)
    exact_kwh = 0.0
    for _ in range(int(3600 / SLOT_S)):
        exact_kwh += meter.power_at(t) * SLOT_S / 3.6e6
        t += SLOT_S
        meter.advance(t)
    last = meter.advance(t)
    net = (last["energy_import"] - last["energy_export"]) - (first["energy_import"] - first["energy_export"])
    assert net == pytest.approx(exact_kwh, rel=1e-9, abs=1e-9)


def test_counters_do_not_depend_on_how_often_the_meter_is_read() -> None:
    coarse = SimulatedMeter.for_unit(4, seed=9)
    fine = SimulatedMeter.for_unit(4, seed=9)
    coarse.advance(T0)
    fine.advance(T0)
    t = T0
    while t < T0 + 1800:
        t += 0.37
        fine.advance(t)
    end_fine = fine.advance(T0 + 1900.0)
    end_coarse = coarse.advance(T0 + 1900.0)
    for name in ("energy_import", "energy_export", "energy_reactive_import"):
        assert end_fine[name] == pytest.approx(end_coarse[name], rel=1e-12)
    assert end_fine["power_total"] == end_coarse["power_total"]


def test_same_seed_same_readings_other_seed_other_readings() -> None:
    times = [T0 + 13.7 * i for i in range(200)]
    m1, m2, m3 = (SimulatedMeter.for_unit(3, s) for s in (11, 11, 12))
    a = [m1.advance(t) for t in times]
    b = [m2.advance(t) for t in times]
    c = [m3.advance(t) for t in times]
    assert a == b
    assert a != c
    assert a[-1]["energy_import"] > a[0]["energy_import"]


def test_load_follows_the_time_of_day() -> None:
    meter = SimulatedMeter(1, 5, 500.0, profile="household")

    def mean_power(hour: float) -> float:
        samples = [T0 + day * DAY + hour * 3600 + minute * 60 for day in range(14) for minute in range(0, 60, 6)]
        return sum(meter.power_at(t) for t in samples) / len(samples)

    assert mean_power(19.0) > 2 * mean_power(3.5)


def test_time_must_not_go_backwards() -> None:
    meter = SimulatedMeter.for_unit(1, 1)
    meter.advance(T0)
    with pytest.raises(ValueError, match="backwards"):
        meter.advance(T0 - 1)


def test_meters_of_one_fleet_share_the_grid_frequency() -> None:
    freqs = {SimulatedMeter.for_unit(u, 2).advance(T0 + 100)["frequency"] for u in (1, 2, 3)}
    assert len(freqs) == 1


# -- faults and the command line -----------------------------------------------------------


def test_fault_parsing() -> None:
    assert Fault.parse("timeout") == Fault.timeout() == Fault(FaultKind.TIMEOUT)
    assert Fault.parse("exception:2") == Fault.exception(2)
    assert str(Fault.exception(11)) == "exception:11"
    for bad in ("late", "exception", "exception:x", "exception:9"):
        with pytest.raises(ValueError):
            Fault.parse(bad)


def sim_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gridtrace")
    add_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def test_cli_parses_the_documented_example() -> None:
    parser = sim_parser()
    args = parser.parse_args(
        ["sim", "modbus", "--port", "5020", "--meters", "3", "--fault", "2=timeout", "--fault", "3=exception:2"]
    )
    assert (args.port, args.meters, args.host, args.seed) == (5020, 3, "127.0.0.1", 1)
    assert args.fault == [(2, Fault.timeout()), (3, Fault.exception(2))]
    assert callable(args.func)
    modbus_parser = parser._subparsers._group_actions[0].choices["sim"]._subparsers._group_actions[0].choices["modbus"]  # type: ignore[union-attr]
    assert "gridtrace sim modbus --port" in modbus_parser.epilog
    assert isinstance(modbus_parser.formatter_class, type)
    assert issubclass(modbus_parser.formatter_class, argparse.RawDescriptionHelpFormatter)


@pytest.mark.parametrize("bad", [["--fault", "2=slow"], ["--fault", "x=timeout"], ["--meters", "0"], ["--port", "70000"]])
def test_cli_rejects_bad_arguments(bad: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        sim_parser().parse_args(["sim", "modbus", "--port", "5020", *bad])
    assert "error" in capsys.readouterr().err


# -- end to end over TCP -------------------------------------------------------------------


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@asynccontextmanager
async def serving(meters: int = 3, clock: Callable[[], float] | None = None) -> AsyncIterator[SimulatedModbusServer]:
    server = SimulatedModbusServer("127.0.0.1", 0, meters, seed=1, clock=clock)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_reads_every_quantity_of_every_unit() -> None:
    async def main() -> None:
        async with serving(3) as server:
            source = ModbusTcpSource("127.0.0.1", server.port, timeout=1.0)
            try:
                for unit in (1, 2, 3):
                    values = await source.read(unit, SDM630)
                    assert set(values) == {r.name for r in SDM630.registers}
                    assert_plausible(values, tol=1e-3)
                    assert values["energy_import"] == pytest.approx(
                        server.meters[unit].advance(server.meters[unit].time)["energy_import"], rel=1e-6
                    )
                # function 3 serves the same registers
                holding = await source.read(1, dataclasses.replace(SDM630, function=3))
                assert holding["voltage_l1"] == pytest.approx(values["voltage_l1"], abs=10)
            finally:
                await source.close()

    asyncio.run(main())


def test_energy_grows_between_reads() -> None:
    clock = FakeClock(T0 + 12 * 3600)

    async def main() -> None:
        async with serving(3, clock) as server:
            source = ModbusTcpSource("127.0.0.1", server.port)
            try:
                first = await source.read(1, SDM630)
                clock.now += 120.0
                second = await source.read(1, SDM630)
            finally:
                await source.close()
        assert second["energy_import"] > first["energy_import"]
        assert second["energy_total"] > first["energy_total"]

    asyncio.run(main())


def test_a_silent_unit_times_out_quickly_and_the_others_still_read() -> None:
    async def main() -> None:
        async with serving(3) as server:
            server.set_fault(2, Fault.timeout())
            source = ModbusTcpSource("127.0.0.1", server.port, timeout=0.3)
            try:
                assert await source.read(1, SDM630)
                started = time.monotonic()
                with pytest.raises(MeterTimeoutError) as err:
                    await source.read(2, SDM630)
                assert time.monotonic() - started < 3.0
                assert (err.value.unit, err.value.reason) == (2, "timeout")
                assert "unit 2" in str(err.value) and "unit id" in str(err.value)
                assert await source.read(1, SDM630)
                assert await source.read(3, SDM630)
                # enough timeouts in a row that pymodbus drops the connection: the next read reconnects
                for _ in range(6):
                    with pytest.raises(MeterTimeoutError):
                        await source.read(2, SDM630)
                assert await source.read(3, SDM630)
                server.set_fault(2, None)
                assert await source.read(2, SDM630)
            finally:
                await source.close()

    asyncio.run(main())


def test_an_unknown_unit_never_answers() -> None:
    async def main() -> None:
        async with serving(2) as server:
            source = ModbusTcpSource("127.0.0.1", server.port, timeout=0.3)
            try:
                with pytest.raises(MeterTimeoutError):
                    await source.read(7, SDM630)
                assert await source.read(2, SDM630)
            finally:
                await source.close()

    asyncio.run(main())


@pytest.mark.parametrize("code", [2, 4, 11])
def test_an_exception_fault_comes_back_as_its_code(code: int) -> None:
    async def main() -> None:
        async with serving(3) as server:
            server.set_fault(3, Fault.exception(code))
            source = ModbusTcpSource("127.0.0.1", server.port, timeout=1.0)
            try:
                with pytest.raises(MeterExceptionError) as err:
                    await source.read(3, SDM630)
                assert (err.value.code, err.value.unit, err.value.reason) == (code, 3, f"modbus-exception-{code}")
                if code == 2:
                    assert "register map 'eastron_sdm630'" in str(err.value)
                assert await source.read(1, SDM630)
            finally:
                await source.close()

    asyncio.run(main())


def test_reading_registers_the_meter_does_not_have_is_exception_2() -> None:
    async def main() -> None:
        wrong = dataclasses.replace(
            SDM630, name="wrong", registers=(dataclasses.replace(SDM630.registers[0], address=0x1000),)
        )
        async with serving(1) as server:
            source = ModbusTcpSource("127.0.0.1", server.port)
            try:
                with pytest.raises(MeterExceptionError) as err:
                    await source.read(1, wrong)
                assert err.value.code == 2
                assert "'wrong'" in str(err.value)
            finally:
                await source.close()

    asyncio.run(main())


def test_a_closed_port_is_unreachable() -> None:
    port = free_port()

    async def main() -> None:
        source = ModbusTcpSource("127.0.0.1", port, timeout=1.0)
        with pytest.raises(MeterUnreachableError) as err:
            await source.read(1, SDM630)
        assert err.value.reason == "unreachable"
        assert f"127.0.0.1:{port}" in str(err.value) and "firewall" in str(err.value)
        with pytest.raises(MeterUnreachableError):
            await source.connect()
        await source.close()

    asyncio.run(main())


def test_a_port_in_use_is_a_clear_simulator_error() -> None:
    async def main() -> None:
        async with serving(1) as server:
            with pytest.raises(SimulatorError, match="in use"):
                await SimulatedModbusServer("127.0.0.1", server.port, 1).start()

    asyncio.run(main())


def test_set_fault_on_a_unit_without_a_meter_is_refused() -> None:
    server = SimulatedModbusServer("127.0.0.1", 0, 2)
    with pytest.raises(SimulatorError, match="unit id 5"):
        server.set_fault(5, Fault.timeout())


def test_the_sim_command_serves_until_sigterm() -> None:
    code = (
        "import sys, argparse\n"
        "from firmware_sim.cli import add_commands\n"
        "p = argparse.ArgumentParser(prog='gridtrace')\n"
        "add_commands(p.add_subparsers(dest='command', required=True))\n"
        "a = p.parse_args(sys.argv[1:])\n"
        "sys.exit(a.func(a))\n"
    )
    port = free_port()
    with subprocess.Popen(
        [sys.executable, "-c", code, "sim", "modbus", "--port", str(port), "--meters", "2", "--fault", "2=timeout"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as proc:
        try:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            assert f"127.0.0.1:{port}" in line and "unit 2 timeout" in line, line

            async def main() -> None:
                source = ModbusTcpSource("127.0.0.1", port)
                try:
                    assert await source.read(1, SDM630)
                finally:
                    await source.close()

            asyncio.run(main())
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


# -- meter URLs ----------------------------------------------------------------------------


def test_meter_urls_parse() -> None:
    assert parse_meter_url("modbus-tcp://10.0.0.5:5020?unit=3") == ModbusTcpTarget("10.0.0.5", 5020, 3)
    assert parse_meter_url("modbus-tcp://gw.local?unit=247") == ModbusTcpTarget("gw.local", 502, 247)
    target = parse_meter_url("MODBUS-TCP://[::1]:1502/?unit=1")
    assert target == ModbusTcpTarget("::1", 1502, 1)
    assert target.url == "modbus-tcp://[::1]:1502?unit=1"
    assert parse_meter_url(target.url) == target


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("modbus-tcp://10.0.0.5:502", "no unit"),
        ("modbus-tcp://10.0.0.5:502?unit=0", "1..247"),
        ("modbus-tcp://10.0.0.5:502?unit=248", "1..247"),
        ("modbus-tcp://10.0.0.5:502?unit=one", "not a number"),
        ("modbus-tcp://10.0.0.5:502?unit=1&unit=2", "more than once"),
        ("modbus-tcp://10.0.0.5:502?unit=1&timeout=3", "timeout"),
        ("modbus-tcp://10.0.0.5:99999?unit=1", "port"),
        ("modbus-tcp://10.0.0.5:http?unit=1", "port"),
        ("modbus-tcp://:502?unit=1", "no host"),
        ("modbus-tcp://10.0.0.5/meter?unit=1", "path"),
        ("modbus-rtu:///dev/ttyUSB0?unit=1&baud=9600", "not supported yet"),
        ("mqtt://broker?unit=1", "unsupported scheme"),
        ("10.0.0.5:502", "not a meter URL"),
    ],
)
def test_bad_meter_urls_name_the_url_and_the_problem(url: str, problem: str) -> None:
    with pytest.raises(MeterConfigError) as err:
        parse_meter_url(url)
    assert url in str(err.value)
    assert problem in str(err.value)


def test_reading_an_invalid_unit_is_a_config_error() -> None:
    async def main() -> None:
        with pytest.raises(MeterConfigError, match="unit 0"):
            await ModbusTcpSource("127.0.0.1", 1).read(0, SDM630)

    asyncio.run(main())
