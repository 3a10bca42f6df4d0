"""The trust file: the public keys a verifier trusts, and nothing else.

    {
      "format": "gridtrace/trust/v1",
      "gateways": {"<gateway id>": [{"key_id": "...", "public_key": "<PEM>"}]},
      "chains": {"<chain id>": {"quorum": 1,
                                "replicas": [{"id": "...", "key_id": "...", "public_key": "<PEM>"}]}},
      "contracts": {"carbon-flow/1": ["<gateway id of a runner>"]}
    }

`contracts` (optional) names, per contract, the gateways whose signed contract records a
verifier believes: a meter's own gateway can sign bytes shaped like a carbon result, and
only a runner the trust file names makes them one.

A chain's blocks count as committed when seals of at least `quorum` distinct
replica keys verify (1 for a single hub, 2f+1 for PBFT replicas). Every key id
is checked against its key when the file is loaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from hub.certificates.document import DocumentError, load_json
from protos.signing import (
    KeyFileError,
    PublicKey,
    key_id,
    parse_public_key_pem,
    public_key_pem,
)

TRUST_FORMAT = "gridtrace/trust/v1"


class TrustError(ValueError):
    """A trust file that cannot be used; the message names the entry."""


@dataclass(frozen=True)
class ChainTrust:
    quorum: int
    replicas: dict[str, PublicKey]  # key id -> key


@dataclass(frozen=True)
class Trust:
    gateways: dict[str, dict[str, PublicKey]]  # gateway id -> key id -> key
    chains: dict[str, ChainTrust]
    contracts: dict[str, tuple[str, ...]] = field(default_factory=dict)  # contract -> runner gateway ids


def _key(entry: object, where: str) -> tuple[str, PublicKey]:
    if not isinstance(entry, dict) or not isinstance(entry.get("public_key"), str):
        raise TrustError(f"{where}: needs key_id and public_key (PEM)")
    try:
        pub = parse_public_key_pem(entry["public_key"], where)
    except KeyFileError as exc:
        raise TrustError(str(exc)) from exc
    if entry.get("key_id") != key_id(pub):
        raise TrustError(f"{where}: key_id {entry.get('key_id')!r} does not match its key ({key_id(pub)})")
    return key_id(pub), pub


def parse_trust(doc: object, source: str = "trust file") -> Trust:
    if not isinstance(doc, dict) or doc.get("format") != TRUST_FORMAT:
        raise TrustError(f"{source}: not a gridtrace trust file (format must be {TRUST_FORMAT!r})")
    for section in ("gateways", "chains"):
        if not isinstance(doc.get(section, {}), dict):
            raise TrustError(f"{source}: {section} must be an object keyed by id")
    gateways: dict[str, dict[str, PublicKey]] = {}
    for gw, keys in (doc.get("gateways") or {}).items():
        if not isinstance(keys, list):
            raise TrustError(f"{source}: gateways.{gw} must be a list of keys")
        gateways[gw] = dict(_key(k, f"{source}: gateways.{gw}[{i}]") for i, k in enumerate(keys))
    chains: dict[str, ChainTrust] = {}
    for chain_id, c in (doc.get("chains") or {}).items():
        where = f"{source}: chains.{chain_id}"
        if not isinstance(c, dict) or not isinstance(c.get("replicas"), list):
            raise TrustError(f"{where}: needs quorum and replicas")
        replicas = dict(_key(r, f"{where}.replicas[{i}]") for i, r in enumerate(c["replicas"]))
        quorum = c.get("quorum")
        if not isinstance(quorum, int) or isinstance(quorum, bool) or not 1 <= quorum <= len(replicas):
            raise TrustError(f"{where}: quorum must be an integer from 1 to {len(replicas)}, got {quorum!r}")
        chains[chain_id] = ChainTrust(quorum, replicas)
    contracts = doc.get("contracts", {})
    if not isinstance(contracts, dict):
        raise TrustError(f"{source}: contracts must be an object keyed by contract (e.g. carbon-flow/1)")
    for contract, runners in contracts.items():
        if not isinstance(runners, list) or not all(isinstance(r, str) for r in runners):
            raise TrustError(f"{source}: contracts.{contract} must be a list of gateway ids")
        unknown = [r for r in runners if r not in gateways]
        if unknown:
            raise TrustError(f"{source}: contracts.{contract} names {', '.join(unknown)}, not in gateways")
    return Trust(gateways, chains, {c: tuple(r) for c, r in contracts.items()})


def load_trust(path: Path) -> Trust:
    try:
        doc = load_json(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise TrustError(f"cannot read trust file {path}: {exc.strerror}") from exc
    except (json.JSONDecodeError, DocumentError, UnicodeDecodeError) as exc:
        raise TrustError(f"trust file {path} is not valid JSON: {exc}") from exc
    return parse_trust(doc, str(path))


def trust_document(
    gateways: dict[str, list[PublicKey]],
    chains: dict[str, tuple[int, list[tuple[str, PublicKey]]]],
    contracts: dict[str, list[str]] | None = None,
) -> dict:
    """The JSON document for the given keys (what `gridtrace hub trust` writes)."""
    doc = {
        "format": TRUST_FORMAT,
        "gateways": {
            gw: [{"key_id": key_id(k), "public_key": public_key_pem(k)} for k in keys]
            for gw, keys in sorted(gateways.items())
        },
        "chains": {
            chain_id: {
                "quorum": quorum,
                "replicas": [
                    {"id": rid, "key_id": key_id(k), "public_key": public_key_pem(k)} for rid, k in replicas
                ],
            }
            for chain_id, (quorum, replicas) in sorted(chains.items())
        },
    }
    if contracts:
        doc["contracts"] = {c: sorted(r) for c, r in sorted(contracts.items())}
    return doc
