"""Modbus sources without a serial line: meter URLs, bus grouping, request limits, and the
errors an engineer sees for a serial device that is missing, busy or not a serial port."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import os
import subprocess
import sys
import types
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from pymodbus.client import AsyncModbusSerialClient

from edge.registermap import ReadBlock, Register, load_register_map
from edge.sources import SCHEMES, parse_source_url
from edge.sources.modbus import (
    BAUD_RATES,
    MeterConfigError,
    MeterExceptionError,
    MeterUnreachableError,
    ModbusRtuSource,
    ModbusRtuTarget,
    ModbusSource,
    ModbusTcpSource,
    ModbusTcpTarget,
    SerialSettings,
    group_by_bus,
    open_source,
    parse_meter_url,
)
from firmware_sim.modbus_server import SimulatedModbusServer

SDM630 = load_register_map("eastron_sdm630")
T = 1_717_243_200.0


# -- meter URLs ----------------------------------------------------------------------------


def test_rtu_urls_parse_with_defaults_and_canonical_form() -> None:
    target = parse_meter_url("modbus-rtu:///dev/ttyUSB0?unit=1")
    assert target == ModbusRtuTarget("/dev/ttyUSB0", 1, SerialSettings(9600, "N", 1, 8))
    assert target.url == "modbus-rtu:///dev/ttyUSB0?unit=1&baud=9600&parity=N&stopbits=1&bytesize=8"
    assert target.bus_key == ("rtu", "/dev/ttyUSB0")
    assert target.endpoint == "/dev/ttyUSB0"
    assert str(target.serial) == "9600 8N1"

    full = parse_meter_url("MODBUS-RTU:///dev/ttyAMA0?baud=19200&parity=e&stopbits=2&bytesize=8&unit=247")
    assert full == ModbusRtuTarget("/dev/ttyAMA0", 247, SerialSettings(19200, "E", 2, 8))
    assert str(full.serial) == "19200 8E2"
    for t in (target, full):
        assert parse_meter_url(t.url) == t


def test_rtu_urls_take_stable_device_paths() -> None:
    by_path = "/dev/serial/by-path/pci-0000:00:14.0-usb-0:2:1.0-port0"
    target = parse_meter_url(f"modbus-rtu://{by_path}?unit=4&parity=O")
    assert isinstance(target, ModbusRtuTarget)
    assert (target.device, target.unit, target.serial.parity) == (by_path, 4, "O")
    assert parse_meter_url(target.url) == target
    spaced = parse_meter_url("modbus-rtu:///dev/serial/by-id/usb-FTDI%20RS485-if00?unit=2")
    assert spaced.device == "/dev/serial/by-id/usb-FTDI RS485-if00"  # type: ignore[union-attr]
    assert parse_meter_url(spaced.url) == spaced


def test_tcp_targets_have_a_bus_key_per_endpoint() -> None:
    a = parse_meter_url("modbus-tcp://10.0.0.5?unit=1")
    b = parse_meter_url("modbus-tcp://10.0.0.5:502?unit=2")
    c = parse_meter_url("modbus-tcp://10.0.0.5:5020?unit=1")
    assert isinstance(a, ModbusTcpTarget)
    assert a.bus_key == b.bus_key == ("tcp", "10.0.0.5", 502) != c.bus_key


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("modbus-rtu://ttyUSB0?unit=1", "three slashes"),
        ("modbus-rtu://dev/ttyUSB0?unit=1", "three slashes"),
        ("modbus-rtu://user@/dev/ttyUSB0?unit=1", "three slashes"),
        ("modbus-rtu://?unit=1", "no serial device"),
        ("modbus-rtu:///?unit=1", "no serial device"),
        ("modbus-rtu:///dev/?unit=1", "ends in '/'"),
        ("modbus-rtu:///dev/ttyUSB0", "no unit id"),
        ("modbus-rtu:///dev/ttyUSB0?unit=0", "expected 1..247"),
        ("modbus-rtu:///dev/ttyUSB0?unit=x", "not a number"),
        ("modbus-rtu:///dev/ttyUSB0?unit=1&baudrate=9600", "unknown parameter(s) baudrate; the parameters are unit, baud, parity, stopbits, bytesize"),
        ("modbus-rtu:///dev/ttyUSB0?unit=1&baud=9600&baud=19200", "baud is given more than once"),
        ("modbus-rtu:///dev/ttyUSB0?unit=1&baud=fast", "baud 'fast' is not a number"),
        ("modbus-rtu:///dev/ttyUSB0?unit=1&baud=9601", "baud 9601 is not a standard rate; expected one of 1200, 2400"),
        ("modbus-rtu:///dev/ttyUSB0?unit=1&parity=X", "parity 'X' is not N (none), E (even) or O (odd)"),
        ("modbus-rtu:///dev/ttyUSB0?unit=1&parity=", "parity '' is not N"),
        ("modbus-rtu:///dev/ttyUSB0?unit=1&stopbits=1.5", "stopbits '1.5' is not 1 or 2"),
        ("modbus-rtu:///dev/ttyUSB0?unit=1&stopbits=3", "stopbits '3' is not 1 or 2"),
        ("modbus-rtu:///dev/ttyUSB0?unit=1&bytesize=7", "bytesize '7' cannot carry Modbus RTU"),
        ("modbus-rtu:///dev/ttyUSB0?unit=1#x", "fragment"),
        ("modbus-udp://10.0.0.5?unit=1", "expected modbus-tcp:// (e.g. modbus-tcp://192.168.1.50:502?unit=1) or modbus-rtu://"),
        ("/dev/ttyUSB0", "not a meter URL; expected modbus-tcp://host:port?unit=N"),
    ],
)
def test_bad_rtu_urls_name_the_url_and_the_problem(url: str, problem: str) -> None:
    with pytest.raises(MeterConfigError) as err:
        parse_meter_url(url)
    assert str(err.value).startswith(f"meter URL {url!r}: ")
    assert problem in str(err.value)


def test_bytesize_7_is_explained_as_modbus_ascii() -> None:
    with pytest.raises(MeterConfigError, match=r"always sends 8 data bits \(7 is Modbus ASCII\)"):
        parse_meter_url("modbus-rtu:///dev/ttyUSB0?unit=1&bytesize=7")


def test_every_standard_baud_rate_is_accepted() -> None:
    for baud in BAUD_RATES:
        target = parse_meter_url(f"modbus-rtu:///dev/ttyS0?unit=1&baud={baud}")
        assert target.serial.baudrate == baud  # type: ignore[union-attr]


def test_serial_settings_check_themselves_and_know_their_timing() -> None:
    assert SerialSettings().char_time == pytest.approx(10 / 9600)
    assert SerialSettings(parity="E").char_time == pytest.approx(11 / 9600)
    assert SerialSettings().frame_gap == pytest.approx(3.5 * 10 / 9600)
    assert SerialSettings(38400).frame_gap == 0.00175  # fixed above 19200 baud
    assert SerialSettings(19200, "E", 2).differences(SerialSettings()) == [
        "baud 19200 vs 9600", "parity E vs N", "stop bits 2 vs 1"
    ]
    for bad, problem in [
        ({"baudrate": 9000}, "not a standard rate"),
        ({"parity": "n"}, r"not N \(none\)"),
        ({"stopbits": 0}, "not 1 or 2"),
        ({"bytesize": 7}, "cannot carry Modbus RTU"),
    ]:
        with pytest.raises(MeterConfigError, match=problem):
            SerialSettings(**bad)  # type: ignore[arg-type]


# -- any source URL ------------------------------------------------------------------------


def test_parse_source_url_dispatches_modbus_urls() -> None:
    assert parse_source_url("modbus-tcp://gw?unit=3") == ModbusTcpTarget("gw", 502, 3)
    assert parse_source_url("modbus-rtu:///dev/ttyUSB1?unit=3") == ModbusRtuTarget("/dev/ttyUSB1", 3)


def test_parse_source_url_hands_mqtt_urls_to_the_mqtt_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []
    fake = types.ModuleType("edge.sources.mqtt_url")
    fake.parse_mqtt_url = lambda url: seen.append(url) or ("mqtt target", url)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "edge.sources.mqtt_url", fake)
    assert parse_source_url("mqtt://broker/meters/1") == ("mqtt target", "mqtt://broker/meters/1")
    assert parse_source_url("MQTTS://broker/meters/2") == ("mqtt target", "MQTTS://broker/meters/2")
    assert seen == ["mqtt://broker/meters/1", "MQTTS://broker/meters/2"]


def test_parse_source_url_reads_mqtt_urls_with_the_mqtt_module() -> None:
    from edge.sources.mqtt import MqttTarget

    assert isinstance(parse_source_url("mqtt://broker.local/meters/house-7"), MqttTarget)
    # the examples the error messages offer all work
    for example in SCHEMES.values():
        parse_source_url(example)


@pytest.mark.parametrize(
    ("url", "problem"),
    [("http://meter.local/", "unsupported scheme 'http'"), ("gw:502", "not a meter URL"), ("", "not a meter URL")],
)
def test_parse_source_url_lists_the_supported_schemes(url: str, problem: str) -> None:
    with pytest.raises(MeterConfigError) as err:
        parse_source_url(url)
    message = str(err.value)
    assert f"meter URL {url!r}" in message and problem in message
    for example in ("modbus-tcp://192.168.1.50:502?unit=1", "modbus-rtu:///dev/ttyUSB0?unit=1", "mqtt://", "mqtts://"):
        assert example in message


def test_modbus_only_use_never_imports_the_mqtt_client() -> None:
    code = (
        "import sys\n"
        "from edge.sources import SCHEMES, parse_source_url\n"
        "from edge.sources.modbus import open_source\n"
        "open_source(parse_source_url('modbus-rtu:///dev/ttyUSB0?unit=1'))\n"
        "open_source(parse_source_url('modbus-tcp://gw?unit=1'))\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(('paho', 'edge.sources.mqtt')))\n"
        "print(loaded)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).parent.parent)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


# -- buses ---------------------------------------------------------------------------------


def test_group_by_bus_keeps_the_configured_order() -> None:
    meters = [
        ("a", parse_meter_url("modbus-rtu:///dev/ttyUSB0?unit=2")),
        ("b", parse_meter_url("modbus-tcp://10.0.0.5?unit=2")),
        ("c", parse_meter_url("modbus-rtu:///dev/ttyUSB0?unit=1&baud=9600&parity=N")),
        ("d", parse_meter_url("modbus-rtu:///dev/ttyUSB1?unit=1&baud=19200")),
        ("e", parse_meter_url("modbus-tcp://10.0.0.5:502?unit=7")),
    ]
    groups = group_by_bus(meters)
    assert {key: [name for name, _ in group] for key, group in groups.items()} == {
        ("rtu", "/dev/ttyUSB0"): ["a", "c"],
        ("tcp", "10.0.0.5", 502): ["b", "e"],
        ("rtu", "/dev/ttyUSB1"): ["d"],
    }
    assert list(groups) == [("rtu", "/dev/ttyUSB0"), ("tcp", "10.0.0.5", 502), ("rtu", "/dev/ttyUSB1")]


@pytest.mark.parametrize(
    ("second", "difference"),
    [
        ("modbus-rtu:///dev/ttyUSB0?unit=2&baud=19200", "baud 9600 vs 19200"),
        ("modbus-rtu:///dev/ttyUSB0?unit=2&parity=E", "parity N vs E"),
        ("modbus-rtu:///dev/ttyUSB0?unit=2&stopbits=2&baud=4800", "baud 9600 vs 4800, stop bits 1 vs 2"),
    ],
)
def test_meters_on_one_serial_device_must_agree_on_its_settings(second: str, difference: str) -> None:
    meters = [
        ("house-1", parse_meter_url("modbus-rtu:///dev/ttyUSB0?unit=1")),
        ("pv-roof", parse_meter_url("modbus-tcp://10.0.0.9?unit=1")),
        ("house-2", parse_meter_url(second)),
    ]
    with pytest.raises(MeterConfigError) as err:
        group_by_bus(meters)
    message = str(err.value)
    assert "meters 'house-1' and 'house-2' share serial device /dev/ttyUSB0" in message
    assert difference in message
    assert meters[0][1].url in message and meters[2][1].url in message
    assert "pv-roof" not in message


@pytest.mark.parametrize(
    ("a", "b", "where"),
    [
        ("modbus-rtu:///dev/ttyUSB0?unit=5", "modbus-rtu:///dev/ttyUSB0?unit=5&baud=9600", "/dev/ttyUSB0"),
        ("modbus-tcp://gw?unit=5", "modbus-tcp://gw:502?unit=5", "gw:502"),
    ],
)
def test_two_meters_with_one_unit_id_on_one_bus_are_refused(a: str, b: str, where: str) -> None:
    with pytest.raises(MeterConfigError) as err:
        group_by_bus([("m1", parse_meter_url(a)), ("m2", parse_meter_url(b))])
    assert f"meters 'm1' and 'm2' are both unit 5 on {where}" in str(err.value)
    # the same unit id on another bus is another meter
    group_by_bus([("m1", parse_meter_url(a)), ("m2", parse_meter_url("modbus-rtu:///dev/ttyUSB3?unit=5"))])


def test_open_source_picks_the_transport() -> None:
    tcp = open_source(parse_meter_url("modbus-tcp://10.1.2.3:1502?unit=9"), timeout=0.5, retries=2)
    assert isinstance(tcp, ModbusTcpSource)
    assert (tcp.endpoint, tcp.timeout, tcp.retries) == ("10.1.2.3:1502", 0.5, 2)
    rtu = open_source(parse_meter_url("modbus-rtu:///dev/ttyUSB2?unit=9&baud=38400"))
    assert isinstance(rtu, ModbusRtuSource) and isinstance(rtu, ModbusSource)
    assert (rtu.endpoint, rtu.serial) == ("/dev/ttyUSB2", SerialSettings(38400))
    with pytest.raises(MeterConfigError, match="parse_meter_url"):
        open_source("modbus-tcp://gw?unit=1")  # type: ignore[arg-type]
    for bad in ({"timeout": 0}, {"retries": -1}):
        with pytest.raises(MeterConfigError):
            open_source(parse_meter_url("modbus-rtu:///dev/ttyUSB2?unit=9"), **bad)  # type: ignore[arg-type]


# -- serial devices that cannot be opened ----------------------------------------------------


def unreachable(source: ModbusSource) -> str:
    async def main() -> str:
        with pytest.raises(MeterUnreachableError) as err:
            await source.read(3, SDM630)
        assert (err.value.unit, err.value.reason) == (3, "unreachable")
        await source.close()
        return str(err.value)

    return asyncio.run(main())


def test_a_missing_serial_device_says_to_check_the_adapter(tmp_path: Path) -> None:
    message = unreachable(ModbusRtuSource(str(tmp_path / "ttyUSB9")))
    assert f"serial device {tmp_path / 'ttyUSB9'} does not exist" in message
    assert "plugged in" in message and "/dev/serial/by-id/" in message


def test_a_device_that_is_not_a_serial_port_is_named(tmp_path: Path) -> None:
    not_a_tty = tmp_path / "ttyUSB0"
    not_a_tty.write_bytes(b"")
    message = unreachable(ModbusRtuSource(str(not_a_tty), SerialSettings(19200)))
    assert f"the driver of serial device {not_a_tty} refused the line settings 19200 8N1" in message
    assert "is an RS-485 adapter at all" in message


def test_a_serial_device_without_permission_names_the_group(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    device = tmp_path / "ttyUSB0"
    device.write_bytes(b"")
    device.chmod(0)
    real_access = os.access
    # The tests may run as root, for whom every file is accessible: answer as for a user.
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(device) else real_access(p, mode))
    message = unreachable(ModbusRtuSource(str(device)))
    assert f"no permission to open serial device {device}" in message and "dialout" in message


def test_a_serial_device_held_by_another_source_is_busy() -> None:
    master, slave = os.openpty()
    device = os.ttyname(slave)
    try:
        async def main() -> str:
            holder = ModbusRtuSource(device, timeout=0.2)
            await holder.connect()  # opens the device exclusively, as pymodbus does
            assert holder.connected
            try:
                with pytest.raises(MeterUnreachableError) as err:
                    await ModbusRtuSource(device).connect()
                return str(err.value)
            finally:
                await holder.close()

        message = asyncio.run(main())
        assert f"serial device {device} is in use" in message and f"fuser {device}" in message
    finally:
        os.close(master)
        os.close(slave)


def test_a_device_that_opens_on_the_second_look_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    master, slave = os.openpty()
    device = os.ttyname(slave)

    async def refuse(_client: AsyncModbusSerialClient) -> bool:
        return False  # as pymodbus reports a device that was busy for a moment

    monkeypatch.setattr(AsyncModbusSerialClient, "connect", refuse)
    try:
        message = unreachable(ModbusRtuSource(device))
        assert f"serial device {device} did not open but does now" in message
    finally:
        os.close(master)
        os.close(slave)


def test_a_driver_refusing_the_settings_is_named_and_leaves_the_device_free() -> None:
    master, slave = os.openpty()
    device = os.ttyname(slave)
    gc.disable()  # the device must be released at once, not when a collection happens to run
    try:
        async def main() -> str:
            refused = ModbusRtuSource(device, SerialSettings(parity="E"))
            try:
                await refused.connect()
            except MeterUnreachableError as err:
                message = str(err)
            else:
                await refused.close()
                pytest.skip("this kernel's pseudo-terminals take parity; no driver here refuses settings")
            async with ModbusRtuSource(device) as fine:
                assert fine.connected
            return message

        message = asyncio.run(main())
        assert f"the driver of serial device {device} refused the line settings 9600 8E1" in message
    finally:
        gc.enable()
        os.close(master)
        os.close(slave)


# -- request limits (over TCP, where no serial line is needed) --------------------------------


@asynccontextmanager
async def tcp_meters(count: int = 2) -> AsyncIterator[tuple[SimulatedModbusServer, ModbusTcpSource]]:
    server = SimulatedModbusServer("127.0.0.1", 0, count, seed=5, clock=lambda: T)
    await server.start()
    source = ModbusTcpSource("127.0.0.1", server.port, timeout=0.5)
    try:
        yield server, source
    finally:
        await source.close()
        await server.stop()


def record_requests(source: ModbusSource, monkeypatch: pytest.MonkeyPatch) -> list[ReadBlock]:
    blocks: list[ReadBlock] = []
    transfer = source._transfer

    async def spy(client, unit, block, map_name):
        blocks.append(block)
        return await transfer(client, unit, block, map_name)

    monkeypatch.setattr(source, "_transfer", spy)
    return blocks


@pytest.mark.parametrize("max_block", [2, 10, 64, 125])
def test_max_block_bounds_every_request(max_block: int, monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        async with tcp_meters() as (_server, source):
            reference = await source.read(1, SDM630)
            blocks = record_requests(source, monkeypatch)
            values = await source.read(1, SDM630, max_block=max_block)
            assert values == reference
            assert blocks == SDM630.plan(max_block)
            assert all(b.count <= max_block for b in blocks)
            covered = {a for b in blocks for a in range(b.start, b.end)}
            assert all(set(range(r.address, r.end)) <= covered for r in SDM630.registers)

    asyncio.run(main())


def test_max_block_outside_what_modbus_allows_is_a_config_error() -> None:
    one_float64 = dataclasses.replace(
        SDM630, name="wide", registers=(Register("energy", 0, "float64", "kWh", kind="counter"),)
    )

    async def main() -> None:
        source = ModbusTcpSource("127.0.0.1", 1)  # never connected: the checks come first
        for max_block, problem in [(0, "outside 1..125"), (126, "outside 1..125")]:
            with pytest.raises(MeterConfigError, match=problem):
                await source.read(1, SDM630, max_block=max_block)
        with pytest.raises(MeterConfigError, match=r"max_block 3: .*widest register \(4\) of map 'wide'"):
            await source.read(1, one_float64, max_block=3)

    asyncio.run(main())


def test_read_registers_returns_raw_words_and_checks_its_arguments() -> None:
    async def main() -> None:
        async with tcp_meters() as (server, source):
            values = server.meters[2].advance(T)
            words = SDM630.encode({r.name: values.get(r.name, 0.0) for r in SDM630.quantities})
            assert await source.read_registers(2, 4, 0x000C, 6) == [words[a] for a in range(0x000C, 0x0012)]
            assert await source.read_registers(2, 3, 0x000C, 1) == [words[0x000C]]
            with pytest.raises(MeterExceptionError) as err:
                await source.read_registers(2, 4, 0x9C40, 2)
            assert err.value.code == 2
            assert "registers 0x9C40..0x9C41 (function 4) with Modbus exception 2" in str(err.value)
            assert "check the address and the function code" in str(err.value)

            for args, problem in [
                ((0, 4, 0, 1), "unit 0 at 127.0.0.1"),
                ((248, 4, 0, 1), "expected 1..247"),
                ((1, 1, 0, 1), "function 1 does not read registers; use 3 (holding) or 4 (input)"),
                ((1, 16, 0, 1), "function 16"),
                ((1, 4, 0, 0), "count 0 is outside 1..125"),
                ((1, 4, 0, 126), "count 126 is outside 1..125"),
                ((1, 4, -1, 1), "outside the Modbus address space"),
                ((1, 4, 65535, 2), "registers 65535..65536 are outside the Modbus address space 0..65535"),
            ]:
                with pytest.raises(MeterConfigError) as bad:
                    await source.read_registers(*args)
                assert problem in str(bad.value)
            # the largest read and the last address pass the checks and go to the meter
            for start, count in [(0, 125), (65535, 1)]:
                with pytest.raises(MeterExceptionError, match="exception 2"):
                    await source.read_registers(2, 4, start, count)

    asyncio.run(main())
