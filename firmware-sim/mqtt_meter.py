"""Simulated meters that publish JSON readings to an MQTT broker, with injectable faults.

Each meter is a `SimulatedMeter` (the same physics as the Modbus simulator) publishing to
``<prefix>/<unit>`` every `interval_s` seconds a payload shaped like a typical meter
gateway's::

    {"ts": 1714564800123, "meter": "sim-1",
     "voltage": [231.2, 229.8, 230.5], "current": [1.92, 0.87, 1.12],
     "power": {"total": 812.4, "reactive": 131.9, "phases": [410.7, 180.2, 221.5]},
     "pf": 0.987, "frequency": 50.012,
     "energy": {"import_wh": 1234567.8, "export_wh": 0.0}}

``ts`` is the meter's clock in milliseconds since 1970, energy is in Wh (so the agent's
payload map scales it to kWh: `PAYLOAD_FIELDS` is that map, `example_meter_config` a
ready [[meters]] entry). Values are computed at exactly ``ts / 1000`` seconds (true time),
so a test can rebuild them with ``SimulatedMeter.for_unit(unit, seed)``.

Faults (`MqttFault`): ``silent`` (stops publishing), ``malformed`` (truncated JSON),
``missing`` (no ``frequency`` key), ``clock-offset:SECONDS`` (the meter's clock is off by a
fixed amount) and ``clock-drift:PPM`` (it runs fast or slow from the moment the fault is
set). The values stay those of true time: only the meter's timestamp is wrong.
"""

from __future__ import annotations

import argparse
import asyncio
import enum
import functools
import json
import math
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from .arguments import meter_count
from .meter import SimulatedMeter

__all__ = [
    "PAYLOAD_FIELDS",
    "TIMESTAMP",
    "MqttFault",
    "MqttFaultKind",
    "MqttSimulatorError",
    "SimulatedMqttMeters",
    "add_mqtt_command",
    "example_meter_config",
    "meter_time_ms",
    "render_payload",
]

# The payload map an agent configures for these meters ([meters.fields]).
PAYLOAD_FIELDS: dict[str, dict[str, Any]] = {
    **{f"voltage_l{n}": {"path": f"voltage[{n - 1}]", "unit": "V", "min": 180, "max": 280} for n in (1, 2, 3)},
    **{f"current_l{n}": {"path": f"current[{n - 1}]", "unit": "A", "min": 0} for n in (1, 2, 3)},
    **{f"power_l{n}": {"path": f"power.phases[{n - 1}]", "unit": "W"} for n in (1, 2, 3)},
    "power_total": {"path": "power.total", "unit": "W"},
    "reactive_power_total": {"path": "power.reactive", "unit": "VAr"},
    "power_factor_total": {"path": "pf", "unit": "", "min": -1, "max": 1},
    "frequency": {"path": "frequency", "unit": "Hz", "min": 45, "max": 65},
    "energy_import": {"path": "energy.import_wh", "unit": "kWh", "kind": "counter", "scale": 0.001, "min": 0},
    "energy_export": {"path": "energy.export_wh", "unit": "kWh", "kind": "counter", "scale": 0.001, "min": 0},
}
TIMESTAMP: dict[str, str] = {"path": "ts", "format": "epoch_ms"}


class MqttSimulatorError(RuntimeError):
    """The simulator cannot reach its broker or was asked for something it cannot do."""


class MqttFaultKind(enum.Enum):
    SILENT = "silent"
    MALFORMED = "malformed"
    MISSING = "missing"
    CLOCK_OFFSET = "clock-offset"
    CLOCK_DRIFT = "clock-drift"


