"""Tests for protos/signing.py: key files, key ids, PEM, signatures, and that OpenSSL
(through `cryptography` and the openssl command) reads what we write and the reverse."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from systemtools import require_tool

from protos.signing import (
    SIGNATURE_SIZE,
    KeyFileError,
    PublicKey,
    Signer,
    key_id,
    load_private_key,
    load_public_key,
    parse_public_key_pem,
    public_key_pem,
    raw_public_key,
    verify_signature,
    write_private_key,
    write_public_key,
)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_write_private_key_mode_0600(tmp_path):
    path = tmp_path / "gateway.key"
    key = write_private_key(path)
    assert _mode(path) == 0o600
    loaded = load_private_key(path)
    assert raw_public_key(loaded.public_key) == raw_public_key(key.public_key)
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8


@pytest.mark.parametrize("umask", [0o000, 0o002, 0o022, 0o077])
def test_write_private_key_mode_0600_under_any_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        path = tmp_path / "sub" / "dir" / "hub.key"  # parent directories are created
        write_private_key(path)
    finally:
        os.umask(old)
    assert _mode(path) == 0o600
    load_private_key(path)  # and loading accepts it


def test_write_private_key_refuses_to_overwrite(tmp_path):
    path = tmp_path / "gateway.key"
    key = write_private_key(path)
    before = path.read_bytes()
    with pytest.raises(KeyFileError, match="exists; refusing to overwrite"):
        write_private_key(path)
    assert path.read_bytes() == before
    assert raw_public_key(load_private_key(path).public_key) == raw_public_key(key.public_key)
    other = tmp_path / "notes.txt"
    other.write_text("not a key")
    with pytest.raises(KeyFileError, match="exists"):
        write_private_key(other)
    assert other.read_text() == "not a key"


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o700 | 0o004])
def test_load_private_key_refuses_open_modes(tmp_path, mode):
    path = tmp_path / "gateway.key"
    write_private_key(path)
    os.chmod(path, mode)
    with pytest.raises(KeyFileError) as err:
        load_private_key(path)
    assert "chmod 600" in str(err.value)
    assert str(path) in str(err.value)
    assert f"{mode:o}" in str(err.value)
    os.chmod(path, 0o600)
    load_private_key(path)
    os.chmod(path, 0o400)  # stricter than 0600 is fine
    load_private_key(path)


def test_load_private_key_errors(tmp_path):
    with pytest.raises(KeyFileError, match="cannot read private key"):
        load_private_key(tmp_path / "missing.key")
    garbage = tmp_path / "garbage.key"
    garbage.write_bytes(b"hello")
    os.chmod(garbage, 0o600)
    with pytest.raises(KeyFileError, match="not a PEM private key"):
        load_private_key(garbage)
    ec = tmp_path / "ec.key"
    ec.write_bytes(
        generate_private_key(SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    os.chmod(ec, 0o600)
    with pytest.raises(KeyFileError, match="not an Ed25519 key"):
        load_private_key(ec)


def test_key_id_is_16_hex_of_sha256_of_raw_public_key():
    signer = Signer.generate()
    pub = signer.public_key
    # the raw bytes are those another implementation derives from the same private key
    raw = Ed25519PrivateKey.from_private_bytes(signer.seed).public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    assert len(raw) == 32 and raw_public_key(pub) == raw
    kid = key_id(pub)
    assert len(kid) == 16
    assert all(ch in "0123456789abcdef" for ch in kid)
    assert kid == hashlib.sha256(raw).hexdigest()[:16]
    assert signer.key_id == kid
    assert key_id(Signer.generate().public_key) != kid


# RFC 8032 section 7.1, test 1 (empty message) and test 2 (one byte 0x72)
RFC8032 = [
    ("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
     "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a", "",
     "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"),
    ("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
     "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c", "72",
     "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"),
]


@pytest.mark.parametrize("seed,public,message,signature", RFC8032)
def test_rfc8032_known_answers(seed, public, message, signature):
    signer = Signer(bytes.fromhex(seed))
    assert signer.public_key.raw.hex() == public
    assert key_id(signer.public_key) == hashlib.sha256(bytes.fromhex(public)).hexdigest()[:16]
    assert signer.sign(bytes.fromhex(message)).hex() == signature
    assert verify_signature(PublicKey(bytes.fromhex(public)), bytes.fromhex(signature), bytes.fromhex(message))


def test_key_files_are_the_ones_openssl_reads_and_writes(tmp_path):
    # ours -> cryptography (OpenSSL): the same key, and it verifies our signatures
    path = tmp_path / "ours.key"
    ours = write_private_key(path)
    theirs = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(theirs, Ed25519PrivateKey)
    assert theirs.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw) == ours.public_key.raw
    theirs_pub = serialization.load_pem_public_key(public_key_pem(ours.public_key).encode())
    assert isinstance(theirs_pub, Ed25519PublicKey)
    theirs_pub.verify(ours.sign(b"m"), b"m")  # raises if not
    # cryptography (OpenSSL) -> ours: byte-identical PEM both ways
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    other = tmp_path / "theirs.key"
    other.write_bytes(pem)
    os.chmod(other, 0o600)
    loaded = load_private_key(other)
    assert loaded.private_key_pem().encode() == pem
    pub_pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert public_key_pem(loaded.public_key).encode() == pub_pem
    assert verify_signature(parse_public_key_pem(pub_pem.decode()), key.sign(b"m"), b"m")


def test_openssl_command_line_key_and_signature(tmp_path):
    """A key made by `openssl genpkey` loads, and `openssl pkeyutl` verifies what we sign
    (what an auditor with nothing but OpenSSL would do)."""
    openssl = require_tool("openssl", "openssl", "it checks our key files against OpenSSL's")
    key = tmp_path / "openssl.key"
    subprocess.run([openssl, "genpkey", "-algorithm", "ed25519", "-out", str(key)], check=True)
    os.chmod(key, 0o600)
    signer = load_private_key(key)
    pub = tmp_path / "openssl.pub.pem"
    subprocess.run([openssl, "pkey", "-in", str(key), "-pubout", "-out", str(pub)], check=True)
    assert load_public_key(pub) == signer.public_key
    data, sig = tmp_path / "data", tmp_path / "sig"
    data.write_bytes(b"gridtrace batch header")
    sig.write_bytes(signer.sign(data.read_bytes()))
    out = subprocess.run([openssl, "pkeyutl", "-verify", "-pubin", "-inkey", str(pub), "-rawin",
                          "-in", str(data), "-sigfile", str(sig)], capture_output=True, text=True)
    assert out.returncode == 0 and "Signature Verified Successfully" in out.stdout


def test_malformed_key_files_name_the_file(tmp_path):
    good = Signer.generate().private_key_pem()
    lines = good.splitlines()
    cases = {
        "bad base64": "\n".join([lines[0], "!!!" + lines[1][3:], lines[2]]),
        "no end line": "\n".join(lines[:2]),
        "public key": public_key_pem(Signer.generate().public_key),
        "truncated": "\n".join([lines[0], lines[1][:20], lines[2]]),
    }
    for name, text in cases.items():
        path = tmp_path / f"{name.replace(' ', '_')}.key"
        path.write_text(text)
        os.chmod(path, 0o600)
        with pytest.raises(KeyFileError, match=str(path)):
            load_private_key(path)
    with pytest.raises(ValueError, match="32 bytes"):
        PublicKey(b"\x01" * 31)
    with pytest.raises(ValueError, match="32 bytes"):
        Signer(b"\x01" * 33)


def test_secret_not_in_repr():
    signer = Signer.generate()
    assert signer.seed.hex() not in repr(signer)
    assert signer.key_id in repr(signer) or "PublicKey" in repr(signer)


def test_public_key_pem_round_trip(tmp_path):
    pub = Signer.generate().public_key
    pem = public_key_pem(pub)
    assert pem.startswith("-----BEGIN PUBLIC KEY-----\n")  # SubjectPublicKeyInfo
    assert raw_public_key(parse_public_key_pem(pem)) == raw_public_key(pub)
    path = tmp_path / "gateway.pub.pem"
    write_public_key(path, pub)
    back = load_public_key(path)
    assert raw_public_key(back) == raw_public_key(pub)
    assert key_id(back) == key_id(pub)
    assert path.read_text() == pem


def test_parse_public_key_pem_errors(tmp_path):
    with pytest.raises(KeyFileError, match="where.pem: not a PEM public key"):
        parse_public_key_pem("nonsense", "where.pem")
    ec_pub = generate_private_key(SECP256R1()).public_key()
    pem = ec_pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(KeyFileError, match="not an Ed25519 key"):
        parse_public_key_pem(pem.decode())
    with pytest.raises(KeyFileError, match="cannot read public key"):
        load_public_key(tmp_path / "missing.pem")


def test_sign_and_verify(tmp_path):
    path = tmp_path / "k.key"
    write_private_key(path)
    signer = Signer.from_file(path)
    data = b"gridtrace test data"
    sig = signer.sign(data)
    assert len(sig) == SIGNATURE_SIZE == 64
    assert verify_signature(signer.public_key, sig, data)


def test_verify_signature_false_cases():
    signer = Signer.generate()
    data = b"\x19gridtrace/batch-header/v1 and more"
    sig = signer.sign(data)
    # wrong length
    for bad in (b"", sig[:63], sig + b"\x00", sig * 2):
        assert verify_signature(signer.public_key, bad, data) is False
    # another key
    assert verify_signature(Signer.generate().public_key, sig, data) is False
    # changed data: each byte, and length changes
    for i in range(len(data)):
        changed = bytearray(data)
        changed[i] ^= 0x01
        assert verify_signature(signer.public_key, sig, bytes(changed)) is False
    assert verify_signature(signer.public_key, sig, data + b"\x00") is False
    assert verify_signature(signer.public_key, sig, data[:-1]) is False
    # changed signature
    for i in (0, 32, 63):
        changed = bytearray(sig)
        changed[i] ^= 0x01
        assert verify_signature(signer.public_key, bytes(changed), data) is False
    assert verify_signature(signer.public_key, sig, data) is True
