"""One replica's config file (replica.toml): who it is, where its peers are, its keys.

    [replica]
    id = 0
    listen = "127.0.0.1:7800"
    data = "replica-0"            # its journal lives here (relative to this file)
    signing_key = "keys/replica-0.key"
    base_timeout_s = 1.0
    checkpoint_interval = 10
    active = [0, 1, 2, 3]         # the first consensus replicas (the same in every replica's file);
                                  # the other [peers] are reserves. Default: all of them
    payload_copies = 2            # custody: replicas that store each batch's entries (at least f+1,
                                  # the same in every file); the others keep its header. Default 0: all

    [tls]                          # mutual TLS between replicas; insecure_plaintext only for development
    ca = "tls/ca.pem"
    cert = "tls/replica-0.pem"
    key = "tls/replica-0.key"

    [peers]                        # every replica, this one included: id = "address", key file
    0 = { address = "127.0.0.1:7800", public_key = "keys/replica-0.pub" }
    1 = { address = "127.0.0.1:7801", public_key = "keys/replica-1.pub" }

A bad setting names the file, line and key (gridtrace.tomlconfig).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gridtrace.tomlconfig import ConfigError, Section, read_toml
from protos.signing import PublicKey, Signer, load_public_key

SETTINGS = {
    "replica": {"id", "listen", "data", "signing_key", "base_timeout_s", "checkpoint_interval", "insecure_plaintext",
                "active", "payload_copies"},
    "tls": {"ca", "cert", "key"},
    "peers": None,  # keys are replica ids
}


@dataclass(frozen=True)
class Peer:
    id: int
    address: str
    public_key: PublicKey


@dataclass(frozen=True)
class ReplicaConfig:
    path: Path
    id: int
    listen: str
    data: Path
    signer: Signer
    peers: dict[int, Peer]
    base_timeout_s: float
    checkpoint_interval: int
    insecure_plaintext: bool
    tls_ca: Path | None
    tls_cert: Path | None
    tls_key: Path | None
    active: tuple[int, ...] = ()  # the first consensus replicas; () = every peer
    payload_copies: int = 0  # custody (hub.consensus.config.ConsensusConfig); 0: every replica stores every batch

    @property
    def n(self) -> int:
        return len(self.peers)


def load_replica_config(path: Path) -> ReplicaConfig:
    path = Path(path)
    doc = read_toml(path, set(SETTINGS))
    rep = Section(path, "replica", doc.get("replica", {}), SETTINGS["replica"])
    tls = Section(path, "tls", doc.get("tls", {}), SETTINGS["tls"])
    peers_table = doc.get("peers", {})
    if not isinstance(peers_table, dict) or not peers_table:
        raise ConfigError(f"{path}: [peers] must list every replica, this one included")
    peers_sec = Section(path, "peers", peers_table, set(peers_table))
    peers: dict[int, Peer] = {}
    for key, value in peers_table.items():
        if not key.isdigit() or not isinstance(value, dict) or set(value) != {"address", "public_key"}:
            raise peers_sec.fail(key, 'each peer is `ID = { address = "host:port", public_key = "file" }`')
        pub_path = Path(value["public_key"])
        pub_path = pub_path if pub_path.is_absolute() else path.parent / pub_path
        try:
            public_key = load_public_key(pub_path)
        except (OSError, ValueError) as exc:
            raise peers_sec.fail(key, f"public_key {pub_path}: {exc}") from exc
        peers[int(key)] = Peer(int(key), value["address"], public_key)
    if sorted(peers) != list(range(len(peers))):
        raise peers_sec.fail(next(iter(peers_table)), f"replica ids must be 0..{len(peers) - 1}, got {sorted(peers)}")
    me = rep.get("id", int)
    if me not in peers:
        raise rep.fail("id", f"{me} is not among [peers] {sorted(peers)}")
    key_path = rep.path_value("signing_key")
    try:
        signer = Signer.from_file(key_path)
    except (OSError, ValueError) as exc:
        raise rep.fail("signing_key", f"{key_path}: {exc}") from exc
    if signer.public_key.key_id != peers[me].public_key.key_id:
        raise rep.fail("signing_key", f"does not match [peers] {me} public_key")
    active = rep.get("active", list, [])
    if active and (not all(isinstance(a, int) and a in peers for a in active) or len(set(active)) != len(active)):
        raise rep.fail("active", f"must list distinct replica ids among [peers] {sorted(peers)}, got {active}")
    if active and len(active) < 1:
        raise rep.fail("active", "needs at least one replica")
    copies = rep.get("payload_copies", int, 0)
    f = (len(active or peers) - 1) // 3
    if copies and not f + 1 <= copies <= len(peers):
        raise rep.fail("payload_copies", f"must be 0 (every replica stores every batch) or from f+1 = {f + 1} to "
                                         f"{len(peers)}, got {copies}")
    insecure = rep.get("insecure_plaintext", bool, False)
    paths = {k: tls.path_value(k, None) for k in ("ca", "cert", "key")}
    if not insecure:
        for k, p in paths.items():
            if p is None or not p.exists():
                raise tls.fail(k, f"{p} does not exist; replicas use mutual TLS unless [replica] insecure_plaintext = true")
    return ReplicaConfig(
        path=path, id=me, listen=rep.get("listen", str), data=rep.path_value("data", f"replica-{me}"),
        signer=signer, peers=peers,
        base_timeout_s=rep.positive("base_timeout_s", float, 1.0),
        checkpoint_interval=rep.positive("checkpoint_interval", int, 10),
        insecure_plaintext=insecure, tls_ca=paths["ca"], tls_cert=paths["cert"], tls_key=paths["key"],
        active=tuple(sorted(active)), payload_copies=copies,
    )
