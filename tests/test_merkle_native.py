"""The native Merkle module (protos/_merkle_native.c) computes what protos/merkle.py defines.

The hub hashes every reading through it when it is built; where it is not (no OpenSSL
headers at install time) protos/merkle.py falls back to hashlib. CI must build it.
"""

from __future__ import annotations

import os
import random

import pytest

from protos import merkle

native = pytest.importorskip("protos._merkle_native") if os.environ.get("CI") != "true" else None
if native is None:
    from protos import _merkle_native as native  # CI builds it (scripts/install-build-deps.sh): fail, not skip


def test_ci_uses_the_native_module() -> None:
    assert merkle.NATIVE


@pytest.mark.parametrize("width,cut,insert", [(1, 0, b""), (33, 5, b"names"), (380, 52, bytes(range(256)) * 3), (64, 64, b"x")])
def test_spliced_leaf_hashes_are_the_leaf_hash_of_each_row_put_back_together(width: int, cut: int, insert: bytes) -> None:
    rows = [os.urandom(width) for _ in range(37)]
    expected = b"".join(merkle.leaf_hash(r[:cut] + insert + r[cut:]) for r in rows)
    assert native.spliced_leaf_hashes(b"".join(rows), width, cut, insert) == expected
    assert native.spliced_leaf_hashes(memoryview(bytearray(b"".join(rows))), width, cut, insert) == expected


def test_roots_equal_the_python_definition_for_every_size_up_to_300() -> None:
    rng = random.Random(6962)
    hashes = [rng.randbytes(32) for _ in range(300)]
    for n in range(1, 301):
        assert native.root(b"".join(hashes[:n])) == merkle.root_from_hashes(hashes[:n]), n


def test_the_fallback_computes_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = b"".join(os.urandom(100) for _ in range(21))
    leaves = merkle.spliced_leaf_hashes(rows, 100, 40, b"cut out")
    root = merkle.root_from_hash_string(leaves)
    monkeypatch.setattr(merkle, "_native", None)
    assert merkle.spliced_leaf_hashes(rows, 100, 40, b"cut out") == leaves
    assert merkle.root_from_hash_string(leaves) == root
    assert merkle.root_from_hash_string(b"") == merkle.EMPTY_ROOT
    with pytest.raises(ValueError, match="cut at 101"):
        merkle.spliced_leaf_hashes(rows, 100, 101, b"")


def test_bad_input_is_named() -> None:
    with pytest.raises(ValueError, match="101 bytes are not rows of 10 bytes cut at 2"):
        native.spliced_leaf_hashes(bytes(101), 10, 2, b"")
    with pytest.raises(ValueError, match="not rows of 0 bytes"):
        native.spliced_leaf_hashes(bytes(10), 0, 0, b"")
    with pytest.raises(ValueError, match="cut at 11"):
        native.spliced_leaf_hashes(bytes(10), 10, 11, b"")
    with pytest.raises(ValueError, match="33 bytes are not one or more 32-byte hashes"):
        native.root(bytes(33))
    with pytest.raises(ValueError, match="0 bytes are not one or more"):
        native.root(b"")
    with pytest.raises(ValueError, match="whole number of 32-byte hashes"):
        merkle.root_from_hash_string(bytes(31))
