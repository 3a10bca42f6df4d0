"""The hub's store: every read and write of the database goes through here.

Calls are synchronous and meant to run on one dedicated thread (the hub's "hub-db"
executor); each write method is one transaction on a durable connection (see
`hub.storage.engine`), so when a write method returns the data is on disk and may be
acknowledged.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import func, select, update

from hub.storage import migrate
from hub.storage.engine import StoreError, engine_for, sqlite_url
from hub.storage.schema import batches, blocks, chain_state, entries, gateways, seals
from protos.merkle import CompactRange

__all__ = ["EntryRow", "NewBatch", "Store", "StoreError", "StoredBatch", "StoredBlock", "engine_for", "sqlite_url"]


@dataclass(frozen=True)
class EntryRow:
    idx: int
    meter_id: str
    kind: int
    seq: int | None
    ts_ns: int
    body: bytes


@dataclass(frozen=True)
class NewBatch:
    """A verified batch ready to be stored."""

    gateway_id: str
    seq: int
    hash: bytes
    header: bytes
    signature: bytes
    entries: tuple[EntryRow, ...]


@dataclass(frozen=True)
class StoredBatch:
    id: int
    gateway_id: str
    seq: int
    hash: bytes
    header: bytes
    signature: bytes
    entry_count: int
    stored_ns: int
    block_height: int | None
    block_index: int | None
    log_index: int | None


@dataclass(frozen=True)
class StoredBlock:
    height: int
    hash: bytes
    header: bytes
    batch_count: int
    entry_count: int
    log_size: int
    seals: tuple[tuple[str, bytes], ...]


def _batch(row) -> StoredBatch:  # noqa: ANN001
    return StoredBatch(
        row.id, row.gateway_id, row.seq, bytes(row.hash), bytes(row.header), bytes(row.signature),
        row.entry_count, row.stored_ns, row.block_height, row.block_index, row.log_index,
    )


class Store:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = engine_for(url)
        # The URL as it may be shown: in messages and logs, never a password.
        self.where = self.engine.url.render_as_string(hide_password=True)

    def close(self) -> None:
        self.engine.dispose()

    # -- setup -------------------------------------------------------------------

    def create(self, chain_id: str) -> None:
        """Migrate the schema to head and bind the database to `chain_id` (idempotent)."""
        migrate.upgrade(self.engine)
        with self.engine.begin() as c:
            row = c.execute(select(chain_state.c.chain_id)).first()
            if row is None:
                c.execute(
                    chain_state.insert().values(
                        id=1, chain_id=chain_id, log_frontier=json.dumps(CompactRange().to_json())
                    )
                )
            elif row.chain_id != chain_id:
                raise StoreError(f"database {self.where} holds chain {row.chain_id!r}, not {chain_id!r}")

    def open_existing(self, chain_id: str, config_hint: str = "hub.toml") -> None:
        """Check the database is at the schema head and holds `chain_id`; never changes it."""
        migrate.require_head(self.engine, config_hint)
        stored = self.chain_id()
        if stored != chain_id:
            raise StoreError(f"database {self.where} holds chain {stored!r}, not {chain_id!r}")

    def chain_id(self) -> str:
        with self.engine.connect() as c:
            row = c.execute(select(chain_state.c.chain_id)).first()
        if row is None:
            raise StoreError(f"database {self.where} is not initialised; run `gridtrace hub init`")
        return row.chain_id

    # -- gateways ----------------------------------------------------------------

    def add_gateway(self, gateway_id: str, key_id: str, public_key_pem: str, now_ns: int) -> bool:
        """Register a gateway key; False if that exact key was registered already."""
        with self.engine.begin() as c:
            exists = c.execute(
                select(gateways.c.key_id).where(
                    gateways.c.gateway_id == gateway_id, gateways.c.key_id == key_id
                )
            ).first()
            if exists:
                return False
            c.execute(
                gateways.insert().values(
                    gateway_id=gateway_id, key_id=key_id, public_key_pem=public_key_pem, added_ns=now_ns
                )
            )
        return True

    def gateway_keys(self) -> dict[str, dict[str, str]]:
        with self.engine.connect() as c:
            rows = c.execute(select(gateways).order_by(gateways.c.gateway_id, gateways.c.key_id)).all()
        out: dict[str, dict[str, str]] = {}
        for r in rows:
            out.setdefault(r.gateway_id, {})[r.key_id] = r.public_key_pem
        return out

    def gateway_head(self, gateway_id: str) -> tuple[int, bytes] | None:
        """Last stored batch (seq, hash) of one gateway."""
        with self.engine.connect() as c:
            row = c.execute(
                select(batches.c.seq, batches.c.hash)
                .where(batches.c.gateway_id == gateway_id)
                .order_by(batches.c.seq.desc())
                .limit(1)
            ).first()
        return (row.seq, bytes(row.hash)) if row else None

    def gateway_heads(self) -> dict[str, tuple[int, bytes]]:
        """Last stored batch (seq, hash) of each gateway."""
        with self.engine.connect() as c:
            last = (
                select(batches.c.gateway_id, func.max(batches.c.seq).label("seq"))
                .group_by(batches.c.gateway_id)
                .subquery()
            )
            rows = c.execute(
                select(batches.c.gateway_id, batches.c.seq, batches.c.hash).join(
                    last, (batches.c.gateway_id == last.c.gateway_id) & (batches.c.seq == last.c.seq)
                )
            ).all()
        return {r.gateway_id: (r.seq, bytes(r.hash)) for r in rows}

    # -- ingest ------------------------------------------------------------------

    def find_batch(self, gateway_id: str, seq: int) -> StoredBatch | None:
        with self.engine.connect() as c:
            row = c.execute(
                select(batches).where(batches.c.gateway_id == gateway_id, batches.c.seq == seq)
            ).first()
        return _batch(row) if row else None

    def store_batches(self, new: Sequence[NewBatch], stored_ns: int) -> None:
        """Store batches and their entries in one durable transaction."""
        with self.engine.begin() as c:
            for b in new:
                batch_id = c.execute(
                    batches.insert().values(
                        gateway_id=b.gateway_id, seq=b.seq, hash=b.hash, header=b.header,
                        signature=b.signature, entry_count=len(b.entries), stored_ns=stored_ns,
                    )
                ).inserted_primary_key[0]
                if not b.entries:
                    continue
                c.execute(
                    entries.insert(),
                    [
                        {"batch_id": batch_id, "idx": e.idx, "meter_id": e.meter_id, "kind": e.kind,
                         "seq": e.seq, "ts_ns": e.ts_ns, "body": e.body}
                        for e in b.entries
                    ],
                )

    # -- chain -------------------------------------------------------------------

    def unsealed_batches(self, limit: int) -> list[StoredBatch]:
        with self.engine.connect() as c:
            rows = c.execute(
                select(batches).where(batches.c.block_height.is_(None)).order_by(batches.c.id).limit(limit)
            ).all()
        return [_batch(r) for r in rows]

    def head(self) -> StoredBlock | None:
        with self.engine.connect() as c:
            h = c.execute(select(func.max(blocks.c.height))).scalar()
        return None if h is None else self.block(h)

    def log_frontier(self) -> CompactRange:
        with self.engine.connect() as c:
            raw = c.execute(select(chain_state.c.log_frontier)).scalar_one()
        return CompactRange.from_json(json.loads(raw))

    def append_block(
        self,
        height: int,
        block_hash: bytes,
        header: bytes,
        time_ns: int,
        batch_ids: Sequence[int],
        entry_count: int,
        log_size: int,
        frontier: CompactRange,
        block_seals: Iterable[tuple[str, bytes]],
    ) -> None:
        first_log_index = log_size - len(batch_ids)
        with self.engine.begin() as c:
            c.execute(
                blocks.insert().values(
                    height=height, hash=block_hash, header=header, time_ns=time_ns,
                    batch_count=len(batch_ids), entry_count=entry_count, log_size=log_size,
                )
            )
            for key_id, signature in block_seals:
                c.execute(seals.insert().values(height=height, key_id=key_id, signature=signature))
            for i, batch_id in enumerate(batch_ids):
                done = c.execute(
                    update(batches)
                    .where(batches.c.id == batch_id, batches.c.block_height.is_(None))
                    .values(block_height=height, block_index=i, log_index=first_log_index + i)
                )
                if done.rowcount != 1:
                    raise StoreError(f"batch {batch_id} was sealed twice")
            c.execute(update(chain_state).values(log_frontier=json.dumps(frontier.to_json())))

    def block(self, height: int) -> StoredBlock | None:
        with self.engine.connect() as c:
            row = c.execute(select(blocks).where(blocks.c.height == height)).first()
            if row is None:
                return None
            block_seals = c.execute(
                select(seals.c.key_id, seals.c.signature).where(seals.c.height == height).order_by(seals.c.key_id)
            ).all()
        return StoredBlock(
            row.height, bytes(row.hash), bytes(row.header), row.batch_count, row.entry_count,
            row.log_size, tuple((s.key_id, bytes(s.signature)) for s in block_seals),
        )

    def block_batch_hashes(self, height: int) -> list[bytes]:
        with self.engine.connect() as c:
            rows = c.execute(
                select(batches.c.hash).where(batches.c.block_height == height).order_by(batches.c.block_index)
            ).all()
        return [bytes(r.hash) for r in rows]

    def log_hashes(self, size: int) -> list[bytes]:
        """The first `size` batch hashes of the log, in log order."""
        with self.engine.connect() as c:
            rows = c.execute(
                select(batches.c.hash)
                .where(batches.c.log_index.is_not(None), batches.c.log_index < size)
                .order_by(batches.c.log_index)
            ).all()
        return [bytes(r.hash) for r in rows]

    # -- queries -----------------------------------------------------------------

    def meter_entries(self, meter_id: str, from_ns: int, to_ns: int) -> list[tuple[int, EntryRow]]:
        """(batch id, entry) of a meter in [from_ns, to_ns), sealed or not, in time order."""
        with self.engine.connect() as c:
            rows = c.execute(
                select(entries)
                .where(entries.c.meter_id == meter_id, entries.c.ts_ns >= from_ns, entries.c.ts_ns < to_ns)
                .order_by(entries.c.ts_ns, entries.c.batch_id, entries.c.idx)
            ).all()
        return [
            (r.batch_id, EntryRow(r.idx, r.meter_id, r.kind, r.seq, r.ts_ns, bytes(r.body))) for r in rows
        ]

    def batch_by_id(self, batch_id: int) -> StoredBatch:
        with self.engine.connect() as c:
            return _batch(c.execute(select(batches).where(batches.c.id == batch_id)).one())

    def batch_bodies(self, batch_id: int) -> list[bytes]:
        with self.engine.connect() as c:
            rows = c.execute(
                select(entries.c.body).where(entries.c.batch_id == batch_id).order_by(entries.c.idx)
            ).all()
        return [bytes(r.body) for r in rows]

    def counts(self) -> tuple[int, int, int]:
        """(batches stored, batches not yet in a block, entries stored)."""
        with self.engine.connect() as c:
            n_batches = c.execute(select(func.count()).select_from(batches)).scalar_one()
            unsealed = c.execute(
                select(func.count()).select_from(batches).where(batches.c.block_height.is_(None))
            ).scalar_one()
            n_entries = c.execute(select(func.coalesce(func.sum(batches.c.entry_count), 0))).scalar_one()
        return n_batches, unsealed, n_entries
