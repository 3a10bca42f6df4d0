"""Polling meters: turn what meters say into readings, and their silence into recorded gaps.

Modbus meters are polled: one task per bus (a Modbus TCP host:port or a serial device) reads
the meters on it in due-time order, each at its own interval, and commits each round's
readings to the queue in one transaction. MQTT meters push: one task per broker connection
turns each message into a reading and commits what arrived every fraction of a second. Either
way a meter that times out, answers with an exception, sends a malformed payload or falls
silent is logged with the reason once per change and recorded as a gap; the others go on.

`to_reading` is the pure core: values in, a reading with units, quality flags and the clock's
status out.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from edge.clock import clock_status, now_ns
from edge.config import MeterConfig, PollingConfig
from edge.queue import DurableQueue
from edge.registermap import RegisterMap
from edge.sources.modbus import MeterReadError, ModbusSource, open_source
from protos.records import ClockStatus, Quality, Quantity, Reading

log = logging.getLogger("gridtrace.edge.poller")

# A meter's own timestamp within this distance of the gateway's synchronised clock is taken as
# synchronised too; further off, the meter's clock is only informative (OCMF time status).
CLOCK_TOLERANCE_NS = 2_000_000_000
# An MQTT meter silent for this many of its intervals is counted as missing.
SILENCE_INTERVALS = 3.0
_MQTT_FLUSH_S = 0.25


class QuantitySpec(Protocol):
    """What the poller needs to know of a quantity: a register, or an MQTT payload field."""

    name: str
    unit: str
    kind: str

    def plausible(self, value: float) -> bool: ...


@dataclass
class MeterState:
    """What the poller remembers of a meter between polls (quality hints, not evidence)."""

    config: MeterConfig
    specs: dict[str, QuantitySpec] = field(default_factory=dict)
    regmap: RegisterMap | None = None
    due: float = 0.0
    last_counters: dict[str, float] = field(default_factory=dict)
    last_frame: tuple[Any, ...] | None = None
    last_seen: float | None = None  # loop time of the last message (MQTT)
    failures: int = 0
    last_error: str | None = None
    # Set after SunSpec discovery: the first read shows which optional points the device
    # does not implement, and those are not expected afterwards (else every reading is partial).
    prune_unimplemented: bool = False

    @property
    def id(self) -> str:
        return self.config.id

    def use_map(self, regmap: RegisterMap) -> None:
        self.regmap = regmap
        self.specs = {r.name: r for r in regmap.quantities}

    def use_fields(self, fields: Iterable[QuantitySpec]) -> None:
        self.specs = {f.name: f for f in fields}


def new_meter_state(config: MeterConfig) -> MeterState:
    state = MeterState(config)
    if config.regmap is not None:
        state.use_map(config.regmap)
    elif config.payload is not None:
        state.use_fields(config.payload.fields)
    return state


def to_reading(
    state: MeterState,
    seq: int,
    ts_ns: int,
    values: Mapping[str, float],
    clock: ClockStatus,
    meter_time_ns: int | None = None,
) -> Reading:
    """Decoded values -> a reading with units and quality flags.

    With `meter_time_ns` (a meter that stamps its own readings) the reading carries the
    meter's time, synchronised only if it agrees with the gateway's synchronised clock.
    """
    quality = Quality.OK
    quantities = []
    specs = state.specs
    for name in sorted(values):
        spec = specs.get(name)
        value = float(values[name])
        if spec is None or not math.isfinite(value):
            # Meters answer NaN (or SunSpec's "not implemented") for what they cannot
            # measure: leave the quantity out and say the reading is partial.
            continue
        if not spec.plausible(value):
            quality |= Quality.OUT_OF_RANGE
        if spec.kind == "counter":
            previous = state.last_counters.get(name)
            if previous is not None and value < previous:
                # A counter near zero after a large value is a reset (meter swap,
                # firmware update); anything else went backwards.
                quality |= Quality.COUNTER_RESET if value < 0.01 * previous else Quality.COUNTER_BACKWARDS
            state.last_counters[name] = value
        quantities.append(Quantity(name, spec.unit, value))
    if len(quantities) < len(specs):
        quality |= Quality.PARTIAL
    frame = (meter_time_ns, *((q.name, q.value) for q in quantities))
    if frame == state.last_frame and quantities:
        # The same frame again: a frozen meter, or a retained MQTT message delivered twice.
        quality |= Quality.STALE
    state.last_frame = frame
    if meter_time_ns is not None:
        if clock is ClockStatus.SYNCHRONIZED and abs(meter_time_ns - ts_ns) > CLOCK_TOLERANCE_NS:
            clock = ClockStatus.INFORMATIVE
        elif clock is not ClockStatus.SYNCHRONIZED:
            clock = ClockStatus.INFORMATIVE if clock is ClockStatus.INFORMATIVE else ClockStatus.UNKNOWN
        ts_ns = meter_time_ns
    return Reading(
        meter_id=state.id,
        seq=seq,
        timestamp_ns=ts_ns,
        clock=clock,
        quality=quality,
        quantities=tuple(quantities),
    )


@dataclass(frozen=True)
class Observation:
    """What one meter said at one moment, before it is numbered and committed."""

    state: MeterState
    ts_ns: int
    values: Mapping[str, float]
    meter_time_ns: int | None = None


class QueueSink:
    """Where pollers put readings and failures: the durable queue. Called from worker threads."""

    def __init__(self, queue: DurableQueue, gap_report_s: float) -> None:
        self.queue = queue
        self.gap_report_ns = int(gap_report_s * 1e9)

    def commit(self, observations: list[Observation]) -> None:
        # One kernel query per round, not per reading: the sync state changes rarely.
        clock = clock_status()
        # An MQTT meter may have several messages in one commit: number them in order.
        next_seq: dict[str, int] = {}
        records = []
        for o in observations:
            seq = next_seq.get(o.state.id) or self.queue.next_seq(o.state.id)
            next_seq[o.state.id] = seq + 1
            records.append(to_reading(o.state, seq, o.ts_ns, o.values, clock, o.meter_time_ns))
        self.queue.append_readings(records)

    def failure(self, meter_id: str, ts_ns: int, reason: str, message: str | None = None) -> None:
        self.queue.record_failure(meter_id, ts_ns, reason, self.gap_report_ns, message)


async def _report_failure(sink: QueueSink, m: MeterState, reason: str, message: str) -> None:
    m.failures += 1
    if m.last_error != reason:
        log.warning("meter %s %s: %s", m.id, reason, message)
    m.last_error = reason
    await asyncio.to_thread(sink.failure, m.id, now_ns(), reason, message)


def _recovered(m: MeterState) -> None:
    if m.last_error is not None:
        log.info("meter %s: reading again after %s", m.id, m.last_error)
        m.last_error = None


class ModbusBusPoller:
    """Polls every meter on one Modbus bus (a TCP host:port or a serial device)."""

    def __init__(self, source: ModbusSource, meters: list[MeterState], sink: QueueSink) -> None:
        self.source = source
        self.meters = meters
        self.sink = sink

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        for m in self.meters:
            m.due = loop.time()
        try:
            while not stop.is_set():
                delay = min(m.due for m in self.meters) - loop.time()
                if delay > 0:
                    try:
                        await asyncio.wait_for(stop.wait(), delay)
                        break
                    except TimeoutError:
                        pass
                await self.poll_due(loop.time())
        finally:
            await self.source.close()

    async def poll_due(self, now: float) -> None:
        observations = []
        for m in self.meters:
            if m.due > now:
                continue
            # Keep a fixed cadence; after a long stall skip missed slots rather than burst.
            m.due += m.config.interval_s
            if m.due < now:
                m.due = now + m.config.interval_s
            try:
                values = await self._read(m)
            except MeterReadError as exc:
                await _report_failure(self.sink, m, exc.reason, str(exc))
                continue
            except Exception as exc:  # noqa: BLE001 - one meter must not stop the others
                log.exception("meter %s: unexpected error while reading", m.id)
                await _report_failure(self.sink, m, "read-error", f"{type(exc).__name__}: {exc}")
                continue
            _recovered(m)
            observations.append(Observation(m, now_ns(), values))
        if observations:
            await asyncio.to_thread(self.sink.commit, observations)

    async def _read(self, m: MeterState) -> dict[str, float]:
        unit = m.config.target.unit
        if m.regmap is None:
            await self._discover(m)
        assert m.regmap is not None
        try:
            values = await self.source.read(unit, m.regmap, m.config.max_block)
        except MeterReadError as exc:
            if m.config.regmap is None and exc.reason == "modbus-exception-2":
                # The device's models moved (firmware update, meter swap): discover again.
                m.regmap = None
            raise
        if m.prune_unimplemented:
            m.specs = {k: v for k, v in m.specs.items() if math.isfinite(values.get(k, math.nan))}
            m.prune_unimplemented = False
        return values

    async def _discover(self, m: MeterState) -> None:
        from edge.sunspec import SunSpecError, discover

        unit = m.config.target.unit

        async def read(function: int, start: int, count: int) -> list[int]:
            return await self.source.read_registers(unit, function, start, count)

        try:
            device = await discover(read)
        except SunSpecError as exc:
            raise MeterReadError(
                f"unit {unit} at {self.source.endpoint}: {exc}", unit=unit, reason="sunspec-discovery"
            ) from None
        m.use_map(device.register_map())
        m.prune_unimplemented = True
        log.info("meter %s: SunSpec device found: %s", m.id, device)


class MqttBrokerPoller:
    """Turns the messages of every MQTT meter on one broker connection into readings.

    A QoS 1 message is acknowledged to the broker only when the future `on_message`
    returns is resolved, and that happens after its reading (or its gap) is committed:
    a crash in between leaves the message with the broker, which delivers it again.
    """

    def __init__(self, subscriber: Any, meters: list[MeterState], sink: QueueSink) -> None:
        self.subscriber = subscriber
        self.meters = {m.id: m for m in meters}
        self.sink = sink
        self._pending: list[Observation] = []
        self._failures: list[tuple[MeterState, str, str]] = []
        self._waiting: list[asyncio.Future[None]] = []
        self._link_errors: dict[str, str] = {}

    def on_message(self, meter_id: str, arrival_ns: int, decoded: Any) -> asyncio.Future[None] | None:
        from edge.sources.mqtt import PayloadError

        m = self.meters.get(meter_id)
        if m is None:
            return None
        loop = asyncio.get_running_loop()
        m.last_seen = loop.time()
        if isinstance(decoded, PayloadError):
            self._failures.append((m, "bad-payload", str(decoded)))
        else:
            _recovered(m)
            self._pending.append(Observation(m, arrival_ns, decoded.values, decoded.meter_time_ns))
        done: asyncio.Future[None] = loop.create_future()
        self._waiting.append(done)
        return done

    def on_state(self, meter_id: str, error: str | None) -> None:
        if error is not None and meter_id not in self._link_errors:
            log.warning("meter %s: MQTT: %s", meter_id, error)
        elif error is None and meter_id in self._link_errors:
            log.info("meter %s: MQTT subscription restored", meter_id)
        if error is None:
            self._link_errors.pop(meter_id, None)
        else:
            self._link_errors[meter_id] = error

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        for m in self.meters.values():
            m.last_seen = loop.time()
            m.due = loop.time() + SILENCE_INTERVALS * m.config.interval_s
        receiver = asyncio.create_task(
            self.subscriber.run(stop, self.on_message, self.on_state), name="mqtt-subscriber"
        )
        try:
            while not stop.is_set() and not receiver.done():
                try:
                    await asyncio.wait_for(stop.wait(), _MQTT_FLUSH_S)
                except TimeoutError:
                    pass
                await self._flush(loop.time())
            if receiver.done() and not stop.is_set():
                receiver.result()  # a subscriber that ended by itself is a defect: raise it
        finally:
            await self._flush(loop.time())
            if not receiver.done():
                await asyncio.gather(receiver, return_exceptions=True)

    async def _flush(self, now: float) -> None:
        failures, self._failures = self._failures, []
        pending, self._pending = self._pending, []
        waiting, self._waiting = self._waiting, []
        try:
            for m, reason, message in failures:
                await _report_failure(self.sink, m, reason, message)
            if pending:
                await asyncio.to_thread(self.sink.commit, pending)
        except BaseException as exc:
            for fut in waiting:
                if not fut.done():
                    fut.set_exception(exc if isinstance(exc, Exception) else RuntimeError("stopped"))
            raise
        for fut in waiting:
            if not fut.done():
                fut.set_result(None)
        for m in self.meters.values():
            silent_for = now - (m.last_seen or now)
            if silent_for >= SILENCE_INTERVALS * m.config.interval_s and now >= m.due:
                m.due = now + m.config.interval_s
                link_error = self._link_errors.get(m.id)
                reason = "broker-unreachable" if link_error else "no-message"
                detail = link_error or (
                    f"no message on {m.config.target.topic} for {silent_for:.0f} s "
                    f"(expected every {m.config.interval_s:g} s): check that the meter publishes "
                    "to this topic and the broker forwards it"
                )
                await _report_failure(self.sink, m, reason, detail)


def build_pollers(
    meters: tuple[MeterConfig, ...],
    queue: DurableQueue,
    gap_report_s: float,
    polling: PollingConfig | None = None,
    gateway_id: str = "gridtrace-agent",
) -> list[ModbusBusPoller | MqttBrokerPoller]:
    """One poller per connection: meters on one bus or broker share it."""
    polling = polling or PollingConfig(timeout_s=1.0, retries=0)
    sink = QueueSink(queue, gap_report_s)
    groups: dict[Any, list[MeterState]] = defaultdict(list)
    for mc in meters:
        groups[mc.target.bus_key].append(new_meter_state(mc))
    pollers: list[ModbusBusPoller | MqttBrokerPoller] = []
    for _key, group in sorted(groups.items(), key=lambda kv: repr(kv[0])):
        first = group[0].config
        if first.protocol == "mqtt":
            from edge.sources.mqtt import MqttMeter, MqttSubscriber, client_id_for

            subscriber = MqttSubscriber(
                [MqttMeter(m.id, m.config.target, m.config.payload) for m in group],
                client_id_for(gateway_id, first.target),
            )
            pollers.append(MqttBrokerPoller(subscriber, group, sink))
        else:
            source = open_source(first.target, timeout=polling.timeout_s, retries=polling.retries)
            pollers.append(ModbusBusPoller(source, group, sink))
    return pollers
