"""Blocks decided by PBFT replicas keep their commit certificate (`block_quorums`).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23

A block sealed by one hub has seals over its `CommitStatement`. A block decided by a
substation's replicas has, instead, the commit votes of a quorum of replicas: their signatures
(in `seals`, one row per replica key) cover `Commit(view, height, proposal digest)`, and the
digest is recomputed from the header's hash and this table's `prev` and `contents_digest`
(hub/consensus/quorum.py). No data changes: existing blocks have no row here.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "block_quorums",
        sa.Column("height", sa.BigInteger, sa.ForeignKey("blocks.height"), primary_key=True, autoincrement=False),
        sa.Column("view", sa.BigInteger, nullable=False),
        sa.Column("prev", sa.LargeBinary(32), nullable=False),
        sa.Column("contents_digest", sa.LargeBinary(32), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("block_quorums")
