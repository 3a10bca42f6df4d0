"""The meter simulator and the Modbus TCP source: dynamics, and both ends over real TCP."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import math
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from firmware_sim.cli import add_commands
from firmware_sim.meter import SLOT_S, EvSession, SimulatedMeter, quantity_names
from firmware_sim.modbus_server import (
    Fault,
    FaultKind,
    SerialLine,
    SimulatedModbusServer,
    SimulatorError,
)
from firmware_sim.profiles import DeviceProfile, available_profiles, load_profile
from pymodbus.client import AsyncModbusSerialClient
from pymodbus.exceptions import ModbusIOException
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

SDM630 = load_register_map("eastron_sdm630")
SDM120 = load_register_map("eastron_sdm120")
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


# -- single-phase meters --------------------------------------------------------------------


def test_single_phase_quantities_are_the_sdm120_maps() -> None:
    assert set(quantity_names(1)) == {r.name for r in SDM120.quantities}
    assert set(SimulatedMeter.for_unit(1, 7, phases=1).advance(T0)) == set(quantity_names(1))
    with pytest.raises(ValueError, match="1 or 3 phases"):
        quantity_names(2)
    with pytest.raises(ValueError, match="1 or 3 phases"):
        SimulatedMeter(1, 1, 300.0, phases=2)


def test_a_single_phase_meter_reads_plausibly_through_a_day() -> None:
    meter = SimulatedMeter.for_unit(2, seed=4, phases=1)  # with PV: imports and exports
    assert 0 < meter.pv_peak_w <= 4500.0, "a single-phase inverter is small"
    first = previous = meter.advance(T0)
    riemann_kwh = 0.0
    t = T0
    while t < T0 + DAY:
        t += 60.0
        riemann_kwh += previous["power_total"] * 60.0 / 3.6e6
        v = meter.advance(t)
        assert 220.0 <= v["voltage_l1"] <= 240.0
        assert v["current_l1"] == pytest.approx(v["apparent_power_total"] / v["voltage_l1"], rel=1e-9)
        assert abs(v["power_total"]) <= v["apparent_power_total"] * (1 + 1e-9)
        assert v["power_factor_total"] == pytest.approx(v["power_total"] / v["apparent_power_total"], rel=1e-9)
        assert -1.0 <= v["power_factor_total"] <= 1.0
        assert 49.95 <= v["frequency"] <= 50.05
        assert v["energy_total"] == pytest.approx(v["energy_import"] + v["energy_export"], rel=1e-12)
        previous = v
    net = (v["energy_import"] - v["energy_export"]) - (first["energy_import"] - first["energy_export"])
    assert net == pytest.approx(riemann_kwh, rel=0.02, abs=0.02)
    assert v["energy_export"] > first["energy_export"]


def test_single_phase_fleets_are_all_households() -> None:
    for unit in range(1, 30):
        meter = SimulatedMeter.for_unit(unit, 3, phases=1)
        assert meter.profile == "household"
        assert meter.base_load_w < 1000.0


# -- EV charging ------------------------------------------------------------------------------


def ev_meter(seed: int = 5, charger_w: float = 11_000.0, **kw: object) -> SimulatedMeter:
    return SimulatedMeter(3, seed, 400.0, ev_charger_w=charger_w, **kw)  # type: ignore[arg-type]


def test_ev_sessions_are_mostly_in_the_evening_and_last_a_few_hours() -> None:
    meter = ev_meter()
    days = 200
    sessions = meter.ev_sessions(T0, T0 + days * DAY)
    assert 0.45 * days <= len(sessions) <= 0.75 * days, "a car charges on about 60 % of days"
    starts = [(s.start % DAY) / 3600.0 for s in sessions]
    assert all(8.0 <= h < 22.0 for h in starts)
    evening = sum(17.0 <= h < 22.0 for h in starts)
    assert evening >= 0.7 * len(sessions)
    for s in sessions:
        assert 0.5 * 3600 <= s.end - s.start <= 6 * 3600
        assert 0.85 * 11_000 <= s.power_w <= 11_000
        assert 5.0 <= s.energy_kwh <= 31.0
    assert sessions == sorted(sessions, key=lambda s: s.start)
    assert all(a.end <= b.start for a, b in itertools.pairwise(sessions)), "one car, one session at a time"


def test_ev_sessions_follow_local_time() -> None:
    utc = ev_meter().ev_sessions(T0, T0 + 30 * DAY)
    # UTC+2: the same local evenings happen two hours earlier in UTC
    cest = ev_meter(utc_offset_h=2.0).ev_sessions(T0, T0 + 30 * DAY)
    assert [s.start - 7200.0 for s in utc[1:-1]] == pytest.approx([s.start for s in cest[1:-1]])


def test_the_ev_adds_exactly_its_session_power() -> None:
    with_ev, without = ev_meter(), ev_meter(charger_w=0.0)
    assert without.ev_sessions(T0, T0 + 30 * DAY) == []
    for session in with_ev.ev_sessions(T0, T0 + 30 * DAY):
        inside = math.floor((session.start + session.end) / 2)
        assert with_ev.power_at(inside) - without.power_at(inside) == pytest.approx(session.power_w)
        outside = session.end + 60.0
        if not with_ev.ev_sessions(outside, outside + 1):
            assert with_ev.power_at(outside) == without.power_at(outside)


def test_a_session_runs_on_past_midnight() -> None:
    meter = ev_meter(seed=8)
    late = [s for s in meter.ev_sessions(T0, T0 + 200 * DAY) if s.start // DAY != s.end // DAY]
    assert late, "some evening sessions end after midnight"
    session = late[0]
    after_midnight = (session.end // DAY) * DAY + 1.0
    assert meter.ev_sessions(after_midnight, after_midnight + 1) == [session]
    assert meter.power_at(after_midnight) >= session.power_w


def test_counters_are_the_exact_integral_of_power_across_ev_sessions() -> None:
    meter = ev_meter(seed=6)
    session = meter.ev_sessions(T0, T0 + 10 * DAY)[0]
    start = math.floor(session.start / SLOT_S) * SLOT_S - 900.0
    end = math.ceil(session.end / SLOT_S) * SLOT_S + 900.0
    first = meter.advance(start)
    exact_kwh = sum(meter.power_at(k * SLOT_S) for k in range(int(start / SLOT_S), int(end / SLOT_S))) * SLOT_S / 3.6e6
    t = start
    while t < end:
        t = min(t + 7.3, end)  # irregular reads, not aligned to slots
        meter.advance(t)
    last = meter.advance(end)
    net = (last["energy_import"] - last["energy_export"]) - (first["energy_import"] - first["energy_export"])
    assert net == pytest.approx(exact_kwh, rel=1e-9)
    # and the car's share of it is the session's energy, to within the one-second slots
    twin = ev_meter(seed=6, charger_w=0.0)
    base = twin.advance(start)
    base_end = twin.advance(end)
    car_kwh = net - ((base_end["energy_import"] - base_end["energy_export"]) - (base["energy_import"] - base["energy_export"]))
    assert car_kwh == pytest.approx(session.energy_kwh, abs=2 * session.power_w / 3.6e6)


def test_ev_sessions_are_deterministic_per_seed() -> None:
    a = ev_meter(seed=21).ev_sessions(T0, T0 + 60 * DAY)
    b = ev_meter(seed=21).ev_sessions(T0, T0 + 60 * DAY)
    c = ev_meter(seed=22).ev_sessions(T0, T0 + 60 * DAY)
    assert a == b and a != c
    # asking for a window computes the same sessions as asking for all of them
    window = ev_meter(seed=21).ev_sessions(T0 + 20 * DAY, T0 + 21 * DAY)
    assert window == [s for s in a if s.start < T0 + 21 * DAY and s.end > T0 + 20 * DAY]
    assert all(isinstance(s, EvSession) for s in window)


def test_every_seventh_meter_of_a_fleet_has_an_ev_charger() -> None:
    chargers = {u: SimulatedMeter.for_unit(u, 3).ev_charger_w for u in range(1, 30)}
    assert {u for u, w in chargers.items() if w > 0} == {4, 11, 18, 25}
    assert all(7000.0 <= w <= 11000.0 for w in chargers.values() if w > 0)
    single = SimulatedMeter.for_unit(11, 3, phases=1).ev_charger_w
    assert 3700.0 <= single <= 7400.0
    assert SimulatedMeter.for_unit(11, 3, ev_every=0).ev_charger_w == 0.0
    assert {u for u in range(1, 30) if SimulatedMeter.for_unit(u, 3, ev_every=3).ev_charger_w} == set(range(1, 30, 3))
    # adding a charger leaves the rest of the meter as it was
    no_ev = SimulatedMeter.for_unit(4, 3, ev_every=0)
    ev = SimulatedMeter.for_unit(4, 3)
    quiet = next(t for t in (T0 + 3600 * h for h in range(48)) if not ev.ev_sessions(t, t + 1))
    assert ev.power_at(quiet) == no_ev.power_at(quiet)


def test_a_negative_ev_charger_is_refused() -> None:
    with pytest.raises(ValueError, match="ev_charger_w"):
        SimulatedMeter(1, 1, 300.0, ev_charger_w=-1.0)


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


# -- every device profile, served and read back ------------------------------------------------


def resolution(profile: DeviceProfile, name: str) -> float:
    """The smallest step a register can show, in the quantity's units (0 for floats)."""
    reg = profile.register_map.register(name)
    if reg.type.startswith("float"):
        return 0.0
    sf = profile.scale_factors.get(reg.scale_register, 0) if reg.scale_register else 0
    return abs(reg.scale) * 10.0**sf


