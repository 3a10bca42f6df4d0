"""Register maps: the built-in SDM630 map, block planning, encode/decode and file errors."""

from __future__ import annotations

import dataclasses
import math
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.registermap import (
    TYPES,
    ReadBlock,
    Register,
    RegisterEncodeError,
    RegisterMap,
    RegisterMapError,
    available_register_maps,
    load_register_map,
    load_register_map_file,
)

SDM630_REQUIRED = {
    "voltage_l1": (0x0000, "V"),
    "voltage_l2": (0x0002, "V"),
    "voltage_l3": (0x0004, "V"),
    "current_l1": (0x0006, "A"),
    "current_l2": (0x0008, "A"),
    "current_l3": (0x000A, "A"),
    "power_l1": (0x000C, "W"),
    "power_l2": (0x000E, "W"),
    "power_l3": (0x0010, "W"),
    "power_total": (0x0034, "W"),
    "power_factor_total": (0x003E, ""),
    "frequency": (0x0046, "Hz"),
    "energy_import": (0x0048, "kWh"),
    "energy_export": (0x004A, "kWh"),
    "energy_total": (0x0156, "kWh"),
}

RANGES = {
    "int16": (-(2**15), 2**15 - 1),
    "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
    # values are floats: 64-bit integers round-trip exactly up to 2**53
    "int64": (-(2**53), 2**53),
    "uint64": (0, 2**53),
}
ORDERS = [(w, b) for w in ("big", "little") for b in ("big", "little")]


def make_map(registers: list[Register], word_order: str = "big", byte_order: str = "big", max_gap: int = 8) -> RegisterMap:
    return RegisterMap(
        name="test",
        vendor="Acme",
        model="T1",
        function=4,
        word_order=word_order,
        byte_order=byte_order,
        registers=tuple(registers),
        max_gap=max_gap,
    )


# -- the built-in map ----------------------------------------------------------------------


def test_sdm630_is_built_in_and_has_the_documented_registers() -> None:
    assert "eastron_sdm630" in available_register_maps()
    regmap = load_register_map("eastron_sdm630")
    assert (regmap.vendor, regmap.model, regmap.function) == ("Eastron", "SDM630", 4)
    assert (regmap.word_order, regmap.byte_order) == ("big", "big")
    for name, (address, unit) in SDM630_REQUIRED.items():
        reg = regmap.register(name)
        assert (reg.address, reg.unit, reg.type, reg.width) == (address, unit, "float32", 2), name
    assert all(r.type == "float32" and r.scale == 1.0 for r in regmap.registers)
    counters = {r.name for r in regmap.registers if r.kind == "counter"}
    assert {"energy_import", "energy_export", "energy_total"} <= counters
    assert all(r.name.startswith("energy_") for r in regmap.registers if r.kind == "counter")


def test_sdm630_reads_in_few_blocks() -> None:
    regmap = load_register_map("eastron_sdm630")
    blocks = spans(regmap)
    assert all(count <= 64 for _, count in blocks)
    assert_covers(regmap, blocks)
    assert len(blocks) <= 5


def test_unknown_builtin_map_names_the_available_ones() -> None:
    with pytest.raises(RegisterMapError, match="eastron_sdm630") as err:
        load_register_map("eastron_sdm999")
    assert "eastron_sdm999" in str(err.value)


def test_register_lookup_names_the_map() -> None:
    with pytest.raises(KeyError, match="eastron_sdm630"):
        load_register_map("eastron_sdm630").register("voltage_l4")


# -- block planning ------------------------------------------------------------------------


def spans(regmap: RegisterMap, *args: object, **kwargs: object) -> list[tuple[int, int]]:
    return [(b.start, b.count) for b in regmap.plan(*args, **kwargs)]  # type: ignore[arg-type]


def assert_covers(regmap: RegisterMap, blocks: list[tuple[int, int]]) -> None:
    assert blocks == sorted(blocks)
    for (s1, c1), (s2, _) in zip(blocks, blocks[1:]):
        assert s1 + c1 <= s2, "blocks overlap"
    for reg in regmap.registers:
        holding = [b for b in blocks if b[0] <= reg.address and reg.end <= b[0] + b[1]]
        assert len(holding) == 1, f"{reg.name} not inside exactly one block"


def test_blocks_bridge_small_gaps_only() -> None:
    regs = [
        Register("a", 0, "float32", "V"),
        Register("b", 4, "float32", "V"),  # gap of 2: bridged
        Register("c", 30, "uint16", "V"),  # gap of 24: new block
    ]
    assert spans(make_map(regs)) == [(0, 6), (30, 1)]
    assert spans(make_map(regs), max_gap=0) == [(0, 2), (4, 2), (30, 1)]
    assert spans(make_map(regs, max_gap=0)) == [(0, 2), (4, 2), (30, 1)]
    assert spans(make_map(regs), max_gap=30) == [(0, 31)]


