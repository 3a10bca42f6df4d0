"""Auditing a stored chain: every block and every batch checked again from the stored bytes.

The core (`ChainAudit`) is pure: it is fed blocks in height order, each with its batches
and their entry bodies, and returns what is wrong, naming the block and the batch. It checks
what a certificate relies on and what the hub computed when it sealed:

- each block header decodes, its stored hash is its hash, it names this chain, its height
  follows, its prev_hash is the previous header's hash, its time does not go back;
- its batch and entry counts, its batches_root over its batch hashes, and log_size/log_root
  of the whole log of batch hashes;
- its seals: every seal verifies with the key it names, and at least `quorum` of the
  configured sealing keys sealed it (a block decided by PBFT replicas: its seals are the
  replicas' commit votes, hub/consensus/quorum.py);
- every batch: the header decodes, the stored hash is its hash, the gateway's key verifies
  its signature, the entries root and count match the stored bodies (with `deep`, every
  body also decodes and the time range matches), and it follows the gateway's previous
  batch (seq and prev_hash).

`audit_store` is the thin reader that feeds the core from a `Store`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from protos import merkle
from protos.batch import entry_time_range
from protos.canonical import (
    CanonicalError,
    batch_hash,
    block_hash,
    decode_batch_header,
    decode_block_header,
    decode_entry,
    encode_commit,
)
from protos.merkle import CompactRange
from protos.records import ZERO_HASH, BlockHeader, RecordError
from protos.signing import PublicKey, verify_signature

from hub.chain.block import commit_statement
from hub.consensus.quorum import commit_bytes
from hub.storage.store import StoredQuorum


@dataclass(frozen=True)
class BatchRecord:
    """A stored batch as the audit sees it."""

    gateway_id: str
    seq: int
    hash: bytes
    header: bytes
    signature: bytes
    bodies: tuple[bytes, ...] | None  # None: header only here (custody: its entries are at other replicas)

    @property
    def entry_count(self) -> int:
        """Entries stored, or for a header-only batch those its (checked) header names."""
        if self.bodies is not None:
            return len(self.bodies)
        try:
            return decode_batch_header(self.header).entry_count
        except (CanonicalError, RecordError):
            return 0


@dataclass(frozen=True)
class BlockRecord:
    height: int
    hash: bytes
    header: bytes
    seals: tuple[tuple[str, bytes], ...]
    quorum: StoredQuorum | None = None  # decided by replicas: the seals are commit votes


@dataclass(frozen=True)
class Finding:
    """One thing wrong, with where it is."""

    height: int | None  # None: a batch not yet in a block
    batch: str | None  # "gateway gw-1 batch 7"
    problem: str

    def __str__(self) -> str:
        where = f"block {self.height}" if self.height is not None else "unsealed"
        if self.batch:
            where += f", {self.batch}"
        return f"{where}: {self.problem}"


class AuditFailed(Exception):
    """The stored chain does not check out; `findings[0]` is the first bad block or batch."""

    def __init__(self, findings: Sequence[Finding]) -> None:
        self.findings = list(findings)
        more = f" (and {len(findings) - 1} more)" if len(findings) > 1 else ""
        super().__init__(f"{findings[0]}{more}")


@dataclass
class AuditReport:
    blocks: int = 0
    batches: int = 0
    entries: int = 0
    header_only: int = 0  # batches whose entries are stored at other replicas (custody): header and signature checked
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings


class ChainAudit:
    """Checks blocks fed in height order; holds only the previous header, the log frontier
    and each gateway's last batch."""

    def __init__(
        self,
        chain_id: str,
        seal_keys: Mapping[str, PublicKey],
        gateway_keys: Mapping[str, Mapping[str, PublicKey]],
        quorum: int = 1,
        prev: BlockHeader | None = None,
        log: CompactRange | None = None,
        gateway_heads: Mapping[str, tuple[int, bytes]] | None = None,
        deep: bool = False,
    ) -> None:
        self.chain_id = chain_id
        self.deep = deep
        self.seal_keys = dict(seal_keys)
        self.gateway_keys = gateway_keys
        self.quorum = quorum
        self.prev = prev
        self.log = log or CompactRange()
        self.heads: dict[str, tuple[int, bytes]] = dict(gateway_heads or {})
        self.report = AuditReport()

    # -- batches ------------------------------------------------------------------

    def check_batch(self, b: BatchRecord, height: int | None) -> list[Finding]:
        name = f"gateway {b.gateway_id} batch {b.seq}"

        def bad(problem: str) -> list[Finding]:
            return [Finding(height, name, problem)]

        try:
            header = decode_batch_header(b.header)
        except (CanonicalError, RecordError) as exc:
            return bad(f"stored header does not decode: {exc}")
        if (header.gateway_id, header.seq) != (b.gateway_id, b.seq):
            return bad(f"stored header is batch {header.seq} of gateway {header.gateway_id}")
        if batch_hash(header) != b.hash:
            return bad("stored hash is not the hash of the stored header")
        key = self.gateway_keys.get(b.gateway_id, {}).get(header.key_id)
        if key is None:
            return bad(f"signed with key {header.key_id}, which is not registered for the gateway")
        if not verify_signature(key, b.signature, b.header):
            return bad(f"signature does not verify with key {header.key_id}")
        if b.bodies is not None and len(b.bodies) != header.entry_count:
            return bad(f"header says {header.entry_count} entries, {len(b.bodies)} are stored")
        if b.bodies is not None and merkle.root(b.bodies) != header.entries_root:
            return bad("entries root in the header is not the root over the stored entries")
        # The signed root binds the bodies; decoding each one again (about 100x the cost of
        # hashing it) re-checks what ingest checked, for a deep audit only.
        if self.deep and b.bodies is not None:
            timestamps = []
            for i, body in enumerate(b.bodies):
                try:
                    timestamps.append(decode_entry(body).timestamp_ns)
                except (CanonicalError, RecordError) as exc:
                    return bad(f"entry {i} does not decode: {exc}")
            if entry_time_range(timestamps) != (header.first_ns, header.last_ns):
                return bad("time range in the header does not match the stored entries")
        last = self.heads.get(b.gateway_id)
        expected_seq, expected_prev = (1, ZERO_HASH) if last is None else (last[0] + 1, last[1])
        if (header.seq, header.prev_hash) != (expected_seq, expected_prev):
            problem = (
                f"does not follow the gateway's previous batch (expected batch {expected_seq}"
                f"{' with its prev_hash' if header.seq == expected_seq else ''})"
            )
            return bad(problem)
        self.heads[b.gateway_id] = (header.seq, b.hash)
        self.report.batches += 1
        if b.bodies is None:
            self.report.header_only += 1
        else:
            self.report.entries += len(b.bodies)
        return []

    # -- blocks -------------------------------------------------------------------

    def check_block(self, block: BlockRecord, batches: Sequence[BatchRecord]) -> list[Finding]:
        found: list[Finding] = []
        h = block.height

        def bad(problem: str) -> None:
            found.append(Finding(h, None, problem))

        try:
            header = decode_block_header(block.header)
        except (CanonicalError, RecordError) as exc:
            bad(f"stored header does not decode: {exc}")
            return found
        expected_height = 1 if self.prev is None else self.prev.height + 1
        if header.height != h or h != expected_height:
            bad(f"header says height {header.height}; expected {expected_height}")
        if block_hash(header) != block.hash:
            bad("stored hash is not the hash of the stored header")
        if header.chain_id != self.chain_id:
            bad(f"header names chain {header.chain_id!r}, not {self.chain_id!r}")
        expected_prev = ZERO_HASH if self.prev is None else block_hash(self.prev)
        if header.prev_hash != expected_prev:
            bad("prev_hash is not the hash of the previous block's header")
        if self.prev is not None and header.time_ns < self.prev.time_ns:
            bad("time is earlier than the previous block's")
        self._check_seals(header, block, bad)

        # Batches first: a damaged batch is named before the block totals it upsets.
        for b in batches:
            found.extend(self.check_batch(b, h))
            self.log.append(merkle.leaf_hash(b.hash))
        hashes = [b.hash for b in batches]
        if header.batch_count != len(batches):
            bad(f"header says {header.batch_count} batches, {len(batches)} are stored in it")
        if header.entry_count != sum(b.entry_count for b in batches):
            bad(f"header says {header.entry_count} entries, its batches hold {sum(b.entry_count for b in batches)}")
        if hashes and merkle.root(hashes) != header.batches_root:
            bad("batches_root is not the root over its stored batch hashes")
        if (self.log.size, self.log.root()) != (header.log_size, header.log_root):
            bad(f"log_size/log_root do not match the log of stored batch hashes (size {self.log.size})")
        self.prev = header
        self.report.blocks += 1
        self.report.findings.extend(found)
        return found

    def _check_seals(self, header: BlockHeader, block: BlockRecord, bad) -> None:  # noqa: ANN001
        valid = set()
        q = block.quorum
        signed = (encode_commit(commit_statement(header)) if q is None
                  else commit_bytes(block.header, header.height, q.view, q.prev, q.contents_digest))
        for key_id, signature in block.seals:
            key = self.seal_keys.get(key_id)
            if key is None:
                bad(f"seal by key {key_id}, which is not a configured sealing key")
            elif not verify_signature(key, signature, signed):
                bad(f"seal by key {key_id} does not verify")
            else:
                valid.add(key_id)
        if len(valid) < self.quorum:
            bad(f"{len(valid)} valid seals, {self.quorum} needed")

    def check_unsealed(self, batches: Sequence[BatchRecord]) -> list[Finding]:
        found = [f for b in batches for f in self.check_batch(b, None)]
        self.report.findings.extend(found)
        return found


