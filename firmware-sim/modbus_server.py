"""A Modbus TCP server full of simulated meters, with faults that can be injected per unit.

`SimulatedModbusServer` serves N `SimulatedMeter`s as unit ids 1..N using pymodbus' own
server. The register layout comes from the same `RegisterMap` the agent decodes with (its
`encode`), so the simulator cannot drift from the map. Registers are served as input
registers (function 4) and, for tools that only speak function 3, as holding registers too.

Wire behaviour, chosen to match an RS-485 bus behind a transparent gateway:

* A unit id with no meter never answers: the client times out, as on a real bus. (pymodbus
  could answer exception 0x0B instead, but a real SDM630 behind a simple gateway stays
  silent, and a timeout is what the agent must handle well.)
* `Fault.timeout()` makes a meter stop answering, exactly like an unknown unit.
* `Fault.exception(code)` makes a meter answer every request with that Modbus exception.
* Reads that touch addresses the map does not cover get exception 2; small gaps inside
  the map read as zero, so the agent's bridged block reads work.
* Registers are read-only; writes get exception 2.

Values are refreshed on demand, at most every `update_interval` seconds per meter: on the
wire that is indistinguishable from a periodic refresh, and meters nobody polls cost
nothing.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass

from pymodbus.constants import ExcCodes
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from edge.registermap import RegisterMap, load_register_map

from .meter import SimulatedMeter

__all__ = ["Fault", "FaultKind", "SimulatedModbusServer", "SimulatorError"]

_EXCEPTION_CODES = tuple(int(code) for code in ExcCodes)


class SimulatorError(RuntimeError):
    """The simulator cannot start or was asked for something it cannot do."""


class FaultKind(enum.Enum):
    TIMEOUT = "timeout"
    EXCEPTION = "exception"


@dataclass(frozen=True)
class Fault:
    """A misbehaviour of one simulated meter; build with `timeout()` or `exception(code)`."""

    kind: FaultKind
    code: int | None = None

    def __post_init__(self) -> None:
        if self.kind is FaultKind.EXCEPTION:
            if self.code not in _EXCEPTION_CODES:
                raise ValueError(
                    f"Modbus exception code {self.code} cannot be simulated; "
                    f"use one of {', '.join(str(c) for c in _EXCEPTION_CODES)}"
                )
        elif self.code is not None:
            raise ValueError("only an exception fault has a code")

    @classmethod
    def timeout(cls) -> Fault:
        """The meter never answers."""
        return cls(FaultKind.TIMEOUT)

    @classmethod
    def exception(cls, code: int) -> Fault:
        """The meter answers every request with Modbus exception `code`."""
        return cls(FaultKind.EXCEPTION, code)

    @classmethod
    def parse(cls, text: str) -> Fault:
        """``timeout`` or ``exception:CODE`` (as the command line takes them)."""
        spec = text.strip().lower()
        if spec == "timeout":
            return cls.timeout()
        kind, _, code = spec.partition(":")
        if kind == "exception" and code.strip().isdigit():
            return cls.exception(int(code))
        raise ValueError(f"fault {text!r} is not 'timeout' or 'exception:CODE' (e.g. exception:2)")

    def __str__(self) -> str:
        return "timeout" if self.kind is FaultKind.TIMEOUT else f"exception:{self.code}"


class SimulatedModbusServer:
    """Simulated meters 1..`meters` behind one Modbus TCP endpoint."""

    def __init__(
        self,
        host: str,
        port: int,
        meters: int,
        register_map: str = "eastron_sdm630",
        seed: int = 1,
        update_interval: float = 0.2,
        *,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if not 1 <= meters <= 247:
            raise SimulatorError(f"meters must be 1..247 (one Modbus unit id each), got {meters}")
        if not 0 <= port <= 65535:
            raise SimulatorError(f"port must be 0..65535 (0 picks a free one), got {port}")
        self.host = host
        self.register_map: RegisterMap = load_register_map(register_map)
        self.seed = seed
        self.update_interval = update_interval
        self.meters: dict[int, SimulatedMeter] = {
            unit: SimulatedMeter.for_unit(unit, seed) for unit in range(1, meters + 1)
        }
        self._requested_port = port
        self._clock = clock or _wall_clock_from_monotonic()
        self._faults: dict[int, Fault] = {}
        self._refreshed: dict[int, float] = {}
        self._server: ModbusTcpServer | None = None
        self._stopped: asyncio.Event | None = None
        self._map_names = frozenset(reg.name for reg in self.register_map.quantities)
        # Bridged spans, as the agent's block planner may read them (any max_registers).
        self._spans = [(b.start, b.count) for b in self.register_map.plan(max_registers=0x10000)]

    @property
    def port(self) -> int:
        """The TCP port served (the one the OS picked, if constructed with port 0)."""
        if self._server is not None and self._server.transport is not None:
            sockets = getattr(self._server.transport, "sockets", None)
            if sockets:
                return int(sockets[0].getsockname()[1])
        return self._requested_port

    @property
    def units(self) -> list[int]:
        """The unit ids that have a meter."""
        return list(self.meters)

    def set_fault(self, unit: int, fault: Fault | None) -> None:
        """Make meter `unit` misbehave (or behave again with None); takes effect at once."""
        if unit not in self.meters:
            raise SimulatorError(
                f"no simulated meter with unit id {unit}; this server has units 1..{len(self.meters)}"
            )
        if fault is None:
            self._faults.pop(unit, None)
        else:
            self._faults[unit] = fault

    def faults(self) -> dict[int, Fault]:
        """The faults in force, by unit."""
        return dict(self._faults)

    async def start(self) -> None:
        """Start listening; returns once the port is bound."""
        if self._server is not None:
            return
        now = self._clock()
        for meter in self.meters.values():
            meter.advance(now)
        devices = [
            SimDevice(
                id=unit,
                simdata=self._simdata(),
                action=functools.partial(self._on_request, unit),
            )
            for unit in self.meters
        ]
        server = ModbusTcpServer(
            devices,
            address=(self.host, self._requested_port),
            trace_pdu=self._trace_pdu,
        )
        try:
            await server.serve_forever(background=True)
        except RuntimeError:
            raise SimulatorError(
                f"cannot listen on {self.host}:{self._requested_port}: the port is in use or "
                "the address is not local; pick another --port or --host"
            ) from None
        self._server = server
        self._stopped = asyncio.Event()

    async def stop(self) -> None:
        """Stop serving and drop every client connection."""
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

    async def __aenter__(self) -> SimulatedModbusServer:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()

    def _simdata(self) -> list[SimData]:
        # readonly: a write gets exception 2, like the SDM630's input registers.
        return [
            SimData(start, count=count, values=0, datatype=DataType.REGISTERS, readonly=True)
            for start, count in self._spans
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
        if fault is not None and fault.kind is FaultKind.EXCEPTION:
            return ExcCodes(fault.code)
        now = self._clock()
        if now - self._refreshed.get(unit, -float("inf")) >= self.update_interval:
            self._refresh(unit, now, start_address, registers)
        return None

    def _refresh(self, unit: int, now: float, start_address: int, registers: list[int]) -> None:
        meter = self.meters[unit]
        now = max(now, meter.time or now)
        values = meter.advance(now)
        words = self.register_map.encode(
            {name: values.get(name, 0.0) for name in self._map_names}
        )
        for address, word in words.items():
            registers[address - start_address] = word
        self._refreshed[unit] = now


def _wall_clock_from_monotonic() -> Callable[[], float]:
    """Wall-clock seconds that never step backwards (NTP may step time.time())."""
    wall0, mono0 = time.time(), time.monotonic()
    return lambda: wall0 + (time.monotonic() - mono0)
