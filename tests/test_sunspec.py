"""SunSpec: model layouts as data, discovery through a register image, meter maps, faults.

Everything here runs against in-memory register images (no network): `reader` turns a
dict of address -> word into the ``read(function, start, count)`` callable `discover`
takes, failing the way a Modbus device does (exception 2) for an address it lacks.
"""

from __future__ import annotations

import asyncio
import math
import struct
from collections.abc import Mapping
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.registermap import ReadBlock, RegisterEncodeError, RegisterMap
from edge.sunspec import (
    BASES,
    DEFAULT_SCALE_FACTORS,
    MARKER,
    MAX_MODELS,
    METER_MODEL_IDS,
    ModelRef,
    SunSpecChainError,
    SunSpecDevice,
    SunSpecError,
    SunSpecModelError,
    SunSpecNoMeterModel,
    SunSpecNotFound,
    available_models,
    decode_string,
    discover,
    encode_string,
    load_model,
    model_register_map,
    parse_model,
    sunspec_server_layout,
)


class IllegalAddress(Exception):
    """What a Modbus device answers (exception code 2) for a register it does not have."""


def reader(image: Mapping[int, int], calls: list[tuple[int, int, int]] | None = None):
    async def read(function: int, start: int, count: int) -> list[int]:
        if calls is not None:
            calls.append((function, start, count))
        assert function == 3, "SunSpec lives in holding registers"
        assert 1 <= count <= 125, f"read of {count} registers is not valid Modbus"
        missing = [a for a in range(start, start + count) if a not in image]
        if missing:
            raise IllegalAddress(f"exception 2 (illegal data address) at {missing[0]}")
        return [image[a] for a in range(start, start + count)]

    return read


def run_discover(image: Mapping[int, int], calls: list[tuple[int, int, int]] | None = None) -> SunSpecDevice:
    return asyncio.run(discover(reader(image, calls)))


def read_all(regmap: RegisterMap, image: Mapping[int, int]) -> dict[str, float]:
    """Poll `image` the way the agent does: the map's plan, then decode."""
    reads = [(b, [image[a] for a in range(b.start, b.end)]) for b in regmap.plan()]
    return regmap.decode_blocks(reads)


VALUES_203 = {
    "current_sum": 21.07,
    "current_l1": 7.01,
    "current_l2": 6.55,
    "current_l3": 7.51,
    "voltage_ln_avg": 230.1,
    "voltage_l1": 231.4,
    "voltage_l2": 229.0,
    "voltage_l3": 229.9,
    "voltage_ll_avg": 398.6,
    "voltage_l1_l2": 399.1,
    "voltage_l2_l3": 397.5,
    "voltage_l3_l1": 399.2,
    "frequency": 49.98,
    "power_total": -4730.0,
    "power_l1": -1610.0,
    "power_l2": -1500.0,
    "power_l3": -1620.0,
    "apparent_power_total": 4840.0,
    "reactive_power_total": -990.0,
    "power_factor_total": -0.97,
    "power_factor_l1": 0.95,
    "energy_import": 123456.789,
    "energy_export": 4567.001,
}


def serve(meter_model: int = 203, base: int = 40000, values: Mapping[str, float] = VALUES_203, **kwargs):
    regmap, fixed, factors = sunspec_server_layout(meter_model, base, **kwargs)
    image = {**fixed, **regmap.encode({k: v for k, v in values.items() if k in names(regmap)}, factors)}
    return regmap, image, factors


def names(regmap: RegisterMap) -> set[str]:
    return {r.name for r in regmap.quantities}


# -- model layouts (data) --------------------------------------------------------------------