@dataclass(frozen=True)
class MqttFault:
    """A misbehaviour of one simulated MQTT meter; `value` is seconds (offset) or ppm (drift)."""

    kind: MqttFaultKind
    value: float = 0.0

    def __post_init__(self) -> None:
        if not math.isfinite(self.value):
            raise ValueError(f"{self.kind.value}: the amount must be a finite number")
        if self.kind not in (MqttFaultKind.CLOCK_OFFSET, MqttFaultKind.CLOCK_DRIFT) and self.value:
            raise ValueError(f"fault {self.kind.value} takes no amount")

    @classmethod
    def parse(cls, text: str) -> MqttFault:
        """``silent``, ``malformed``, ``missing``, ``clock-offset:SECONDS``, ``clock-drift:PPM``."""
        name, sep, amount = text.strip().partition(":")
        try:
            kind = MqttFaultKind(name)
        except ValueError:
            raise ValueError(
                f"unknown fault {name!r}; expected silent, malformed, missing, "
                "clock-offset:SECONDS or clock-drift:PPM"
            ) from None
        if kind in (MqttFaultKind.CLOCK_OFFSET, MqttFaultKind.CLOCK_DRIFT):
            if not sep:
                raise ValueError(f"{name} needs an amount, e.g. {name}:{'3600' if kind is MqttFaultKind.CLOCK_OFFSET else '500'}")
            try:
                value = float(amount)
            except ValueError:
                raise ValueError(f"{name}:{amount}: {amount!r} is not a number") from None
            return cls(kind, value)
        if sep:
            raise ValueError(f"fault {name} takes no amount")
        return cls(kind)

    def __str__(self) -> str:
        if self.kind in (MqttFaultKind.CLOCK_OFFSET, MqttFaultKind.CLOCK_DRIFT):
            return f"{self.kind.value}:{self.value:g}"
        return self.kind.value


def meter_time_ms(true_ms: int, fault: MqttFault | None, fault_since_ms: int) -> int:
    """The meter's clock at true time `true_ms` (pure)."""
    if fault is None:
        return true_ms
    if fault.kind is MqttFaultKind.CLOCK_OFFSET:
        return true_ms + round(fault.value * 1000)
    if fault.kind is MqttFaultKind.CLOCK_DRIFT:
        return true_ms + round((true_ms - fault_since_ms) * fault.value / 1e6)
    return true_ms


def render_payload(unit: int, values: dict[str, float], ts_ms: int, fault: MqttFault | None = None) -> bytes | None:
    """The JSON a meter publishes for `values` (a `SimulatedMeter` reading) at meter time
    `ts_ms`; None when the fault silences it (pure)."""
    kind = fault.kind if fault is not None else None
    if kind is MqttFaultKind.SILENT:
        return None
    doc: dict[str, Any] = {
        "ts": ts_ms,
        "meter": f"sim-{unit}",
        "voltage": [values[f"voltage_l{n}"] for n in (1, 2, 3)],
        "current": [values[f"current_l{n}"] for n in (1, 2, 3)],
        "power": {
            "total": values["power_total"],
            "reactive": values["reactive_power_total"],
            "phases": [values[f"power_l{n}"] for n in (1, 2, 3)],
        },
        "pf": values["power_factor_total"],
        "frequency": values["frequency"],
        "energy": {
            "import_wh": values["energy_import"] * 1000.0,
            "export_wh": values["energy_export"] * 1000.0,
        },
    }
    if kind is MqttFaultKind.MISSING:
        del doc["frequency"]
    text = json.dumps(doc, separators=(",", ":"))
    if kind is MqttFaultKind.MALFORMED:
        # A firmware that lost the end of its buffer: cut inside the power object.
        text = text[: text.index('"power"') + 20]
    return text.encode("utf-8")


def example_meter_config(
    broker: str, topic: str, meter_id: str = "sim-1", *, version: str = "3.1.1", qos: int = 1,
    interval_s: float = 1.0,
) -> str:
    """A [[meters]] entry of the agent config for one simulated meter (TOML text)."""
    lines = [
        "[[meters]]",
        f'id = "{meter_id}"',
        f'source = "mqtt://{broker}/{topic}?version={version}&qos={qos}"',
        f"interval_s = {interval_s:g}",
        "",
        "[meters.fields]",
    ]
    for name, spec in PAYLOAD_FIELDS.items():
        inner = ", ".join(f"{k} = {json.dumps(v)}" for k, v in spec.items())
        lines.append(f"{name} = {{ {inner} }}")
    lines += ["", "[meters.timestamp]", f'path = "{TIMESTAMP["path"]}"', f'format = "{TIMESTAMP["format"]}"']
    return "\n".join(lines) + "\n"


