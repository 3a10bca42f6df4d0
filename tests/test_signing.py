"""Tests for protos/signing.py: key files, key ids, PEM, signatures."""

from __future__ import annotations

import hashlib
import os
import stat

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protos.signing import (
    SIGNATURE_SIZE,
    KeyFileError,
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
    assert raw_public_key(loaded.public_key()) == raw_public_key(key.public_key())
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
    assert raw_public_key(load_private_key(path).public_key()) == raw_public_key(key.public_key())
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
    key = Ed25519PrivateKey.generate()
    pub = key.public_key()
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert len(raw) == 32 and raw_public_key(pub) == raw
    kid = key_id(pub)
    assert len(kid) == 16
    assert all(ch in "0123456789abcdef" for ch in kid)
    assert kid == hashlib.sha256(raw).hexdigest()[:16]
    assert Signer(key).key_id == kid
    assert key_id(Ed25519PrivateKey.generate().public_key()) != kid


def test_key_id_known_answer():
    # RFC 8032 test 1 secret key; its public key is d75a9801...511a.
    sk = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
    pub = Ed25519PrivateKey.from_private_bytes(sk).public_key()
    assert raw_public_key(pub).hex() == "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    assert key_id(pub) == hashlib.sha256(raw_public_key(pub)).hexdigest()[:16]


def test_public_key_pem_round_trip(tmp_path):
    pub = Ed25519PrivateKey.generate().public_key()
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
    signer = Signer(Ed25519PrivateKey.generate())
    data = b"\x19gridtrace/batch-header/v1 and more"
    sig = signer.sign(data)
    # wrong length
    for bad in (b"", sig[:63], sig + b"\x00", sig * 2):
        assert verify_signature(signer.public_key, bad, data) is False
    # another key
    assert verify_signature(Ed25519PrivateKey.generate().public_key(), sig, data) is False
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
