"""`gridtrace carbon trace` and `report` on pandapower networks and a MATPOWER file: what an
analyst gets (every bus's intensity, both ends of every branch, load emissions and their
sources, conservation), the DC fallback, byte-for-byte determinism, and every bad input turned
into a message that says what was wrong."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gridtrace.cli import main
from hub.contracts.carbon import powerflow
from hub.contracts.carbon.emission import parse_factors
from hub.contracts.carbon.flow import carbon_flow
from hub.contracts.carbon.powerflow import NetworkError, load_network, solve

pp = pytest.importorskip("pandapower")  # a hub dependency: present wherever the hub is installed
DATA = Path(__file__).parent / "data"
COAL = {"coal": {"a": 0.0002, "b": 0.31, "c": 4.2, "carbon_content": 0.62, "oxidation_rate": 0.98}}


def write(path: Path, doc: object) -> Path:
    path.write_text(json.dumps(doc))
    return path


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["carbon", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def multivoltage():
    """pandapower's example with a three-winding transformer, a series impedance, extended
    wards, a shunt and closed bus-bus switches, solved once."""
    import pandapower.networks as pn

    return solve(pn.example_multivoltage(), "pandapower:example_multivoltage")


def test_trace_of_case118_holds_every_bus_branch_end_and_load_and_conserves(tmp_path, capsys):
    # gen:0 and gen:1 produce nothing in this case: named anyway, as an analyst's file would
    factors = write(tmp_path / "f.json", {"gen:38": COAL, "gen:0": 0.39, "gen:4": 0.7, "gen:10": 0.35,
                                          "ext_grid:0": {"t_per_mwh": 0.58}})
    out = tmp_path / "trace.json"
    code, stdout, err = run(capsys, "trace", "--pandapower-case", "case118", "--emission-factors", factors, "--out", out)
    assert code == 0, err
    assert "conservation residual" in stdout
    doc = json.loads(out.read_text())
    assert doc["format"] == "gridtrace-carbon-trace/1"
    assert doc["inputs"]["solution"] == "ac" and doc["inputs"]["dc_reason"] is None
    assert sorted(map(int, doc["bus_intensity"])) == list(range(118))
    assert len(doc["branches"]) == 173 + 13
    line = doc["branches"]["line:0"]
    assert len(line["buses"]) == len(line["p_mw"]) == len(line["carbon_t_per_h"]) == 2
    assert line["loss_carbon_t_per_h"] == pytest.approx(sum(line["carbon_t_per_h"]), abs=1e-12)
    assert len(doc["loads"]) == 99
    t, c = doc["totals"], doc["conservation"]
    assert t["emission_t_per_h"] > 0 and t["loss_mw"] > 0  # AC: real losses, and they carry carbon
    assert t["loss_emission_t_per_h"] > 0
    assert t["emission_t_per_h"] == pytest.approx(
        t["load_emission_t_per_h"] + t["loss_emission_t_per_h"] + t["other_sink_emission_t_per_h"], rel=1e-12)
    assert c["relative_residual"] < 1e-12
    assert c["max_share_residual_t_per_h"] < 1e-9
    for name, load in doc["loads"].items():
        assert sum(s["t_per_h"] for s in doc["shares"][name].values()) == pytest.approx(
            load["emission_t_per_h"], rel=1e-9, abs=1e-12)
    # the intensity at a bus is a mix of its sources' intensities: never above the dirtiest
    top = max(s["intensity_t_per_mwh"] for s in doc["sources"].values())
    assert max(doc["bus_intensity"].values()) <= top * (1 + 1e-9)
    assert "gen:0" not in doc["sources"]
    coal = doc["sources"]["gen:38"]
    assert coal["emission_t_per_h"] == pytest.approx(
        (0.0002 * coal["p_mw"] ** 2 + 0.31 * coal["p_mw"] + 4.2) * 0.62 * 0.98 * 44 / 12)

    code, stdout, _ = run(capsys, "report", out, "--top", "3")
    assert code == 0 and "largest load emissions" in stdout
    biggest = max(doc["loads"], key=lambda n: doc["loads"][n]["emission_t_per_h"])
    assert biggest in stdout
    code, stdout, _ = run(capsys, "report", out, "--load", biggest)
    assert code == 0
    first_source = max(doc["shares"][biggest], key=lambda n: doc["shares"][biggest][n]["t_per_h"])
    assert first_source in stdout


def test_switches_three_winding_transformers_impedances_and_wards_are_followed(multivoltage):
    s = multivoltage.snapshot
    assert s.node_count < len(s.bus_node)  # switches joined buses into one node
    kinds = {n.split(":")[0] for n in s.branch_names} | {n.split(":")[0] for n in s.unit_names}
    assert {"trafo3w", "impedance", "xward", "shunt", "sgen", "gen", "ext_grid"} <= kinds
    factors = {n: 0.1 * (i % 7) for i, n in enumerate(s.unit_names) if s.unit_p_mw[i] > 0}
    flow = carbon_flow(s, parse_factors(factors))
    assert abs(flow.residual_t_per_h) < 1e-12 * flow.emission_t_per_h
    assert flow.loss_carbon_t_per_h > 0
    one = carbon_flow(s, parse_factors({n: 0.45 for n in factors}))
    live = one.node_intensity[one.system.node_out_mw > 0]
    # one intensity everywhere reaches every node unchanged, up to the power flow's own mismatch
    # (intensity is carbon in per MW out: docs/carbon.md), which is 1e-8 of the smallest nodes' flow here
    assert live == pytest.approx(np.full(len(live), 0.45), rel=1e-6)


def test_same_inputs_give_the_same_bytes_and_a_changed_factor_changes_the_inputs_hash(tmp_path, capsys):
    f1 = write(tmp_path / "f1.json", {"ext_grid:0": 0.6, "gen:0": COAL})
    f2 = write(tmp_path / "f2.json", {"gen:0": COAL, "ext_grid:0": 0.6})  # same factors, other order
    f3 = write(tmp_path / "f3.json", {"ext_grid:0": 0.61, "gen:0": COAL})
    outs = []
    for i, f in enumerate((f1, f2, f3)):
        out = tmp_path / f"t{i}.json"
        assert run(capsys, "trace", "--pandapower-case", "case9", "--emission-factors", f, "--out", out)[0] == 0
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    a, c = json.loads(outs[0]), json.loads(outs[2])
    assert a["inputs"]["network_sha256"] == c["inputs"]["network_sha256"]
    assert a["inputs_sha256"] != c["inputs_sha256"]


def test_a_power_flow_that_does_not_converge_falls_back_to_dc_and_says_so(tmp_path, capsys):
    import pandapower.networks as pn

    net = pn.case9()
    net.load.p_mw *= 12  # far beyond what the AC solution can carry
    path = tmp_path / "heavy.json"
    pp.to_json(net, str(path))
    out = tmp_path / "t.json"
    code, _, err = run(capsys, "trace", "--pandapower-json", path, "--emission-factors",
                       write(tmp_path / "f.json", {"ext_grid:0": 0.8}), "--out", out)
    assert code == 0, err
    doc = json.loads(out.read_text())
    assert doc["inputs"]["solution"] == "dc"
    assert "did not converge" in doc["inputs"]["dc_reason"]
    assert doc["totals"]["loss_mw"] == pytest.approx(0.0, abs=1e-9)
    assert doc["conservation"]["relative_residual"] < 1e-12
    # --dc on a network that converges: asked for, and said so
    code, _, _ = run(capsys, "trace", "--pandapower-case", "case9", "--dc", "--emission-factors",
                     write(tmp_path / "g.json", {}), "--out", out, "--no-shares")
    doc = json.loads(out.read_text())
    assert code == 0 and doc["inputs"]["dc_reason"] == "asked for (--dc)" and "shares" not in doc


def test_a_matpower_case_file_is_traced(tmp_path, capsys):
    out = tmp_path / "t.json"
    factors = write(tmp_path / "f.json", {"ext_grid:0": COAL, "gen:0": 0.39})
    code, _, err = run(capsys, "trace", "--matpower", DATA / "case9.m", "--emission-factors", factors, "--out", out)
    assert code == 0, err
    doc = json.loads(out.read_text())
    assert doc["inputs"]["network"].startswith("matpower:")
    assert len(doc["bus_intensity"]) == 9 and len(doc["loads"]) == 3
    assert doc["totals"]["load_mw"] == pytest.approx(90 + 100 + 125)
    assert doc["sources"]["gen:1"]["emission_t_per_h"] == 0.0  # not named: clean
    assert doc["bus_intensity"]["2"] == 0.0  # the clean unit's own bus
    assert doc["conservation"]["relative_residual"] < 1e-12


@pytest.mark.parametrize("args, says", [
    (["--pandapower-case", "case_nonesuch"], "pandapower has no network named 'case_nonesuch'"),
    (["--matpower", "missing.m"], "missing.m: no such file"),
    (["--matpower", "garbage.m"], "cannot read as a MATPOWER case"),
    (["--matpower", "factors.json"], "a MATPOWER case is a .m or .mat file"),
    (["--pandapower-json", "garbage.m"], "cannot read as a pandapower network"),
])
def test_a_network_that_cannot_be_read_is_named(tmp_path, capsys, monkeypatch, args, says):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "garbage.m").write_text("function mpc = oops\nmpc.bus = [ 1 2 ;\n")
    write(tmp_path / "factors.json", {})
    code, _, err = run(capsys, "trace", *args, "--emission-factors", "factors.json", "--out", "t.json")
    assert code == 2 and says in err
    assert not (tmp_path / "t.json").exists()


@pytest.mark.parametrize("content, says", [
    ("{not json", "f.json: not JSON"),
    ('{"gen:99": 0.4}', "name sources the network does not have: gen:99"),
    ('{"gen:0": -1}', "gen:0: must be a finite number >= 0"),
])
def test_bad_emission_factors_files_are_named(tmp_path, capsys, content, says):
    (tmp_path / "f.json").write_text(content)
    code, _, err = run(capsys, "trace", "--pandapower-case", "case9", "--emission-factors", tmp_path / "f.json",
                       "--out", tmp_path / "t.json")
    assert code == 2 and says in err
    code, _, err = run(capsys, "trace", "--pandapower-case", "case9", "--emission-factors", tmp_path / "none.json",
                       "--out", tmp_path / "t.json")
    assert code == 2 and "none.json: cannot read" in err


def test_an_element_the_computation_does_not_read_is_an_error_naming_its_bus(monkeypatch):
    import pandapower.networks as pn

    monkeypatch.setitem(powerflow.UNIT_TABLES, "sgen", 0.0)  # as if gridtrace did not know static generators
    monkeypatch.delitem(powerflow.UNIT_TABLES, "sgen")
    net, name = load_network("example_simple")
    with pytest.raises(NetworkError, match=r"bus \d+.*does not balance by .* MW"):
        solve(net, name)
    net = pn.example_simple()
    pp.create_svc(net, bus=2, x_l_ohm=1, x_cvar_ohm=-10, set_vm_pu=1.0, thyristor_firing_angle_degree=90)
    monkeypatch.undo()
    with pytest.raises(NetworkError, match="in-service svc elements"):
        solve(net, "example_simple+svc")


def test_report_refuses_what_is_not_a_trace_and_names_unknown_loads(tmp_path, capsys):
    code, _, err = run(capsys, "report", write(tmp_path / "x.json", {"format": "something-else"}))
    assert code == 2 and "not a carbon trace" in err
    out = tmp_path / "t.json"
    run(capsys, "trace", "--pandapower-case", "case9", "--emission-factors", write(tmp_path / "f.json", {}),
        "--out", out, "--no-shares")
    code, _, err = run(capsys, "report", out, "--load", "load:77")
    assert code == 2 and "no load named 'load:77'" in err
    code, _, err = run(capsys, "report", out, "--load", "load:0")
    assert code == 2 and "--no-shares" in err


def test_on_a_9241_bus_network_every_intensity_is_a_mix_of_its_sources_and_shares_add_up():
    """Intensities are convex mixes of the sources' intensities: an intensity outside their range
    (a node where almost nothing flows, solved from rounding errors) would be wrong."""
    import pandapower.networks as pn

    from hub.contracts.carbon.tracing import trace

    solved = solve(pn.case9241pegase(), "pandapower:case9241pegase")
    s = solved.snapshot
    rng = np.random.default_rng(7)
    sources = [n for i, n in enumerate(s.unit_names) if s.unit_p_mw[i] > 0]
    factors = {n: float(rng.uniform(0.1, 1.2)) for n in sources}
    flow = carbon_flow(s, parse_factors(factors))
    live = flow.system.node_out_mw > 0
    assert flow.node_intensity[live].min() >= min(factors.values()) * (1 - 1e-9)
    assert flow.node_intensity[live].max() <= max(factors.values()) * (1 + 1e-9)
    assert abs(flow.residual_t_per_h) < 1e-12 * flow.emission_t_per_h
    shares = trace(flow)
    taken = np.asarray(shares.mw.sum(axis=1)).ravel()
    assert taken == pytest.approx(-flow.snapshot.unit_p_mw[shares.sinks], rel=1e-9)
    assert np.abs(shares.residual_t_per_h(flow)).max() < 1e-9
