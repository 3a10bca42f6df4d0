"""RFC 6962 / RFC 9162 Merkle trees for gridtrace's append-only evidence log.

The hub appends every sealed batch of meter readings to a transparency log.
This module is the single definition of how that log is hashed, so that
anyone holding a signed tree head can check offline that

* a given entry is in the log (inclusion proof), and
* a later tree head extends an earlier one without rewriting history
  (consistency proof).

Hashing follows RFC 6962 section 2.1 (unchanged in RFC 9162 section 2.1)
exactly:

* leaf hash: ``SHA-256(0x00 || entry)``
* interior node hash: ``SHA-256(0x01 || left || right)``
* a tree of ``n > 1`` leaves is split at ``k``, the largest power of two
  strictly smaller than ``n``; trees of any size are allowed;
* the root of the empty tree is ``SHA-256(b"")``.

Proofs are interoperable with other RFC 6962 implementations (Certificate
Transparency, Go ``transparency-dev/merkle``).  Proof elements are ordered
from the leaf side up to the root, as in the RFCs.

Functions come in two flavours: the ``*_from_hashes`` functions take leaf
*hashes* (what the hub stores) and hold the one definition of each
algorithm; :func:`root`, :func:`inclusion_proof` and
:func:`consistency_proof` take raw entries and are thin wrappers over them.

Cost: computing a root, an inclusion proof or a consistency proof for a
tree of ``n`` leaves takes fewer than ``n`` node hashes and ``O(log n)``
extra memory; nothing is hashed twice and nothing recurses.  Verification
is ``O(log n)``.  :class:`CompactRange` keeps the ``O(log n)`` frontier of
an append-only log so the current root is available without rehashing the
log.

Verifiers (:func:`verify_inclusion`, :func:`verify_consistency`) never
raise: any malformed input simply fails verification (returns ``False``).
Proof *builders* raise :class:`ValueError` for out-of-range arguments and
:class:`TypeError` for arguments of the wrong type.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = [
    "HASH_SIZE",
    "EMPTY_ROOT",
    "leaf_hash",
    "node_hash",
    "root",
    "root_from_hashes",
    "inclusion_proof",
    "inclusion_proof_from_hashes",
    "consistency_proof",
    "consistency_proof_from_hashes",
    "verify_inclusion",
    "verify_consistency",
    "CompactRange",
]

#: Length in bytes of every hash in the tree (SHA-256).
HASH_SIZE: int = 32

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"
_sha256 = hashlib.sha256

try:  # built by setup.py where a compiler and OpenSSL's headers are at hand; optional
    from protos import _merkle_native as _native
except ImportError:  # pragma: no cover - depends on the build
    _native = None

NATIVE = _native is not None

#: Root hash of the empty tree: SHA-256 of the empty string.
EMPTY_ROOT: bytes = _sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    """Return the RFC 6962 leaf hash ``SHA-256(0x00 || data)``."""
    return _sha256(_LEAF_PREFIX + bytes(data)).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Return the RFC 6962 interior node hash ``SHA-256(0x01 || left || right)``."""
    return _sha256(_NODE_PREFIX + bytes(left) + bytes(right)).digest()


# ---------------------------------------------------------------------------
# Internal helpers
# ---------------------------------------------------------------------------


def _split_point(n: int) -> int:
    """Largest power of two strictly smaller than ``n`` (requires ``n >= 2``)."""
    return 1 << ((n - 1).bit_length() - 1)


def _check_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}: {value!r}")
    return value


