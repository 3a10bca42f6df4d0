"""Tests for protos.merkle (RFC 6962 / RFC 9162 Merkle trees): what holds for inclusion and consistency proofs alike (corrupted known vectors, proof lengths, the size binding)."""

from __future__ import annotations

from merklefixtures import (
    CONSISTENCY_VECTORS,
    INCLUSION_VECTORS,
    LEAF_HASHES,
    LEAF_INPUTS,
    ROOT_HASHES,
    ROOTS,
    SOME_HASH,
    _consistency_len,
    _h,
    _inclusion_len,
)

from protos.merkle import (
    EMPTY_ROOT,
    consistency_proof_from_hashes,
    inclusion_proof_from_hashes,
    leaf_hash,
    verify_consistency,
    verify_inclusion,
)


def test_known_vectors_reject_corruptions() -> None:
    for index, size, path in INCLUSION_VECTORS:
        proof = _h(path)
        lh = leaf_hash(LEAF_INPUTS[index])
        rt = bytes.fromhex(ROOT_HASHES[size])
        assert not verify_inclusion(lh, index, size, proof, EMPTY_ROOT)
        assert not verify_inclusion(lh, index, size, proof, SOME_HASH)
        assert not verify_inclusion(lh, index, size, proof + [rt], rt)
        assert not verify_inclusion(lh, index, size, [rt] + proof, rt)
        assert not verify_inclusion(lh, index + 1, size, proof, rt)
        assert not verify_inclusion(lh, index, size * 2, proof, rt)
    for old, new, pr in CONSISTENCY_VECTORS:
        if old == new:
            continue
        proof = _h(pr)
        r1 = bytes.fromhex(ROOT_HASHES[old])
        r2 = bytes.fromhex(ROOT_HASHES[new])
        assert not verify_consistency(old, new, r2, r1, proof)
        assert not verify_consistency(old, new, r1, r2, [])
        assert not verify_consistency(old, new, r1, r2, proof + [r1])
        assert not verify_consistency(old, new, r1, r2, proof + [r2])
        assert not verify_consistency(old, new, r1, r2, [proof[0]] + proof)
        assert not verify_consistency(old - 1, new, r1, r2, proof)
        assert not verify_consistency(old + 1, new, r1, r2, proof)
        assert not verify_consistency(old, new * 2, r1, r2, proof)


def test_proof_length_helpers() -> None:
    for n in range(0, 41):
        for i in range(n):
            assert _inclusion_len(i, n) == len(inclusion_proof_from_hashes(i, LEAF_HASHES[:n]))
        for m in range(n + 1):
            assert _consistency_len(m, n) == len(consistency_proof_from_hashes(m, LEAF_HASHES[:n]))


def test_size_is_bound_only_through_path_shape() -> None:
    """Documents a property of the RFC 9162 verification algorithms.

    They check the tree size only through the shape of the path it implies,
    so a proof can also verify for a *different* size with the same shape
    (against the same root).  The size is authenticated by the signed tree
    head, not by the proof.  Leaf index and old size, in contrast, are
    always bound (see the tamper tests).
    """
    p = inclusion_proof_from_hashes(0, LEAF_HASHES[:3])  # [h1, h2]
    assert verify_inclusion(LEAF_HASHES[0], 0, 3, p, ROOTS[3])
    assert verify_inclusion(LEAF_HASHES[0], 0, 4, p, ROOTS[3])
    c = consistency_proof_from_hashes(1, LEAF_HASHES[:3])
    assert verify_consistency(1, 3, ROOTS[1], ROOTS[3], c)
    assert verify_consistency(1, 4, ROOTS[1], ROOTS[3], c)
