"""A Modbus server full of simulated meters, over TCP or RTU, with faults per unit.

`SimulatedModbusServer` serves N `SimulatedMeter`s as unit ids 1..N using pymodbus' own
server: Modbus TCP on host:port, or Modbus RTU on a serial device (`SerialLine`). What it
serves is a `DeviceProfile`: any built-in register map (an SDM630 behind a three-phase
meter, an SDM120 behind a single-phase one), a map file of your own, or a layout such as
SunSpec's with fixed marker and model words. The register words come from the same
`RegisterMap` the agent decodes with (its `encode`), so the simulator cannot drift from the
map. Registers are served as input registers (function 4) and, for tools that only speak
function 3, as holding registers too.

Wire behaviour, chosen to match an RS-485 bus behind a transparent gateway:

* A unit id with no meter never answers: the client times out, as on a real bus. (pymodbus
  could answer exception 0x0B instead, but a real SDM630 behind a simple gateway stays
  silent, and a timeout is what the agent must handle well.)
* Reads that touch addresses the profile does not cover get exception 2; small gaps inside
  the map read as zero, so the agent's bridged block reads work.
* Registers are read-only; writes get exception 2.
* Faults (see `firmware_sim.faults`) switch on and off per unit while serving: silence,
  exception codes, stuck registers, a counter reset, swapped word order, a drifting clock.

Values are computed on demand, at most every `update_interval` seconds per meter: on the
wire that is indistinguishable from a periodic refresh, and meters nobody polls cost
nothing, which is what lets one process serve thousands (`firmware_sim.fleet`).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Self

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from edge.registermap import RegisterMap, RegisterMapError

from .faults import Fault, FaultKind
from .meter import SimulatedMeter
from .profiles import DeviceProfile, load_profile

__all__ = [
    "MAX_UNITS",
    "Fault",
    "FaultKind",
    "SerialLine",
    "SimulatedModbusServer",
    "SimulatorError",
    "wall_clock",
]

#: Unit ids 1..247 address a device on a Modbus bus (0 is broadcast, 248..255 reserved).
MAX_UNITS = 247


class SimulatorError(RuntimeError):
    """The simulator cannot start or was asked for something it cannot do."""


@dataclass(frozen=True)
class SerialLine:
    """A serial device to serve Modbus RTU on, and its line settings (default 9600 8N1)."""

    port: str
    baudrate: int = 9600
    parity: str = "N"
    stopbits: int = 1
    bytesize: int = 8

    def __post_init__(self) -> None:
        if not self.port:
            raise SimulatorError("serial line: no device given (e.g. /dev/ttyUSB0)")
        if self.parity not in ("N", "E", "O"):
            raise SimulatorError(
                f"serial line {self.port}: parity {self.parity!r} must be N (none), E (even) or O (odd)"
            )
        if self.stopbits not in (1, 2):
            raise SimulatorError(f"serial line {self.port}: stop bits must be 1 or 2, got {self.stopbits}")
        if self.bytesize not in (7, 8):
            raise SimulatorError(f"serial line {self.port}: byte size must be 7 or 8, got {self.bytesize}")
        if self.baudrate <= 0:
            raise SimulatorError(f"serial line {self.port}: baud rate must be positive, got {self.baudrate}")

    def __str__(self) -> str:
        return f"{self.port} {self.baudrate} {self.bytesize}{self.parity}{self.stopbits}"


class SimulatedModbusServer:
    """Simulated meters 1..`meters` behind one Modbus TCP endpoint or one RTU serial line.

    ``register_map`` names a built-in register map or layout (``eastron_sdm630``,
    ``eastron_sdm120``, ``sunspec``, ...), gives the path of a map file, or is a
    `DeviceProfile`. ``clock`` returns wall-clock seconds (default: the system clock, made
    monotonic). ``first_meter`` is the fleet index of unit 1's meter, so the servers of a
    fleet simulate different meters; ``ev_every`` puts an EV charger on every so many
    meters (0: none).
    """

    def __init__(
        self,
        host: str,
        port: int,
        meters: int,
        register_map: str | DeviceProfile = "eastron_sdm630",
        seed: int = 1,
        update_interval: float = 0.2,
        *,
        clock: Callable[[], float] | None = None,
        serial: SerialLine | None = None,
        first_meter: int = 1,
        ev_every: int = 7,
    ) -> None:
        if not 1 <= meters <= MAX_UNITS:
            raise SimulatorError(f"meters must be 1..{MAX_UNITS} (one Modbus unit id each), got {meters}")
        if not 0 <= port <= 65535:
            raise SimulatorError(f"port must be 0..65535 (0 picks a free one), got {port}")
        if isinstance(register_map, DeviceProfile):
            self.profile = register_map
        else:
            try:
                self.profile = load_profile(register_map)
            except RegisterMapError as exc:
                raise SimulatorError(str(exc)) from None
        self.host = host
        self.serial = serial
        self.seed = seed
        self.update_interval = update_interval
        phases = self.profile.phases
        self.meters: dict[int, SimulatedMeter] = {
            unit: SimulatedMeter.for_unit(first_meter + unit - 1, seed, phases=phases, ev_every=ev_every)
            for unit in range(1, meters + 1)
        }
        self._requested_port = port
        self._clock = clock or wall_clock()
        self._faults: dict[int, Fault] = {}
        self._refreshed: dict[int, float] = {}
        self._reset_due: dict[int, float] = {}
        self._server: ModbusTcpServer | ModbusSerialServer | None = None
        self._stopped: asyncio.Event | None = None

    @property
    def register_map(self) -> RegisterMap:
        """The register map served (the profile's)."""
        return self.profile.register_map

    @property
    def port(self) -> int:
        """The TCP port served (the one the OS picked, if constructed with port 0)."""
        if self._server is not None and self.serial is None and self._server.transport is not None:
            sockets = getattr(self._server.transport, "sockets", None)
            if sockets:
                return int(sockets[0].getsockname()[1])
        return self._requested_port

    @property
    def endpoint(self) -> str:
        """Where the meters are served, for messages: ``127.0.0.1:5020`` or the serial line."""
        return str(self.serial) if self.serial is not None else f"{self.host}:{self.port}"

    @property
    def units(self) -> list[int]:
        """The unit ids that have a meter."""
        return list(self.meters)

    def set_fault(self, unit: int, fault: Fault | None) -> None:
        """Make meter `unit` misbehave (or behave again with None); takes effect at once.

        One fault per unit: a new one replaces the old. A clock drift that ends leaves the
        clock as wrong as it got; a stuck meter that recovers shows current values again.
        """
        if unit not in self.meters:
            raise SimulatorError(
                f"no simulated meter with unit id {unit}; this server has units 1..{len(self.meters)}"
            )
        meter = self.meters[unit]
        now = max(self._clock(), meter.time or -float("inf"))
        previous = self._faults.pop(unit, None)
        self._reset_due.pop(unit, None)
        if previous is not None and previous.kind is FaultKind.CLOCK_DRIFT:
            meter.set_clock_drift(0.0, now)
        if fault is not None:
            self._faults[unit] = fault
            if fault.kind is FaultKind.CLOCK_DRIFT:
                assert fault.ppm is not None
                meter.set_clock_drift(fault.ppm, now)
            elif fault.kind is FaultKind.COUNTER_RESET:
                assert fault.after_s is not None
                self._reset_due[unit] = now + fault.after_s
        if fault is None or fault.kind is not FaultKind.STUCK:
            # the next read shows the change, not values cached before it
            self._refreshed.pop(unit, None)

    def faults(self) -> dict[int, Fault]:
        """The faults in force, by unit."""
        return dict(self._faults)

    async def start(self) -> None:
        """Start serving; returns once the port is bound or the serial device is open."""
        if self._server is not None:
            return
        spans = self.profile.spans
        devices = [
            SimDevice(id=unit, simdata=self._simdata(spans), action=functools.partial(self._on_request, unit))
            for unit in self.meters
        ]
        server: ModbusTcpServer | ModbusSerialServer
        if self.serial is None:
            server = ModbusTcpServer(
                devices,
                address=(self.host, self._requested_port),
                trace_pdu=self._trace_pdu,
            )
            problem = (
                f"cannot listen on {self.host}:{self._requested_port}: the port is in use or "
                "the address is not local; pick another --port or --host"
            )
        else:
            line = self.serial
            server = ModbusSerialServer(
                devices,
                framer=FramerType.RTU,
                port=line.port,
                baudrate=line.baudrate,
                parity=line.parity,
                stopbits=line.stopbits,
                bytesize=line.bytesize,
                trace_pdu=self._trace_pdu,
            )
            problem = (
                f"cannot open serial device {line.port}: check that it exists, that no other "
                "program holds it, and that you may open it (group dialout)"
            )
        try:
            await server.serve_forever(background=True)
        except RuntimeError:
            raise SimulatorError(problem) from None
        self._server = server
        self._stopped = asyncio.Event()

    async def stop(self) -> None:
        """Stop serving and drop every client connection (or close the serial device)."""
        server, self._server = self._server, None
        if server is not None:
            await server.shutdown()
        if self._stopped is not None:
            self._stopped.set()

    async def serve_forever(self) -> None:
        """Start if needed and serve until `stop()` is called."""
        await self.start()
        assert self._stopped is not None
        await self._stopped.wait()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()

    def _simdata(self, spans: list[tuple[int, int]]) -> list[SimData]:
        # readonly: a write gets exception 2, like the SDM630's input registers. The fixed
        # words are there from the start; the rest is filled on the first read.
        fixed = self.profile.fixed_words
        return [
            SimData(
                start,
                values=[fixed.get(a, 0) for a in range(start, start + count)],
                datatype=DataType.REGISTERS,
                readonly=True,
            )
            for start, count in spans
        ]

    def _trace_pdu(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU | None:
        # pymodbus only handles a received request if this hook returns it, so returning
        # None is how a unit stays silent (no meter at that id, or a timeout fault).
        if sending:
            return pdu
        fault = self._faults.get(pdu.dev_id)
        if pdu.dev_id not in self.meters or (fault and fault.kind is FaultKind.TIMEOUT):
            return None
        return pdu

    async def _on_request(
        self,
        unit: int,
        _function_code: int,
        start_address: int,
        _address: int,
        _count: int,
        registers: list[int],
        _set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        fault = self._faults.get(unit)
        if fault is not None:
            if fault.kind is FaultKind.EXCEPTION:
                return ExcCodes(fault.code)
            if fault.kind is FaultKind.STUCK and unit in self._refreshed:
                return None  # frozen at whatever the last refresh wrote
        now = self._clock()
        if now - self._refreshed.get(unit, -float("inf")) >= self.update_interval:
            self._refresh(unit, now, start_address, registers, fault)
        return None

    def _refresh(
        self, unit: int, now: float, start_address: int, registers: list[int], fault: Fault | None
    ) -> None:
        meter = self.meters[unit]
        now = max(now, meter.time or now)
        due = self._reset_due.get(unit)
        if due is not None and due <= now:
            del self._reset_due[unit]
            meter.reset_counters(max(due, meter.time or due))
        values = meter.advance(now)
        swapped = fault is not None and fault.kind is FaultKind.SWAPPED_WORDS
        for address, word in self.profile.encode(values, swapped_words=swapped).items():
            registers[address - start_address] = word
        self._refreshed[unit] = now


def wall_clock() -> Callable[[], float]:
    """Wall-clock seconds that never step backwards (NTP may step time.time())."""
    wall0, mono0 = time.time(), time.monotonic()
    return lambda: wall0 + (time.monotonic() - mono0)
