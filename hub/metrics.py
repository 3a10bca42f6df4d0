"""What a running hub counts and measures: Prometheus metrics and per-gateway activity.

Each hub owns one `HubMetrics` with a `CollectorRegistry` of its own (not prometheus_client's
global one), so several hubs can run in one process (tests) without sharing counters. The
recording methods are small and never raise into the ingest path. The same object keeps,
in memory, what `gridtrace hub gateways` shows per gateway: last batch, rates over 1 and 15
minutes, and rejects by reason.
"""

from __future__ import annotations

import logging
import time
from collections import Counter as Tally
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.process_collector import ProcessCollector

log = logging.getLogger("gridtrace.hub.metrics")

# Latencies from sub-millisecond commits to receipts held up for seconds by a slow disk.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
GROUP_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
RATE_BUCKET_S = 10
RATE_WINDOWS_S = (60, 900)


@dataclass
class GatewayActivity:
    """One gateway as this hub process has seen it since it started."""

    last_seq: int | None = None
    last_ns: int | None = None
    batches: int = 0
    readings: int = 0
    duplicates: int = 0
    rejects: Tally = field(default_factory=Tally)
    # (bucket start in s, batches, readings) for the rate windows, oldest first
    recent: deque = field(default_factory=deque)

    def add(self, now_s: float, batches: int, readings: int) -> None:
        start = int(now_s) // RATE_BUCKET_S * RATE_BUCKET_S
        if self.recent and self.recent[-1][0] == start:
            _, b, r = self.recent[-1]
            self.recent[-1] = (start, b + batches, r + readings)
        else:
            self.recent.append((start, batches, readings))
        while self.recent and self.recent[0][0] < now_s - max(RATE_WINDOWS_S) - RATE_BUCKET_S:
            self.recent.popleft()

    def rate(self, now_s: float, window_s: int) -> float:
        """Readings per second stored over the last `window_s` seconds."""
        since = now_s - window_s
        return sum(r for start, _, r in self.recent if start + RATE_BUCKET_S > since) / window_s


