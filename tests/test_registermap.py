"""Register maps: the built-in SDM630 map, block planning, encode/decode and file errors."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.registermap import (
    TYPES,
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
