"""Ed25519 keys of gateways and hubs: creation, storage, key ids, sign and verify.

Private keys are PKCS#8 PEM files created with mode 0600 and refused when
others can read them. Public keys travel as SubjectPublicKeyInfo PEM, the form
`openssl pkeyutl -verify -pubin -rawin` takes. A key id is the first 16 hex
digits of SHA-256 over the raw 32-byte public key.

Signing and verifying use libsodium through PyNaCl rather than OpenSSL through
`cryptography`: it verifies in about 60 % of the time here, and it keeps the edge
agent about 5 MB smaller on a gateway (cryptography's bindings map their own OpenSSL).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import nacl.bindings
import nacl.exceptions

SIGNATURE_SIZE = 64
KEY_SIZE = 32

# RFC 8410: an Ed25519 key has exactly one DER encoding in each form, a fixed prefix
# followed by the 32 key bytes (section 7 shows both). So these files are read and
# written by matching the prefix; no general ASN.1 parser is needed.
_PKCS8_PREFIX = bytes.fromhex("302e020100300506032b657004220420")  # PrivateKeyInfo v1, seed follows
_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")  # SubjectPublicKeyInfo, public key follows
_ED25519_OID = bytes.fromhex("06032b6570")  # 1.3.101.112


class KeyFileError(Exception):
    """A key file is missing, unreadable, too open, or not an Ed25519 key."""


def _pem(label: str, der: bytes) -> str:
    b64 = base64.b64encode(der).decode("ascii")
    lines = [b64[i:i + 64] for i in range(0, len(b64), 64)]
    return "\n".join([f"-----BEGIN {label}-----", *lines, f"-----END {label}-----", ""])


def _unpem(text: str, label: str, where: str) -> bytes:
    begin, end = f"-----BEGIN {label}-----", f"-----END {label}-----"
    lines = [line.strip() for line in text.strip().splitlines()]
    if len(lines) < 3 or lines[0] != begin or lines[-1] != end:
        raise KeyFileError(f"{where}: not a PEM {label.lower()} (expected {begin} ... {end})")
    try:
        return binascii.a2b_base64("".join(lines[1:-1]), strict_mode=True)
    except binascii.Error as exc:
        raise KeyFileError(f"{where}: not a PEM {label.lower()} (bad base64: {exc})") from exc


def _ed25519_key_bytes(der: bytes, prefix: bytes, where: str) -> bytes:
    if len(der) == len(prefix) + KEY_SIZE and der.startswith(prefix):
        return der[len(prefix):]
    if _ED25519_OID in der:
        raise KeyFileError(f"{where}: an Ed25519 key, but not in the RFC 8410 form gridtrace and "
                           f"`openssl genpkey -algorithm ed25519` write")
    raise KeyFileError(f"{where}: not an Ed25519 key")


@dataclass(frozen=True)
class PublicKey:
    """An Ed25519 public key: the 32 bytes of RFC 8032."""

    raw: bytes

    def __post_init__(self) -> None:
        if len(self.raw) != KEY_SIZE:
            raise ValueError(f"an Ed25519 public key has {KEY_SIZE} bytes, not {len(self.raw)}")

    @property
    def key_id(self) -> str:
        return hashlib.sha256(self.raw).hexdigest()[:16]

    def pem(self) -> str:
        return _pem("PUBLIC KEY", _SPKI_PREFIX + self.raw)

    @classmethod
    def from_pem(cls, pem: str, where: str = "public key") -> PublicKey:
        return cls(_ed25519_key_bytes(_unpem(pem, "PUBLIC KEY", where), _SPKI_PREFIX, where))

    def verify(self, signature: bytes, data: bytes) -> bool:
        """True when `signature` is this key's Ed25519 signature over `data` (RFC 8032, pure)."""
        if len(signature) != SIGNATURE_SIZE:
            return False
        try:
            nacl.bindings.crypto_sign_open(bytes(signature) + bytes(data), self.raw)
        except nacl.exceptions.BadSignatureError:
            return False
        return True


