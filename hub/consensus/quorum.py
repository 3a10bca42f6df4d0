"""A block's commit certificate in the form that travels with the block: checked against the
block header alone, offline, with the replicas' public keys and the quorum from a trust file.

A `CommitCertificate` holds the whole proposal (every batch digest). What a verifier needs is
less: the commit votes sign `Commit(view, height, digest)`, and `digest` is
`proposal_digest(height, prev, sha256(header), contents_digest)` (hub/consensus/messages.py,
the contents being the proposal's view, batch list and the votes it carries for the block
before), so the header plus `view`, `prev` and `contents_digest` and the signatures suffice.
The header's own `batches_root` then proves which batches the block holds; backups refused to vote for a
header that does not match its batches, and a quorum holds f+1 correct replicas.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from hub.consensus.messages import Commit, CommitCertificate, contents_digest, encode, proposal_digest
from protos.signing import PublicKey, verify_signature


class QuorumError(ValueError):
    """A commit quorum that does not prove its block; the message says which signature or count."""


@dataclass(frozen=True)
class BlockQuorum:
    view: int
    prev: bytes
    contents_digest: bytes
    commits: tuple[tuple[str, bytes], ...]  # (replica key id, signature), sorted by key id


def block_quorum(cert: CommitCertificate, key_ids: Mapping[int, str]) -> BlockQuorum:
    """The travelling form of a commit certificate (`key_ids`: replica index -> key id)."""
    p = cert.proposal
    views = {s.body.view for s in cert.commits}  # type: ignore[union-attr]
    if len(views) != 1:
        raise QuorumError(f"block {p.height}: a commit certificate must come from one view, has {sorted(views)}")
    commits = sorted((key_ids[s.replica], s.signature) for s in cert.commits)
    return BlockQuorum(views.pop(), p.prev, contents_digest(p.view, p.batches, p.last_commit), tuple(commits))


def commit_bytes(header: bytes, height: int, view: int, prev: bytes, contents: bytes) -> bytes:
    """The bytes each replica's commit vote signed for this block (`contents`: the proposal's
    contents digest)."""
    digest = proposal_digest(height, prev, hashlib.sha256(header).digest(), contents)
    return encode(Commit(view, height, digest))


def check_block_quorum(
    header: bytes, height: int, q: BlockQuorum, keys: Mapping[str, PublicKey], quorum: int,
) -> None:
    """Raise QuorumError unless at least `quorum` distinct trusted replica keys signed a commit
    for this header. `keys`: key id -> public key of the chain's replicas."""
    signed = commit_bytes(header, height, q.view, q.prev, q.contents_digest)
    signers: set[str] = set()
    for i, (kid, signature) in enumerate(q.commits):
        key = keys.get(kid)
        if key is None:
            raise QuorumError(f"commit {i}: key {kid} is not a replica of this chain in the trust file")
        if kid in signers:
            raise QuorumError(f"commit {i}: key {kid} voted twice")
        if not verify_signature(key, signature, signed):
            raise QuorumError(f"commit {i}: the vote by key {kid} on block {height} does not verify")
        signers.add(kid)
    if len(signers) < quorum:
        raise QuorumError(f"block {height}: {len(signers)} valid commit votes, the trust file requires {quorum}")
