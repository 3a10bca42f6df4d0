"""The schema of gridtrace 0.1.0.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from collections.abc import Sequence

from alembic import op
from sqlalchemy import MetaData

from hub.storage.migrations import schema_0_1

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # The frozen 0.1.0 definition itself, so a fresh database and one 0.1.0 made agree exactly.
    schema_0_1.build(MetaData()).create_all(op.get_bind())


def downgrade() -> None:
    schema_0_1.build(MetaData()).drop_all(op.get_bind())
