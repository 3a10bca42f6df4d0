"""Checks of what replicas show each other as proof, and the new view's plan from them.

Pure functions over signed messages, the consensus config and the replica keys: a commit
certificate (a block was decided), a prepared certificate (a proposal may have been decided
somewhere), a view change carrying them, and what a new primary must propose from a quorum of
view changes, which every replica recomputes to check the primary.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from hub.consensus.config import GENESIS
from hub.consensus.keys import ReplicaKeys, verify_message
from hub.consensus.membership import Membership
from hub.consensus.messages import (
    Commit,
    CommitCertificate,
    PrePrepare,
    Prepare,
    PreparedCertificate,
    Proposal,
    Signed,
    ViewChange,
)


Members = Callable[[int], "Membership | None"]  # height -> who votes there (None: not known yet)


def valid_commit_certificate(m: Membership | None, keys: ReplicaKeys, c: CommitCertificate) -> bool:
    """A quorum of distinct consensus replicas (of `m`, the membership at its height) signed
    commits for this proposal, in one view."""
    if m is None:
        return False
    d = c.proposal.digest
    signers = set()
    view = None
    for s in c.commits:
        b = s.body
        if not (isinstance(b, Commit) and b.height == c.proposal.height and b.digest == d):
            return False
        if view is None:
            view = b.view
        if b.view != view or s.replica in signers or not m.votes(s.replica):
            return False
        if not verify_message(keys, s):
            return False
        signers.add(s.replica)
    return len(signers) >= m.quorum


def valid_last_commit(m: Membership | None, keys: ReplicaKeys, p: Proposal) -> bool:
    """The votes a proposal carries for the block before it: commits for that block's digest
    (`p.prev`) from a quorum of distinct consensus replicas of its height (any views: a block
    may be committed in the view it was proposed in and the next). None at height 1."""
    if p.height == 1:
        return not p.last_commit
    if m is None:
        return False
    signers = set()
    for s in p.last_commit:
        b = s.body
        if not (isinstance(b, Commit) and b.height == p.height - 1 and b.digest == p.prev):
            return False
        if s.replica in signers or not m.votes(s.replica) or not verify_message(keys, s):
            return False
        signers.add(s.replica)
    return len(signers) >= m.quorum

def valid_prepared_certificate(m: Membership | None, keys: ReplicaKeys, c: PreparedCertificate) -> bool:
    """The view's primary proposed it and quorum - 1 other distinct consensus replicas (of `m`,
    the membership at its height) prepared it."""
    pp = c.pre_prepare
    if m is None or not isinstance(pp.body, PrePrepare) or pp.replica != m.primary(pp.body.view):
        return False
    if pp.body.proposal.view > pp.body.view:
        return False
    if not verify_message(keys, pp):
        return False
    view, p = pp.body.view, pp.body.proposal
    signers = set()
    for s in c.prepares:
        b = s.body
        if not (isinstance(b, Prepare) and b.view == view and b.height == p.height and b.digest == p.digest):
            return False
        if s.replica in signers or s.replica == pp.replica or not m.votes(s.replica) or not verify_message(keys, s):
            return False
        signers.add(s.replica)
    return len(signers) >= m.quorum - 1

def valid_view_change(members: Members, keys: ReplicaKeys, m: Signed) -> bool:
    """A signed view change whose certificates hold (each checked with the membership at its
    height) and whose prepared proposal follows its committed one, from a view before the one
    it asks for."""
    vc = m.body
    if not isinstance(vc, ViewChange) or not verify_message(keys, m):
        return False
    if vc.committed is not None and not valid_commit_certificate(
        members(vc.committed.proposal.height), keys, vc.committed
    ):
        return False
    if vc.prepared is not None:
        height = vc.prepared.pre_prepare.body.proposal.height if isinstance(vc.prepared.pre_prepare.body, PrePrepare) else 0
        if not valid_prepared_certificate(members(height), keys, vc.prepared):
            return False
        base = vc.committed.proposal.height if vc.committed else 0
        pp = vc.prepared.pre_prepare.body
        if pp.proposal.height != base + 1 or pp.view >= vc.view:
            return False
    return True


def new_view_plan(view_changes: Iterable[Signed]) -> tuple[CommitCertificate | None, Proposal | None]:
    """From a quorum of view changes: the highest commit certificate, and the proposal the new
    view must carry for the height after it (the prepared one of the highest view), if any."""
    vcs = [s.body for s in view_changes]
    top = max((vc.committed for vc in vcs if vc.committed is not None),
              key=lambda c: c.proposal.height, default=None)
    h = top_height(top)
    prepared = [vc.prepared for vc in vcs
                if vc.prepared is not None and vc.prepared.pre_prepare.body.proposal.height == h + 1]
    if not prepared:
        return top, None
    best = max(prepared, key=lambda c: (c.pre_prepare.body.view, c.pre_prepare.body.proposal.digest))
    return top, best.pre_prepare.body.proposal


def top_height(top: CommitCertificate | None) -> int:
    return top.proposal.height if top is not None else 0


def top_digest(top: CommitCertificate | None) -> bytes:
    return top.proposal.digest if top is not None else GENESIS
