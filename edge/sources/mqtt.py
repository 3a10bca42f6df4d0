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
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import logging
import secrets
import socket
import ssl
import threading
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge.clock import now_ns
from edge.sources.mqtt_url import (
    DEFAULT_PORT,
    DEFAULT_TLS_PORT,
    VERSIONS,
    MqttConfigError,
    MqttTarget,
    client_id_for,
    parse_mqtt_url,
)
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



# -- errors -------------------------------------------------------------------------------


class MqttError(Exception):
    """A broker-side failure. `reason` is a short machine string, the message is for people."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class MqttUnreachableError(MqttError):
    """No working connection to the broker: network, TLS, or the broker refused the client."""


class MqttSubscribeError(MqttError):
    """The broker refused the subscription to a meter's topic."""


class MqttNoMessageError(MqttError, TimeoutError):
    """Subscribed, but no message arrived on the topic in time (also a TimeoutError)."""


# -- broker connection advice -------------------------------------------------------------

# MQTT 5 reason code (paho maps MQTT 3.1.1 CONNACK codes onto these) -> (reason, advice)
_CONNACK_ADVICE: dict[int, tuple[str, str]] = {
    0x80: ("refused", "the broker refused the connection without saying why; check the broker's log"),
    0x81: ("refused", "the broker found the CONNECT packet malformed; check the broker's log"),
    0x84: ("refused", "the broker does not speak MQTT {version}; put ?version={other} in the meter URL"),
    0x85: (
        "refused",
        (
            "the broker rejected the client id {client_id!r}; check the broker's rules for "
            "client ids (some allow only 23 characters or a fixed prefix)"
        ),
    ),
    0x86: (
        "bad-credentials",
        (
            "wrong user name or password; check user:password in the meter URL against the "
            "broker's password file (percent-encode @ : / in them, e.g. %40)"
        ),
    ),
    0x88: ("refused", "the broker is unavailable; check the broker's log and retry later"),
    0x89: ("refused", "the broker is busy; it should accept the connection again later"),
    0x8A: ("not-authorized", "the broker has banned this client; check the broker's configuration"),
    0x8C: ("bad-credentials", "the broker wants a different authentication method; check its configuration"),
    0x95: ("refused", "the broker refused the CONNECT packet as too large; check its message size limit"),
    0x97: ("refused", "the broker's quota for this client is exceeded; check its limits"),
    0x9C: ("refused", "the broker asks clients to use another server; check the broker address"),
    0x9D: ("refused", "the broker has moved; check the broker address"),
}

_SUBACK_ADVICE: dict[int, str] = {
    0x80: "check the broker's access rules (ACL) for this user and topic",
    0x83: "check the broker's log",
    0x87: "the broker's access rules (ACL) do not let this user read the topic",
    0x8F: "the broker does not accept this topic name",
    0x91: "a transient packet id clash; the next connection should succeed",
    0x97: "the broker's subscription quota is exceeded",
}

# Reasons a broker gives when it closes a connection (MQTT 5 DISCONNECT).
_DISCONNECT_ADVICE: dict[int, str] = {
    0x8B: "the broker is shutting down",
    0x8D: "keep-alive timeout: the network between gateway and broker dropped packets",
    0x8E: (
        "another client connected with the same client id and took the session over: are two "
        "agents running with the same gateway id?"
    ),
    0x9C: "the broker asks clients to use another server",
    0x9D: "the broker has moved",
}


def _connack_error(target: MqttTarget, client_id: str, rc: ReasonCode) -> MqttUnreachableError:
    value = rc.value
    login = f"user {target.username!r}" if target.username is not None else "anonymous clients"
    if value == 0x87:
        reason = "not-authorized"
        if target.username is None:
            advice = "the broker does not accept anonymous clients; add user:password@ before the host in the meter URL"
        else:
            advice = (
                f"the broker refused user {target.username!r}: check the password in the meter URL, "
                "and that the broker's access rules let this user connect"
            )
    else:
        reason, template = _CONNACK_ADVICE.get(value, ("refused", "check the broker's log"))
        other = "3.1.1" if target.version == "5" else "5"
        advice = template.format(version=target.version, other=other, client_id=client_id)
    return MqttUnreachableError(
        f"broker {target.endpoint} refused the connection of {login} ({rc.getName()}): {advice}",
        reason=reason,
    )


