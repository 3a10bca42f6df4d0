"""MQTT meter source: meters that publish JSON to a broker, mapped to quantities by path.

Meter URL (one meter = one topic; the agent subscribes to exactly that topic)::

    mqtt://[user[:password]@]host[:port]/topic/path[?version=3.1.1|5][&qos=0|1|2]
    mqtts://[user[:password]@]host[:port]/topic/path[?...][&ca=/path/to/ca.pem]

Port defaults to 1883 (mqtt) or 8883 (mqtts, TLS; without ``ca=`` the system's trusted
CAs are used). ``version`` defaults to 3.1.1, ``qos`` to 1. Percent-encode ``@ : / ?`` in
user names and passwords (``%40 %3A %2F %3F``) and unusual characters in the topic. The
wildcards ``+`` and ``#`` are refused: a wildcard would mix several meters in one stream.
A target's password never appears in its ``repr``, its ``url`` or any error message.

The meter's JSON payload is mapped to quantities by a payload map: see
`edge.sources.jsonpayload` for the [meters.fields] table, the path syntax and the decoding
rules (re-exported here).

Delivery (`MqttSubscriber`): one paho client per bus (`MqttTarget.bus_key`), driven by the
agent's asyncio loop (socket registered with the loop; only the blocking TCP/TLS connect
runs in a worker thread), so message callbacks run on the loop thread. The client keeps a
persistent session (MQTT 3.1.1 clean session off; MQTT 5 clean start off with a session
expiry) under a client id derived from the gateway id (`client_id_for`), so QoS 1 messages
the broker queued while the agent was away are delivered when it returns - as many as the
broker keeps (mosquitto: ``max_queued_messages``, 1000 by default; QoS 0 messages are not
queued at all). A QoS 1/2 message is acknowledged to the broker only once the agent has
handled it (see `MqttSubscriber.run`), so a crash before the reading is durable leaves it
with the broker, which delivers it again. Retained messages are ignored: a broker sends
them on every (re)subscribe, so they are old copies, not new readings.

This module holds the meter-facing side: which message belongs to which meter, decoding,
when to acknowledge, reconnect backoff and per-meter state, and the probe. The broker
connection underneath (paho on the asyncio loop, connect, session, subscribe, ack) and the
`MqttError` family are in `edge.sources.mqtt_link`; import them from here.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import logging
import secrets
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.reasoncodes import ReasonCode

from edge.clock import now_ns
from edge.sources.jsonpayload import (
    FIELD_KINDS,
    MAX_PAYLOAD_BYTES,
    TIMESTAMP_FORMATS,
    DecodedMessage,
    JsonField,
    PayloadError,
    PayloadMap,
    PayloadMapError,
    TimestampField,
    decode_payload,
    parse_json_path,
    parse_payload_map,
)
from edge.sources.mqtt_link import (
    _SUBACK_ADVICE,
    MqttError,
    MqttNoMessageError,
    MqttSubscribeError,
    MqttUnreachableError,
    _connack_error,  # noqa: F401  (unused here: the tests check the advice through this module)
    _connect_error,  # noqa: F401
    _Link,
)
from edge.sources.mqtt_url import (
    DEFAULT_PORT,
    DEFAULT_TLS_PORT,
    VERSIONS,
    MqttConfigError,
    MqttTarget,
    client_id_for,
    parse_mqtt_url,
)

__all__ = [
    "DEFAULT_PORT",
    "DEFAULT_TLS_PORT",
    "FIELD_KINDS",
    "MAX_PAYLOAD_BYTES",
    "TIMESTAMP_FORMATS",
    "VERSIONS",
    "DecodedMessage",
    "JsonField",
    "MqttConfigError",
    "MqttError",
    "MqttMeter",
    "MqttNoMessageError",
    "MqttSubscribeError",
    "MqttSubscriber",
    "MqttTarget",
    "MqttUnreachableError",
    "PayloadError",
    "PayloadMap",
    "PayloadMapError",
    "TimestampField",
    "client_id_for",
    "decode_payload",
    "parse_json_path",
    "parse_mqtt_url",
    "parse_payload_map",
    "receive_one",
    "receive_raw",
]

log = logging.getLogger("gridtrace.edge.mqtt")


# -- the subscriber the agent runs --------------------------------------------------------


@dataclass(frozen=True)
class MqttMeter:
    """One configured MQTT meter: its id, where it publishes and how its payload maps."""

    id: str
    target: MqttTarget
    payload_map: PayloadMap


OnMessage = Callable[[str, int, "DecodedMessage | PayloadError"], "Awaitable[object] | None"]
OnState = Callable[[str, "str | None"], None]

_PENDING, _OK, _FAILED = range(3)
_RECENT_PER_METER = 256  # beyond any broker's in-flight window (mosquitto: 20)


class _Handled:
    """Whether the agent has finished with one message (its ack waits on this)."""

    __slots__ = ("state",)

    def __init__(self) -> None:
        self.state = _PENDING


@dataclass
class _Ack:
    generation: int
    mid: int
    qos: int
    handled: _Handled


class MqttSubscriber:
    """All MQTT meters on one bus (one broker, one login): one client, one subscription each.

    `client_id` should come from `client_id_for(gateway_id, target)`. The subscriber
    reconnects by itself, with a backoff from `reconnect_min_s` doubling to
    `reconnect_max_s`, and resubscribes on every connection (a broker that lost its state
    has lost the subscriptions too).
    """

    def __init__(
        self,
        meters: Sequence[MqttMeter],
        client_id: str,
        *,
        keepalive_s: int = 30,
        connect_timeout_s: float = 5.0,
        reconnect_min_s: float = 1.0,
        reconnect_max_s: float = 60.0,
        session_expiry_s: int = 7 * 86_400,
        stop_grace_s: float = 5.0,
    ) -> None:
        if not meters:
            raise MqttConfigError("an MQTT subscriber needs at least one meter")
        first = meters[0].target
        ids: set[str] = set()
        self._by_topic: dict[str, MqttMeter] = {}
        for m in meters:
            t = m.target
            if t.bus_key != first.bus_key or (t.password, t.ca) != (first.password, first.ca):
                raise MqttConfigError(
                    f"meters {meters[0].id!r} and {m.id!r} use the same broker connection only if "
                    "host, port, TLS, CA, user, password and MQTT version all match; "
                    f"{first.url} vs {t.url}"
                )
            if m.id in ids:
                raise MqttConfigError(f"meter {m.id!r} is given twice")
            other = self._by_topic.get(t.topic)
            if other is not None:
                raise MqttConfigError(
                    f"meters {other.id!r} and {m.id!r} both use topic {t.topic!r} at broker "
                    f"{t.endpoint}; each meter publishes to a topic of its own"
                )
            ids.add(m.id)
            self._by_topic[t.topic] = m
        if not 0 < reconnect_min_s <= reconnect_max_s:
            raise ValueError("need 0 < reconnect_min_s <= reconnect_max_s")
        self.meters = tuple(meters)
        self.target = first
        self.client_id = client_id
        self.keepalive_s = keepalive_s
        self.connect_timeout_s = connect_timeout_s
        self.reconnect_min_s = reconnect_min_s
        self.reconnect_max_s = reconnect_max_s
        self.session_expiry_s = session_expiry_s
        self.stop_grace_s = stop_grace_s

        self._link: _Link | None = None
        self._on_message: OnMessage | None = None
        self._on_state: OnState | None = None
        self._reported: dict[str, str | None] = {}
        self._sub_mids: dict[int, tuple[MqttMeter, ...]] = {}
        self._pending: deque[_Ack] = deque()
        self._recent: dict[str, OrderedDict[bytes, _Handled]] = {m.id: OrderedDict() for m in meters}
        self._waiting: set[asyncio.Future[Any]] = set()
        self._stray_topics: set[str] = set()
        self._stopping = False
        self._redeliver = False

    @property
    def address(self) -> str:
        return self.target.endpoint

    async def run(
        self,
        stop: asyncio.Event,
        on_message: OnMessage,
        on_state: OnState | None = None,
    ) -> None:
        """Receive until `stop` is set. Callbacks run on the event loop thread.

        ``on_message(meter_id, arrival_ns, decoded_or_error)`` gets every new message of a
        meter, decoded, or the `PayloadError` saying why it could not be. It may return an
        awaitable (e.g. the task that makes the reading durable): the broker gets the
        message's QoS 1/2 acknowledgement only when that completes without error, in
        arrival order. A plain return acknowledges at once. If the awaitable fails, the
        subscriber reconnects so that the broker delivers the message again; copies the
        broker redelivers of messages already handled are recognised and not passed on.
        If on_message itself raises (a bug), the message is logged as dropped and
        acknowledged, so that one poisonous message cannot stall the meter.

        ``on_state(meter_id, error_or_None)`` is called per meter when it changes: an error
        text when the broker is unreachable, refuses the login or the subscription, or
        drops the connection; None once the meter's subscription is in place again.
        """
        self._on_message, self._on_state = on_message, on_state
        link = _Link(
            self.target,
            self.client_id,
            persistent=True,
            session_expiry_s=self.session_expiry_s,
            keepalive_s=self.keepalive_s,
            connect_timeout_s=self.connect_timeout_s,
        )
        link.handle_message = self._message
        link.handle_subscribe = self._subscribed
        link.handle_lost = self._lost
        self._link = link
        loop = asyncio.get_running_loop()
        delay = self.reconnect_min_s
        try:
            while not stop.is_set():
                try:
                    await link.open()
                except MqttUnreachableError as exc:
                    self._all(str(exc))
                    if await _wait(stop, delay):
                        break
                    delay = min(delay * 2, self.reconnect_max_s)
                    continue
                up_since = loop.time()
                log.info("MQTT broker %s: connected as %s", self.address, self.client_id)
                self._sub_mids[link.subscribe([(m.target.topic, m.target.qos) for m in self.meters],
                                              send_retained=False)] = self.meters
                await _wait_any(stop, link.lost)
                if stop.is_set():
                    break
                # A connection that held for a while was healthy: start the backoff afresh.
                if loop.time() - up_since > self.reconnect_max_s:
                    delay = self.reconnect_min_s
                if await _wait(stop, delay):
                    break
                delay = min(delay * 2, self.reconnect_max_s)
        finally:
            # Messages arriving from now on are left unacknowledged: the broker keeps them.
            self._stopping = True
            if self._waiting:
                await asyncio.wait(set(self._waiting), timeout=self.stop_grace_s)
            self._flush_acks()
            await link.close()
            self._link = None

    # loop-thread handlers -----------------------------------------------------------------

    def _all(self, error: str | None) -> None:
        for m in self.meters:
            self._state(m.id, error)

    def _state(self, meter_id: str, error: str | None) -> None:
        if meter_id in self._reported and self._reported[meter_id] == error:
            return
        self._reported[meter_id] = error
        if error is None:
            log.info("MQTT meter %s: subscribed at broker %s", meter_id, self.address)
        else:
            log.warning("MQTT meter %s: %s", meter_id, error)
        if self._on_state is not None:
            try:
                self._on_state(meter_id, error)
            except Exception:
                log.exception("MQTT meter %s: on_state failed", meter_id)

    def _lost(self, text: str) -> None:
        self._all(text)

    def _subscribed(self, mid: int, codes: list[ReasonCode]) -> None:
        meters = self._sub_mids.pop(mid, ())
        for m, rc in zip(meters, codes):
            if rc.is_failure:
                advice = _SUBACK_ADVICE.get(rc.value, "check the broker's log")
                self._state(
                    m.id,
                    f"broker {self.address} refused the subscription to topic {m.target.topic!r} "
                    f"({rc.getName()}): {advice}",
                )
                continue
            if rc.value < m.target.qos:
                log.warning(
                    "MQTT meter %s: broker %s granted QoS %d instead of %d; messages sent while the "
                    "agent is away may be lost", m.id, self.address, rc.value, m.target.qos,
                )
            self._state(m.id, None)

    def _message(self, msg: paho.MQTTMessage) -> None:
        arrival = now_ns()
        link = self._link
        if link is None or self._stopping:
            return
        meter = self._by_topic.get(msg.topic)
        if meter is None:
            # A subscription an earlier configuration left in the persistent session.
            link.ack(msg.mid, msg.qos)
            if msg.topic not in self._stray_topics:
                self._stray_topics.add(msg.topic)
                log.warning("MQTT broker %s: message on topic %r, which no configured meter uses; "
                            "ignored and unsubscribed", self.address, msg.topic)
                link.client.unsubscribe(msg.topic)
            return
        if msg.retain:
            link.ack(msg.mid, msg.qos)
            return
        digest = hashlib.blake2b(msg.payload, digest_size=16).digest()
        recent = self._recent[meter.id]
        earlier = recent.get(digest)
        if msg.dup and earlier is not None and earlier.state != _FAILED:
            # The broker's copy of a message we already have: acknowledge it once the
            # original is handled, never hand it on twice.
            self._queue_ack(link, msg, earlier)
            return
        try:
            result: DecodedMessage | PayloadError = decode_payload(msg.payload, meter.payload_map)
        except PayloadError as exc:
            result = exc
        handled = _Handled()
        recent[digest] = handled
        recent.move_to_end(digest)
        while len(recent) > _RECENT_PER_METER:
            recent.popitem(last=False)
        self._queue_ack(link, msg, handled, flush=False)
        assert self._on_message is not None
        try:
            outcome = self._on_message(meter.id, arrival, result)
        except Exception:
            # A bug, not a full disk: delivering the message again would fail again and, with
            # enough such messages, fill the broker's in-flight window and stop the meter.
            log.exception("MQTT meter %s: on_message failed; message of %d bytes dropped",
                          meter.id, len(msg.payload))
            self._finish(handled, ok=True)
            return
        if inspect.isawaitable(outcome):
            future = asyncio.ensure_future(outcome)
            self._waiting.add(future)
            future.add_done_callback(lambda f, h=handled: self._done(f, h))
        else:
            self._finish(handled, ok=True)

    def _done(self, future: asyncio.Future[Any], handled: _Handled) -> None:
        self._waiting.discard(future)
        ok = not future.cancelled() and future.exception() is None
        if not ok:
            log.error("MQTT: storing a message failed (%s); the broker will deliver it again",
                      "cancelled" if future.cancelled() else future.exception())
        self._finish(handled, ok=ok)

    def _queue_ack(self, link: _Link, msg: paho.MQTTMessage, handled: _Handled, *, flush: bool = True) -> None:
        if msg.qos > 0:
            self._pending.append(_Ack(link.generation, msg.mid, msg.qos, handled))
        if flush:
            self._flush_acks()

    def _finish(self, handled: _Handled, *, ok: bool) -> None:
        handled.state = _OK if ok else _FAILED
        if not ok:
            self._redeliver = True
        self._flush_acks()

    def _flush_acks(self) -> None:
        link = self._link
        # MQTT wants acknowledgements in the order the messages came.
        while self._pending and self._pending[0].handled.state != _PENDING:
            ack = self._pending.popleft()
            if (
                ack.handled.state == _OK
                and link is not None
                and link.connected
                and ack.generation == link.generation
            ):
                link.ack(ack.mid, ack.qos)
        if self._redeliver and link is not None and link.connected and not self._stopping:
            # An unacknowledged message stays with the broker until the next connection.
            self._redeliver = False
            log.warning("MQTT broker %s: reconnecting so that it delivers unstored messages again", self.address)
            link.disconnect()


async def _wait(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep up to `seconds`; True if `stop` was set meanwhile."""
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        return False
    return True


