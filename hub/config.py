"""The hub's one TOML config file: loading, validation, and the file `hub init` writes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gridtrace.tomlconfig import ConfigError, Section, read_toml

__all__ = ["ConfigError", "HubConfig", "load_hub_config", "render_hub_config"]


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
    verifier_processes: int = 1
    max_pending_mb: int = 256
    max_in_flight_per_stream: int = 16


def load_hub_config(path: Path) -> HubConfig:
    path = Path(path)
    doc = read_toml(path, {"hub", "server", "chain", "ingest"})
    hub = Section(path, "hub", doc.get("hub", {}), {"chain_id", "key", "database"})
    srv = Section(
        path, "server", doc.get("server", {}),
        {"listen", "tls_cert", "tls_key", "insecure_plaintext", "max_group_commit"},
    )
    chain = Section(path, "chain", doc.get("chain", {}), {"block_interval_s", "max_batches_per_block"})
    ingest = Section(
        path, "ingest", doc.get("ingest", {}), {"verifier_processes", "max_pending_mb", "max_in_flight_per_stream"}
    )
    verifiers = ingest.get("verifier_processes", int, 1)
    if verifiers < 0:
        raise ingest.fail("verifier_processes", f"must be 0 (check in the server process) or more, got {verifiers}")

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

    return HubConfig(
        path=path,
        chain_id=hub.identifier("chain_id"),
        key=hub.path_value("key", "hub.key"),
        database_url=database,
        listen=srv.get("listen", str, "127.0.0.1:7700"),
        tls_cert=tls_cert,
        tls_key=tls_key,
        insecure_plaintext=insecure,
        block_interval_s=chain.positive("block_interval_s", float, 2.0),
        max_batches_per_block=chain.positive("max_batches_per_block", int, 10_000),
        max_group_commit=srv.positive("max_group_commit", int, 256),
        verifier_processes=verifiers,
        max_pending_mb=ingest.positive("max_pending_mb", int, 256),
        max_in_flight_per_stream=ingest.positive("max_in_flight_per_stream", int, 16),
    )


def render_hub_config(chain_id: str, listen: str, insecure_plaintext: bool = False) -> str:
    return f"""# gridtrace hub configuration (docs/hub.md lists every setting).
# Relative paths are relative to this file.

[hub]
chain_id = "{chain_id}"        # the slave chain this hub seals; named in every block
key = "hub.key"                # Ed25519 signing key for blocks and receipts (mode 0600)
database = "hub.sqlite"        # a file path (SQLite) or an SQLAlchemy URL

[server]
listen = "{listen}"
tls_cert = "tls/hub.pem"       # server certificate chain (PEM)
tls_key = "tls/hub.key"        # its private key (mode 0600)
insecure_plaintext = {'true' if insecure_plaintext else 'false'}   # development only
max_group_commit = 256         # batches committed together in one transaction at most

[chain]
block_interval_s = 2.0         # seal stored batches into a block this often
max_batches_per_block = 10000
"""
