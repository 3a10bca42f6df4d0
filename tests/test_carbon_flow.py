"""Carbon emission flow on hand-made snapshots: the numbers worked out on paper, the loss
rules of docs/carbon.md (a branch's losses carry its intensity; fed at both ends it is a sink at
both), circulating flows, conservation, upstream tracing, and the emission models."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hub.contracts.carbon.emission import (
    CO2_PER_C,
    CoalCurve,
    EmissionFactorError,
    Factor,
    parse_factors,
)
from hub.contracts.carbon.flow import carbon_flow
from hub.contracts.carbon.snapshot import FlowSnapshot, SnapshotError
from hub.contracts.carbon.tracing import trace


def snapshot(units: list[tuple[str, int, float]], branches: list[tuple[str, list[tuple[int, float]]]],
             nodes: int, solution: str = "ac") -> FlowSnapshot:
    """units: (name, node, injection MW); branches: (name, [(node, MW into the branch), ...])."""
    t_branch = [k for k, (_, ends) in enumerate(branches) for _ in ends]
    t_node = [n for _, ends in branches for n, _ in ends]
    t_p = [p for _, ends in branches for _, p in ends]
    i64 = lambda xs: np.array(xs, dtype=np.int64)
    return FlowSnapshot(
        bus_node={n: n for n in range(nodes)}, node_count=nodes,
        unit_names=tuple(u[0] for u in units), unit_node=i64([u[1] for u in units]),
        unit_p_mw=np.array([u[2] for u in units], dtype=float), unit_bus=i64([u[1] for u in units]),
        branch_names=tuple(b[0] for b in branches), terminal_branch=i64(t_branch), terminal_node=i64(t_node),
        terminal_p_mw=np.array(t_p, dtype=float), terminal_bus=i64(t_node), solution=solution,
    )


# Two generators, three nodes, two lossy lines into a load node (worked out in docs/carbon.md).
THREE_NODES = snapshot(
    units=[("gen:0", 0, 100.0), ("gen:1", 1, 50.0), ("load:0", 0, -40.0), ("load:1", 1, -20.0), ("load:2", 2, -87.5)],
    branches=[("line:0", [(0, 60.0), (2, -58.0)]), ("line:1", [(1, 30.0), (2, -29.5)])],
    nodes=3,
)
COAL_GEN0 = parse_factors({"gen:0": 0.8})


def test_three_nodes_match_the_numbers_worked_out_by_hand():
    flow = carbon_flow(THREE_NODES, COAL_GEN0)
    w2 = 58 * 0.8 / 87.5
    assert flow.node_intensity == pytest.approx([0.8, 0.0, w2], abs=1e-15)
    # line:0 carries gen:0's intensity; 2 MW of losses carry it too
    assert flow.terminal_carbon_t_per_h[:2] == pytest.approx([60 * 0.8, -58 * 0.8])
    assert flow.branch_loss_carbon_t_per_h == pytest.approx([2 * 0.8, 0.0])
    assert flow.unit_carbon_t_per_h == pytest.approx([80.0, 0.0, -32.0, 0.0, -87.5 * w2])
    assert flow.emission_t_per_h == 80.0
    assert abs(flow.residual_t_per_h) < 1e-12


def test_load_shares_name_each_source_and_add_up_to_the_load():
    flow = carbon_flow(THREE_NODES, COAL_GEN0)
    shares = trace(flow)
    names = THREE_NODES.unit_names
    got = {(names[shares.sinks[r]], names[shares.sources[c]]): (shares.mw[r, c], shares.carbon_t_per_h[r, c])
           for r, c in zip(*shares.mw.nonzero())}
    assert got[("load:2", "gen:0")] == pytest.approx((58.0, 46.4))
    assert got[("load:2", "gen:1")] == pytest.approx((29.5, 0.0))
    assert got[("load:0", "gen:0")] == pytest.approx((40.0, 32.0))
    assert ("load:0", "gen:1") not in got  # nothing flows from node 1 to node 0
    assert np.abs(shares.residual_t_per_h(flow)).max() < 1e-12


def test_a_branch_fed_from_both_ends_is_a_sink_at_both():
    # line:1 is fed 1 MW from node 0 and 0.5 MW from node 1: all of it is loss, each end at its node's intensity
    s = snapshot(
        units=[("gen:0", 0, 100.0), ("gen:1", 1, 50.5), ("load:0", 0, -99.0), ("load:1", 1, -50.0)],
        branches=[("line:1", [(0, 1.0), (1, 0.5)])], nodes=2,
    )
    flow = carbon_flow(s, parse_factors({"gen:0": 0.9, "gen:1": 0.2}))
    assert flow.node_intensity == pytest.approx([0.9, 0.2])
    assert flow.terminal_carbon_t_per_h == pytest.approx([0.9, 0.1])
    assert flow.branch_loss_carbon_t_per_h == pytest.approx([1.0])
    assert flow.branch_loss_mw == pytest.approx([1.5])
    assert abs(flow.residual_t_per_h) < 1e-12


def test_a_three_winding_transformer_mixes_what_feeds_it():
    # hv and mv feed 10 MW each, lv receives 19: it carries the power-weighted mean of both feeders
    s = snapshot(
        units=[("gen:0", 0, 10.0), ("gen:1", 1, 10.0), ("load:0", 2, -19.0)],
        branches=[("trafo3w:0", [(0, 10.0), (1, 10.0), (2, -19.0)])], nodes=3,
    )
    flow = carbon_flow(s, parse_factors({"gen:0": 1.0, "gen:1": 0.0}))
    assert flow.branch_intensity == pytest.approx([0.5])
    assert flow.node_intensity == pytest.approx([1.0, 0.0, 0.5])
    assert flow.branch_loss_carbon_t_per_h == pytest.approx([0.5])
    assert abs(flow.residual_t_per_h) < 1e-12
    shares = trace(flow)
    assert shares.mw.toarray() == pytest.approx(np.array([[9.5, 9.5]]))


def test_power_circulating_in_a_loop_does_not_inflate_the_intensity():
    # 0 -> 1 -> 2 -> 0 around a ring with losses on every leg; the one source has intensity 1
    s = snapshot(
        units=[("gen:0", 0, 25.0), ("load:0", 0, -4.9), ("load:1", 1, -9.5), ("load:2", 2, -9.8)],
        branches=[("line:0", [(0, 30.0), (1, -29.5)]), ("line:1", [(1, 20.0), (2, -19.8)]),
                  ("line:2", [(2, 10.0), (0, -9.9)])],
        nodes=3,
    )
    flow = carbon_flow(s, parse_factors({"gen:0": 1.0}))
    assert flow.node_intensity == pytest.approx([1.0, 1.0, 1.0], abs=1e-12)
    assert flow.loss_carbon_t_per_h == pytest.approx(0.8)
    assert abs(flow.residual_t_per_h) < 1e-12


def test_absorbing_units_and_shunts_are_sinks_and_dc_flows_lose_nothing():
    s = snapshot(
        units=[("gen:0", 0, 30.0), ("ext_grid:0", 1, -20.0), ("shunt:0", 1, -2.0), ("load:0", 0, -8.0)],
        branches=[("line:0", [(0, 22.0), (1, -22.0)])], nodes=2, solution="dc",
    )
    flow = carbon_flow(s, parse_factors({"gen:0": 0.5, "ext_grid:0": 0.9}))  # absorbing: its factor is unused
    assert flow.unit_carbon_t_per_h == pytest.approx([15.0, -10.0, -1.0, -4.0])
    assert flow.loss_carbon_t_per_h == 0.0
    assert flow.residual_t_per_h == 0.0


def test_a_network_of_clean_sources_carries_no_carbon():
    flow = carbon_flow(THREE_NODES, parse_factors({}))
    assert not flow.node_intensity.any() and flow.emission_t_per_h == 0.0
    shares = trace(flow)
    assert shares.mw.sum() == pytest.approx(40 + 20 + 87.5)  # power is still traced
    assert shares.carbon_t_per_h.sum() == 0.0


def test_coal_curve_is_the_fuel_curve_times_carbon_content_oxidation_and_44_over_12():
    curve = CoalCurve(a=0.0002, b=0.31, c=4.2, carbon_content=0.62, oxidation_rate=0.98)
    coal = 0.0002 * 150**2 + 0.31 * 150 + 4.2
    assert curve.emission_t_per_h(150.0) == pytest.approx(coal * 0.62 * 0.98 * 44 / 12)
    assert CO2_PER_C == pytest.approx(3.6667, abs=1e-4)
    # intensity falls with output: the no-load burn is spread over more MWh
    assert curve.emission_t_per_h(50.0) / 50 > curve.emission_t_per_h(200.0) / 200
    assert curve.emission_t_per_h(0.0) == 0.0 and Factor(0.4).emission_t_per_h(-5.0) == 0.0
    factors = parse_factors({"gen:0": {"coal": {"a": 0.0002, "b": 0.31, "c": 4.2, "carbon_content": 0.62,
                                                "oxidation_rate": 0.98}}})
    flow = carbon_flow(THREE_NODES, factors)
    assert flow.node_intensity[0] == pytest.approx(curve.emission_t_per_h(100.0) / 100)


@pytest.mark.parametrize("doc, says", [
    ({"gen:0": -0.1}, "gen:0: must be a finite number >= 0"),
    ({"gen:0": "0.4"}, "gen:0: expected a number"),
    ({"gen:0": True}, "gen:0: expected a number"),
    ({"gen:0": float("nan")}, "finite"),
    ({"gen 0": 0.4}, "table:index"),
    ({"gen:0": {"coal": {"a": 1, "b": 1, "c": 1, "carbon_content": 0.6}}}, "missing oxidation_rate"),
    ({"gen:0": {"coal": {"a": 1, "b": 1, "c": 1, "carbon_content": 0.6, "oxidation_rate": 0.9, "d": 2}}}, "unknown d"),
    ({"gen:0": {"coal": {"a": 1, "b": 1, "c": 1, "carbon_content": 60, "oxidation_rate": 0.9}}}, "fractions"),
    ({"gen:0": {"factor": 0.4}}, "got keys ['factor']"),
    ([0.4], "expected a JSON object"),
])
def test_bad_emission_factors_are_refused_naming_the_entry(doc, says):
    with pytest.raises(EmissionFactorError, match=None) as exc:
        parse_factors(doc)
    assert says in str(exc.value)


def test_factors_naming_a_source_the_network_lacks_are_refused():
    with pytest.raises(EmissionFactorError, match="gen:7"):
        parse_factors({"gen:7": 0.4, "gen:0": 0.1}).check_names({"gen:0", "load:0"})


def test_a_snapshot_whose_arrays_disagree_is_refused():
    good = THREE_NODES
    with pytest.raises(SnapshotError, match="unit_p_mw has shape"):
        FlowSnapshot(good.bus_node, 3, good.unit_names, good.unit_node, good.unit_p_mw[:2], good.unit_bus,
                     good.branch_names, good.terminal_branch, good.terminal_node, good.terminal_p_mw, good.terminal_bus)
    with pytest.raises(SnapshotError, match="outside 0..1"):
        FlowSnapshot(good.bus_node, 2, good.unit_names, good.unit_node, good.unit_p_mw, good.unit_bus,
                     good.branch_names, good.terminal_branch, good.terminal_node, good.terminal_p_mw, good.terminal_bus)
    bad_p = good.terminal_p_mw.copy()
    bad_p[1] = math.inf
    with pytest.raises(SnapshotError, match="not finite"):
        FlowSnapshot(good.bus_node, 3, good.unit_names, good.unit_node, good.unit_p_mw, good.unit_bus,
                     good.branch_names, good.terminal_branch, good.terminal_node, bad_p, good.terminal_bus)


def test_a_power_flow_mismatch_is_folded_into_the_largest_flow_and_conservation_stays_exact():
    # node 2 takes 1e-9 MW more than arrives (a solver's tolerance), and line:1 carries 1e-12 MW of noise
    s = snapshot(
        units=[("gen:0", 0, 100.0), ("load:0", 0, -40.0), ("load:2", 2, -58.000000001)],
        branches=[("line:0", [(0, 60.0), (2, -58.0)]), ("line:1", [(0, 1e-12), (2, 0.0)])],
        nodes=3,
    )
    flow = carbon_flow(s, parse_factors({"gen:0": 0.8}))
    assert flow.power_mismatch_mw == pytest.approx(1e-9, rel=1e-3)
    assert not flow.snapshot.node_mismatch_mw().any()
    assert flow.snapshot.unit_p_mw[2] == -58.0  # load:2 was the largest flow at node 2
    assert flow.snapshot.terminal_p_mw[2] == 0.0  # noise below the solver's tolerance is no flow
    assert flow.node_intensity == pytest.approx([0.8, 0.0, 0.8], abs=1e-15)  # node 1: nothing flows, 0
    assert abs(flow.residual_t_per_h) < 1e-12