# Offsets from the model's ID register, checked against the SunSpec Alliance's model
# definitions (sunspec/models json/model_201..204.json): ID, L, then these.
OFFICIAL_METER_OFFSETS = {
    "A": 2, "AphA": 3, "AphB": 4, "AphC": 5, "A_SF": 6,
    "PhV": 7, "PhVphA": 8, "PhVphB": 9, "PhVphC": 10, "PPV": 11, "V_SF": 15,
    "Hz": 16, "Hz_SF": 17,
    "W": 18, "WphA": 19, "WphB": 20, "WphC": 21, "W_SF": 22,
    "VA": 23, "VAphA": 24, "VAphB": 25, "VAphC": 26, "VA_SF": 27,
    "VAR": 28, "VARphA": 29, "VARphB": 30, "VARphC": 31, "VAR_SF": 32,
    "PF": 33, "PFphA": 34, "PFphB": 35, "PFphC": 36, "PF_SF": 37,
    "TotWhExp": 38, "TotWhExpPhA": 40, "TotWhExpPhB": 42, "TotWhExpPhC": 44,
    "TotWhImp": 46, "TotWhImpPhA": 48, "TotWhImpPhB": 50, "TotWhImpPhC": 52, "TotWh_SF": 54,
    "TotVAhExp": 55, "TotVAhImp": 63, "TotVAh_SF": 71,
    "TotVArhImpQ1": 72, "TotVArhImpQ2": 80, "TotVArhExpQ3": 88, "TotVArhExpQ4": 96,
    "TotVArh_SF": 104, "Evt": 105,
}


def test_the_shipped_models_are_common_and_meters() -> None:
    assert available_models() == [1, 201, 202, 203, 204]


@pytest.mark.parametrize("model_id", METER_MODEL_IDS)
def test_meter_model_offsets_match_the_sunspec_definition(model_id: int) -> None:
    model = load_model(model_id)
    assert (model.id, model.length) == (model_id, 105)
    for name, offset in OFFICIAL_METER_OFFSETS.items():
        assert model.point(name).offset == offset, name
    ll = ("PPVphAB", "PPVphBC", "PPVphCA") if model_id == 201 else ("PhVphAB", "PhVphBC", "PhVphCA")
    assert [model.point(n).offset for n in ll] == [12, 13, 14]
    assert model.point("TotWhImp").type == "acc32" and model.point("TotWhImp").size == 2
    assert model.point("Evt").type == "bitfield32"
    assert all(model.point(p.sf).type == "sunssf" for p in model.points if p.sf)


def test_common_model_layout() -> None:
    model = load_model(1)
    assert model.length == 66
    layout = [(p.name, p.offset, p.type, p.size) for p in model.points]
    assert layout == [
        ("Mn", 2, "string", 16), ("Md", 18, "string", 16), ("Opt", 34, "string", 8),
        ("Vr", 42, "string", 8), ("SN", 50, "string", 16), ("DA", 66, "uint16", 1),
        ("Pad", 67, "pad", 1),
    ]


def test_meter_map_speaks_our_vocabulary() -> None:
    regmap = model_register_map(203, 40070, vendor="Acme", model="M3")
    assert (regmap.function, regmap.word_order, regmap.byte_order, regmap.not_implemented) == (3, "big", "big", "sunspec")
    pf = regmap.register("power_factor_total")
    assert (pf.address, pf.type, pf.scale, pf.scale_register, pf.unit, pf.min, pf.max) == (40070 + 33, "int16", 0.01, "PF_SF", "", -1.0, 1.0)
    energy = regmap.register("energy_import")
    assert (energy.address, energy.type, energy.scale, energy.kind, energy.unit, energy.scale_register) == (40070 + 46, "uint32", 0.001, "counter", "kWh", "TotWh_SF")
    assert regmap.register("energy_export").address == 40070 + 38
    assert regmap.register("current_sum").address == 40072
    assert regmap.register("voltage_l1_l2").address == 40070 + 12
    sf = regmap.register("W_SF")
    assert (sf.address, sf.type, sf.kind) == (40070 + 22, "int16", "scale_factor")
    assert {r.name for r in regmap.registers if r.kind == "scale_factor"} == {
        "A_SF", "V_SF", "Hz_SF", "W_SF", "VA_SF", "VAR_SF", "PF_SF", "TotWh_SF"
    }
    # every quantity with a scale factor register names one of this map
    for reg in regmap.quantities:
        assert reg.scale_register is not None
        regmap.register(reg.scale_register)
    # optional accumulators read 0 when not implemented: never reported (see model files)
    assert all(r.name in ("energy_import", "energy_export") for r in regmap.quantities if r.kind == "counter")
    # SunSpec guarantees the whole model is readable: one read from A to TotWh_SF
    assert regmap.plan() == [ReadBlock(3, 40072, 53)]
    assert len(regmap.plan(max_registers=32)) == 2