def _subtree_root(hashes: Sequence[bytes], lo: int, hi: int) -> bytes:
    """RFC 6962 Merkle tree hash of the leaf hashes ``hashes[lo:hi]`` (``lo < hi``).

    Streams the leaves through a compact range (stack of perfect-subtree
    roots), so it performs exactly ``hi - lo - 1`` node hashes and keeps
    ``O(log(hi - lo))`` hashes in memory.  Folding the stack right to left at
    the end yields the RFC tree: with leaves 0..n-1 the stack holds the
    perfect subtrees given by the binary decomposition of ``n``, which are
    exactly the left children met when descending the rightmost path of the
    RFC tree.
    """
    sha = _sha256
    prefix = _NODE_PREFIX
    stack: list[bytes] = []
    push = stack.append
    pop = stack.pop
    count = 0
    for i in range(lo, hi):
        h = hashes[i]
        # Merge once per trailing one-bit of the number of leaves seen so far.
        c = count
        while c & 1:
            h = sha(prefix + pop() + h).digest()
            c >>= 1
        push(h)
        count += 1
    acc = pop()
    while stack:
        acc = sha(prefix + pop() + acc).digest()
    return acc


# ---------------------------------------------------------------------------
# Roots
# ---------------------------------------------------------------------------


def root_from_hashes(leaf_hashes: Sequence[bytes]) -> bytes:
    """Return the Merkle tree hash (root) of a tree given its leaf hashes.

    The empty tree's root is :data:`EMPTY_ROOT`.  ``O(n)`` hashing and memory.
    """
    if not leaf_hashes:
        return EMPTY_ROOT
    # Level by level: pairing neighbours and carrying an odd last node up unchanged gives
    # the RFC tree (its left subtrees are the largest powers of two), with one comprehension
    # per level instead of a Python step per node: the hub computes this for every batch.
    sha = _sha256
    prefix = _NODE_PREFIX
    level = list(leaf_hashes)
    while len(level) > 1:
        pairs = iter(level)
        up = [sha(prefix + left + right).digest() for left, right in zip(pairs, pairs)]
        if len(level) & 1:
            up.append(level[-1])
        level = up
    return level[0]


def root(leaves: Sequence[bytes]) -> bytes:
    """Return the Merkle tree hash (root) of a tree of raw entries."""
    # The hub's hot loop (one leaf per reading): copying a hash state that has absorbed the
    # prefix costs less than a call to leaf_hash and the prefix + data copy it makes.
    prefixed = _sha256(_LEAF_PREFIX)
    hashes = []
    push = hashes.append
    for d in leaves:
        h = prefixed.copy()
        h.update(d)
        push(h.digest())
    return root_from_hashes(hashes)


def spliced_leaf_hashes(rows: bytes | memoryview, width: int, cut: int, insert: bytes) -> bytes:
    """The leaf hashes of entries given as equal-width rows from which the same `insert`
    was cut out at offset `cut` (entry i = row[:cut] + insert + row[cut:]), as one string
    of 32-byte hashes. Packed readings (protos.entrypack) are such rows."""
    if _native is not None:
        return _native.spliced_leaf_hashes(rows, width, cut, insert)
    view = memoryview(rows).cast("B")
    if width <= 0 or len(view) % width or not 0 <= cut <= width:
        raise ValueError(f"spliced_leaf_hashes: {len(view)} bytes are not rows of {width} bytes cut at {cut}")
    out = []
    for a in range(0, len(view), width):
        h = _sha256(_LEAF_PREFIX)
        h.update(view[a : a + cut])
        h.update(insert)
        h.update(view[a + cut : a + width])
        out.append(h.digest())
    return b"".join(out)


def root_from_hash_string(hashes: bytes) -> bytes:
    """`root_from_hashes` over leaf hashes given as one string of 32-byte hashes."""
    if len(hashes) % 32:
        raise ValueError(f"{len(hashes)} bytes are not a whole number of 32-byte hashes")
    if not hashes:
        return EMPTY_ROOT
    if _native is not None:
        return _native.root(hashes)
    return root_from_hashes([hashes[i : i + 32] for i in range(0, len(hashes), 32)])


# ---------------------------------------------------------------------------
# Inclusion proofs (RFC 6962 2.1.1 PATH / RFC 9162 2.1.3.1)
# ---------------------------------------------------------------------------


