"""Building the next block from stored batches: pure, no I/O.

A block header commits to the previous block, to the RFC 6962 root over its
own batch hashes, and to the root of the whole chain's log of batch hashes, so
that any two blocks can be shown consistent (append-only) with a consistency
proof. Seals (signatures over `CommitStatement`) are made separately.
"""

from __future__ import annotations

from collections.abc import Sequence


from protos import merkle
from protos.canonical import block_hash, encode_commit
from protos.merkle import CompactRange
from protos.records import ZERO_HASH, BlockHeader, CommitStatement
from protos.signing import Signer


def next_block(
    chain_id: str,
    prev: BlockHeader | None,
    batch_hashes: Sequence[bytes],
    entry_count: int,
    log: CompactRange,
    time_ns: int,
) -> tuple[BlockHeader, CompactRange]:
    """The header of the block after `prev`, and the log frontier after it.

    `log` is the frontier before this block; it is not modified.
    """
    if not batch_hashes:
        raise ValueError("a block needs at least one batch")
    new_log = CompactRange.from_json(log.to_json())
    for h in batch_hashes:
        new_log.append(merkle.leaf_hash(h))
    header = BlockHeader(
        chain_id=chain_id,
        height=1 if prev is None else prev.height + 1,
        prev_hash=ZERO_HASH if prev is None else block_hash(prev),
        # Never earlier than the previous block, even if the clock stepped back.
        time_ns=time_ns if prev is None else max(time_ns, prev.time_ns),
        batches_root=merkle.root(batch_hashes),
        batch_count=len(batch_hashes),
        entry_count=entry_count,
        log_size=new_log.size,
        log_root=new_log.root(),
    )
    return header, new_log


def commit_statement(header: BlockHeader) -> CommitStatement:
    return CommitStatement(header.chain_id, header.height, block_hash(header))


def seal(header: BlockHeader, signer: Signer) -> tuple[str, bytes]:
    """One replica's seal: (key id, signature over the commit statement)."""
    return signer.key_id, signer.sign(encode_commit(commit_statement(header)))