def test_blocks_never_split_a_register() -> None:
    regs = [Register(f"r{i}", 2 * i, "float32", "W") for i in range(5)]
    # 3 registers would fit in a 7-register block only by splitting the fourth
    assert spans(make_map(regs), max_registers=7) == [(0, 6), (6, 4)]
    with pytest.raises(ValueError):
        spans(make_map([Register("d", 0, "float64", "kWh")]), max_registers=3)


def fewest_blocks(regs: list[Register], max_registers: int, max_gap: int) -> int:
    """Reference: minimal number of contiguous groups, by dynamic programming."""
    regs = sorted(regs, key=lambda r: r.address)
    best = [0] + [math.inf] * len(regs)
    for j in range(1, len(regs) + 1):
        for i in range(j):
            group = regs[i:j]
            span_ok = group[-1].end - group[0].address <= max_registers
            gaps_ok = all(b.address - a.end <= max_gap for a, b in zip(group, group[1:]))
            if span_ok and gaps_ok:
                best[j] = min(best[j], best[i] + 1)
    return int(best[-1])


@st.composite
def register_layouts(draw: st.DrawFn) -> list[Register]:
    regs = []
    address = draw(st.integers(0, 20))
    for i in range(draw(st.integers(1, 12))):
        reg_type = draw(st.sampled_from(TYPES))
        regs.append(Register(f"r{i}", address, reg_type, "x"))
        address = regs[-1].end + draw(st.integers(0, 12))
    return regs


@given(register_layouts(), st.integers(4, 40), st.integers(0, 10))
@settings(max_examples=200, deadline=None)
def test_blocks_cover_everything_in_as_few_reads_as_possible(
    regs: list[Register], max_registers: int, max_gap: int
) -> None:
    regmap = make_map(regs)
    blocks = spans(regmap, max_registers, max_gap=max_gap)
    assert_covers(regmap, blocks)
    assert all(count <= max_registers for _, count in blocks)
    assert len(blocks) == fewest_blocks(regs, max_registers, max_gap)


# -- encode / decode -----------------------------------------------------------------------


@pytest.mark.parametrize(("word_order", "byte_order"), ORDERS)
@pytest.mark.parametrize("reg_type", TYPES)
@given(data=st.data())
@settings(max_examples=40, deadline=None)
def test_decode_inverts_encode(reg_type: str, word_order: str, byte_order: str, data: st.DataObject) -> None:
    regmap = make_map([Register("q", 10, reg_type, "x")], word_order, byte_order)
    if reg_type in RANGES:
        value = float(data.draw(st.integers(*RANGES[reg_type])))
        expected = value
    else:
        width = 32 if reg_type == "float32" else 64
        value = data.draw(st.floats(allow_nan=False, allow_infinity=False, width=width))
        expected = value
    words = regmap.encode({"q": value})
    assert sorted(words) == list(range(10, 10 + regmap.register("q").width))
    assert all(0 <= w <= 0xFFFF for w in words.values())
    assert regmap.decode(10, [words[a] for a in sorted(words)]) == {"q": expected}


@pytest.mark.parametrize(("word_order", "byte_order"), ORDERS)
@pytest.mark.parametrize("reg_type", TYPES)
@given(data=st.data())
@settings(max_examples=40, deadline=None)
def test_encode_inverts_decode(reg_type: str, word_order: str, byte_order: str, data: st.DataObject) -> None:
    regmap = make_map([Register("q", 0, reg_type, "x")], word_order, byte_order)
    width = regmap.register("q").width
    words = data.draw(st.lists(st.integers(0, 0xFFFF), min_size=width, max_size=width))
    value = regmap.decode(0, words)["q"]
    if math.isnan(value):
        return  # NaN payload bits are not promised to survive
    if reg_type.endswith("int64") and abs(value) > 2**53:
        return  # values are floats; wider integers are rounded
    assert regmap.encode({"q": value}) == dict(enumerate(words))


@pytest.mark.parametrize(
    ("word_order", "byte_order", "expected"),
    [
        ("big", "big", [0x4366, 0x8000]),
        ("little", "big", [0x8000, 0x4366]),
        ("big", "little", [0x6643, 0x0080]),
        ("little", "little", [0x0080, 0x6643]),
    ],
)
def test_float32_word_and_byte_order_on_the_wire(word_order: str, byte_order: str, expected: list[int]) -> None:
    regmap = make_map([Register("v", 0, "float32", "V")], word_order, byte_order)
    assert struct.pack(">f", 230.5).hex() == "43668000"
    assert regmap.encode({"v": 230.5}) == {0: expected[0], 1: expected[1]}
    assert regmap.decode(0, expected) == {"v": 230.5}


