"""The hub's chain when the hub is one of a substation's PBFT replicas.

Single hub: the block producer seals stored batches on a timer and receipts go out once a
batch is stored. Replicated hub (`[consensus]` in hub.toml): blocks are what the replicas
decide, and a receipt goes out only once its batch is in a decided block that this replica
has written to its store, so an agent deletes nothing that f+1 correct replicas do not hold.

The data path, per batch:
1. a gateway streams it to any replica; ingest checks and stores it (group commit, fsync);
2. `stored` tells the ledger (hash, entry count) and gives its digest to the consensus core,
   which forwards the digest to the other replicas;
3. a replica told of a batch it does not hold fetches it from the one that told it (`Batches`,
   a method of the replica service, over the replicas' mutual TLS), checks it as ingest checks
   a gateway's batch (gateway signature, entries, Merkle root), stores it, and tells the core;
4. the primary proposes a block of held batches with the header its `BlockLedger` built; each
   backup votes only if it holds every batch and rebuilds the same header;
5. decided blocks (already in the consensus journal) are applied in height order: any batch
   still missing is fetched from the replicas that signed the commit certificate, the header is
   rebuilt once more from this store (a replica whose store disagrees stops applying and says
   so), and the block is written with its commit votes as seals and its `block_quorums` row;
6. receipts waiting on the block's batches are released.

With custody (`payload_copies` in the replica config), step 3 is done by the batch's
custodians only; the other replicas learn the batch's gateway-signed header from the forwards,
vote once f+1 replicas said they store it, and write it in step 5 as a header-only row.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import fields

import grpc

from hub.chain.block import next_block
from hub.chain.ledger import BlockLedger, HeldBatch, known_batch
from hub.consensus.core import Fetch
from hub.consensus.messages import DIGEST, CommitCertificate
from hub.consensus.process import SERVICE, ReplicaProcess, load_journal, open_channel
from hub.consensus.quorum import block_quorum
from hub.certificates.build import EntriesUnavailable
from hub.consensus.replica_config import ReplicaConfig
from hub.ingest.check import Reason, Rejection
from hub.ingest.verifier import parse_keys
from hub.metrics import HubMetrics
from hub.storage.store import HeaderOnlyBatch, NewBatch, PayloadError, Store, StoredQuorum
from protos import readings_pb2 as pb
from protos.canonical import block_hash, decode_batch_header, decode_block_header, encode_block_header
from protos.merkle import CompactRange
from protos.batch import BatchError, check_header_signature
from protos.records import BatchHeader, BlockHeader
from protos.signing import PublicKey, key_id
from protos.wire import header_to_pb

log = logging.getLogger("gridtrace.hub.chain")

BATCHES = "Batches"
MAX_ANSWER_BYTES = 32 << 20  # a Batches answer stops adding batches here; the asker asks again
MAX_MESSAGE = 64 << 20
_LEN = struct.Struct(">I")
SEALED_MEMORY = 200_000  # hashes of recently sealed batches, for receipts asked after the fact
RAW_CACHE_BYTES = 256 << 20  # wire bytes of batches not yet sealed, served to peers without a database read


class ChainDivergence(RuntimeError):
    """This replica's store cannot build the block the replicas decided: it must stop applying."""


class ReplicaStartError(RuntimeError):
    """The store and the consensus journal do not describe one chain."""


def frame(items: Sequence[bytes]) -> bytes:
    return b"".join([part for i in items for part in (_LEN.pack(len(i)), i)])


