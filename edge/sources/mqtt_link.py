"""MQTT broker connection: one paho client served by the agent's asyncio loop.

`_Link` is the plumbing under `edge.sources.mqtt`: it opens the TCP/TLS connection (the
blocking connect in a worker thread, everything else on the loop thread, so paho's
callbacks run there), waits for the CONNACK, keeps the connection alive, subscribes,
acknowledges QoS 1/2 messages on request, and disconnects. It holds the session settings
(persistent or clean, MQTT 3.1.1 or 5) but no policy: what a message means, when to
acknowledge it and when to reconnect are decided by its owner (`MqttSubscriber`, or the
probe's `receive_raw`) through the ``handle_*`` callbacks.

Also here: the `MqttError` family and the advice that turns broker reason codes and
socket/TLS failures into messages a person installing a gateway can act on. Everything
public is re-exported by `edge.sources.mqtt`; import it from there.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import threading
from collections.abc import Callable, Sequence
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge.sources.mqtt_url import MqttTarget

__all__ = [
    "MqttError",
    "MqttNoMessageError",
    "MqttSubscribeError",
    "MqttUnreachableError",
]

# The logger of edge.sources.mqtt: one MQTT source to the operator, however it is split.
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
