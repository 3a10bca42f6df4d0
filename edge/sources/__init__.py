"""Meter sources: the I/O shells that fetch raw values from meters.

Modbus TCP and Modbus RTU meters are polled (`edge.sources.modbus`); MQTT meters publish
(`edge.sources.mqtt`). Meter URLs are parsed by pure modules (`modbus_url`, `mqtt_url`) and
JSON payloads decoded by `jsonpayload`. Each source turns a transport's failures into errors
that say what a field engineer should check.

`parse_source_url` reads any meter URL. The MQTT module is imported only for MQTT URLs, so
an agent with Modbus meters only never loads the MQTT client library.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from edge.sources.modbus import MeterConfigError, ModbusTarget, parse_meter_url

if TYPE_CHECKING:
    from edge.sources.mqtt_url import MqttTarget

__all__ = ["SCHEMES", "parse_source_url"]

# scheme -> an example, for messages that list what is supported
SCHEMES: dict[str, str] = {
    "modbus-tcp": "modbus-tcp://192.168.1.50:502?unit=1",
    "modbus-rtu": "modbus-rtu:///dev/ttyUSB0?unit=1&baud=9600&parity=N&stopbits=1",
    "mqtt": "mqtt://broker.local:1883/meters/house-7?version=5&qos=1",
    "mqtts": "mqtts://user:secret@broker.example:8883/meters/house-7",
}


def parse_source_url(url: str) -> ModbusTarget | MqttTarget:
    """The target a meter URL names: a `ModbusTcpTarget` or `ModbusRtuTarget` for
    ``modbus-tcp://`` and ``modbus-rtu://``, an `MqttTarget` for ``mqtt://`` and ``mqtts://``.

    Raises MeterConfigError (MqttConfigError for a bad MQTT URL; both are ValueErrors)
    naming the URL and what is expected.
    """
    scheme = urlsplit(url.strip()).scheme.lower() if isinstance(url, str) and "://" in url else ""
    if scheme in ("modbus-tcp", "modbus-rtu"):
        return parse_meter_url(url)
    if scheme in ("mqtt", "mqtts"):
        from edge.sources.mqtt_url import parse_mqtt_url

        return parse_mqtt_url(url)
    supported = "; ".join(f"{name}:// (e.g. {example})" for name, example in SCHEMES.items())
    if not scheme:
        raise MeterConfigError(f"meter URL {url!r}: not a meter URL; expected one of {supported}")
    raise MeterConfigError(
        f"meter URL {url!r}: unsupported scheme {scheme!r}; expected one of {supported}"
    )
