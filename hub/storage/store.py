"""The hub's store: every read and write of the database goes through here.

Calls are synchronous and meant to run on one dedicated thread (the hub's "hub-db"
executor); each write method is one transaction on a durable connection (see
`hub.storage.engine`), so when a write method returns the data is on disk and may be
acknowledged.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import Connection, bindparam, case, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from hub.storage import migrate

if TYPE_CHECKING:  # a type only: the store does not depend on the chain
    from hub.chain.ledger import HeldBatch
from hub.storage.bulk import insert_rows
from hub.storage.engine import Checkpointer, StoreError, engine_for, sqlite_url
from hub.storage.payload import PayloadError, Span, spans_of, unpack_idxs, unpack_payload
from protos.entrypack import EntryPack
from hub.storage.schema import (
    ENTRY_CONTRACT,
    ENTRY_GAP,
    ENTRY_READING,
    HOUR_NS,
    batch_payloads,
    batches,
    block_quorums,
    blocks,
    chain_state,
    entry_spans,
    gateway_heads,
    gateways,
    meters,
    seals,
)
from protos.canonical import CanonicalError, decode_entry
from protos.merkle import CompactRange
from protos.records import Gap, Reading, RecordError

__all__ = [
    "EntryRow", "NewBatch", "Store", "StoreError", "StoredBatch", "StoredBlock", "StoredEntry",
    "engine_for", "sqlite_url",
]

_BATCH_COLUMNS = ("gateway_id", "seq", "hash", "header", "signature", "entry_count", "stored_ns")
_PAYLOAD_COLUMNS = ("batch_id", "bodies", "offsets", "names")
_SPAN_COLUMNS = ("meter_key", "hour", "batch_id", "first_ns", "last_ns", "n", "idxs")
# Built once (a select built per call costs more than running it): ids of batches by hash.
_IDS_BY_HASH = select(batches.c.id, batches.c.hash).where(batches.c.hash.in_(bindparam("hashes", expanding=True)))
_BATCHES_BY_HASH = select(batches).where(batches.c.hash.in_(bindparam("hashes", expanding=True)))
_ADD_COUNTS = update(chain_state).values(
    batches_stored=chain_state.c.batches_stored + bindparam("n_batches"),
    entries_stored=chain_state.c.entries_stored + bindparam("n_entries"),
)


@dataclass(frozen=True)
class EntryRow:
    idx: int
    meter_id: str
    kind: int
    seq: int | None
    ts_ns: int
    body: bytes


@dataclass(frozen=True)
class StoredEntry:
    """One stored entry with where it came from (for audits, exports and tests)."""

    batch_id: int
    idx: int
    meter_id: str
    kind: int
    seq: int | None
    ts_ns: int
    body: bytes
    stored_ns: int


@dataclass(frozen=True)
class NewBatch:
    """A verified batch ready to be stored: its entries packed, and their spans."""

    gateway_id: str
    seq: int
    hash: bytes
    header: bytes
    signature: bytes
    payload: EntryPack  # the canonical entry bytes, the Merkle leaves, packed as they arrived (protos.entrypack)
    spans: tuple[Span, ...]  # each meter's entries per UTC hour, the index clerks query by

    @property
    def entry_count(self) -> int:
        return self.payload.entry_count

    def bodies(self) -> list[bytes]:
        """The canonical entry bytes, names fields spliced back."""
        return unpack_payload(self.payload, f"gateway {self.gateway_id} batch {self.seq}")


def new_batch(
    gateway_id: str, seq: int, digest: bytes, header: bytes, signature: bytes,
    payload: EntryPack, meter_ids: Sequence[str], ts_ns: Sequence[int],
) -> NewBatch:
    """A NewBatch from its entries' meters and times as columns (index i is entry i)."""
    return NewBatch(gateway_id, seq, digest, header, signature, payload, tuple(spans_of(meter_ids, ts_ns)))


