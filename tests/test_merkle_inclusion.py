"""Tests for protos.merkle (RFC 6962 / RFC 9162 Merkle trees): inclusion proofs (building, verifying, tampering, edge cases)."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from merklefixtures import (
    INCLUSION_VECTORS,
    LEAF_HASHES,
    LEAF_INPUTS,
    LEAVES,
    MAX_N,
    ROOT_HASHES,
    ROOTS,
    SOME_HASH,
    _fast,
    _flip,
    _h,
    _inclusion_len,
    _leaves,
    ref_path,
)

from protos.merkle import (
    EMPTY_ROOT,
    inclusion_proof,
    inclusion_proof_from_hashes,
    leaf_hash,
    root,
    verify_inclusion,
)


@pytest.mark.parametrize(("index", "size", "path"), INCLUSION_VECTORS)
def test_known_inclusion_proofs(index: int, size: int, path: list[str]) -> None:
    expected = _h(path)
    assert inclusion_proof(index, LEAF_INPUTS[:size]) == expected
    hashes = [leaf_hash(x) for x in LEAF_INPUTS[:size]]
    assert inclusion_proof_from_hashes(index, hashes) == expected
    rt = bytes.fromhex(ROOT_HASHES[size])
    assert verify_inclusion(hashes[index], index, size, expected, rt)


def test_every_inclusion_proof_verifies_up_to_70() -> None:
    for n in range(1, MAX_N + 1):
        hashes = LEAF_HASHES[:n]
        rt = ROOTS[n]
        for i in range(n):
            proof = inclusion_proof_from_hashes(i, hashes)
            assert verify_inclusion(hashes[i], i, n, proof, rt), (i, n)
    # The raw-entry wrapper agrees.
    assert inclusion_proof(17, LEAVES[:40]) == inclusion_proof_from_hashes(17, LEAF_HASHES[:40])


def _inclusion_tampers_fail(i: int, n: int, every_byte: bool) -> None:
    hashes = LEAF_HASHES[:n]
    rt = ROOTS[n]
    lh = hashes[i]
    proof = inclusion_proof_from_hashes(i, hashes)
    assert verify_inclusion(lh, i, n, proof, rt)

    positions = range(32) if every_byte else (0, 13, 31)
    for j in range(len(proof)):
        for pos in positions:
            bad = list(proof)
            bad[j] = _flip(proof[j], pos)
            assert not verify_inclusion(lh, i, n, bad, rt), (i, n, j, pos)
    for pos in positions:
        assert not verify_inclusion(_flip(lh, pos), i, n, proof, rt)
        assert not verify_inclusion(lh, i, n, proof, _flip(rt, pos))

    # Wrong index / size.
    for wi in {i - 1, i + 1, i ^ 1, i ^ 2, n, n + 1, -1}:
        if wi != i:
            assert not verify_inclusion(lh, wi, n, proof, rt), (wi, n)
    # The RFC verifier only sees the tree size through the shape of the path
    # (see test_size_is_bound_only_through_path_shape), so a wrong size must
    # fail whenever its path would have a different length, and always for
    # the sizes used by the reference tests (2n, n/2, 0, i).
    for wn in {n * 2, n // 2, 0, i}:
        if wn != n:
            assert not verify_inclusion(lh, i, wn, proof, rt), (i, wn)
    for wn in range(max(i + 1, n - 9), n + 10):
        if wn != n and _inclusion_len(i, wn) != len(proof):
            assert not verify_inclusion(lh, i, wn, proof, rt), (i, wn)

    # Truncated / extended / reordered proofs.
    if proof:
        assert not verify_inclusion(lh, i, n, proof[:-1], rt)
        assert not verify_inclusion(lh, i, n, proof[1:], rt)
    for extra in (rt, lh, SOME_HASH, EMPTY_ROOT):
        assert not verify_inclusion(lh, i, n, proof + [extra], rt)
        assert not verify_inclusion(lh, i, n, [extra] + proof, rt)
    if len(proof) > 1:
        assert not verify_inclusion(lh, i, n, proof[::-1], rt)
        assert not verify_inclusion(lh, i, n, [proof[0], SOME_HASH] + proof[1:], rt)
    # Another leaf's hash.
    other = hashes[(i + 1) % n]
    if other != lh:
        assert not verify_inclusion(other, i, n, proof, rt)


def test_inclusion_tampering_every_byte_small_trees() -> None:
    for n in range(1, 17):
        for i in range(n):
            _inclusion_tampers_fail(i, n, every_byte=True)


def test_inclusion_tampering_all_trees_up_to_70() -> None:
    for n in range(1, MAX_N + 1):
        for i in range(n):
            _inclusion_tampers_fail(i, n, every_byte=False)


def test_verify_inclusion_edge_cases() -> None:
    h = leaf_hash(b"data")
    # Single-entry tree: root == leaf hash, empty proof.
    assert verify_inclusion(h, 0, 1, [], h)
    assert not verify_inclusion(h, 0, 1, [], b"")
    assert not verify_inclusion(b"", 0, 1, [], h)
    assert not verify_inclusion(b"", 0, 1, [], b"")
    for index, size in [(0, 0), (1, 0), (1, 1), (2, 1), (-1, 1), (0, -1)]:
        assert not verify_inclusion(SOME_HASH, index, size, [], EMPTY_ROOT)
        assert not verify_inclusion(h, index, size, [], h)
    # Wrong-length hashes anywhere.
    proof = inclusion_proof_from_hashes(3, LEAF_HASHES[:8])
    lh, rt = LEAF_HASHES[3], ROOTS[8]
    assert verify_inclusion(lh, 3, 8, proof, rt)
    assert not verify_inclusion(lh + b"\x00", 3, 8, proof, rt)
    assert not verify_inclusion(lh, 3, 8, proof, rt[:31])
    assert not verify_inclusion(lh, 3, 8, [proof[0][:31]] + proof[1:], rt)
    assert not verify_inclusion(lh, 3, 8, proof + [b""], rt)
    assert not verify_inclusion(lh, 3, 8, [b""] + proof, rt)
    # Garbage types never raise.
    garbage: list[object] = [None, "x", 1.5, object(), b"".join(proof), [None], [1, 2, 3]]
    for g in garbage:
        assert not verify_inclusion(lh, 3, 8, g, rt)  # type: ignore[arg-type]
        assert not verify_inclusion(g, 3, 8, proof, rt)  # type: ignore[arg-type]
        assert not verify_inclusion(lh, 3, 8, proof, g)  # type: ignore[arg-type]
        assert not verify_inclusion(lh, g, 8, proof, rt)  # type: ignore[arg-type]
        assert not verify_inclusion(lh, 3, g, proof, rt)  # type: ignore[arg-type]
    assert not verify_inclusion(lh, True, 8, proof, rt)  # type: ignore[arg-type]
    # Tuples and bytearrays are fine.
    assert verify_inclusion(bytearray(lh), 3, 8, tuple(proof), bytearray(rt))
    # Huge sizes are rejected, not crashed on.
    assert not verify_inclusion(lh, 3, 2**200, proof, rt)


def test_inclusion_proof_bad_index() -> None:
    for fn, data in ((inclusion_proof, LEAVES[:5]), (inclusion_proof_from_hashes, LEAF_HASHES[:5])):
        for bad in (5, 6, -1):
            with pytest.raises(ValueError, match=rf"index {bad}\b"):
                fn(bad, data)
        with pytest.raises(ValueError, match="index 0"):
            fn(0, [])
        with pytest.raises(TypeError, match="index"):
            fn("1", data)  # type: ignore[arg-type]


@_fast
@given(leaves=_leaves.filter(bool), data=st.data())
def test_prop_inclusion_roundtrip(leaves: list[bytes], data: st.DataObject) -> None:
    n = len(leaves)
    i = data.draw(st.integers(0, n - 1), label="index")
    proof = inclusion_proof(i, leaves)
    assert proof == ref_path(i, leaves)
    rt = root(leaves)
    lh = leaf_hash(leaves[i])
    assert verify_inclusion(lh, i, n, proof, rt)
    # Any single-bit flip anywhere in the proof breaks it.
    if proof:
        j = data.draw(st.integers(0, len(proof) - 1), label="element")
        pos = data.draw(st.integers(0, 31), label="byte")
        bit = data.draw(st.integers(0, 7), label="bit")
        bad = list(proof)
        bad[j] = _flip(proof[j], pos, 1 << bit)
        assert not verify_inclusion(lh, i, n, bad, rt)
    # Any other index or size fails with the same proof.
    wi = data.draw(st.integers(-2, n + 2).filter(lambda x: x != i), label="wrong index")
    assume(leaf_hash(leaves[wi]) != lh if 0 <= wi < n else True)
    assert not verify_inclusion(lh, wi, n, proof, rt)


@_fast
@given(
    index=st.integers(-5, 300),
    size=st.integers(-5, 300),
    proof=st.lists(st.binary(min_size=0, max_size=40), max_size=12),
    lh=st.binary(max_size=40),
    rt=st.binary(max_size=40),
)
def test_prop_verify_inclusion_never_raises(
    index: int, size: int, proof: list[bytes], lh: bytes, rt: bytes
) -> None:
    assert verify_inclusion(lh, index, size, proof, rt) in (True, False)
