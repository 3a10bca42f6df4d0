"""The PBFT consensus core of a substation's hub replicas: a deterministic state machine.

A `Replica` consumes messages, gateway batches and clock ticks and returns `Action`s (send
this, persist that, this block is decided); it does no I/O, reads no clock and iterates
nothing unordered, so a simulator can drive n of them with a seeded network and replay any
run exactly (hub/consensus/simulator.py), and the hub runs the same object over gRPC.

The protocol is PBFT (Castro and Liskov) with one block in flight, as in the seeds' design
(the request and reply phases folded into the chain: gateways' batches are the requests,
receipts the replies):

* normal case: the primary of view v (replica v mod n) proposes the next height's batches;
  PRE-PREPARE, PREPARE, COMMIT; a replica decides a proposal when it holds it and a quorum
  ceil((n+f+1)/2) (2f+1 for n = 3f+1) of commits for it from distinct signers, which form
  the block's commit certificate;
* every replica forwards the batches gateways give it to all others, so a batch that reached
  one correct replica is proposed by any correct primary, and a primary that leaves a known
  batch out for too long is replaced;
* a replica votes only for a block whose batches it holds and whose header its `Ledger` (see
  hub/consensus/ledger.py) would have built: a commit quorum therefore means f+1 correct
  replicas stored every batch of the block, and a replica missing some asks a peer for them
  (`Fetch`) before it votes;
* a replica votes at most once per (view, height) and kind, and asks the shell to persist
  that vote before the message leaves (`Persist` comes before the `Send`), so a restart
  cannot make it vote twice;
* view change: on a timeout (no decision while work is pending; exponential per failed
  view) or an equivocating primary, a replica sends VIEW-CHANGE with its highest commit
  certificate and its prepared certificate for the next height; the new primary gathers a
  quorum and sends NEW-VIEW, re-proposing the highest-view prepared proposal, which every
  replica recomputes from the same quorum; f+1 view changes for higher views pull a replica
  along;
* checkpoints every K heights become stable with a quorum, and the log below them is
  dropped; messages beyond the high watermark are dropped;
* state transfer: a replica that sees it is behind asks a peer for blocks and checks each
  commit certificate before it decides the block; a peer serving bad blocks is skipped;
* membership: consensus replicas vote, reserve replicas follow the chain (they decide blocks
  from the commits they see, and fetch what they miss); each proposal carries the commit votes
  for the block before it, by which every replica settles the same points, and at every
  checkpoint the membership for the next epoch follows from them (hub/consensus/membership.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

from hub.consensus import certificates
from hub.consensus.config import GENESIS, ConsensusConfig
from hub.consensus.keys import ReplicaKeys, sign_message, verify_message
from hub.consensus.ledger import Ledger
from hub.consensus.membership import Membership, Scores, next_membership, score_block
from hub.consensus.messages import (
    DIGEST,
    Blocks,
    Checkpoint,
    Commit,
    CommitCertificate,
    FetchBlocks,
    Forward,
    NewView,
    PrePrepare,
    Prepare,
    PreparedCertificate,
    Proposal,
    Signed,
    ViewChange,
)

# -- what a replica asks its shell to do ------------------------------------------------


@dataclass(frozen=True)
class Send:
    message: Signed
    to: int | None = None  # None: every other replica


@dataclass(frozen=True)
class Vote:
    kind: str  # "pre-prepare", "prepare" or "commit"
    view: int
    height: int
    digest: bytes


@dataclass(frozen=True)
class Durable:
    """What a replica must find again after a restart: its view (or the view it is changing
    to) and its votes above the committed height."""

    view: int
    changing_to: int | None
    votes: tuple[Vote, ...]


@dataclass(frozen=True)
class Persist:
    state: Durable


@dataclass(frozen=True)
class Decide:
    certificate: CommitCertificate


@dataclass(frozen=True)
class Fetch:
    """The shell should get these batches from a peer (the first of `peers` that has them),
    store them, tell the ledger, and call `Replica.batches_arrived`."""

    batches: tuple[bytes, ...]
    peers: tuple[int, ...]


Action = Send | Persist | Decide | Fetch


@dataclass
class _Slot:
    """The log of one (view, height)."""

    pre_prepare: Signed | None = None
    prepares: dict[bytes, dict[int, Signed]] = field(default_factory=dict)  # digest -> replica -> message
    commits: dict[bytes, dict[int, Signed]] = field(default_factory=dict)


class Replica:
    def __init__(
        self,
        config: ConsensusConfig,
        keys: ReplicaKeys,
        ledger: Ledger,
        committed: Iterable[CommitCertificate] = (),
        durable: Durable | None = None,
    ) -> None:
        self.config = config
        self.keys = keys
        self.ledger = ledger
        self.me = keys.replica
        self.certificates: list[CommitCertificate] = []  # index = height - 1
        self.committed_batches: set[bytes] = set()
        self.epochs: list[Membership] = [config.initial_membership()]  # index = (height - 1) // K
        self.scores = Scores()
        self.last_view: int | None = None  # the view the last decided proposal was made in
        # The commit votes seen for the last decided block, carried by the next proposal.
        self.decided_commits: dict[int, Signed] = {}
        for cert in committed:  # points and epochs are a function of the chain: replay them
            self.certificates.append(cert)
            self.committed_batches.update(cert.proposal.batches)
            self._settle(cert.proposal)
        if self.certificates:
            self.decided_commits = {c.replica: c for c in self.certificates[-1].commits}
        self.view = durable.view if durable else 0
        self.changing_to: int | None = durable.changing_to if durable else None
        self.votes: dict[tuple[str, int, int], bytes] = {
            (v.kind, v.view, v.height): v.digest for v in (durable.votes if durable else ())
        }
        self.pending: dict[bytes, float] = {}  # batch digest -> when first seen
        self.sources: dict[bytes, int] = {}  # pending batch not held -> the replica that told us of it
        # Custody: pending batch -> the replicas that said (by a forward) they store it.
        self.holders: dict[bytes, set[int]] = {}
        self.fetched_at = 0.0
        # (view, height) of proposals whose batches were not all here -> when we first saw that. A
        # replica waits a quarter of the base timeout before fetching them: a forward or a fetch
        # already under way (sent before the pre-prepare, but overtaken by it) usually brings
        # them first, and each copy fetched for nothing is checked and stored for nothing.
        self.waited: dict[tuple[int, int], float] = {}
        self.patient_until: float | None = None
        self._m_now: tuple[tuple[int, int], frozenset[int], int] | None = None  # for _available
        self.slots: dict[tuple[int, int], _Slot] = {}
        self.prepared: PreparedCertificate | None = None  # at height + 1, the highest view
        self.checkpoints: dict[int, dict[bytes, set[int]]] = {}
        self.stable = 0  # height of the last stable checkpoint
        self.view_changes: dict[int, dict[int, Signed]] = {}
        self.new_view_sent: set[int] = set()
        self.ahead: dict[int, set[int]] = {}  # height -> replicas showing they are at or past it
        self.fetching: tuple[int, float] | None = None  # (peer, since)
        # Nothing decided for a while: ask a peer, in turn, for blocks after ours. A replica that
        # came back after the others went quiet sees no message that shows it is behind.
        self.progress_at = 0.0
        self.probed_at = 0.0
        self.probes = 0
        self.bad_peers: set[int] = set()
        self.failed_views = 0  # consecutive view changes without a decision: the timeout's exponent
        self.deadline: float | None = None
        self.view_change_count = 0
        self.now = 0.0
        self.forwarded_at = 0.0
        self.resent_at = 0.0
        self.unforwarded: list[bytes] = []  # submitted, to forward on the next tick (batch_delay > 0)
        self.new_views: dict[int, Signed] = {}  # views this replica started as primary: their NEW-VIEW
        self.deferred_new_view: Signed | None = None  # one for an epoch we had not reached yet

    # -- state ---------------------------------------------------------------------------

    @property
    def height(self) -> int:
        """The highest committed height."""
        return len(self.certificates)

    @property
    def last_digest(self) -> bytes:
        return self.certificates[-1].proposal.digest if self.certificates else GENESIS

    def members(self, height: int) -> Membership | None:
        """Who votes at `height`; None beyond the epoch after the last checkpoint decided."""
        i = (height - 1) // self.config.checkpoint_interval
        return self.epochs[i] if 0 <= i < len(self.epochs) else None

    @property
    def m(self) -> Membership:
        """The membership of the next height (always known)."""
        m = self.members(self.height + 1)
        assert m is not None
        return m

    @property
    def is_active(self) -> bool:
        return self.m.votes(self.me)

    @property
    def is_primary(self) -> bool:
        return self.m.primary(self.view) == self.me

    def _settle(self, p: Proposal) -> None:
        """The decided proposal's points; at a checkpoint, the next epoch's membership."""
        m = self.members(p.height)
        assert m is not None
        score_block(self.scores, m, p.view, self.last_view, [v.replica for v in p.last_commit])
        self.last_view = p.view
        if p.height % self.config.checkpoint_interval == 0:
            self.epochs.append(next_membership(m, self.scores, p.height + 1))

    @property
    def timeout(self) -> float:
        return min(self.config.base_timeout * 2 ** self.failed_views, self.config.max_timeout)

    def _durable(self) -> Persist:
        votes = tuple(
            Vote(kind, v, h, d) for (kind, v, h), d in sorted(self.votes.items()) if h > self.height
        )
        return Persist(Durable(self.view, self.changing_to, votes))

    def _sign(self, body: object) -> Signed:
        return sign_message(self.keys, body)

    # -- inputs --------------------------------------------------------------------------

    def start(self, now: float) -> list[Action]:
        self.now = now
        self.progress_at = self.probed_at = now - 2 * self.config.base_timeout  # (re)started: ask at once
        out: list[Action] = []
        if self.changing_to is not None:  # restarted in the middle of a view change: say it again
            target, self.changing_to = self.changing_to, None
            out += self._start_view_change(target)
        return out

    def submit(self, batches: Iterable[bytes], now: float) -> list[Action]:
        """Batches a gateway gave this replica (their digests), already stored and held."""
        self.now = now
        for b in batches:
            self.sources.pop(b, None)
        new = tuple(sorted(b for b in set(batches) if b not in self.committed_batches and b not in self.pending))
        if not new:
            return []
        for b in new:
            self.pending[b] = now
        if self.config.batch_delay:  # one forward per tick for what arrived meanwhile
            self.unforwarded.extend(new)
            return self._work_arrived()
        out: list[Action] = [self._forward(new)]
        return out + self._work_arrived()

    def batches_arrived(self, batches: Iterable[bytes], now: float) -> list[Action]:
        """Batches fetched from a peer are now stored and held: vote for the block waiting on
        them, or propose them."""
        self.now = now
        batches = tuple(batches)
        for b in batches:
            self.sources.pop(b, None)
        out: list[Action] = []
        if self.config.custody:  # say so: with this replica's word the batch may be available to all
            mine = tuple(sorted(b for b in set(batches) if b in self.pending and self.ledger.holds(b)))
            if mine:
                out.append(self._forward(mine))
        out += self._work_arrived() if self._any_held_pending() else []
        return out + self._replay()

    def tick(self, now: float) -> list[Action]:
        self.now = now
        out: list[Action] = []
        if self.fetching is not None and now - self.fetching[1] > self.timeout:
            self.bad_peers.add(self.fetching[0])  # silent or unhelpful: ask someone else
            self.fetching = None
        out += self._probe()
        out += self._fetch_if_behind(gap=0)
        out += self._retransmit()
        if self.patient_until is not None and now >= self.patient_until:
            self.patient_until = None
            if not any(isinstance(a, Fetch) for a in out):
                out += self._replay()  # batches of the proposal in flight still missing: fetch them now
        if self.config.batch_delay:
            if self.unforwarded:
                fresh = tuple(b for b in self.unforwarded if b in self.pending)
                self.unforwarded = []
                for i in range(0, len(fresh), self.config.max_batches):
                    out.append(self._forward(fresh[i : i + self.config.max_batches]))
            out += self._propose()
        if self.sources:
            out += self._fetch_unheld()
        if not self.is_active:  # a reserve forwards and fetches, but never changes views
            return out
        if self.deadline is not None and now >= self.deadline:
            target = (self.changing_to if self.changing_to is not None else self.view) + 1
            self.failed_views += 1
            out += self._start_view_change(target)
        elif self.pending:
            age = self._oldest_pending_age()
            base = self.config.base_timeout  # not the grown timeout: telling again is cheap
            if age > base / 2 and now - self.forwarded_at > base / 2:
                # The others may never have heard of it (a lost message, or this replica was in a
                # view change of its own when it came): tell them again, also while changing views.
                # While blocks are decided, only batches left waiting far longer: under load
                # batches queue for a while, and telling every replica of them all again would
                # cost each a signature check and a header check per batch for nothing.
                self.forwarded_at = now
                cutoff = base / 2 if now - self.progress_at > base / 2 else 2 * base
                old = tuple(sorted(b for b, t in self._held_pending().items()
                                   if now - t > cutoff and self.ledger.holds(b)))
                if old:
                    out.append(self._forward(old[: self.config.max_batches]))
            if age > 4 * self.timeout and self.changing_to is None:
                self.failed_views += 1  # the primary keeps leaving a batch we hold out
                out += self._start_view_change(self.view + 1)
        return out

    def _fetch_unheld(self) -> list[Action]:
        """Batches others told us of but whose data never came: ask the teller (so that this
        replica can propose or vote for them). One whose data nobody serves for long is
        forgotten: a faulty replica could otherwise fill `pending` with made-up digests."""
        base = self.config.base_timeout
        if self.now - self.fetched_at < base / 2:
            return []
        self.fetched_at = self.now
        forget = [b for b in self.sources if self.now - self.pending[b] > 8 * self.config.max_timeout]
        for b in forget:
            del self.sources[b], self.pending[b]
            self.holders.pop(b, None)
        by_peer: dict[int, list[bytes]] = {}
        for b, peer in sorted(self.sources.items()):
            if self._available(b):  # with custody: stored by f+1, of which one correct; no need here
                continue
            if self.now - self.pending[b] > base / 2:
                by_peer.setdefault(peer, []).append(b)
        # The teller first; if it does not answer (paused, cut off), any other replica that has them.
        return [Fetch(tuple(bs[: self.config.max_batches]),
                      self._asking_first(peer))
                for peer, bs in sorted(by_peer.items())]

    def receive(self, m: Signed, now: float) -> list[Action]:
        self.now = now
        if not (0 <= m.replica < self.config.n) or m.replica == self.me or not verify_message(self.keys, m):
            return []
        body = m.body
        if isinstance(body, Forward):
            return self._on_forward(m.replica, body)
        if isinstance(body, PrePrepare):
            return self._on_pre_prepare(m, body)
        if isinstance(body, Prepare):
            return self._on_prepare(m, body)
        if isinstance(body, Commit):
            return self._on_commit(m, body)
        if isinstance(body, Checkpoint):
            return self._on_checkpoint(m, body)
        if isinstance(body, ViewChange):
            return self._on_view_change(m, body)
        if isinstance(body, NewView):
            return self._on_new_view(m, body)
        if isinstance(body, FetchBlocks):
            return self._on_fetch(m, body)
        if isinstance(body, Blocks):
            return self._on_blocks(m, body)
        return []

    def _retransmit(self) -> list[Action]:
        """Every quarter timeout without a decision, send our messages for the block in flight (or
        our view change) again: a lost vote then costs a resend, not a view change. Receivers
        keep one message per replica, so repeats change nothing."""
        if self.now - self.resent_at < self.timeout / 4:
            return []
        mine: list[Signed] = []
        fetch: list[Action] = []
        if self.changing_to is not None:
            vc = self.view_changes.get(self.changing_to, {}).get(self.me)
            mine = [vc] if vc is not None else []
        else:
            slot = self.slots.get((self.view, self.height + 1))
            if slot is not None:
                if slot.pre_prepare is not None and slot.pre_prepare.replica == self.me:
                    mine.append(slot.pre_prepare)
                elif slot.pre_prepare is not None and ("prepare", self.view, self.height + 1) not in self.votes:
                    p = slot.pre_prepare.body.proposal
                    missing = self._note_missing(self.view, p) if self._valid_proposal(p) else None
                    if missing is not None:  # still waiting for its batches: ask again
                        fetch = self._fetch_missing(self.view, p, missing)
                mine += [by[self.me] for by in (*slot.prepares.values(), *slot.commits.values()) if self.me in by]
        if not mine and not fetch:
            return []
        self.resent_at = self.now
        return [*fetch, *(Send(m) for m in mine)]

    # -- normal case ---------------------------------------------------------------------

    def _held_pending(self) -> dict[bytes, float]:
        """Pending batches this replica holds, or with custody knows to be available (those it
        can propose and vote for)."""
        if not self.sources:
            return self.pending
        return {b: t for b, t in self.pending.items() if self._usable(b)}

    def _any_held_pending(self) -> bool:
        """Whether `_held_pending()` is not empty (asked on every input: stop at the first)."""
        return self._oldest_usable() is not None

    def _usable(self, b: bytes) -> bool:
        """A pending batch this replica may propose and vote for."""
        return b not in self.sources or self._available(b)

    def _available(self, b: bytes) -> bool:
        """Held here; or, with custody, its header known and f+1 consensus replicas say they store
        it (so at least one correct replica checked and stored it, and serves it)."""
        if self.ledger.holds(b):
            return True
        holders = self.holders.get(b)
        if not self.config.custody or holders is None:
            return False
        # Asked for every pending batch on every input: the membership's figures are kept
        # until the height or the epochs change.
        key = (self.height, len(self.epochs))
        if self._m_now is None or self._m_now[0] != key:
            m = self.m
            self._m_now = (key, frozenset(m.active), m.f + 1)
        _, active, need = self._m_now
        return len(holders) >= need and self.ledger.knows(b) and len(holders & active) >= need

    def _custodian(self, b: bytes, holder: int) -> bool:
        """Whether this replica is one of the `payload_copies - 1` consensus replicas that store
        `b` besides `holder` (the first to tell of it): a choice every replica makes alike from
        the digest, which spreads the copies over the replicas."""
        others = sorted((r for r in self.m.active if r != holder),
                        key=lambda r: hashlib.sha256(b + r.to_bytes(4, "big")).digest())
        return self.me in others[: self.config.payload_copies - 1]

    def _forward(self, batches: tuple[bytes, ...]) -> Send:
        headers = tuple(self.ledger.header(b) for b in batches) if self.config.custody else ()
        return Send(self._sign(Forward(batches, headers)))

    def _oldest_usable(self) -> float | None:
        """When the usable pending batch that waits longest was first seen (None: none is).
        `pending` is in that order: a batch goes in with the time it comes, and a new view sets
        them all to one time. So the first usable one is the oldest, and this stops there
        (asked on every input and tick, with hundreds of batches pending under load)."""
        for b, t in self.pending.items():
            if self._usable(b):
                return t
        return None

    def _oldest_pending_age(self) -> float:
        oldest = self._oldest_usable()
        return self.now - oldest if oldest is not None else 0.0

    def _work_arrived(self) -> list[Action]:
        if self.deadline is None and self.changing_to is None and self._any_held_pending():
            self.deadline = self.now + self.timeout
        return self._propose()

    def _on_forward(self, sender: int, body: Forward) -> list[Action]:
        batches = body.batches
        newly_available = False
        if self.config.custody:
            if len(body.headers) != len(batches):
                return []  # without the headers its word is worth nothing here
            told: list[bytes] = []
            for b, header in zip(batches, body.headers):
                if b in self.committed_batches or not self.ledger.learn(b, header):
                    continue  # a header that is not the batch's: ignore the sender's claim
                before = self._available(b)
                self.holders.setdefault(b, set()).add(sender)
                newly_available |= not before and b in self.pending and self._available(b)
                told.append(b)
            batches = tuple(told)
        fresh = [b for b in batches if b not in self.committed_batches and b not in self.pending]
        unheld: list[bytes] = []
        for b in sorted(fresh):
            self.pending[b] = self.now
            if not self.ledger.holds(b):  # its data did not come with the forward
                self.sources[b] = sender
                # Fetch it from the sender at once, unless custody leaves it to others (if they
                # do not store it in time, `_fetch_unheld` and `_note_missing` fetch it after all).
                if not self.config.custody or self._custodian(b, sender):
                    unheld.append(b)
        out: list[Action] = [Fetch(tuple(unheld), (sender,))] if unheld else []
        if fresh or newly_available:
            out += self._work_arrived()
        return out + (self._replay() if newly_available else [])

    def _slot(self, view: int, height: int) -> _Slot:
        return self.slots.setdefault((view, height), _Slot())

    def _in_window(self, height: int) -> bool:
        """Between the watermarks: above what is decided, at most two checkpoint intervals on."""
        return self.height < height <= self.height + 2 * self.config.checkpoint_interval

    def _propose(self) -> list[Action]:
        h = self.height + 1
        if not self.is_primary or self.changing_to is not None or not self.pending:
            return []
        if ("pre-prepare", self.view, h) in self.votes:
            return []
        oldest = self._oldest_usable()
        if oldest is None:
            return []
        if self.now - oldest < self.config.batch_delay and (
            len(self.pending) < self.config.max_batches or len(self._held_pending()) < self.config.max_batches
        ):
            return []  # a tick proposes once the oldest batch has waited batch_delay (or a block is full)
        proposal = self._next_proposal(self.view)
        return self._send_pre_prepare(proposal) if proposal is not None else []

    def _next_proposal(self, view: int) -> Proposal | None:
        """What the next proposal seals: of the pending batches this replica holds, longest
        known first, those the ledger says may go next (in its order), up to max_batches, with
        the header it builds for them. None if none may."""
        held = self._held_pending()
        batches = self.ledger.select(tuple(sorted(held, key=lambda b: (held[b], b))), self.config.max_batches)
        if not batches:
            return None
        h = self.height + 1
        votes = tuple(self.decided_commits[r] for r in sorted(self.decided_commits)) if self.height else ()
        return Proposal(h, self.last_digest, batches, self.ledger.build(h, self.last_digest, batches, self.now),
                        view, votes)

    def _send_pre_prepare(self, proposal: Proposal) -> list[Action]:
        self.votes[("pre-prepare", self.view, proposal.height)] = proposal.digest
        pp = self._sign(PrePrepare(self.view, proposal))
        self._slot(self.view, proposal.height).pre_prepare = pp
        return [self._durable(), Send(pp)] + self._check_prepared(self.view, proposal.height, proposal.digest)

    def _valid_proposal(self, p: Proposal) -> bool:
        """Could be the next block (not yet: whether this replica holds its batches)."""
        return (
            p.height == self.height + 1
            and p.prev == self.last_digest
            and 0 < len(p.batches) <= self.config.max_batches
            and len(set(p.batches)) == len(p.batches)
            and all(len(b) == DIGEST and b not in self.committed_batches for b in p.batches)
        )

    def _note_missing(self, view: int, p: Proposal) -> tuple[bytes, ...] | None:
        """The batches of `p` this replica neither holds nor (custody) knows are available; None
        if all are. Not only a question: the first time some are missing it notes when (the
        patience before fetching counts from then) and extends the deadline, since the primary
        did its part and fetching them is ours: one more timeout for it (once per proposal, so
        unavailable batches cannot stall a view for ever)."""
        missing = tuple(b for b in p.batches if not self._available(b))
        if not missing:
            return None
        if (view, p.height) not in self.waited:
            self.waited[(view, p.height)] = self.now
            self.deadline = max(self.deadline or 0.0, self.now + self.timeout)
        return missing

    def _fetch_missing(self, view: int, p: Proposal, missing: tuple[bytes, ...]) -> list[Action]:
        """A Fetch for `missing` from the primary first, once this replica has waited its
        patience for them since it first missed them (none before: `tick` comes back then)."""
        until = self.waited[(view, p.height)] + self.config.base_timeout / 4
        if self.now < until:
            self.patient_until = until if self.patient_until is None else min(self.patient_until, until)
            return []
        return [Fetch(missing, self._asking_first(self.m.primary(view)))]

    def _asking_first(self, peer: int) -> tuple[int, ...]:
        """Whom a fetch asks, in turn: `peer`, then every other replica."""
        return (peer, *(r for r in range(self.config.n) if r not in (peer, self.me)))

    def _vote_or_fetch(self, view: int, p: Proposal) -> list[Action]:
        """Prepare a valid proposal once its batches are here and its header is right."""
        if not self.is_active:  # a reserve does not vote: it decides from the commits it sees
            return self._check_committed(view, p.height, p.digest)
        if self.votes.get(("prepare", view, p.height)) == p.digest:
            return self._accept(view, p)  # checked when we voted (its header, its last commits)
        missing = self._note_missing(view, p)
        if missing is not None:
            return self._fetch_missing(view, p, missing)
        if self.ledger.check(p, self.now) is not None or not certificates.valid_last_commit(
            self.members(p.height - 1), self.keys, p
        ):
            return self._start_view_change(self.view + 1)  # a header or votes that lie: a faulty primary
        return self._accept(view, p)

    def _on_pre_prepare(self, m: Signed, body: PrePrepare) -> list[Action]:
        p = body.proposal
        if p.height > self.height + 1:
            mp = self.members(p.height)
            if mp is not None and m.replica == mp.primary(body.view) and body.view >= self.view:
                self._slot(body.view, p.height).pre_prepare = m  # kept until we catch up
            return self._note_ahead(m.replica, p.height - 1)
        if m.replica != self.m.primary(body.view) or body.view != self.view:
            return self._note_ahead(m.replica, p.height - 1)
        if self.changing_to is not None:
            # No vote from a replica leaving this view, but keep the proposal: if a quorum commits
            # it, this replica decides it too instead of fetching it.
            slot = self._slot(body.view, p.height)
            if slot.pre_prepare is None:
                slot.pre_prepare = m
            return self._check_committed(body.view, p.height, p.digest)
        slot = self._slot(body.view, p.height)
        if slot.pre_prepare is not None and slot.pre_prepare.body.proposal.digest != p.digest:
            return self._start_view_change(self.view + 1)  # the primary equivocates
        if not self._valid_proposal(p) or p.view != body.view:  # a fresh proposal names its own view
            return []
        slot.pre_prepare = m
        return self._vote_or_fetch(body.view, p)

    def _accept(self, view: int, p: Proposal) -> list[Action]:
        out: list[Action] = []
        key = ("prepare", view, p.height)
        if key not in self.votes:
            self.votes[key] = p.digest
            prepare = self._sign(Prepare(view, p.height, p.digest))
            self._slot(view, p.height).prepares.setdefault(p.digest, {})[self.me] = prepare
            out += [self._durable(), Send(prepare)]
        if self.deadline is None:
            self.deadline = self.now + self.timeout
        return out + self._check_prepared(view, p.height, p.digest)

    def _on_prepare(self, m: Signed, body: Prepare) -> list[Action]:
        if body.height <= self.height or not self._in_window(body.height):
            return []
        mh = self.members(body.height)
        if mh is not None and (not mh.votes(m.replica) or m.replica == mh.primary(body.view)):
            return []
        self._slot(body.view, body.height).prepares.setdefault(body.digest, {})[m.replica] = m
        out = self._note_ahead(m.replica, body.height - 1)
        if body.view == self.view and body.height == self.height + 1:
            out += self._check_prepared(body.view, body.height, body.digest)
        return out

    def _check_prepared(self, view: int, height: int, digest: bytes) -> list[Action]:
        slot = self.slots.get((view, height))
        if slot is None or slot.pre_prepare is None or slot.pre_prepare.body.proposal.digest != digest:
            return []
        mh = self.members(height)
        if mh is None or slot.pre_prepare.replica != mh.primary(view):
            return []
        prepares = {r: s for r, s in slot.prepares.get(digest, {}).items() if r != mh.primary(view) and mh.votes(r)}
        if len(prepares) < mh.quorum - 1:
            return []
        held = self.prepared
        if held is None or held.pre_prepare.body.proposal.height != height or held.pre_prepare.body.view < view:
            self.prepared = PreparedCertificate(
                slot.pre_prepare, tuple(prepares[r] for r in sorted(prepares)[: mh.quorum - 1])
            )
        out: list[Action] = []
        key = ("commit", view, height)
        if key not in self.votes and self.changing_to is None and view == self.view and self.is_active:
            self.votes[key] = digest
            commit = self._sign(Commit(view, height, digest))
            slot.commits.setdefault(digest, {})[self.me] = commit
            out += [self._durable(), Send(commit)]
        return out + self._check_committed(view, height, digest)

    def _on_commit(self, m: Signed, body: Commit) -> list[Action]:
        if body.height == self.height and body.digest == self.last_digest and self.members(body.height) is not None \
                and self.members(body.height).votes(m.replica):  # type: ignore[union-attr]
            self.decided_commits.setdefault(m.replica, m)  # a late vote: the next proposal carries it
            return []
        if body.height <= self.height or not self._in_window(body.height):
            return []
        mh = self.members(body.height)
        if mh is not None and not mh.votes(m.replica):
            return []
        self._slot(body.view, body.height).commits.setdefault(body.digest, {})[m.replica] = m
        out = self._note_ahead(m.replica, body.height - 1)
        if body.height == self.height + 1:
            out += self._check_committed(body.view, body.height, body.digest)
        return out

    def _check_committed(self, view: int, height: int, digest: bytes) -> list[Action]:
        slot = self.slots.get((view, height))
        if slot is None or height != self.height + 1:
            return []
        mh = self.members(height)
        assert mh is not None  # the next height's membership is always known
        commits = {r: c for r, c in slot.commits.get(digest, {}).items() if mh.votes(r)}
        proposal = _proposal_in(slot, digest)
        if len(commits) >= mh.quorum and proposal is None:
            # Decided, but we never saw the proposal: fetch the block from those who committed it.
            for r in commits:
                if r != self.me:
                    self.ahead.setdefault(height, set()).add(r)
            return self._fetch_if_behind(gap=0)
        if proposal is None or len(commits) < mh.quorum or proposal.prev != self.last_digest:
            return []
        cert = CommitCertificate(proposal, tuple(commits[r] for r in sorted(commits)[: mh.quorum]))
        # Every vote for this block seen so far, in any view: the next proposal carries them.
        seen = {r: c for v in sorted({k[0] for k in self.slots if k[1] == height})
                for r, c in self.slots[(v, height)].commits.get(digest, {}).items() if mh.votes(r)}
        return self._decide(cert, seen)

    def _decide(self, cert: CommitCertificate, seen: dict[int, Signed] | None = None) -> list[Action]:
        p = cert.proposal
        self.progress_at = self.resent_at = self.now  # the next block's messages are new: resend them later
        self.certificates.append(cert)
        self._settle(p)
        self.decided_commits = {c.replica: c for c in cert.commits}
        for r, c in sorted((seen or {}).items()):
            self.decided_commits.setdefault(r, c)
        self.ledger.decided(p)
        self.committed_batches.update(p.batches)
        for b in p.batches:
            self.pending.pop(b, None)
            self.sources.pop(b, None)
            self.holders.pop(b, None)
        for b in [b for b in self.pending if self.ledger.superseded(b)]:  # a gateway's fork: never sealed
            del self.pending[b]
            self.sources.pop(b, None)
            self.holders.pop(b, None)
        self.slots = {k: s for k, s in self.slots.items() if k[1] > p.height}
        self.waited = {k: t for k, t in self.waited.items() if k[1] > p.height}
        self.votes = {k: d for k, d in self.votes.items() if k[2] > p.height}
        if self.prepared is not None and self.prepared.pre_prepare.body.proposal.height <= p.height:
            self.prepared = None
        self.ahead = {h: r for h, r in self.ahead.items() if h > p.height}
        if self.changing_to is not None:
            # Decided while changing views (a quorum's commits, or state transfer): the view
            # change still needs its new view, and its timer (its exponent kept: no view has
            # succeeded yet) is what moves on to the next one if that primary never sends it.
            # Without it a faulty next primary stalled the chain.
            self.deadline = self.now + self.timeout
        else:
            self.failed_views = 0
            self.deadline = self.now + self.timeout if self._any_held_pending() else None
        out: list[Action] = [Decide(cert)]
        if p.height % self.config.checkpoint_interval == 0 and self.members(p.height).votes(self.me):  # type: ignore[union-attr]
            cp = self._sign(Checkpoint(p.height, p.digest))
            out.append(Send(cp))
            out += self._count_checkpoint(self.me, cp.body)
        if self.fetching is not None and not self._behind():
            self.fetching = None
        out += self._replay() + self._propose()
        if self.changing_to is not None:  # a new view that waited for this block's epoch
            out += self._maybe_new_view(self.changing_to)
        if self.deferred_new_view is not None:
            nv, self.deferred_new_view = self.deferred_new_view, None
            out += self._on_new_view(nv, nv.body)  # type: ignore[arg-type]
        return out

    def _replay(self) -> list[Action]:
        """Messages for the next height that arrived before this replica got there."""
        h = self.height + 1
        out: list[Action] = []
        slot = self.slots.get((self.view, h))
        if slot is None or self.changing_to is not None:
            return out
        if slot.pre_prepare is not None and slot.pre_prepare.replica == self.m.primary(self.view):
            p = slot.pre_prepare.body.proposal
            if self._valid_proposal(p) and p.view == slot.pre_prepare.body.view:
                out += self._vote_or_fetch(self.view, p)
        for digest in sorted(set(slot.prepares) | set(slot.commits)):
            out += self._check_prepared(self.view, h, digest)
            out += self._check_committed(self.view, h, digest)
        return out

    # -- checkpoints -----------------------------------------------------------------------

    def _on_checkpoint(self, m: Signed, body: Checkpoint) -> list[Action]:
        out = self._note_ahead(m.replica, body.height)
        return out + self._count_checkpoint(m.replica, body)

    def _count_checkpoint(self, replica: int, body: Checkpoint) -> list[Action]:
        if body.height <= self.stable:
            return []
        self.checkpoints.setdefault(body.height, {}).setdefault(body.digest, set()).add(replica)
        mine = self.height >= body.height and self.certificates[body.height - 1].proposal.digest == body.digest
        mh = self.members(body.height)
        signers = {r for r in self.checkpoints[body.height][body.digest] if mh is not None and mh.votes(r)}
        if mine and mh is not None and len(signers) >= mh.quorum:
            self.stable = body.height
            self.checkpoints = {h: c for h, c in self.checkpoints.items() if h > body.height}
            self.view_changes = {v: c for v, c in self.view_changes.items() if v > self.view}
        return []

    # -- view change -----------------------------------------------------------------------

    def _start_view_change(self, target: int) -> list[Action]:
        if self.changing_to is not None and self.changing_to >= target or target <= self.view or not self.is_active:
            return []
        self.changing_to = target
        self.view_change_count += 1
        self.deadline = self.now + self.timeout
        vc = self._sign(ViewChange(target, self.certificates[-1] if self.certificates else None, self.prepared))
        self.view_changes.setdefault(target, {})[self.me] = vc
        return [self._durable(), Send(vc)] + self._maybe_new_view(target)

    def _on_view_change(self, m: Signed, body: ViewChange) -> list[Action]:
        if body.view == self.view and body.view in self.new_views:
            return [Send(self.new_views[body.view], to=m.replica)]  # it missed our NEW-VIEW
        if body.view <= self.view:
            return []
        out: list[Action] = []
        if body.committed is not None and body.committed.proposal.height > self.height:
            # Before it can be checked: a replica behind an epoch it does not know yet cannot check
            # the certificate, but f+1 such claims still tell it to fetch blocks.
            out += self._note_ahead(m.replica, body.committed.proposal.height)
        if not certificates.valid_view_change(self.members, self.keys, m):
            return out
        # Kept from any replica: whose count is decided by the membership after the quorum's top block.
        self.view_changes.setdefault(body.view, {})[m.replica] = m
        # f+1 consensus replicas want a higher view: at least one correct replica timed out, so follow.
        wanting = {r for v, vcs in self.view_changes.items() if v > self.view for r in vcs if self.m.votes(r)}
        current = self.changing_to if self.changing_to is not None else self.view
        if len(wanting) >= self.m.f + 1:
            lowest = min(v for v, vcs in self.view_changes.items() if v > current and vcs) if any(
                v > current and vcs for v, vcs in self.view_changes.items()
            ) else None
            if lowest is not None:
                out += self._start_view_change(lowest)
        return out + self._maybe_new_view(body.view)

    def _maybe_new_view(self, view: int) -> list[Action]:
        if view in self.new_view_sent or self.changing_to != view:
            return []
        received = self.view_changes.get(view, {})
        # The new view is for the height after the highest block any of them committed, and the
        # membership of that height says who is primary and what a quorum is: take that block
        # first (its certificate is here); an epoch not known yet waits for the blocks fetched.
        top_all, _ = certificates.new_view_plan(received.values())
        mt = self.members(certificates.top_height(top_all) + 1)
        if mt is None:
            return self._adopt(top_all)
        if mt.primary(view) != self.me:
            return []
        vcs = {r: v for r, v in received.items() if mt.votes(r)}
        if len(vcs) < mt.quorum:
            return []
        def committed(r: int) -> int:
            c = vcs[r].body.committed  # type: ignore[union-attr]
            return c.proposal.height if c is not None else 0
        chosen = tuple(vcs[r] for r in sorted(vcs, key=lambda r: (-committed(r), r))[: mt.quorum])
        top, carried = certificates.new_view_plan(chosen)
        self.new_view_sent.add(view)
        out: list[Action] = []
        out += self._adopt(top)
        proposal = carried
        if proposal is None and self._any_held_pending() and certificates.top_height(top) == self.height:
            proposal = self._next_proposal(view)
        pp = self._sign(PrePrepare(view, proposal)) if proposal is not None else None
        nv = self._sign(NewView(view, chosen, pp))
        self.new_views = {view: nv}
        return out + [Send(nv)] + self._enter_view(view, pp)

    def _on_new_view(self, m: Signed, body: NewView) -> list[Action]:
        view = body.view
        if view < (self.changing_to or self.view) or view <= self.view:
            return []
        if not all(isinstance(s.body, ViewChange) and s.body.view == view
                   and certificates.valid_view_change(self.members, self.keys, s) for s in body.view_changes):
            return []
        top, carried = certificates.new_view_plan(body.view_changes)
        # Primary and quorum are those of the height the new view is for.
        mt = self.members(certificates.top_height(top) + 1)
        if mt is None:  # an epoch not known yet: fetch up to it, then look at this new view again
            self.deferred_new_view = m
            return self._adopt(top)
        signers = {s.replica for s in body.view_changes}
        if m.replica != mt.primary(view) or len(signers) != len(body.view_changes) or len(signers) < mt.quorum \
                or not all(mt.votes(r) for r in signers):
            return []
        pp = body.pre_prepare
        if pp is not None:
            if not (isinstance(pp.body, PrePrepare) and pp.body.view == view and pp.replica == m.replica
                    and verify_message(self.keys, pp)):
                return []
            p = pp.body.proposal
            if carried is not None and p != carried:
                return []  # a forged or wrong choice: the carried proposal may have committed somewhere
            if carried is None and (p.height != certificates.top_height(top) + 1 or p.prev != certificates.top_digest(top)
                                    or p.view != view):
                return []
        elif carried is not None:
            return []
        out = self._adopt(top)
        return out + self._enter_view(view, pp)

    def _adopt(self, top: CommitCertificate | None) -> list[Action]:
        """The quorum's highest committed block: decide it directly if it is our next one,
        otherwise fetch what lies between."""
        if top is None or top.proposal.height <= self.height:
            return []
        if top.proposal.height == self.height + 1 and top.proposal.prev == self.last_digest:
            return self._decide(top)
        signer = sorted(s.replica for s in top.commits if s.replica != self.me)
        for r in signer:
            self.ahead.setdefault(top.proposal.height, set()).add(r)
        return self._fetch_if_behind(force=True)

    def _enter_view(self, view: int, pp: Signed | None) -> list[Action]:
        self.view = view
        self.changing_to = None
        for b in self.pending:  # the new primary gets a fresh chance with every known batch
            self.pending[b] = self.now
        self.deadline = self.now + self.timeout if (self._any_held_pending() or pp is not None) else None
        self.view_changes = {v: c for v, c in self.view_changes.items() if v > view}
        out: list[Action] = [self._durable()]
        if pp is not None:
            p = pp.body.proposal
            self._slot(view, p.height).pre_prepare = pp
            if pp.replica == self.me:
                self.votes[("pre-prepare", view, p.height)] = p.digest
                out += self._check_prepared(view, p.height, p.digest)
            elif self._valid_proposal(p):
                out += self._vote_or_fetch(view, p)
        return out + self._replay() + self._propose()

    # -- state transfer --------------------------------------------------------------------

    def _note_ahead(self, replica: int, height: int) -> list[Action]:
        if height <= self.height:
            return []
        self.ahead.setdefault(height, set()).add(replica)
        return self._fetch_if_behind()

    def _behind(self, gap: int = 1) -> int | None:
        """A height f+1 replicas (so one correct) showed they reached, more than `gap` above
        ours. On messages the gap is 1: the next height is normally decided by the protocol
        itself; on a tick it is 0, for a replica that missed that protocol (it was in a view
        change of its own, or lost the messages)."""
        for h in sorted(self.ahead, reverse=True):
            if h > self.height + gap and len(self.ahead[h]) >= self.m.f + 1:
                return h
        return None

    def _fetch_if_behind(self, force: bool = False, gap: int = 1) -> list[Action]:
        if self.fetching is not None:
            return []
        target = max(self.ahead) if force and self.ahead else self._behind(gap)
        if target is None or target <= self.height:
            return []
        peers = sorted(r for h, rs in self.ahead.items() if h >= target for r in rs)
        if not peers:
            return []
        good = [r for r in peers if r not in self.bad_peers]
        if not good:  # every peer failed us once: try them all again
            self.bad_peers -= set(peers)
            good = peers
        peer = good[(self.height + self.me) % len(good)]
        self.fetching = (peer, self.now)
        return [Send(self._sign(FetchBlocks(self.height + 1)), to=peer)]

    def _probe(self) -> list[Action]:
        quiet = 2 * self.config.base_timeout
        if self.fetching is not None or self.now - self.progress_at < quiet or self.now - self.probed_at < quiet:
            return []
        peers = [r for r in range(self.config.n) if r != self.me]
        if not peers:
            return []
        self.probed_at = self.now
        self.probes += 1
        peer = peers[(self.me + self.probes) % len(peers)]
        self.fetching = (peer, self.now)
        return [Send(self._sign(FetchBlocks(self.height + 1)), to=peer)]

    def _on_fetch(self, m: Signed, body: FetchBlocks) -> list[Action]:
        if body.height < 1:
            return []
        # An empty answer too: the asker learns it is not behind us (and does not wait for us).
        certs = tuple(self.certificates[body.height - 1 : body.height - 1 + self.config.fetch_batch])
        return [Send(self._sign(Blocks(certs)), to=m.replica)]

    def _on_blocks(self, m: Signed, body: Blocks) -> list[Action]:
        if self.fetching is None or self.fetching[0] != m.replica:
            return []
        out: list[Action] = []
        for cert in body.certificates:
            p = cert.proposal
            if p.height != self.height + 1:
                continue
            if p.prev != self.last_digest or not certificates.valid_commit_certificate(
                self.members(p.height), self.keys, cert
            ):
                self.bad_peers.add(m.replica)  # a bad block: this peer is not helping
                break
            out += self._decide(cert)
        self.fetching = None
        if len(body.certificates) == self.config.fetch_batch and m.replica not in self.bad_peers:
            self.fetching = (m.replica, self.now)  # a full answer: there may be more
            return out + [Send(self._sign(FetchBlocks(self.height + 1)), to=m.replica)]
        return out + self._fetch_if_behind()


def _proposal_in(slot: _Slot, digest: bytes) -> Proposal | None:
    if slot.pre_prepare is not None and slot.pre_prepare.body.proposal.digest == digest:
        return slot.pre_prepare.body.proposal
    return None