def _connect_error(target: MqttTarget, exc: BaseException, timeout_s: float) -> MqttUnreachableError:
    ep = target.endpoint
    if isinstance(exc, socket.gaierror):
        return MqttUnreachableError(
            f"cannot resolve broker host {target.host!r} ({exc.strerror}): check the host name in "
            "the meter URL and the gateway's DNS settings",
            reason="unreachable",
        )
    if isinstance(exc, ssl.SSLCertVerificationError):
        return MqttUnreachableError(
            f"the TLS certificate of broker {ep} is not trusted ({getattr(exc, 'verify_message', None) or exc}): set "
            "ca=/path/to/ca.pem in the meter URL to the CA that signed it, and check that the "
            "host name in the URL is the one in the certificate",
            reason="tls",
        )
    if target.tls and isinstance(exc, (ConnectionResetError, BrokenPipeError, ssl.SSLEOFError)):
        return MqttUnreachableError(
            f"broker {ep} dropped the connection during the TLS handshake: check that this port "
            "speaks TLS (mqtts:// is usually port 8883, mqtt:// port 1883 is plain)",
            reason="tls",
        )
    if isinstance(exc, ssl.SSLError):
        return MqttUnreachableError(
            f"TLS handshake with broker {ep} failed ({getattr(exc, 'reason', None) or exc}): check that this port "
            "speaks TLS (mqtts:// is usually port 8883, mqtt:// port 1883 is plain)",
            reason="tls",
        )
    if isinstance(exc, ConnectionRefusedError):
        return MqttUnreachableError(
            f"broker {ep} refused the TCP connection (nothing listens on port {target.port}): "
            "check host and port in the meter URL and that the broker is running",
            reason="unreachable",
        )
    if isinstance(exc, TimeoutError):
        return MqttUnreachableError(
            f"no answer from broker {ep} within {timeout_s:g} s: check the address, the network "
            "route and firewalls between the gateway and the broker",
            reason="unreachable",
        )
    detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return MqttUnreachableError(
        f"cannot connect to broker {ep} ({detail}): check the address in the meter URL, the "
        "network route and firewalls",
        reason="unreachable",
    )


def _close_sockets_of(exc: BaseException) -> None:
    """Close sockets left open in the frames `exc` passed through.

    paho 2.2 does not close the TCP socket when the TLS handshake on it fails; a gateway
    retrying for days would hold a file descriptor per attempt until garbage collection.
    """
    tb = exc.__traceback__
    while tb is not None:
        for value in tb.tb_frame.f_locals.values():
            if isinstance(value, socket.socket):
                value.close()
        tb = tb.tb_next


# -- one client connection, driven by the asyncio loop ------------------------------------


