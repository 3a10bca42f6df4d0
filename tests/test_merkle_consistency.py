"""Tests for protos.merkle (RFC 6962 / RFC 9162 Merkle trees): consistency proofs (building, verifying, tampering, edge cases)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from merklefixtures import (
    CONSISTENCY_VECTORS,
    LEAF_HASHES,
    LEAF_INPUTS,
    LEAVES,
    ROOT_HASHES,
    ROOTS,
    SOME_HASH,
    _consistency_len,
    _fast,
    _flip,
    _h,
    _leaves,
    ref_proof,
)

from protos.merkle import (
    EMPTY_ROOT,
    consistency_proof,
    consistency_proof_from_hashes,
    leaf_hash,
    root,
    verify_consistency,
)


@pytest.mark.parametrize(("old", "new", "proof"), CONSISTENCY_VECTORS)
def test_known_consistency_proofs(old: int, new: int, proof: list[str]) -> None:
    expected = _h(proof)
    assert consistency_proof(old, LEAF_INPUTS[:new]) == expected
    hashes = [leaf_hash(x) for x in LEAF_INPUTS[:new]]
    assert consistency_proof_from_hashes(old, hashes) == expected
    old_root = bytes.fromhex(ROOT_HASHES[old])
    new_root = bytes.fromhex(ROOT_HASHES[new])
    assert verify_consistency(old, new, old_root, new_root, expected)


def test_every_consistency_proof_verifies_up_to_40() -> None:
    for n in range(0, 41):
        hashes = LEAF_HASHES[:n]
        for m in range(0, n + 1):
            proof = consistency_proof_from_hashes(m, hashes)
            if m == 0 or m == n:
                assert proof == []
            assert verify_consistency(m, n, ROOTS[m], ROOTS[n], proof), (m, n)
    assert consistency_proof(13, LEAVES[:40]) == consistency_proof_from_hashes(13, LEAF_HASHES[:40])


def _consistency_tampers_fail(m: int, n: int, every_byte: bool) -> None:
    hashes = LEAF_HASHES[:n]
    r1, r2 = ROOTS[m], ROOTS[n]
    proof = consistency_proof_from_hashes(m, hashes)
    assert verify_consistency(m, n, r1, r2, proof)
    assert 0 < m < n and proof

    positions = range(32) if every_byte else (0, 13, 31)
    for j in range(len(proof)):
        for pos in positions:
            bad = list(proof)
            bad[j] = _flip(proof[j], pos)
            assert not verify_consistency(m, n, r1, r2, bad), (m, n, j, pos)
    for pos in positions:
        assert not verify_consistency(m, n, _flip(r1, pos), r2, proof)
        assert not verify_consistency(m, n, r1, _flip(r2, pos), proof)

    assert not verify_consistency(m, n, r2, r1, proof)  # swapped roots
    assert not verify_consistency(n, m, r2, r1, proof)  # swapped sizes too
    assert not verify_consistency(m, n, r1, r2, [])
    assert not verify_consistency(m, n, r1, r2, proof[:-1])
    assert not verify_consistency(m, n, r1, r2, proof[1:])
    for extra in (r1, r2, SOME_HASH, EMPTY_ROOT, proof[0]):
        assert not verify_consistency(m, n, r1, r2, proof + [extra])
        assert not verify_consistency(m, n, r1, r2, [extra] + proof)
    if len(proof) > 1:
        assert not verify_consistency(m, n, r1, r2, proof[::-1])

    for wm in range(0, n + 2):
        if wm != m:
            assert not verify_consistency(wm, n, r1, r2, proof), (wm, n)
    for wn in {n * 2, n // 2, m, m - 1}:
        if wn != n:
            assert not verify_consistency(m, wn, r1, r2, proof), (m, wn)
    for wn in range(m + 1, n + 10):
        if wn != n and _consistency_len(m, wn) != len(proof):
            assert not verify_consistency(m, wn, r1, r2, proof), (m, wn)


def test_consistency_tampering_every_byte_small_trees() -> None:
    for n in range(2, 17):
        for m in range(1, n):
            _consistency_tampers_fail(m, n, every_byte=True)


def test_consistency_tampering_all_trees_up_to_40() -> None:
    for n in range(2, 41):
        for m in range(1, n):
            _consistency_tampers_fail(m, n, every_byte=False)


def test_verify_consistency_edge_cases() -> None:
    r1, r2 = ROOTS[5], ROOTS[9]
    # Equal sizes: empty proof and equal roots only.
    assert verify_consistency(5, 5, r1, r1, [])
    assert not verify_consistency(5, 5, r1, r2, [])
    assert not verify_consistency(5, 5, r1, r1, [r1])
    assert verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [])
    assert not verify_consistency(0, 0, EMPTY_ROOT, r1, [])
    assert not verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT])
    # Old size zero: only an empty proof, from the empty root.
    assert verify_consistency(0, 9, EMPTY_ROOT, r2, [])
    assert not verify_consistency(0, 9, EMPTY_ROOT, r2, [EMPTY_ROOT])
    assert not verify_consistency(0, 9, r1, r2, [])
    # Time travel.
    assert not verify_consistency(9, 5, r2, r1, [])
    assert not verify_consistency(9, 5, r2, r1, consistency_proof_from_hashes(5, LEAF_HASHES[:9]))
    assert not verify_consistency(1, 0, r1, EMPTY_ROOT, [])
    # Nontrivial sizes need a nonempty proof.
    assert not verify_consistency(1, 2, ROOTS[1], ROOTS[2], [])
    # Negative / non-int sizes, wrong-length hashes, garbage.
    proof = consistency_proof_from_hashes(5, LEAF_HASHES[:9])
    assert verify_consistency(5, 9, r1, r2, proof)
    assert verify_consistency(5, 9, bytearray(r1), bytearray(r2), tuple(proof))
    assert not verify_consistency(-1, 9, r1, r2, proof)
    assert not verify_consistency(5, -9, r1, r2, proof)
    assert not verify_consistency(5, 9, r1[:31], r2, proof)
    assert not verify_consistency(5, 9, r1, r2 + b"\x00", proof)
    assert not verify_consistency(5, 9, r1, r2, proof[:-1] + [proof[-1][:31]])
    assert not verify_consistency(5, 9, r1, r2, proof + [b""])
    assert not verify_consistency(5, 2**200, r1, r2, proof)
    garbage: list[object] = [None, "x", 1.5, object(), b"".join(proof), [None], [1, 2]]
    for g in garbage:
        assert not verify_consistency(5, 9, r1, r2, g)  # type: ignore[arg-type]
        assert not verify_consistency(g, 9, r1, r2, proof)  # type: ignore[arg-type]
        assert not verify_consistency(5, g, r1, r2, proof)  # type: ignore[arg-type]
        assert not verify_consistency(5, 9, g, r2, proof)  # type: ignore[arg-type]
        assert not verify_consistency(5, 9, r1, g, proof)  # type: ignore[arg-type]


def test_consistency_proof_bad_old_size() -> None:
    for fn, data in (
        (consistency_proof, LEAVES[:5]),
        (consistency_proof_from_hashes, LEAF_HASHES[:5]),
    ):
        with pytest.raises(ValueError, match=r"old_size 6\b"):
            fn(6, data)
        with pytest.raises(ValueError, match=r"old_size -1\b"):
            fn(-1, data)
        with pytest.raises(ValueError, match=r"old_size 1\b"):
            fn(1, [])
        with pytest.raises(TypeError, match="old_size"):
            fn(2.0, data)  # type: ignore[arg-type]
        assert fn(0, data) == []
        assert fn(5, data) == []
        assert fn(0, []) == []


@_fast
@given(leaves=_leaves, data=st.data())
def test_prop_consistency_roundtrip(leaves: list[bytes], data: st.DataObject) -> None:
    n = len(leaves)
    m = data.draw(st.integers(0, n), label="old_size")
    proof = consistency_proof(m, leaves)
    assert proof == ref_proof(m, leaves)
    old_root, new_root = root(leaves[:m]), root(leaves)
    assert verify_consistency(m, n, old_root, new_root, proof)
    if proof:
        j = data.draw(st.integers(0, len(proof) - 1), label="element")
        pos = data.draw(st.integers(0, 31), label="byte")
        bit = data.draw(st.integers(0, 7), label="bit")
        bad = list(proof)
        bad[j] = _flip(proof[j], pos, 1 << bit)
        assert not verify_consistency(m, n, old_root, new_root, bad)
        assert not verify_consistency(m, n, old_root, new_root, proof[:-1])
        assert not verify_consistency(m, n, old_root, new_root, proof + [proof[0]])


@_fast
@given(
    old=st.integers(-5, 300),
    new=st.integers(-5, 300),
    proof=st.lists(
        st.one_of(st.binary(min_size=32, max_size=32), st.binary(max_size=40)), max_size=12
    ),
    r1=st.one_of(st.binary(min_size=32, max_size=32), st.binary(max_size=40)),
    r2=st.one_of(st.binary(min_size=32, max_size=32), st.binary(max_size=40)),
)
def test_prop_verify_consistency_never_raises_and_rejects_random(
    old: int, new: int, proof: list[bytes], r1: bytes, r2: bytes
) -> None:
    ok = verify_consistency(old, new, r1, r2, proof)
    assert ok in (True, False)
    if ok:
        # Random data can only "verify" in the trivial cases.
        assert proof == [] and (old == new or old == 0)
