"""Fleet mode of the meter simulator: hundreds of meters over consecutive ports, one process."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys

import pytest
from firmware_sim.faults import Fault
from firmware_sim.fleet import FleetPort, SimulatedFleet
from firmware_sim.meter import SimulatedMeter
from firmware_sim.modbus_server import SimulatorError

from edge.registermap import load_register_map
from edge.sources.modbus import MeterTimeoutError, ModbusTcpSource

SDM630 = load_register_map("eastron_sdm630")
T0 = 1_717_200_000.0 + 18 * 3600  # an evening: EV chargers may be on


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_six_hundred_meters_over_three_ports() -> None:
    clock = FakeClock(T0)
    sample = (1, 4, 247, 248, 300, 494, 495, 600)

    async def main() -> None:
        async with SimulatedFleet("127.0.0.1", 0, 600, seed=3, clock=clock) as fleet:
            ports = fleet.ports
            assert [(p.first_meter, p.last_meter, p.units) for p in ports] == [
                (1, 247, 247), (248, 494, 247), (495, 600, 106)
            ]
            assert len({p.port for p in ports}) == 3 and all(p.port > 0 for p in ports)
            assert str(ports[1]) == f"127.0.0.1:{ports[1].port} units 1..247 = meters 248..494"
            sources = {p.port: ModbusTcpSource("127.0.0.1", p.port, timeout=0.5) for p in ports}
            try:
                read = {}
                for meter in sample:
                    server, unit = fleet.locate(meter)
                    read[meter] = await sources[server.port].read(unit, SDM630)
                    # each fleet meter is the meter of its fleet number, not of its unit id
                    twin = SimulatedMeter.for_unit(meter, 3).advance(clock.now)
                    for name in ("voltage_l1", "power_total", "energy_import", "energy_export"):
                        assert read[meter][name] == pytest.approx(twin[name], rel=1e-6), (meter, name)
                assert len({v["energy_import"] for v in read.values()}) == len(sample)
                # values are computed only for meters someone read
                touched = [
                    fleet.servers[i].meters[u].time is not None
                    for i in range(3)
                    for u in fleet.servers[i].meters
                ]
                assert sum(touched) == len(sample)
                # faults by fleet number land on the right port and unit
                fleet.set_fault(300, Fault.timeout())
                assert fleet.faults() == {300: Fault.timeout()}
                assert fleet.servers[1].faults() == {53: Fault.timeout()}
                with pytest.raises(MeterTimeoutError):
                    await sources[ports[1].port].read(53, SDM630)
                assert await sources[ports[1].port].read(54, SDM630)
                with pytest.raises(MeterTimeoutError):
                    await sources[ports[2].port].read(107, SDM630)  # the last port has 106 units
                clock.now += 60.0
                later = await sources[ports[2].port].read(106, SDM630)
                assert later["energy_import"] > read[600]["energy_import"]
            finally:
                for source in sources.values():
                    await source.close()

    asyncio.run(main())


def test_fleet_numbering_and_bad_fleets() -> None:
    fleet = SimulatedFleet("127.0.0.1", 6000, 500, units_per_port=200)
    assert [(p.port, p.first_meter, p.units) for p in fleet.ports] == [(6000, 1, 200), (6001, 201, 200), (6002, 401, 100)]
    server, unit = fleet.locate(401)
    assert (server.port, unit) == (6002, 1)
    assert server.meters[1].unit == 401
    with pytest.raises(SimulatorError, match="numbered 1..500"):
        fleet.locate(501)
    with pytest.raises(SimulatorError, match="past 65535"):
        SimulatedFleet("127.0.0.1", 65535, 300)
    with pytest.raises(SimulatorError, match="at least one"):
        SimulatedFleet("127.0.0.1", 6000, 0)
    with pytest.raises(SimulatorError, match="1..247"):
        SimulatedFleet("127.0.0.1", 6000, 10, units_per_port=248)
    with pytest.raises(SimulatorError, match="eastron_sdm630"):
        SimulatedFleet("127.0.0.1", 6000, 10, register_map="nope")


def test_a_busy_port_stops_the_whole_fleet() -> None:
    async def main() -> None:
        with socket.socket() as blocker:
            blocker.bind(("127.0.0.1", 0))
            blocker.listen()
            busy = blocker.getsockname()[1]
            fleet = SimulatedFleet("127.0.0.1", busy - 1, 400)
            with pytest.raises(SimulatorError, match="in use"):
                await fleet.start()
            assert all(server._server is None for server in fleet.servers)

    asyncio.run(main())


def consecutive_free_ports(count: int) -> int:
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            first = probe.getsockname()[1]
        if first + count > 65535:
            continue
        socks = []
        try:
            for port in range(first, first + count):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no run of free ports found")


def test_the_sim_command_serves_a_fleet_and_prints_the_port_map() -> None:
    code = (
        "import sys, argparse\n"
        "from firmware_sim.cli import add_commands\n"
        "p = argparse.ArgumentParser(prog='gridtrace')\n"
        "add_commands(p.add_subparsers(dest='command', required=True))\n"
        "a = p.parse_args(sys.argv[1:])\n"
        "sys.exit(a.func(a))\n"
    )
    port = consecutive_free_ports(2)
    argv = ["sim", "modbus", "--port", str(port), "--meters", "300", "--fault", "250=exception:4"]
    with subprocess.Popen(
        [sys.executable, "-c", code, *argv], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    ) as proc:
        try:
            lines = [proc.stdout.readline() for _ in range(3)]  # type: ignore[union-attr]
            assert f"2 ports {port}..{port + 1}" in lines[0] and "unit 250 exception:4" in lines[0], lines
            assert lines[1].strip() == f"127.0.0.1:{port} units 1..247 = meters 1..247"
            assert lines[2].strip() == f"127.0.0.1:{port + 1} units 1..53 = meters 248..300"

            async def main() -> None:
                async with ModbusTcpSource("127.0.0.1", port + 1, timeout=1.0) as source:
                    got = await source.read(53, SDM630)
                    assert 200.0 < got["voltage_l1"] < 260.0

            asyncio.run(main())
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_a_fleet_port_describes_itself() -> None:
    assert str(FleetPort("0.0.0.0", 5020, 1, 247)) == "0.0.0.0:5020 units 1..247 = meters 1..247"
    assert FleetPort("h", 1, 248, 10).last_meter == 257
