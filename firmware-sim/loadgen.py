"""Load generator: a fleet of simulated gateways streaming real signed batches to a hub.

Each gateway has its own Ed25519 key, signs batches of canonical readings with
`protos.batch.seal_batch` and turns them into wire messages with the agent's own
`edge.uplink.load_pending` (it reads this module's in-memory batches through the
queue's `pending_raw` interface), so whatever the agent sends, the fleet sends.
Every receipt is checked as the agent checks it (`edge.uplink.check_receipt`).

Gateways are spread over separate processes (multiprocessing spawn), one gRPC
stream each, paced to a total rate. With `prebuild` every batch is built and
serialized before the clock starts, so the generator's own CPU during the
measured window is little more than gRPC's. Times are CLOCK_MONOTONIC, which is
the same clock in every process of the machine.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import struct
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from edge.registermap import load_register_map
from edge.uplink import ReceiptError, check_receipt, load_pending
from protos import ingest_pb2 as ipb
from protos.batch import seal_batch
from protos.canonical import encode_batch_header, encode_reading_fields
from protos.records import ZERO_HASH, ClockStatus, Quality
from protos.signing import (
    KeyFileError,
    PublicKey,
    Signer,
    create_key_pair,
    key_id,
    load_private_key,
    load_public_key,
)

__all__ = [
    "FleetError",
    "FleetResult",
    "FleetSpec",
    "GatewayLoad",
    "ReadingTemplate",
    "ensure_keys",
    "gateway_ids",
    "percentile",
    "run_fleet",
]

STREAM_METHOD = "/gridtrace.v1.Ingest/Stream"
_HEALTH_METHOD = "/grpc.health.v1.Health/Check"
CONNECT_TIMEOUT_S = 10.0
# Variants of each meter's values, cycled by reading seq: rows differ without a pack per reading.
_VALUE_VARIANTS = 64


class FleetError(Exception):
    """The fleet could not run or the hub refused it; the message names what and where."""


@dataclass(frozen=True)
class FleetSpec:
    hub: str  # host:port, or several comma-separated (a substation's replicas: gateways spread over them)
    gateways: tuple[str, ...]
    keys_dir: Path
    meters: int = 32  # per gateway
    rate: float = 0.0  # readings/s over the whole fleet; 0 = as fast as the hub receipts
    seconds: float = 10.0
    batch_size: int = 500
    processes: int = 1
    window: int = 8  # batches in flight per stream, as the agent's uplink.max_in_flight
    prebuild: bool = False
    max_readings: int | None = None  # most readings to build and send, over the whole fleet
    ca: Path | None = None
    insecure: bool = False
    server_name: str | None = None
    hub_key: Path | None = None  # pinned hub public key; None only with unsigned_acks
    hub_keys: tuple[Path, ...] = ()  # more pinned keys (one per replica); a receipt verifies with any
    unsigned_acks: bool = False  # bench baseline: acks name the batch but carry no signature
    register_map: str = "eastron_sdm630"
    drain_timeout_s: float = 60.0

    @property
    def addresses(self) -> tuple[str, ...]:
        return tuple(a.strip() for a in self.hub.split(",") if a.strip())

    def address_of(self, gateway_id: str) -> str:
        """The hub a gateway streams to: the fleet's gateways are spread over the addresses."""
        return self.addresses[self.gateways.index(gateway_id) % len(self.addresses)]


@dataclass
class GatewayStats:
    gateway_id: str
    batches_sent: int = 0
    readings_sent: int = 0
    batches_receipted: int = 0
    readings_receipted: int = 0
    last_seq: int = 0  # last receipted batch
    duplicates: int = 0
    first_send_ns: int | None = None
    last_send_ns: int | None = None
    last_receipt_ns: int | None = None
    latencies_ms: list[float] = field(default_factory=list)
    error: str | None = None


