"""Modbus meter sources: the I/O shells the agent polls meters through, over TCP or RS-485.

A meter is named by a URL (`edge.sources.modbus_url`, re-exported here): ``modbus-tcp://``
for a Modbus TCP meter or a TCP-to-RS-485 gateway, ``modbus-rtu://`` for a meter on a serial
line of this machine. Every meter on one bus (one host:port, one
serial device) is served by one `ModbusSource` (`open_source`), which reads any number of
unit ids, block by block as the register map plans. `group_by_bus` checks that meters
sharing a serial device agree on its settings.

Failures come out as `MeterReadError` subclasses whose messages say what to check at the
meter cabinet. A dead unit costs one short timeout and never poisons the bus for the other
units: on TCP, if pymodbus drops the connection, the next read reconnects; on RS-485 the
next request waits until the line has fallen quiet, and answers are matched to the unit
asked, so a late or half answer is not taken for the next unit's.
"""

from __future__ import annotations

import asyncio
import errno
import os
import time
from abc import ABC, abstractmethod
from typing import Self

import serial as pyserial
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.client.base import ModbusBaseClient
from pymodbus.exceptions import ConnectionException, ModbusIOException
from pymodbus.framer import FramerType
from pymodbus.pdu import ModbusPDU

from edge.registermap import ReadBlock, RegisterMap
from edge.sources.modbus_url import (
    _UNITS,
    BAUD_RATES,
    DEFAULT_PORT,
    MAX_READ,
    BusKey,
    MeterConfigError,
    ModbusRtuTarget,
    ModbusTarget,
    ModbusTcpTarget,
    SerialSettings,
    _endpoint,
    group_by_bus,
    parse_meter_url,
)

try:
    from termios import error as _termios_error

    _TERMIOS_ERRORS: tuple[type[Exception], ...] = (_termios_error,)
except ImportError:  # not POSIX: pyserial reports through OSError alone
    _TERMIOS_ERRORS = ()

__all__ = [
    "BAUD_RATES",
    "DEFAULT_PORT",
    "BusKey",
    "MeterConfigError",
    "MeterExceptionError",
    "MeterGarbledError",
    "MeterReadError",
    "MeterTimeoutError",
    "MeterUnreachableError",
    "ModbusRtuSource",
    "ModbusRtuTarget",
    "ModbusSource",
    "ModbusTarget",
    "ModbusTcpSource",
    "ModbusTcpTarget",
    "SerialSettings",
    "group_by_bus",
    "open_source",
    "parse_meter_url",
]

# Modbus exception code -> (name, what to check)
_EXCEPTION_ADVICE: dict[int, tuple[str, str]] = {
    1: (
        "illegal function",
        "the meter does not support function {function}; check that the register map "
        "matches the meter model (it may need function 3 instead of 4, or the reverse)",
    ),
    2: (
        "illegal data address",
        "the meter has no registers at {span}; the register map {map!r} does not match "
        "this meter, or unit {unit} is a different meter model than configured",
    ),
    3: (
        "illegal data value",
        "the meter refused to read {count} registers at once; lower the read block size",
    ),
    4: (
        "server device failure",
        "the meter reported an internal failure; check its display, power-cycle it if it "
        "persists",
    ),
    5: ("acknowledge", "the meter is busy with a long operation; the next poll should succeed"),
    6: ("server device busy", "the meter is busy; the next poll should succeed"),
    10: (
        "gateway path unavailable",
        "the gateway at {endpoint} has no route to unit {unit}; check the gateway's "
        "serial-port and unit-id routing configuration",
    ),
    11: (
        "gateway target device failed to respond",
        "the gateway at {endpoint} got no answer from unit {unit} on its RS-485 bus; check "
        "the unit id set on the meter, the A/B wiring and termination, the gateway's baud "
        "rate and parity, and that the meter is powered",
    ),
}
# Exception 2 to a raw read (SunSpec discovery, `edge probe`): there is no map to blame.
_RAW_ADDRESS_ADVICE = (
    "the meter has no registers at {span}; check the address and the function code "
    "(3 holding, 4 input), or unit {unit} is a different meter model than expected"
)