def unframe(data: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos < len(data):
        if pos + 4 > len(data):
            raise ValueError(f"truncated length at byte {pos}")
        (n,) = _LEN.unpack_from(data, pos)
        pos += 4
        if pos + n > len(data):
            raise ValueError(f"item at byte {pos} claims {n} bytes, {len(data) - pos} left")
        out.append(data[pos : pos + n])
        pos += n
    return out


def held_batch(b: NewBatch) -> HeldBatch:
    return known_batch(b.hash, b.header, b.signature)


def differing_fields(a: BlockHeader, b: BlockHeader) -> str:
    return ", ".join(f.name for f in fields(BlockHeader) if getattr(a, f.name) != getattr(b, f.name))


class ReplicatedChain:
    def __init__(
        self, store: Store, db: Executor, ingestor, chain_id: str, cfg: ReplicaConfig,  # noqa: ANN001 - hub.ingest.service.Ingestor
        metrics: HubMetrics | None = None,
    ) -> None:
        self.store, self.db, self.ingestor, self.chain_id, self.cfg = store, db, ingestor, chain_id, cfg
        self.metrics = metrics
        self.key_ids = {i: key_id(p.public_key) for i, p in cfg.peers.items()}
        self.process: ReplicaProcess | None = None
        self.ledger: BlockLedger | None = None
        self.to_apply: asyncio.Queue[CommitCertificate] = asyncio.Queue()
        self.waiters: dict[bytes, list[asyncio.Future]] = {}
        self.sealed: OrderedDict[bytes, None] = OrderedDict()
        # Peers fetch each batch soon after it arrives: serving the bytes it came in saves
        # rebuilding the message from the database (a third of a fetch's cost).
        self.raw: OrderedDict[bytes, bytes] = OrderedDict()
        self.raw_bytes = 0
        self.fetching: set[tuple[bytes, int]] = set()  # (batch, first peer asked) of fetches under way
        self.channels: dict[int, grpc.aio.Channel] = {}
        self.applied_height = 0
        self.stopped: str | None = None  # why applying stopped (a divergence), for status and health
        # Gateway keys, to check the headers of batches this replica learns of but does not store.
        self.gateway_keys: dict[str, dict[str, PublicKey]] = {}
        self._keys_loading: asyncio.Task | None = None
        self._keys_loaded_at = 0.0
        self._tasks: list[asyncio.Task] = []  # the replica and the block writer
        self._fetches: set[asyncio.Task] = set()
        # Fetched batches waiting for the database thread, with the fetch each came from: those
        # of fetches that answer while a write is under way go together in the next (one
        # transaction and one fsync for many, as ingest does with gateways' batches).
        self._to_store: list[tuple[list[NewBatch], asyncio.Future]] = []
        self._storing: asyncio.Task | None = None
        # The last block written and the log frontier after it, kept by the block writer (the
        # only one that writes blocks while the replica runs): read from the store once.
        self._tip: tuple[BlockHeader | None, CompactRange] | None = None
        self._stop = asyncio.Event()

    async def _run_db(self, fn, *args):  # noqa: ANN001, ANN202
        return await asyncio.get_running_loop().run_in_executor(self.db, fn, *args)

    # -- start and stop --------------------------------------------------------------------

    def _load_store(self) -> tuple[BlockHeader | None, object, list[HeldBatch], dict[str, tuple[int, bytes]]]:
        head = self.store.head()
        unsealed = self.store.unsealed_batches(1 << 31)
        return (decode_block_header(head.header) if head else None, self.store.log_frontier(),
                [held_batch(b) for b in unsealed], self.store.sealed_gateway_heads())

    async def start(self) -> None:
        head, frontier, held, gateway_heads = await self._run_db(self._load_store)
        journal = load_journal(self.cfg)
        decided = journal[2]
        height = head.height if head else 0
        if height > len(decided):
            raise ReplicaStartError(
                f"the hub database holds blocks up to {height} but the consensus journal in {self.cfg.data} only "
                f"{len(decided)}: they are not of one replica (restore both from one backup, or start this replica "
                "with an empty database and journal to copy the chain from its peers)"
            )
        if height and decided[height - 1].proposal.header != encode_block_header(head):
            raise ReplicaStartError(
                f"block {height} in the hub database differs from the one the consensus journal in {self.cfg.data} "
                "decided: they are not of one replica"
            )
        self.gateway_keys = parse_keys(await self._run_db(self.store.gateway_keys))
        self._keys_loaded_at = time.monotonic()
        self.ledger = BlockLedger(self.chain_id, head, frontier, held, gateway_heads,
                                  signed_by_gateway=self._signed_by_gateway)
        for cert in decided[height:]:  # decided before a restart, not yet written to the store
            self.ledger.decided(cert.proposal)
            self.to_apply.put_nowait(cert)
        self.applied_height = height
        self.process = ReplicaProcess(self.cfg, self.ledger, app=self, journal=journal)
        # Batches stored before a restart and not yet in a block: to be ordered again (their
        # forwards may never have left).
        if self.ledger.held:
            self.process.give(sorted(self.ledger.held))
        self._tasks = [
            asyncio.create_task(self.process.run(self._stop), name="replica"),
            asyncio.create_task(self._apply_loop(), name="block-applier"),
        ]
        for t in self._tasks:
            t.add_done_callback(self._task_ended)
        log.info("replica %d of %d: store at height %d, journal at %d", self.cfg.id, self.cfg.n, height, len(decided),
                 extra={"height": height})

    def _task_ended(self, task: asyncio.Task) -> None:
        """The replica and the block writer run until stop: one that ends otherwise stops this
        replica's blocks, which health reports (NOT_SERVING) and the log says why."""
        if task.cancelled() or self._stop.is_set():
            return
        exc = task.exception()
        self.stopped = f"{task.get_name()} stopped: {exc!r}" if exc else f"{task.get_name()} stopped"
        log.critical("%s; this replica writes no more blocks and sends no more receipts", self.stopped,
                     exc_info=exc)

    async def stop(self) -> None:
        self._stop.set()
        rest = [*self._tasks[1:], *self._fetches, *([self._storing] if self._storing else [])]
        for t in rest:
            t.cancel()
        await asyncio.gather(*self._tasks[:1], *rest, return_exceptions=True)
        for ch in self.channels.values():
            await ch.close()

    # -- from ingest -----------------------------------------------------------------------

    def stored(self, batches: Sequence[NewBatch]) -> None:
        """Batches ingest stored from gateways: held here, to be ordered."""
        assert self.ledger is not None and self.process is not None
        self.ledger.hold(held_batch(b) for b in batches)
        self.process.give([b.hash for b in batches])

    def remember(self, digest: bytes, raw: bytes) -> None:
        """The wire bytes of a checked batch, to serve to peers while it is not sealed."""
        if digest in self.raw:
            return
        self.raw[digest] = raw
        self.raw_bytes += len(raw)
        while self.raw_bytes > RAW_CACHE_BYTES:
            self.raw_bytes -= len(self.raw.popitem(last=False)[1])

    def _forget(self, digest: bytes) -> None:
        raw = self.raw.pop(digest, None)
        if raw is not None:
            self.raw_bytes -= len(raw)

    def when_sealed(self, digest: bytes) -> asyncio.Future:
        """Resolves once the batch is in a block written to this replica's store."""
        fut = asyncio.get_running_loop().create_future()
        if digest in self.sealed:
            fut.set_result(None)
        else:
            self.waiters.setdefault(digest, []).append(fut)
        return fut

    # -- from the consensus core (ReplicaApp) ------------------------------------------------

    def decided(self, certificates: list[CommitCertificate]) -> None:
        for c in certificates:
            self.to_apply.put_nowait(c)

    def fetch(self, request: Fetch) -> None:
        first = request.peers[0] if request.peers else -1
        want = [b for b in request.batches if (b, first) not in self.fetching and not self.ledger.holds(b)]  # type: ignore[union-attr]
        if want:
            task = asyncio.create_task(self._fetch(want, request.peers))
            self._fetches.add(task)
            task.add_done_callback(self._fetches.discard)

    def handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        return {BATCHES: grpc.unary_unary_rpc_method_handler(
            self.serve_batches, request_deserializer=None, response_serializer=None)}

    def _signed_by_gateway(self, header: BatchHeader, signature: bytes) -> bool:
        """A forwarded header (custody) signed by its gateway's registered key. An unknown gateway
        reloads the keys in the background (at most once a second): the forward comes again."""
        key = self.gateway_keys.get(header.gateway_id, {}).get(header.key_id)
        if key is None:
            if (self._keys_loading is None or self._keys_loading.done()) and \
                    time.monotonic() - self._keys_loaded_at > 1.0:
                self._keys_loaded_at = time.monotonic()
                self._keys_loading = asyncio.get_running_loop().create_task(self._reload_keys())
            return False
        try:
            check_header_signature(header, signature, key)
        except BatchError:
            return False
        return True

    async def _reload_keys(self) -> None:
        self.gateway_keys = parse_keys(await self._run_db(self.store.gateway_keys))

    # -- custody: entries stored elsewhere -------------------------------------------------------

    async def complete_period(self, from_ns: int, to_ns: int) -> None:
        """Before a certificate: fetch from the other replicas the entries of header-only
        batches (custody) whose time range meets [from_ns, to_ns), and store them here."""
        if not self.cfg.payload_copies:
            return
        wanted = await self._run_db(self._header_only_between, from_ns, to_ns)
        if not wanted:
            return
        peers = sorted(set(self.cfg.peers) - {self.cfg.id})
        missing = set(wanted) - await self._fetch(wanted, peers)
        if missing:
            raise EntriesUnavailable(
                f"{len(missing)} sealed batches of the period are stored at other replicas, which did not serve "
                "them now; ask again, or ask another replica"
            )

    def _header_only_between(self, from_ns: int, to_ns: int) -> list[bytes]:
        out: list[bytes] = []
        after = 0
        while True:
            chunk = self.store.header_only_batches(after, 1000)
            if not chunk:
                return out
            for b in chunk:
                h = decode_batch_header(b.header)
                if h.first_ns < to_ns and h.last_ns >= from_ns:
                    out.append(b.hash)
            after = chunk[-1].id

    # -- fetching batches from peers -----------------------------------------------------------

    async def _fetch(self, want: list[bytes], peers: Sequence[int]) -> set[bytes]:
        """Ask peers in turn for `want`; check and store what they send. Returns what was stored."""
        first = peers[0] if peers else -1
        self.fetching.update((b, first) for b in want)
        got: set[bytes] = set()
        try:
            for peer in peers:
                if peer == self.cfg.id or peer not in self.cfg.peers:
                    continue
                rest = [b for b in want if b not in got and not self.ledger.holds(b)]  # type: ignore[union-attr]
                while rest:
                    try:
                        raws = await self._ask(peer, rest[:1000])
                    except (grpc.aio.AioRpcError, ValueError) as exc:
                        detail = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
                        log.warning("fetching %d batches from replica %d failed: %s", len(rest), peer, detail,
                                    extra={"peer": peer})
                        break
                    got |= await self._store_fetched(peer, raws, set(rest))
                    left = [b for b in rest if b not in got]
                    if not raws or len(left) == len(rest):
                        break  # this peer has no more of them
                    rest = left
        finally:
            self.fetching.difference_update((b, first) for b in want)
        if got:
            self.process.arrived(sorted(got))  # type: ignore[union-attr]
        return got

    def _channel(self, peer: int) -> grpc.aio.Channel:
        ch = self.channels.get(peer)
        if ch is None:
            ch = self.channels[peer] = open_channel(self.cfg, self.cfg.peers[peer].address)
        return ch

    async def _ask(self, peer: int, digests: list[bytes]) -> list[bytes]:
        """The raw batches the peer holds among `digests` (it may cut a long answer short)."""
        call = self._channel(peer).unary_unary(f"/{SERVICE}/{BATCHES}", request_serializer=None,
                                               response_deserializer=None)
        return unframe(await call(b"".join(digests), timeout=5.0))

    async def _store_fetched(self, peer: int, raws: list[bytes], wanted: set[bytes]) -> set[bytes]:
        fresh: list[NewBatch] = []
        for raw in raws:
            try:
                checked = await self.ingestor.check(raw)
            except Rejection as exc:
                if exc.reason is Reason.UNKNOWN_GATEWAY:
                    log.error("replica %d served a batch of a gateway this hub does not know: %s; register the "
                              "gateway with every replica (gridtrace hub gateway add)", peer, exc.message,
                              extra={"peer": peer, "reason": exc.reason.label})
                else:
                    log.warning("replica %d served a batch that fails the check: %s", peer, exc.message,
                                extra={"peer": peer, "reason": exc.reason.label})
                continue
            b = checked.batch
            if b.hash in wanted and not self.ledger.holds(b.hash):  # type: ignore[union-attr]
                fresh.append(b)
        if not fresh:
            return set()
        done = asyncio.get_running_loop().create_future()
        self._to_store.append((fresh, done))
        if self._storing is None:
            self._storing = asyncio.create_task(self._store_queued())
        return await done

    async def _store_queued(self) -> None:
        """Store what fetches brought, in as few transactions as the database thread allows;
        each fetch learns which of its batches are now stored here."""
        try:
            while self._to_store:
                waiting, self._to_store = self._to_store, []
                fresh = list({b.hash: b for batch in waiting for b in batch[0]}.values())
                try:
                    stored, filled = await self._run_db(self._store_or_fill, fresh)
                except Exception as exc:  # noqa: BLE001 - every fetch waiting on this write learns of it
                    for _, done in waiting:
                        if not done.done():
                            done.set_exception(exc)
                    continue
                self.ledger.hold(held_batch(b) for b in stored)  # type: ignore[union-attr]
                self.ingestor.advance_heads(stored)
                here = {b.hash for b in (*stored, *filled)}
                for batch, done in waiting:
                    if not done.done():
                        done.set_result({b.hash for b in batch} & here)
        finally:
            self._storing = None

    def _store_or_fill(self, fresh: list[NewBatch]) -> tuple[list[NewBatch], list[NewBatch]]:
        """Store fetched batches; those already in a block as header-only rows get their entries."""
        now = time.time_ns()
        stored = self.store.store_batches(fresh, now, True)
        done = {b.hash for b in stored}
        return stored, self.store.fill_payloads([b for b in fresh if b.hash not in done], now)

    async def serve_batches(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        if len(request) % DIGEST or len(request) > 1000 * DIGEST:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "ask for 1 to 1000 batch digests of 32 bytes")
        digests = [request[i : i + DIGEST] for i in range(0, len(request), DIGEST)]
        cached = [self.raw[d] for d in digests if d in self.raw]
        if len(cached) == len(digests):
            out, size = [], 0
            for raw in cached:  # the same cap as from the database: the asker asks again for the rest
                size += len(raw)
                if out and size > MAX_ANSWER_BYTES:
                    break
                out.append(raw)
            return frame(out)
        return frame(await self._run_db(self._wire_batches, digests))

    def _wire_batches(self, digests: list[bytes]) -> list[bytes]:
        """The batches held here among `digests`, as the SignedBatch messages a gateway sends."""
        found = self.store.batches_by_hash(digests)
        out: list[bytes] = []
        size = 0
        for d in digests:
            sb = found.get(d)
            if sb is None:
                continue
            try:
                p = self.store.batch_pack(sb.id)
            except PayloadError:  # a header-only batch (custody): its custodians serve it
                continue
            raw = pb.SignedBatch(
                header=header_to_pb(decode_batch_header(sb.header)), signature=sb.signature,
                packed_entries=pb.EntryPack(bodies=p.bodies, offsets=p.offsets, names=p.names),
            ).SerializeToString()
            size += len(raw)
            if out and size > MAX_ANSWER_BYTES:
                break
            out.append(raw)
        return out

    # -- applying decided blocks ---------------------------------------------------------------

    async def _apply_loop(self) -> None:
        while True:
            cert = await self.to_apply.get()
            p = cert.proposal
            if p.height <= self.applied_height:
                continue
            wait = 0.1
            while True:
                have = await self._run_db(self.store.batches_by_hash, list(p.batches))
                missing = [b for b in p.batches if b not in have and b not in self.ledger.decided_known]  # type: ignore[union-attr]
                if not missing:
                    break
                signers = sorted({s.replica for s in cert.commits} - {self.cfg.id})
                if set(missing) <= await self._fetch(missing, signers + sorted(set(self.cfg.peers) - set(signers))):
                    continue
                log.warning("block %d: waiting for %d of its batches from the other replicas", p.height, len(missing),
                            extra={"height": p.height})
                await asyncio.sleep(wait)
                wait = min(wait * 2, 5.0)
            known = {b: self.ledger.decided_known[b] for b in p.batches if b in self.ledger.decided_known}  # type: ignore[union-attr]
            try:
                header = await self._run_db(self._append, cert, known)
            except ChainDivergence as exc:
                self.stopped = str(exc)
                log.critical("%s", exc, extra={"height": p.height})
                return
            self.applied_height = header.height
            for b in known:
                self.ledger.decided_known.pop(b, None)  # type: ignore[union-attr]
            self.ingestor.advance_heads(list(known.values()))
            if self.metrics is not None:
                self.metrics.block_sealed(header.height, header.time_ns, header.batch_count)
            for b in p.batches:
                self.sealed[b] = None
                self._forget(b)
                for fut in self.waiters.pop(b, ()):
                    if not fut.done():
                        fut.set_result(None)
            while len(self.sealed) > SEALED_MEMORY:
                self.sealed.popitem(last=False)

    def _append(self, cert: CommitCertificate, known: dict[bytes, HeldBatch]) -> BlockHeader:
        """Write a decided block (on the database thread); the header is rebuilt from this store
        and, for batches stored elsewhere (custody), from their known headers."""
        p = cert.proposal
        decided = decode_block_header(p.header)
        stored = self.store.batches_by_hash(list(p.batches))
        if self._tip is None:
            head = self.store.head()
            self._tip = (decode_block_header(head.header) if head else None, self.store.log_frontier())
        prev, log_before = self._tip
        rows: list[int | HeaderOnlyBatch] = []
        entries = 0
        for b in p.batches:
            if b in stored:
                rows.append(stored[b].id)
                entries += stored[b].entry_count
            else:
                k = known[b]
                rows.append(HeaderOnlyBatch.of(k))
                entries += k.entry_count
        header, frontier = next_block(self.chain_id, prev, p.batches, entries, log_before, decided.time_ns)
        if header != decided:
            raise ChainDivergence(
                f"block {p.height}: the replicas decided a header that this replica's store does not give (differs "
                f"in {differing_fields(header, decided)}); it stops writing blocks. Restore its database from a "
                "correct replica's backup"
            )
        q = block_quorum(cert, self.key_ids)
        self.store.append_block(
            header.height, block_hash(header), p.header, header.time_ns,
            rows, header.entry_count, header.log_size, frontier,
            q.commits, StoredQuorum(q.view, q.prev, q.contents_digest),
        )
        self._tip = (header, frontier)
        log.info("block %d written: %d batches, %d entries", header.height, header.batch_count, header.entry_count,
                 extra={"height": header.height, "batches": header.batch_count, "entries": header.entry_count})
        return header
