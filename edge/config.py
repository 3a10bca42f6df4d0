"""The agent's one TOML config file: loading, validation, and the file `edge init` writes.

Every error names the file and the key that is wrong, so a field engineer can
fix it without reading code. Relative paths are relative to the config file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.registermap import RegisterMap, RegisterMapError, load_register_map, load_register_map_file
from edge.sources import parse_source_url
from edge.sources.modbus import MeterConfigError
from gridtrace.tomlconfig import ConfigError, Section, read_toml

__all__ = ["AgentConfig", "BatchingConfig", "ConfigError", "MeterConfig", "UplinkConfig",
           "load_agent_config", "render_agent_config"]


# `register_map = "sunspec"`: the map is discovered from the meter's SunSpec models.
SUNSPEC = "sunspec"
DEFAULT_MAX_BLOCK = 64
DEFAULT_QUEUE_MAX_MB = 1024


@dataclass(frozen=True)
class MeterConfig:
    """One [[meters]] entry, checked: its source URL parsed, its map or payload map loaded."""

    id: str
    source: str
    interval_s: float
    target: Any  # ModbusTcpTarget | ModbusRtuTarget | MqttTarget (edge.sources)
    register_map: str | None = None  # Modbus: as configured, a built-in name, "sunspec" or a .toml path
    regmap: RegisterMap | None = None  # Modbus: None until discovered for SunSpec
    max_block: int = DEFAULT_MAX_BLOCK  # Modbus: most registers per read request
    payload: Any = None  # MQTT: edge.sources.mqtt.PayloadMap

    @property
    def protocol(self) -> str:
        """"modbus" or "mqtt"."""
        return "mqtt" if self.payload is not None else "modbus"


@dataclass(frozen=True)
class PollingConfig:
    timeout_s: float
    retries: int


def resolve_register_map(value: str, base: Path) -> RegisterMap:
    """A built-in map by name, or a map file of the engineer's own (path ending in .toml,
    relative to the config file)."""
    if value.endswith(".toml"):
        path = Path(value)
        return load_register_map_file(path if path.is_absolute() else base / path)
    return load_register_map(value)


@dataclass(frozen=True)
class UplinkConfig:
    hub: str  # the first of `hubs`
    tls_ca: Path | None
    tls_server_name: str | None
    hub_public_key: Path  # the first of `hub_public_keys`
    insecure_plaintext: bool
    max_in_flight: int
    reconnect_max_s: float
    hubs: tuple[str, ...] = ()  # in the order tried; () means (hub,)
    hub_public_keys: tuple[Path, ...] = ()  # a receipt must verify against one; () means (hub_public_key,)

    def __post_init__(self) -> None:
        # Callers that know one hub give only `hub`; everything else reads `hubs`.
        if not self.hubs:
            object.__setattr__(self, "hubs", (self.hub,))
        if not self.hub_public_keys:
            object.__setattr__(self, "hub_public_keys", (self.hub_public_key,))


@dataclass(frozen=True)
class BatchingConfig:
    max_entries: int
    max_age_s: float
    gap_report_s: float


@dataclass(frozen=True)
class AgentConfig:
    path: Path
    gateway_id: str
    key: Path
    queue: Path
    uplink: UplinkConfig
    batching: BatchingConfig
    meters: tuple[MeterConfig, ...]
    polling: PollingConfig = PollingConfig(timeout_s=1.0, retries=0)
    queue_max_bytes: int = DEFAULT_QUEUE_MAX_MB * 2**20  # [queue] max_mb


def load_agent_config(path: Path) -> AgentConfig:
    path = Path(path)
    doc = read_toml(path, {"gateway", "uplink", "batching", "meters", "polling", "queue"})
    gw = Section(path, "gateway", doc.get("gateway", {}), {"id", "key", "queue"})
    uplink = parse_uplink(path, doc)
    bt = Section(path, "batching", doc.get("batching", {}), {"max_entries", "max_age_s", "gap_report_s"})
    qu = Section(path, "queue", doc.get("queue", {}), {"max_mb"})
    queue_max_mb = qu.positive("max_mb", float, float(DEFAULT_QUEUE_MAX_MB))
    if queue_max_mb < 1:
        raise qu.fail("max_mb", f"is {queue_max_mb}; allow the queue at least 1 MB")
    batching = BatchingConfig(
        max_entries=bt.positive("max_entries", int, 500),
        max_age_s=bt.positive("max_age_s", float, 2.0),
        gap_report_s=bt.positive("gap_report_s", float, 60.0),
    )

    pl = Section(path, "polling", doc.get("polling", {}), {"timeout_s", "retries"})
    polling = PollingConfig(
        timeout_s=pl.positive("timeout_s", float, 1.0),
        retries=pl.get("retries", int, 0),
    )
    if polling.retries < 0:
        raise pl.fail("retries", f"must be 0 or more, got {polling.retries}")

    meters_raw = doc.get("meters", [])
    if not isinstance(meters_raw, list) or not meters_raw:
        raise ConfigError(f"{path}: no [[meters]] configured; add at least one")
    meters = []
    seen: set[str] = set()
    for i, raw in enumerate(meters_raw):
        meter = _parse_meter(Section(path, f"meters #{i + 1}", raw, _METER_KEYS), path.parent)
        if meter.id in seen:
            raise Section(path, f"meters #{i + 1}", raw, _METER_KEYS).fail(
                "id", f"{meter.id!r} is configured twice"
            )
        seen.add(meter.id)
        meters.append(meter)
    _check_buses(path, meters)

    return AgentConfig(
        path=path,
        gateway_id=gw.identifier("id"),
        key=gw.path_value("key", "gateway.key"),
        queue=gw.path_value("queue", "queue.sqlite"),
        uplink=uplink,
        batching=batching,
        meters=tuple(meters),
        polling=polling,
        queue_max_bytes=int(queue_max_mb * 2**20),
    )


def parse_uplink(path: Path, doc: dict) -> UplinkConfig:
    """The [uplink] table of an agent's (or a contract runner's) TOML file: where batches go."""
    up = Section(
        path,
        "uplink",
        doc.get("uplink", {}),
        {"hub", "hubs", "tls_ca", "tls_server_name", "hub_public_key", "hub_public_keys", "insecure_plaintext",
         "max_in_flight", "reconnect_max_s"},
    )
    insecure = up.get("insecure_plaintext", bool, False)
    tls_ca = up.path_value("tls_ca", None)
    if not insecure and tls_ca is None:
        raise up.fail("tls_ca", "missing: TLS is on unless insecure_plaintext = true (development only)")

    hubs = _hub_addresses(up)
    hub_keys = _hub_keys(up)
    return UplinkConfig(
        hub=hubs[0],
        tls_ca=tls_ca,
        tls_server_name=up.get("tls_server_name", str, "") or None,
        hub_public_key=hub_keys[0],
        insecure_plaintext=insecure,
        max_in_flight=up.positive("max_in_flight", int, 8),
        reconnect_max_s=up.positive("reconnect_max_s", float, 30.0),
        hubs=hubs,
        hub_public_keys=hub_keys,
    )


def _hub_addresses(up: Section) -> tuple[str, ...]:
    """`hub = "host:port"`, or `hubs = [...]` tried in order for failover."""
    if "hub" in up.table and "hubs" in up.table:
        raise up.fail("hubs", "give either hub or hubs, not both")
    key = "hubs" if "hubs" in up.table else "hub"
    if key == "hub" and "hub" not in up.table:
        raise up.fail("hub", 'missing: give hub = "host:port", or hubs = ["host:port", ...] for failover')
    raw = up.table[key]
    values = raw if key == "hubs" else [up.get("hub", str)]
    if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values):
        raise up.fail(key, f'must be a list of "host:port" strings, got {raw!r}')
    for value in values:
        host, _, port = value.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise up.fail(key, f'{value!r} is not "host:port" (e.g. "hub7.example.net:7700")')
    if len(set(values)) != len(values):
        raise up.fail(key, "names a hub twice")
    return tuple(values)


def _hub_keys(up: Section) -> tuple[Path, ...]:
    """`hub_public_key` and/or `hub_public_keys`: a receipt is good if any of them verifies it
    (hubs that do not share a key, or a key being rotated)."""
    keys = []
    if "hub_public_key" in up.table:
        keys.append(up.path_value("hub_public_key"))
    raw = up.table.get("hub_public_keys", [])
    if not isinstance(raw, list) or not all(isinstance(k, str) and k for k in raw):
        raise up.fail("hub_public_keys", f"must be a list of key file paths, got {raw!r}")
    keys += [Path(k) if Path(k).is_absolute() else up.path.parent / k for k in raw]
    if not keys:
        raise up.fail("hub_public_key", "missing: receipts are checked against the hub's public key")
    return tuple(dict.fromkeys(keys))


_METER_KEYS = {"id", "source", "register_map", "interval_s", "max_block", "fields", "timestamp"}
_MODBUS_ONLY = ("register_map", "max_block")
_MQTT_ONLY = ("fields", "timestamp")


def _parse_meter(m: Section, base: Path) -> MeterConfig:
    """One [[meters]] entry. Everything the poller will need is checked now, so a typo is
    named at load time with its file, line and meter, not as a failure of a running agent."""
    meter_id = m.identifier("id")
    source = m.get("source", str)
    try:
        target = parse_source_url(source)
    except ValueError as exc:  # MeterConfigError, MqttConfigError
        raise m.fail("source", str(exc)) from exc
    interval_s = m.positive("interval_s", float, 1.0)
    if source.split(":", 1)[0].lower() in ("mqtt", "mqtts"):
        for key in _MODBUS_ONLY:
            if key in m.table:
                raise m.fail(key, "is a Modbus setting; an MQTT meter is described by [meters.fields]")
        from edge.sources.mqtt import PayloadMapError, parse_payload_map

        table = {k: m.table[k] for k in _MQTT_ONLY if k in m.table}
        if "fields" not in table:
            raise m.fail("fields", "missing: an MQTT meter needs [meters.fields], a JSON path per quantity")
        try:
            payload = parse_payload_map(table, f"[{m.name}]")
        except PayloadMapError as exc:
            raise m.fail(exc.key, exc.problem) from exc
        return MeterConfig(meter_id, source, interval_s, target, payload=payload)
    for key in _MQTT_ONLY:
        if key in m.table:
            raise m.fail(key, "is an MQTT setting; a Modbus meter is described by register_map")
    register_map = m.get("register_map", str, "eastron_sdm630")
    max_block = m.get("max_block", int, DEFAULT_MAX_BLOCK)
    if not 1 <= max_block <= 125:
        raise m.fail("max_block", f"is {max_block}; a Modbus read asks for 1..125 registers")
    regmap = None
    if register_map != SUNSPEC:
        try:
            regmap = resolve_register_map(register_map, base)
        except RegisterMapError as exc:
            raise m.fail("register_map", str(exc)) from exc
        widest = max(r.width for r in regmap.registers)
        if max_block < widest:
            raise m.fail("max_block", f"is {max_block}, smaller than the widest register ({widest}) of {regmap.name}")
    return MeterConfig(
        meter_id, source, interval_s, target,
        register_map=register_map, regmap=regmap, max_block=max_block,
    )


def _check_buses(path: Path, meters: list[MeterConfig]) -> None:
    """Meters that share a connection must not contradict each other about it."""
    from edge.sources.modbus import group_by_bus

    modbus = [(m.id, m.target) for m in meters if m.protocol == "modbus"]
    try:
        group_by_bus(modbus)
    except MeterConfigError as exc:
        raise ConfigError(f"{path}: [[meters]]: {exc}") from exc


def render_agent_config(
    gateway_id: str,
    hub: str | Sequence[str],
    meters: list[tuple[str, str]],
    tls_ca: str = "hub-ca.pem",
    hub_public_key: str = "hub.pub.pem",
    insecure_plaintext: bool = False,
    register_map: str = "eastron_sdm630",
    interval_s: float = 1.0,
) -> str:
    """The config `edge init` writes: every setting present, with a comment."""
    lines = [
        "# gridtrace edge agent configuration (docs/agent.md lists every setting).",
        "# Relative paths are relative to this file.",
        "",
        "[gateway]",
        f'id = "{gateway_id}"',
        'key = "gateway.key"          # Ed25519 private key, created with mode 0600',
        'queue = "queue.sqlite"       # durable local queue; never delete while batches are unreceipted',
        "",
        "[uplink]",
        f'hub = "{hub}"' if isinstance(hub, str) else "hubs = [" + ", ".join(f'"{h}"' for h in hub) + "]",
        '# hubs = ["hub7.example.net:7700", "hub8.example.net:7700"]  # instead of hub: tried in order',
        f'tls_ca = "{tls_ca}"            # CA certificate that signed the hub\'s TLS certificate',
        'tls_server_name = ""         # name to expect in the hub certificate, if not the host in `hub`',
        f'hub_public_key = "{hub_public_key}"  # the hub\'s signing key: receipts must verify against it',
        f"insecure_plaintext = {'true' if insecure_plaintext else 'false'}  # development only",
        "max_in_flight = 8            # batches sent before waiting for receipts",
        "reconnect_max_s = 30.0       # longest wait between reconnect attempts",
        "",
        "[batching]",
        "max_entries = 500            # readings per signed batch",
        "max_age_s = 2.0              # seal a batch at least this often",
        "gap_report_s = 60.0          # report an ongoing meter outage at least this often",
        "",
        "[queue]",
        f"max_mb = {DEFAULT_QUEUE_MAX_MB}                # disk limit; when reached, new readings are recorded as gaps",
    ]
    for meter_id, source in meters:
        lines += [
            "",
            "[[meters]]",
            f'id = "{meter_id}"',
            f'source = "{source}"',
            f'register_map = "{register_map}"',
            f"interval_s = {interval_s}",
        ]
    return "\n".join(lines) + "\n"