class MeterReadError(Exception):
    """A read that failed. `reason` is a short machine string, the message is for people."""

    def __init__(self, message: str, *, unit: int | None, reason: str) -> None:
        super().__init__(message)
        self.unit = unit
        self.reason = reason


class MeterTimeoutError(MeterReadError):
    """The unit did not answer in time."""

    def __init__(self, message: str, *, unit: int | None) -> None:
        super().__init__(message, unit=unit, reason="timeout")


class MeterGarbledError(MeterReadError):
    """No valid answer in time, but bytes did arrive: line settings, noise or a unit clash."""

    def __init__(self, message: str, *, unit: int | None, received: int) -> None:
        super().__init__(message, unit=unit, reason="garbled")
        self.received = received


class MeterExceptionError(MeterReadError):
    """The unit (or the gateway in front of it) answered with a Modbus exception."""

    def __init__(self, message: str, *, unit: int | None, code: int) -> None:
        super().__init__(message, unit=unit, reason=f"modbus-exception-{code}")
        self.code = code


class MeterUnreachableError(MeterReadError):
    """No connection: the TCP endpoint or the serial device cannot be reached or opened."""

    def __init__(self, message: str, *, unit: int | None) -> None:
        super().__init__(message, unit=unit, reason="unreachable")


# -- reading -------------------------------------------------------------------------------