# -- the reader -----------------------------------------------------------------------


def batch_record(store, stored, header_only: bool = False) -> BatchRecord:  # noqa: ANN001
    return BatchRecord(
        stored.gateway_id, stored.seq, stored.hash, stored.header, stored.signature,
        None if header_only else tuple(store.batch_bodies(stored.id)),
    )


def block_batch_records(store, height: int) -> list[BatchRecord]:  # noqa: ANN001
    """The batches of block `height`, header-only ones (custody) without bodies."""
    batches = store.block_batches(height)
    elsewhere = store.header_only([b.id for b in batches])
    return [batch_record(store, b, b.id in elsewhere) for b in batches]


def stored_blocks(store, from_height: int = 1) -> Iterator[tuple[BlockRecord, list[BatchRecord]]]:  # noqa: ANN001
    head = store.head()
    for height in range(from_height, (head.height if head else 0) + 1):
        blk = store.block(height)
        if blk is None:
            yield BlockRecord(height, b"", b"", ()), []
            continue
        yield (
            BlockRecord(blk.height, blk.hash, blk.header, blk.seals, blk.quorum),
            block_batch_records(store, height),
        )


UNSEALED_LIMIT = 1_000_000


def audit_store(
    store,  # noqa: ANN001
    chain_id: str,
    seal_keys: Mapping[str, PublicKey],
    quorum: int = 1,
    max_findings: int = 100,
    deep: bool = False,
) -> AuditReport:
    """Audit every block of `store`, then its batches not yet in a block."""
    from protos.signing import parse_public_key_pem

    gateway_keys = {
        gw: {kid: parse_public_key_pem(pem, f"key {kid} of gateway {gw}") for kid, pem in keys.items()}
        for gw, keys in store.gateway_keys().items()
    }
    audit = ChainAudit(chain_id, seal_keys, gateway_keys, quorum, deep=deep)
    for block, batches in stored_blocks(store):
        if not block.header:
            audit.report.findings.append(Finding(block.height, None, "block is missing"))
            break
        audit.check_block(block, batches)
        if len(audit.report.findings) >= max_findings:
            return audit.report
    audit.check_unsealed([batch_record(store, b) for b in store.unsealed_batches(UNSEALED_LIMIT)])
    return audit.report