@pytest.mark.parametrize("name", available_profiles())
def test_every_built_in_profile_serves_what_the_meter_shows(name: str) -> None:
    profile = load_profile(name)
    clock = FakeClock(T0 + 13 * 3600)  # PV meters export, EVs are off
    units = (1, 2, 4, 5)  # a household, PV, an EV charger, a business with PV

    async def main() -> None:
        server = SimulatedModbusServer("127.0.0.1", 0, 5, register_map=name, seed=2, clock=clock)
        async with server:
            source = ModbusTcpSource("127.0.0.1", server.port, timeout=1.0)
            try:
                for unit in units:
                    got = await source.read(unit, profile.register_map)
                    twin = SimulatedMeter.for_unit(unit, 2, phases=profile.phases).advance(clock.now)
                    assert set(got) == {r.name for r in profile.register_map.quantities}
                    for quantity, value in got.items():
                        if quantity not in twin:
                            # SunSpec marks what a meter lacks as not implemented, others read 0
                            assert value == 0.0 or (math.isnan(value) and profile.register_map.not_implemented == "sunspec")
                            continue
                        step = resolution(profile, quantity)
                        assert value == pytest.approx(twin[quantity], rel=1e-6, abs=step / 2 + 1e-9), (unit, quantity)
            finally:
                await source.close()

    asyncio.run(main())


