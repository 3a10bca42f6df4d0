"""Tests for protos.merkle (RFC 6962 / RFC 9162 Merkle trees): the compact range (frontier hashes, roots, JSON form)."""

from __future__ import annotations

import json

import pytest
from merklefixtures import (
    COMPACT_TREES,
    LEAF_HASHES,
    LEAF_INPUTS,
    NODE_HASHES,
    ROOT_HASHES,
    ROOTS,
)

from protos.merkle import (
    EMPTY_ROOT,
    CompactRange,
    leaf_hash,
    root_from_hashes,
)


@pytest.mark.parametrize("size", range(len(COMPACT_TREES)))
def test_known_compact_trees(size: int) -> None:
    cr = CompactRange()
    for x in LEAF_INPUTS[:size]:
        cr.append(leaf_hash(x))
    assert cr.size == size
    assert [h.hex() for h in cr.hashes] == [NODE_HASHES[lv][i] for lv, i in COMPACT_TREES[size]]
    assert cr.root().hex() == ROOT_HASHES[size]


def test_compact_range_matches_root_up_to_300() -> None:
    hashes = [leaf_hash(b"cr-%d" % i) for i in range(300)]
    cr = CompactRange()
    assert cr.size == 0
    assert cr.root() == root_from_hashes([]) == EMPTY_ROOT
    assert CompactRange.from_json(json.loads(json.dumps(cr.to_json()))) == cr
    for n in range(1, 301):
        cr.append(hashes[n - 1])
        assert cr.size == n
        assert len(cr.hashes) == bin(n).count("1")
        expected = root_from_hashes(hashes[:n])
        assert cr.root() == expected, n
        restored = CompactRange.from_json(json.loads(json.dumps(cr.to_json())))
        assert restored == cr
        assert restored.size == n
        assert restored.root() == expected
    # A restored range keeps working as an append-only log.
    restored = CompactRange.from_json(cr.to_json())
    extra = [leaf_hash(b"more-%d" % i) for i in range(37)]
    restored.extend(extra)
    assert restored.root() == root_from_hashes(hashes + extra)
    assert restored.size == 337


def test_compact_range_json_shape() -> None:
    cr = CompactRange()
    cr.extend(LEAF_HASHES[:5])
    d = cr.to_json()
    assert d == {"size": 5, "hashes": [h.hex() for h in cr.hashes]}
    assert d["hashes"][0] == ROOTS[4].hex()
    assert d["hashes"][1] == LEAF_HASHES[4].hex()


@pytest.mark.parametrize(
    "bad",
    [
        None,
        {},
        {"size": 1},
        {"hashes": []},
        {"size": -1, "hashes": []},
        {"size": True, "hashes": [EMPTY_ROOT.hex()]},
        {"size": "1", "hashes": [EMPTY_ROOT.hex()]},
        {"size": 1, "hashes": []},
        {"size": 3, "hashes": [EMPTY_ROOT.hex()]},
        {"size": 1, "hashes": [EMPTY_ROOT.hex(), EMPTY_ROOT.hex()]},
        {"size": 1, "hashes": ["zz" * 32]},
        {"size": 1, "hashes": [EMPTY_ROOT.hex()[:-2]]},
        {"size": 1, "hashes": [None]},
        {"size": 1, "hashes": EMPTY_ROOT.hex()},
    ],
)
def test_compact_range_from_json_rejects_malformed(bad: object) -> None:
    with pytest.raises(ValueError):
        CompactRange.from_json(bad)  # type: ignore[arg-type]


def test_compact_range_rejects_bad_leaf_hash() -> None:
    cr = CompactRange()
    with pytest.raises(ValueError, match="leaf_hash"):
        cr.append(b"short")
    assert cr.size == 0
