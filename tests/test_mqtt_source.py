"""The MQTT meter source: URLs, payload maps, decoding, and a real mosquitto on the wire."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import paho.mqtt.client as paho
import pytest
from brokers import MOSQUITTO_PASSWORD, MOSQUITTO_USER, Mosquitto
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from edge.sources import mqtt
from edge.sources.mqtt import (
    DecodedMessage,
    MqttConfigError,
    MqttMeter,
    MqttNoMessageError,
    MqttSubscriber,
    MqttUnreachableError,
    PayloadError,
    PayloadMapError,
    client_id_for,
    decode_payload,
    parse_json_path,
    parse_mqtt_url,
    parse_payload_map,
    receive_one,
    receive_raw,
)

WAIT_S = 10.0  # upper bound for things that normally take milliseconds


# -- URLs ---------------------------------------------------------------------------------


def test_url_defaults() -> None:
    t = parse_mqtt_url("mqtt://broker.local/site/meters/1")
    assert (t.host, t.port, t.topic, t.version, t.qos, t.tls) == ("broker.local", 1883, "site/meters/1", "3.1.1", 1, False)
    assert t.username is None and t.password is None and t.ca is None
    assert t.url == "mqtt://broker.local:1883/site/meters/1?version=3.1.1&qos=1"


def test_url_all_parts() -> None:
    t = parse_mqtt_url("mqtts://reader:p%40ss%3Aw%2Frd@[fd00::5]/plant/a%20b/meter?version=5&qos=2&ca=/etc/ssl/ca.pem")
    assert (t.host, t.port, t.tls, t.version, t.qos) == ("fd00::5", 8883, True, "5", 2)
    assert (t.username, t.password, t.ca) == ("reader", "p@ss:w/rd", "/etc/ssl/ca.pem")
    assert t.topic == "plant/a b/meter"
    assert t.endpoint == "[fd00::5]:8883"
    # the canonical URL parses back to the same target, except the hidden password
    again = parse_mqtt_url(t.url)
    assert again.topic == t.topic and again.ca == t.ca and again.password == "***"


def test_password_never_shown() -> None:
    t = parse_mqtt_url("mqtt://reader:hunter2@10.0.0.2:1884/m/1")
    for text in (repr(t), str(t), t.url, repr([t])):
        assert "hunter2" not in text
    assert "password='***'" in repr(t)
    assert t.url.startswith("mqtt://reader:***@10.0.0.2:1884/")
    with pytest.raises(MqttConfigError) as err:
        parse_mqtt_url("mqtt://reader:hunter2@10.0.0.2:1884/m/+")
    assert "hunter2" not in str(err.value) and "reader:***@" in str(err.value)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("broker/topic", "not a meter URL"),
        ("modbus-tcp://h/x", "unsupported scheme"),
        ("mqtt://h", "no topic"),
        ("mqtt://h/", "no topic"),
        ("mqtt://h/site/+/power", "wildcard"),
        ("mqtt://h/site/#", "wildcard"),
        ("mqtt://h/site/%23", "wildcard"),
        ("mqtt://h/site/%2B/x", "wildcard"),
        ("mqtt:///topic", "no broker host"),
        ("mqtt://h:99999/t", "bad host or port"),
        ("mqtt://h:0/t", "not in 1..65535"),
        ("mqtt://h/t?version=4", "version=3.1.1 or version=5"),
        ("mqtt://h/t?qos=3", "qos=0, 1 or 2"),
        ("mqtt://h/t?unit=1", "unknown parameter 'unit'"),
        ("mqtt://h/t?qos=1&qos=0", "given twice"),
        ("mqtt://h/t?ca=/x.pem", "ca= is for TLS"),
        ("mqtts://h/t?ca=", "ca= is empty"),
        ("mqtt://:pw@h/t", "empty user name"),
        ("mqtt://h/t%00x", "NUL"),
    ],
)
def test_bad_urls_say_what_is_expected(url: str, expected: str) -> None:
    with pytest.raises(MqttConfigError) as err:
        parse_mqtt_url(url)
    assert expected in str(err.value)
    assert isinstance(err.value, ValueError)


def test_bus_key_groups_meters_of_one_connection() -> None:
    a = parse_mqtt_url("mqtt://u:p@h/site/1?version=5")
    b = parse_mqtt_url("mqtt://u:p@h:1883/site/2?version=5&qos=0")
    assert a.bus_key == b.bus_key
    assert a.bus_key != parse_mqtt_url("mqtt://other:p@h/site/1?version=5").bus_key
    assert a.bus_key != parse_mqtt_url("mqtt://u:p@h/site/1").bus_key
    assert a.bus_key != parse_mqtt_url("mqtts://u:p@h:1883/site/1?version=5").bus_key
    assert client_id_for("gw-7", a) == client_id_for("gw-7", b)
    assert client_id_for("gw-7", a) != client_id_for("gw-8", a)
    assert client_id_for("gw-7", a) != client_id_for("gw-7", parse_mqtt_url("mqtt://h/site/1"))
    assert "p" not in client_id_for("gw-7", a).split("gw-7")[0]


def test_subscriber_refuses_meters_that_cannot_share_a_connection() -> None:
    pm = _pm()
    one = MqttMeter("m1", parse_mqtt_url("mqtt://u:a@h/t/1"), pm)
    with pytest.raises(MqttConfigError, match="password"):
        MqttSubscriber([one, MqttMeter("m2", parse_mqtt_url("mqtt://u:b@h/t/2"), pm)], "c")
    with pytest.raises(MqttConfigError, match="both use topic 't/1'"):
        MqttSubscriber([one, MqttMeter("m2", parse_mqtt_url("mqtt://u:a@h/t/1?qos=0"), pm)], "c")
    with pytest.raises(MqttConfigError, match="given twice"):
        MqttSubscriber([one, MqttMeter("m1", parse_mqtt_url("mqtt://u:a@h/t/2"), pm)], "c")
    with pytest.raises(MqttConfigError, match="at least one"):
        MqttSubscriber([], "c")


# -- payload maps -------------------------------------------------------------------------


def _pm(**extra: Any) -> mqtt.PayloadMap:
    table: dict[str, Any] = {
        "fields": {
            "power_total": {"path": "Body.P", "unit": "W"},
            "energy_import": {"path": "Body.E_in", "unit": "kWh", "kind": "counter", "scale": 0.001, "min": 0},
            "voltage_l2": {"path": "Body.phases[1].v", "unit": "V", "min": 180, "max": 280},
            "frequency": {"path": 'Body["f.Hz"]', "unit": "Hz"},
        },
        **extra,
    }
    return parse_payload_map(table, "agent.toml: [meters #1]")


def test_payload_map_fields() -> None:
    pm = _pm(timestamp={"path": "Body.ts", "format": "epoch_ms"})
    assert [f.name for f in pm.quantities] == ["power_total", "energy_import", "voltage_l2", "frequency"]
    e = pm.register("energy_import")
    assert (e.unit, e.kind, e.scale, e.min, e.max) == ("kWh", "counter", 0.001, 0.0, None)
    assert e.steps == ("Body", "E_in")
    assert pm.register("voltage_l2").steps == ("Body", "phases", 1, "v")
    assert pm.register("frequency").steps == ("Body", "f.Hz")
    assert pm.timestamp is not None and pm.timestamp.format == "epoch_ms"
    v = pm.register("voltage_l2")
    assert v.plausible(230.0) and not v.plausible(179.9) and not v.plausible(280.5)
    with pytest.raises(KeyError, match="no field 'current_l1'"):
        pm.register("current_l1")


@pytest.mark.parametrize(
    ("path", "steps"),
    [
        ("a", ("a",)),
        ("a.b.c", ("a", "b", "c")),
        ("a[0]", ("a", 0)),
        ("[2].x", (2, "x")),
        ("data.phases[10].v", ("data", "phases", 10, "v")),
        ('a["b.c"][0]', ("a", "b.c", 0)),
        ('["x[1]"]', ("x[1]",)),
        ("Body.E-in_1", ("Body", "E-in_1")),
    ],
)
def test_json_paths(path: str, steps: tuple[Any, ...]) -> None:
    assert parse_json_path(path) == steps


@pytest.mark.parametrize("path", ["", "a..b", ".a", "a.", "a[", "a[x]", "a[-1]", "a[01]", 'a["b"', "a]b", 'a"b', "a[0]b"])
def test_bad_json_paths(path: str) -> None:
    with pytest.raises(ValueError):
        parse_json_path(path)


@pytest.mark.parametrize(
    ("table", "key", "expected"),
    [
        ({}, "fields", "one entry per quantity"),
        ({"fields": {}}, "fields", "one entry per quantity"),
        ({"fields": {"p": {"path": "P", "unit": "W"}}, "topic": "x"}, "topic", "unknown setting"),
        ({"fields": {"p": "P"}}, "fields.p", 'path = "..."'),
        ({"fields": {"p": {"unit": "W"}}}, "fields.p", "path is missing"),
        ({"fields": {"p": {"path": "P"}}}, "fields.p", "unit is missing"),
        ({"fields": {"p": {"path": "P", "unit": 3}}}, "fields.p", "unit is missing or not text"),
        ({"fields": {"p": {"path": "P..x", "unit": "W"}}}, "fields.p", "path:"),
        ({"fields": {"p": {"path": "P", "unit": "W", "kind": "gauge"}}}, "fields.p", "instantaneous, counter"),
        ({"fields": {"p": {"path": "P", "unit": "W", "scale": 0}}}, "fields.p", "scale = 0"),
        ({"fields": {"p": {"path": "P", "unit": "W", "scale": True}}}, "fields.p", "finite number"),
        ({"fields": {"p": {"path": "P", "unit": "W", "min": 5, "max": 1}}}, "fields.p", "above max"),
        ({"fields": {"p": {"path": "P", "unit": "W", "offset": 1}}}, "fields.p", "unknown setting 'offset'"),
        ({"fields": {"p q": {"path": "P", "unit": "W"}}}, "fields.p q", "not a valid identifier"),
        ({"fields": {"p": {"path": "P", "unit": "W" * 33}}}, "fields.p", "longer than 32 bytes"),
        ({"fields": {"p": {"path": "P", "unit": "W"}}, "timestamp": "ts"}, "timestamp", 'format = "epoch_ms"'),
        ({"fields": {"p": {"path": "P", "unit": "W"}}, "timestamp": {"path": "ts"}}, "timestamp", "epoch_s, epoch_ms, iso8601"),
        ({"fields": {"p": {"path": "P", "unit": "W"}}, "timestamp": {"path": "t", "format": "unix"}}, "timestamp", "format = 'unix'"),
    ],
)
def test_bad_payload_maps_name_the_key(table: dict[str, Any], key: str, expected: str) -> None:
    with pytest.raises(PayloadMapError) as err:
        parse_payload_map(table, "agent.toml: [meters #3]")
    assert err.value.key == key
    assert expected in err.value.problem
    assert str(err.value).startswith(f"agent.toml: [meters #3]: {key}: ")


# -- decoding -----------------------------------------------------------------------------


def _body(**body: Any) -> bytes:
    return json.dumps({"Body": body}).encode()


def test_decode_values_scaled_by_path() -> None:
    msg = decode_payload(_body(P=-812.5, E_in=1234567, phases=[{"v": 1}, {"v": 231.4}], **{"f.Hz": 50.01}), _pm())
    assert msg == DecodedMessage(
        {"power_total": -812.5, "energy_import": 1234.567, "voltage_l2": 231.4, "frequency": 50.01}, None, ()
    )


def test_decode_numeric_strings_in_json_number_syntax() -> None:
    msg = decode_payload(_body(P="812.5", E_in="-1e3", phases=[{}, {"v": "230"}], **{"f.Hz": "50"}), _pm())
    assert msg.values == {"power_total": 812.5, "energy_import": -1.0, "voltage_l2": 230.0, "frequency": 50.0}


def test_absent_and_null_values_are_missing_not_errors() -> None:
    msg = decode_payload(_body(P=None, phases=[{"v": 230}], **{"f.Hz": 50}), _pm())
    assert msg.values == {"frequency": 50.0}
    assert msg.missing == ("power_total", "energy_import", "voltage_l2")
    assert decode_payload(b'{"other": 1}', _pm()).missing == ("power_total", "energy_import", "voltage_l2", "frequency")
    assert decode_payload(b'{"Body": null}', _pm()).values == {}


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"", "not valid JSON"),
        (b'{"Body": {"P": 81', "not valid JSON"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b"[1, 2]", "an array, not a JSON object"),
        (b"812.5", "not a JSON object"),
        (b'"hello"', "not a JSON object"),
        (b'{"Body": {"P": true}}', "field power_total (path Body.P): value is true (a boolean)"),
        (b'{"Body": {"P": "812 W"}}', "value is the text '812 W'"),
        (b'{"Body": {"P": "nan"}}', "expected a number"),
        (b'{"Body": {"P": " 1"}}', "expected a number"),
        (b'{"Body": {"P": "1_000"}}', "expected a number"),
        (b'{"Body": {"P": {"v": 1}}}', "value is an object"),
        (b'{"Body": {"P": [1]}}', "value is an array"),
        (b'{"Body": {"P": NaN}}', "NaN is not a JSON number"),
        (b'{"Body": {"P": -Infinity}}', "-Infinity is not a JSON number"),
        (b'{"Body": {"P": 1e400}}', "too large"),
        (b'{"Body": {"P": "1e400"}}', "too large"),
        (b'{"Body": {"P": 1, "P": 2}}', "key 'P' appears twice"),
        (b'{"Body": [1, 2]}', "expected an object at Body, found an array"),
        (b'{"Body": {"phases": {"v": 1}}}', "expected an array at Body.phases, found an object"),
        (b'{"Body": 5}', "expected an object at Body"),
        (b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
        (b'{"pad": "' + b"x" * (300 * 1024) + b'"}', "larger than"),
    ],
)
def test_tampered_or_broken_payloads_are_errors(payload: bytes, expected: str) -> None:
    with pytest.raises(PayloadError) as err:
        decode_payload(payload, _pm())
    assert expected in str(err.value)


def test_scaled_overflow_is_an_error() -> None:
    pm = parse_payload_map({"fields": {"energy_import": {"path": "E", "unit": "Wh", "scale": 1000}}}, "x")
    with pytest.raises(PayloadError, match="not a finite number"):
        decode_payload(b'{"E": 1e307}', pm)


def test_huge_integer_is_an_error() -> None:
    with pytest.raises(PayloadError):
        decode_payload(b'{"Body": {"P": ' + b"9" * 5000 + b"}}", _pm())
    with pytest.raises(PayloadError, match="too large"):
        decode_payload(b'{"Body": {"P": ' + b"9" * 400 + b"}}", _pm())


@pytest.mark.parametrize(
    ("fmt", "value", "ns"),
    [
        ("epoch_s", 1714564800, 1714564800 * 10**9),
        ("epoch_s", 1714564800.25, 1714564800_250_000_000),
        ("epoch_s", "1714564800.5", 1714564800_500_000_000),
        ("epoch_ms", 1714564800123, 1714564800_123_000_000),
        ("iso8601", "2024-05-01T12:00:00.5Z", 1714564800_500_000_000),
        ("iso8601", "2024-05-01T14:00:00+02:00", 1714564800 * 10**9),
    ],
)
def test_meter_timestamps(fmt: str, value: Any, ns: int) -> None:
    pm = _pm(timestamp={"path": "Body.ts", "format": fmt})
    assert decode_payload(_body(P=1, ts=value), pm).meter_time_ns == ns


def test_absent_timestamp_is_none() -> None:
    pm = _pm(timestamp={"path": "Body.ts", "format": "epoch_s"})
    assert decode_payload(_body(P=1), pm).meter_time_ns is None


@pytest.mark.parametrize(
    ("fmt", "value", "expected"),
    [
        ("epoch_s", 1714564800123, 'looks like format = "epoch_ms"'),
        ("epoch_ms", 1714564800, 'looks like format = "epoch_s"'),
        ("epoch_ms", 1714564800123456, "microseconds"),
        ("epoch_s", 12, "not between 2000 and 2100"),
        ("epoch_s", True, "a boolean"),
        ("epoch_s", "soon", "expected a number"),
        ("iso8601", 1714564800, "expected ISO 8601 text"),
        ("iso8601", "2024-05-01T12:00:00", "no UTC offset"),
        ("iso8601", "yesterday", "not an ISO 8601 time"),
    ],
)
def test_bad_timestamps(fmt: str, value: Any, expected: str) -> None:
    pm = _pm(timestamp={"path": "Body.ts", "format": fmt})
    with pytest.raises(PayloadError) as err:
        decode_payload(_body(P=1, ts=value), pm)
    assert expected in str(err.value) and "timestamp (path Body.ts" in str(err.value)


# -- advice for connection failures (pure mapping) ---------------------------------------


def test_connect_error_advice() -> None:
    t = parse_mqtt_url("mqtts://u:secret@broker.example:8883/t")
    cases = [
        (socket.gaierror(-2, "Name or service not known"), "cannot resolve broker host 'broker.example'"),
        (ConnectionRefusedError(111, "Connection refused"), "nothing listens on port 8883"),
        (TimeoutError("timed out"), "no answer from broker broker.example:8883 within 5 s"),
        (ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number"), "check that this port speaks TLS"),
        (OSError(113, "No route to host"), "No route to host"),
    ]
    cert = ssl.SSLCertVerificationError(1, "certificate verify failed")
    cert.verify_message = "self-signed certificate"
    cases.append((cert, "set ca=/path/to/ca.pem"))
    for exc, expected in cases:
        err = mqtt._connect_error(t, exc, 5.0)
        assert expected in str(err), (exc, str(err))
        assert "secret" not in str(err)


@pytest.mark.parametrize(
    ("name", "user", "reason", "expected"),
    [
        ("Bad user name or password", "u", "bad-credentials", "check user:password in the meter URL"),
        ("Not authorized", None, "not-authorized", "does not accept anonymous clients"),
        ("Not authorized", "u", "not-authorized", "check the password in the meter URL"),
        ("Unsupported protocol version", None, "refused", "put ?version=3.1.1 in the meter URL"),
        ("Client identifier not valid", None, "refused", "23 characters"),
    ],
)
def test_connack_advice(name: str, user: str | None, reason: str, expected: str) -> None:
    login = f"{user}:pw@" if user else ""
    t = parse_mqtt_url(f"mqtt://{login}h/t?version=5")
    err = mqtt._connack_error(t, "gridtrace-gw-1234", ReasonCode(PacketTypes.CONNACK, name))
    assert err.reason == reason and expected in str(err) and name in str(err)


# -- against a real broker ----------------------------------------------------------------


class Recorder:
    """Collects what a subscriber hands out, and lets a test wait for it."""

    def __init__(self, reply: Callable[[str, int, Any], Awaitable[object] | None] | None = None) -> None:
        self.messages: list[tuple[str, int, DecodedMessage | PayloadError]] = []
        self.states: list[tuple[str, str | None]] = []
        self.reply = reply

    def on_message(self, meter_id: str, arrival_ns: int, result: DecodedMessage | PayloadError) -> Any:
        self.messages.append((meter_id, arrival_ns, result))
        return self.reply(meter_id, arrival_ns, result) if self.reply else None

    def on_state(self, meter_id: str, error: str | None) -> None:
        self.states.append((meter_id, error))

    def powers(self, meter_id: str | None = None) -> list[float]:
        return [
            r.values["power_total"]
            for m, _, r in self.messages
            if isinstance(r, DecodedMessage) and (meter_id is None or m == meter_id)
        ]

    def last_state(self, meter_id: str) -> str | None | bool:
        found: str | None | bool = False  # False: never reported
        for m, e in self.states:
            if m == meter_id:
                found = e
        return found


async def until(predicate: Callable[[], bool], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"waited {WAIT_S} s for {what}")
        await asyncio.sleep(0.01)


class Publisher:
    """A plain paho client standing in for a meter."""

    def __init__(self, broker: Mosquitto, version: str = "3.1.1", user: str | None = None, password: str | None = None) -> None:
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            protocol=MQTTProtocolVersion.MQTTv5 if version == "5" else MQTTProtocolVersion.MQTTv311,
        )
        if user:
            self.client.username_pw_set(user, password)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def send(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(WAIT_S)
        assert info.is_published()

    def power(self, topic: str, watts: float, qos: int = 1) -> None:
        self.send(topic, json.dumps({"Body": {"P": watts}}), qos)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _meters(broker: Mosquitto, *topics: str, version: str = "3.1.1", login: str = "") -> list[MqttMeter]:
    return [
        MqttMeter(f"m{i + 1}", parse_mqtt_url(f"mqtt://{login}{broker.address}/{t}?version={version}"), _pm())
        for i, t in enumerate(topics)
    ]


def _subscriber(meters: list[MqttMeter], gateway: str = "gw-test") -> MqttSubscriber:
    return MqttSubscriber(meters, client_id_for(gateway, meters[0].target), reconnect_min_s=0.05, reconnect_max_s=0.2)


@pytest.mark.parametrize("version", ["3.1.1", "5"])
def test_subscriber_routes_messages_per_meter(mosquitto: Mosquitto, version: str) -> None:
    async def main() -> None:
        pub = Publisher(mosquitto, version)
        # The broker replays a retained message to every new subscription: an old copy, ignored.
        pub.send("site/1", b"stale", retain=True)
        sub = _subscriber(_meters(mosquitto, "site/1", "site/2", version=version))
        rec = Recorder()
        stop = asyncio.Event()
        task = asyncio.create_task(sub.run(stop, rec.on_message, rec.on_state))
        await until(lambda: rec.last_state("m1") is None and rec.last_state("m2") is None, "subscriptions")
        pub.power("site/1", 100.0)
        pub.power("site/2", 200.0)
        pub.send("site/2", b'{"Body": {"P": "lots"}}')
        pub.power("site/3", 300.0)  # nobody's topic
        pub.power("site/1", 101.0, qos=0)
        await until(lambda: len(rec.messages) >= 4, "four messages")
        pub.close()
        stop.set()
        await task
        assert rec.powers("m1") == [100.0, 101.0]
        assert rec.powers("m2") == [200.0]
        errors = [(m, r) for m, _, r in rec.messages if isinstance(r, PayloadError)]
        assert len(errors) == 1 and errors[0][0] == "m2" and "the text 'lots'" in str(errors[0][1])
        assert all(isinstance(a, int) and a > 0 for _, a, _ in rec.messages)
        # our own disconnect at stop is not reported as an outage
        assert rec.states == [("m1", None), ("m2", None)]

    asyncio.run(main())


def test_reconnects_after_broker_restart(mosquitto: Mosquitto) -> None:
    async def main() -> None:
        sub = _subscriber(_meters(mosquitto, "site/1"))
        rec = Recorder()
        stop = asyncio.Event()
        task = asyncio.create_task(sub.run(stop, rec.on_message, rec.on_state))
        await until(lambda: rec.last_state("m1") is None, "subscription")
        mosquitto.stop()
        await until(lambda: isinstance(rec.last_state("m1"), str), "the outage to be reported")
        outage = rec.last_state("m1")
        assert isinstance(outage, str) and f"lost the connection to broker {mosquitto.address}" in outage
        # it keeps trying, and says why it cannot get back
        await until(lambda: "refused the TCP connection" in str(rec.last_state("m1")), "a failed reconnect")
        mosquitto.start()  # no persistence: the broker forgot the subscription
        await until(lambda: rec.last_state("m1") is None, "resubscription")
        pub = Publisher(mosquitto)
        pub.power("site/1", 42.0)
        await until(lambda: rec.powers() == [42.0], "a message after the restart")
        pub.close()
        stop.set()
        await task

    asyncio.run(main())


@pytest.mark.parametrize("version", ["3.1.1", "5"])
def test_messages_queued_while_away_arrive_after_reconnect(mosquitto: Mosquitto, version: str) -> None:
    async def session(rec: Recorder, until_done: Callable[[], bool]) -> None:
        sub = _subscriber(_meters(mosquitto, "site/1", version=version))
        stop = asyncio.Event()
        task = asyncio.create_task(sub.run(stop, rec.on_message, rec.on_state))
        await until(lambda: rec.last_state("m1") is None, "subscription")
        await until(until_done, "messages")
        stop.set()
        await task

    async def main() -> None:
        first = Recorder()
        await session(first, lambda: True)  # creates the persistent session, then leaves
        pub = Publisher(mosquitto, version)
        for watts in (1.0, 2.0, 3.0):
            pub.power("site/1", watts)  # the agent is away
        pub.power("site/1", 99.0, qos=0)  # QoS 0 is not queued for an absent client
        second = Recorder()
        await session(second, lambda: len(second.messages) >= 3)
        pub.power("site/1", 4.0)
        third = Recorder()
        await session(third, lambda: len(third.messages) >= 1)
        pub.close()
        assert second.powers() == [1.0, 2.0, 3.0]
        # acknowledged messages are not delivered again to the next session
        assert third.powers() == [4.0]

    asyncio.run(main())


def test_unstored_message_is_delivered_again_and_stored_one_once(mosquitto: Mosquitto) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        commits: list[asyncio.Future[None]] = []

        def reply(meter_id: str, arrival: int, result: Any) -> Awaitable[object] | None:
            if len(commits) < 2:
                commits.append(loop.create_future())  # the agent's durable write, still running
                return commits[-1]
            return None

        rec = Recorder(reply)
        sub = _subscriber(_meters(mosquitto, "site/1"))
        stop = asyncio.Event()
        task = asyncio.create_task(sub.run(stop, rec.on_message, rec.on_state))
        await until(lambda: rec.last_state("m1") is None, "subscription")
        pub = Publisher(mosquitto)
        pub.power("site/1", 1.0)
        pub.power("site/1", 2.0)
        await until(lambda: len(commits) == 2, "two messages")
        commits[0].set_exception(OSError("disk full"))  # storing message 1 failed
        # the subscriber reconnects; the broker delivers 1 again and 2 (not acknowledged yet)
        await until(lambda: rec.powers() == [1.0, 2.0, 1.0], "message 1 again")
        commits[1].set_result(None)  # message 2 is stored after all: its copy is not handed on
        pub.power("site/1", 3.0)
        await until(lambda: rec.powers() == [1.0, 2.0, 1.0, 3.0], "message 3")
        stop.set()
        await task

        # Everything was acknowledged: a new session of the same client gets only new messages.
        pub.power("site/1", 4.0)
        later = Recorder()
        sub = _subscriber(_meters(mosquitto, "site/1"))
        stop = asyncio.Event()
        task = asyncio.create_task(sub.run(stop, later.on_message, later.on_state))
        await until(lambda: len(later.messages) >= 1, "message 4")
        stop.set()
        await task
        pub.close()
        assert later.powers() == [4.0]

    asyncio.run(main())


def test_bad_credentials_and_good_ones(mosquitto_auth: Mosquitto) -> None:
    broker = mosquitto_auth
    pm = _pm()

    async def main() -> None:
        wrong = parse_mqtt_url(f"mqtt://{MOSQUITTO_USER}:not-it@{broker.address}/site/1")
        with pytest.raises(MqttUnreachableError) as err:
            await receive_one(wrong, pm, timeout=2)
        assert err.value.reason in ("bad-credentials", "not-authorized")
        assert "password" in str(err.value) and "not-it" not in str(err.value)
        assert broker.address in str(err.value)

        anonymous = parse_mqtt_url(f"mqtt://{broker.address}/site/1?version=5")
        with pytest.raises(MqttUnreachableError) as err:
            await receive_one(anonymous, pm, timeout=2)
        assert "anonymous" in str(err.value)

        # the subscriber keeps trying and says why it cannot get in
        rec = Recorder()
        sub = MqttSubscriber([MqttMeter("m1", wrong, pm)], "gw-x", reconnect_min_s=0.05, reconnect_max_s=0.1)
        stop = asyncio.Event()
        task = asyncio.create_task(sub.run(stop, rec.on_message, rec.on_state))
        await until(lambda: isinstance(rec.last_state("m1"), str), "the refusal")
        stop.set()
        await task
        assert "password" in str(rec.last_state("m1"))

        login = f"{_quote(MOSQUITTO_USER)}:{_quote(MOSQUITTO_PASSWORD)}@"
        right = parse_mqtt_url(f"mqtt://{login}{broker.address}/site/1")
        assert right.password == MOSQUITTO_PASSWORD
        pub = Publisher(broker, user=MOSQUITTO_USER, password=MOSQUITTO_PASSWORD)
        probe = asyncio.create_task(receive_one(right, pm, timeout=WAIT_S))
        while not probe.done():
            pub.power("site/1", 7.5)
            await asyncio.sleep(0.05)
        pub.close()
        assert probe.result().values == {"power_total": 7.5}

    asyncio.run(main())


def _quote(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")


def test_probe_errors(mosquitto: Mosquitto) -> None:
    pm = _pm()

    async def main() -> None:
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        closed.close()
        with pytest.raises(MqttUnreachableError) as err:
            await receive_one(parse_mqtt_url(f"mqtt://127.0.0.1:{port}/t"), pm, timeout=1)
        assert f"127.0.0.1:{port}" in str(err.value) and "check host and port" in str(err.value)

        with pytest.raises(MqttUnreachableError) as err:
            await receive_one(parse_mqtt_url(f"mqtts://{mosquitto.address}/t"), pm, timeout=1, connect_timeout_s=2)
        assert "TLS" in str(err.value)

        with socket.socket() as silent:  # accepts TCP connections, never speaks MQTT
            silent.bind(("127.0.0.1", 0))
            silent.listen()
            address = "127.0.0.1:%d" % silent.getsockname()[1]
            with pytest.raises(MqttUnreachableError) as err:
                await receive_one(parse_mqtt_url(f"mqtt://{address}/t"), pm, timeout=1, connect_timeout_s=0.3)
        assert f"broker {address} accepted the TCP connection but did not answer" in str(err.value)
        assert "mqtts://" in str(err.value)

        pub = Publisher(mosquitto)
        pub.send("site/old", json.dumps({"Body": {"P": 5}}), retain=True)
        with pytest.raises(MqttNoMessageError) as err:
            await receive_one(parse_mqtt_url(f"mqtt://{mosquitto.address}/site/old"), pm, timeout=0.3)
        assert "retained" in str(err.value) and "site/old" in str(err.value)
        assert isinstance(err.value, TimeoutError)

        raw = asyncio.create_task(receive_raw(parse_mqtt_url(f"mqtt://{mosquitto.address}/site/raw?version=5"), WAIT_S))
        while not raw.done():
            pub.send("site/raw", b"anything at all")
            await asyncio.sleep(0.05)
        assert raw.result() == ("site/raw", b"anything at all")

        probe = asyncio.create_task(receive_one(parse_mqtt_url(f"mqtt://{mosquitto.address}/site/bad"), pm, timeout=WAIT_S))
        while not probe.done():
            pub.send("site/bad", b"{not json")
            await asyncio.sleep(0.05)
        pub.close()
        with pytest.raises(PayloadError, match="not valid JSON"):
            probe.result()

    asyncio.run(main())


def test_a_failing_handler_does_not_stall_the_meter(mosquitto: Mosquitto, caplog: pytest.LogCaptureFixture) -> None:
    def reply(meter_id: str, arrival: int, result: Any) -> None:
        if isinstance(result, DecodedMessage) and result.values.get("power_total") == 1.0:
            raise RuntimeError("bug in the agent")

    async def run_until(rec: Recorder, count: int) -> None:
        sub = _subscriber(_meters(mosquitto, "site/1"))
        stop = asyncio.Event()
        task = asyncio.create_task(sub.run(stop, rec.on_message, rec.on_state))
        await until(lambda: rec.last_state("m1") is None, "subscription")
        await until(lambda: len(rec.messages) >= count, f"{count} messages")
        stop.set()
        await task

    async def main() -> None:
        await run_until(Recorder(), 0)  # the persistent session
        pub = Publisher(mosquitto)
        pub.power("site/1", 1.0)
        pub.power("site/1", 2.0)
        first = Recorder(reply)
        await run_until(first, 2)
        pub.power("site/1", 3.0)
        second = Recorder()
        await run_until(second, 1)
        pub.close()
        assert first.powers() == [1.0, 2.0]
        assert second.powers() == [3.0]  # the message the handler choked on is not replayed forever

    asyncio.run(main())
    assert "on_message failed; message of" in caplog.text and "dropped" in caplog.text