def inclusion_proof_from_hashes(index: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    """Return the audit path for leaf ``index`` in the tree of ``leaf_hashes``.

    The path is ordered from the sibling of the leaf up to the sibling just
    below the root (RFC 6962 ``PATH(m, D[n])``).  Each sibling subtree is
    hashed exactly once, so the total cost is fewer than ``n`` node hashes.

    Raises ValueError if ``index`` is not in ``[0, len(leaf_hashes))``.
    """
    _check_int("index", index)
    n = len(leaf_hashes)
    if not 0 <= index < n:
        raise ValueError(f"index {index} out of range for tree of size {n}")
    # Walk down from the root, recording the sibling subtree at each split;
    # the RFC path lists them bottom-up, so reverse at the end.
    path: list[bytes] = []
    lo, hi = 0, n
    while hi - lo > 1:
        mid = lo + _split_point(hi - lo)
        if index < mid:
            path.append(_subtree_root(leaf_hashes, mid, hi))
            hi = mid
        else:
            path.append(_subtree_root(leaf_hashes, lo, mid))
            lo = mid
    path.reverse()
    return path


def inclusion_proof(index: int, leaves: Sequence[bytes]) -> list[bytes]:
    """Return the audit path for entry ``index`` in the tree of raw ``leaves``."""
    _check_int("index", index)
    n = len(leaves)
    if not 0 <= index < n:
        raise ValueError(f"index {index} out of range for tree of size {n}")
    return inclusion_proof_from_hashes(index, [leaf_hash(d) for d in leaves])


def _is_hash(value: object) -> bool:
    return isinstance(value, (bytes, bytearray)) and len(value) == HASH_SIZE


def _as_proof(proof: object) -> list[bytes] | None:
    """Return ``proof`` as a list of 32-byte hashes, or None if malformed."""
    if isinstance(proof, (bytes, bytearray, str, memoryview)):
        return None
    try:
        items = list(proof)  # type: ignore[call-overload]
    except TypeError:
        return None
    out: list[bytes] = []
    for item in items:
        if not _is_hash(item):
            return None
        out.append(bytes(item))
    return out


def _is_size(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def verify_inclusion(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> bool:
    """Check an inclusion proof (RFC 9162 section 2.1.3.2).

    Returns True iff ``proof`` shows that ``leaf_hash`` is the leaf at
    position ``index`` of the tree of ``size`` leaves whose root is ``root``.
    Never raises: returns False for ``index >= size``, negative or non-int
    numbers, hashes that are not 32 bytes, proofs of the wrong length, etc.
    """
    try:
        if not (_is_size(index) and _is_size(size)) or index >= size:
            return False
        if not (_is_hash(leaf_hash) and _is_hash(root)):
            return False
        path = _as_proof(proof)
        if path is None:
            return False
        sha = _sha256
        prefix = _NODE_PREFIX
        fn = index
        sn = size - 1
        r = bytes(leaf_hash)
        for p in path:
            if sn == 0:
                return False
            if fn & 1 or fn == sn:
                r = sha(prefix + p + r).digest()
                while fn != 0 and not fn & 1:
                    fn >>= 1
                    sn >>= 1
            else:
                r = sha(prefix + r + p).digest()
            fn >>= 1
            sn >>= 1
        return sn == 0 and r == bytes(root)
    except Exception:  # pragma: no cover - defensive: verifiers never raise
        return False


# ---------------------------------------------------------------------------
# Consistency proofs (RFC 6962 2.1.2 SUBPROOF / RFC 9162 2.1.4.1)
# ---------------------------------------------------------------------------


def consistency_proof_from_hashes(old_size: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    """Return the consistency proof from the first ``old_size`` leaves to all of ``leaf_hashes``.

    This is RFC 6962 ``PROOF(m, D[n]) = SUBPROOF(m, D[n], true)`` with
    ``m = old_size`` and ``n = len(leaf_hashes)``.  The proof is empty when
    ``old_size == n`` or ``old_size == 0`` (the empty tree is consistent with
    every tree).  Each subtree in the proof is hashed exactly once, so the
    total cost is fewer than ``n`` node hashes.

    Raises ValueError if ``old_size < 0`` or ``old_size > len(leaf_hashes)``.
    """
    _check_int("old_size", old_size)
    n = len(leaf_hashes)
    if old_size < 0:
        raise ValueError(f"old_size {old_size} must not be negative")
    if old_size > n:
        raise ValueError(f"old_size {old_size} exceeds new tree size {n}")
    if old_size == 0 or old_size == n:
        return []
    # Unrolled SUBPROOF: descend while m differs from the current subtree
    # size, collecting top-down; the RFC order is bottom-up, so reverse.
    proof: list[bytes] = []
    lo, hi, m = 0, n, old_size
    whole_old_tree = True  # the RFC's flag "b"
    while m != hi - lo:
        mid = lo + _split_point(hi - lo)
        if m <= mid - lo:
            proof.append(_subtree_root(leaf_hashes, mid, hi))
            hi = mid
        else:
            proof.append(_subtree_root(leaf_hashes, lo, mid))
            m -= mid - lo
            lo = mid
            whole_old_tree = False
    if not whole_old_tree:
        proof.append(_subtree_root(leaf_hashes, lo, hi))
    proof.reverse()
    return proof


def consistency_proof(old_size: int, leaves: Sequence[bytes]) -> list[bytes]:
    """Return the consistency proof from the first ``old_size`` raw entries to all of ``leaves``."""
    _check_int("old_size", old_size)
    n = len(leaves)
    if old_size < 0:
        raise ValueError(f"old_size {old_size} must not be negative")
    if old_size > n:
        raise ValueError(f"old_size {old_size} exceeds new tree size {n}")
    return consistency_proof_from_hashes(old_size, [leaf_hash(d) for d in leaves])


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> bool:
    """Check a consistency proof (RFC 9162 section 2.1.4.2).

    Returns True iff ``proof`` shows that the tree of ``old_size`` leaves
    with root ``old_root`` is a prefix of the tree of ``new_size`` leaves
    with root ``new_root``.  Edge cases:

    * ``old_size == new_size``: only an empty proof, and only if the roots
      are equal;
    * ``old_size == 0``: only an empty proof, and only if ``old_root`` is
      :data:`EMPTY_ROOT` (any ``new_root`` is consistent with it).

    Never raises: returns False for ``old_size > new_size``, negative or
    non-int sizes, hashes that are not 32 bytes, malformed proofs, etc.
    """
    try:
        if not (_is_size(old_size) and _is_size(new_size)) or old_size > new_size:
            return False
        if not (_is_hash(old_root) and _is_hash(new_root)):
            return False
        path = _as_proof(proof)
        if path is None:
            return False
        first_hash = bytes(old_root)
        second_hash = bytes(new_root)
        if old_size == new_size:
            return not path and first_hash == second_hash
        if old_size == 0:
            return not path and first_hash == EMPTY_ROOT
        if not path:
            return False
        # Step 1: if first is an exact power of 2, prepend first_hash.
        if old_size & (old_size - 1) == 0:
            path.insert(0, first_hash)
        # Step 2.
        fn = old_size - 1
        sn = new_size - 1
        # Step 3: strip the common trailing one-bits of fn.
        while fn & 1:
            fn >>= 1
            sn >>= 1
        # Step 4.
        fr = sr = path[0]
        sha = _sha256
        prefix = _NODE_PREFIX
        # Step 5.
        for c in path[1:]:
            if sn == 0:
                return False
            if fn & 1 or fn == sn:
                fr = sha(prefix + c + fr).digest()
                sr = sha(prefix + c + sr).digest()
                while fn != 0 and not fn & 1:
                    fn >>= 1
                    sn >>= 1
            else:
                sr = sha(prefix + sr + c).digest()
            fn >>= 1
            sn >>= 1
        # Step 6.
        return fr == first_hash and sr == second_hash and sn == 0
    except Exception:  # pragma: no cover - defensive: verifiers never raise
        return False


# ---------------------------------------------------------------------------
# Compact range (Merkle frontier) for an append-only log
# ---------------------------------------------------------------------------


class CompactRange:
    """Merkle frontier of an append-only log: O(log n) state, O(1) amortised appends.

    Holds the roots of the perfect subtrees given by the binary
    decomposition of :attr:`size`, largest (leftmost) first -- one hash per
    set bit of ``size``.  :meth:`root` equals :func:`root_from_hashes` of
    every leaf hash appended so far, computed in ``O(log n)``.

    Persist with :meth:`to_json` / :meth:`from_json`::

        {"size": 5, "hashes": ["<hex of subtree over leaves 0-3>", "<hex of leaf 4>"]}
    """

    __slots__ = ("_size", "_hashes")

    def __init__(self) -> None:
        self._size: int = 0
        self._hashes: list[bytes] = []

    @property
    def size(self) -> int:
        """Number of leaves appended so far."""
        return self._size

    @property
    def hashes(self) -> tuple[bytes, ...]:
        """Perfect-subtree roots, largest (leftmost) first."""
        return tuple(self._hashes)

    def append(self, leaf_hash: bytes) -> None:
        """Append one leaf *hash* (see :func:`leaf_hash`) to the range."""
        if not _is_hash(leaf_hash):
            raise ValueError(
                f"leaf_hash must be {HASH_SIZE} bytes, got {leaf_hash!r:.80}"
            )
        h = bytes(leaf_hash)
        stack = self._hashes
        c = self._size
        while c & 1:
            h = _sha256(_NODE_PREFIX + stack.pop() + h).digest()
            c >>= 1
        stack.append(h)
        self._size += 1

    def extend(self, leaf_hashes: Iterable[bytes]) -> None:
        """Append several leaf hashes in order."""
        for h in leaf_hashes:
            self.append(h)

    def root(self) -> bytes:
        """Root hash of the tree of all appended leaves (EMPTY_ROOT when empty)."""
        stack = self._hashes
        if not stack:
            return EMPTY_ROOT
        acc = stack[-1]
        for h in reversed(stack[:-1]):
            acc = _sha256(_NODE_PREFIX + h + acc).digest()
        return acc

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict: ``{"size": int, "hashes": [hex, ...]}``."""
        return {"size": self._size, "hashes": [h.hex() for h in self._hashes]}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> CompactRange:
        """Rebuild a range from :meth:`to_json` output.

        Raises ValueError if the dict is malformed (missing keys, bad hex,
        hashes of the wrong length, or a hash count that does not match the
        number of set bits of ``size``).
        """
        if not isinstance(d, dict):
            raise ValueError(f"d must be a dict, got {type(d).__name__}")
        try:
            size = d["size"]
            hex_hashes = d["hashes"]
        except KeyError as exc:
            raise ValueError(f"d is missing key {exc.args[0]!r}") from None
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ValueError(f"size must be a non-negative int, got {size!r}")
        if not isinstance(hex_hashes, list):
            raise ValueError(f"hashes must be a list, got {type(hex_hashes).__name__}")
        expected = size.bit_count()
        if len(hex_hashes) != expected:
            raise ValueError(
                f"hashes has {len(hex_hashes)} entries, size {size} needs {expected}"
            )
        decoded: list[bytes] = []
        for i, x in enumerate(hex_hashes):
            try:
                h = bytes.fromhex(x)
            except (TypeError, ValueError):
                raise ValueError(f"hashes[{i}] is not a hex string: {x!r:.80}") from None
            if len(h) != HASH_SIZE:
                raise ValueError(f"hashes[{i}] is {len(h)} bytes, expected {HASH_SIZE}")
            decoded.append(h)
        cr = cls()
        cr._size = size
        cr._hashes = decoded
        return cr

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CompactRange):
            return NotImplemented
        return self._size == other._size and self._hashes == other._hashes

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"CompactRange(size={self._size}, root={self.root().hex()})"