class ModbusSource(ABC):
    """One Modbus connection (a TCP endpoint or a serial line) shared by many unit ids.

    Subclasses differ only in how the pymodbus client is made and in the advice their
    messages give; reads, pacing and error translation live here. The connection opens on
    the first read (or `connect`) and after a loss the next read opens it again.
    """

    def __init__(self, *, timeout: float = 1.0, retries: int = 0) -> None:
        if timeout <= 0:
            raise MeterConfigError(f"Modbus timeout must be positive, got {timeout}")
        if retries < 0:
            raise MeterConfigError(f"Modbus retries must be 0 or more, got {retries}")
        self.timeout = timeout
        self.retries = retries
        self._client: ModbusBaseClient | None = None
        # Serialises whole reads so a reconnect never races and one unit's blocks stay together.
        self._lock = asyncio.Lock()
        # Monotonic time the bus last fell quiet (an answer or a timeout), for request pacing.
        self._quiet_since = -float("inf")

    @property
    @abstractmethod
    def endpoint(self) -> str:
        """Where the meters are: host:port or the serial device."""

    @property
    def where(self) -> str:
        """``at host:port`` or ``on /dev/ttyUSB0``, for messages."""
        return f"at {self.endpoint}"

    @property
    def connected(self) -> bool:
        """Whether the connection is currently up."""
        return self._client is not None and self._client.connected

    async def connect(self) -> None:
        """Open the connection now (reads also connect on demand)."""
        async with self._lock:
            await self._ensure_connected(unit=None)

    async def read(self, unit: int, regmap: RegisterMap, max_block: int = 64) -> dict[str, float]:
        """Read every register of `regmap` from `unit` in as few requests as the map allows,
        at most `max_block` registers each; values by register name, scaled."""
        self._check_unit(unit)
        if not 1 <= max_block <= MAX_READ:
            raise MeterConfigError(
                f"max_block {max_block} is outside 1..{MAX_READ}, the most one Modbus read may ask for"
            )
        try:
            plan = _plan(regmap, max_block)
        except ValueError as exc:
            raise MeterConfigError(f"max_block {max_block}: {exc}") from None
        reads = []
        async with self._lock:
            client = await self._ensure_connected(unit)
            for block in plan:
                reads.append((block, await self._transfer(client, unit, block, regmap.name)))
        return regmap.decode_blocks(reads)

    async def read_registers(self, unit: int, function: int, start: int, count: int) -> list[int]:
        """The raw 16-bit words of `count` registers from `start` (function 3 holding or
        4 input), for SunSpec discovery and `edge probe`."""
        self._check_unit(unit)
        if function not in (3, 4):
            raise MeterConfigError(
                f"function {function} does not read registers; use 3 (holding) or 4 (input)"
            )
        if not 1 <= count <= MAX_READ:
            raise MeterConfigError(
                f"count {count} is outside 1..{MAX_READ}, the most one Modbus read may ask for"
            )
        if not 0 <= start <= 0xFFFF - count + 1:
            raise MeterConfigError(
                f"registers {start}..{start + count - 1} are outside the Modbus address "
                "space 0..65535"
            )
        async with self._lock:
            client = await self._ensure_connected(unit)
            return await self._transfer(client, unit, ReadBlock(function, start, count), None)

    async def close(self) -> None:
        """Close the connection; a later read reconnects."""
        if self._client is not None:
            self._client.close()
            self._client = None

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    # -- what subclasses provide --

    @abstractmethod
    def _new_client(self) -> ModbusBaseClient:
        """A pymodbus client for this connection, not yet connected (no reconnect loop)."""

    @abstractmethod
    def _unreachable(self, unit: int | None, cause: Exception | None) -> MeterUnreachableError:
        """The error for a connection that cannot be opened (`cause`: the error, if known)."""

    @abstractmethod
    def _lost(self, unit: int) -> MeterUnreachableError:
        """The error for a connection that broke during a read."""

    @abstractmethod
    def _timeout_advice(self) -> str:
        """What to check when a unit does not answer."""

    def _frame_gap(self) -> float:
        """Silence required before each request (none on TCP)."""
        return 0.0

    async def _after_silence(self) -> int:
        """Called after a request went unanswered; returns the bytes that did arrive
        meanwhile (unknown on TCP: 0)."""
        return 0

    def _before_request(self) -> None:
        """Called just before a request is sent."""

    # -- the shared machinery --

    def _check_unit(self, unit: int) -> None:
        if unit not in _UNITS:
            raise MeterConfigError(
                f"unit {unit} {self.where} is not a valid Modbus address; expected 1..247"
            )

    async def _ensure_connected(self, unit: int | None) -> ModbusBaseClient:
        client = self._client
        if client is not None and client.connected:
            return client
        if client is None:
            client = self._client = self._new_client()
        cause: Exception | None = None
        try:
            ok = await client.connect()
        except (OSError, ValueError, *_TERMIOS_ERRORS) as exc:
            # pymodbus turns most failures into False; a serial driver refusing the line
            # settings (termios.error, ValueError from pyserial) comes through raw. Its
            # traceback holds the half-made transport and so the open, locked device:
            # drop it now, not whenever the garbage collector gets to it.
            ok, cause = False, exc.with_traceback(None)
        if not ok:
            raise self._unreachable(unit, cause)
        return client

    async def _transfer(
        self, client: ModbusBaseClient, unit: int, block: ReadBlock, map_name: str | None
    ) -> list[int]:
        start, count, span = block.start, block.count, block.span
        reader = (
            client.read_input_registers if block.function == 4 else client.read_holding_registers
        )
        gap = self._frame_gap()
        if gap:
            wait = self._quiet_since + gap - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        self._before_request()
        try:
            response: ModbusPDU = await reader(start, count=count, device_id=unit)
        except ModbusIOException as exc:
            if "device id" in exc.string or "transaction id" in exc.string:
                raise MeterReadError(
                    f"unit {unit} {self.where}: a mismatched answer to the read of "
                    f"registers {span} ({exc.string}); check that no two meters on the bus "
                    "share this unit id",
                    unit=unit,
                    reason="bad-response",
                ) from None
            raise self._no_answer(unit, span, await self._after_silence()) from None
        except (ConnectionException, OSError):
            raise self._lost(unit) from None
        finally:
            self._quiet_since = time.monotonic()
        if response.isError():
            code = int(getattr(response, "exception_code", 0))
            name, advice = _EXCEPTION_ADVICE.get(
                code, ("unknown exception", "see the meter's Modbus documentation")
            )
            if code == 2 and map_name is None:
                advice = _RAW_ADDRESS_ADVICE
            detail = advice.format(
                function=block.function,
                span=span,
                map=map_name,
                unit=unit,
                count=count,
                endpoint=self.endpoint,
            )
            raise MeterExceptionError(
                f"unit {unit} {self.where} answered the read of registers {span} "
                f"(function {block.function}) with Modbus exception {code} ({name}): {detail}",
                unit=unit,
                code=code,
            )
        registers = list(getattr(response, "registers", []))
        if len(registers) < count:
            raise MeterReadError(
                f"unit {unit} {self.where} returned {len(registers)} registers for a "
                f"read of {count} at {span}; the meter or gateway is misbehaving",
                unit=unit,
                reason="bad-response",
            )
        return registers[:count]

    def _no_answer(self, unit: int, span: str, received: int) -> MeterReadError:
        """The error for a request that got no valid answer in time; `received` is how
        many bytes arrived meanwhile (0 if unknown)."""
        return MeterTimeoutError(
            f"unit {unit} {self.where} did not answer a read of registers {span} "
            f"within {self.timeout:g} s: {self._timeout_advice()}",
            unit=unit,
        )


