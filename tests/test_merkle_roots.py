"""Tests for protos.merkle (RFC 6962 / RFC 9162 Merkle trees): leaf and node hashing and tree roots (known answers, the literal RFC definitions, a large tree)."""

from __future__ import annotations

import hashlib
import json

import pytest
from hypothesis import given
from merklefixtures import (
    EMPTY_ROOT_HEX,
    LEAF_INPUTS,
    LEAVES,
    NODE_HASHES,
    ROOT_HASHES,
    ROOTS,
    _fast,
    _h,
    _leaves,
    ref_mth,
    ref_path,
    ref_proof,
)

from protos.merkle import (
    EMPTY_ROOT,
    CompactRange,
    consistency_proof,
    consistency_proof_from_hashes,
    inclusion_proof,
    inclusion_proof_from_hashes,
    leaf_hash,
    node_hash,
    root,
    root_from_hashes,
    verify_consistency,
    verify_inclusion,
)


def test_empty_root() -> None:
    assert EMPTY_ROOT == hashlib.sha256(b"").digest()
    assert EMPTY_ROOT.hex() == EMPTY_ROOT_HEX
    assert root([]) == EMPTY_ROOT
    assert root_from_hashes([]) == EMPTY_ROOT
    assert CompactRange().root() == EMPTY_ROOT


def test_leaf_and_node_hash_definitions() -> None:
    assert leaf_hash(b"abc") == hashlib.sha256(b"\x00abc").digest()
    a, b = leaf_hash(b"a"), leaf_hash(b"b")
    assert node_hash(a, b) == hashlib.sha256(b"\x01" + a + b).digest()
    assert node_hash(a, b) != node_hash(b, a)
    # Domain separation: a leaf never collides with a node of the same bytes.
    assert leaf_hash(a + b) != node_hash(a, b)


def test_known_node_hashes() -> None:
    level0 = [leaf_hash(x) for x in LEAF_INPUTS]
    assert [h.hex() for h in level0] == NODE_HASHES[0]
    for level in range(1, len(NODE_HASHES)):
        below = _h(NODE_HASHES[level - 1])
        computed = [node_hash(below[2 * i], below[2 * i + 1]) for i in range(len(below) // 2)]
        assert [h.hex() for h in computed] == NODE_HASHES[level]


@pytest.mark.parametrize("size", range(len(ROOT_HASHES)))
def test_known_roots(size: int) -> None:
    expected = ROOT_HASHES[size]
    assert root(LEAF_INPUTS[:size]).hex() == expected
    assert root_from_hashes([leaf_hash(x) for x in LEAF_INPUTS[:size]]).hex() == expected


def test_matches_reference_definitions() -> None:
    for n in range(0, 34):
        d = LEAVES[:n]
        assert root(d) == ref_mth(d) == ROOTS[n]
        for m in range(n):
            assert inclusion_proof(m, d) == ref_path(m, d)
        for m in range(n + 1):
            assert consistency_proof(m, d) == ref_proof(m, d)


def test_larger_tree() -> None:
    n = 20_000 + 123
    hashes = [leaf_hash(i.to_bytes(4, "big")) for i in range(n)]
    rt = root_from_hashes(hashes)
    cr = CompactRange()
    cr.extend(hashes)
    assert cr.root() == rt
    for i in (0, 1, 8191, 16384, n - 124, n - 1):
        proof = inclusion_proof_from_hashes(i, hashes)
        assert len(proof) <= (n - 1).bit_length()
        assert verify_inclusion(hashes[i], i, n, proof, rt)
        assert not verify_inclusion(hashes[i], i, n * 2, proof, rt)
        assert not verify_inclusion(hashes[i], i + 1, n, proof, rt)
    for m in (1, 4096, 16384, 16385, n - 1):
        proof = consistency_proof_from_hashes(m, hashes)
        old = root_from_hashes(hashes[:m])
        assert verify_consistency(m, n, old, rt, proof)
        assert not verify_consistency(m, n, rt, old, proof)


@_fast
@given(leaves=_leaves)
def test_prop_root_matches_reference_and_compact_range(leaves: list[bytes]) -> None:
    expected = ref_mth(leaves)
    assert root(leaves) == expected
    cr = CompactRange()
    cr.extend(leaf_hash(x) for x in leaves)
    assert cr.root() == expected
    assert CompactRange.from_json(json.loads(json.dumps(cr.to_json()))).root() == expected