@dataclass(frozen=True)
class Signer:
    """A private key with its public key and key id, so that what it signs names the key."""

    seed: bytes = field(repr=False)  # the 32-byte private key of RFC 8032
    public_key: PublicKey = field(init=False)
    _secret: bytes = field(init=False, repr=False)  # libsodium's form: seed || public key

    def __post_init__(self) -> None:
        if not isinstance(self.seed, bytes):
            raise TypeError(f"Signer takes the 32-byte private key, not {type(self.seed).__name__}")
        if len(self.seed) != KEY_SIZE:
            raise ValueError(f"an Ed25519 private key has {KEY_SIZE} bytes, not {len(self.seed)}")
        public, secret = nacl.bindings.crypto_sign_seed_keypair(bytes(self.seed))
        object.__setattr__(self, "public_key", PublicKey(public))
        object.__setattr__(self, "_secret", secret)

    @classmethod
    def generate(cls) -> Signer:
        return cls(os.urandom(KEY_SIZE))

    @property
    def key_id(self) -> str:
        return self.public_key.key_id

    def sign(self, data: bytes) -> bytes:
        return nacl.bindings.crypto_sign(bytes(data), self._secret)[:SIGNATURE_SIZE]

    def private_key_pem(self) -> str:
        return _pem("PRIVATE KEY", _PKCS8_PREFIX + self.seed)

    @classmethod
    def from_pem(cls, pem: str, where: str = "private key") -> Signer:
        return cls(_ed25519_key_bytes(_unpem(pem, "PRIVATE KEY", where), _PKCS8_PREFIX, where))

    @classmethod
    def from_file(cls, path: Path) -> Signer:
        return load_private_key(path)


def raw_public_key(pub: PublicKey) -> bytes:
    return pub.raw


def key_id(pub: PublicKey) -> str:
    """The first 16 hex digits of SHA-256 over the raw 32-byte public key."""
    return pub.key_id


def public_key_pem(pub: PublicKey) -> str:
    return pub.pem()


def parse_public_key_pem(pem: str, where: str = "public key") -> PublicKey:
    return PublicKey.from_pem(pem, where)


def load_public_key(path: Path) -> PublicKey:
    try:
        text = Path(path).read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"cannot read public key {path}: {getattr(exc, 'strerror', None) or exc}") from exc
    return parse_public_key_pem(text, str(path))


def write_private_key(path: Path) -> Signer:
    """Create a new key at `path` (mode 0600). Refuses to overwrite an existing file."""
    signer = Signer.generate()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # O_EXCL: never clobber a key that may already be enrolled somewhere.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise KeyFileError(f"{path} exists; refusing to overwrite a key") from exc
    with os.fdopen(fd, "wb") as f:
        f.write(signer.private_key_pem().encode("ascii"))
        f.flush()
        os.fsync(f.fileno())
    os.chmod(path, 0o600)  # in case the umask was stricter than needed, or looser
    return signer


def write_public_key(path: Path, pub: PublicKey) -> None:
    Path(path).write_text(public_key_pem(pub), encoding="ascii")


def create_key_pair(directory: Path, stem: str) -> Signer:
    """Create `stem.key` (mode 0600, never overwritten) and `stem.pub.pem` in `directory`."""
    signer = write_private_key(Path(directory) / f"{stem}.key")
    write_public_key(Path(directory) / f"{stem}.pub.pem", signer.public_key)
    return signer


def load_private_key(path: Path) -> Signer:
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
        text = data.decode("ascii")
    except UnicodeDecodeError as exc:
        raise KeyFileError(f"{path}: not a PEM private key (not ASCII text)") from exc
    return Signer.from_pem(text, str(path))


def verify_signature(pub: PublicKey, signature: bytes, data: bytes) -> bool:
    return pub.verify(signature, data)
