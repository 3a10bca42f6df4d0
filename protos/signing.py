"""Ed25519 keys of gateways and hubs: creation, storage, key ids, sign and verify.

Private keys are PKCS#8 PEM files created with mode 0600 and refused when
others can read them. Public keys travel as SubjectPublicKeyInfo PEM, the form
`openssl pkeyutl -verify -pubin -rawin` takes. A key id is the first 16 hex
digits of SHA-256 over the raw 32-byte public key.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

SIGNATURE_SIZE = 64


class KeyFileError(Exception):
    """A key file is missing, unreadable, too open, or not an Ed25519 key."""


def raw_public_key(pub: Ed25519PublicKey) -> bytes:
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(pub: Ed25519PublicKey) -> str:
    return hashlib.sha256(raw_public_key(pub)).hexdigest()[:16]


def public_key_pem(pub: Ed25519PublicKey) -> str:
    return pub.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def parse_public_key_pem(pem: str, where: str = "public key") -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(pem.encode("ascii"))
    except (ValueError, TypeError, UnicodeEncodeError) as exc:
        raise KeyFileError(f"{where}: not a PEM public key ({exc})") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{where}: not an Ed25519 key ({type(key).__name__})")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        text = Path(path).read_text(encoding="ascii")
    except OSError as exc:
        raise KeyFileError(f"cannot read public key {path}: {exc.strerror}") from exc
    return parse_public_key_pem(text, str(path))


def write_private_key(path: Path) -> Ed25519PrivateKey:
    """Create a new key at `path` (mode 0600). Refuses to overwrite an existing file."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # O_EXCL: never clobber a key that may already be enrolled somewhere.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise KeyFileError(f"{path} exists; refusing to overwrite a key") from exc
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(path, 0o600)  # in case the umask was stricter than needed, or looser
    return key


def write_public_key(path: Path, pub: Ed25519PublicKey) -> None:
    Path(path).write_text(public_key_pem(pub), encoding="ascii")


def create_key_pair(directory: Path, stem: str) -> Ed25519PrivateKey:
    """Create `stem.key` (mode 0600, never overwritten) and `stem.pub.pem` in `directory`."""
    key = write_private_key(Path(directory) / f"{stem}.key")
    write_public_key(Path(directory) / f"{stem}.pub.pem", key.public_key())
    return key


def load_private_key(path: Path) -> Ed25519PrivateKey:
    path = Path(path)
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read private key {path}: {exc.strerror}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"private key {path} is accessible by other users (mode {stat.S_IMODE(mode):o}); "
            f"run: chmod 600 {path}"
        )
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path}: not a PEM private key ({exc})") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: not an Ed25519 key ({type(key).__name__})")
    return key


@dataclass(frozen=True)
class Signer:
    """A private key with its key id, so that what it signs names the key."""

    private_key: Ed25519PrivateKey

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.private_key.public_key()

    @property
    def key_id(self) -> str:
        return key_id(self.public_key)

    def sign(self, data: bytes) -> bytes:
        return self.private_key.sign(data)

    @classmethod
    def from_file(cls, path: Path) -> Signer:
        return cls(load_private_key(path))


def verify_signature(pub: Ed25519PublicKey, signature: bytes, data: bytes) -> bool:
    if len(signature) != SIGNATURE_SIZE:
        return False
    try:
        pub.verify(signature, data)
    except InvalidSignature:
        return False
    return True
