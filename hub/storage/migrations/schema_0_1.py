"""The hub database of gridtrace 0.1.0, frozen.

Revision 0001 creates exactly this, and a database that 0.1.0 made with `create_all` (no
`alembic_version` table) is compared with it before it is adopted as being at 0001. Never edit
it: later schema changes are later revisions.
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


def build(metadata: MetaData) -> MetaData:
    """Add the 0.1.0 tables to `metadata` and return it."""
    Table(
        "gateways",
        metadata,
        Column("gateway_id", String(128), primary_key=True),
        Column("key_id", String(16), primary_key=True),
        Column("public_key_pem", Text, nullable=False),
        Column("added_ns", BigInteger, nullable=False),
    )
    Table(
        "batches",
        metadata,
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
    Table(
        "entries",
        metadata,
        Column("batch_id", BigInteger, ForeignKey("batches.id"), primary_key=True),
        Column("idx", Integer, primary_key=True),
        Column("meter_id", String(128), nullable=False),
        Column("kind", SmallInteger, nullable=False),
        Column("seq", BigInteger, nullable=True),
        Column("ts_ns", BigInteger, nullable=False),
        Column("body", LargeBinary, nullable=False),
        Index("entries_meter_time", "meter_id", "ts_ns"),
    )
    Table(
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
    Table(
        "seals",
        metadata,
        Column("height", BigInteger, ForeignKey("blocks.height"), primary_key=True),
        Column("key_id", String(16), primary_key=True),
        Column("signature", LargeBinary(64), nullable=False),
    )
    Table(
        "chain_state",
        metadata,
        Column("id", SmallInteger, primary_key=True),
        Column("chain_id", String(128), nullable=False),
        Column("log_frontier", Text, nullable=False),
    )
    return metadata


metadata = build(MetaData())
