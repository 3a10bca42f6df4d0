"""docs/formats.md and protos/canonical.py must agree byte for byte.

The worked example's code block is run as written and its bytes, hashes and the
annotated table are compared with the page; every layout table on the page is
used to build the bytes of a sample record field by field, which must equal what
the encoder produces.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import re
import struct
from pathlib import Path

import pytest

from hub.consensus.messages import Commit, Proposal, Signed
from hub.consensus.messages import encode as encode_consensus
from protos import canonical, merkle
from protos.records import (
    ContractRecord,
    BatchHeader,
    BlockHeader,
    ClockStatus,
    CommitStatement,
    Gap,
    IssueStatement,
    Quality,
    Quantity,
    Reading,
    ReceiptStatement,
)

DOC = Path(__file__).resolve().parent.parent / "docs" / "formats.md"


@pytest.fixture(scope="module")
def text() -> str:
    return DOC.read_text(encoding="utf-8")


def block_after(text: str, marker: str) -> str:
    m = re.search(rf"<!-- example:{re.escape(marker)} -->\s*```[a-z]*\n(.*?)```", text, re.S)
    assert m, f"docs/formats.md has no block after <!-- example:{marker} -->"
    return m.group(1)


def hex_after(text: str, marker: str) -> str:
    return "".join(block_after(text, marker).split())


@pytest.fixture(scope="module")
def example(text: str) -> dict:
    code = re.search(r"<!-- example:code:begin -->\s*```python\n(.*?)```\s*<!-- example:code:end -->", text, re.S)
    assert code, "docs/formats.md has no example code block"
    ns: dict = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code.group(1), "docs/formats.md", "exec"), ns)  # noqa: S102 - our own doc
    ns["printed"] = out.getvalue().strip()
    return ns


def test_worked_example_matches_the_code(text: str, example: dict) -> None:
    reading, gap = example["reading"], example["gap"]
    rb, gb = canonical.encode_reading(reading), canonical.encode_gap(gap)
    assert example["printed"] == rb.hex()
    assert hex_after(text, "reading-hex") == rb.hex()
    assert f"Its canonical bytes, {len(rb)} of them" in text
    assert hex_after(text, "reading-leaf") == merkle.leaf_hash(rb).hex() == merkle.root([rb]).hex()
    assert hex_after(text, "gap-hex") == gb.hex()
    assert f"encodes to {len(gb)} bytes" in text
    assert hex_after(text, "gap-leaf") == merkle.leaf_hash(gb).hex()
    assert hex_after(text, "root-2") == merkle.root([rb, gb]).hex()
    assert canonical.decode_reading(rb) == reading and canonical.decode_gap(gb) == gap


def test_worked_example_table_adds_up(text: str, example: dict) -> None:
    table = re.search(r"<!-- example:reading-table -->(.*?)<!-- example:end-table -->", text, re.S)
    assert table
    rows = re.findall(r"^\| (\d+) \| `([0-9a-f]+)` \| (.+?) \|$", table.group(1), re.M)
    assert rows
    offset = 0
    for off, hx, _ in rows:
        assert int(off) == offset, f"offset of row {hx} should be {offset}"
        offset += len(hx) // 2
    assert "".join(hx for _, hx, _ in rows) == canonical.encode_reading(example["reading"]).hex()


def test_domain_tags_table(text: str) -> None:
    tags = {
        "reading": canonical.TAG_READING,
        "gap": canonical.TAG_GAP,
        "batch header": canonical.TAG_BATCH_HEADER,
        "block header": canonical.TAG_BLOCK_HEADER,
        "commit statement": canonical.TAG_COMMIT,
        "receipt statement": canonical.TAG_RECEIPT,
        "certificate issue statement": canonical.TAG_ISSUE,
        "contract record": canonical.TAG_CONTRACT_RECORD,
        "PBFT commit vote": b"gridtrace/pbft/commit/v1",
        "PBFT proposal digest": b"gridtrace/pbft/proposal-digest/v1",
    }
    for name, tag in tags.items():
        row = re.search(rf"^\| {name} \| `([^`]+)` \((\d+) bytes\) \| `([0-9a-f]{{2}}) ([0-9a-f]+)` \|$", text, re.M)
        assert row, f"no domain tag row for {name}"
        assert row.group(1).encode() == tag and int(row.group(2)) == len(tag)
        assert bytes.fromhex(row.group(3) + row.group(4)) == bytes([len(tag)]) + tag


# -- every layout table, applied to a sample record ----------------------------------------

H1, H2, H3 = bytes(range(32)), bytes(range(32, 64)), bytes(range(64, 96))
SAMPLES = {
    "### Reading": Reading(
        "MTR-9", 7, -5, ClockStatus.INFORMATIVE, Quality.PARTIAL | Quality.STALE,
        (Quantity("frequency", "Hz", 49.98), Quantity("power_factor_total", "", -0.0), Quantity("voltage_l1", "V", 231.5)),
    ),
    "### Gap": Gap("MTR-9", 10, 20, "modbus-exception-2", 2),
    "### Contract record": ContractRecord("MTR-9", 10, 20, "carbon-flow/1", "meter-interval", b'{"emission_t":0.25}'),
    "## Batch header": BatchHeader("gw-7", "0123456789abcdef", 3, H1, H2, 17, 100, 200, 300),
    "## Block header": BlockHeader("substation-7", 5, H1, 1_762_128_000_000_000_000, H2, 2, 40, 9, H3),
    "## Commit statement": CommitStatement("substation-7", 5, H3),
    "## Receipt statement": ReceiptStatement("substation-7", "gw-7", 3, H2, 1_762_128_000_000_000_001),
    "## Certificate issue statement": IssueStatement("substation-7", "MTR-9", 1, 2, 3, H1),
    "## Commit vote": Commit(4, 5, H3),
}
ENCODERS = {
    "### Reading": canonical.encode_reading,
    "### Gap": canonical.encode_gap,
    "### Contract record": canonical.encode_contract_record,
    "## Batch header": canonical.encode_batch_header,
    "## Block header": canonical.encode_block_header,
    "## Commit statement": canonical.encode_commit,
    "## Receipt statement": canonical.encode_receipt,
    "## Certificate issue statement": canonical.encode_issue,
    "## Commit vote": encode_consensus,
}


def test_commit_vote_digest_formula_is_the_code() -> None:
    """The proposal digest as docs/formats.md spells it out, against Proposal.digest."""
    batches = (H1, H2)
    header = b"any header bytes"
    vote = Signed(Commit(7, 4, H3), 2, b"\x01" * 64)
    p = Proposal(5, H3, batches, header, 7, (vote,))

    def tag(t: bytes) -> bytes:
        return bytes([len(t)]) + t

    vote_bytes = encode_consensus(vote)
    contents_digest = hashlib.sha256(
        struct.pack(">Q", 7) + struct.pack(">I", 2) + H1 + H2 + struct.pack(">I", 1)
        + struct.pack(">I", len(vote_bytes)) + vote_bytes
    ).digest()
    documented = hashlib.sha256(
        tag(b"gridtrace/pbft/proposal-digest/v1") + struct.pack(">Q", 5) + H3 + hashlib.sha256(header).digest()
        + contents_digest
    ).digest()
    assert p.digest == documented


def encode_as_documented(rows: list[tuple[str, str, str]], value: object) -> bytes:
    out = b""
    for num, field, enc in rows:
        kind = re.match(r"`(\w+)", enc)
        assert kind, f"row {num}: no encoding in {enc!r}"
        kind = kind.group(1)
        name = re.match(r"`(\w+)`", field)
        if kind == "tag":
            tag = re.match(r'`tag\("([^"]+)"\)`', enc).group(1).encode()
            out += bytes([len(tag)]) + tag
            continue
        column = re.fullmatch(r"`n` (names|units|values)", field)
        if column:
            # a column: one element per quantity, in the reading's order
            attr = column.group(1)[:-1]
            item_kind = re.match(r"`n` × `(\w+)`", enc).group(1)
            for q in value.quantities:
                out += pack(item_kind, getattr(q, attr))
            continue
        if "quantity count" in field:
            v = len(value.quantities)
        elif field == "body length":
            v = len(value.body)
        else:
            assert name, f"row {num}: no field name in {field!r}"
            v = getattr(value, name.group(1))
        out += pack(kind, v)
    return out


def pack(kind: str, v: object) -> bytes:
    if kind == "str":
        raw = v.encode()
        return struct.pack(">H", len(raw)) + raw
    if kind == "bytes":
        return v
    if kind == "hash":
        assert isinstance(v, bytes) and len(v) == 32
        return v
    fmt = {"u8": ">B", "u16": ">H", "u32": ">I", "u64": ">Q", "i64": ">q", "f64": ">d"}[kind]
    return struct.pack(fmt, int(v) if kind != "f64" else v)


@pytest.mark.parametrize("heading", list(SAMPLES))
def test_layout_tables_build_the_canonical_bytes(text: str, heading: str) -> None:
    start = text.index(f"\n{heading}") + 1
    table = text[start:].split("\n\n| # |", 1)[1].split("\n\n", 1)[0]
    rows = []
    for line in ("| # |" + table).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] not in ("#", "---"):
            rows.append((cells[0], cells[1], cells[2]))
    assert rows[0][1] == "domain tag"
    assert encode_as_documented(rows, SAMPLES[heading]) == ENCODERS[heading](SAMPLES[heading])
