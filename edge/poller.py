"""Polling meters: turn register values into readings and failures into recorded gaps.

One task per Modbus connection polls the meters behind it in due-time order and
commits each round's readings to the queue in one transaction. A meter that
times out or answers with an exception is logged with the reason and recorded
as a gap; the others keep being polled.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import defaultdict
from dataclasses import dataclass, field

from edge.clock import clock_status, now_ns
from edge.config import MeterConfig
from edge.queue import DurableQueue
from edge.registermap import RegisterMap
from edge.sources.modbus import MeterReadError, ModbusTcpSource, parse_meter_url
from protos.records import Quality, Quantity, Reading

log = logging.getLogger("gridtrace.edge.poller")


@dataclass
class MeterState:
    """What the poller remembers of a meter between polls (not evidence; quality hints)."""

    config: MeterConfig
    unit: int
    regmap: RegisterMap
    due: float = 0.0
    last_counters: dict[str, float] = field(default_factory=dict)
    failures: int = 0
    last_error: str | None = None


def to_reading(state: MeterState, seq: int, ts_ns: int, values: dict[str, float]) -> Reading:
    """Decoded register values -> a reading with units and quality flags."""
    quality = Quality.OK
    quantities = []
    for name in sorted(values):
        reg = state.regmap.register(name)
        value = float(values[name])
        if not math.isfinite(value):
            # Meters answer NaN for what they cannot measure (e.g. a phase angle
            # at zero current): leave the quantity out and say the reading is partial.
            continue
        if reg.kind == "counter":
            previous = state.last_counters.get(name)
            if previous is not None and value < previous:
                # A counter near zero after a large value is a reset (meter swap,
                # firmware update); anything else went backwards.
                quality |= Quality.COUNTER_RESET if value < 0.01 * previous else Quality.COUNTER_BACKWARDS
            state.last_counters[name] = value
        quantities.append(Quantity(name, reg.unit, value))
    if len(quantities) < len(state.regmap.quantities):
        quality |= Quality.PARTIAL
    return Reading(
        meter_id=state.config.id,
        seq=seq,
        timestamp_ns=ts_ns,
        clock=clock_status(),
        quality=quality,
        quantities=tuple(quantities),
    )


class ConnectionPoller:
    """Polls every meter behind one Modbus TCP host:port."""

    def __init__(
        self,
        source: ModbusTcpSource,
        meters: list[MeterState],
        queue: DurableQueue,
        gap_report_ns: int,
    ) -> None:
        self.source = source
        self.meters = meters
        self.queue = queue
        self.gap_report_ns = gap_report_ns

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        for m in self.meters:
            m.due = loop.time()
        try:
            while not stop.is_set():
                next_due = min(m.due for m in self.meters)
                delay = next_due - loop.time()
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
        readings = []
        for m in self.meters:
            if m.due > now:
                continue
            # Keep a fixed cadence; after a long stall skip missed slots rather than burst.
            m.due += m.config.interval_s
            if m.due < now:
                m.due = now + m.config.interval_s
            try:
                values = await self.source.read(m.unit, m.regmap)
            except MeterReadError as exc:
                await self._failed(m, exc.reason, str(exc))
                continue
            except Exception as exc:  # noqa: BLE001 - one meter must not stop the others
                log.exception("meter %s (unit %d): unexpected error while reading", m.config.id, m.unit)
                await self._failed(m, "read-error", f"{type(exc).__name__}: {exc}")
                continue
            if m.last_error is not None:
                log.info("meter %s (unit %d): reading again after %s", m.config.id, m.unit, m.last_error)
                m.last_error = None
            readings.append((m, now_ns(), values))
        if readings:
            await asyncio.to_thread(self._commit, readings)

    async def _failed(self, m: MeterState, reason: str, message: str) -> None:
        m.failures += 1
        if m.last_error != reason:
            log.warning("meter %s (unit %d) %s: %s", m.config.id, m.unit, reason, message)
        m.last_error = reason
        await asyncio.to_thread(self.queue.record_failure, m.config.id, now_ns(), reason, self.gap_report_ns)

    def _commit(self, readings: list[tuple[MeterState, int, dict[str, float]]]) -> None:
        records = [to_reading(m, self.queue.next_seq(m.config.id), ts, v) for m, ts, v in readings]
        self.queue.append_readings(records)


def build_pollers(
    meters: tuple[MeterConfig, ...], queue: DurableQueue, gap_report_s: float, timeout_s: float = 1.0
) -> list[ConnectionPoller]:
    """Group configured meters by connection; each group shares one client."""
    groups: dict[tuple[str, int], list[MeterState]] = defaultdict(list)
    for mc in meters:
        target = parse_meter_url(mc.source)
        groups[(target.host, target.port)].append(
            MeterState(mc, target.unit, mc.regmap)
        )
    return [
        ConnectionPoller(ModbusTcpSource(host, port, timeout=timeout_s), group, queue, int(gap_report_s * 1e9))
        for (host, port), group in sorted(groups.items())
    ]