@dataclass(frozen=True)
class HeaderOnlyBatch:
    """A batch sealed in a block whose entries this replica does not store (custody: they are
    at f+1 or more other replicas): its gateway-signed header, which is all the block needs,
    and what a later fetch of the entries is checked against."""

    gateway_id: str
    seq: int
    hash: bytes
    header: bytes
    signature: bytes
    entry_count: int

    @classmethod
    def of(cls, b: HeldBatch | StoredBatch) -> HeaderOnlyBatch:
        """The header-only row of a batch known by its header (a replica's ledger), or of one
        stored in another database (a backup)."""
        return cls(b.gateway_id, b.seq, b.hash, b.header, b.signature, b.entry_count)


_SEAL_BATCH = (
    update(batches)
    .where(batches.c.id == bindparam("b_id"), batches.c.block_height.is_(None))
    .values(block_height=bindparam("b_height"), block_index=bindparam("b_index"), log_index=bindparam("b_log_index"))
)


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
class StoredQuorum:
    """What a replicated block's commit votes need besides its header (hub/consensus/quorum.py)."""

    view: int
    prev: bytes
    contents_digest: bytes


@dataclass(frozen=True)
class StoredBlock:
    height: int
    hash: bytes
    header: bytes
    batch_count: int
    entry_count: int
    log_size: int
    seals: tuple[tuple[str, bytes], ...]  # (key id, signature): over the CommitStatement, or commit votes if `quorum`
    quorum: StoredQuorum | None = None


def _entry_fields(body: bytes, where: str) -> tuple[str, int, int | None, int]:
    """(meter id, kind, seq, ts_ns) of a stored canonical body."""
    try:
        e = decode_entry(body)
    except (CanonicalError, RecordError, ValueError) as exc:
        raise PayloadError(f"{where}: stored entry does not decode: {exc}") from exc
    if isinstance(e, Reading):
        return e.meter_id, ENTRY_READING, e.seq, e.timestamp_ns
    return e.meter_id, ENTRY_GAP if isinstance(e, Gap) else ENTRY_CONTRACT, None, e.timestamp_ns


def _batch(row) -> StoredBatch:  # noqa: ANN001
    return StoredBatch(
        row.id, row.gateway_id, row.seq, bytes(row.hash), bytes(row.header), bytes(row.signature),
        row.entry_count, row.stored_ns, row.block_height, row.block_index, row.log_index,
    )