class ModbusTcpSource(ModbusSource):
    """One Modbus TCP connection (a meter or an RS-485 gateway) shared by many unit ids."""

    def __init__(
        self, host: str, port: int = DEFAULT_PORT, *, timeout: float = 1.0, retries: int = 0
    ) -> None:
        super().__init__(timeout=timeout, retries=retries)
        self.host = host
        self.port = port

    @classmethod
    def for_target(
        cls, target: ModbusTcpTarget, *, timeout: float = 1.0, retries: int = 0
    ) -> ModbusTcpSource:
        """A source for the endpoint of `target` (its unit is passed to `read`)."""
        return cls(target.host, target.port, timeout=timeout, retries=retries)

    @property
    def endpoint(self) -> str:
        """host:port of the meter or gateway."""
        return _endpoint(self.host, self.port)

    def _new_client(self) -> ModbusBaseClient:
        return AsyncModbusTcpClient(
            self.host,
            port=self.port,
            name=f"meter {self.endpoint}",
            timeout=self.timeout,
            retries=self.retries,
            # We reconnect on the next read instead: a background reconnect loop would
            # race with it and keep retrying a gateway nobody is polling.
            reconnect_delay=0,
        )

    def _unreachable(self, unit: int | None, cause: Exception | None) -> MeterUnreachableError:
        for_unit = f" (for unit {unit})" if unit is not None else ""
        return MeterUnreachableError(
            f"cannot connect to Modbus TCP {self.endpoint}{for_unit} within "
            f"{self.timeout:g} s: check the host and port in the meter URL, that the "
            f"meter or gateway is powered and on the network, and that no firewall "
            f"blocks TCP port {self.port}",
            unit=unit,
        )

    def _lost(self, unit: int) -> MeterUnreachableError:
        return MeterUnreachableError(
            f"lost the connection to Modbus TCP {self.endpoint} while reading unit {unit}: "
            "check that the meter or gateway is powered and on the network; the next "
            "read reconnects",
            unit=unit,
        )

    def _timeout_advice(self) -> str:
        return (
            "check the unit id set on the meter, the RS-485 wiring (A/B, termination) and "
            "the gateway's baud rate and parity, and that the meter is powered"
        )


