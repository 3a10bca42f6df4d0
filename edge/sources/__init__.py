"""Meter sources: the I/O shells that fetch raw values from meters (Modbus TCP today).

Each source turns a transport's failures into `MeterReadError`s that say what a field
engineer should check; decoding stays in the pure register map code.
"""


# TEMPORARY shim by the lead so edge.config imports while the RTU helper builds the real
# dispatch here (replace freely).
def parse_source_url(url: str):  # noqa: ANN201
    scheme = url.split(":", 1)[0].lower() if isinstance(url, str) else ""
    if scheme in ("mqtt", "mqtts"):
        from edge.sources.mqtt import parse_mqtt_url

        return parse_mqtt_url(url)
    from edge.sources.modbus import parse_meter_url

    return parse_meter_url(url)
