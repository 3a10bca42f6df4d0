"""Modbus TCP meter source: the I/O shell the agent polls meters through.

One `ModbusTcpSource` holds one TCP connection to a Modbus TCP meter or an RS-485 gateway
and reads any number of unit ids behind it, block by block as the register map plans.
Failures come out as `MeterReadError` subclasses whose messages say what to check at the
meter cabinet. A dead unit costs one short timeout and never poisons the connection for
the other units: if pymodbus drops the connection, the next read reconnects.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusIOException
from pymodbus.pdu import ModbusPDU

from edge.registermap import ReadBlock, RegisterMap

__all__ = [
    "DEFAULT_PORT",
    "MeterConfigError",
    "MeterExceptionError",
    "MeterReadError",
    "MeterTimeoutError",
    "MeterUnreachableError",
    "ModbusTcpSource",
    "ModbusTcpTarget",
    "parse_meter_url",
]

DEFAULT_PORT = 502
_UNITS = range(1, 248)  # 0 is broadcast (no answer), 248..255 are reserved

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


class MeterConfigError(ValueError):
    """A meter URL or setting that cannot work; the message names it and the problem."""


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


class MeterExceptionError(MeterReadError):
    """The unit (or the gateway in front of it) answered with a Modbus exception."""

    def __init__(self, message: str, *, unit: int | None, code: int) -> None:
        super().__init__(message, unit=unit, reason=f"modbus-exception-{code}")
        self.code = code


class MeterUnreachableError(MeterReadError):
    """No TCP connection to the meter or gateway."""

    def __init__(self, message: str, *, unit: int | None) -> None:
        super().__init__(message, unit=unit, reason="unreachable")


@dataclass(frozen=True)
class ModbusTcpTarget:
    """Where one meter is: a Modbus TCP endpoint and the unit id behind it."""

    host: str
    port: int
    unit: int

    @property
    def endpoint(self) -> str:
        """host:port, with IPv6 addresses bracketed."""
        return _endpoint(self.host, self.port)

    @property
    def url(self) -> str:
        """The canonical meter URL for this target."""
        return f"modbus-tcp://{self.endpoint}?unit={self.unit}"


def parse_meter_url(url: str) -> ModbusTcpTarget:
    """Parse ``modbus-tcp://host[:port]?unit=N`` (port defaults to 502, unit is 1..247)."""
    example = "e.g. modbus-tcp://192.168.1.50:502?unit=1"

    def fail(problem: str) -> MeterConfigError:
        return MeterConfigError(f"meter URL {url!r}: {problem}")

    if not isinstance(url, str) or "://" not in url:
        raise fail(f"not a meter URL; expected modbus-tcp://host:port?unit=N ({example})")
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme == "modbus-rtu":
        raise fail(
            "modbus-rtu:// (RS-485 on a local serial port) is not supported yet; put a "
            f"Modbus TCP gateway in front of the meter and use modbus-tcp:// ({example})"
        )
    if scheme != "modbus-tcp":
        raise fail(f"unsupported scheme {parts.scheme!r}; expected modbus-tcp:// ({example})")
    if parts.username is not None or parts.password is not None:
        raise fail("Modbus TCP has no credentials; remove the user:password@ part")
    if parts.path not in ("", "/"):
        raise fail(f"unexpected path {parts.path!r}; put the unit id in the query ({example})")
    if parts.fragment:
        raise fail(f"unexpected fragment #{parts.fragment}")
    host = parts.hostname
    if not host:
        raise fail(f"no host; give the meter's or gateway's address ({example})")
    try:
        port = parts.port
    except ValueError:
        raise fail("the port is not a number in 1..65535") from None
    if port is None:
        port = DEFAULT_PORT
    if not 1 <= port <= 65535:
        raise fail(f"port {port} is not in 1..65535")

    query = parse_qsl(parts.query, keep_blank_values=True)
    keys = [key for key, _ in query]
    unknown = sorted(set(keys) - {"unit"})
    if unknown:
        raise fail(f"unknown parameter(s) {', '.join(unknown)}; the only parameter is unit")
    if keys.count("unit") > 1:
        raise fail("unit is given more than once")
    if not keys:
        raise fail(f"no unit id; add ?unit=N with the meter's Modbus address 1..247 ({example})")
    raw_unit = dict(query)["unit"]
    try:
        unit = int(raw_unit)
    except ValueError:
        raise fail(f"unit {raw_unit!r} is not a number; expected the meter's Modbus address 1..247") from None
    if unit not in _UNITS:
        raise fail(f"unit {unit} is not a valid Modbus address; expected 1..247")
    return ModbusTcpTarget(host=host, port=port, unit=unit)