class ModbusRtuSource(ModbusSource):
    """One RS-485 line on a local serial device (Modbus RTU) shared by many unit ids.

    pymodbus does the RTU framing and drops answers from units other than the one asked;
    this class adds what a shared half-duplex line needs: the 3.5-character silence before
    every request, and after an unanswered request a wait for the line to fall quiet, so
    that the next request does not collide with the tail of a late or garbled answer. It
    also counts what arrived meanwhile, to tell a silent unit (timeout) from a garbled line.
    """

    def __init__(
        self,
        device: str,
        serial: SerialSettings | None = None,
        *,
        timeout: float = 1.0,
        retries: int = 0,
    ) -> None:
        super().__init__(timeout=timeout, retries=retries)
        self.device = device
        self.serial = serial or SerialSettings()
        self._received = 0  # bytes arrived since the last request was sent
        self._last_rx = -float("inf")  # monotonic time bytes last arrived

    @classmethod
    def for_target(
        cls, target: ModbusRtuTarget, *, timeout: float = 1.0, retries: int = 0
    ) -> ModbusRtuSource:
        """A source for the serial device of `target` (its unit is passed to `read`)."""
        return cls(target.device, target.serial, timeout=timeout, retries=retries)

    @property
    def endpoint(self) -> str:
        """The serial device."""
        return self.device

    @property
    def where(self) -> str:
        return f"on {self.device}"

    def _new_client(self) -> ModbusBaseClient:
        s = self.serial
        client = AsyncModbusSerialClient(
            self.device,
            framer=FramerType.RTU,
            baudrate=s.baudrate,
            bytesize=s.bytesize,
            parity=s.parity,
            stopbits=s.stopbits,
            name=f"meters on {self.device}",
            timeout=self.timeout,
            retries=self.retries,
            reconnect_delay=0,  # reopened by the next read, as on TCP
        )
        # Count what arrives, to tell a silent unit from a garbled line. The serial
        # transport hands every chunk to its protocol's data_received (the asyncio
        # protocol contract), so wrapping it on the instance sees every byte.
        protocol = client.ctx
        inner = protocol.data_received

        def counting(data: bytes) -> None:
            self._received += len(data)
            self._last_rx = time.monotonic()
            inner(data)

        protocol.data_received = counting  # type: ignore[method-assign]
        return client

    def _frame_gap(self) -> float:
        return self.serial.frame_gap

    def _before_request(self) -> None:
        self._received = 0

    async def _after_silence(self) -> int:
        # Wait until the line has been quiet for a frame gap: bytes still arriving are the
        # rest of a late or garbled answer, and sending into them would collide on the
        # half-duplex line. Bounded by the time of the longest frame, in case a device
        # babbles without pause. (pymodbus empties its receive buffer with every request,
        # so what arrived before is never framed as the next answer.)
        quiet = max(self.serial.frame_gap, 2 * self.serial.char_time)
        deadline = time.monotonic() + 256 * self.serial.char_time + quiet
        while (now := time.monotonic()) < deadline and now - self._last_rx < quiet:
            await asyncio.sleep(quiet - (now - self._last_rx))
        return self._received

    def _unreachable(self, unit: int | None, cause: Exception | None) -> MeterUnreachableError:
        for_unit = f" (for unit {unit})" if unit is not None else ""
        device = self.device
        if not os.path.exists(device):
            problem = (
                f"serial device {device} does not exist: check that the USB-RS485 adapter is "
                "plugged in and which device it got (ls /dev/ttyUSB* /dev/ttyACM* "
                "/dev/serial/by-id/); a /dev/serial/by-id/ path stays the same across reboots"
            )
        elif not os.access(device, os.R_OK | os.W_OK):
            problem = (
                f"no permission to open serial device {device}: add the agent's user to the "
                "group that owns it (usually dialout) and restart the agent"
            )
        else:
            problem = self._open_problem(cause)
        return MeterUnreachableError(f"Modbus RTU{for_unit}: {problem}", unit=unit)

    def _open_problem(self, cause: Exception | None) -> str:
        """Why the device exists but does not open. pymodbus reports most failures as a bare
        False, so unless it passed the error on, open the device once more to learn it."""
        device = self.device
        if cause is None:
            try:
                port = pyserial.Serial(
                    device, baudrate=self.serial.baudrate, bytesize=self.serial.bytesize,
                    parity=self.serial.parity, stopbits=self.serial.stopbits, exclusive=True,
                )
            except (OSError, ValueError, *_TERMIOS_ERRORS) as exc:
                cause = exc.with_traceback(None)
            else:
                port.close()
                return (
                    f"serial device {device} did not open but does now: another program may "
                    f"have held it for a moment (check with fuser {device}); the next read "
                    "tries again"
                )
        text = str(cause)
        if isinstance(cause, OSError) and cause.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EBUSY):
            return (
                f"serial device {device} is in use: another program, or another meter URL naming "
                f"the same adapter by another path, holds it (check with fuser {device})"
            )
        if not isinstance(cause, OSError) or "configure" in text:
            # termios refused the settings, or the device is no terminal at all
            return (
                f"the driver of serial device {device} refused the line settings "
                f"{self.serial} ({text}): check that the adapter supports them, and that "
                f"{device} is an RS-485 adapter at all"
            )
        return (
            f"cannot open serial device {device} ({text}): check the adapter, and that no "
            f"other program holds it (fuser {device})"
        )

    def _lost(self, unit: int) -> MeterUnreachableError:
        return MeterUnreachableError(
            f"lost serial device {self.device} while reading unit {unit}: check that the "
            "USB-RS485 adapter is still plugged in; the next read reopens it",
            unit=unit,
        )

    def _timeout_advice(self) -> str:
        return (
            "check the unit id set on the meter, the A/B wiring (swap A and B if unsure) and "
            f"the bus termination, that the meter's baud rate, parity and stop bits match "
            f"the URL ({self.serial}), that the meter is powered, and the USB adapter "
            f"(plugged in, and {self.device} is the right device)"
        )

    def _no_answer(self, unit: int, span: str, received: int) -> MeterReadError:
        if not received:
            return super()._no_answer(unit, span, received)
        return MeterGarbledError(
            f"unit {unit} {self.where} gave no valid answer to a read of registers {span} "
            f"within {self.timeout:g} s, but {received} bytes of something else arrived "
            "(a bad checksum, a cut-off or late frame, or another unit's answer): check that "
            f"the meter's baud rate, parity and stop bits match the URL ({self.serial}), that "
            "no other meter on the bus has this unit id, and the A/B wiring, termination and "
            "cable shielding",
            unit=unit,
            received=received,
        )