def test_single_phase_model_reports_single_phase_names() -> None:
    regmap = model_register_map(201, 0, vendor="Acme", model="M1")
    assert {"current_l1", "voltage_l1", "power_total", "energy_import", "frequency"} <= names(regmap)
    assert not {"current_l2", "power_l1", "voltage_l3"} & names(regmap)


def test_split_phase_model_has_no_phase_c() -> None:
    assert not any(n.endswith(("_l3", "l3_l1", "l2_l3")) for n in names(model_register_map(202, 0, vendor="x", model="y")))


# -- strings ---------------------------------------------------------------------------------


def test_strings_are_two_characters_per_register_nul_padded() -> None:
    assert encode_string("SunS", 2) == list(MARKER)
    assert encode_string("abc", 3) == [0x6162, 0x6300, 0x0000]
    assert decode_string([0x6162, 0x6300, 0x0000]) == "abc"
    assert decode_string(encode_string("x" * 32, 16)) == "x" * 32  # full length, no NUL
    assert decode_string([0x4142, 0x0043, 0x4400]) == "AB"  # stops at the first NUL
    assert decode_string([0, 0]) == ""
    with pytest.raises(ValueError, match="longer than 4"):
        encode_string("too long", 2)
    with pytest.raises(ValueError, match="ASCII"):
        encode_string("Zähler", 8)


# -- discovery -------------------------------------------------------------------------------


@pytest.mark.parametrize("base", BASES)
def test_discovery_at_each_base_decodes_what_was_served(base: int) -> None:
    regmap, image, _ = serve(base=base, serial="EM-2024-0042")
    calls: list[tuple[int, int, int]] = []
    device = run_discover(image, calls)
    assert device.base == base
    assert device.models == (ModelRef(1, base + 2, 66), ModelRef(203, base + 70, 105))
    assert device.end_marker
    assert device.common.manufacturer == "gridtrace-sim"
    assert device.common.model == "SIM-203"
    assert device.common.serial == "EM-2024-0042"
    assert device.common.device_address == 1
    assert str(device) == (
        f"gridtrace-sim SIM-203 serial EM-2024-0042, meter model 203 at {base + 70} "
        f"(SunSpec base {base}, models 1, 203)"
    )
    found = device.register_map()
    assert found.registers == regmap.registers
    assert (found.vendor, found.model) == ("gridtrace-sim", "SIM-203")
    values = read_all(found, image)
    for name, value in VALUES_203.items():
        assert values[name] == pytest.approx(value, abs=1e-9), name
    # the bases are tried in the specified order, and no further than needed
    marker_reads = [c for c in calls if c[2] == 2 and c[1] in BASES]
    assert [c[1] for c in marker_reads][: BASES.index(base) + 1] == list(BASES[: BASES.index(base) + 1])


def test_40000_wins_over_0_when_both_hold_a_marker() -> None:
    _, image, _ = serve(base=40000)
    _, low, _ = serve(base=0, meter_model=201)
    device = run_discover({**low, **image})
    assert device.base == 40000 and device.meter_model.id == 203


@pytest.mark.parametrize("meter_model", METER_MODEL_IDS)
def test_every_meter_model_round_trips(meter_model: int) -> None:
    values = {
        "current_l1": 12.34, "voltage_l1": 230.5, "power_total": 2840.0,
        "power_factor_total": 0.99, "frequency": 50.02, "energy_import": 8123.456, "energy_export": 0.0,
    }
    _, image, _ = serve(meter_model, values=values, model=f"SIM-{meter_model}")
    device = run_discover(image)
    assert device.meter_model.id == meter_model
    decoded = read_all(device.register_map(), image)
    for name, value in values.items():
        assert decoded[name] == pytest.approx(value, abs=1e-9), name