@dataclass(frozen=True)
class FleetResult:
    start_ns: int  # the common start (CLOCK_MONOTONIC)
    gateways: tuple[GatewayStats, ...]
    prebuild_s: float
    built_readings: int
    cpu_s: float = 0.0  # the load processes' own CPU from the start to their last receipt

    @property
    def readings_sent(self) -> int:
        return sum(g.readings_sent for g in self.gateways)

    @property
    def readings_receipted(self) -> int:
        return sum(g.readings_receipted for g in self.gateways)

    @property
    def batches_sent(self) -> int:
        return sum(g.batches_sent for g in self.gateways)

    @property
    def batches_receipted(self) -> int:
        return sum(g.batches_receipted for g in self.gateways)

    @property
    def window_s(self) -> float:
        """From the common start to the last receipt."""
        ends = [g.last_receipt_ns for g in self.gateways if g.last_receipt_ns is not None]
        return (max(ends) - self.start_ns) / 1e9 if ends else 0.0

    @property
    def send_window_s(self) -> float:
        ends = [g.last_send_ns for g in self.gateways if g.last_send_ns is not None]
        return (max(ends) - self.start_ns) / 1e9 if ends else 0.0

    @property
    def readings_per_s(self) -> float:
        return self.readings_receipted / self.window_s if self.window_s > 0 else 0.0

    @property
    def latencies_ms(self) -> list[float]:
        return sorted(x for g in self.gateways for x in g.latencies_ms)

    @property
    def errors(self) -> list[str]:
        return [g.error for g in self.gateways if g.error]

    def summary(self) -> dict:
        lat = self.latencies_ms
        return {
            "readings_sent": self.readings_sent,
            "readings_receipted": self.readings_receipted,
            "batches_sent": self.batches_sent,
            "batches_receipted": self.batches_receipted,
            "window_s": round(self.window_s, 3),
            "readings_per_s": round(self.readings_per_s),
            "send_readings_per_s": round(self.readings_sent / self.send_window_s) if self.send_window_s > 0 else 0,
            "receipt_p50_ms": _round(percentile(lat, 50)),
            "receipt_p99_ms": _round(percentile(lat, 99)),
            "receipt_max_ms": _round(lat[-1] if lat else None),
            "prebuild_s": round(self.prebuild_s, 3),
            "built_readings": self.built_readings,
            "fleet_cpu_us_per_reading": (
                round(1e6 * self.cpu_s / self.readings_receipted, 2) if self.readings_receipted else None
            ),
            "duplicates": sum(g.duplicates for g in self.gateways),
            "last_seq": {g.gateway_id: g.last_seq for g in self.gateways},
            "errors": self.errors,
        }


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


