"""The classic PBFT scenarios, scripted on the simulator: each must stay safe and recover.

Random fault mixes (tests/test_consensus_sim.py) reach most of these by chance; here each is
forced, on several seeds, with the simulator's `script` (crash, restart, isolate, heal at
given times) and `intercept` (drop or delay chosen messages).
"""

from __future__ import annotations

import pytest

from hub.consensus.messages import Commit, PrePrepare, Signed
from hub.consensus.simulator import Faults, Simulation

SEEDS = range(8)


def check(sim: Simulation) -> None:
    o = sim.run()
    assert o.violation is None, (sim.seed, o.violation)
    assert o.stalled is None, (sim.seed, o.stalled)
    assert o.blocks > 0


@pytest.mark.parametrize("seed", SEEDS)
def test_the_primary_crashes_after_its_pre_prepare_reached_one_backup(seed: int) -> None:
    state: dict[str, int] = {}

    def intercept(sim: Simulation, src: int, dst: int, m: Signed) -> float | None:
        if src == 0 and isinstance(m.body, PrePrepare) and sim.now >= 1.0 and "height" not in state:
            state["height"] = m.body.proposal.height
            sim._at(sim.now + 0.0001, "crash", 0)
            sim._at(sim.now + 3.0, "restart", 0)
        if src == 0 and state and isinstance(m.body, PrePrepare) and m.body.proposal.height == state["height"]:
            return 0.0 if dst == 1 else None
        return 0.0

    sim = Simulation(4, seed, Faults(), intercept=intercept)
    check(sim)
    assert state and sim.outcome.view_changes > 0


@pytest.mark.parametrize("seed", SEEDS)
def test_committed_at_one_replica_that_is_cut_off_during_the_view_change(seed: int) -> None:
    """Prepared at a quorum, committed only at replica 3 (the others' commits are lost), then 3
    is isolated: the new view must carry that proposal, so the others decide the same block."""
    state: dict[str, int] = {}

    def intercept(sim: Simulation, src: int, dst: int, m: Signed) -> float | None:
        if isinstance(m.body, Commit) and sim.now >= 1.0 and "height" not in state:
            state["height"] = m.body.height
            sim._at(sim.now + 0.05, "isolate", 3)
            sim._at(sim.now + 3.0, "heal", -1)
        if state and isinstance(m.body, Commit) and m.body.height == state["height"] and sim.now < 4.0:
            return 0.0 if dst == 3 else None
        return 0.0

    sim = Simulation(4, seed, Faults(), intercept=intercept)
    check(sim)
    h = state["height"]
    decided = {sim.ledgers[i][h - 1].proposal.digest for i in range(4) if len(sim.ledgers[i]) >= h}
    assert len(decided) == 1 and len(sim.ledgers[3]) >= h


@pytest.mark.parametrize("seed", SEEDS)
def test_a_slow_but_live_primary_keeps_its_view(seed: int) -> None:
    """Each of the primary's messages 40 ms late (a sixth of the timeout): blocks keep coming, no view change."""

    def intercept(sim: Simulation, src: int, dst: int, m: Signed) -> float | None:
        return 0.04 if src == 0 else 0.0

    sim = Simulation(4, seed, Faults(), intercept=intercept)
    check(sim)
    assert sim.outcome.view_changes == 0 and sim.outcome.blocks > 40


@pytest.mark.parametrize("seed", SEEDS)
def test_repeated_leader_failures(seed: int) -> None:
    """The primaries of views 0, 1 and 2 crash one after another (one down at a time)."""
    script = (
        (1.0, "crash", 0), (2.0, "restart", 0),
        (2.5, "crash", 1), (3.5, "restart", 1),
        (4.0, "crash", 2), (5.0, "restart", 2),
    )
    sim = Simulation(4, seed, Faults(), script=script)
    check(sim)
    assert sim.outcome.view_changes >= 3


@pytest.mark.parametrize("seed", SEEDS)
def test_a_lagging_replica_catches_up_while_a_peer_serves_bad_blocks(seed: int) -> None:
    sim = Simulation(4, seed, Faults.parse("bad-blocks"))
    lagging = (sim.byzantine + 1) % 4
    sim.script = ((1.0, "isolate", lagging), (4.0, "heal", -1))
    check(sim)
    heights = sim.outcome.heights
    assert heights[lagging] == max(heights.values())


@pytest.mark.parametrize("seed", SEEDS)
def test_f_plus_one_down_halts_the_chain_and_it_resumes(seed: int) -> None:
    sim = Simulation(4, seed, Faults(), script=((1.0, "crash", 1), (1.0, "crash", 2), (5.0, "restart", 1),
                                                (5.0, "restart", 2)))
    decided_at: list[tuple[float, int]] = []
    original = sim._decided

    def record(i: int, copy: int, cert) -> None:  # noqa: ANN001
        decided_at.append((sim.now, cert.proposal.height))
        original(i, copy, cert)

    sim._decided = record  # type: ignore[method-assign]
    check(sim)
    during = [h for t, h in decided_at if 1.2 < t < 5.0]
    assert not during  # no block without a quorum
    assert any(t > 5.0 for t, _ in decided_at)


@pytest.mark.parametrize("seed", SEEDS)
def test_a_reserve_replaces_a_dead_replica_so_the_chain_survives_one_more_failure(seed: int) -> None:
    """4 consensus replicas and 1 reserve. Replica 3 dies for good: at the next checkpoint it is
    demoted (it took part in none of the epoch's blocks) and the reserve promoted, so when
    replica 2 dies too, 3 of the 4 consensus replicas are still up and the chain goes on. The
    same two deaths without a reserve halt it."""
    script = ((0.5, "crash", 3), (6.0, "crash", 2))
    sim = Simulation(4, seed, Faults(), script=script, reserves=1)
    check(sim)
    first = sim.nodes[0][0]
    promoted = [e for e in first.epochs if 4 in e.active]
    assert promoted and promoted[0].start < 40 and 3 not in promoted[0].active
    assert sim.outcome.heights[4] == sim.outcome.heights[0]  # the promoted reserve decided it all too
    without = Simulation(4, seed, Faults(), script=script)
    o = without.run()
    assert o.violation is None and o.stalled is not None  # f+1 down for good: no more blocks
