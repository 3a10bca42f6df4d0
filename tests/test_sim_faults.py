"""Faults of the meter simulator: their specs, and what each does to what the agent reads.

Every fault is shown through our own Modbus TCP source, against a twin `SimulatedMeter`
driven through the same times, with the simulator on an injected clock so nothing depends
on how fast the test runs.
"""

from __future__ import annotations

import argparse
import asyncio
import math
from collections.abc import Awaitable, Callable

import pytest
from firmware_sim.cli import add_commands
from firmware_sim.faults import FAULT_SPECS, Fault, FaultKind
from firmware_sim.meter import SimulatedMeter
from firmware_sim.modbus_server import SimulatedModbusServer, SimulatorError

from edge.registermap import load_register_map
from edge.sources.modbus import ModbusTcpSource

SDM630 = load_register_map("eastron_sdm630")
T0 = 1_717_200_000.0 + 9 * 3600  # 2024-06-01 09:00 UTC
# float32 counters of a few thousand kWh resolve to about a thousandth of a kWh
COUNTER_ABS = 0.004


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def with_server(
    body: Callable[[SimulatedModbusServer, ModbusTcpSource, FakeClock], Awaitable[None]], meters: int = 3
) -> None:
    clock = FakeClock(T0)

    async def main() -> None:
        async with SimulatedModbusServer("127.0.0.1", 0, meters, seed=4, clock=clock) as server:
            source = ModbusTcpSource("127.0.0.1", server.port, timeout=1.0)
            try:
                await body(server, source, clock)
            finally:
                await source.close()

    asyncio.run(main())


# -- specs -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "fault"),
    [
        ("timeout", Fault.timeout()),
        ("exception:4", Fault.exception(4)),
        ("stuck", Fault.stuck()),
        ("counter-reset", Fault.counter_reset()),
        ("counter-reset:600", Fault.counter_reset(600)),
        ("swapped-words", Fault.swapped_words()),
        ("clock-drift:50", Fault.clock_drift(50)),
        ("clock-drift:-120.5", Fault.clock_drift(-120.5)),
    ],
)
def test_every_fault_spec_parses_and_prints_back(spec: str, fault: Fault) -> None:
    assert Fault.parse(spec) == fault
    assert Fault.parse(f"  {spec.upper()} ") == fault
    assert str(fault) == spec
    assert Fault.parse(str(fault)) == fault


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("late", "is not one of"),
        ("stuck:3", "is not one of"),
        ("swapped", "is not one of"),
        ("timeout:1", "is not one of"),
        ("exception:9", "cannot be simulated"),
        ("clock-drift", "is not one of"),
        ("clock-drift:fast", "fast"),
        ("clock-drift:2000000", "ppm"),
        ("clock-drift:nan", "ppm"),
        ("counter-reset:-5", "seconds"),
        ("counter-reset:soon", "soon"),
    ],
)
def test_a_bad_fault_spec_is_named_in_the_error(spec: str, problem: str) -> None:
    with pytest.raises(ValueError) as err:
        Fault.parse(spec)
    assert repr(spec) in str(err.value)
    assert problem in str(err.value)


def test_every_documented_spec_form_is_in_the_error() -> None:
    with pytest.raises(ValueError) as err:
        Fault.parse("sleepy")
    for form in FAULT_SPECS:
        assert form in str(err.value)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kind": FaultKind.STUCK, "ppm": 3.0},
        {"kind": FaultKind.TIMEOUT, "code": 2},
        {"kind": FaultKind.CLOCK_DRIFT},
        {"kind": FaultKind.COUNTER_RESET},
        {"kind": FaultKind.SWAPPED_WORDS, "after_s": 1.0},
    ],
)
def test_a_fault_with_the_wrong_parameters_is_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Fault(**kwargs)  # type: ignore[arg-type]


def sim_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gridtrace")
    add_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def test_the_command_line_takes_every_fault() -> None:
    specs = ["1=stuck", "2=counter-reset:30", "3=swapped-words", "4=clock-drift:-80", "5=timeout", "6=exception:11"]
    args = sim_parser().parse_args(["sim", "modbus", "--port", "5020", "--meters", "6", *(f"--fault={s}" for s in specs)])
    expected = [(int(unit), spec) for unit, spec in (s.split("=") for s in specs)]
    assert [(unit, str(fault)) for unit, fault in args.fault] == expected