def test_a_single_phase_map_gets_single_phase_meters() -> None:
    server = SimulatedModbusServer("127.0.0.1", 0, 2, register_map="eastron_sdm120")
    assert server.profile.phases == 1
    assert all(m.phases == 1 for m in server.meters.values())
    assert load_profile("eastron_sdm630").phases == 3


def test_a_sunspec_device_is_discovered_by_the_agent() -> None:
    from edge.sunspec import MARKER, discover

    async def main() -> None:
        async with SimulatedModbusServer("127.0.0.1", 0, 2, register_map="sunspec", clock=FakeClock(T0)) as server:
            source = ModbusTcpSource("127.0.0.1", server.port, timeout=1.0)
            try:
                assert await source.read_registers(2, 3, 40000, 2) == list(MARKER)
                device = await discover(lambda f, a, c: source.read_registers(2, f, a, c))
                assert [m.id for m in device.models] == [1, 203]
                assert device.common.manufacturer == "gridtrace-sim" and device.end_marker
                values = await source.read(2, device.register_map())
                assert 220.0 < values["voltage_l1"] < 240.0
                with pytest.raises(MeterExceptionError) as err:
                    await source.read_registers(2, 3, 0, 2)  # no marker at 0: nothing there
                assert err.value.code == 2
            finally:
                await source.close()

    asyncio.run(main())


