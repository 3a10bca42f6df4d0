"""Modbus meter URLs: where a meter is, and how the bus it shares is set up (pure, no I/O).

``modbus-tcp://host[:port]?unit=N`` names a Modbus TCP meter or a TCP-to-RS-485 gateway,
``modbus-rtu:///dev/ttyUSB0?unit=N&baud=9600&parity=N&stopbits=1`` a meter on a serial line
of this machine. `parse_meter_url` turns either into a target whose `bus_key` says which
connection it shares; `group_by_bus` checks that meters sharing a bus agree on it. Errors
name the URL and say what is expected.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import SplitResult, parse_qsl, quote, unquote, urlsplit

__all__ = [
    "BAUD_RATES",
    "DEFAULT_PORT",
    "MAX_READ",
    "BusKey",
    "MeterConfigError",
    "ModbusRtuTarget",
    "ModbusTarget",
    "ModbusTcpTarget",
    "SerialSettings",
    "group_by_bus",
    "parse_meter_url",
]

DEFAULT_PORT = 502
_UNITS = range(1, 248)  # 0 is broadcast (no answer), 248..255 are reserved
MAX_READ = 125  # registers one read request may ask for (Modbus application protocol 6.3)
# The rates RS-485 meters offer; anything else is almost certainly a typo.
BAUD_RATES: tuple[int, ...] = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)
_PARITIES = ("N", "E", "O")  # none, even, odd
_TCP_EXAMPLE = "e.g. modbus-tcp://192.168.1.50:502?unit=1"
_RTU_EXAMPLE = "e.g. modbus-rtu:///dev/ttyUSB0?unit=1&baud=9600&parity=N"
_RTU_PARAMS = ("unit", "baud", "parity", "stopbits", "bytesize")


class MeterConfigError(ValueError):
    """A meter URL or setting that cannot work; the message names it and the problem."""


# -- where meters are ----------------------------------------------------------------------

BusKey = tuple[str, str] | tuple[str, str, int]


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

    @property
    def bus_key(self) -> BusKey:
        """What one connection serves: every unit behind this host:port."""
        return ("tcp", self.host, self.port)


@dataclass(frozen=True)
class SerialSettings:
    """How bytes travel on one RS-485 line; every meter on the line must use the same."""

    baudrate: int = 9600
    parity: str = "N"
    stopbits: int = 1
    bytesize: int = 8

    def __post_init__(self) -> None:
        problem = _serial_problem(self.baudrate, self.parity, self.stopbits, self.bytesize)
        if problem:
            raise MeterConfigError(f"serial settings {self}: {problem}")

    def __str__(self) -> str:
        """The way meter manuals and displays write it: ``9600 8N1``."""
        return f"{self.baudrate} {self.bytesize}{self.parity}{self.stopbits}"

    @property
    def char_time(self) -> float:
        """Seconds one character takes on the wire (start, data, parity and stop bits)."""
        bits = 1 + self.bytesize + (self.parity != "N") + self.stopbits
        return bits / self.baudrate

    @property
    def frame_gap(self) -> float:
        """The silence that ends a frame and must precede the next request: 3.5 characters,
        fixed at 1.75 ms above 19200 baud (Modbus over Serial Line, 2.5.1.1)."""
        return 0.00175 if self.baudrate > 19200 else 3.5 * self.char_time

    def differences(self, other: SerialSettings) -> list[str]:
        """What differs from `other`, for messages: ``["baud 9600 vs 19200", ...]``."""
        pairs = [
            ("baud", self.baudrate, other.baudrate),
            ("parity", self.parity, other.parity),
            ("stop bits", self.stopbits, other.stopbits),
            ("data bits", self.bytesize, other.bytesize),
        ]
        return [f"{name} {a} vs {b}" for name, a, b in pairs if a != b]


@dataclass(frozen=True)
class ModbusRtuTarget:
    """Where one meter is: a serial device on this machine, its line settings, the unit id."""

    device: str
    unit: int
    serial: SerialSettings = field(default_factory=SerialSettings)

    @property
    def endpoint(self) -> str:
        """The serial device, as messages name it."""
        return self.device

    @property
    def url(self) -> str:
        """The canonical meter URL for this target, every line setting spelled out."""
        s = self.serial
        return (
            f"modbus-rtu://{quote(self.device, safe='/:@-._~+,=')}?unit={self.unit}"
            f"&baud={s.baudrate}&parity={s.parity}&stopbits={s.stopbits}&bytesize={s.bytesize}"
        )

    @property
    def bus_key(self) -> BusKey:
        """What one connection serves: every unit on this serial device."""
        return ("rtu", self.device)


ModbusTarget = ModbusTcpTarget | ModbusRtuTarget


def parse_meter_url(url: str) -> ModbusTarget:
    """Parse a Modbus meter URL:

    * ``modbus-tcp://host[:port]?unit=N`` (port defaults to 502), or
    * ``modbus-rtu:///dev/ttyUSB0?unit=N[&baud=9600][&parity=N][&stopbits=1][&bytesize=8]``
      (defaults 9600 8N1; parity N, E or O).

    The unit id is 1..247. Errors name the URL and say what is expected.
    """

    def fail(problem: str) -> MeterConfigError:
        return MeterConfigError(f"meter URL {url!r}: {problem}")

    if not isinstance(url, str) or "://" not in url:
        raise fail(
            "not a meter URL; expected modbus-tcp://host:port?unit=N "
            f"({_TCP_EXAMPLE}) or modbus-rtu:///dev/ttyUSB0?unit=N"
        )
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in ("modbus-tcp", "modbus-rtu"):
        raise fail(
            f"unsupported scheme {parts.scheme!r}; expected modbus-tcp:// ({_TCP_EXAMPLE}) "
            f"or modbus-rtu:// ({_RTU_EXAMPLE})"
        )
    if parts.fragment:
        raise fail(f"unexpected fragment #{parts.fragment}")
    if scheme == "modbus-rtu":
        return _parse_rtu(parts, fail)

    if parts.username is not None or parts.password is not None:
        raise fail("Modbus TCP has no credentials; remove the user:password@ part")
    if parts.path not in ("", "/"):
        raise fail(f"unexpected path {parts.path!r}; put the unit id in the query ({_TCP_EXAMPLE})")
    host = parts.hostname
    if not host:
        raise fail(f"no host; give the meter's or gateway's address ({_TCP_EXAMPLE})")
    try:
        port = parts.port
    except ValueError:
        raise fail("the port is not a number in 1..65535") from None
    if port is None:
        port = DEFAULT_PORT
    if not 1 <= port <= 65535:
        raise fail(f"port {port} is not in 1..65535")

    params = _query(parts.query, ("unit",), fail, "the only parameter is unit")
    unit = _unit(params, fail, _TCP_EXAMPLE)
    return ModbusTcpTarget(host=host, port=port, unit=unit)


def _parse_rtu(parts: SplitResult, fail: Callable[[str], MeterConfigError]) -> ModbusRtuTarget:
    if parts.netloc:
        # modbus-rtu://dev/ttyUSB0 or modbus-rtu://ttyUSB0: one slash short of a path.
        raise fail(
            f"{parts.netloc!r} stands where a host would; the serial device is an absolute "
            f"path after three slashes ({_RTU_EXAMPLE})"
        )
    device = unquote(parts.path)
    if device in ("", "/"):
        raise fail(
            "no serial device; give the RS-485 adapter's device, e.g. /dev/ttyUSB0 or a "
            f"stable /dev/serial/by-id/... path ({_RTU_EXAMPLE})"
        )
    if device.endswith("/"):
        raise fail(f"serial device {device!r} ends in '/'; name the device itself, e.g. /dev/ttyUSB0")
    params = _query(
        parts.query, _RTU_PARAMS, fail, f"the parameters are {', '.join(_RTU_PARAMS)}"
    )
    unit = _unit(params, fail, _RTU_EXAMPLE)

    raw_baud = params.get("baud", "9600")
    try:
        baud = int(raw_baud)
    except ValueError:
        raise fail(
            f"baud {raw_baud!r} is not a number; expected one of "
            f"{', '.join(map(str, BAUD_RATES))} (as set on the meter)"
        ) from None
    parity = params.get("parity", "N").upper()
    raw_stop = params.get("stopbits", "1")
    raw_size = params.get("bytesize", "8")
    stopbits = int(raw_stop) if raw_stop.isdigit() else -1
    bytesize = int(raw_size) if raw_size.isdigit() else -1
    # Report the value as written, not as converted.
    problem = _serial_problem(
        baud, parity, stopbits, bytesize, shown={"parity": params.get("parity"),
                                                 "stopbits": raw_stop, "bytesize": raw_size}
    )
    if problem:
        raise fail(problem)
    return ModbusRtuTarget(device, unit, SerialSettings(baud, parity, stopbits, bytesize))


def _serial_problem(
    baud: int, parity: str, stopbits: int, bytesize: int, shown: dict[str, str | None] | None = None
) -> str | None:
    """What is wrong with these line settings, or None."""
    shown = shown or {}
    if baud not in BAUD_RATES:
        return (
            f"baud {baud} is not a standard rate; expected one of "
            f"{', '.join(map(str, BAUD_RATES))} (as set on the meter)"
        )
    if parity not in _PARITIES:
        value = shown.get("parity") or parity
        return f"parity {value!r} is not N (none), E (even) or O (odd)"
    if stopbits not in (1, 2):
        value = shown.get("stopbits") or stopbits
        return f"stopbits {value!r} is not 1 or 2"
    if bytesize != 8:
        value = shown.get("bytesize") or bytesize
        return (
            f"bytesize {value!r} cannot carry Modbus RTU, which always sends 8 data bits "
            "(7 is Modbus ASCII); use bytesize=8 or leave it out"
        )
    return None


def _query(
    query: str, known: tuple[str, ...], fail: Callable[[str], MeterConfigError], hint: str
) -> dict[str, str]:
    pairs = parse_qsl(query, keep_blank_values=True)
    keys = [key for key, _ in pairs]
    unknown = sorted(set(keys) - set(known))
    if unknown:
        raise fail(f"unknown parameter(s) {', '.join(unknown)}; {hint}")
    for key in known:
        if keys.count(key) > 1:
            raise fail(f"{key} is given more than once")
    return dict(pairs)


def _unit(params: dict[str, str], fail: Callable[[str], MeterConfigError], example: str) -> int:
    if "unit" not in params:
        raise fail(f"no unit id; add ?unit=N with the meter's Modbus address 1..247 ({example})")
    raw_unit = params["unit"]
    try:
        unit = int(raw_unit)
    except ValueError:
        raise fail(f"unit {raw_unit!r} is not a number; expected the meter's Modbus address 1..247") from None
    if unit not in _UNITS:
        raise fail(f"unit {unit} is not a valid Modbus address; expected 1..247")
    return unit


def group_by_bus(
    meters: Iterable[tuple[str, ModbusTarget]],
) -> dict[BusKey, list[tuple[str, ModbusTarget]]]:
    """Meters (name, target) grouped by the connection that serves them, in the given order.

    Raises MeterConfigError naming both meters when two meters on one serial device disagree
    on its settings (one RS-485 line has one baud rate, parity, stop bits and data bits), or
    when two meters on one bus have the same unit id (they would read the same meter).
    """
    groups: dict[BusKey, list[tuple[str, ModbusTarget]]] = {}
    for name, target in meters:
        group = groups.setdefault(target.bus_key, [])
        for other_name, other in group:
            rtu_pair = isinstance(target, ModbusRtuTarget) and isinstance(other, ModbusRtuTarget)
            if rtu_pair and target.serial != other.serial:
                differ = ", ".join(other.serial.differences(target.serial))
                raise MeterConfigError(
                    f"meters {other_name!r} and {name!r} share serial device "
                    f"{target.endpoint} but not its settings ({differ}: {other.url} vs "
                    f"{target.url}); every meter on one RS-485 line talks at the same baud "
                    "rate, parity and stop bits: set them alike on the meters and in both URLs"
                )
            if other.unit == target.unit:
                raise MeterConfigError(
                    f"meters {other_name!r} and {name!r} are both unit {target.unit} on "
                    f"{target.endpoint}; they would read the same meter: give each meter on a "
                    "bus its own unit id (set on the meter) and use it in its URL"
                )
        group.append((name, target))
    return groups



def _endpoint(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
