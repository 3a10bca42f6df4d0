"""The hub's one TOML config file: loading, validation, and the file `hub init` writes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gridtrace.tomlconfig import ConfigError, Section, read_toml

__all__ = ["ConfigError", "HubConfig", "SETTINGS", "load_hub_config", "render_hub_config", "client_address"]

# Every table and key the loader accepts; docs/hub.md documents exactly these (a test compares).
SETTINGS: dict[str, frozenset[str]] = {
    "hub": frozenset({"chain_id", "key", "database"}),
    "server": frozenset({
        "listen", "tls_cert", "tls_key", "tls_ca", "insecure_plaintext", "max_group_commit",
        "health_interval_s",
    }),
    "chain": frozenset({"block_interval_s", "max_batches_per_block"}),
    "ingest": frozenset({"verifier_processes", "max_pending_mb", "max_in_flight_per_stream"}),
    "metrics": frozenset({"listen"}),
    "logging": frozenset({"format", "level"}),
    "peers": frozenset({"replicas"}),
    "consensus": frozenset({"replica"}),
}

LOG_FORMATS = ("auto", "json", "text")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@dataclass(frozen=True)
class HubConfig:
    path: Path
    chain_id: str
    key: Path
    database_url: str
    listen: str
    tls_cert: Path | None
    tls_key: Path | None
    insecure_plaintext: bool
    block_interval_s: float
    max_batches_per_block: int
    max_group_commit: int
    tls_ca: Path | None = None
    health_interval_s: float = 5.0
    metrics_listen: str = ""
    log_format: str = "auto"
    log_level: str = "INFO"
    replicas: tuple[str, ...] = ()
    verifier_processes: int = 1
    max_pending_mb: int = 256
    max_in_flight_per_stream: int = 16
    # A replica of a substation's PBFT replicas: its replica.toml (hub/consensus/replica_config.py).
    # None: a single hub, sealing blocks on its own timer.
    consensus_replica: Path | None = None


def _host_port(sec: Section, key: str, value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise sec.fail(key, f"must be host:port (e.g. 127.0.0.1:9464), got {value!r}")
    return value


def load_hub_config(path: Path) -> HubConfig:
    path = Path(path)
    doc = read_toml(path, set(SETTINGS))
    sec = {name: Section(path, name, doc.get(name, {}), set(keys)) for name, keys in SETTINGS.items()}
    hub, srv, chain = sec["hub"], sec["server"], sec["chain"]

    database = hub.get("database", str, "hub.sqlite")
    if "://" not in database:
        db_path = Path(database)
        if not db_path.is_absolute():
            db_path = path.parent / db_path
        database = f"sqlite:///{db_path.resolve()}"

    insecure = srv.get("insecure_plaintext", bool, False)
    tls_cert = srv.path_value("tls_cert", "tls/hub.pem")
    tls_key = srv.path_value("tls_key", "tls/hub.key")
    if not insecure:
        for key, p in (("tls_cert", tls_cert), ("tls_key", tls_key)):
            if p is None or not p.exists():
                raise srv.fail(key, f"{p} does not exist; TLS is on unless insecure_plaintext = true")

    metrics_listen = sec["metrics"].get("listen", str, "127.0.0.1:9464")
    if metrics_listen:
        _host_port(sec["metrics"], "listen", metrics_listen)

    log = sec["logging"]
    log_format = log.get("format", str, "auto")
    if log_format not in LOG_FORMATS:
        raise log.fail("format", f"must be one of {', '.join(LOG_FORMATS)}, got {log_format!r}")
    log_level = log.get("level", str, "INFO").upper()
    if log_level not in LOG_LEVELS:
        raise log.fail("level", f"must be one of {', '.join(LOG_LEVELS)}, got {log_level!r}")

    ingest = sec["ingest"]
    verifiers = ingest.get("verifier_processes", int, 1)
    if verifiers < 0:
        raise ingest.fail("verifier_processes", f"must be 0 (check in the server process) or more, got {verifiers}")

    peers = sec["peers"]
    replicas = peers.get("replicas", list, [])
    for r in replicas:
        if not isinstance(r, str):
            raise peers.fail("replicas", f"must be a list of host:port strings, got {r!r}")
        _host_port(peers, "replicas", r)

    consensus = sec["consensus"]
    replica = consensus.path_value("replica", None)
    if replica is not None and not replica.exists():
        raise consensus.fail("replica", f"{replica} does not exist (gridtrace chain init writes one per replica)")

    return HubConfig(
        path=path,
        chain_id=hub.identifier("chain_id"),
        key=hub.path_value("key", "hub.key"),
        database_url=database,
        listen=_host_port(srv, "listen", srv.get("listen", str, "127.0.0.1:7700")),
        tls_cert=tls_cert,
        tls_key=tls_key,
        insecure_plaintext=insecure,
        block_interval_s=chain.positive("block_interval_s", float, 2.0),
        max_batches_per_block=chain.positive("max_batches_per_block", int, 10_000),
        max_group_commit=srv.positive("max_group_commit", int, 256),
        tls_ca=srv.path_value("tls_ca", "tls/ca.pem"),
        health_interval_s=srv.positive("health_interval_s", float, 5.0),
        metrics_listen=metrics_listen,
        log_format=log_format,
        log_level=log_level,
        replicas=tuple(replicas),
        verifier_processes=verifiers,
        max_pending_mb=ingest.positive("max_pending_mb", int, 256),
        max_in_flight_per_stream=ingest.positive("max_in_flight_per_stream", int, 16),
        consensus_replica=replica,
    )


def client_address(listen: str) -> str:
    """Where a client on this machine reaches a server listening on `listen`."""
    host, _, port = listen.rpartition(":")
    if host in ("0.0.0.0", "", "*"):
        return f"127.0.0.1:{port}"
    if host in ("[::]", "::"):
        return f"[::1]:{port}"
    return listen


def redact_url(url: str) -> str:
    """A database URL without its password, for logs and status output."""
    scheme, sep, rest = url.partition("://")
    creds, at, hostpart = rest.rpartition("@")
    if not sep or not at or ":" not in creds:
        return url
    return f"{scheme}://{creds.split(':', 1)[0]}:***@{hostpart}"


def render_hub_config(
    chain_id: str, listen: str, insecure_plaintext: bool = False, metrics_listen: str = "127.0.0.1:9464",
    tls: tuple[str, str, str] = ("tls/hub.pem", "tls/hub.key", "tls/ca.pem"),
) -> str:
    return f"""# gridtrace hub configuration (docs/hub.md lists every setting).
# Relative paths are relative to this file.

[hub]
chain_id = "{chain_id}"        # the slave chain this hub seals; named in every block
key = "hub.key"                # Ed25519 signing key for blocks and receipts (mode 0600)
database = "hub.sqlite"        # a file path (SQLite) or an SQLAlchemy URL

[server]
listen = "{listen}"
tls_cert = "{tls[0]}"       # server certificate chain (PEM)
tls_key = "{tls[1]}"        # its private key (mode 0600)
tls_ca = "{tls[2]}"          # CA that operator commands (status, health) check the hub with
insecure_plaintext = {'true' if insecure_plaintext else 'false'}   # development only
max_group_commit = 256         # batches committed together in one transaction at most

[chain]
block_interval_s = 2.0         # seal stored batches into a block this often
max_batches_per_block = 10000

[metrics]
listen = "{metrics_listen}"      # Prometheus /metrics (plain HTTP: keep it on loopback or a management net); "" = off

[logging]
format = "auto"                # "json" (one object per line), "text", or "auto" (json unless a terminal)
level = "INFO"
"""