def test_chain_walk_skips_other_models_and_finds_the_meter() -> None:
    # common, an inverter model 103 (length 50), a vendor model, then the meter, the end.
    _, served, _ = serve()
    meter_words = [served[a] for a in range(40070, 40070 + 107)]
    image = {a: w for a, w in served.items() if a < 40070}
    address = 40070
    for model_id, length in ((103, 50), (64001, 7)):
        image[address], image[address + 1] = model_id, length
        for i in range(length):
            image[address + 2 + i] = 0x8000
        address += 2 + length
    for offset, word in enumerate(meter_words):
        image[address + offset] = word
    image[address + 107], image[address + 108] = 0xFFFF, 0
    device = run_discover(image)
    assert device.models == (
        ModelRef(1, 40002, 66), ModelRef(103, 40070, 50), ModelRef(64001, 40122, 7), ModelRef(203, 40131, 105)
    )
    assert device.meter_model == ModelRef(203, address, 105)
    decoded = read_all(device.register_map(), image)
    assert decoded["power_total"] == pytest.approx(-4730.0)
    assert decoded["energy_import"] == pytest.approx(123456.789)


def test_common_model_strings_and_short_common_model() -> None:
    _, image, _ = serve(manufacturer="M" * 32, model="Acme Meter 3000", serial="1")
    device = run_discover(image)
    assert (device.common.manufacturer, device.common.model, device.common.serial) == ("M" * 32, "Acme Meter 3000", "1")
    assert (device.common.options, device.common.version) == ("", "1.0")
    # An older device: common model of length 65 (no Pad) and DA not implemented.
    short = dict(image)
    short[40003] = 65
    short[40068] = 0xFFFF  # DA
    # shift the meter model and end marker down by one register
    for a in range(40069, 40178):
        short[a] = image[a + 1]
    del short[40178]
    device = run_discover(short)
    assert device.common.device_address is None
    assert device.common.manufacturer == "M" * 32
    assert device.meter_model.address == 40069
    assert read_all(device.register_map(), short)["voltage_l1"] == pytest.approx(231.4)


@pytest.mark.parametrize(
    "factors",
    [
        {"V_SF": -2, "A_SF": -3, "W_SF": 0, "PF_SF": -1, "TotWh_SF": -1, "Hz_SF": -2},
        {"V_SF": 0, "A_SF": -1, "W_SF": 2, "PF_SF": 0, "TotWh_SF": 2, "Hz_SF": -1},
    ],
)
def test_scale_factors_are_read_from_the_device(factors: dict[str, int]) -> None:
    values = {"voltage_l1": 231.4, "current_l1": 7.012, "power_total": -4700.0,
              "power_factor_total": -0.97, "energy_import": 12345.6, "frequency": 50.012}
    regmap, image, chosen = serve(values=values, scale_factors=factors)
    assert {k: chosen[k] for k in factors} == factors
    decoded = read_all(run_discover(image).register_map(), image)
    for name, value in values.items():
        reg = regmap.register(name)
        resolution = reg.scale * 10.0 ** chosen[reg.scale_register]
        assert abs(decoded[name] - value) <= resolution / 2 + 1e-9, (name, decoded[name])
    # the raw word really is scaled by the factor (not a float in disguise)
    sf = chosen["V_SF"]
    assert image[regmap.register("voltage_l1").address] == round(231.4 / 10.0**sf)


@given(
    v_sf=st.integers(-2, 0),
    w_sf=st.integers(0, 2),
    voltage=st.floats(0, 300),
    power=st.floats(-30000, 30000),
    energy=st.floats(0, 4_000_000),
)
@settings(max_examples=60, deadline=None)
def test_round_trip_within_resolution(v_sf: int, w_sf: int, voltage: float, power: float, energy: float) -> None:
    values = {"voltage_l1": voltage, "power_total": power, "energy_import": energy}
    regmap, image, _ = serve(values=values, scale_factors={"V_SF": v_sf, "W_SF": w_sf})
    decoded = read_all(regmap, image)
    assert abs(decoded["voltage_l1"] - voltage) <= 10.0**v_sf / 2 + 1e-9
    assert abs(decoded["power_total"] - power) <= 10.0**w_sf / 2 + 1e-9
    assert abs(decoded["energy_import"] - energy) <= 0.001 / 2 + 1e-9


def test_points_without_a_value_read_as_not_implemented() -> None:
    regmap, image, _ = serve(values={"voltage_l1": 230.0, "energy_import": 10.0})
    decoded = read_all(run_discover(image).register_map(), image)
    assert decoded["voltage_l1"] == pytest.approx(230.0)
    assert decoded["energy_import"] == pytest.approx(10.0)
    for name in ("voltage_l2", "current_l1", "power_total", "power_factor_total", "frequency"):
        assert math.isnan(decoded[name]), name
    # what a third-party client sees: SunSpec's not-implemented words
    assert image[regmap.register("voltage_l2").address] == 0x8000
    assert image[regmap.register("power_total").address] == 0x8000