def test_a_register_map_file_of_ones_own_is_served(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text(
        '[map]\nname = "mine"\nvendor = "Acme"\nmodel = "M1"\nfunction = 3\nword_order = "little"\n'
        'byte_order = "big"\n\n'
        '[[register]]\nname = "power_total"\naddress = 100\ntype = "int32"\nunit = "W"\nscale = 0.1\n\n'
        '[[register]]\nname = "energy_import"\naddress = 102\ntype = "uint32"\nunit = "kWh"\nscale = 0.01\n'
        'kind = "counter"\n\n'
        '[[register]]\nname = "temperature"\naddress = 104\ntype = "int16"\nunit = "C"\n'
    )
    clock = FakeClock(T0 + 20 * 3600)

    async def main() -> None:
        async with SimulatedModbusServer("127.0.0.1", 0, 1, register_map=str(path), clock=clock) as server:
            regmap = server.register_map
            source = ModbusTcpSource("127.0.0.1", server.port, timeout=1.0)
            try:
                got = await source.read(1, regmap)
            finally:
                await source.close()
        twin = SimulatedMeter.for_unit(1, 1, phases=1).advance(clock.now)
        assert got["power_total"] == pytest.approx(twin["power_total"], abs=0.05)
        assert got["energy_import"] == pytest.approx(twin["energy_import"], abs=0.005)
        assert got["temperature"] == 0.0  # the simulated meter has no thermometer

    asyncio.run(main())


def test_values_beyond_a_register_saturate_instead_of_failing() -> None:
    regmap = dataclasses.replace(
        SDM630,
        name="tiny",
        registers=(
            dataclasses.replace(SDM630.register("power_total"), address=0, type="int16"),
            dataclasses.replace(SDM630.register("energy_import"), address=1, type="uint16", scale=0.1),
        ),
    )
    profile = DeviceProfile.from_register_map(regmap)
    words = profile.encode({"power_total": -40_000.0, "energy_import": 1e9})
    assert regmap.decode(0, [words[0], words[1]]) == {"power_total": -32767.0, "energy_import": pytest.approx(6553.4)}
    words = profile.encode({"power_total": float("nan")})
    assert regmap.decode(0, [words[0], words[1]]) == {"power_total": 0.0, "energy_import": 0.0}


def test_profile_spans_bridge_small_gaps_and_cover_fixed_words() -> None:
    profile = DeviceProfile("t", SDM630, fixed_words={1000: 7, 1001: 8, 1005: 9})
    assert profile.spans == [(0, 80), (200, 8), (224, 2), (342, 4), (1000, 6)]
    words = profile.encode({})
    assert (words[1000], words[1001], words[1005]) == (7, 8, 9)
    assert words[0] == 0 and SDM630.decode(0, [words[0], words[1]]) == {"voltage_l1": 0.0}
    with pytest.raises(ValueError, match="fixed word"):
        DeviceProfile("t", SDM630, fixed_words={70000: 1})


def test_an_unknown_profile_names_the_ones_there_are() -> None:
    with pytest.raises(SimulatorError) as err:
        SimulatedModbusServer("127.0.0.1", 0, 1, register_map="eastron_sdm999")
    assert "eastron_sdm630" in str(err.value) and "sunspec" in str(err.value) and ".toml" in str(err.value)


# -- Modbus RTU over a pseudo-terminal pair -------------------------------------------------


def test_serves_modbus_rtu_on_a_serial_line(serial_pair: tuple[str, str]) -> None:
    sim_end, client_end = serial_pair
    clock = FakeClock(T0 + 12 * 3600)

    async def main() -> None:
        # Parity N and 8 data bits: Linux ptys force 8N and refuse other settings (EINVAL),
        # so the line settings beyond baud rate and stop bits cannot be exercised here.
        line = SerialLine(sim_end, baudrate=19200, stopbits=2)
        server = SimulatedModbusServer("", 0, 3, seed=1, clock=clock, serial=line)
        await server.start()
        client = AsyncModbusSerialClient(client_end, baudrate=19200, stopbits=2, timeout=0.3, retries=0)
        try:
            assert await client.connect()
            reads = {}
            for unit in (1, 2, 3):
                words = []
                for block in SDM630.plan():
                    rr = await client.read_input_registers(block.start, count=block.count, device_id=unit)
                    assert not rr.isError(), rr
                    words.append((block, rr.registers))
                reads[unit] = SDM630.decode_blocks(words)
                assert_plausible(reads[unit], tol=1e-3)
            # the same words the TCP server would serve at that instant
            twin = SimulatedMeter.for_unit(2, seed=1).advance(clock.now)
            for name in ("voltage_l1", "power_total", "energy_import"):
                assert reads[2][name] == pytest.approx(twin[name], rel=1e-6)
            assert reads[1] != reads[2]
            # an empty address on the bus and a timeout fault are both silence
            server.set_fault(3, Fault.timeout())
            for unit in (3, 9):
                with pytest.raises(ModbusIOException):
                    await client.read_input_registers(0, count=2, device_id=unit)
            server.set_fault(2, Fault.exception(4))
            rr = await client.read_input_registers(0, count=2, device_id=2)
            assert rr.isError() and rr.exception_code == 4
            # the bus still works after silence and errors
            rr = await client.read_holding_registers(0, count=2, device_id=1)
            assert not rr.isError()
        finally:
            client.close()
            await server.stop()

    asyncio.run(main())


def test_a_missing_serial_device_is_a_clear_simulator_error(tmp_path: Path) -> None:
    async def main() -> None:
        server = SimulatedModbusServer("", 0, 1, serial=SerialLine(str(tmp_path / "ttyUSB9")))
        with pytest.raises(SimulatorError, match="ttyUSB9.*exists"):
            await server.start()

    asyncio.run(main())


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ({"port": ""}, "no device"),
        ({"port": "/dev/ttyUSB0", "parity": "X"}, "parity"),
        ({"port": "/dev/ttyUSB0", "stopbits": 3}, "stop bits"),
        ({"port": "/dev/ttyUSB0", "bytesize": 5}, "byte size"),
        ({"port": "/dev/ttyUSB0", "baudrate": 0}, "baud"),
    ],
)
def test_bad_serial_settings_are_named(line: dict[str, object], problem: str) -> None:
    with pytest.raises(SimulatorError, match=problem):
        SerialLine(**line)  # type: ignore[arg-type]


def test_cli_takes_a_serial_device_instead_of_a_port() -> None:
    args = sim_parser().parse_args(["sim", "modbus", "--serial", "/dev/ttyUSB0", "--baud", "19200", "--parity", "E"])
    assert (args.serial, args.baud, args.parity, args.stopbits, args.bytesize, args.port) == (
        "/dev/ttyUSB0", 19200, "E", 1, 8, None
    )


def test_cli_needs_a_port_or_a_serial_device(capsys: pytest.CaptureFixture[str]) -> None:
    args = sim_parser().parse_args(["sim", "modbus"])
    assert args.func(args) == 2
    assert "--port" in capsys.readouterr().err


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