class Store:
    def __init__(self, url: str, background_checkpoints: bool = False) -> None:
        """`background_checkpoints` (SQLite, a long-running writer such as the hub server):
        copy the WAL into the database file on a thread of its own instead of in commits."""
        self.url = url
        in_background = background_checkpoints and url.startswith("sqlite")
        self.engine = engine_for(url, autocheckpoint=not in_background)
        self.checkpointer = Checkpointer(self.engine) if in_background else None
        # The URL as it may be shown: in messages and logs, never a password.
        self.where = self.engine.url.render_as_string(hide_password=True)
        # meter id -> meter_key of meters committed to `meters`; filled only after a commit.
        self._meter_keys: dict[str, int] = {}
        # Statements built once: building them per commit costs more than running them.
        dialect_insert = postgresql.insert if self.engine.dialect.name == "postgresql" else sqlite.insert
        ins = dialect_insert(gateway_heads)
        self._upsert_heads = ins.on_conflict_do_update(
            index_elements=["gateway_id"],
            set_={
                # Never backwards: a replica may store a gateway's batches out of order when it
                # fetches them from its peers.
                "seq": case((ins.excluded.seq > gateway_heads.c.seq, ins.excluded.seq), else_=gateway_heads.c.seq),
                "hash": case((ins.excluded.seq > gateway_heads.c.seq, ins.excluded.hash), else_=gateway_heads.c.hash),
                "batches": gateway_heads.c.batches + ins.excluded.batches,
                "entries": gateway_heads.c.entries + ins.excluded.entries,
                "last_stored_ns": ins.excluded.last_stored_ns,
            },
        )
        self._insert_meters = dialect_insert(meters).on_conflict_do_nothing(index_elements=["meter_id"])

    def close(self) -> None:
        if self.checkpointer is not None:
            self.checkpointer.stop()
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
                select(gateway_heads.c.seq, gateway_heads.c.hash).where(gateway_heads.c.gateway_id == gateway_id)
            ).first()
        return (row.seq, bytes(row.hash)) if row else None

    def gateway_heads(self) -> dict[str, tuple[int, bytes]]:
        """Last stored batch (seq, hash) of each gateway."""
        with self.engine.connect() as c:
            rows = c.execute(select(gateway_heads.c.gateway_id, gateway_heads.c.seq, gateway_heads.c.hash)).all()
        return {r.gateway_id: (r.seq, bytes(r.hash)) for r in rows}

    # -- ingest ------------------------------------------------------------------

    def find_batch(self, gateway_id: str, seq: int) -> StoredBatch | None:
        with self.engine.connect() as c:
            row = c.execute(
                select(batches).where(batches.c.gateway_id == gateway_id, batches.c.seq == seq)
            ).first()
        return _batch(row) if row else None

    def store_batches(self, new: Sequence[NewBatch], stored_ns: int, skip_stored: bool = False) -> list[NewBatch]:
        """Store batches, their payloads and spans in one durable transaction; return them.
        `skip_stored`: leave out (and do not return) batches whose hash is stored already,
        as a replica does with batches it fetched from a peer while ingest may store them too."""
        if not new:
            return []
        with self.engine.begin() as c:
            if skip_stored:
                hashes = [b.hash for b in new]
                have = {bytes(r.hash) for r in c.execute(_IDS_BY_HASH, {"hashes": hashes})}
                new = [b for b in new if b.hash not in have]
                if not new:
                    return []
            keys = self._meter_keys_for(c, {sp.meter_id for b in new for sp in b.spans})
            payload_rows: list[tuple] = []
            span_rows: list[tuple] = []
            heads: dict[str, dict] = {}
            ids = _insert_batches(c, new, stored_ns)
            for b in new:
                batch_id = ids[b.hash]
                payload_rows.append((batch_id, b.payload.bodies, b.payload.offsets, b.payload.names))
                for sp in b.spans:
                    span_rows.append(
                        (keys[sp.meter_id], sp.hour, batch_id, sp.first_ns, sp.last_ns, sp.count, sp.idxs)
                    )
                h = heads.setdefault(
                    b.gateway_id,
                    {"gateway_id": b.gateway_id, "batches": 0, "entries": 0, "last_stored_ns": stored_ns},
                )
                if b.seq > h.get("seq", -1):
                    h.update(seq=b.seq, hash=b.hash)
                h["batches"] += 1
                h["entries"] += b.entry_count
            insert_rows(c, batch_payloads, _PAYLOAD_COLUMNS, payload_rows)
            insert_rows(c, entry_spans, _SPAN_COLUMNS, span_rows)
            c.execute(self._upsert_heads, list(heads.values()))
            c.execute(_ADD_COUNTS, {"n_batches": len(new), "n_entries": sum(b.entry_count for b in new)})
        self._meter_keys.update(keys)
        return list(new)

    def _meter_keys_for(self, c: Connection, meter_ids: set[str]) -> dict[str, int]:
        """meter_key of each id, adding new meters in this transaction (not cached until it commits)."""
        missing = meter_ids - self._meter_keys.keys()
        if not missing:
            return self._meter_keys
        c.execute(self._insert_meters, [{"meter_id": m} for m in sorted(missing)])
        rows = c.execute(select(meters.c.meter_id, meters.c.meter_key).where(meters.c.meter_id.in_(missing))).all()
        return {**self._meter_keys, **{r.meter_id: r.meter_key for r in rows}}

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
        block_batches: Sequence[int | HeaderOnlyBatch],
        entry_count: int,
        log_size: int,
        frontier: CompactRange,
        block_seals: Iterable[tuple[str, bytes]],
        quorum: StoredQuorum | None = None,
    ) -> None:
        """Write a block: each of its batches is the id of a stored batch, or (a replica with
        custody) the header of one whose entries are stored by other replicas, written here."""
        first_log_index = log_size - len(block_batches)
        with self.engine.begin() as c:
            batch_ids = self._header_only_rows(c, block_batches, time_ns)
            c.execute(
                blocks.insert().values(
                    height=height, hash=block_hash, header=header, time_ns=time_ns,
                    batch_count=len(batch_ids), entry_count=entry_count, log_size=log_size,
                )
            )
            if quorum is not None:
                c.execute(block_quorums.insert().values(
                    height=height, view=quorum.view, prev=quorum.prev, contents_digest=quorum.contents_digest,
                ))
            for key_id, signature in block_seals:
                c.execute(seals.insert().values(height=height, key_id=key_id, signature=signature))
            # One executemany for the block's batches (thousands at full load): this runs on the
            # database thread that ingest commits wait for, so a statement per batch shows up in
            # the receipts' latency.
            c.execute(_SEAL_BATCH, [
                {"b_id": batch_id, "b_height": height, "b_index": i, "b_log_index": first_log_index + i}
                for i, batch_id in enumerate(batch_ids)
            ])
            sealed = c.execute(select(func.count()).where(batches.c.block_height == height)).scalar_one()
            if sealed != len(batch_ids):
                twice = c.execute(
                    select(batches.c.id).where(batches.c.id.in_(batch_ids), batches.c.block_height != height)
                    .order_by(batches.c.id).limit(5)
                ).scalars().all()
                raise StoreError(
                    f"block {height}: batch {', '.join(map(str, twice))} was sealed twice "
                    f"({len(batch_ids) - sealed} of the block's {len(batch_ids)} batches)"
                )
            c.execute(update(chain_state).values(log_frontier=json.dumps(frontier.to_json())))

    def _header_only_rows(self, c: Connection, block_batches: Sequence[int | HeaderOnlyBatch], now_ns: int) -> list[int]:
        """Insert the header-only batches of a block; the ids of all its batches, in order."""
        header_only = [b for b in block_batches if not isinstance(b, int)]
        if not header_only:
            return list(block_batches)  # type: ignore[arg-type]
        row_ids = _insert_batches(c, header_only, now_ns)
        heads: dict[str, dict] = {}
        for b in header_only:
            h = heads.setdefault(b.gateway_id, {"gateway_id": b.gateway_id, "seq": -1, "batches": 0, "entries": 0,
                                                "last_stored_ns": now_ns})
            if b.seq > h["seq"]:  # the gateway's chain moves on here too (ingest checks the next batch against it)
                h.update(seq=b.seq, hash=b.hash)
        c.execute(self._upsert_heads, list(heads.values()))
        return [b if isinstance(b, int) else row_ids[b.hash] for b in block_batches]

    def header_only(self, batch_ids: Sequence[int]) -> set[int]:
        """Those of these batches whose entries are not stored here (custody)."""
        with self.engine.connect() as c:
            have: set[int] = set()
            for i in range(0, len(batch_ids), 500):
                have.update(c.execute(select(batch_payloads.c.batch_id).where(
                    batch_payloads.c.batch_id.in_(batch_ids[i : i + 500]))).scalars())
        return set(batch_ids) - have

    def header_only_batches(self, after_id: int = 0, limit: int = 1000) -> list[StoredBatch]:
        """Sealed batches whose entries are not stored here, in id order from `after_id`."""
        with self.engine.connect() as c:
            rows = c.execute(
                select(batches).where(batches.c.id > after_id, ~batches.c.id.in_(select(batch_payloads.c.batch_id)))
                .order_by(batches.c.id).limit(limit)
            ).all()
        return [_batch(r) for r in rows]

    def fill_payloads(self, new: Sequence[NewBatch], stored_ns: int) -> list[NewBatch]:
        """Store the entries of header-only batches (fetched from a custodian); others are left
        out. Returns those stored."""
        if not new:
            return []
        with self.engine.begin() as c:
            rows = {bytes(r.hash): r for r in c.execute(
                select(batches.c.id, batches.c.hash, batches.c.header).where(
                    batches.c.hash.in_([b.hash for b in new]), ~batches.c.id.in_(select(batch_payloads.c.batch_id)))
            ).all()}
            fill = [b for b in new if b.hash in rows and bytes(rows[b.hash].header) == b.header]
            if not fill:
                return []
            keys = self._meter_keys_for(c, {sp.meter_id for b in fill for sp in b.spans})
            insert_rows(c, batch_payloads, _PAYLOAD_COLUMNS,
                        [(rows[b.hash].id, b.payload.bodies, b.payload.offsets, b.payload.names) for b in fill])
            insert_rows(c, entry_spans, _SPAN_COLUMNS, [
                (keys[sp.meter_id], sp.hour, rows[b.hash].id, sp.first_ns, sp.last_ns, sp.count, sp.idxs)
                for b in fill for sp in b.spans
            ])
            c.execute(_ADD_COUNTS, {"n_batches": len(fill), "n_entries": sum(b.entry_count for b in fill)})
        self._meter_keys.update(keys)
        return fill

    def block(self, height: int) -> StoredBlock | None:
        with self.engine.connect() as c:
            row = c.execute(select(blocks).where(blocks.c.height == height)).first()
            if row is None:
                return None
            block_seals = c.execute(
                select(seals.c.key_id, seals.c.signature).where(seals.c.height == height).order_by(seals.c.key_id)
            ).all()
            q = c.execute(select(block_quorums).where(block_quorums.c.height == height)).first()
        return StoredBlock(
            row.height, bytes(row.hash), bytes(row.header), row.batch_count, row.entry_count,
            row.log_size, tuple((s.key_id, bytes(s.signature)) for s in block_seals),
            None if q is None else StoredQuorum(q.view, bytes(q.prev), bytes(q.contents_digest)),
        )

    def block_batch_hashes(self, height: int) -> list[bytes]:
        with self.engine.connect() as c:
            rows = c.execute(
                select(batches.c.hash).where(batches.c.block_height == height).order_by(batches.c.block_index)
            ).all()
        return [bytes(r.hash) for r in rows]

    def block_batches(self, height: int) -> list[StoredBatch]:
        """The batches sealed in block `height`, in block order (audit, backup)."""
        with self.engine.connect() as c:
            rows = c.execute(
                select(batches).where(batches.c.block_height == height).order_by(batches.c.block_index)
            ).all()
        return [_batch(r) for r in rows]

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
        if to_ns <= from_ns:
            return []
        with self.engine.connect() as c:
            key = c.execute(select(meters.c.meter_key).where(meters.c.meter_id == meter_id)).scalar()
            if key is None:
                return []
            spans = c.execute(
                select(entry_spans.c.batch_id, entry_spans.c.n, entry_spans.c.idxs)
                .where(
                    entry_spans.c.meter_key == key,
                    entry_spans.c.hour >= from_ns // HOUR_NS,
                    entry_spans.c.hour <= (to_ns - 1) // HOUR_NS,
                    entry_spans.c.first_ns < to_ns,
                    entry_spans.c.last_ns >= from_ns,
                )
                .order_by(entry_spans.c.hour, entry_spans.c.batch_id)
            ).all()
            bodies = self._bodies(c, sorted({s.batch_id for s in spans}))
        out = []
        for s in spans:
            where = f"batch {s.batch_id}"
            batch_bodies = bodies[s.batch_id]
            for idx in unpack_idxs(bytes(s.idxs), s.n, f"span of meter {meter_id} in {where}"):
                if idx >= len(batch_bodies):
                    raise PayloadError(f"{where}: span names entry {idx} of {len(batch_bodies)}")
                body = batch_bodies[idx]
                meter, kind, seq, ts = _entry_fields(body, f"{where} entry {idx}")
                if meter != meter_id:
                    raise PayloadError(f"{where} entry {idx}: indexed under meter {meter_id} but holds {meter}")
                if from_ns <= ts < to_ns:
                    out.append((s.batch_id, EntryRow(idx, meter, kind, seq, ts, body)))
        out.sort(key=lambda t: (t[1].ts_ns, t[0], t[1].idx))
        return out

    def _bodies(self, c: Connection, batch_ids: Sequence[int], header_only_ok: bool = False) -> dict[int, list[bytes]]:
        out: dict[int, list[bytes]] = {}
        for i in range(0, len(batch_ids), 500):
            rows = c.execute(select(batch_payloads).where(batch_payloads.c.batch_id.in_(batch_ids[i : i + 500]))).all()
            for r in rows:
                out[r.batch_id] = unpack_payload(
                    EntryPack(bytes(r.bodies), bytes(r.offsets), bytes(r.names)), f"payload of batch {r.batch_id}"
                )
        missing = set(batch_ids) - out.keys()
        if missing and not header_only_ok:
            raise PayloadError(f"batches {sorted(missing)[:5]} have no stored payload")
        return out

    def sealed_gateway_heads(self) -> dict[str, tuple[int, bytes]]:
        """Each gateway's last batch in a block: (seq, hash)."""
        last = (
            select(batches.c.gateway_id, func.max(batches.c.seq).label("seq"))
            .where(batches.c.block_height.is_not(None)).group_by(batches.c.gateway_id).subquery()
        )
        with self.engine.connect() as c:
            rows = c.execute(
                select(batches.c.gateway_id, batches.c.seq, batches.c.hash)
                .join(last, (batches.c.gateway_id == last.c.gateway_id) & (batches.c.seq == last.c.seq))
            ).all()
        return {r.gateway_id: (r.seq, bytes(r.hash)) for r in rows}

    def batches_by_hash(self, hashes: Sequence[bytes]) -> dict[bytes, StoredBatch]:
        """The stored batches among `hashes` (sealed or not), by hash."""
        out: dict[bytes, StoredBatch] = {}
        with self.engine.connect() as c:
            for i in range(0, len(hashes), 500):
                for r in c.execute(_BATCHES_BY_HASH, {"hashes": list(hashes[i : i + 500])}).all():
                    out[bytes(r.hash)] = _batch(r)
        return out

    def batch_pack(self, batch_id: int) -> EntryPack:
        """A batch's entries packed as stored: what a replica sends a peer that lacks the batch."""
        with self.engine.connect() as c:
            r = c.execute(select(batch_payloads).where(batch_payloads.c.batch_id == batch_id)).first()
        if r is None:
            raise PayloadError(f"batch {batch_id} has no stored payload")
        return EntryPack(bytes(r.bodies), bytes(r.offsets), bytes(r.names))

    def batch_by_id(self, batch_id: int) -> StoredBatch:
        with self.engine.connect() as c:
            return _batch(c.execute(select(batches).where(batches.c.id == batch_id)).one())

    def batch_bodies(self, batch_id: int) -> list[bytes]:
        with self.engine.connect() as c:
            return self._bodies(c, [batch_id])[batch_id]

    def iter_entries(self, chunk: int = 256) -> Iterator[StoredEntry]:
        """Every stored entry in arrival order (batch id, then position), decoded from the payloads
        (header-only batches have none here)."""
        last = 0
        while True:
            with self.engine.connect() as c:
                rows = c.execute(
                    select(batches.c.id, batches.c.stored_ns).where(batches.c.id > last).order_by(batches.c.id).limit(chunk)
                ).all()
                if not rows:
                    return
                bodies = self._bodies(c, [r.id for r in rows], header_only_ok=True)
            for r in rows:
                for idx, body in enumerate(bodies.get(r.id, ())):
                    meter, kind, seq, ts = _entry_fields(body, f"batch {r.id} entry {idx}")
                    yield StoredEntry(r.id, idx, meter, kind, seq, ts, body, r.stored_ns)
            last = rows[-1].id

    def counts(self) -> tuple[int, int, int]:
        """(batches stored, batches not yet in a block, entries stored)."""
        with self.engine.connect() as c:
            row = c.execute(select(chain_state.c.batches_stored, chain_state.c.entries_stored)).one()
            unsealed = c.execute(
                select(func.count()).select_from(batches).where(batches.c.block_height.is_(None))
            ).scalar_one()
        return row.batches_stored, unsealed, row.entries_stored


def _insert_batches(c: Connection, rows: Sequence[NewBatch | HeaderOnlyBatch], stored_ns: int) -> dict[bytes, int]:
    """Insert the batch rows of stored or header-only batches in the connection's transaction;
    their ids by hash. One driver executemany and one look-up per 500, for ingest and fetched
    batches (a few at a time) and a custody replica's header-only rows (hundreds per block) alike.
    Measured level with the statement-per-row insert it replaced: the payload write and the
    commit are what storing costs."""
    insert_rows(c, batches, _BATCH_COLUMNS, [
        (b.gateway_id, b.seq, b.hash, b.header, b.signature, b.entry_count, stored_ns) for b in rows
    ])
    hashes = [b.hash for b in rows]
    ids: dict[bytes, int] = {}
    for i in range(0, len(hashes), 500):
        ids.update((bytes(r.hash), r.id) for r in c.execute(_IDS_BY_HASH, {"hashes": hashes[i : i + 500]}))
    return ids