def test_a_scale_factor_not_implemented_makes_its_quantities_nan() -> None:
    regmap, image, _ = serve()
    image[regmap.register("V_SF").address] = 0x8000
    decoded = read_all(regmap, image)
    assert all(math.isnan(decoded[n]) for n in ("voltage_l1", "voltage_ln_avg", "voltage_l1_l2"))
    assert decoded["current_l1"] == pytest.approx(7.01)


# -- errors ----------------------------------------------------------------------------------


def test_no_marker_anywhere_says_what_to_check() -> None:
    image = {a: 0 for a in range(10)} | {a: 0x1234 for a in range(40000, 40010)}
    with pytest.raises(SunSpecNotFound) as err:
        run_discover(image)
    message = str(err.value)
    assert "not a SunSpec device or wrong unit id / register base" in message
    for base in ("40000", "0", "50000"):
        assert base in message
    assert "0x1234" in message and "IllegalAddress" in message
    assert "connection" not in message  # the device answered: it is not a wiring problem


def test_a_device_that_fails_every_read_is_not_found() -> None:
    async def read(function: int, start: int, count: int) -> list[int]:
        raise TimeoutError("no answer")

    with pytest.raises(SunSpecNotFound, match="TimeoutError") as err:
        asyncio.run(discover(read))
    assert "check the connection and unit id first" in str(err.value)
    assert isinstance(err.value.__cause__, TimeoutError)  # a caller can tell a timeout apart


def test_chain_broken_at_the_first_model() -> None:
    image = {40000: MARKER[0], 40001: MARKER[1]}
    with pytest.raises(SunSpecChainError, match="marker found at 40000 but reading the model header at 40002"):
        run_discover(image)


def test_chain_broken_before_the_meter_model() -> None:
    _, image, _ = serve()
    del image[40070]  # the meter model's header cannot be read
    with pytest.raises(SunSpecChainError) as err:
        run_discover(image)
    assert "broken" in str(err.value) and "1@40002" in str(err.value) and "40070" in str(err.value)


def test_chain_without_end_marker_after_the_meter_is_accepted_and_said() -> None:
    _, image, _ = serve()
    del image[40177], image[40178]
    device = run_discover(image)
    assert device.meter_model.id == 203 and not device.end_marker


def test_model_id_zero_breaks_the_chain() -> None:
    _, image, _ = serve()
    image[40003] = 60  # common model claims 60 registers: the next header lands inside it
    image[40064], image[40065] = 0, 0
    with pytest.raises(SunSpecChainError, match="model id 0"):
        run_discover(image)


def test_no_meter_model_names_what_the_device_has() -> None:
    _, image, _ = serve()
    image[40070] = 103  # an inverter, not a meter
    with pytest.raises(SunSpecNoMeterModel) as err:
        run_discover(image)
    assert "no meter model 201-204" in str(err.value) and "1, 103" in str(err.value)
    assert "unit id" in str(err.value)
    device = SunSpecDevice(40000, (ModelRef(1, 40002, 66),), run_discover(serve()[1]).common)
    with pytest.raises(SunSpecNoMeterModel):
        device.register_map()


def test_runaway_chain_stops() -> None:
    image = {40000: MARKER[0], 40001: MARKER[1]}
    address = 40002
    for _ in range(MAX_MODELS + 50):
        image[address], image[address + 1] = 7, 0
        address += 2
    with pytest.raises(SunSpecChainError, match=f"more than {MAX_MODELS} models"):
        run_discover(image)


def test_a_chain_of_exactly_the_limit_is_walked() -> None:
    _, served, _ = serve()
    meter = [served[a] for a in range(40070, 40070 + 107)]
    image = {a: w for a, w in served.items() if a < 40070}
    address = 40070
    for _ in range(MAX_MODELS - 2):  # common + these + the meter = MAX_MODELS
        image[address], image[address + 1] = 7, 0
        address += 2
    for offset, word in enumerate(meter):
        image[address + offset] = word
    image[address + 107], image[address + 108] = 0xFFFF, 0
    device = run_discover(image)
    assert len(device.models) == MAX_MODELS and device.end_marker
    assert read_all(device.register_map(), image)["voltage_l1"] == pytest.approx(231.4)