def test_the_command_line_names_a_bad_fault(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        sim_parser().parse_args(["sim", "modbus", "--port", "5020", "--fault", "2=clock-drift:fast"])
    err = capsys.readouterr().err
    assert "2=clock-drift:fast" in err and "fast" in err


def test_the_command_line_refuses_two_faults_on_one_unit(capsys: pytest.CaptureFixture[str]) -> None:
    args = sim_parser().parse_args(["sim", "modbus", "--port", "0", "--fault", "2=stuck", "--fault", "2=timeout"])
    assert args.func(args) == 2
    assert "unit 2 has two faults (stuck and timeout)" in capsys.readouterr().err


def test_a_fault_on_a_unit_without_a_meter_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    args = sim_parser().parse_args(["sim", "modbus", "--port", "0", "--meters", "2", "--fault", "5=stuck"])
    assert args.func(args) == 1
    err = capsys.readouterr().err
    assert "meter 5" in err and "1..2" in err


# -- the meter's own faults: clock drift and counter reset -----------------------------------


def net_kwh(before: dict[str, float], after: dict[str, float]) -> float:
    return (after["energy_import"] - after["energy_export"]) - (before["energy_import"] - before["energy_export"])


@pytest.mark.parametrize("ppm", [250_000.0, -100_000.0, 40.0])
def test_a_drifting_clock_scales_the_energy_the_meter_counts(ppm: float) -> None:
    true, drifting = SimulatedMeter.for_unit(2, 3), SimulatedMeter.for_unit(2, 3)
    a, b = true.advance(T0), drifting.advance(T0)
    drifting.set_clock_drift(ppm, T0)
    for step in range(1, 25):
        t = T0 + 600.0 * step
        assert drifting.clock(t) == pytest.approx(t + (t - T0) * ppm * 1e-6, abs=1e-6)
        # the meter measures the same power; only its sense of elapsed time is off
        assert drifting.advance(t)["power_total"] == true.advance(t)["power_total"]
    assert net_kwh(b, drifting.advance(t)) == pytest.approx(net_kwh(a, true.advance(t)) * (1 + ppm * 1e-6), rel=1e-9)
    assert drifting.clock_drift_ppm == ppm


def test_stopping_a_drift_keeps_the_offset_the_clock_gathered() -> None:
    meter = SimulatedMeter.for_unit(1, 1)
    meter.advance(T0)
    meter.set_clock_drift(1000.0, T0)
    meter.set_clock_drift(0.0, T0 + 3600.0)
    assert meter.clock(T0 + 3600.0) == pytest.approx(T0 + 3600.0 + 3.6)
    assert meter.clock(T0 + 7200.0) == pytest.approx(T0 + 7200.0 + 3.6)
    # drift set before the first reading starts the meter's clock there
    fresh = SimulatedMeter.for_unit(1, 1)
    fresh.set_clock_drift(-500.0, T0)
    assert fresh.clock(T0) == T0 and fresh.clock(T0 + 1000.0) == pytest.approx(T0 + 1000.0 - 0.5)
    with pytest.raises(ValueError, match="ppm"):
        meter.set_clock_drift(1e6, T0 + 7200.0)
    with pytest.raises(ValueError, match="backwards"):
        meter.set_clock_drift(10.0, T0)


def test_a_counter_reset_starts_from_zero_and_keeps_integrating() -> None:
    meter, twin = SimulatedMeter.for_unit(2, 5), SimulatedMeter.for_unit(2, 5)
    assert meter.advance(T0)["energy_import"] > 100.0
    twin.advance(T0)
    meter.reset_counters(T0 + 60.0)
    after = meter.advance(T0 + 60.0)
    assert all(after[n] == 0.0 for n in after if n.startswith("energy_"))
    later, twin_before, twin_later = meter.advance(T0 + 3 * 3600), twin.advance(T0 + 60.0), twin.advance(T0 + 3 * 3600)
    assert later["energy_import"] == pytest.approx(twin_later["energy_import"] - twin_before["energy_import"], rel=1e-9)
    assert later["energy_import"] > 0.0


# -- each fault as the agent reads it --------------------------------------------------------


def test_a_stuck_meter_serves_its_last_values_until_it_recovers() -> None:
    async def body(server: SimulatedModbusServer, source: ModbusTcpSource, clock: FakeClock) -> None:
        server.set_fault(1, Fault.stuck())  # stuck before anyone read it: frozen at the first reading
        first = await source.read(1, SDM630)
        assert 200.0 < first["voltage_l1"] < 260.0
        other = await source.read(2, SDM630)
        for _ in range(3):
            clock.now += 600.0
            assert await source.read(1, SDM630) == first
        assert await source.read(2, SDM630) != other, "the other meters go on"
        server.set_fault(1, None)
        recovered = await source.read(1, SDM630)
        assert recovered["energy_import"] > first["energy_import"]
        assert recovered["voltage_l1"] != first["voltage_l1"]

    with_server(body)


def test_a_counter_reset_shows_on_the_wire_once() -> None:
    async def body(server: SimulatedModbusServer, source: ModbusTcpSource, clock: FakeClock) -> None:
        twin = SimulatedMeter.for_unit(3, 4)
        before = await source.read(3, SDM630)
        twin.advance(clock.now)
        assert before["energy_import"] > 100.0
        server.set_fault(3, Fault.counter_reset(after_s=120.0))
        reset_at = clock.now + 120.0
        clock.now += 60.0
        assert (await source.read(3, SDM630))["energy_import"] >= before["energy_import"], "not yet"
        clock.now += 600.0
        after = await source.read(3, SDM630)
        twin.reset_counters(reset_at)
        expected = twin.advance(clock.now)
        assert 0.0 < after["energy_import"] < 1.0
        assert after["energy_import"] == pytest.approx(expected["energy_import"], rel=1e-5)
        assert after["energy_total"] == pytest.approx(expected["energy_total"], rel=1e-5)
        clock.now += 600.0
        again = await source.read(3, SDM630)
        assert again["energy_import"] > after["energy_import"], "it resets once, then counts on"
        assert str(server.faults()[3]) == "counter-reset:120"

    with_server(body)


def test_swapped_words_read_as_nonsense_until_the_order_is_flipped() -> None:
    async def body(server: SimulatedModbusServer, source: ModbusTcpSource, clock: FakeClock) -> None:
        good = await source.read(1, SDM630)
        server.set_fault(1, Fault.swapped_words())
        garbled = await source.read(1, SDM630)
        assert not SDM630.register("voltage_l1").plausible(garbled["voltage_l1"])
        assert sum(not SDM630.register(n).plausible(v) for n, v in garbled.items() if math.isfinite(v)) > 10
        assert await source.read(1, SDM630.with_orders("little")) == good
        server.set_fault(1, None)
        assert await source.read(1, SDM630) == good

    with_server(body)


def test_a_drifting_clock_makes_the_counters_run_ahead_of_the_true_energy() -> None:
    async def body(server: SimulatedModbusServer, source: ModbusTcpSource, clock: FakeClock) -> None:
        start = await source.read(2, SDM630)
        true = SimulatedMeter.for_unit(2, 4)
        true_start = true.advance(clock.now)
        set_at = clock.now
        server.set_fault(2, Fault.clock_drift(100_000))  # 10 %: a broken oscillator, to see it
        clock.now += 4 * 3600.0
        end = await source.read(2, SDM630)
        true_end = true.advance(clock.now)
        assert end["energy_import"] - start["energy_import"] == pytest.approx(
            1.1 * (true_end["energy_import"] - true_start["energy_import"]), abs=COUNTER_ABS
        )
        assert end["power_total"] == pytest.approx(true_end["power_total"], rel=1e-6)
        meter = server.meters[2]
        assert meter.clock(clock.now) == pytest.approx(clock.now + 0.1 * (clock.now - set_at))
        server.set_fault(2, None)
        clock.now += 3600.0
        assert meter.clock(clock.now) == pytest.approx(clock.now + 0.1 * 4 * 3600.0), "stays off"
        assert server.faults() == {}

    with_server(body)


def test_replacing_a_fault_undoes_the_old_one() -> None:
    async def body(server: SimulatedModbusServer, source: ModbusTcpSource, clock: FakeClock) -> None:
        server.set_fault(1, Fault.timeout())
        server.set_fault(1, Fault.swapped_words())
        assert server.faults() == {1: Fault.swapped_words()}
        garbled = await source.read(1, SDM630)
        server.set_fault(1, Fault.clock_drift(20))
        assert server.meters[1].clock_drift_ppm == 20
        server.set_fault(1, Fault.stuck())
        assert server.meters[1].clock_drift_ppm == 0
        assert await source.read(1, SDM630) != garbled

    with_server(body)


def test_set_fault_names_the_units_there_are() -> None:
    server = SimulatedModbusServer("127.0.0.1", 0, 2)
    with pytest.raises(SimulatorError, match="units 1..2"):
        server.set_fault(3, Fault.stuck())