class _Link:
    """One paho client whose socket is served by the running asyncio loop.

    Everything but the blocking TCP/TLS connect happens on the loop thread, so paho's
    callbacks (messages, subscriptions, disconnects) run there too. paho calls the socket
    callbacks from the connect thread as well; those are handed to the loop. A socket is
    only ever closed on the loop thread (by paho inside loop_read/loop_write/loop_misc), so
    a reader is never left registered on a reused file descriptor.
    """

    def __init__(
        self,
        target: MqttTarget,
        client_id: str,
        *,
        persistent: bool,
        session_expiry_s: int,
        keepalive_s: int,
        connect_timeout_s: float,
    ) -> None:
        self.target = target
        self.client_id = client_id
        self.keepalive_s = keepalive_s
        self.connect_timeout_s = connect_timeout_s
        self.loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        v5 = target.version == "5"
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=None if v5 else not persistent,
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
            manual_ack=True,
            reconnect_on_failure=False,
        )
        self.client.connect_timeout = connect_timeout_s
        self._connect_kwargs: dict[str, Any] = {}
        if v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = session_expiry_s if persistent else 0
            self._connect_kwargs = {"clean_start": not persistent, "properties": props}
        if target.tls:
            self.client.tls_set(ca_certs=target.ca)
        if target.username is not None:
            self.client.username_pw_set(target.username, target.password)
        c = self.client
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_subscribe = self._on_subscribe
        c.on_message = self._on_message
        c.on_socket_open = self._on_socket_open
        c.on_socket_close = self._on_socket_close
        c.on_socket_register_write = self._on_socket_register_write
        c.on_socket_unregister_write = self._on_socket_unregister_write

        self.connected = False
        self.generation = 0  # +1 per accepted connection; acks never cross connections
        self.lost = asyncio.Event()
        self.lost_reason: str | None = None
        self.closing = False  # a disconnect we asked for is no news to report
        self._connack: asyncio.Future[ReasonCode] | None = None
        self._misc: asyncio.Task[None] | None = None
        self._closed = asyncio.Event()
        self._closed.set()
        # set by the owner
        self.handle_message: Callable[[paho.MQTTMessage], None] = lambda msg: None
        self.handle_subscribe: Callable[[int, list[ReasonCode]], None] = lambda mid, codes: None
        self.handle_lost: Callable[[str], None] = lambda text: None

    # socket plumbing (paho -> asyncio) ------------------------------------------------

    def _on_loop(self, fn: Callable[..., None], *args: Any) -> None:
        if threading.get_ident() == self._loop_thread:
            fn(*args)
        else:
            self.loop.call_soon_threadsafe(fn, *args)

    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._on_loop(self._add_reader, sock)

    def _add_reader(self, sock: Any) -> None:
        if self.client.socket() is sock:  # not closed again meanwhile
            self._closed.clear()
            self.loop.add_reader(sock, self._readable, sock)

    def _readable(self, sock: Any) -> None:
        self.client.loop_read()
        # TLS may hold decrypted bytes the socket no longer signals.
        while isinstance(sock, ssl.SSLSocket) and self.client.socket() is sock and sock.pending():
            self.client.loop_read()

    def _on_socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        # paho closes sockets only on the loop thread (see the class docstring)
        self.loop.remove_reader(sock)
        self.loop.remove_writer(sock)
        self._closed.set()

    def _on_socket_register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._on_loop(self._add_writer, sock)

    def _add_writer(self, sock: Any) -> None:
        # Unconditional: paho now believes the writer registered, and unregisters it itself
        # (in loop_write) once its queue is empty.
        if self.client.socket() is sock:
            self.loop.add_writer(sock, self.client.loop_write)

    def _on_socket_unregister_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._on_loop(self.loop.remove_writer, sock)

    async def _misc_loop(self) -> None:
        # keep-alive pings and the keep-alive timeout
        while True:
            await asyncio.sleep(1.0)
            if self.client.loop_misc() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return

    # MQTT callbacks (loop thread) -------------------------------------------------------

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, rc: ReasonCode, props: Any) -> None:
        if not rc.is_failure:
            self.connected = True
            self.generation += 1
            self.lost.clear()
            self.lost_reason = None
        if self._connack is not None and not self._connack.done():
            self._connack.set_result(rc)

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, rc: ReasonCode, props: Any) -> None:
        was_connected, self.connected = self.connected, False
        if self._misc is not None:
            self._misc.cancel()
            self._misc = None
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(
                MqttUnreachableError(
                    f"broker {self.target.endpoint} closed the connection before answering the "
                    "MQTT CONNECT: check that this port is an MQTT broker"
                    + (" speaking TLS" if self.target.tls else " (plain mqtt://, not TLS)"),
                    reason="refused",
                )
            )
            return
        if not was_connected:
            return
        if self.closing:
            self.lost_reason = "disconnected by the agent"
            self.lost.set()
            return
        value = rc.value if isinstance(rc, ReasonCode) else None
        if value in _DISCONNECT_ADVICE:
            detail = f"{rc.getName()}: {_DISCONNECT_ADVICE[value]}"
        elif value in (None, 0x80):
            # paho's word for a socket that closed or a keep-alive that went unanswered
            detail = "the broker or the network closed it"
        else:
            detail = rc.getName()
        self.lost_reason = f"lost the connection to broker {self.target.endpoint} ({detail}); reconnecting"
        self.lost.set()
        self.handle_lost(self.lost_reason)

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int, codes: list[ReasonCode], props: Any) -> None:
        self.handle_subscribe(mid, codes)

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        try:
            self.handle_message(message)
        except Exception:  # paho would swallow it silently
            log.exception("MQTT message on %r from broker %s: handler failed", message.topic, self.target.endpoint)

    # operations ---------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect and wait for the broker's CONNACK; MqttUnreachableError on any failure."""
        if self.client.socket() is not None:
            raise RuntimeError("MQTT link is already open")
        self.closing = False
        self._connack = self.loop.create_future()
        try:
            connecting = asyncio.ensure_future(asyncio.to_thread(
                self.client.connect, self.target.host, self.target.port, self.keepalive_s,
                **self._connect_kwargs,
            ))
            try:
                await asyncio.shield(connecting)
            except asyncio.CancelledError:
                # The thread cannot be stopped; drop whatever socket it opens.
                connecting.add_done_callback(lambda _: self._abandon())
                raise
            except (OSError, ValueError) as exc:
                _close_sockets_of(exc)
                raise _connect_error(self.target, exc, self.connect_timeout_s) from exc
            try:
                rc = await asyncio.wait_for(asyncio.shield(self._connack), self.connect_timeout_s)
            except TimeoutError:
                await self.close()
                raise MqttUnreachableError(
                    f"broker {self.target.endpoint} accepted the TCP connection but did not answer "
                    f"the MQTT CONNECT within {self.connect_timeout_s:g} s: check that this port is "
                    "an MQTT broker" + (" speaking TLS" if self.target.tls else
                                        " (mqtts:// for a TLS port such as 8883)"),
                    reason="refused",
                ) from None
            except MqttUnreachableError:
                await self._wait_closed()
                raise
        finally:
            self._connack = None
        if rc.is_failure:
            await self._wait_closed()
            raise _connack_error(self.target, self.client_id, rc)
        self._misc = self.loop.create_task(self._misc_loop())

    def _abandon(self) -> None:
        """Drop the connection without a DISCONNECT (loop thread)."""
        if self.client.socket() is not None:
            # paho has no public way to drop a connection; _sock_close is what its own loop
            # uses, and it runs our socket callbacks, so the loop forgets the socket too.
            self.client._sock_close()
        self._closed.set()
        self.connected = False

    def subscribe(self, topics: Sequence[tuple[str, int]], *, send_retained: bool) -> int:
        """Subscribe to exact topics; returns the packet id the SUBACK will carry."""
        if self.target.version == "5":
            # 2 = do not send retained messages at subscribe time: they are old readings.
            handling = SubscribeOptions.RETAIN_SEND_ON_SUBSCRIBE if send_retained else SubscribeOptions.RETAIN_DO_NOT_SEND
            requests: list[Any] = [(t, SubscribeOptions(qos=q, retainHandling=handling)) for t, q in topics]
        else:
            requests = list(topics)
        rc, mid = self.client.subscribe(requests)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise MqttUnreachableError(
                f"cannot subscribe at broker {self.target.endpoint}: {paho.error_string(rc)}", reason="unreachable"
            )
        return mid

    def ack(self, mid: int, qos: int) -> None:
        if self.connected and qos > 0:
            self.client.ack(mid, qos)

    def disconnect(self) -> None:
        """Start a clean disconnect (the broker keeps a persistent session)."""
        self.closing = True
        self.client.disconnect()

    async def close(self) -> None:
        """Disconnect cleanly and release the socket."""
        if self.client.socket() is None:
            return
        self.disconnect()
        await self._wait_closed()

    async def _wait_closed(self, timeout_s: float = 2.0) -> None:
        try:
            await asyncio.wait_for(self._closed.wait(), timeout_s)
        except TimeoutError:
            self._abandon()  # the DISCONNECT did not get out
        if self._misc is not None:
            self._misc.cancel()
            self._misc = None
        self.connected = False


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