def test_chain_running_past_the_register_space_stops() -> None:
    image = {50000: MARKER[0], 50001: MARKER[1], 50002: 1, 50003: 20000}
    with pytest.raises(SunSpecChainError, match="past register 65535"):
        run_discover(image)


def test_no_common_model() -> None:
    _, image, _ = serve()
    image[40002] = 64000  # the common model's id tampered into a vendor model
    with pytest.raises(SunSpecChainError, match="no common model 1"):
        run_discover(image)


def test_meter_model_shorter_than_the_standard() -> None:
    _, image, _ = serve()
    image[40071] = 90
    image[40070 + 92], image[40070 + 93] = 0xFFFF, 0
    with pytest.raises(SunSpecChainError, match="declares length 90"):
        run_discover(image)


def test_all_errors_are_sunspec_errors() -> None:
    for cls in (SunSpecNotFound, SunSpecChainError, SunSpecNoMeterModel, SunSpecModelError):
        assert issubclass(cls, SunSpecError)


# -- tampering -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "marker",
    [(0x5375, 0x6E54), (0x6E53, 0x5375), (0x7553, 0x536E), (0x5375,)],
    ids=["SunT", "words swapped", "bytes swapped", "half"],
)
def test_a_tampered_marker_is_not_a_marker(marker: tuple[int, ...]) -> None:
    _, image, _ = serve()
    del image[40001]
    for i, word in enumerate(marker):
        image[40000 + i] = word
    with pytest.raises(SunSpecNotFound):
        run_discover(image)


def test_a_changed_scale_factor_changes_the_reading() -> None:
    regmap, image, _ = serve()
    image[regmap.register("V_SF").address] = 0  # was -1
    assert read_all(regmap, image)["voltage_l1"] == pytest.approx(2314.0)
    image[regmap.register("V_SF").address] = 11  # beyond any sane exponent
    assert math.isnan(read_all(regmap, image)["voltage_l1"])


def test_a_tampered_model_length_moves_the_chain() -> None:
    _, image, _ = serve()
    image[40071] = 107  # meter model claims two more registers: the end marker is stepped over
    device = run_discover(image)
    assert device.meter_model == ModelRef(203, 40070, 107)
    assert not device.end_marker  # the walk ran into unreadable registers, and says so


def test_an_energy_counter_word_swap_is_visible() -> None:
    regmap, image, _ = serve()
    address = regmap.register("energy_import").address
    image[address], image[address + 1] = image[address + 1], image[address]
    decoded = read_all(regmap, image)
    assert decoded["energy_import"] != pytest.approx(VALUES_203["energy_import"])


# -- the serving side ------------------------------------------------------------------------


def test_server_layout_is_one_contiguous_block_an_independent_client_can_read() -> None:
    regmap, fixed, factors = sunspec_server_layout()
    assert sorted(fixed) == list(range(40000, 40000 + 2 + 68 + 107 + 2))
    assert all(0 <= w <= 0xFFFF for w in fixed.values())
    # decode by hand, as mbpoll's user would
    assert struct.pack(">HH", fixed[40000], fixed[40001]) == b"SunS"
    assert (fixed[40002], fixed[40003]) == (1, 66)
    assert struct.pack(">16H", *(fixed[40004 + i] for i in range(16))).rstrip(b"\0") == b"gridtrace-sim"
    assert (fixed[40070], fixed[40071]) == (203, 105)
    assert (fixed[40070 + 105], fixed[40070 + 106]) == (0, 0)  # Evt: no events
    assert (fixed[40177], fixed[40178]) == (0xFFFF, 0)
    encoded = regmap.encode(VALUES_203, factors)
    assert set(encoded) <= set(fixed)
    assert factors == {k: DEFAULT_SCALE_FACTORS[k] for k in factors}
    assert encoded[regmap.register("W_SF").address] == DEFAULT_SCALE_FACTORS["W_SF"]
    assert encoded[regmap.register("V_SF").address] == 0xFFFF  # -1