def test_int32_and_uint16_known_words() -> None:
    regmap = make_map([Register("a", 0, "int32", "W"), Register("b", 2, "uint16", "V")])
    assert regmap.encode({"a": -2, "b": 65535}) == {0: 0xFFFF, 1: 0xFFFE, 2: 0xFFFF}


def test_scale_applies_both_ways() -> None:
    regmap = make_map([Register("v", 0, "uint16", "V", scale=0.1), Register("e", 1, "int32", "kWh", scale=0.01)])
    words = regmap.encode({"v": 230.5, "e": -12345.67})
    assert words == {0: 2305, 1: 0xFFED, 2: 0x2979}
    decoded = regmap.decode(0, [words[0], words[1], words[2]])
    assert decoded["v"] == pytest.approx(230.5)
    assert decoded["e"] == pytest.approx(-12345.67)


def test_decode_takes_only_registers_wholly_inside() -> None:
    regmap = load_register_map("eastron_sdm630")
    words = regmap.encode({"voltage_l1": 231.0, "voltage_l2": 229.0, "voltage_l3": 230.0})
    window = [words[a] for a in range(0, 5)]  # voltage_l3 is cut in half
    assert regmap.decode(0, window) == {"voltage_l1": 231.0, "voltage_l2": 229.0}
    assert regmap.decode(2, [words[2], words[3]]) == {"voltage_l2": 229.0}


def test_encode_rejects_what_does_not_fit() -> None:
    regmap = make_map([Register("u", 0, "uint16", "V"), Register("f", 1, "float32", "V")])
    with pytest.raises(RegisterEncodeError, match="'u'.*out of range"):
        regmap.encode({"u": 70000})
    with pytest.raises(RegisterEncodeError, match="'u'"):
        regmap.encode({"u": -1})
    with pytest.raises(RegisterEncodeError, match="'u'"):
        regmap.encode({"u": float("nan")})
    with pytest.raises(RegisterEncodeError, match="'f'.*out of range"):
        regmap.encode({"f": 1e300})
    with pytest.raises(RegisterEncodeError, match="'nope'"):
        regmap.encode({"nope": 1.0})


# -- bad files -----------------------------------------------------------------------------

HEAD = """
[map]
name = "acme"
vendor = "Acme"
model = "T1"
function = 4
word_order = "big"
byte_order = "big"
"""

GOOD_REGISTER = """
[[register]]
name = "voltage"
address = 0
type = "float32"
unit = "V"
"""


def register(**fields: object) -> str:
    base: dict[str, object] = {"name": "power", "address": 10, "type": "float32", "unit": "W"}
    base.update(fields)
    lines = ["[[register]]"]
    for key, value in base.items():
        if value is None:
            continue
        lines.append(f"{key} = {value!r}".replace("'", '"').replace("True", "true"))
    return "\n".join(lines) + "\n"


