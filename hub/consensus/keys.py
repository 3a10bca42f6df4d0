"""Who may sign as which replica: the replica keys a consensus core signs and checks with.

A core holds one `ReplicaKeys`: its own signing key and every member's public key. In
production that is Ed25519 (`Ed25519ReplicaKeys`, the keys named in each replica's config);
the simulator runs thousands of seeds, so it uses `SimulatedReplicaKeys`, keyed SHA-256
with a secret per replica: as unforgeable inside the simulation (a Byzantine replica is
given only its own secret) and a hundred times cheaper.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from hub.consensus.messages import Signed, encode
from protos.signing import PublicKey, Signer


class ReplicaKeys(Protocol):
    replica: int

    def sign(self, data: bytes) -> bytes: ...

    def verify(self, replica: int, data: bytes, signature: bytes) -> bool: ...


def sign_message(keys: ReplicaKeys, body: object) -> Signed:
    return Signed(body, keys.replica, keys.sign(encode(body)))  # type: ignore[arg-type]


def verify_message(keys: ReplicaKeys, m: Signed) -> bool:
    try:
        return keys.verify(m.replica, encode(m.body), m.signature)
    except (TypeError, ValueError):
        return False


@dataclass(frozen=True)
class Ed25519ReplicaKeys:
    replica: int
    signer: Signer
    public_keys: Mapping[int, PublicKey]

    def sign(self, data: bytes) -> bytes:
        return self.signer.sign(data)

    def verify(self, replica: int, data: bytes, signature: bytes) -> bool:
        key = self.public_keys.get(replica)
        return key is not None and key.verify(signature, data)


@dataclass(frozen=True)
class SimulatedReplicaKeys:
    replica: int
    secrets: Mapping[int, bytes]  # every replica's secret: verifying needs them all

    def sign(self, data: bytes) -> bytes:
        return hmac.new(self.secrets[self.replica], data, hashlib.sha256).digest()

    def verify(self, replica: int, data: bytes, signature: bytes) -> bool:
        secret = self.secrets.get(replica)
        return secret is not None and hmac.compare_digest(hmac.new(secret, data, hashlib.sha256).digest(), signature)
