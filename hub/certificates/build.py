"""Assembling a measurement certificate from the hub's store.

Only sealed entries go in: each with its inclusion proof in its signed batch,
each batch with its proof in its block, each block with its seals, consecutive
blocks with consistency proofs of the chain's log, and the issuing hub's
signature over the selection and the period.
"""

from __future__ import annotations

from dataclasses import dataclass

from hub.certificates.document import (
    CERTIFICATE_FORMAT,
    batch_header_to_json,
    block_header_to_json,
    contract_record_to_json,
    gap_to_json,
    iso_ns,
    reading_to_json,
)
from hub.chain.block import commit_statement
from hub.consensus.quorum import commit_bytes
from hub.storage.schema import ENTRY_GAP, ENTRY_READING
from hub.storage.store import Store, StoredBatch
from protos import merkle
from protos.canonical import (
    decode_batch_header,
    decode_block_header,
    decode_contract_record,
    decode_gap,
    decode_reading,
    encode_commit,
    encode_issue,
)
from protos.records import IssueStatement
from protos.signing import Signer


class EntriesUnavailable(Exception):
    """Entries of the period are sealed but stored only at other replicas that did not serve them."""


class CertificateUnavailable(Exception):
    """Nothing sealed to certify for the request; the message says what to try."""


@dataclass(frozen=True)
class BuiltCertificate:
    document: dict
    unsealed_entries: int


def build_certificate(
    store: Store, signer: Signer, chain_id: str, meter_id: str, from_ns: int, to_ns: int, issued_ns: int
) -> BuiltCertificate:
    rows = store.meter_entries(meter_id, from_ns, to_ns)
    batch_cache: dict[int, StoredBatch] = {}
    sealed = []
    unsealed = 0
    for batch_id, row in rows:
        b = batch_cache.get(batch_id) or batch_cache.setdefault(batch_id, store.batch_by_id(batch_id))
        if b.block_height is None:
            unsealed += 1
        else:
            sealed.append((b, row))
    if not sealed:
        raise CertificateUnavailable(
            f"no sealed entries for meter {meter_id} from {iso_ns(from_ns)} to {iso_ns(to_ns)}"
            + (f" ({unsealed} stored, waiting for the next block)" if unsealed else "")
        )

    batches_used = sorted({b.id: b for b, _ in sealed}.values(), key=lambda b: b.log_index)
    batch_pos = {b.id: i for i, b in enumerate(batches_used)}

    entries_json = []
    leaf_cache: dict[int, list[bytes]] = {}
    for b, row in sealed:
        leaves = leaf_cache.get(b.id)
        if leaves is None:
            leaves = leaf_cache[b.id] = [merkle.leaf_hash(body) for body in store.batch_bodies(b.id)]
        item = {
            "batch": batch_pos[b.id],
            "index": row.idx,
            "proof": [p.hex() for p in merkle.inclusion_proof_from_hashes(row.idx, leaves)],
        }
        if row.kind == ENTRY_READING:
            item["reading"] = reading_to_json(decode_reading(row.body))
        elif row.kind == ENTRY_GAP:
            item["gap"] = gap_to_json(decode_gap(row.body))
        else:
            item["contract_record"] = contract_record_to_json(decode_contract_record(row.body))
        entries_json.append(item)

    heights = sorted({b.block_height for b in batches_used})
    blocks = {h: store.block(h) for h in heights}
    block_leaves = {
        h: [merkle.leaf_hash(x) for x in store.block_batch_hashes(h)] for h in heights
    }
    batches_json = []
    for b in batches_used:
        batches_json.append(
            {
                "header": batch_header_to_json(decode_batch_header(b.header)),
                "header_bytes": b.header.hex(),
                "signature": b.signature.hex(),
                "block": b.block_height,
                "index": b.block_index,
                "proof": [
                    p.hex() for p in merkle.inclusion_proof_from_hashes(b.block_index, block_leaves[b.block_height])
                ],
            }
        )

    blocks_json = []
    for h in heights:
        blk = blocks[h]
        header = decode_block_header(blk.header)
        item = {
            "header": block_header_to_json(header),
            "header_bytes": blk.header.hex(),
            "commit_bytes": encode_commit(commit_statement(header)).hex(),
            "seals": [{"key_id": k, "signature": s.hex()} for k, s in blk.seals],
        }
        if blk.quorum is not None:
            # Decided by PBFT replicas: the seals are their commit votes (hub/consensus/quorum.py).
            q = blk.quorum
            item["quorum"] = {"view": q.view, "prev": q.prev.hex(), "contents_digest": q.contents_digest.hex()}
            item["commit_bytes"] = commit_bytes(blk.header, header.height, q.view, q.prev, q.contents_digest).hex()
        blocks_json.append(item)

    consistency = []
    if len(heights) > 1:
        log_leaves = [merkle.leaf_hash(x) for x in store.log_hashes(blocks[heights[-1]].log_size)]
        for older, newer in zip(heights, heights[1:]):
            old_size, new_size = blocks[older].log_size, blocks[newer].log_size
            proof = merkle.consistency_proof_from_hashes(old_size, log_leaves[:new_size])
            consistency.append(
                {"from_height": older, "to_height": newer, "proof": [p.hex() for p in proof]}
            )

    statement = IssueStatement(
        chain_id, meter_id, from_ns, to_ns, issued_ns, merkle.root([row.body for _, row in sealed])
    )
    document = {
        "format": CERTIFICATE_FORMAT,
        "chain_id": chain_id,
        "meter_id": meter_id,
        "period": {"from_ns": from_ns, "from": iso_ns(from_ns), "to_ns": to_ns, "to": iso_ns(to_ns)},
        "issued_ns": issued_ns,
        "issued": iso_ns(issued_ns),
        "issuer": {"key_id": signer.key_id, "signature": signer.sign(encode_issue(statement)).hex()},
        "entries": entries_json,
        "batches": batches_json,
        "blocks": blocks_json,
        "consistency": consistency,
    }
    return BuiltCertificate(document, unsealed)