def open_source(target: ModbusTarget, timeout: float = 1.0, retries: int = 0) -> ModbusSource:
    """The source serving `target`'s bus (give it `target.unit` when reading). It connects
    on the first read; meters with the same `bus_key` should share one source."""
    if isinstance(target, ModbusRtuTarget):
        return ModbusRtuSource.for_target(target, timeout=timeout, retries=retries)
    if isinstance(target, ModbusTcpTarget):
        return ModbusTcpSource.for_target(target, timeout=timeout, retries=retries)
    raise MeterConfigError(f"no Modbus source for {target!r}; parse the URL with parse_meter_url")


# A map's plan never changes, and planning on every read was 5 % of the agent's CPU. Keyed by
# identity (hashing a frozen map hashes all its registers); the entry keeps the map alive, so
# an id is never reused for another map while its plan is cached.
_PLANS: dict[tuple[int, int], tuple[RegisterMap, tuple[ReadBlock, ...]]] = {}


def _plan(regmap: RegisterMap, max_block: int) -> tuple[ReadBlock, ...]:
    key = (id(regmap), max_block)
    cached = _PLANS.get(key)
    if cached is None or cached[0] is not regmap:
        if len(_PLANS) > 256:
            _PLANS.clear()  # maps rediscovered again and again (a SunSpec device that keeps changing)
        cached = _PLANS[key] = (regmap, tuple(regmap.plan(max_block)))
    return cached[1]