class HubMetrics:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        r = self.registry
        self.batches = Counter(
            "gridtrace_hub_batches", "Batches by outcome: stored, duplicate (re-sent, acknowledged again) or rejected",
            ["result", "reason"], registry=r,
        )
        self.readings = Counter(
            "gridtrace_hub_readings", "Entries (readings and gaps) in those batches", ["result", "reason"], registry=r,
        )
        self.ingest_latency = Histogram(
            "gridtrace_hub_ingest_latency_seconds", "From a batch's arrival to its receipt (after the commit)",
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.db_seconds = Histogram(
            "gridtrace_hub_db_seconds", "Database calls by operation (store_batches is the ingest commit)",
            ["op"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.db_errors = Counter("gridtrace_hub_db_errors", "Database calls that failed", ["op"], registry=r)
        self.group_commit = Histogram(
            "gridtrace_hub_group_commit_batches", "Batches committed per transaction", buckets=GROUP_BUCKETS, registry=r,
        )
        self.queue_depth = Gauge("gridtrace_hub_queue_depth", "Batches waiting, by queue", ["queue"], registry=r)
        self.block_height = Gauge("gridtrace_hub_block_height", "Height of the last sealed block", registry=r)
        self.head_time = Gauge("gridtrace_hub_head_time_seconds", "Time in the last sealed block's header", registry=r)
        self.streams = Gauge("gridtrace_hub_streams", "Open ingest streams", registry=r)
        self.connected_gateways = Gauge(
            "gridtrace_hub_connected_gateways", "Gateways with at least one open stream", registry=r,
        )
        self.database_up = Gauge("gridtrace_hub_database_up", "1 while the database answers the health check", registry=r)
        self.activity: dict[str, GatewayActivity] = {}
        self._stream_gateways: Tally = Tally()
        self._unsealed = 0
        self.queue_depth.labels("unsealed").set_function(lambda: self._unsealed)
        self.last_commit_failed = False

    # -- ingest ---------------------------------------------------------------------

    def _gateway(self, gateway_id: str) -> GatewayActivity:
        act = self.activity.get(gateway_id)
        if act is None:
            act = self.activity[gateway_id] = GatewayActivity()
        return act

    def batch_done(self, gateway_id: str, seq: int, entries: int, arrived: float, fut: Any) -> None:
        """Done-callback of a batch's receipt future: stored, duplicate or failed to store."""
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is not None:
            self.batch_rejected(gateway_id, "unavailable", entries)
            return
        now = self.clock()
        act = self._gateway(gateway_id)
        if getattr(fut.result(), "duplicate", False):
            self.batches.labels("duplicate", "").inc()
            self.readings.labels("duplicate", "").inc(entries)
            act.duplicates += 1
            return
        self.batches.labels("stored", "").inc()
        self.readings.labels("stored", "").inc(entries)
        self.ingest_latency.observe(max(0.0, time.monotonic() - arrived))
        act.batches += 1
        act.readings += entries
        if act.last_seq is None or seq > act.last_seq:
            act.last_seq, act.last_ns = seq, int(now * 1e9)
        act.add(now, 1, entries)
        self._unsealed += 1

    def batch_rejected(self, gateway_id: str, reason: str, entries: int) -> None:
        self.batches.labels("rejected", reason).inc()
        self.readings.labels("rejected", reason).inc(entries)
        # An id that failed validation is not trusted as a gateway name in memory.
        if gateway_id and reason not in ("malformed", "unknown-gateway"):
            self._gateway(gateway_id).rejects[reason] += 1

    def stream_opened(self) -> None:
        self.streams.inc()

    def stream_closed(self, gateway_id: str | None) -> None:
        self.streams.dec()
        if gateway_id is not None:
            self._stream_gateways[gateway_id] -= 1
            if self._stream_gateways[gateway_id] <= 0:
                del self._stream_gateways[gateway_id]
            self.connected_gateways.set(len(self._stream_gateways))

    def stream_gateway(self, gateway_id: str) -> None:
        """A stream's first batch named its gateway."""
        self._stream_gateways[gateway_id] += 1
        self.connected_gateways.set(len(self._stream_gateways))

    def connected(self) -> list[str]:
        return sorted(self._stream_gateways)

    # -- chain ----------------------------------------------------------------------

    def chain_state(self, height: int, head_time_ns: int, unsealed: int) -> None:
        """What the database holds at start."""
        self.block_height.set(height)
        self.head_time.set(head_time_ns / 1e9)
        self._unsealed = unsealed

    def block_sealed(self, height: int, time_ns: int, batches: int) -> None:
        self.block_height.set(height)
        self.head_time.set(time_ns / 1e9)
        self._unsealed = max(0, self._unsealed - batches)

    # -- database -------------------------------------------------------------------

    def timed_store(self, store: Any) -> Any:
        return TimedStore(store, self)

    def database_health(self, up: bool) -> None:
        self.database_up.set(1 if up else 0)

    # -- exposition -----------------------------------------------------------------

    def serve_http(self, listen: str) -> Any:
        """Serve /metrics on `listen` (host:port); returns the server (call shutdown())."""
        host, _, port = listen.rpartition(":")
        server, _thread = start_http_server(int(port), host.strip("[]"), registry=self.registry)
        return server


class TimedStore:
    """A Store whose every call is timed into gridtrace_hub_db_seconds{op=method}.

    Wrapping the store, rather than each caller, measures every database call the hub
    makes, the ingest writer's included, with one definition of what `op` means.
    """

    def __init__(self, store: Any, metrics: HubMetrics) -> None:
        self._store = store
        self._metrics = metrics

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._store, name)
        if name.startswith("_") or not callable(value):
            return value
        metrics = self._metrics

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                result = value(*args, **kwargs)
            except Exception:
                metrics.db_errors.labels(name).inc()
                if name == "store_batches":
                    metrics.last_commit_failed = True
                raise
            finally:
                metrics.db_seconds.labels(name).observe(time.perf_counter() - t0)
            if name == "store_batches":
                metrics.last_commit_failed = False
                metrics.group_commit.observe(len(args[0]) if args else 0)
            return result

        return timed
