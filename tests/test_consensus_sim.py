"""Seeded simulations of 4 replicas: safe and live under every fault mix, and the checker bites.

`gridtrace chain simulate` runs the same simulations; bench-sized runs take more seeds.
"""

from __future__ import annotations

from unittest import mock

import pytest

from gridtrace.cli import main
from hub.consensus import certificates
from hub.consensus.cli import DEFAULT_MIXES
from hub.consensus.membership import Membership
from hub.consensus.simulator import Faults, Simulation, simulate

# Per mix: 17 mixes x 40 = 680 runs, about 3 min of the suite on a 2-core CI machine (60 seeds took
# about 4 min there, 2026-11-23, and pushed the suite past 14 min). Deeper runs: `gridtrace chain
# simulate --seeds 500`, which runs these same mixes.
SEEDS = 40
CUSTODY_SEEDS = 12  # per mix with custody: 204 runs


@pytest.mark.parametrize("mix", DEFAULT_MIXES)
def test_no_two_correct_replicas_ever_decide_differently_and_progress_resumes(mix: str) -> None:
    outcomes = simulate(4, range(SEEDS), Faults.parse(mix))
    unsafe = [(o.seed, o.violation) for o in outcomes if o.violation]
    stalled = [(o.seed, o.stalled) for o in outcomes if o.stalled]
    assert not unsafe, unsafe[:3]
    assert not stalled, stalled[:3]
    assert all(o.blocks > 0 for o in outcomes)


@pytest.mark.parametrize("mix", DEFAULT_MIXES)
def test_with_custody_every_mix_stays_safe_and_live_and_decided_batches_stay_stored(mix: str) -> None:
    """payload_copies = f+1: batches are fetched by one custodian besides the replica a gateway
    gave them to; the others vote on f+1 replicas' word. Every decided batch must be stored by
    a correct replica (the simulator checks it) and every batch still decided."""
    for o in simulate(4, range(CUSTODY_SEEDS), Faults.parse(mix), payload_copies=2):
        assert o.violation is None and o.stalled is None, (o.seed, o.violation, o.stalled)
        assert o.blocks > 0


def test_the_checker_finds_custody_that_trusts_a_single_holder() -> None:
    """If one replica's word made a batch available, a faulty replica could have a block
    decided whose batch no correct replica stores."""
    with mock.patch.object(Membership, "f", property(lambda self: 0)):
        bad = [o for o in simulate(4, range(30), Faults.parse("equivocate"), payload_copies=2) if o.violation]
    assert bad and "stored by no correct replica" in bad[0].violation


def test_seven_replicas_tolerate_two_byzantine_behaviours_worth_of_faults() -> None:
    for mix in ("equivocate+drop", "twins+partition", "quorum-loss"):
        for o in simulate(7, range(8), Faults.parse(mix)):
            assert o.violation is None and o.stalled is None, (mix, o.seed, o.violation, o.stalled)


def test_reserve_replicas_keep_every_mix_safe_and_live_while_the_membership_changes() -> None:
    """4 consensus replicas and a reserve: crashed or cut-off replicas are demoted and the
    reserve promoted at checkpoints, under faults, with every replica deciding the same."""
    swaps = 0
    for mix in ("crash+drop", "partition+delay", "equivocate+drop", "twins", "quorum-loss"):
        for o in simulate(4, range(12), Faults.parse(mix), reserves=1):
            assert o.violation is None and o.stalled is None, (mix, o.seed, o.violation, o.stalled)
            swaps += o.swaps
    assert swaps > 10  # the membership did change, many times


def test_a_seed_replays_exactly() -> None:
    a = Simulation(4, 17, Faults.parse("drop+delay+crash+twins")).run()
    b = Simulation(4, 17, Faults.parse("drop+delay+crash+twins")).run()
    assert (a.heights, a.view_changes) == (b.heights, b.view_changes)
    assert a.blocks > 0


def test_the_checker_finds_a_quorum_that_is_too_small() -> None:
    """With f+1 instead of 2f+1 votes, an equivocating primary splits the replicas."""
    with mock.patch.object(Membership, "quorum", property(lambda self: self.f + 1)):
        bad = [o for o in simulate(4, range(20), Faults.parse("equivocate")) if o.violation]
    assert bad and "decided" in bad[0].violation


def test_the_checker_finds_a_view_change_that_forgets_a_prepared_proposal() -> None:
    """A new view must carry the highest prepared proposal: it may have committed somewhere."""
    plan = certificates.new_view_plan
    with mock.patch.object(certificates, "new_view_plan", lambda vcs: (plan(vcs)[0], None)):
        bad = [o for o in simulate(4, range(20), Faults.parse("drop+twins")) if o.violation]
    assert bad


def test_the_command_reports_each_mix_and_fails_on_a_violation(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["chain", "simulate", "--seeds", "2", "--faults", "none,crash"]) == 0
    out = capsys.readouterr().out
    assert "none" in out and "crash" in out and out.count("safe and live") == 2
    with mock.patch.object(Membership, "quorum", property(lambda self: self.f + 1)):
        assert main(["chain", "simulate", "--seeds", "10", "--faults", "equivocate"]) == 1
    out = capsys.readouterr().out
    assert "SAFETY VIOLATION" in out and "first seed" in out
    assert main(["chain", "simulate", "--faults", "meteor"]) == 2
    assert "unknown fault meteor" in capsys.readouterr().err
