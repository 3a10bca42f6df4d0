"""Table definitions of the hub database at the head revision (0004).

Canonical bytes are stored as they were hashed and signed: each batch's entry bodies are kept
together in one payload row (bodies concatenated in Merkle-leaf order, plus their offsets), so a
certificate is assembled from stored bytes, never re-derived, and ingest writes one row per batch
instead of one per reading. The other tables exist to find things:

* `entry_spans`: one row per (meter, UTC hour, batch) listing which entries of the batch belong
  to that meter in that hour; the clerks' "a meter's readings over a period" is a primary-key
  range scan here, then the payloads of the batches found.
* `meters`: the meter id dictionary, so spans carry a small integer.
* `gateway_heads` and the counters in `chain_state`: what ingest start-up and status need,
  kept up to date by each commit instead of scanning the batches.

docs/hub-storage.md describes the queries, their indexes and the PostgreSQL partitioning plan.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

metadata = MetaData()

gateways = Table(
    "gateways",
    metadata,
    Column("gateway_id", String(128), primary_key=True),
    Column("key_id", String(16), primary_key=True),
    Column("public_key_pem", Text, nullable=False),
    Column("added_ns", BigInteger, nullable=False),
)

batches = Table(
    "batches",
    metadata,
    # Arrival order: the block producer seals in this order.
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("gateway_id", String(128), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("hash", LargeBinary(32), nullable=False, unique=True),
    Column("header", LargeBinary, nullable=False),
    Column("signature", LargeBinary(64), nullable=False),
    Column("entry_count", Integer, nullable=False),
    Column("stored_ns", BigInteger, nullable=False),
    Column("block_height", BigInteger, ForeignKey("blocks.height"), nullable=True),
    Column("block_index", Integer, nullable=True),
    Column("log_index", BigInteger, nullable=True, unique=True),
    UniqueConstraint("gateway_id", "seq", name="batches_gateway_seq"),
    Index("batches_unsealed", "block_height", "id"),
    Index("batches_by_block", "block_height", "block_index"),
)

batch_payloads = Table(
    "batch_payloads",
    metadata,
    Column("batch_id", BigInteger, ForeignKey("batches.id"), primary_key=True, autoincrement=False),
    Column("bodies", LargeBinary, nullable=False),  # canonical entry bytes, concatenated in idx order
    Column("offsets", LargeBinary, nullable=False),  # entry_count + 1 big-endian u32: body i = bodies[o[i]:o[i+1]]
    # names fields kept once and cut out of the bodies above (hub.storage.payload)
    Column("names", LargeBinary, nullable=False),
)

meters = Table(
    "meters",
    metadata,
    Column("meter_key", Integer, primary_key=True, autoincrement=True),
    Column("meter_id", String(128), nullable=False, unique=True),
)

entry_spans = Table(
    "entry_spans",
    metadata,
    Column("meter_key", Integer, primary_key=True, autoincrement=False),
    Column("hour", BigInteger, primary_key=True, autoincrement=False),  # ts_ns // HOUR_NS (UTC hours)
    Column("batch_id", BigInteger, primary_key=True, autoincrement=False),
    Column("first_ns", BigInteger, nullable=False),
    Column("last_ns", BigInteger, nullable=False),
    Column("n", Integer, nullable=False),
    Column("idxs", LargeBinary, nullable=False),  # n big-endian u32: the entries' positions in the batch
    # SQLite: the rows live in the primary-key B-tree, so a meter's range scan reads them directly.
    sqlite_with_rowid=False,
)

gateway_heads = Table(
    "gateway_heads",
    metadata,
    Column("gateway_id", String(128), primary_key=True),
    Column("seq", BigInteger, nullable=False),
    Column("hash", LargeBinary(32), nullable=False),
    Column("batches", BigInteger, nullable=False),
    Column("entries", BigInteger, nullable=False),
    Column("last_stored_ns", BigInteger, nullable=False),
)

blocks = Table(
    "blocks",
    metadata,
    Column("height", BigInteger, primary_key=True, autoincrement=False),
    Column("hash", LargeBinary(32), nullable=False, unique=True),
    Column("header", LargeBinary, nullable=False),
    Column("time_ns", BigInteger, nullable=False),
    Column("batch_count", Integer, nullable=False),
    Column("entry_count", BigInteger, nullable=False),
    Column("log_size", BigInteger, nullable=False),
)

seals = Table(
    "seals",
    metadata,
    Column("height", BigInteger, ForeignKey("blocks.height"), primary_key=True),
    Column("key_id", String(16), primary_key=True),
    Column("signature", LargeBinary(64), nullable=False),
)

# A block decided by PBFT replicas: its seals are the quorum's commit votes, over
# Commit(view, height, proposal digest) with the digest recomputed from the header's hash,
# `prev` and `contents_digest` (hub/consensus/quorum.py). Blocks of a single hub have no row.
block_quorums = Table(
    "block_quorums",
    metadata,
    Column("height", BigInteger, ForeignKey("blocks.height"), primary_key=True, autoincrement=False),
    Column("view", BigInteger, nullable=False),
    Column("prev", LargeBinary(32), nullable=False),
    Column("contents_digest", LargeBinary(32), nullable=False),
)

chain_state = Table(
    "chain_state",
    metadata,
    Column("id", SmallInteger, primary_key=True),
    Column("chain_id", String(128), nullable=False),
    Column("log_frontier", Text, nullable=False),  # protos.merkle.CompactRange.to_json()
    Column("batches_stored", BigInteger, nullable=False, server_default=text("0")),
    Column("entries_stored", BigInteger, nullable=False, server_default=text("0")),
)

ENTRY_READING = 0
ENTRY_GAP = 1
ENTRY_CONTRACT = 2  # a contract record (protos.records.ContractRecord); kinds are read from the bytes, not stored
HOUR_NS = 3_600_000_000_000
