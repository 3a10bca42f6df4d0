"""Table definitions of the hub database.

Canonical bytes are stored as they were hashed and signed (`header`, `body`),
so a certificate is assembled from stored bytes, never re-derived; the other
columns exist to find rows. Indexes serve the queries clerks run: a meter's
entries over a period, a block by height, the batches of a block.
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

entries = Table(
    "entries",
    metadata,
    Column("batch_id", BigInteger, ForeignKey("batches.id"), primary_key=True),
    Column("idx", Integer, primary_key=True),
    Column("meter_id", String(128), nullable=False),
    Column("kind", SmallInteger, nullable=False),  # 0 reading, 1 gap
    Column("seq", BigInteger, nullable=True),  # readings only
    Column("ts_ns", BigInteger, nullable=False),
    Column("body", LargeBinary, nullable=False),  # canonical bytes, the Merkle leaf
    Index("entries_meter_time", "meter_id", "ts_ns"),
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

chain_state = Table(
    "chain_state",
    metadata,
    Column("id", SmallInteger, primary_key=True),
    Column("chain_id", String(128), nullable=False),
    Column("log_frontier", Text, nullable=False),  # protos.merkle.CompactRange.to_json()
)

ENTRY_READING = 0
ENTRY_GAP = 1
