"""The simulator read by an independent Modbus client: mbpoll (libmodbus), over TCP and RTU.

Our own source and the simulator share pymodbus and the register-map code, so a mistake
common to both would pass every other test. mbpoll shares neither: the words it reads must
be the words our source reads, and must decode to what the register map says. The
simulator runs on a fixed clock so both clients see the same instant.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Awaitable, Callable, Sequence

import pytest
from firmware_sim.faults import Fault
from firmware_sim.meter import SimulatedMeter
from firmware_sim.modbus_server import SerialLine, SimulatedModbusServer
from firmware_sim.profiles import available_profiles, load_profile
from systemtools import require_tool

from edge.registermap import ReadBlock, RegisterMap
from edge.sources.modbus import ModbusTcpSource

T0 = 1_717_200_000.0 + 12 * 3600  # noon: PV meters export, so signs are exercised too
MBPOLL_MAX = 125  # mbpoll reads at most 125 registers at once
# "[15]: \t64861 (-675)": a 16-bit value, then its signed reading if that differs
_VALUE = re.compile(r"^\[(\d+)\]:\s+(\S+)", re.MULTILINE)
# mbpoll prints floats with 6 significant digits
PRINTED = 6e-6


@pytest.fixture(scope="module")
def mbpoll() -> str:
    return require_tool("mbpoll", "mbpoll", "the interop tests read the simulator with it")


class MbpollError(Exception):
    pass


async def run_mbpoll(mbpoll: str, target: Sequence[str], unit: int, table: str, start: int, count: int) -> dict[int, str]:
    """One read with mbpoll: {address: printed value}. 0-based addresses (-0), once (-1)."""
    proc = await asyncio.create_subprocess_exec(
        mbpoll, *target[:-1], "-a", str(unit), "-t", table, "-0", "-r", str(start), "-c", str(count),
        "-o", "0.5", "-1", target[-1],
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise MbpollError(err.decode().strip() or out.decode().strip())
    return {int(a): v for a, v in _VALUE.findall(out.decode())}


async def mbpoll_words(mbpoll: str, target: Sequence[str], unit: int, block: ReadBlock) -> list[int]:
    table = "3:hex" if block.function == 4 else "4:hex"
    values = await run_mbpoll(mbpoll, target, unit, table, block.start, block.count)
    assert sorted(values) == list(range(block.start, block.end))
    return [int(values[a], 16) for a in range(block.start, block.end)]


def same(a: dict[str, float], b: dict[str, float]) -> bool:
    return a.keys() == b.keys() and all(
        (math.isnan(a[k]) and math.isnan(b[k])) or a[k] == b[k] for k in a
    )


def with_tcp_server(
    body: Callable[[SimulatedModbusServer, list[str], ModbusTcpSource], Awaitable[None]], register_map: str = "eastron_sdm630"
) -> None:
    async def main() -> None:
        async with SimulatedModbusServer(
            "127.0.0.1", 0, 5, register_map=register_map, seed=6, clock=lambda: T0
        ) as server:
            source = ModbusTcpSource("127.0.0.1", server.port, timeout=1.0)
            try:
                await body(server, ["-m", "tcp", "-p", str(server.port), "127.0.0.1"], source)
            finally:
                await source.close()

    asyncio.run(main())


@pytest.mark.parametrize("name", available_profiles())
def test_mbpoll_reads_the_words_our_source_reads(mbpoll: str, name: str) -> None:
    regmap: RegisterMap = load_profile(name).register_map

    async def body(server: SimulatedModbusServer, target: list[str], source: ModbusTcpSource) -> None:
        for unit in (1, 2, 4):
            reads = []
            for block in regmap.plan(max_registers=MBPOLL_MAX):
                theirs = await mbpoll_words(mbpoll, target, unit, block)
                ours = await source.read_registers(unit, block.function, block.start, block.count)
                assert theirs == ours, (name, unit, block)
                reads.append((block, theirs))
            assert same(regmap.decode_blocks(reads), await source.read(unit, regmap))

    with_tcp_server(body, name)


def test_mbpoll_decodes_floats_as_the_map_says(mbpoll: str) -> None:
    regmap = load_profile("eastron_sdm630").register_map

    async def body(server: SimulatedModbusServer, target: list[str], source: ModbusTcpSource) -> None:
        values = await source.read(2, regmap)
        twin = SimulatedMeter.for_unit(2, 6).advance(T0)
        by_address = {r.address: r.name for r in regmap.registers}
        for table in ("3:float", "4:float"):  # input and holding registers serve the same
            # -B: high word first, as the SDM630 stores its float32s
            shown = await run_mbpoll(mbpoll, ["-B", *target], 2, table, 0, 40)
            assert len(shown) == 40
            assert set(by_address) & set(shown), "the read covers registers of the map"
            for address, text in shown.items():
                name = by_address.get(address)
                if name is None:
                    assert float(text) == 0.0  # a gap in the map reads as zeros
                    continue
                assert float(text) == pytest.approx(values[name], rel=PRINTED, abs=1e-9), name
                assert float(text) == pytest.approx(twin[name], rel=PRINTED, abs=1e-6), name
        # without -B mbpoll takes the low word first: the numbers are nonsense
        wrong = await run_mbpoll(mbpoll, target, 2, "3:float", 0, 2)
        assert not regmap.register("voltage_l1").plausible(float(wrong[0]))

    with_tcp_server(body)


def test_mbpoll_sees_swapped_words_as_little_endian_floats(mbpoll: str) -> None:
    async def body(server: SimulatedModbusServer, target: list[str], source: ModbusTcpSource) -> None:
        right = await run_mbpoll(mbpoll, ["-B", *target], 3, "3:float", 0, 6)
        server.set_fault(3, Fault.swapped_words())
        assert await run_mbpoll(mbpoll, target, 3, "3:float", 0, 6) == right
        assert await run_mbpoll(mbpoll, ["-B", *target], 3, "3:float", 0, 6) != right

    with_tcp_server(body)


def test_mbpoll_finds_the_sunspec_marker(mbpoll: str) -> None:
    async def body(server: SimulatedModbusServer, target: list[str], source: ModbusTcpSource) -> None:
        marker = await run_mbpoll(mbpoll, target, 1, "4:hex", 40000, 4)
        assert [marker[a] for a in range(40000, 40004)] == ["0x5375", "0x6E53", "0x0001", "0x0042"]
        with pytest.raises(MbpollError, match="Illegal data address"):
            await run_mbpoll(mbpoll, target, 1, "4:hex", 0, 2)

    with_tcp_server(body, "sunspec")


def test_mbpoll_sees_silence_and_exceptions(mbpoll: str) -> None:
    async def body(server: SimulatedModbusServer, target: list[str], source: ModbusTcpSource) -> None:
        server.set_fault(1, Fault.timeout())
        server.set_fault(2, Fault.exception(2))
        for unit in (1, 9):  # a timeout fault and an empty address
            with pytest.raises(MbpollError, match="timed out"):
                await run_mbpoll(mbpoll, target, unit, "3", 0, 2)
        with pytest.raises(MbpollError, match="Illegal data address"):
            await run_mbpoll(mbpoll, target, 2, "3", 0, 2)
        with pytest.raises(MbpollError, match="Illegal data address"):
            await run_mbpoll(mbpoll, target, 3, "3", 0, 100)  # past the SDM630's first block
        assert len(await run_mbpoll(mbpoll, target, 3, "3", 0, 80)) == 80

    with_tcp_server(body)


def test_mbpoll_reads_the_simulator_over_rtu(mbpoll: str, serial_pair: tuple[str, str]) -> None:
    sim_end, client_end = serial_pair
    profile = load_profile("eastron_sdm120")
    regmap = profile.register_map
    target = ["-m", "rtu", "-b", "19200", "-P", "none", "-s", "1", client_end]

    async def main() -> None:
        server = SimulatedModbusServer(
            "", 0, 3, register_map="eastron_sdm120", seed=6, clock=lambda: T0,
            serial=SerialLine(sim_end, baudrate=19200),
        )
        async with server:
            server.set_fault(3, Fault.exception(4))
            for unit in (1, 2):
                expected = profile.encode(SimulatedMeter.for_unit(unit, 6, phases=1).advance(T0))
                reads = []
                for block in regmap.plan(max_registers=MBPOLL_MAX):
                    words = await mbpoll_words(mbpoll, target, unit, block)
                    assert words == [expected.get(a, 0) for a in range(block.start, block.end)]
                    reads.append((block, words))
                values = regmap.decode_blocks(reads)
                assert 220.0 < values["voltage_l1"] < 240.0
                floats = await run_mbpoll(mbpoll, ["-B", *target], unit, "3:float", 0, 2)
                assert float(floats[0]) == pytest.approx(values["voltage_l1"], rel=PRINTED)
            with pytest.raises(MbpollError, match="timed out"):
                await run_mbpoll(mbpoll, target, 7, "3", 0, 2)
            with pytest.raises(MbpollError, match="failure"):
                await run_mbpoll(mbpoll, target, 3, "3", 0, 2)

    asyncio.run(main())
