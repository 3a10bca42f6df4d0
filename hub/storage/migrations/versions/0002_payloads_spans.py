"""Batch payloads, meter spans, gateway heads and counters instead of one row per entry.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23

Each batch's canonical entry bodies move into one `batch_payloads` row, and `entries` (one fat
row per reading, three B-trees on SQLite) gives way to `entry_spans`, one row per (meter, UTC hour,
batch). The data migration rebuilds both from `entries` batch by batch, fills `meters`,
`gateway_heads` and the counters, then drops `entries`. Downgrade rebuilds `entries`.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from hub.storage.bulk import insert_rows
from hub.storage.migrations import schema_0_1
from hub.storage.payload import pack_bodies, spans_of, unpack_bodies
from protos.canonical import decode_entry
from protos.records import Reading

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CHUNK = 200  # batches per round trip of the data migration


def _new_tables(md: sa.MetaData) -> dict[str, sa.Table]:
    """The tables this revision adds, as it adds them (frozen here, whatever schema.py says later)."""
    sa.Table("batches", md, sa.Column("id", sa.BigInteger, primary_key=True))
    return {
        "batch_payloads": sa.Table(
            "batch_payloads", md,
            sa.Column("batch_id", sa.BigInteger, sa.ForeignKey("batches.id"), primary_key=True, autoincrement=False),
            sa.Column("bodies", sa.LargeBinary, nullable=False),
            sa.Column("offsets", sa.LargeBinary, nullable=False),
        ),
        "meters": sa.Table(
            "meters", md,
            sa.Column("meter_key", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("meter_id", sa.String(128), nullable=False, unique=True),
        ),
        "entry_spans": sa.Table(
            "entry_spans", md,
            sa.Column("meter_key", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("hour", sa.BigInteger, primary_key=True, autoincrement=False),
            sa.Column("batch_id", sa.BigInteger, primary_key=True, autoincrement=False),
            sa.Column("first_ns", sa.BigInteger, nullable=False),
            sa.Column("last_ns", sa.BigInteger, nullable=False),
            sa.Column("n", sa.Integer, nullable=False),
            sa.Column("idxs", sa.LargeBinary, nullable=False),
            sqlite_with_rowid=False,
        ),
        "gateway_heads": sa.Table(
            "gateway_heads", md,
            sa.Column("gateway_id", sa.String(128), primary_key=True),
            sa.Column("seq", sa.BigInteger, nullable=False),
            sa.Column("hash", sa.LargeBinary(32), nullable=False),
            sa.Column("batches", sa.BigInteger, nullable=False),
            sa.Column("entries", sa.BigInteger, nullable=False),
            sa.Column("last_stored_ns", sa.BigInteger, nullable=False),
        ),
    }


_batches = sa.table(
    "batches", sa.column("id"), sa.column("gateway_id"), sa.column("seq"), sa.column("hash"),
    sa.column("entry_count"), sa.column("stored_ns"),
)
_entries = sa.table(
    "entries", sa.column("batch_id"), sa.column("idx"), sa.column("meter_id"), sa.column("ts_ns"), sa.column("body"),
)
_chain_state = sa.table("chain_state", sa.column("batches_stored"), sa.column("entries_stored"))


def upgrade() -> None:
    bind = op.get_bind()
    md = sa.MetaData()
    new = _new_tables(md)
    for name in ("meters", "batch_payloads", "entry_spans", "gateway_heads"):
        new[name].create(bind)
    op.add_column("chain_state", sa.Column("batches_stored", sa.BigInteger, nullable=False, server_default=sa.text("0")))
    op.add_column("chain_state", sa.Column("entries_stored", sa.BigInteger, nullable=False, server_default=sa.text("0")))

    meter_ids = [r[0] for r in bind.execute(sa.select(_entries.c.meter_id).distinct().order_by(_entries.c.meter_id))]
    if meter_ids:
        bind.execute(new["meters"].insert(), [{"meter_id": m} for m in meter_ids])
    keys = {r.meter_id: r.meter_key for r in bind.execute(sa.select(new["meters"]))}

    last = 0
    while True:
        ids = [r.id for r in bind.execute(
            sa.select(_batches.c.id, _batches.c.entry_count).where(_batches.c.id > last).order_by(_batches.c.id).limit(CHUNK)
        )]
        if not ids:
            break
        rows = bind.execute(
            sa.select(_entries.c.batch_id, _entries.c.idx, _entries.c.meter_id, _entries.c.ts_ns, _entries.c.body)
            .where(_entries.c.batch_id.in_(ids)).order_by(_entries.c.batch_id, _entries.c.idx)
        ).all()
        by_batch: dict[int, list] = {i: [] for i in ids}
        for r in rows:
            by_batch[r.batch_id].append(r)
        payloads, spans = [], []
        for batch_id, es in by_batch.items():
            if [e.idx for e in es] != list(range(len(es))):
                raise RuntimeError(f"batch {batch_id}: its entries are not numbered 0..{len(es) - 1}; refusing to migrate")
            payloads.append((batch_id, *pack_bodies([bytes(e.body) for e in es])))
            for sp in spans_of([e.meter_id for e in es], [e.ts_ns for e in es]):
                spans.append((keys[sp.meter_id], sp.hour, batch_id, sp.first_ns, sp.last_ns, sp.count, sp.idxs))
        insert_rows(bind, new["batch_payloads"], ("batch_id", "bodies", "offsets"), payloads)
        insert_rows(bind, new["entry_spans"], ("meter_key", "hour", "batch_id", "first_ns", "last_ns", "n", "idxs"),
                    spans)
        last = ids[-1]

    last_seq = (
        sa.select(_batches.c.gateway_id, sa.func.max(_batches.c.seq).label("seq"),
                  sa.func.count().label("batches"), sa.func.sum(_batches.c.entry_count).label("entries"),
                  sa.func.max(_batches.c.stored_ns).label("last_stored_ns"))
        .group_by(_batches.c.gateway_id).subquery()
    )
    heads = bind.execute(
        sa.select(last_seq, _batches.c.hash).join(
            _batches, (_batches.c.gateway_id == last_seq.c.gateway_id) & (_batches.c.seq == last_seq.c.seq)
        )
    ).all()
    if heads:
        bind.execute(new["gateway_heads"].insert(), [
            {"gateway_id": h.gateway_id, "seq": h.seq, "hash": h.hash, "batches": h.batches,
             "entries": h.entries, "last_stored_ns": h.last_stored_ns} for h in heads
        ])
    n_batches, n_entries = bind.execute(
        sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(_batches.c.entry_count), 0))
    ).one()
    bind.execute(sa.update(_chain_state).values(batches_stored=n_batches, entries_stored=n_entries))
    op.drop_table("entries")


def downgrade() -> None:
    bind = op.get_bind()
    entries = schema_0_1.build(sa.MetaData()).tables["entries"]
    entries.create(bind)
    md = sa.MetaData()
    new = _new_tables(md)
    payloads = new["batch_payloads"]
    last = 0
    while True:
        rows = bind.execute(
            sa.select(payloads).where(payloads.c.batch_id > last).order_by(payloads.c.batch_id).limit(CHUNK)
        ).all()
        if not rows:
            break
        out = []
        for r in rows:
            for idx, body in enumerate(unpack_bodies(bytes(r.bodies), bytes(r.offsets), f"batch {r.batch_id}")):
                e = decode_entry(body)
                reading = isinstance(e, Reading)
                out.append((r.batch_id, idx, e.meter_id, 0 if reading else 1, e.seq if reading else None,
                            e.timestamp_ns, body))
        insert_rows(bind, entries, ("batch_id", "idx", "meter_id", "kind", "seq", "ts_ns", "body"), out)
        last = rows[-1].batch_id
    for name in ("gateway_heads", "entry_spans", "batch_payloads", "meters"):
        new[name].drop(bind)
    with op.batch_alter_table("chain_state") as b:
        b.drop_column("entries_stored")
        b.drop_column("batches_stored")
