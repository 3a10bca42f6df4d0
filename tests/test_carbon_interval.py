"""The carbon contract's interval: a registered, versioned network model whose meters' sealed
readings set the loads, then the power flow and the carbon flow, named by the model's version and
the readings' hash. Tampered models, meters without readings and unknown elements are refused."""

from __future__ import annotations

import json

import pytest

from gridtrace.cli import main
from hub.contracts.carbon.interval import IntervalError, meter_power
from protos.records import ClockStatus, Gap, Quality, Quantity, Reading
from tests.chainfixture import build_chain
from tests.test_carbon_trace import run, write

pytest.importorskip("pandapower")
METERS = {"MTR-1": "load:0", "MTR-2": "load:1", "MTR-3": "load:2"}


def reading(ts_s: float, **q: tuple[str, float]) -> Reading:
    return Reading("M", 1, int(ts_s * 1e9), ClockStatus.SYNCHRONIZED, Quality(0),
                   tuple(Quantity(k, u, float(v)) for k, (u, v) in sorted(q.items())))


def test_a_meters_power_comes_from_its_energy_registers_or_else_its_power_readings():
    # 3 kWh drawn and 1 kWh sent back over 15 minutes: 8 kW net, 0.008 MW
    e = meter_power("M", [reading(0, energy_import=("kWh", 100.0), energy_export=("kWh", 5.0)),
                          reading(900, energy_import=("kWh", 103.0), energy_export=("kWh", 6.0))])
    assert e.method == "energy" and e.mw == pytest.approx(0.008)
    p = meter_power("M", [reading(0, power_total=("W", 2000.0)), reading(10, power_total=("kW", 4.0)),
                          Gap("M", 1, 2, "timeout", 1)])
    assert p.method == "power" and p.mw == pytest.approx(0.003) and p.gaps == 1
    with pytest.raises(IntervalError, match="meter M: 1 readings and 0 gaps"):
        meter_power("M", [reading(0, voltage_l1=("V", 230.0))])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("interval")
    chain = build_chain(tmp)
    chain.store.close()
    factors = write(tmp / "factors.json", {"ext_grid:0": 0.7, "gen:0": 0.45})
    model = tmp / "model.json"
    code = main(["carbon", "model", "--pandapower-case", "example_multivoltage", "--emission-factors", str(factors),
                 "--meters", str(write(tmp / "meters.json", METERS)), "--out", str(model)])
    assert code == 0
    return tmp, chain, model


def interval(capsys, setup, model=None, out="i.json") -> tuple[int, str, dict | None]:
    tmp, chain, default = setup
    code, _, err = run(capsys, "interval", "--model", model or default, "--database", f"sqlite:///{chain.db_path}",
                       "--from", str(chain.from_ns), "--to", str(chain.to_ns), "--out", tmp / out)
    return code, err, json.loads((tmp / out).read_text()) if code == 0 else None


def test_an_interval_sets_the_loads_from_the_meters_and_names_model_and_readings(capsys, setup):
    tmp, chain, model_path = setup
    code, err, doc = interval(capsys, setup)
    assert code == 0, err
    model = json.loads(model_path.read_text())
    assert doc["inputs"]["model_version"] == model["version"]
    for meter, element in METERS.items():
        readings = [e for e in chain.entries[meter] if isinstance(e, Reading)]
        kwh = [next(q.value for q in r.quantities if q.name == "energy_import") for r in (readings[0], readings[-1])]
        hours = (readings[-1].timestamp_ns - readings[0].timestamp_ns) / 3.6e12
        mw = (kwh[1] - kwh[0]) / 1000 / hours
        got = doc["interval"]["meters"][meter]
        assert got["element"] == element and got["method"] == "energy" and got["mw"] == pytest.approx(mw)
        assert doc["loads"][element]["p_mw"] == pytest.approx(mw)
    assert doc["interval"]["meters"]["MTR-1"]["gaps"] == 1
    assert doc["interval"]["sealed_height"] == chain.block_heights[-1]
    assert doc["conservation"]["relative_residual"] < 1e-12
    code, stdout, _ = run(capsys, "report", tmp / "i.json", "--meter", "MTR-2")
    assert code == 0 and "load:1 at bus" in stdout
    assert all(source in stdout for source in doc["shares"]["load:1"])
    code, _, err = run(capsys, "report", tmp / "i.json", "--meter", "MTR-9")
    assert code == 2 and "no meter 'MTR-9'" in err
    # the same inputs: the same bytes
    assert interval(capsys, setup, out="again.json")[0] == 0
    assert (tmp / "again.json").read_bytes() == (tmp / "i.json").read_bytes()


def test_another_model_version_gives_another_inputs_hash(capsys, setup, tmp_path):
    tmp = setup[0]
    other = tmp_path / "model2.json"
    factors = write(tmp_path / "f.json", {"ext_grid:0": 0.71, "gen:0": 0.45})
    assert main(["carbon", "model", "--pandapower-case", "example_multivoltage", "--emission-factors", str(factors),
                 "--meters", str(tmp / "meters.json"), "--out", str(other)]) == 0
    _, _, a = interval(capsys, setup)
    _, _, b = interval(capsys, setup, model=other, out="b.json")
    assert a["inputs"]["model_version"] != b["inputs"]["model_version"]
    assert a["inputs_sha256"] != b["inputs_sha256"]
    assert a["interval"]["readings_sha256"] == b["interval"]["readings_sha256"]


