"""Modbus RTU end to end: the agent's RTU source and the simulator on two ends of a serial line.

The line is a socat pseudo-terminal pair (`serial_pair`), or, where the line itself must
misbehave (wrong baud rate, noise, a late meter), a relayed pair from `serialpair.Line`.
Every meter's values are compared with what the simulator holds at a fixed clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from edge.registermap import RegisterMap, load_register_map
from edge.sources.modbus import (
    MeterExceptionError,
    MeterGarbledError,
    MeterTimeoutError,
    ModbusRtuSource,
    ModbusRtuTarget,
    SerialSettings,
    open_source,
    parse_meter_url,
)
from firmware_sim.modbus_server import Fault, SerialLine, SimulatedModbusServer

from serialpair import Line, flip_bits, late_answers, uart_mismatch

SDM630 = load_register_map("eastron_sdm630")
SDM120 = load_register_map("eastron_sdm120")
T = 1_717_243_200.0  # 2024-06-01 12:00 UTC: PV meters export, counters well away from zero


@asynccontextmanager
async def meters_on(
    device: str, count: int = 3, *, register_map: str = "eastron_sdm630", baud: int = 9600, stopbits: int = 1
) -> AsyncIterator[SimulatedModbusServer]:
    # Parity stays N: the Linux pty driver cannot do parity (it clears PARENB, and
    # pyserial's next tcsetattr then fails), so E and O are only checked as settings.
    server = SimulatedModbusServer(
        "", 0, count, register_map=register_map, seed=5, clock=lambda: T,
        serial=SerialLine(device, baudrate=baud, stopbits=stopbits),
    )
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def expected(server: SimulatedModbusServer, unit: int, regmap: RegisterMap) -> dict[str, float]:
    values = server.meters[unit].advance(T)
    return {r.name: values.get(r.name, 0.0) for r in regmap.quantities}


def assert_same(read: dict[str, float], want: dict[str, float]) -> None:
    assert set(read) == set(want)
    for name, value in want.items():
        # float32 on the wire: about 7 significant digits
        assert read[name] == pytest.approx(value, rel=2e-7, abs=1e-6), name


def test_meters_on_one_bus_are_read_by_unit_id(serial_pair: tuple[str, str]) -> None:
    client_end, meter_end = serial_pair

    async def main() -> None:
        async with meters_on(meter_end, 4, baud=19200, stopbits=2) as server:
            target = parse_meter_url(f"modbus-rtu://{client_end}?unit=3&baud=19200&stopbits=2")
            assert isinstance(target, ModbusRtuTarget)
            source = open_source(target, timeout=0.5)
            assert isinstance(source, ModbusRtuSource) and source.endpoint == client_end
            try:
                for unit in (3, 1, 4, 2, 3):
                    assert_same(await source.read(unit, SDM630), expected(server, unit, SDM630))
                # one block per request, however small: the same values
                assert_same(await source.read(2, SDM630, max_block=2), expected(server, 2, SDM630))
            finally:
                await source.close()

    asyncio.run(main())


def test_a_single_phase_map_reads_its_meters_on_the_same_line(serial_pair: tuple[str, str]) -> None:
    client_end, meter_end = serial_pair

    async def main() -> None:
        async with meters_on(meter_end, 2, register_map="eastron_sdm120") as server:
            async with ModbusRtuSource(client_end, timeout=0.5) as source:
                for unit in (1, 2):
                    assert_same(await source.read(unit, SDM120), expected(server, unit, SDM120))

    asyncio.run(main())


def test_a_unit_without_a_meter_times_out_with_rtu_advice_and_the_bus_stays_in_step(
    serial_pair: tuple[str, str],
) -> None:
    client_end, meter_end = serial_pair

    async def main() -> None:
        async with meters_on(meter_end, 3) as server:
            server.set_fault(2, Fault.timeout())
            source = ModbusRtuSource(client_end, timeout=0.2)
            try:
                with pytest.raises(MeterTimeoutError) as err:
                    await source.read(9, SDM630)
                message = str(err.value)
                assert (err.value.unit, err.value.reason) == (9, "timeout")
                for what in (f"unit 9 on {client_end}", "unit id", "A/B", "termination",
                             "baud rate, parity and stop bits", "9600 8N1", "USB adapter"):
                    assert what in message, what
                # silent units between live ones: every live answer is still its own unit's
                for unit in (1, 2, 3, 9, 3, 2, 1):
                    if unit in (2, 9):
                        with pytest.raises(MeterTimeoutError):
                            await source.read(unit, SDM630)
                    else:
                        assert_same(await source.read(unit, SDM630), expected(server, unit, SDM630))
                server.set_fault(2, None)
                assert_same(await source.read(2, SDM630), expected(server, 2, SDM630))
            finally:
                await source.close()

    asyncio.run(main())


@pytest.mark.parametrize("code", [2, 4, 6])
def test_an_exception_fault_comes_back_as_its_code(serial_pair: tuple[str, str], code: int) -> None:
    client_end, meter_end = serial_pair

    async def main() -> None:
        async with meters_on(meter_end, 2) as server:
            server.set_fault(2, Fault.exception(code))
            async with ModbusRtuSource(client_end, timeout=0.5) as source:
                with pytest.raises(MeterExceptionError) as err:
                    await source.read(2, SDM630)
                assert (err.value.code, err.value.unit, err.value.reason) == (code, 2, f"modbus-exception-{code}")
                assert f"unit 2 on {client_end}" in str(err.value)
                if code == 2:
                    assert "register map 'eastron_sdm630'" in str(err.value)
                assert_same(await source.read(1, SDM630), expected(server, 1, SDM630))

    asyncio.run(main())


def test_read_registers_returns_the_raw_words(serial_pair: tuple[str, str]) -> None:
    client_end, meter_end = serial_pair

    async def main() -> None:
        async with meters_on(meter_end, 2) as server:
            words = SDM630.encode(expected(server, 2, SDM630))
            async with ModbusRtuSource(client_end, timeout=0.5) as source:
                for function in (4, 3):
                    raw = await source.read_registers(2, function, 0x0000, 6)
                    assert raw == [words[a] for a in range(0x0006)]
                raw = await source.read_registers(2, 4, 0x0156, 4)  # energy_total, as 2 words each
                assert raw == [words[a] for a in range(0x0156, 0x015A)]
                with pytest.raises(MeterExceptionError) as err:
                    await source.read_registers(2, 3, 40000, 2)  # no SunSpec marker on an SDM630
                assert err.value.code == 2
                assert "check the address and the function code" in str(err.value)
                assert "register map" not in str(err.value)

    asyncio.run(main())


@pytest.mark.parametrize(("client_baud", "meter_baud"), [(19200, 9600), (9600, 19200), (9600, 4800)])
def test_a_wrong_baud_rate_times_out_with_advice(client_baud: int, meter_baud: int) -> None:
    async def main() -> None:
        with Line(uart_mismatch(client_baud, meter_baud)) as line:
            async with meters_on(line.meters, 2, baud=meter_baud):
                source = open_source(
                    parse_meter_url(f"modbus-rtu://{line.client}?unit=1&baud={client_baud}"), timeout=0.3
                )
                try:
                    with pytest.raises((MeterTimeoutError, MeterGarbledError)) as err:
                        await source.read(1, SDM630)
                    assert "baud rate, parity and stop bits" in str(err.value)
                    assert f"{client_baud} 8N1" in str(err.value)
                finally:
                    await source.close()

    asyncio.run(main())


def test_the_relayed_line_carries_frames_when_both_ends_agree() -> None:
    """The control for the wrong-baud test: the same re-sampling relay at equal rates."""

    async def main() -> None:
        with Line(uart_mismatch(9600, 9600)) as line:
            async with meters_on(line.meters, 2) as server:
                async with ModbusRtuSource(line.client, timeout=0.5) as source:
                    assert_same(await source.read(2, SDM630), expected(server, 2, SDM630))

    asyncio.run(main())


def test_noise_on_the_answers_is_reported_as_garbled_and_the_line_recovers() -> None:
    noise = {"on": True}
    flip = flip_bits(mask=0x10, every=5)

    def wire(direction: str, data: bytes) -> list[tuple[str, bytes]]:
        return flip(direction, data) if noise["on"] else [(direction, data)]

    async def main() -> None:
        with Line(wire) as line:
            async with meters_on(line.meters, 2) as server:
                async with ModbusRtuSource(line.client, timeout=0.3) as source:
                    with pytest.raises(MeterGarbledError) as err:
                        await source.read(1, SDM630)
                    assert (err.value.unit, err.value.reason) == (1, "garbled")
                    assert err.value.received > 0
                    message = str(err.value)
                    assert f"{err.value.received} bytes" in message
                    for what in ("9600 8N1", "unit id", "shielding"):
                        assert what in message, what
                    noise["on"] = False
                    assert_same(await source.read(1, SDM630), expected(server, 1, SDM630))
                    assert_same(await source.read(2, SDM630), expected(server, 2, SDM630))

    asyncio.run(main())


def test_a_late_answer_is_not_taken_for_the_next_units() -> None:
    async def main() -> None:
        # Unit 2's answers arrive after the client gave up and asked the next unit.
        with Line(late_answers(unit=2)) as line:
            async with meters_on(line.meters, 3) as server:
                async with ModbusRtuSource(line.client, SerialSettings(), timeout=0.2) as source:
                    for unit in (1, 2, 3, 2, 1):
                        if unit == 2:
                            with pytest.raises(MeterTimeoutError):
                                await source.read(unit, SDM630)
                        else:
                            assert_same(await source.read(unit, SDM630), expected(server, unit, SDM630))

    asyncio.run(main())
