"""Consensus and reserve replicas: points per behaviour and the swap at a checkpoint (pure)."""

from __future__ import annotations

from hub.consensus.membership import Membership, Scores, next_membership, score_block

M = Membership(epoch=0, start=1, active=(0, 1, 2, 3), reserve=(4, 5))


def _epoch(scores: Scores, blocks: int, participants=(0, 1, 2, 3), view: int = 0) -> None:
    prev = None
    for _ in range(blocks):
        score_block(scores, M, view, prev, participants)
        prev = view


def test_quorum_and_primary_follow_the_active_set() -> None:
    assert (M.n, M.f, M.quorum) == (4, 1, 3)
    assert [M.primary(v) for v in range(5)] == [0, 1, 2, 3, 0]
    seven = Membership(0, 1, tuple(range(7)))
    assert (seven.f, seven.quorum) == (2, 5)
    assert not M.votes(4)


def test_a_healthy_epoch_changes_nothing() -> None:
    s = Scores()
    _epoch(s, 10)
    assert next_membership(M, s, 11) == Membership(1, 11, M.active, M.reserve)


def test_a_replica_that_took_no_part_is_swapped_for_the_best_reserve() -> None:
    s = Scores(standing={5: 3})  # reserve 5 did well when it was last active; 4 never was
    _epoch(s, 10, participants=(0, 1, 2))  # replica 3 is down
    m = next_membership(M, s, 11)
    assert m.active == (0, 1, 2, 5) and m.reserve == (4, 3) and m.start == 11 and m.epoch == 1
    assert s.points == {} and s.standing[3] == 0  # a fresh epoch; 3 ranks by its poor standing


def test_failed_views_cost_their_primaries_points() -> None:
    s = Scores()
    score_block(s, M, 0, None, ())
    score_block(s, M, 3, 0, (0, 1, 2, 3))  # views 0, 1, 2 ended without a block at this height
    assert s.points == {0: -1, 1: -2, 2: -2, 3: 2}
    m = next_membership(M, s, 3)
    assert m.active == (0, 1, 4, 3) and m.reserve == (5, 2)  # the lowest (ties: the higher id) goes


def test_reserves_never_score_and_a_demoted_replica_comes_back_last() -> None:
    s = Scores()
    _epoch(s, 8, participants=(0, 1, 2, 4))  # 4 is a reserve: its votes do not count
    assert 4 not in s.points
    m1 = next_membership(M, s, 9)
    assert m1.active == (0, 1, 2, 4) and m1.reserve == (5, 3)
    # next epoch 2 fails; 5 and the demoted 3 both stand at 0: 5 is ahead in the queue
    for _ in range(8):
        score_block(s, m1, 0, 0, (0, 1, 4))
    m2 = next_membership(m1, s, 17)
    assert m2.active == (0, 1, 5, 4) and m2.reserve == (3, 2)