def test_a_changed_model_file_is_refused(capsys, setup, tmp_path):
    _, _, model_path = setup
    doc = json.loads(model_path.read_text())
    doc["meters"]["MTR-1"] = "load:5"  # remapped after the model was registered
    tampered = write(tmp_path / "tampered.json", doc)
    code, err, _ = interval(capsys, setup, model=tampered)
    assert code == 2 and "changed after it was written" in err


def test_a_meter_without_readings_in_the_interval_stops_it_naming_the_meter(capsys, setup, tmp_path):
    tmp = tmp_path
    bad = tmp / "model.json"
    assert main(["carbon", "model", "--pandapower-case", "example_multivoltage", "--emission-factors",
                 str(write(tmp / "f.json", {})), "--meters", str(write(tmp / "m.json", {**METERS, "MTR-9": "load:3"})),
                 "--out", str(bad)]) == 0
    code, err, _ = interval(capsys, setup, model=bad)
    assert code == 2 and "meter MTR-9: 0 readings and 0 gaps" in err


@pytest.mark.parametrize("meters, says", [
    ({"MTR-1": "ext_grid:0"}, "expected table:index with table one of load"),
    ({"MTR-1": "load:999"}, "load:999, which the network does not have"),
    ({"MTR-1": "load:0", "MTR-2": "load:0"}, "both map to load:0"),
])
def test_a_meter_map_naming_what_cannot_be_metered_is_refused(capsys, tmp_path, meters, says):
    code, _, err = run(capsys, "model", "--pandapower-case", "example_multivoltage", "--emission-factors",
                       write(tmp_path / "f.json", {}), "--meters", write(tmp_path / "m.json", meters),
                       "--out", tmp_path / "model.json")
    assert code == 2 and says in err


def test_an_interval_outsourced_to_providers_matches_the_local_one_and_records_them(capsys, setup, tmp_path):
    from protos.signing import write_public_key
    from tests.test_outsourcing import Fleet, wrong

    fleet = Fleet()
    try:
        endpoints = [fleet.add("p1"), fleet.add("p2", wrong), fleet.add("p3")]
        entries = []
        for p in endpoints:
            write_public_key(tmp_path / f"{p.name}.pem", p.public_key)
            entries.append({"name": p.name, "address": p.address, "public_key": f"{p.name}.pem", "insecure": True})
        providers = write(tmp_path / "providers.json", {"providers": entries})
        _, chain, model = setup
        code, _, err = run(capsys, "interval", "--model", model, "--database", f"sqlite:///{chain.db_path}",
                           "--from", str(chain.from_ns), "--to", str(chain.to_ns), "--out", tmp_path / "o.json",
                           "--providers", providers, "--provider-book", tmp_path / "book.json", "--no-shares")
    finally:
        fleet.stop()
    assert code == 0, err
    doc = json.loads((tmp_path / "o.json").read_text())
    _, _, local = interval(capsys, setup)
    assert doc["inputs_sha256"] == local["inputs_sha256"]  # the same inputs, whoever solved
    for bus, w in local["bus_intensity"].items():
        assert doc["bus_intensity"][bus] == pytest.approx(w, rel=1e-9, abs=1e-12)
    (rec,) = doc["outsourcing"]["records"]
    assert rec["wrong"] == ["p2"] and sorted(rec["accepted_by"]) == ["p1", "p3"]
    assert json.loads((tmp_path / "book.json").read_text())["wrong"] == {"p2": 1}


def test_a_meters_emissions_add_up_across_intervals_and_overlaps_are_refused(capsys, setup):
    tmp, chain, model = setup
    half = (chain.from_ns + chain.to_ns) // 2
    files = []
    for name, a, b in (("first.json", chain.from_ns, half), ("second.json", half, chain.to_ns)):
        code, _, err = run(capsys, "interval", "--model", model, "--database", f"sqlite:///{chain.db_path}",
                           "--from", str(a), "--to", str(b), "--out", tmp / name, "--no-shares")
        assert code == 0, err
        files.append(tmp / name)
    docs = [json.loads(f.read_text()) for f in files]
    want = sum(d["loads"]["load:0"]["emission_t_per_h"] * (d["interval"]["to_ns"] - d["interval"]["from_ns"]) / 3.6e12
               for d in docs)
    code, stdout, err = run(capsys, "report", files[1], files[0], "--meter", "MTR-1")  # any order
    assert code == 0, err
    assert "meter MTR-1: 2 intervals" in stdout and f"{want:.6g} tCO2" in stdout
    code, _, err = run(capsys, "report", files[0], tmp / "i.json", "--meter", "MTR-1")
    assert code == 2 and "intervals overlap" in err
    code, _, err = run(capsys, "report", files[0], files[1])
    assert code == 2 and "only with --meter" in err