class SimulatedMqttMeters:
    """N simulated meters publishing to one broker over one client connection.

    `start()` connects (raising MqttSimulatorError if it cannot) and publishes every
    `interval_s` until `stop()`. paho runs its network loop in its own thread; publishing
    from the asyncio task is thread-safe.
    """

    def __init__(
        self,
        host: str,
        port: int,
        meters: int,
        *,
        topic_prefix: str = "site/meters",
        interval_s: float = 1.0,
        version: str = "3.1.1",
        qos: int = 1,
        seed: int = 1,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        if meters < 1:
            raise MqttSimulatorError(f"{meters} meters: need at least one")
        if not interval_s > 0:
            raise MqttSimulatorError(f"interval {interval_s} s: must be positive")
        if version not in ("3.1.1", "5"):
            raise MqttSimulatorError(f"MQTT version {version!r}: expected 3.1.1 or 5")
        if qos not in (0, 1, 2):
            raise MqttSimulatorError(f"QoS {qos}: expected 0, 1 or 2")
        prefix = topic_prefix.strip("/")
        if not prefix or "+" in prefix or "#" in prefix:
            raise MqttSimulatorError(f"topic prefix {topic_prefix!r}: must be a plain topic such as site/meters")
        self.host, self.port = host, port
        self.topic_prefix = prefix
        self.interval_s = interval_s
        self.version = version
        self.qos = qos
        self.seed = seed
        self.meters = {u: SimulatedMeter.for_unit(u, seed) for u in range(1, meters + 1)}
        self.published = {u: 0 for u in self.meters}
        self._faults: dict[int, tuple[MqttFault, int]] = {}
        self._last_t = 0.0
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"gridtrace-sim-{id(self):x}",
            protocol=MQTTProtocolVersion.MQTTv5 if version == "5" else MQTTProtocolVersion.MQTTv311,
        )
        if username is not None:
            self._client.username_pw_set(username, password)
        self._connected = threading.Event()
        self._refused: str | None = None
        self._client.on_connect = self._on_connect
        self._task: asyncio.Task[None] | None = None

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if rc.is_failure:
            self._refused = rc.getName()
        self._connected.set()

    def topic(self, unit: int) -> str:
        return f"{self.topic_prefix}/{unit}"

    def set_fault(self, unit: int, fault: MqttFault | None) -> None:
        """Make `unit` misbehave from now on (None: behave again)."""
        if unit not in self.meters:
            raise MqttSimulatorError(f"no simulated meter {unit}; meters are 1..{len(self.meters)}")
        if fault is None:
            self._faults.pop(unit, None)
        else:
            self._faults[unit] = (fault, int(time.time() * 1000))

    def faults(self) -> dict[int, MqttFault]:
        return {u: f for u, (f, _) in self._faults.items()}

    def payload(self, unit: int, true_ms: int) -> bytes | None:
        """Advance meter `unit` to true time `true_ms` and render what it publishes."""
        values = self.meters[unit].advance(true_ms / 1000.0)
        fault, since = self._faults.get(unit, (None, 0))
        return render_payload(unit, values, meter_time_ms(true_ms, fault, since), fault)

    async def start(self) -> None:
        try:
            await asyncio.to_thread(self._client.connect, self.host, self.port, 30)
        except OSError as exc:
            raise MqttSimulatorError(f"cannot connect to broker {self.host}:{self.port}: {exc}") from exc
        self._client.loop_start()
        if not await asyncio.to_thread(self._connected.wait, 10.0):
            self._client.loop_stop()
            raise MqttSimulatorError(f"broker {self.host}:{self.port} did not answer the MQTT CONNECT")
        if self._refused is not None:
            self._client.loop_stop()
            raise MqttSimulatorError(f"broker {self.host}:{self.port} refused the simulator: {self._refused}")
        self._task = asyncio.create_task(self._publish_loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        self._client.disconnect()
        self._client.loop_stop()

    def publish_all(self) -> None:
        """Publish one message per meter now (what the loop does every interval)."""
        # Time never goes backwards for the meters, even if the host clock is stepped back.
        t = max(time.time(), self._last_t)
        self._last_t = t
        true_ms = int(t * 1000)
        for unit in self.meters:
            body = self.payload(unit, true_ms)
            if body is not None:
                self._client.publish(self.topic(unit), body, qos=self.qos)
                self.published[unit] += 1

    async def _publish_loop(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            self.publish_all()
            due += self.interval_s
            await asyncio.sleep(max(0.0, due - loop.time()))


# -- `gridtrace sim mqtt` -----------------------------------------------------------------

_EPILOG = """\
example:
  gridtrace sim mqtt --broker 127.0.0.1:1883 --meters 3 --fault 2=silent --fault 3=clock-offset:3600

  publishes three simulated three-phase meters to site/meters/1..3 every second;
  meter 2 stays silent and meter 3's clock is an hour fast. It prints a [[meters]]
  entry for the agent config with the payload map these meters need.
"""


def add_mqtt_command(simulators: argparse._SubParsersAction) -> None:
    """Add `sim mqtt` to the `sim` command's subparsers."""
    p = simulators.add_parser(
        "mqtt",
        help="publish simulated meters' readings to an MQTT broker",
        description=(
            "Publish N simulated three-phase meters as JSON to <topic-prefix>/1..N on an\n"
            "MQTT broker, with realistic load curves, exact energy counters and optional\n"
            "faults. Runs until interrupted (Ctrl-C or SIGTERM)."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--broker", type=_broker, default=("127.0.0.1", 1883), metavar="HOST:PORT",
                   help="broker to publish to (default: 127.0.0.1:1883)")
    p.add_argument("--meters", type=functools.partial(meter_count, most=100_000), default=3, help="number of meters (default: %(default)s)")
    p.add_argument("--topic-prefix", default="site/meters", help="meters publish to PREFIX/N (default: %(default)s)")
    p.add_argument("--interval", type=_seconds, default=1.0, help="seconds between messages (default: %(default)s)")
    p.add_argument("--mqtt-version", choices=("3.1.1", "5"), default="3.1.1", help="MQTT version (default: %(default)s)")
    p.add_argument("--qos", type=int, choices=(0, 1, 2), default=1, help="QoS of the messages (default: %(default)s)")
    p.add_argument("--seed", type=int, default=1, help="seed for the meters' loads (default: %(default)s)")
    p.add_argument("--username", help="user name at the broker, if it wants one")
    p.add_argument("--password", help="password at the broker")
    p.add_argument("--fault", type=_fault, action="append", default=[],
                   metavar="UNIT=silent|malformed|missing|clock-offset:S|clock-drift:PPM",
                   help="make a meter misbehave; may be repeated")
    p.set_defaults(func=run_mqtt)


def run_mqtt(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_serve(args))
    except MqttSimulatorError as exc:
        print(f"gridtrace sim mqtt: {exc}", file=sys.stderr)
        return 1


async def _serve(args: argparse.Namespace) -> int:
    host, port = args.broker
    sim = SimulatedMqttMeters(
        host, port, args.meters, topic_prefix=args.topic_prefix, interval_s=args.interval,
        version=args.mqtt_version, qos=args.qos, seed=args.seed,
        username=args.username, password=args.password,
    )
    for unit, fault in args.fault:
        sim.set_fault(unit, fault)
    await sim.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    faults = ", ".join(f"meter {u} {f}" for u, f in sorted(sim.faults().items())) or "none"
    endpoint = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    print(
        f"publishing {args.meters} simulated meters to mqtt://{endpoint}/{sim.topic_prefix}/1..{args.meters} "
        f"every {args.interval:g} s (MQTT {args.mqtt_version}, QoS {args.qos}); faults: {faults}; "
        "Ctrl-C to stop. Agent config for meter 1:\n",
        flush=True,
    )
    print(example_meter_config(endpoint, sim.topic(1), version=args.mqtt_version, qos=args.qos,
                               interval_s=args.interval), flush=True)
    try:
        await stop.wait()
    finally:
        await sim.stop()
    return 0


def _broker(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: expected HOST:PORT, e.g. 127.0.0.1:1883")
    return host, int(port)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r}: the interval must be more than 0 s")
    return value


def _fault(text: str) -> tuple[int, MqttFault]:
    unit_text, sep, spec = text.partition("=")
    if not sep or not unit_text.strip().isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: expected UNIT=FAULT, e.g. 2=silent or 3=clock-offset:3600")
    try:
        return int(unit_text), MqttFault.parse(spec)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None