class ModbusTcpSource:
    """One Modbus TCP connection (a meter or an RS-485 gateway) shared by many unit ids."""

    def __init__(
        self, host: str, port: int = DEFAULT_PORT, *, timeout: float = 1.0, retries: int = 0
    ) -> None:
        if timeout <= 0:
            raise MeterConfigError(f"Modbus timeout must be positive, got {timeout}")
        if retries < 0:
            raise MeterConfigError(f"Modbus retries must be 0 or more, got {retries}")
        self.host = host
        self.port = port
        self.timeout = timeout
        self.retries = retries
        self._client: AsyncModbusTcpClient | None = None
        # Serialises whole reads so a reconnect never races and one unit's blocks stay together.
        self._lock = asyncio.Lock()

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

    @property
    def connected(self) -> bool:
        """Whether the TCP connection is currently up."""
        return self._client is not None and self._client.connected

    async def connect(self) -> None:
        """Open the connection now (reads also connect on demand)."""
        async with self._lock:
            await self._ensure_connected(unit=None)

    async def read(self, unit: int, regmap: RegisterMap, max_block: int = 64) -> dict[str, float]:
        """Read every register of `regmap` from `unit`; values by register name, scaled."""
        if unit not in _UNITS:
            raise MeterConfigError(
                f"unit {unit} at {self.endpoint} is not a valid Modbus address; expected 1..247"
            )
        if not 1 <= max_block <= 125:
            raise MeterConfigError(
                f"max_block {max_block} is outside 1..125, the most one Modbus read may ask for"
            )
        reads = []
        async with self._lock:
            client = await self._ensure_connected(unit)
            for block in regmap.plan(max_block):
                reads.append((block, await self._read_block(client, unit, regmap, block)))
        return regmap.decode_blocks(reads)

    async def close(self) -> None:
        """Close the connection; a later read reconnects."""
        if self._client is not None:
            self._client.close()
            self._client = None

    async def __aenter__(self) -> ModbusTcpSource:
        await self.connect()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def _ensure_connected(self, unit: int | None) -> AsyncModbusTcpClient:
        client = self._client
        if client is not None and client.connected:
            return client
        if client is None:
            client = AsyncModbusTcpClient(
                self.host,
                port=self.port,
                name=f"meter {self.endpoint}",
                timeout=self.timeout,
                retries=self.retries,
                # We reconnect on the next read instead: a background reconnect loop would
                # race with it and keep retrying a gateway nobody is polling.
                reconnect_delay=0,
            )
            self._client = client
        try:
            ok = await client.connect()
        except OSError:
            ok = False
        if not ok:
            for_unit = f" (for unit {unit})" if unit is not None else ""
            raise MeterUnreachableError(
                f"cannot connect to Modbus TCP {self.endpoint}{for_unit} within "
                f"{self.timeout:g} s: check the host and port in the meter URL, that the "
                f"meter or gateway is powered and on the network, and that no firewall "
                f"blocks TCP port {self.port}",
                unit=unit,
            )
        return client

    async def _read_block(
        self, client: AsyncModbusTcpClient, unit: int, regmap: RegisterMap, block: ReadBlock
    ) -> list[int]:
        start, count, span = block.start, block.count, block.span
        reader = (
            client.read_input_registers if block.function == 4 else client.read_holding_registers
        )
        try:
            response: ModbusPDU = await reader(start, count=count, device_id=unit)
        except ModbusIOException as exc:
            if "device id" in exc.string or "transaction id" in exc.string:
                raise MeterReadError(
                    f"unit {unit} at {self.endpoint}: a mismatched answer to the read of "
                    f"registers {span} ({exc.string}); check that no two meters on the bus "
                    "share this unit id",
                    unit=unit,
                    reason="bad-response",
                ) from None
            raise MeterTimeoutError(
                f"unit {unit} at {self.endpoint} did not answer a read of registers {span} "
                f"within {self.timeout:g} s: check the unit id set on the meter, the RS-485 "
                "wiring (A/B, termination) and the gateway's baud rate and parity, and that "
                "the meter is powered",
                unit=unit,
            ) from None
        except (ConnectionException, OSError):
            raise MeterUnreachableError(
                f"lost the connection to Modbus TCP {self.endpoint} while reading unit {unit}: "
                "check that the meter or gateway is powered and on the network; the next "
                "read reconnects",
                unit=unit,
            ) from None
        if response.isError():
            code = int(getattr(response, "exception_code", 0))
            name, advice = _EXCEPTION_ADVICE.get(
                code, ("unknown exception", "see the meter's Modbus documentation")
            )
            detail = advice.format(
                function=block.function,
                span=span,
                map=regmap.name,
                unit=unit,
                count=count,
                endpoint=self.endpoint,
            )
            raise MeterExceptionError(
                f"unit {unit} at {self.endpoint} answered the read of registers {span} "
                f"(function {block.function}) with Modbus exception {code} ({name}): {detail}",
                unit=unit,
                code=code,
            )
        registers = list(getattr(response, "registers", []))
        if len(registers) < count:
            raise MeterReadError(
                f"unit {unit} at {self.endpoint} returned {len(registers)} registers for a "
                f"read of {count} at {span}; the meter or gateway is misbehaving",
                unit=unit,
                reason="bad-response",
            )
        return registers[:count]


def _endpoint(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
