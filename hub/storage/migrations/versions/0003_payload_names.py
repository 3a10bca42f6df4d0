"""Batch payloads keep each distinct quantity names field once (`batch_payloads.names`).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23

A 41-quantity reading is about 1,200 canonical bytes, 70 % of them the names/units field its
meter model repeats in every reading. From this revision a payload stores that field once per
batch and the bodies without it (`hub.storage.payload`); reads splice it back byte for byte.
The data migration rewrites every payload batch by batch; downgrade stores the bodies whole
again. Both check each rewritten payload reads back as the same bodies before writing it.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from hub.storage.payload import pack_bodies, unpack_bodies, unpack_payload
from protos.entrypack import EntryPack, pack_entries

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CHUNK = 200  # payloads per round trip of the data migration

_payloads = sa.table(
    "batch_payloads", sa.column("batch_id"), sa.column("bodies"), sa.column("offsets"), sa.column("names"),
)


def _rewrite(convert, with_names: bool) -> None:  # noqa: ANN001
    """Rewrite every payload row with `convert(row) -> (bodies, offsets[, names])`, in chunks."""
    bind = op.get_bind()
    cols = [_payloads.c.batch_id, _payloads.c.bodies, _payloads.c.offsets] + ([_payloads.c.names] if with_names else [])
    last = 0
    while True:
        rows = bind.execute(
            sa.select(*cols).where(_payloads.c.batch_id > last).order_by(_payloads.c.batch_id).limit(CHUNK)
        ).all()
        if not rows:
            return
        for r in rows:
            values = convert(r)
            bind.execute(
                sa.update(_payloads).where(_payloads.c.batch_id == r.batch_id).values(**values)
            )
        last = rows[-1].batch_id


def _compact(r) -> dict:  # noqa: ANN001
    where = f"payload of batch {r.batch_id}"
    bodies = unpack_bodies(bytes(r.bodies), bytes(r.offsets), where)
    p = pack_entries(bodies)
    if unpack_payload(p, where) != bodies:
        raise RuntimeError(f"{where}: the compacted payload does not read back as the same bodies; refusing to migrate")
    return {"bodies": p.bodies, "offsets": p.offsets, "names": p.names}


def _expand(r) -> dict:  # noqa: ANN001
    where = f"payload of batch {r.batch_id}"
    bodies = unpack_payload(EntryPack(bytes(r.bodies), bytes(r.offsets), bytes(r.names)), where)
    blob, offsets = pack_bodies(bodies)
    return {"bodies": blob, "offsets": offsets}


def upgrade() -> None:
    op.add_column("batch_payloads", sa.Column("names", sa.LargeBinary, nullable=True))
    _rewrite(_compact, with_names=False)
    with op.batch_alter_table("batch_payloads") as b:
        b.alter_column("names", existing_type=sa.LargeBinary, nullable=False)


def downgrade() -> None:
    _rewrite(_expand, with_names=True)
    with op.batch_alter_table("batch_payloads") as b:
        b.drop_column("names")