async def _wait_any(*events: asyncio.Event) -> None:
    tasks = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()


# -- probe --------------------------------------------------------------------------------


async def receive_one(
    target: MqttTarget,
    pm: PayloadMap,
    timeout: float = 10.0,
    *,
    connect_timeout_s: float = 5.0,
) -> DecodedMessage:
    """The first fresh message on `target.topic`, decoded by `pm` (for `probe` with a map).

    Raises what `receive_raw` raises, and `PayloadError` if the message does not fit `pm`.
    """
    _, payload = await receive_raw(target, timeout, connect_timeout_s=connect_timeout_s)
    return decode_payload(payload, pm)


async def receive_raw(
    target: MqttTarget,
    timeout: float = 10.0,
    *,
    connect_timeout_s: float = 5.0,
) -> tuple[str, bytes]:
    """Connect, subscribe to `target.topic`, return (topic, payload) of the first fresh message.

    For `gridtrace edge probe` before a payload map exists. Uses a throw-away client id and
    a clean session, so it neither disturbs nor creates an agent's persistent session. A
    retained message is not taken as the answer (the agent would ignore it too), but the
    timeout message mentions it. Raises `MqttUnreachableError`, `MqttSubscribeError` or
    `MqttNoMessageError` (a TimeoutError too).
    """
    link = _Link(
        target,
        f"gridtrace-probe-{secrets.token_hex(6)}",
        persistent=False,
        session_expiry_s=0,
        keepalive_s=max(5, int(timeout) + 5),
        connect_timeout_s=connect_timeout_s,
    )
    got: asyncio.Future[bytes] = link.loop.create_future()
    saw_retained = False

    def on_message(msg: paho.MQTTMessage) -> None:
        nonlocal saw_retained
        link.ack(msg.mid, msg.qos)
        if msg.topic != target.topic:
            return
        if msg.retain:
            saw_retained = True
        elif not got.done():
            got.set_result(bytes(msg.payload))

    def on_subscribe(mid: int, codes: list[ReasonCode]) -> None:
        if codes and codes[0].is_failure and not got.done():
            got.set_exception(
                MqttSubscribeError(
                    f"broker {target.endpoint} refused the subscription to topic {target.topic!r} "
                    f"({codes[0].getName()}): {_SUBACK_ADVICE.get(codes[0].value, 'check the broker log')}",
                    reason="subscribe-refused",
                )
            )

    def on_lost(text: str) -> None:
        if not got.done():
            got.set_exception(MqttUnreachableError(text, reason="unreachable"))

    link.handle_message = on_message
    link.handle_subscribe = on_subscribe
    link.handle_lost = on_lost
    await link.open()
    try:
        link.subscribe([(target.topic, target.qos)], send_retained=True)
        try:
            payload = await asyncio.wait_for(got, timeout)
        except TimeoutError:
            who = f"user {target.username!r}" if target.username else "anonymous clients"
            retained = (
                " (the broker holds an older retained message there, which the probe skips as "
                "the agent would: the meter published at some time, but not now)" if saw_retained else ""
            )
            raise MqttNoMessageError(
                f"no message on topic {target.topic!r} at broker {target.endpoint} within "
                f"{timeout:g} s{retained}: check the topic (it is case-sensitive), that the meter "
                f"is powered and publishing, how often it publishes, and that the broker lets "
                f"{who} read the topic (MQTT 3.1.1 brokers deny it silently)",
                reason="no-message",
            ) from None
    finally:
        link.handle_lost = lambda text: None  # our own disconnect is no news
        if not got.done():
            got.cancel()
        await link.close()
    return target.topic, payload
