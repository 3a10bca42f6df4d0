"""Offline verification of a measurement certificate against a trust file.

Nothing the certificate says about its own content is believed: every hash is
recomputed from the values it carries, every signature is checked against keys
from the trust file, and every convenience field must restate its value
exactly. The first failure raises `VerificationError` naming the JSON path and
what failed there.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from hub.certificates.document import (
    CERTIFICATE_FORMAT,
    DocumentError,
    Obj,
    batch_header_from_json,
    block_header_from_json,
    contract_record_from_json,
    gap_from_json,
    reading_from_json,
)
from hub.certificates.trust import Trust
from hub.chain.block import commit_statement
from hub.consensus.quorum import commit_bytes
from protos import merkle
from protos.canonical import (
    batch_hash,
    block_hash,
    encode_batch_header,
    encode_block_header,
    encode_commit,
    encode_contract_record,
    encode_gap,
    encode_issue,
    encode_reading,
)
from protos.records import (
    BatchHeader,
    BlockHeader,
    ContractRecord,
    Entry,
    Gap,
    IssueStatement,
    Reading,
    RecordError,
)
from protos.signing import verify_signature


class VerificationError(Exception):
    """The certificate does not prove what it claims; the message says where and why."""


@dataclass(frozen=True)
class QuantitySpan:
    name: str
    unit: str
    first: float
    last: float

    @property
    def delta(self) -> float:
        return self.last - self.first


@dataclass(frozen=True)
class Summary:
    meter_id: str
    chain_id: str
    from_ns: int
    to_ns: int
    readings: int
    first_ts_ns: int | None
    last_ts_ns: int | None
    first_seq: int | None
    last_seq: int | None
    counters: tuple[QuantitySpan, ...]  # quantities in kWh: first and last register values
    gaps: tuple[Gap, ...]
    block_heights: tuple[int, ...]
    batches: int
    gateways: tuple[str, ...]
    clock: dict[str, int] = field(default_factory=dict)
    quality: dict[str, int] = field(default_factory=dict)
    # Results contracts computed for the meter (carbon per interval, ...), by contract, kind and time.
    contract_records: tuple[ContractRecord, ...] = ()
    # Contract records signed by gateways the trust file does not name as the contract's runners.
    unbelieved_runners: tuple[str, ...] = ()
    unbelieved_records: int = 0

    def counter(self, name: str) -> QuantitySpan | None:
        return next((c for c in self.counters if c.name == name), None)


def _fail(path: str, problem: str) -> VerificationError:
    return VerificationError(f"{path}: {problem}")


def _hexes(o: Obj, key: str) -> list[bytes]:
    return o.hex_list(key)


def verify_certificate(doc: Any, trust: Trust) -> Summary:
    try:
        return _verify(doc, trust)
    except (DocumentError, RecordError) as exc:
        raise VerificationError(str(exc)) from exc


def _verify(doc: Any, trust: Trust) -> Summary:
    top = Obj(
        doc, "certificate",
        {"format", "chain_id", "meter_id", "period", "issued_ns", "issued", "issuer",
         "entries", "batches", "blocks", "consistency"},
    )
    if top.get("format", str) != CERTIFICATE_FORMAT:
        raise _fail("certificate.format", f"not {CERTIFICATE_FORMAT!r}")
    chain_id = top.get("chain_id", str)
    chain = trust.chains.get(chain_id)
    if chain is None:
        raise _fail("certificate.chain_id", f"chain {chain_id!r} is not in the trust file")
    meter_id = top.get("meter_id", str)
    period = Obj(top.get("period", dict), "certificate.period", {"from_ns", "from", "to_ns", "to"})
    from_ns, to_ns = period.time("from_ns", "from"), period.time("to_ns", "to")
    issued_ns = top.time("issued_ns", "issued")

    blocks = _verify_blocks(top.get("blocks", list), chain_id, chain)
    _verify_consistency(top.get("consistency", list), blocks)
    batches = _verify_batches(top.get("batches", list), blocks, trust)
    entries = _verify_entries(top.get("entries", list), batches, meter_id, from_ns, to_ns, trust)

    # Every batch and block present must be used, so nothing rides along unchecked.
    used_batches = {b for b, _, _ in entries}
    for i in range(len(batches)):
        if i not in used_batches:
            raise _fail(f"certificate.batches[{i}]", "no entry of this certificate is in this batch")
    used_heights = {b[1] for b in batches}
    for h in blocks:
        if h not in used_heights:
            raise _fail("certificate.blocks", f"block {h} holds no batch of this certificate")

    issuer = Obj(top.get("issuer", dict), "certificate.issuer", {"key_id", "signature"})
    issuer_key = chain.replicas.get(issuer.get("key_id", str))
    if issuer_key is None:
        raise _fail("certificate.issuer.key_id", f"key {issuer.get('key_id', str)!r} is not a key of chain {chain_id}")
    statement = IssueStatement(
        chain_id, meter_id, from_ns, to_ns, issued_ns, merkle.root([body for _, body, _ in entries])
    )
    if not verify_signature(issuer_key, issuer.hex("signature"), encode_issue(statement)):
        raise _fail(
            "certificate.issuer.signature",
            "the issuing hub's signature over meter, period and entries does not verify",
        )

    return _summarise(meter_id, chain_id, from_ns, to_ns, entries, batches, blocks, trust.contracts)


def _verify_blocks(items: list, chain_id: str, chain) -> dict[int, BlockHeader]:
    blocks: dict[int, BlockHeader] = {}
    last_height = 0
    for i, item in enumerate(items):
        path = f"certificate.blocks[{i}]"
        o = Obj(item, path, {"header", "header_bytes", "commit_bytes", "seals", "quorum"})
        header = block_header_from_json(o.get("header", dict), f"{path}.header")
        if o.hex("header_bytes") != encode_block_header(header):
            raise _fail(f"{path}.header_bytes", "do not match the header fields")
        if header.chain_id != chain_id:
            raise _fail(f"{path}.header.chain_id", f"block of chain {header.chain_id}, certificate of {chain_id}")
        if header.height <= last_height:
            raise _fail(f"{path}.header.height", "blocks must be listed once each, by increasing height")
        last_height = header.height
        if "quorum" in item:
            # Decided by PBFT replicas: each seal is a replica's commit vote for this header.
            qo = Obj(o.get("quorum", dict), f"{path}.quorum", {"view", "prev", "contents_digest"})
            signed = commit_bytes(
                o.hex("header_bytes"), header.height, qo.get("view", int), qo.hex("prev"), qo.hex("contents_digest")
            )
            what = "the replicas' commit vote for this header"
        else:
            signed = encode_commit(commit_statement(header))
            what = "the block's commit statement"
        if o.hex("commit_bytes") != signed:
            raise _fail(f"{path}.commit_bytes", f"do not match {what}")
        signers: set[str] = set()
        for j, s in enumerate(o.get("seals", list)):
            so = Obj(s, f"{path}.seals[{j}]", {"key_id", "signature"})
            kid = so.get("key_id", str)
            key = chain.replicas.get(kid)
            if key is None:
                raise _fail(f"{so.path}.key_id", f"key {kid!r} is not a replica key of chain {chain_id}")
            if kid in signers:
                raise _fail(f"{so.path}.key_id", f"key {kid} seals the block twice")
            if not verify_signature(key, so.hex("signature"), signed):
                raise _fail(f"{so.path}.signature", f"seal by key {kid} on block {header.height} does not verify")
            signers.add(kid)
        if len(signers) < chain.quorum:
            raise _fail(f"{path}.seals", f"{len(signers)} valid seals, the trust file requires {chain.quorum}")
        blocks[header.height] = header
    if not blocks:
        raise _fail("certificate.blocks", "no block")
    return blocks


def _verify_consistency(items: list, blocks: dict[int, BlockHeader]) -> None:
    heights = sorted(blocks)
    pairs = list(zip(heights, heights[1:]))
    if len(items) != len(pairs):
        raise _fail("certificate.consistency", f"expected {len(pairs)} proofs linking consecutive blocks, got {len(items)}")
    for i, ((older, newer), item) in enumerate(zip(pairs, items)):
        path = f"certificate.consistency[{i}]"
        o = Obj(item, path, {"from_height", "to_height", "proof"})
        if (o.get("from_height", int), o.get("to_height", int)) != (older, newer):
            raise _fail(path, f"must link block {older} to block {newer}")
        a, b = blocks[older], blocks[newer]
        if not merkle.verify_consistency(a.log_size, b.log_size, a.log_root, b.log_root, _hexes(o, "proof")):
            raise _fail(f"{path}.proof", f"the log of block {newer} does not extend the log of block {older}")
        if newer == older + 1 and b.prev_hash != block_hash(a):
            raise _fail(f"certificate.blocks (height {newer})", f"prev_hash is not the hash of block {older}")


def _verify_batches(items: list, blocks: dict[int, BlockHeader], trust: Trust) -> list[tuple[BatchHeader, int]]:
    out: list[tuple[BatchHeader, int]] = []
    seen: set[tuple[int, int]] = set()
    by_gateway: dict[tuple[str, int], BatchHeader] = {}
    for i, item in enumerate(items):
        path = f"certificate.batches[{i}]"
        o = Obj(item, path, {"header", "header_bytes", "signature", "block", "index", "proof"})
        header = batch_header_from_json(o.get("header", dict), f"{path}.header")
        raw = encode_batch_header(header)
        if o.hex("header_bytes") != raw:
            raise _fail(f"{path}.header_bytes", "do not match the header fields")
        key = trust.gateways.get(header.gateway_id, {}).get(header.key_id)
        if key is None:
            raise _fail(
                f"{path}.header.key_id",
                f"key {header.key_id!r} of gateway {header.gateway_id!r} is not in the trust file",
            )
        if not verify_signature(key, o.hex("signature"), raw):
            raise _fail(f"{path}.signature", f"gateway {header.gateway_id} signature on batch {header.seq} does not verify")
        height, index = o.get("block", int), o.get("index", int)
        block = blocks.get(height)
        if block is None:
            raise _fail(f"{path}.block", f"block {height} is not in the certificate")
        if (height, index) in seen:
            raise _fail(f"{path}.index", f"two batches at position {index} of block {height}")
        seen.add((height, index))
        if not merkle.verify_inclusion(
            merkle.leaf_hash(batch_hash(header)), index, block.batch_count, _hexes(o, "proof"), block.batches_root
        ):
            raise _fail(f"{path}.proof", f"batch {header.seq} of {header.gateway_id} is not at position {index} of block {height}")
        key_ = (header.gateway_id, header.seq)
        if key_ in by_gateway:
            raise _fail(path, f"batch {header.seq} of gateway {header.gateway_id} listed twice")
        by_gateway[key_] = header
        out.append((header, height))
    # Where the certificate holds consecutive batches of a gateway, they must chain.
    for (gw, seq), header in by_gateway.items():
        prev = by_gateway.get((gw, seq - 1))
        if prev is not None and header.prev_hash != batch_hash(prev):
            raise _fail("certificate.batches", f"batch {seq} of gateway {gw} does not follow batch {seq - 1}")
    return out


_ENTRY_KINDS = {  # certificate key -> (from JSON, canonical bytes)
    "reading": (reading_from_json, encode_reading),
    "gap": (gap_from_json, encode_gap),
    "contract_record": (contract_record_from_json, encode_contract_record),
}


def _describe(record: Entry) -> str:
    if isinstance(record, Reading):
        return f"reading seq {record.seq} of meter {record.meter_id}"
    if isinstance(record, ContractRecord):
        return f"{record.contract} {record.kind} record of {record.subject}"
    return f"gap of meter {record.meter_id}"


def _verify_entries(
    items: list, batches: list[tuple[BatchHeader, int]], meter_id: str, from_ns: int, to_ns: int, trust: Trust
) -> list[tuple[int, bytes, Entry]]:
    out = []
    positions: set[tuple[int, int]] = set()
    for i, item in enumerate(items):
        path = f"certificate.entries[{i}]"
        if not isinstance(item, dict):
            raise _fail(path, "expected an object")
        kinds = [k for k in _ENTRY_KINDS if k in item]
        if len(kinds) != 1:
            raise _fail(path, f"needs exactly one of {', '.join(_ENTRY_KINDS)}")
        kind = kinds[0]
        o = Obj(item, path, {"batch", "index", "proof", kind})
        from_json, encode = _ENTRY_KINDS[kind]
        record = from_json(o.get(kind, dict), f"{path}.{kind}")
        body = encode(record)
        b, index = o.get("batch", int), o.get("index", int)
        if not 0 <= b < len(batches):
            raise _fail(f"{path}.batch", f"no batch {b} in this certificate")
        header = batches[b][0]
        if (b, index) in positions:
            raise _fail(f"{path}.index", f"two entries at position {index} of batch {b}")
        positions.add((b, index))
        if not merkle.verify_inclusion(merkle.leaf_hash(body), index, header.entry_count, _hexes(o, "proof"), header.entries_root):
            raise _fail(f"{path}.proof", f"{_describe(record)} is not entry {index} of its signed batch (value changed?)")
        if record.meter_id != meter_id:
            raise _fail(f"{path}.{kind}", f"entry of {record.meter_id}, certificate of {meter_id}")
        if not from_ns <= record.timestamp_ns < to_ns:
            raise _fail(f"{path}.{kind}", "outside the certificate's period")
        out.append((b, body, record))
    readings = sorted((r.seq, i) for i, (_, _, r) in enumerate(out) if isinstance(r, Reading))
    for (s1, _), (s2, i2) in zip(readings, readings[1:]):
        if s2 == s1:
            raise _fail(f"certificate.entries[{i2}]", f"reading seq {s2} appears twice")
        if s2 != s1 + 1:
            raise _fail("certificate.entries", f"readings seq {s1 + 1}..{s2 - 1} of meter {meter_id} are missing")
    if not out:
        raise _fail("certificate.entries", "no entry")
    return out


def _summarise(meter_id, chain_id, from_ns, to_ns, entries, batches, blocks, runners) -> Summary:
    # By sequence number: the meter's own order, which a stepped clock cannot disturb.
    readings = sorted((r for _, _, r in entries if isinstance(r, Reading)), key=lambda r: r.seq)
    gaps = tuple(sorted((g for _, _, g in entries if isinstance(g, Gap)), key=lambda g: g.from_ns))
    counters = []
    if readings:
        first, last = readings[0], readings[-1]
        for q in first.quantities:
            if q.unit == "kWh" and last.value(q.name) is not None:
                counters.append(QuantitySpan(q.name, q.unit, q.value, last.value(q.name)))
    # Any gateway can sign bytes shaped like a contract's result: only the runners the trust file
    # names for that contract are believed. The others are proven entries all the same, so the
    # certificate verifies; they are counted, not shown as results.
    believed, unbelieved = [], Counter()
    for b, _, c in entries:
        if isinstance(c, ContractRecord):
            gateway = batches[b][0].gateway_id
            if gateway in runners.get(c.contract, ()):
                believed.append(c)
            else:
                unbelieved[gateway] += 1
    clock = Counter(r.clock.name.lower() for r in readings)
    quality = Counter(name for r in readings for name in ([f.name.lower() for f in type(r.quality) if f and f in r.quality] or ["ok"]))
    return Summary(
        meter_id=meter_id,
        chain_id=chain_id,
        from_ns=from_ns,
        to_ns=to_ns,
        readings=len(readings),
        first_ts_ns=min((r.timestamp_ns for r in readings), default=None),
        last_ts_ns=max((r.timestamp_ns for r in readings), default=None),
        first_seq=min((r.seq for r in readings), default=None),
        last_seq=max((r.seq for r in readings), default=None),
        counters=tuple(counters),
        gaps=gaps,
        block_heights=tuple(sorted(blocks)),
        batches=len(batches),
        gateways=tuple(sorted({h.gateway_id for h, _ in batches})),
        clock=dict(sorted(clock.items())),
        quality=dict(sorted(quality.items())),
        contract_records=tuple(sorted(believed, key=lambda c: (c.contract, c.kind, c.from_ns))),
        unbelieved_runners=tuple(sorted(unbelieved)),
        unbelieved_records=sum(unbelieved.values()),
    )
