"""Consensus and reserve replicas, the points each earns or loses, and the reconfiguration that
swaps a poor consensus replica for the best reserve at a checkpoint.

The improved PBFT of the seeds divides a substation's replicas into consensus replicas (they
propose and vote; n = 3f+1 of them) and reserve replicas (they follow the chain and can be
promoted without restarting anything), adds and deducts points per behaviour, and adjusts the
two sets as the points are settled. Everything here is a pure function of decided proposals,
so every replica computes the same membership: the reconfiguration is agreed on chain because
the facts it rests on are.

Points, per decided block at height h (proposed in view v):
* +1 to every replica whose commit vote for block h-1 the proposal carries (`last_commit`: the
  votes the primary gathered, checked by every backup): it took part;
* +1 to the primary of view v: it proposed a block that was decided;
* -3 to the primary of every view from the previous block's view up to v-1: each of those views
  ended in a view change without deciding this height (a silent, slow, or lying primary).

At every checkpoint height (a multiple of the checkpoint interval K) the epoch's points are
settled: the consensus replica with the fewest points (ties: the higher id) is swapped with the
best reserve if it ended the epoch below zero (it failed as primary more than it did anything
else) or took part in fewer than a quarter of the epoch's blocks (crashed, cut off, or too slow
to be counted); the next epoch starts at height h+1 with fresh points. A reserve's rank is its
points when it was last active (0 if never), ties broken by its place in the reserve queue,
where a demoted replica joins at the end: it comes back only after the others.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

PARTICIPATED = 1
PROPOSED = 1
FAILED_VIEW = -3


@dataclass(frozen=True)
class Membership:
    """Who votes from `start` (a height) on: `active` in order (the primary of view v is
    active[v mod n]), `reserve` in promotion order."""

    epoch: int
    start: int
    active: tuple[int, ...]
    reserve: tuple[int, ...] = ()

    @property
    def n(self) -> int:
        return len(self.active)

    @property
    def f(self) -> int:
        return (self.n - 1) // 3

    @property
    def quorum(self) -> int:
        """ceil((n + f + 1) / 2): any two quorums share a correct replica; 2f+1 when n = 3f+1."""
        return (self.n + self.f + 2) // 2

    def primary(self, view: int) -> int:
        return self.active[view % self.n]

    def votes(self, replica: int) -> bool:
        return replica in self.active


@dataclass
class Scores:
    """Points and participation of the current epoch, and the standing each replica keeps from
    when it was last active (what ranks the reserves)."""

    points: dict[int, int] = field(default_factory=dict)
    took_part: dict[int, int] = field(default_factory=dict)
    blocks: int = 0
    standing: dict[int, int] = field(default_factory=dict)

    def add(self, replica: int, delta: int) -> None:
        self.points[replica] = self.points.get(replica, 0) + delta


def score_block(
    scores: Scores, m: Membership, view: int, prev_view: int | None, participants: Iterable[int],
) -> None:
    """Settle one decided block's points: proposed in `view`, the previous block proposed in
    `prev_view` (None at height 1), `participants` the replicas whose votes for the previous
    block it carries."""
    scores.blocks += 1
    for r in sorted(set(participants)):
        if m.votes(r):
            scores.add(r, PARTICIPATED)
            scores.took_part[r] = scores.took_part.get(r, 0) + 1
    scores.add(m.primary(view), PROPOSED)
    if prev_view is not None:
        for failed in range(prev_view, view):
            scores.add(m.primary(failed), FAILED_VIEW)


def next_membership(m: Membership, scores: Scores, start: int) -> Membership:
    """The membership from height `start` on, the epoch's points settled (see the module doc)."""
    points = {r: scores.points.get(r, 0) for r in m.active}
    took_part = {r: scores.took_part.get(r, 0) for r in m.active}
    blocks = scores.blocks
    for r, p in points.items():
        scores.standing[r] = p
    scores.points, scores.took_part, scores.blocks = {}, {}, 0
    if not m.reserve:
        return Membership(m.epoch + 1, start, m.active, m.reserve)
    worst = min(m.active, key=lambda r: (points[r], -r))
    if not (points[worst] < 0 or 4 * took_part[worst] < blocks):
        return Membership(m.epoch + 1, start, m.active, m.reserve)
    best = max(m.reserve, key=lambda r: (scores.standing.get(r, 0), -m.reserve.index(r)))
    active = tuple(best if r == worst else r for r in m.active)
    reserve = tuple(r for r in m.reserve if r != best) + (worst,)
    return Membership(m.epoch + 1, start, active, reserve)
