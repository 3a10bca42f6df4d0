"""MQTT meter URLs: which broker, which topic, which login (pure; no paho import).

    mqtt://[user[:password]@]host[:port]/topic/path[?version=3.1.1|5][&qos=0|1|2]
    mqtts://[user[:password]@]host[:port]/topic/path[?...][&ca=/path/to/ca.pem]

A target's password never appears in its ``repr``, its ``url`` or any error message.
`edge.sources.mqtt` re-exports everything here.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, quote, unquote, urlsplit

__all__ = [
    "DEFAULT_PORT",
    "DEFAULT_TLS_PORT",
    "VERSIONS",
    "MqttConfigError",
    "MqttTarget",
    "client_id_for",
    "parse_mqtt_url",
]

DEFAULT_PORT = 1883
DEFAULT_TLS_PORT = 8883
VERSIONS: tuple[str, ...] = ("3.1.1", "5")

_EXAMPLE_URL = "e.g. mqtt://broker.local:1883/site/meters/1?version=5&qos=1"
_QUERY_KEYS = ("version", "qos", "ca")


class MqttConfigError(ValueError):
    """A meter URL that cannot work; the message names it (password hidden) and the problem."""


# -- meter URLs ---------------------------------------------------------------------------


@dataclass(frozen=True)
class MqttTarget:
    """Where one meter publishes: a broker, how to log in, and the meter's topic."""

    host: str
    port: int
    topic: str
    version: str = "3.1.1"
    qos: int = 1
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca: str | None = None

    def __repr__(self) -> str:
        secret = ", password='***'" if self.password is not None else ""
        return (
            f"MqttTarget(host={self.host!r}, port={self.port}, topic={self.topic!r}, "
            f"version={self.version!r}, qos={self.qos}, tls={self.tls}, "
            f"username={self.username!r}{secret}, ca={self.ca!r})"
        )

    @property
    def endpoint(self) -> str:
        """host:port, with IPv6 addresses bracketed."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        """The canonical meter URL, with the password shown as ``***``."""
        scheme = "mqtts" if self.tls else "mqtt"
        login = ""
        if self.username is not None:
            login = quote(self.username, safe="")
            if self.password is not None:
                login += ":***"
            login += "@"
        query = f"version={self.version}&qos={self.qos}"
        if self.ca is not None:
            query += f"&ca={quote(self.ca, safe='/')}"
        return f"{scheme}://{login}{self.endpoint}/{quote(self.topic, safe='/')}?{query}"

    @property
    def bus_key(self) -> tuple[str, int, bool, str | None, str]:
        """Meters whose targets share this key share one client connection."""
        return (self.host, self.port, self.tls, self.username, self.version)


def _redact(url: str) -> str:
    """`url` with the password of its user-info part replaced by ``***``."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    end = len(rest)
    for stop in "/?#":
        i = rest.find(stop)
        if i >= 0:
            end = min(end, i)
    netloc = rest[:end]
    at = netloc.rfind("@")
    if at < 0:
        return url
    user, colon, _ = netloc[:at].partition(":")
    if not colon:
        return url
    return f"{scheme}://{user}:***@{netloc[at + 1:]}{rest[end:]}"


def parse_mqtt_url(url: str) -> MqttTarget:
    """Parse an ``mqtt://`` or ``mqtts://`` meter URL (see the module docstring)."""
    shown = _redact(url) if isinstance(url, str) else url

    def fail(problem: str) -> MqttConfigError:
        return MqttConfigError(f"meter URL {shown!r}: {problem}")

    if not isinstance(url, str) or "://" not in url:
        raise fail(f"not a meter URL; expected mqtt://host:port/topic ({_EXAMPLE_URL})")
    url = url.strip()
    scheme = url.split("://", 1)[0].lower()
    if scheme not in ("mqtt", "mqtts"):
        raise fail(f"unsupported scheme {scheme!r}; expected mqtt:// or mqtts:// ({_EXAMPLE_URL})")
    if "#" in url.split("://", 1)[1].split("?", 1)[0] or "+" in unquote(urlsplit(url).path):
        raise fail(
            "the topic has a wildcard (+ or #); give the one topic this meter publishes to "
            "(one [[meters]] entry per meter, each with its own topic)"
        )
    parts = urlsplit(url)
    if parts.fragment:
        raise fail("unexpected '#...' after the query")
    try:
        host = parts.hostname
        port = parts.port
    except ValueError as exc:
        raise fail(f"bad host or port ({exc}); {_EXAMPLE_URL}") from None
    if not host:
        raise fail(f"no broker host; {_EXAMPLE_URL}")
    tls = scheme == "mqtts"
    if port is None:
        port = DEFAULT_TLS_PORT if tls else DEFAULT_PORT
    elif not 1 <= port <= 65535:
        raise fail(f"port {port} is not in 1..65535")
    username = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    if username == "":
        raise fail("empty user name before '@'; write user:password@host, or leave the login out")

    topic = unquote(parts.path[1:]) if parts.path.startswith("/") else ""
    if not topic:
        raise fail(f"no topic; put the meter's topic after the broker address ({_EXAMPLE_URL})")
    if "+" in topic or "#" in topic:
        raise fail("the topic has a wildcard (+ or #); give the one topic this meter publishes to")
    if "\x00" in topic:
        raise fail("the topic contains a NUL character")
    if len(topic.encode("utf-8", "surrogatepass")) > 65535:
        raise fail("the topic is longer than MQTT's limit of 65535 bytes")

    params: dict[str, str] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key not in _QUERY_KEYS:
            raise fail(f"unknown parameter {key!r}; known: {', '.join(_QUERY_KEYS)}")
        if key in params:
            raise fail(f"parameter {key!r} is given twice")
        params[key] = value
    version = params.get("version", "3.1.1")
    if version not in VERSIONS:
        raise fail(f"version={version!r}; expected version=3.1.1 or version=5")
    qos_text = params.get("qos", "1")
    if qos_text not in ("0", "1", "2"):
        raise fail(f"qos={qos_text!r}; expected qos=0, 1 or 2 (1 is right for meters)")
    ca = params.get("ca")
    if ca is not None:
        if not tls:
            raise fail("ca= is for TLS; use mqtts:// or drop ca=")
        if not ca:
            raise fail("ca= is empty; give the path of the PEM file of the broker's CA")
    return MqttTarget(host, port, topic, version, int(qos_text), tls, username, password, ca)


def client_id_for(gateway_id: str, target: MqttTarget) -> str:
    """The client id of this gateway's connection for `target`'s bus.

    Stable across restarts, which the broker needs to find the persistent session again,
    and different per bus of one gateway, because two connections with one client id
    throw each other off the broker. Longer than 23 characters, MQTT 3.1.1's guaranteed
    minimum: mosquitto, EMQX, HiveMQ and VerneMQ accept it; a broker that refuses it says
    "client identifier not valid" (see `MqttUnreachableError`).
    """
    digest = hashlib.sha256(repr(target.bus_key).encode("utf-8")).hexdigest()[:8]
    return f"gridtrace-{gateway_id}-{digest}"
