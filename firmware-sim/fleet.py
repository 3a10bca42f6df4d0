"""Thousands of simulated Modbus TCP meters in one process, for load tests.

A Modbus endpoint addresses at most 247 units, so a fleet of N meters is spread over
consecutive TCP ports, 247 units per port (the last port takes the rest): meter 1..247 are
units 1..247 on the first port, meter 248 is unit 1 on the next, and so on. Each port is
one `SimulatedModbusServer`; every meter is a different `SimulatedMeter` (its fleet index
seeds it), all on one clock. Values are computed only when a unit is read, so meters
nobody polls cost a little memory and no CPU.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Self

from edge.registermap import RegisterMapError

from .faults import Fault
from .modbus_server import MAX_UNITS, SimulatedModbusServer, SimulatorError, wall_clock
from .profiles import DeviceProfile, load_profile

__all__ = ["FleetPort", "SimulatedFleet"]


@dataclass(frozen=True)
class FleetPort:
    """One port of a fleet: which meters it serves, as units 1..`units`."""

    host: str
    port: int
    first_meter: int
    units: int

    @property
    def last_meter(self) -> int:
        return self.first_meter + self.units - 1

    def __str__(self) -> str:
        return (
            f"{self.host}:{self.port} units 1..{self.units} = meters "
            f"{self.first_meter}..{self.last_meter}"
        )


class SimulatedFleet:
    """`meters` simulated meters over consecutive TCP ports from `first_port`.

    With `first_port` 0 every port is one the OS picks (not consecutive then); `ports`
    tells which after `start`.
    """

    def __init__(
        self,
        host: str,
        first_port: int,
        meters: int,
        register_map: str | DeviceProfile = "eastron_sdm630",
        seed: int = 1,
        update_interval: float = 0.2,
        *,
        clock: Callable[[], float] | None = None,
        units_per_port: int = MAX_UNITS,
        ev_every: int = 7,
    ) -> None:
        if meters < 1:
            raise SimulatorError(f"a fleet needs at least one meter, got {meters}")
        if not 1 <= units_per_port <= MAX_UNITS:
            raise SimulatorError(f"units per port must be 1..{MAX_UNITS}, got {units_per_port}")
        groups = -(-meters // units_per_port)
        if first_port != 0 and first_port + groups - 1 > 65535:
            raise SimulatorError(
                f"{meters} meters need {groups} ports from {first_port}, past 65535; "
                "pick a lower --port"
            )
        try:
            profile = register_map if isinstance(register_map, DeviceProfile) else load_profile(register_map)
        except RegisterMapError as exc:
            raise SimulatorError(str(exc)) from None
        self.meters = meters
        self.units_per_port = units_per_port
        shared_clock = clock or wall_clock()
        self.servers: list[SimulatedModbusServer] = []
        for group in range(groups):
            first = group * units_per_port + 1
            self.servers.append(
                SimulatedModbusServer(
                    host,
                    first_port + group if first_port else 0,
                    min(units_per_port, meters - first + 1),
                    profile,
                    seed,
                    update_interval,
                    clock=shared_clock,
                    first_meter=first,
                    ev_every=ev_every,
                )
            )

    @property
    def ports(self) -> list[FleetPort]:
        """Which meters each port serves (actual ports once started)."""
        return [
            FleetPort(server.host, server.port, self._first_meter(i), len(server.meters))
            for i, server in enumerate(self.servers)
        ]

    def locate(self, meter: int) -> tuple[SimulatedModbusServer, int]:
        """The server and unit id of fleet meter `meter` (1..meters)."""
        if not 1 <= meter <= self.meters:
            numbering = "their unit ids" if len(self.servers) == 1 else f"{self.units_per_port} per port"
            raise SimulatorError(
                f"no simulated meter {meter}: meters are numbered 1..{self.meters} ({numbering})"
            )
        group, offset = divmod(meter - 1, self.units_per_port)
        return self.servers[group], offset + 1

    def set_fault(self, meter: int, fault: Fault | None) -> None:
        """Make fleet meter `meter` misbehave (None: behave again)."""
        server, unit = self.locate(meter)
        server.set_fault(unit, fault)

    def faults(self) -> dict[int, Fault]:
        """The faults in force, by fleet meter number."""
        found = {}
        for i, server in enumerate(self.servers):
            for unit, fault in server.faults().items():
                found[self._first_meter(i) + unit - 1] = fault
        return found

    async def start(self) -> None:
        """Start every port; if one cannot start, stop the others and raise."""
        try:
            for server in self.servers:
                await server.start()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        await asyncio.gather(*(server.stop() for server in self.servers))

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()

    def _first_meter(self, group: int) -> int:
        return group * self.units_per_port + 1