def percentile(sorted_values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile of already sorted values (None when there are none)."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def gateway_ids(prefix: str, count: int) -> tuple[str, ...]:
    return tuple(f"{prefix}-{i:04d}" for i in range(1, count + 1))


def ensure_keys(keys_dir: Path, ids: Sequence[str]) -> dict[str, Signer]:
    """Each gateway's key from `keys_dir/<id>.key` (mode 0600), created with `<id>.pub.pem`
    beside it when missing, so a hub can register the public keys before the run."""
    keys_dir = Path(keys_dir)
    keys_dir.mkdir(parents=True, exist_ok=True)
    out = {}
    for gw in ids:
        path = keys_dir / f"{gw}.key"
        try:
            out[gw] = load_private_key(path) if path.exists() else create_key_pair(keys_dir, gw)
        except KeyFileError as exc:
            raise FleetError(f"gateway {gw}: {exc}") from exc
    return out


class ReadingTemplate:
    """The canonical bytes of one meter's readings, made by patching a template.

    `encode_reading_fields` runs once per meter; the offsets of seq/timestamp and of
    the values are found in its output, and the template checks itself against the
    encoder once, so a change of the canonical layout fails here and not at the hub.
    """

    def __init__(self, meter_id: str, names: Sequence[str], units: Sequence[str], base: Sequence[float]) -> None:
        k = len(base)
        self.meter_id = meter_id
        self._names, self._units = tuple(names), tuple(units)
        # Distinct marker values, so their position in the encoding is unambiguous.
        mark_seq, mark_ts = 0x0123456789ABCDEF >> 1, 0x7EDCBA9876543210
        probe = encode_reading_fields(
            meter_id, mark_seq, mark_ts, int(ClockStatus.SYNCHRONIZED), int(Quality.OK), names, units, base
        )
        fixed = struct.pack(">Qq", mark_seq, mark_ts)
        self._fixed_at = probe.find(fixed)
        self._values_at = len(probe) - 8 * k
        if self._fixed_at < 0 or probe[self._values_at:] != struct.pack(f">{k}d", *base):
            raise FleetError("the canonical reading layout changed: update firmware_sim.loadgen.ReadingTemplate")
        self._buf = bytearray(probe)
        step = [abs(v) * 1e-4 + 1e-3 for v in base]
        self._variants = [
            struct.pack(f">{k}d", *(v + s * ((i * 7919) % 97 - 48) for v, s in zip(base, step)))
            for i in range(_VALUE_VARIANTS)
        ]
        sample = self.body(42, 1_700_000_000_000_000_000)
        expected = encode_reading_fields(
            meter_id, 42, 1_700_000_000_000_000_000, int(ClockStatus.SYNCHRONIZED), int(Quality.OK),
            names, units, struct.unpack(f">{k}d", self._variants[42 % _VALUE_VARIANTS]),
        )
        if sample != expected:
            raise FleetError("the canonical reading layout changed: update firmware_sim.loadgen.ReadingTemplate")

    def body(self, seq: int, timestamp_ns: int) -> bytes:
        buf = self._buf
        struct.pack_into(">Qq", buf, self._fixed_at, seq, timestamp_ns)
        buf[self._values_at:] = self._variants[seq % _VALUE_VARIANTS]
        return bytes(buf)


def meter_templates(gateway_id: str, meters: int, register_map: str) -> list[ReadingTemplate]:
    regmap = load_register_map(register_map)
    regs = sorted(regmap.registers, key=lambda r: r.name)
    names = [r.name for r in regs]
    units = [r.unit for r in regs]
    out = []
    for m in range(1, meters + 1):
        base = [230.0 + 0.5 * m + j for j in range(len(regs))]
        out.append(ReadingTemplate(f"{gateway_id}-m{m:03d}", names, units, base))
    return out


@dataclass(frozen=True)
class BuiltBatch:
    seq: int
    hash: bytes
    readings: int
    wire: bytes  # the serialized SignedBatch


class _OneBatch:
    """A just-sealed batch behind the durable queue's read interface (`pending_raw`),
    so `edge.uplink.load_pending` turns it into the wire message exactly as the agent does."""

    def __init__(self, seq: int, header: bytes, signature: bytes, digest: bytes, bodies: list[bytes]) -> None:
        self._row = (seq, header, signature, digest, bodies)

    def pending_raw(self, after_seq: int, limit: int) -> Iterator[tuple[int, bytes, bytes, bytes, list[bytes]]]:
        if limit > 0 and self._row[0] > after_seq:
            yield self._row


class GatewayLoad:
    """One simulated gateway: its key, its chain of batches, its meters' reading counters."""

    def __init__(self, gateway_id: str, signer: Signer, meters: int, register_map: str = "eastron_sdm630") -> None:
        self.gateway_id = gateway_id
        self.signer = signer
        self.templates = meter_templates(gateway_id, meters, register_map)
        self.seq = 0
        self.prev_hash = ZERO_HASH
        self._reading_seq = [0] * meters
        self._next_meter = 0

    def next_batch(self, size: int, first_ns: int, spacing_ns: int) -> BuiltBatch:
        """Seal and serialize the next batch: `size` readings round-robin over the meters."""
        bodies, timestamps = [], []
        n = len(self.templates)
        for i in range(size):
            m = self._next_meter
            self._next_meter = (m + 1) % n
            self._reading_seq[m] += 1
            ts = first_ns + i * spacing_ns
            bodies.append(self.templates[m].body(self._reading_seq[m], ts))
            timestamps.append(ts)
        sealed = seal_batch(
            self.signer, self.gateway_id, self.seq + 1, self.prev_hash, bodies, timestamps, time.time_ns()
        )
        self.seq += 1
        self.prev_hash = sealed.hash
        source = _OneBatch(self.seq, encode_batch_header(sealed.header), sealed.signature, sealed.hash, bodies)
        [(seq, digest, msg)] = load_pending(source, self.seq - 1, 1)  # type: ignore[arg-type]
        return BuiltBatch(seq, digest, size, msg.SerializeToString())


# -- one worker process ---------------------------------------------------------------


def _channel(spec: FleetSpec, address: str) -> grpc.aio.Channel:
    options = [
        ("grpc.max_send_message_length", 64 * 1024 * 1024),
        # One connection per simulated gateway, as separate gateways would have.
        ("grpc.use_local_subchannel_pool", 1),
    ]
    if spec.insecure:
        return grpc.aio.insecure_channel(address, options=options)
    assert spec.ca is not None
    creds = grpc.ssl_channel_credentials(root_certificates=spec.ca.read_bytes())
    if spec.server_name:
        options.append(("grpc.ssl_target_name_override", spec.server_name))
    return grpc.aio.secure_channel(address, creds, options=options)


def _rpc_problem(spec: FleetSpec, gateway_id: str, exc: grpc.aio.AioRpcError) -> str:
    code, details = exc.code(), exc.details() or ""
    if code is grpc.StatusCode.UNAVAILABLE:
        low = details.lower()
        if "ssl" in low or "handshake" in low or "certificate" in low or "tls" in low:
            hint = "TLS handshake failed: is --ca the hub's tls/ca.pem, and the hub serving TLS (not --insecure)?"
        elif "connect" in low or "connection refused" in low:
            hint = "cannot reach the hub: is it running and is the address right?"
        else:
            hint = "the hub is unavailable"
        return f"hub {spec.hub} ({gateway_id}): {hint} [{code.name}: {details}]"
    if code is grpc.StatusCode.UNAUTHENTICATED:
        return (f"hub {spec.hub} rejected gateway {gateway_id}: {details} "
                f"(register it with `gridtrace hub gateway add {gateway_id} --public-key "
                f"{spec.keys_dir / (gateway_id + '.pub.pem')} --config hub.toml`)")
    return f"hub {spec.hub} ended the stream of gateway {gateway_id}: {code.name}: {details}"


async def _preflight(spec: FleetSpec, channel: grpc.aio.Channel, gateway_id: str) -> None:
    """Connect before the clock starts, and name the reason if that fails."""
    probe = channel.unary_unary(_HEALTH_METHOD, request_serializer=None, response_deserializer=None)
    try:
        await probe(b"", timeout=CONNECT_TIMEOUT_S)
    except grpc.aio.AioRpcError as exc:
        if exc.code() is grpc.StatusCode.UNIMPLEMENTED:
            return  # connected; the server just has no health service
        if exc.code() is grpc.StatusCode.DEADLINE_EXCEEDED:
            raise FleetError(
                f"hub {spec.hub}: no answer within {CONNECT_TIMEOUT_S:.0f} s; check the address and firewall"
            ) from None
        raise FleetError(_rpc_problem(spec, gateway_id, exc)) from None


def _pace(spec: FleetSpec, n_gateways_total: int) -> float:
    """Seconds between two batches of one gateway; 0 when unpaced."""
    if spec.rate <= 0:
        return 0.0
    return spec.batch_size * n_gateways_total / spec.rate


def _batches_per_gateway(spec: FleetSpec) -> int | None:
    total = spec.max_readings
    if total is None and spec.rate > 0:
        total = math.ceil(spec.rate * spec.seconds)
    if total is None:
        return None
    return max(1, math.ceil(total / (spec.batch_size * len(spec.gateways))))


async def _stream_gateway(
    spec: FleetSpec, channel: grpc.aio.Channel, gw: GatewayLoad, stats: GatewayStats,
    prebuilt: deque[BuiltBatch] | None, start_ns: int, offset_s: float, interval_s: float,
    limit: int | None, hub_keys: dict[str, PublicKey],
) -> None:
    call = channel.stream_stream(
        STREAM_METHOD, request_serializer=None, response_deserializer=ipb.Receipt.FromString
    )()
    in_flight: deque[tuple[int, bytes, int, int]] = deque()  # seq, hash, readings, send ns
    room = asyncio.Semaphore(spec.window)
    end_ns = start_ns + int(spec.seconds * 1e9)
    spacing_ns = max(1, int(interval_s * 1e9 / spec.batch_size)) if interval_s else 1000

    async def receive() -> None:
        async for receipt in call:
            now = time.monotonic_ns()
            if not in_flight:
                raise ReceiptError(f"unexpected receipt for batch {receipt.batch_seq}")
            seq, digest, readings, sent = in_flight.popleft()
            if spec.unsigned_acks:
                if (receipt.gateway_id, receipt.batch_seq, bytes(receipt.batch_hash)) != (gw.gateway_id, seq, digest):
                    raise ReceiptError(f"ack names {receipt.gateway_id} batch {receipt.batch_seq}, expected batch {seq}")
            else:
                check_receipt(receipt, gw.gateway_id, seq, digest, hub_keys)
            stats.batches_receipted += 1
            stats.readings_receipted += readings
            stats.duplicates += bool(receipt.duplicate)
            stats.last_seq = seq
            stats.last_receipt_ns = now
            stats.latencies_ms.append((now - sent) / 1e6)
            room.release()

    receiver = asyncio.create_task(receive())
    try:
        k = 0
        while limit is None or k < limit:
            if interval_s:
                due = start_ns + int((offset_s + k * interval_s) * 1e9)
                if due >= end_ns:
                    break
                delay = (due - time.monotonic_ns()) / 1e9
                if delay > 0:
                    await asyncio.sleep(delay)
            if time.monotonic_ns() >= end_ns or receiver.done():
                break
            if room.locked():
                # The window is full: wait for a receipt, or for the stream to end.
                acquire = asyncio.ensure_future(room.acquire())
                await asyncio.wait([acquire, receiver], return_when=asyncio.FIRST_COMPLETED)
                if not acquire.done():
                    acquire.cancel()
                    break
            else:
                await room.acquire()
            if receiver.done():
                break
            if prebuilt is not None:
                if not prebuilt:
                    break
                b = prebuilt.popleft()
            else:
                b = gw.next_batch(spec.batch_size, time.time_ns(), spacing_ns)
            sent = time.monotonic_ns()
            in_flight.append((b.seq, b.hash, b.readings, sent))
            try:
                await call.write(b.wire)
            except (asyncio.InvalidStateError, grpc.aio.AioRpcError):
                break  # the hub ended the stream; the receiver reports its status
            stats.batches_sent += 1
            stats.readings_sent += b.readings
            stats.first_send_ns = stats.first_send_ns or sent
            stats.last_send_ns = sent
            k += 1
        if not receiver.done():
            await call.done_writing()
        try:
            await asyncio.wait_for(asyncio.shield(receiver), spec.drain_timeout_s)
        except TimeoutError:
            stats.error = (f"gateway {gw.gateway_id}: {len(in_flight)} batches sent were not receipted "
                           f"within {spec.drain_timeout_s:.0f} s")
            return
        receiver.result()
        if in_flight:
            stats.error = f"gateway {gw.gateway_id}: the hub closed the stream with {len(in_flight)} batches unreceipted"
    except grpc.aio.AioRpcError as exc:
        stats.error = _rpc_problem(spec, gw.gateway_id, exc)
    except ReceiptError as exc:
        stats.error = f"gateway {gw.gateway_id}: {exc}"
    finally:
        if not receiver.done():
            receiver.cancel()
        call.cancel()


async def _run_worker(spec: FleetSpec, index: int, conn) -> None:  # noqa: ANN001
    my_ids = spec.gateways[index :: spec.processes]
    signers = ensure_keys(spec.keys_dir, my_ids)
    hub_keys: dict[str, PublicKey] = {}
    if not spec.unsigned_acks:
        assert spec.hub_key is not None
        for path in dict.fromkeys((spec.hub_key, *spec.hub_keys)):
            try:
                pub = load_public_key(path)
            except KeyFileError as exc:
                raise FleetError(f"--hub-key: {exc}") from exc
            hub_keys[key_id(pub)] = pub
    loads = [GatewayLoad(gw, signers[gw], spec.meters, spec.register_map) for gw in my_ids]
    interval = _pace(spec, len(spec.gateways))
    limit = _batches_per_gateway(spec)
    t = time.perf_counter()
    prebuilt: dict[str, deque[BuiltBatch]] = {}
    built = 0
    if spec.prebuild:
        if limit is None:
            raise FleetError("--prebuild needs a bound: give --rate above 0 or --max-readings")
        t_ns = time.time_ns()
        spacing = max(1, int(interval * 1e9 / spec.batch_size)) if interval else 1000
        for g in loads:
            q = prebuilt[g.gateway_id] = deque()
            for k in range(limit):
                q.append(g.next_batch(spec.batch_size, t_ns + k * spec.batch_size * spacing, spacing))
                built += spec.batch_size
    prebuild_s = time.perf_counter() - t
    channels = [_channel(spec, spec.address_of(g.gateway_id)) for g in loads]
    try:
        await asyncio.gather(*(_preflight(spec, ch, g.gateway_id) for ch, g in zip(channels, loads)))
        conn.send(("ready", prebuild_s, built))
        msg = await asyncio.to_thread(conn.recv)
        if msg[0] != "go":
            return
        start_ns = msg[1]
        await asyncio.sleep(max(0.0, (start_ns - time.monotonic_ns()) / 1e9))
        stats = [GatewayStats(g.gateway_id) for g in loads]
        n = len(spec.gateways)
        cpu0 = time.process_time()
        await asyncio.gather(*(
            _stream_gateway(
                spec, ch, g, st, prebuilt.get(g.gateway_id), start_ns,
                interval * (spec.gateways.index(g.gateway_id) / n), interval, limit, hub_keys,
            )
            for ch, g, st in zip(channels, loads, stats)
        ))
        conn.send(("done", stats, time.process_time() - cpu0))
    finally:
        await asyncio.gather(*(ch.close() for ch in channels), return_exceptions=True)


def _worker(spec: FleetSpec, index: int, conn) -> None:  # noqa: ANN001
    try:
        asyncio.run(_run_worker(spec, index, conn))
    except FleetError as exc:
        _tell(conn, ("error", str(exc)))
    except EOFError:
        pass  # the parent gave up (another process failed) and has its reason already
    except Exception as exc:  # noqa: BLE001 - reported by the parent, with its type
        _tell(conn, ("error", f"load process {index} failed: {type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def _tell(conn, msg: tuple) -> None:  # noqa: ANN001
    try:
        conn.send(msg)
    except OSError:
        pass  # the parent is gone


def run_fleet(spec: FleetSpec, on_ready=None) -> FleetResult:  # noqa: ANN001
    """Run the fleet in `spec.processes` spawned processes; return what every gateway saw.

    `on_ready(prebuild_s)` is called once all processes are connected and built, just
    before the common start (the bench starts its CPU meters there).
    """
    if not spec.gateways:
        raise FleetError("no gateways")
    if spec.processes < 1 or spec.processes > len(spec.gateways):
        raise FleetError(f"--processes {spec.processes}: give 1..{len(spec.gateways)} (one gateway at least each)")
    if not spec.insecure and (spec.ca is None or not Path(spec.ca).is_file()):
        raise FleetError(f"--ca {spec.ca}: no such file; TLS needs the hub's tls/ca.pem (or --insecure)")
    if not spec.insecure and b"-----BEGIN CERTIFICATE-----" not in Path(spec.ca).read_bytes():
        raise FleetError(f"--ca {spec.ca}: not a PEM certificate (expected the hub's tls/ca.pem)")
    if not spec.unsigned_acks and spec.hub_key is None:
        raise FleetError("give --hub-key (the hub's hub.pub.pem) to check receipts as the agent does")
    ensure_keys(spec.keys_dir, spec.gateways)
    ctx = multiprocessing.get_context("spawn")
    procs, conns = [], []
    try:
        for i in range(spec.processes):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_worker, args=(spec, i, child), name=f"gridtrace-fleet-{i}", daemon=True)
            p.start()
            child.close()
            procs.append(p)
            conns.append(parent)
        prebuild_s, built = 0.0, 0
        for c in conns:
            msg = _recv(c)
            if msg[0] == "error":
                raise FleetError(msg[1])
            prebuild_s = max(prebuild_s, msg[1])
            built += msg[2]
        if on_ready is not None:
            on_ready(prebuild_s)
        start_ns = time.monotonic_ns() + 200_000_000  # every process is waiting; let all see "go" first
        for c in conns:
            c.send(("go", start_ns))
        stats: list[GatewayStats] = []
        cpu_s = 0.0
        for c in conns:
            msg = _recv(c)
            if msg[0] == "error":
                raise FleetError(msg[1])
            stats.extend(msg[1])
            cpu_s += msg[2]
    finally:
        for c in conns:
            c.close()
        for p in procs:
            p.join(5)
            if p.is_alive():
                p.terminate()
                p.join(5)
    order = {gw: i for i, gw in enumerate(spec.gateways)}
    return FleetResult(start_ns, tuple(sorted(stats, key=lambda s: order[s.gateway_id])), prebuild_s, built, cpu_s)


def _recv(conn):  # noqa: ANN001, ANN202
    try:
        return conn.recv()
    except EOFError:
        raise FleetError("a load process died without a word (out of memory?)") from None

