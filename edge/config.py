"""The agent's one TOML config file: loading, validation, and the file `edge init` writes.

Every error names the file and the key that is wrong, so a field engineer can
fix it without reading code. Relative paths are relative to the config file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edge.registermap import RegisterMap, RegisterMapError, load_register_map, load_register_map_file
from edge.sources.modbus import MeterConfigError, parse_meter_url
from gridtrace.tomlconfig import ConfigError, Section, read_toml

__all__ = ["AgentConfig", "BatchingConfig", "ConfigError", "MeterConfig", "UplinkConfig",
           "load_agent_config", "render_agent_config"]


@dataclass(frozen=True)
class MeterConfig:
    id: str
    source: str
    register_map: str  # as configured: a built-in name or a .toml path
    interval_s: float
    regmap: RegisterMap


def resolve_register_map(value: str, base: Path) -> RegisterMap:
    """A built-in map by name, or a map file of the engineer's own (path ending in .toml,
    relative to the config file)."""
    if value.endswith(".toml"):
        path = Path(value)
        return load_register_map_file(path if path.is_absolute() else base / path)
    return load_register_map(value)


@dataclass(frozen=True)
class UplinkConfig:
    hub: str
    tls_ca: Path | None
    tls_server_name: str | None
    hub_public_key: Path
    insecure_plaintext: bool
    max_in_flight: int
    reconnect_max_s: float


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


def load_agent_config(path: Path) -> AgentConfig:
    path = Path(path)
    doc = read_toml(path, {"gateway", "uplink", "batching", "meters"})
    gw = Section(path, "gateway", doc.get("gateway", {}), {"id", "key", "queue"})
    up = Section(
        path,
        "uplink",
        doc.get("uplink", {}),
        {"hub", "tls_ca", "tls_server_name", "hub_public_key", "insecure_plaintext",
         "max_in_flight", "reconnect_max_s"},
    )
    bt = Section(path, "batching", doc.get("batching", {}), {"max_entries", "max_age_s", "gap_report_s"})

    insecure = up.get("insecure_plaintext", bool, False)
    tls_ca = up.path_value("tls_ca", None)
    if not insecure and tls_ca is None:
        raise up.fail("tls_ca", "missing: TLS is on unless insecure_plaintext = true (development only)")

    uplink = UplinkConfig(
        hub=up.get("hub", str),
        tls_ca=tls_ca,
        tls_server_name=up.get("tls_server_name", str, "") or None,
        hub_public_key=up.path_value("hub_public_key"),
        insecure_plaintext=insecure,
        max_in_flight=up.positive("max_in_flight", int, 8),
        reconnect_max_s=up.positive("reconnect_max_s", float, 30.0),
    )
    batching = BatchingConfig(
        max_entries=bt.positive("max_entries", int, 500),
        max_age_s=bt.positive("max_age_s", float, 2.0),
        gap_report_s=bt.positive("gap_report_s", float, 60.0),
    )

    meters_raw = doc.get("meters", [])
    if not isinstance(meters_raw, list) or not meters_raw:
        raise ConfigError(f"{path}: no [[meters]] configured; add at least one")
    meters = []
    seen: set[str] = set()
    for i, raw in enumerate(meters_raw):
        m = Section(path, f"meters #{i + 1}", raw, {"id", "source", "register_map", "interval_s"})
        meter_id = m.identifier("id")
        if meter_id in seen:
            raise m.fail("id", f"{meter_id!r} is configured twice")
        seen.add(meter_id)
        source = m.get("source", str)
        register_map = m.get("register_map", str, "eastron_sdm630")
        # Check what the poller will need now, so a typo is named at load time
        # with its file and meter, not as a failure of a running agent.
        try:
            parse_meter_url(source)
        except MeterConfigError as exc:
            raise m.fail("source", str(exc)) from exc
        try:
            regmap = resolve_register_map(register_map, path.parent)
        except RegisterMapError as exc:
            raise m.fail("register_map", str(exc)) from exc
        meters.append(
            MeterConfig(
                id=meter_id,
                source=source,
                register_map=register_map,
                interval_s=m.positive("interval_s", float, 1.0),
                regmap=regmap,
            )
        )

    return AgentConfig(
        path=path,
        gateway_id=gw.identifier("id"),
        key=gw.path_value("key", "gateway.key"),
        queue=gw.path_value("queue", "queue.sqlite"),
        uplink=uplink,
        batching=batching,
        meters=tuple(meters),
    )


def render_agent_config(
    gateway_id: str,
    hub: str,
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
        f'hub = "{hub}"',
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