def test_server_layout_rejects_what_it_cannot_serve() -> None:
    with pytest.raises(ValueError, match="meter_model"):
        sunspec_server_layout(meter_model=103)
    with pytest.raises(ValueError, match="'Q_SF'.*V_SF"):
        sunspec_server_layout(scale_factors={"Q_SF": 0})
    with pytest.raises(ValueError, match="'V_SF'.*-10..10"):
        sunspec_server_layout(scale_factors={"V_SF": 12})
    with pytest.raises(ValueError, match="Mn"):
        sunspec_server_layout(manufacturer="x" * 33)
    with pytest.raises(ValueError, match="65535"):
        sunspec_server_layout(base=65500)
    regmap, _, factors = sunspec_server_layout(scale_factors={"W_SF": 0})
    with pytest.raises(RegisterEncodeError, match="power_total"):
        regmap.encode({"power_total": 40000.0}, factors)  # does not fit int16 at W_SF 0


# -- model data files ------------------------------------------------------------------------

GOOD_MODEL = """
[model]
id = 64900
length = 4
label = "test"

[[point]]
name = "W"
offset = 2
type = "int16"
sf = "W_SF"
quantity = "power_total"
quantity_unit = "W"

[[point]]
name = "W_SF"
offset = 3
type = "sunssf"

[[point]]
name = "Wh"
offset = 4
type = "acc32"
"""

BAD_MODELS = {
    "gap": (GOOD_MODEL.replace("offset = 3", "offset = 4"), ["'W_SF'", "'offset'", "end at 3"]),
    "length": (GOOD_MODEL.replace("length = 4", "length = 5"), ["'length'", "5", "4 registers"]),
    "sf not sunssf": (GOOD_MODEL.replace('sf = "W_SF"', 'sf = "Wh"'), ["'W'", "'sf'", "'Wh'"]),
    "unknown type": (GOOD_MODEL.replace('type = "acc32"', 'type = "acc31"'), ["'Wh'", "'type'", "acc31"]),
    "string quantity": (GOOD_MODEL.replace('type = "acc32"', 'type = "string"\nsize = 2\nquantity = "x"'), ["'Wh'", "'quantity'"]),
    "wrong size": (GOOD_MODEL.replace('type = "acc32"', 'type = "acc32"\nsize = 1'), ["'Wh'", "'size'"]),
    "unknown field": (GOOD_MODEL.replace('label = "test"', 'label = "test"\nlen = 4'), ["[model]", "len"]),
    "missing offset": (GOOD_MODEL.replace("offset = 4\n", ""), ["'Wh'", "'offset'", "missing"]),
    "not toml": (GOOD_MODEL + "[[point]\n", ["TOML"]),
    "duplicate point": (GOOD_MODEL.replace('name = "Wh"', 'name = "W"'), ["'W'", "'name'", "twice"]),
    "duplicate quantity": (
        GOOD_MODEL.replace('type = "acc32"', 'type = "acc32"\nquantity = "power_total"'),
        ["'Wh'", "'quantity'", "'power_total'", "'W'"],
    ),
    "sf is a quantity": (
        GOOD_MODEL.replace('name = "W_SF"\noffset = 3\ntype = "sunssf"', 'name = "W_SF"\noffset = 3\ntype = "sunssf"\nquantity = "k"'),
        ["'W_SF'", "scale factor and a quantity"],
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_MODELS))
def test_bad_model_data_names_file_point_and_field(case: str) -> None:
    text, fragments = BAD_MODELS[case]
    with pytest.raises(SunSpecModelError) as err:
        parse_model(text, "model_64900.toml")
    message = str(err.value)
    assert "model_64900.toml" in message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} missing from: {message}"


def test_a_good_model_parses() -> None:
    model = parse_model(GOOD_MODEL, "x")
    assert [(p.name, p.offset, p.size) for p in model.points] == [("W", 2, 1), ("W_SF", 3, 1), ("Wh", 4, 2)]


def test_shipped_model_files_parse_from_disk() -> None:
    # the same check load_model makes, straight from the files an engineer would read
    directory = Path(__file__).resolve().parent.parent / "edge" / "registermaps" / "sunspec"
    files = sorted(directory.glob("model_*.toml"))
    assert len(files) == 5
    for path in files:
        assert parse_model(path.read_text(), str(path)).id == int(path.stem.removeprefix("model_"))