BAD_FILES = {
    "bad type": (HEAD + GOOD_REGISTER + register(type="flaot32"), ["'power'", "'type'", "flaot32", "float32"]),
    "overlap": (HEAD + GOOD_REGISTER + register(address=1), ["'power'", "'address'", "overlaps", "'voltage'"]),
    "duplicate name": (HEAD + GOOD_REGISTER + register(name="voltage"), ["'voltage'", "'name'", "twice"]),
    "address too high": (HEAD + register(address=65535), ["'power'", "'address'", "65535"]),
    "negative address": (HEAD + register(address=-1), ["'power'", "'address'"]),
    "address is a bool": (HEAD + register(address=True), ["'power'", "'address'"]),
    "missing unit": (HEAD + register(unit=None), ["'power'", "'unit'", "missing"]),
    "unknown field": (HEAD + register(adress=3), ["'power'", "adress"]),
    "bad kind": (HEAD + register(kind="cumulative"), ["'power'", "'kind'", "counter"]),
    "zero scale": (HEAD + register(scale=0.0), ["'power'", "'scale'"]),
    "bad function": (HEAD.replace("function = 4", "function = 5") + GOOD_REGISTER, ["[map]", "'function'", "5"]),
    "bad word order": (HEAD.replace('word_order = "big"', 'word_order = "middle"') + GOOD_REGISTER, ["'word_order'", "middle"]),
    "missing byte order": (HEAD.replace('byte_order = "big"', "") + GOOD_REGISTER, ["'byte_order'", "missing"]),
    "no registers": (HEAD, ["[[register]]"]),
    "no map table": (GOOD_REGISTER, ["[map]"]),
    "not toml": (HEAD + "[[register]\n", ["TOML"]),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_files_are_rejected_naming_file_register_and_field(case: str, tmp_path: Path) -> None:
    text, expected = BAD_FILES[case]
    path = tmp_path / "acme_t1.toml"
    path.write_text(text)
    with pytest.raises(RegisterMapError) as err:
        load_register_map_file(path)
    message = str(err.value)
    assert str(path) in message
    for fragment in expected:
        assert fragment in message, f"{fragment!r} missing from: {message}"


def test_a_good_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "acme_t1.toml"
    path.write_text(HEAD + GOOD_REGISTER + register(type="int32", scale=0.1, kind="counter", description="d"))
    regmap = load_register_map_file(path)
    assert regmap.register("power") == Register("power", 10, "int32", "W", 0.1, "counter", "d")
    assert spans(regmap) == [(0, 12)]


def test_missing_file_is_a_register_map_error(tmp_path: Path) -> None:
    with pytest.raises(RegisterMapError, match="nope.toml"):
        load_register_map_file(tmp_path / "nope.toml")


# -- per-register function code and word/byte order ----------------------------------------


def test_plan_never_mixes_function_codes() -> None:
    regs = [
        Register("in_a", 0, "float32", "V"),  # the map's default: function 4
        Register("hold_a", 2, "float32", "V", function=3),  # adjacent, but another table
        Register("in_b", 4, "float32", "V"),
        Register("hold_b", 0, "uint16", "V", function=3),  # same address as in_a: allowed
    ]
    blocks = make_map(regs).plan()
    assert [(b.function, b.start, b.count) for b in blocks] == [(4, 0, 6), (3, 0, 4)]


@given(register_layouts(), st.lists(st.sampled_from([3, 4]), min_size=12, max_size=12), st.integers(4, 40))
@settings(max_examples=100, deadline=None)
def test_every_register_is_read_with_its_own_function(regs: list[Register], functions: list[int], max_registers: int) -> None:
    regs = [dataclasses.replace(r, function=f) for r, f in zip(regs, functions)]
    regmap = make_map(regs)
    blocks = regmap.plan(max_registers)
    assert [b.function for b in blocks] == sorted((b.function for b in blocks), reverse=True)  # input first
    for function in (3, 4):
        same = [b for b in blocks if b.function == function]
        assert_covers(make_map([r for r in regs if r.function == function]), [(b.start, b.count) for b in same])


def test_decode_honours_each_registers_function_code() -> None:
    regmap = make_map([Register("v_in", 0, "uint16", "V"), Register("v_hold", 0, "uint16", "V", function=3)])
    assert regmap.function_of(regmap.register("v_hold")) == 3
    assert regmap.decode(0, [230]) == {"v_in": 230.0}
    assert regmap.decode(0, [231], function=3) == {"v_hold": 231.0}
    blocks = regmap.plan()
    assert regmap.decode_blocks([(blocks[0], [230]), (blocks[1], [231])]) == {"v_in": 230.0, "v_hold": 231.0}


def test_word_and_byte_order_overrides_apply_to_their_register_only() -> None:
    regmap = make_map(
        [
            Register("big", 0, "float32", "V"),
            Register("swapped", 2, "float32", "V", word_order="little"),
            Register("bytes", 4, "float32", "V", byte_order="little"),
            Register("both", 6, "int32", "W", word_order="little", byte_order="little"),
        ]
    )
    words = regmap.encode({"big": 230.5, "swapped": 230.5, "bytes": 230.5, "both": -2})
    assert [words[a] for a in range(8)] == [0x4366, 0x8000, 0x8000, 0x4366, 0x6643, 0x0080, 0xFEFF, 0xFFFF]
    assert regmap.decode(0, [words[a] for a in range(8)]) == {"big": 230.5, "swapped": 230.5, "bytes": 230.5, "both": -2.0}


def test_with_orders_rereads_every_register() -> None:
    sdm = load_register_map("eastron_sdm630")
    words = sdm.encode({"voltage_l1": 230.5})
    assert sdm.decode(0, [words[0], words[1]]) == {"voltage_l1": 230.5}
    swapped = sdm.with_orders("little")
    assert all(r.word_order == "little" and r.byte_order is None for r in swapped.registers)
    assert swapped.decode(0, [words[1], words[0]]) == {"voltage_l1": 230.5}
    # the wrong order gives a value no meter shows: what the plausible range catches
    wrong = swapped.decode(0, [words[0], words[1]])["voltage_l1"]
    assert not sdm.register("voltage_l1").plausible(wrong)
    both = sdm.with_orders("little", "little")
    assert all((r.word_order, r.byte_order) == ("little", "little") for r in both.registers)
    assert both.decode(0, [0x0080, 0x6643]) == {"voltage_l1": 230.5}
    assert (swapped.name, swapped.function, len(swapped.registers)) == (sdm.name, sdm.function, len(sdm.registers))
    # a register's own byte order survives a word-order change
    own = make_map([Register("b", 0, "float32", "V", byte_order="little")]).with_orders("little")
    assert own.register("b").byte_order == "little"


# -- scale-factor registers ---------------------------------------------------------------


def scaled_map(not_implemented: str = "none") -> RegisterMap:
    return RegisterMap(
        name="scaled",
        vendor="Acme",
        model="S1",
        function=3,
        word_order="big",
        byte_order="big",
        registers=(
            Register("voltage", 0, "int16", "V", scale_register="V_SF"),
            Register("V_SF", 1, "int16", "", kind="scale_factor"),
            Register("energy", 2, "uint32", "kWh", scale=0.001, kind="counter", scale_register="E_SF"),
            Register("E_SF", 4, "int16", "", kind="scale_factor"),
        ),
        not_implemented=not_implemented,
    )


@pytest.mark.parametrize(
    ("raw", "sf", "expected"),
    [(2305, -1, 230.5), (23050, -2, 230.5), (23, 1, 230.0), (230, 0, 230.0), (-5, 3, -5000.0), (1, -10, 1e-10)],
)
def test_value_is_raw_times_ten_to_the_scale_factor(raw: int, sf: int, expected: float) -> None:
    decoded = scaled_map().decode(0, [raw & 0xFFFF, sf & 0xFFFF])
    assert decoded == {"voltage": pytest.approx(expected, rel=1e-12)}


def test_scale_and_scale_factor_multiply() -> None:
    regmap = scaled_map()
    # 123456789 Wh at sf -1 -> 12345678.9 Wh -> 12345.6789 kWh
    decoded = regmap.decode(0, [2305, 0xFFFF, 0x075B, 0xCD15, 0xFFFF])
    assert decoded["energy"] == pytest.approx(12345.6789)
    assert "V_SF" not in decoded and "E_SF" not in decoded
    assert [r.name for r in regmap.quantities] == ["voltage", "energy"]


def test_encode_with_scale_factors_inverts_decode() -> None:
    regmap = scaled_map()
    words = regmap.encode({"voltage": 230.5, "energy": 12345.6789}, {"V_SF": -1, "E_SF": -1})
    assert words == {0: 2305, 1: 0xFFFF, 2: 0x075B, 3: 0xCD15, 4: 0xFFFF}
    decoded = regmap.decode(0, [words[a] for a in range(5)])
    assert decoded == {"voltage": pytest.approx(230.5), "energy": pytest.approx(12345.6789)}
    # scale factors default to 0 and are always written
    assert regmap.encode({"voltage": 230.0}) == {0: 230, 1: 0, 4: 0}
    with pytest.raises(RegisterEncodeError, match="'V_SF'.*scale_factors"):
        regmap.encode({"V_SF": 1.0})


def test_scale_factor_not_read_gives_nan() -> None:
    regmap = scaled_map()
    decoded = regmap.decode(0, [2305])  # the block stopped before V_SF
    assert math.isnan(decoded["voltage"])
    blocks = [ReadBlock(3, 0, 1), ReadBlock(3, 1, 1)]
    assert regmap.decode_blocks([(blocks[0], [2305]), (blocks[1], [0xFFFF])]) == {"voltage": pytest.approx(230.5)}


@pytest.mark.parametrize("sf_word", [0x8000, 11, 0xFFF5])  # not implemented, 11, -11
def test_unusable_scale_factor_gives_nan(sf_word: int) -> None:
    for convention in ("none", "sunspec"):
        decoded = scaled_map(convention).decode(0, [2305, sf_word])
        assert math.isnan(decoded["voltage"]), (convention, sf_word)


# -- SunSpec not-implemented values --------------------------------------------------------

NOT_IMPLEMENTED_WORDS = {
    "int16": [0x8000],
    "uint16": [0xFFFF],
    "int32": [0x8000, 0x0000],
    "uint32": [0xFFFF, 0xFFFF],
    "int64": [0x8000, 0, 0, 0],
}


@pytest.mark.parametrize("reg_type", sorted(NOT_IMPLEMENTED_WORDS))
def test_sunspec_not_implemented_values_are_nan(reg_type: str) -> None:
    plain = make_map([Register("q", 0, reg_type, "x")])
    sunspec = dataclasses.replace(plain, not_implemented="sunspec")
    words = NOT_IMPLEMENTED_WORDS[reg_type]
    assert math.isnan(sunspec.decode(0, words)["q"])
    assert not math.isnan(plain.decode(0, words)["q"])  # only under the SunSpec convention
    # one more or less is a real value
    near = list(words)
    near[-1] ^= 1
    assert not math.isnan(sunspec.decode(0, near)["q"])


def test_sunspec_convention_keeps_zero_and_floats() -> None:
    regmap = dataclasses.replace(
        make_map([Register("e", 0, "uint64", "kWh", kind="counter"), Register("f", 4, "float32", "Hz")]),
        not_implemented="sunspec",
    )
    assert regmap.decode(0, [0, 0, 0, 0, 0x4248, 0]) == {"e": 0.0, "f": 50.0}


# -- 64-bit integers ------------------------------------------------------------------------


def test_int64_and_uint64_known_words() -> None:
    regmap = make_map([Register("a", 0, "int64", "Wh"), Register("b", 4, "uint64", "Wh")])
    words = regmap.encode({"a": -2, "b": 2**40 + 5})
    assert [words[i] for i in range(8)] == [0xFFFF, 0xFFFF, 0xFFFF, 0xFFFE, 0x0000, 0x0100, 0x0000, 0x0005]
    assert regmap.decode(0, [words[i] for i in range(8)]) == {"a": -2.0, "b": float(2**40 + 5)}
    little = make_map([Register("b", 0, "uint64", "Wh")], word_order="little")
    assert little.decode(0, [0x0005, 0x0000, 0x0100, 0x0000]) == {"b": float(2**40 + 5)}
    with pytest.raises(RegisterEncodeError, match="'b'"):
        regmap.encode({"b": -1})


# -- plausible ranges ------------------------------------------------------------------------


def test_plausible_range() -> None:
    reg = Register("v", 0, "float32", "V", min=0.0, max=300.0)
    assert reg.plausible(0.0) and reg.plausible(230.5) and reg.plausible(300.0)
    assert not reg.plausible(-0.1) and not reg.plausible(300.1)
    assert not reg.plausible(float("nan"))
    assert Register("v", 0, "float32", "V", min=45.0).plausible(1e30)
    assert not Register("v", 0, "float32", "V", min=45.0).plausible(1e-38)
    assert Register("v", 0, "float32", "V").plausible(-1e30)


def test_min_and_max_load_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "acme_t1.toml"
    path.write_text(HEAD + register(min=-1, max=1.5))
    reg = load_register_map_file(path).register("power")
    assert (reg.min, reg.max) == (-1.0, 1.5)
    assert reg.plausible(1.5) and not reg.plausible(1.6)


# -- generic map features in files -----------------------------------------------------------

SCALED_HEAD = HEAD.replace("function = 4", "function = 3").replace('byte_order = "big"', 'byte_order = "big"\nnot_implemented = "sunspec"')
SF_REGISTER = '\n[[register]]\nname = "W_SF"\naddress = 20\ntype = "int16"\nkind = "scale_factor"\n'


def test_a_file_with_every_feature_loads(tmp_path: Path) -> None:
    path = tmp_path / "acme_t1.toml"
    path.write_text(
        SCALED_HEAD
        + register(type="int16", scale_register="W_SF", min=-5000, max=5000)
        + SF_REGISTER
        + register(name="volts", address=0, type="float32", unit="V", function=4, word_order="little", byte_order="little")
    )
    regmap = load_register_map_file(path)
    assert regmap.not_implemented == "sunspec"
    assert regmap.register("power") == Register(
        "power", 10, "int16", "W", scale_register="W_SF", min=-5000.0, max=5000.0
    )
    assert regmap.register("W_SF") == Register("W_SF", 20, "int16", "", kind="scale_factor")
    volts = regmap.register("volts")
    assert (volts.function, volts.word_order, volts.byte_order) == (4, "little", "little")
    assert [(b.function, b.start, b.count) for b in regmap.plan()] == [(4, 0, 2), (3, 10, 1), (3, 20, 1)]
    blocks = regmap.plan()
    decoded = regmap.decode_blocks([(blocks[0], [0x0080, 0x6643]), (blocks[1], [0xFFFE]), (blocks[2], [2])])
    assert decoded == {"volts": 230.5, "power": -200.0}


BAD_FEATURE_FILES = {
    "register function": (HEAD + register(function=5), ["'power'", "'function'", "5", "holding"]),
    "register function is text": (HEAD + register(function="3"), ["'power'", "'function'", "str"]),
    "register word order": (HEAD + register(word_order="middle"), ["'power'", "'word_order'", "middle"]),
    "register byte order": (HEAD + register(byte_order="native"), ["'power'", "'byte_order'", "native"]),
    "scale register missing": (HEAD + register(scale_register="W_SF"), ["'power'", "'scale_register'", "'W_SF'"]),
    "scale register not a scale factor": (
        HEAD + register(scale_register="voltage") + GOOD_REGISTER.replace("float32", "int16"),
        ["'power'", "'scale_register'", "'voltage'", "scale_factor"],
    ),
    "scale register not int16": (
        HEAD + register(scale_register="W_SF") + SF_REGISTER.replace("int16", "uint16"),
        ["'power'", "'scale_register'", "'W_SF'", "int16"],
    ),
    "scale register is a number": (HEAD + register(scale_register=3), ["'power'", "'scale_register'", "str"]),
    "min above max": (HEAD + register(min=10, max=5), ["'power'", "'min'", "'max'"]),
    "min is text": (HEAD + register(min="0"), ["'power'", "'min'", "str"]),
    "max is a bool": (HEAD + register(max=True), ["'power'", "'max'", "bool"]),
    "not implemented convention": (
        HEAD.replace('byte_order = "big"', 'byte_order = "big"\nnot_implemented = "modbus"') + GOOD_REGISTER,
        ["[map]", "'not_implemented'", "modbus", "sunspec"],
    ),
    "negative max gap": (HEAD.replace('byte_order = "big"', 'byte_order = "big"\nmax_gap = -1') + GOOD_REGISTER, ["[map]", "'max_gap'", "-1"]),
    "unknown map field": (HEAD.replace('byte_order = "big"', 'byte_order = "big"\nwordorder = "big"') + GOOD_REGISTER, ["[map]", "wordorder"]),
    "int64 past the end": (HEAD + register(type="int64", address=65533), ["'power'", "'address'", "65533", "65532"]),
    "3xxxx register number": (HEAD + register(address=300001), ["'power'", "'address'", "0-based"]),
    "overlap in one table only": (
        HEAD + GOOD_REGISTER + register(address=1, function=4), ["'power'", "'address'", "overlaps", "'voltage'"]
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_FEATURE_FILES))
def test_bad_feature_files_name_file_register_and_field(case: str, tmp_path: Path) -> None:
    text, expected = BAD_FEATURE_FILES[case]
    path = tmp_path / "acme_t1.toml"
    path.write_text(text)
    with pytest.raises(RegisterMapError) as err:
        load_register_map_file(path)
    message = str(err.value)
    assert str(path) in message
    for fragment in expected:
        assert fragment in message, f"{fragment!r} missing from: {message}"


def test_same_address_in_both_tables_is_not_an_overlap(tmp_path: Path) -> None:
    path = tmp_path / "acme_t1.toml"
    path.write_text(HEAD + GOOD_REGISTER + register(address=0, function=3))
    regmap = load_register_map_file(path)
    assert [(b.function, b.start) for b in regmap.plan()] == [(4, 0), (3, 0)]


# -- built-in maps: SDM120 and plausible ranges ----------------------------------------------

SDM120_ADDRESSES = {
    "voltage_l1": 0x0000,
    "current_l1": 0x0006,
    "power_total": 0x000C,
    "apparent_power_total": 0x0012,
    "reactive_power_total": 0x0018,
    "power_factor_total": 0x001E,
    "phase_angle_total": 0x0024,
    "frequency": 0x0046,
    "energy_import": 0x0048,
    "energy_export": 0x004A,
    "energy_reactive_import": 0x004C,
    "energy_reactive_export": 0x004E,
    "energy_total": 0x0156,
    "energy_reactive_total": 0x0158,
}


def test_sdm120_is_built_in_with_eastrons_addresses() -> None:
    assert "eastron_sdm120" in available_register_maps()
    regmap = load_register_map("eastron_sdm120")
    assert (regmap.vendor, regmap.model, regmap.function, regmap.word_order, regmap.byte_order) == (
        "Eastron", "SDM120", 4, "big", "big"
    )
    assert {r.name: r.address for r in regmap.registers} == SDM120_ADDRESSES
    assert all(r.type == "float32" and r.scale == 1.0 for r in regmap.registers)
    counters = {r.name for r in regmap.registers if r.kind == "counter"}
    assert counters == {n for n in SDM120_ADDRESSES if n.startswith("energy_")}
    assert [(b.start, b.count) for b in regmap.plan()] == [(0x0000, 0x26), (0x0046, 10), (0x0156, 4)]


def test_sdm120_uses_the_sdm630_names_and_units() -> None:
    sdm630 = load_register_map("eastron_sdm630")
    for reg in load_register_map("eastron_sdm120").registers:
        assert reg.unit == sdm630.register(reg.name).unit, reg.name
        assert reg.kind == sdm630.register(reg.name).kind, reg.name


@pytest.mark.parametrize("name", ["eastron_sdm630", "eastron_sdm120"])
def test_eastron_maps_have_physical_plausible_ranges(name: str) -> None:
    regmap = load_register_map(name)
    for reg in regmap.registers:
        assert reg.min is not None and reg.max is not None and reg.min < reg.max, reg.name
        if reg.kind == "counter":
            assert reg.min == 0, reg.name
    for voltage in ("voltage_l1",):
        assert (regmap.register(voltage).min, regmap.register(voltage).max) == (0.0, 300.0)
    assert (regmap.register("frequency").min, regmap.register("frequency").max) == (45.0, 65.0)
    assert (regmap.register("power_factor_total").min, regmap.register("power_factor_total").max) == (-1.0, 1.0)
    # typical readings are plausible
    typical = {"voltage_l1": 231.4, "current_l1": 12.5, "power_total": -2875.0, "frequency": 50.02,
               "power_factor_total": -0.97, "energy_import": 12345.67}
    assert all(regmap.register(q).plausible(v) for q, v in typical.items())
    # Voltage and frequency never sit near zero, so a float32 read in the wrong word order
    # is out of range. (A current of 12.5 A swapped reads 2.3e-41 A, which a range from 0
    # cannot tell from "no load": the ranges catch word order on voltage and frequency.)
    words = regmap.encode(typical)
    swapped = regmap.with_orders("little")
    for qname in ("voltage_l1", "frequency"):
        reg = regmap.register(qname)
        chunk = [words[reg.address], words[reg.address + 1]]
        assert not reg.plausible(swapped.decode(reg.address, chunk)[qname]), qname


def test_every_built_in_map_loads_and_round_trips() -> None:
    for name in available_register_maps():
        regmap = load_register_map(name)
        values = {r.name: (r.min + r.max) / 2 if r.min is not None and r.max is not None else 1.0 for r in regmap.quantities}
        words = regmap.encode(values)
        decoded = regmap.decode_blocks([(b, [words.get(a, 0) for a in range(b.start, b.end)]) for b in regmap.plan()])
        assert decoded == pytest.approx(values, rel=1e-6), name


# -- the documented generic example ----------------------------------------------------------

REPO = Path(__file__).resolve().parent.parent
GENERIC_EXAMPLE = REPO / "docs" / "examples" / "generic-meter.toml"


def test_generic_example_map_loads_and_decodes() -> None:
    regmap = load_register_map_file(GENERIC_EXAMPLE)
    assert (regmap.function, regmap.word_order, regmap.byte_order) == (3, "little", "big")
    # Words as the example meter answers them (see the comments in the file).
    blocks = regmap.plan()
    assert [(b.function, b.start, b.count) for b in blocks] == [(4, 0x0046, 2), (3, 0, 7), (3, 100, 5)]
    reads = [
        (blocks[0], [0x4248, 0x147B]),
        (blocks[1], [0x0904, 0x0000, 0x0A28, 0x0000, 0xF9E6, 0xFFFF, 0xFC36]),
        (blocks[2], [0xD687, 0x0012, 0x2710, 0x0000, 0x0001]),
    ]
    decoded = regmap.decode_blocks(reads)
    assert decoded == pytest.approx(
        {
            "voltage_l1": 230.8,
            "current_l1": 2.6,
            "power_total": -1562.0,
            "power_factor_total": -0.97,
            "energy_import": 12345.67,
            "energy_export": 100.0,
            "frequency": 50.02,
        }
    )
    for reg in regmap.quantities:
        assert reg.plausible(decoded[reg.name]), reg.name
    # and the simulator's side: encoding gives the same words back
    words = regmap.encode(decoded, {"energy_sf": 1})
    for block, chunk in reads:
        assert [words[a] for a in range(block.start, block.end)] == chunk


def test_registermaps_doc_explains_every_field() -> None:
    doc = (REPO / "docs" / "registermaps.md").read_text()
    from edge.registermap import _MAP_FIELDS, _REGISTER_FIELDS

    for fld in sorted(_MAP_FIELDS | _REGISTER_FIELDS):
        assert f"`{fld}`" in doc, f"docs/registermaps.md does not describe field {fld!r}"
    for type_name in TYPES:
        assert f"`{type_name}`" in doc, type_name
    assert "0x4366 0x8000" in doc and "230.5" in doc
    assert "docs/examples/generic-meter.toml" in doc
