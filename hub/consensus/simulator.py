"""A seeded simulation of n consensus replicas over a faulty network, checking safety and liveness.

Everything random comes from one `random.Random(seed)` and time from the simulation's own
clock, so a seed replays exactly. The network drops, delays (which reorders), duplicates
and partitions; replicas crash and restart from what they persisted; Byzantine replicas
equivocate, send conflicting votes, replay old messages, stay silent as primary, forge
certificates in view changes, serve bad blocks in state transfer, or run twice with one key
(Twins). After `heal_at` the network is reliable again and crashed replicas are back.

Safety: no two correct replicas decide different proposals at one height, ever (checked at
every decision). Liveness: after healing, every correct replica decides every batch that was
submitted before healing, within the run.
"""

from __future__ import annotations

import hashlib
import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from hub.consensus.config import ConsensusConfig
from hub.consensus.core import Decide, Durable, Fetch, Persist, Replica, Send
from hub.consensus.ledger import DigestLedger
from hub.consensus.keys import SimulatedReplicaKeys, sign_message
from hub.consensus.messages import (
    Blocks,
    Commit,
    CommitCertificate,
    Forward,
    NewView,
    PrePrepare,
    Prepare,
    PreparedCertificate,
    Proposal,
    Signed,
    ViewChange,
)

BYZANTINE = ("equivocate", "conflicting-votes", "replay", "silent-primary", "forged-view-change", "bad-blocks", "twins")
NETWORK = ("drop", "delay", "duplicate", "partition", "crash", "quorum-loss")
FAULTS = NETWORK + BYZANTINE


@dataclass(frozen=True)
class Faults:
    names: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, text: str) -> Faults:
        names = frozenset(n.strip() for n in text.split("+") if n.strip() and n.strip() != "none")
        unknown = sorted(names - set(FAULTS))
        if unknown:
            raise ValueError(f"unknown fault {', '.join(unknown)}; known: {', '.join(FAULTS)}")
        return cls(names)

    def __contains__(self, name: str) -> bool:
        return name in self.names

    @property
    def label(self) -> str:
        return "+".join(sorted(self.names)) or "none"


@dataclass
class Outcome:
    seed: int
    faults: str
    heights: dict[int, int]  # correct replica -> blocks decided
    view_changes: int
    violation: str | None = None
    stalled: str | None = None  # liveness failure
    swaps: int = 0  # reserve replicas promoted (at the first correct replica still up)

    @property
    def blocks(self) -> int:
        return min(self.heights.values()) if self.heights else 0


@dataclass(order=True)
class _Event:
    time: float
    seq: int
    kind: str = field(compare=False)
    node: int = field(compare=False)
    payload: object = field(compare=False, default=None)


class Simulation:
    def __init__(
        self, n: int, seed: int, faults: Faults, duration: float = 12.0, heal_at: float = 8.0,
        batch_interval: float = 0.1, base_timeout: float = 0.25,
        script: tuple[tuple[float, str, int], ...] = (),
        intercept: Callable[[Simulation, int, int, Signed], float | None] | None = None,
        reserves: int = 0,
        payload_copies: int = 0,
    ) -> None:
        """`script`: scripted (time, "crash" | "restart" | "isolate" | "heal", replica) events, for
        the classic scenarios; `intercept(sim, from, to, message)` returns None to drop a message,
        else an extra delay in seconds (0 for none)."""
        self.script = script
        self.intercept = intercept
        self.rng = random.Random(seed)
        self.seed = seed
        self.faults = faults
        # n consensus replicas (0..n-1) and `reserves` reserve replicas after them.
        self.config = ConsensusConfig(n=n + reserves, checkpoint_interval=5, base_timeout=base_timeout,
                                      max_timeout=2.0, max_batches=20, active=tuple(range(n)),
                                      payload_copies=payload_copies)
        self.n = n + reserves
        self.duration = duration
        self.heal_at = heal_at
        self.batch_interval = batch_interval
        self.secrets = {i: hashlib.sha256(f"replica-{i}-{seed}".encode()).digest() for i in range(self.n)}
        self.byzantine: int | None = None
        byz = [b for b in BYZANTINE if b in faults]
        if byz:
            # The Byzantine replica: the first primary for a silent or equivocating one, else a backup.
            self.byzantine = 0 if byz[0] in ("equivocate", "silent-primary", "forged-view-change", "twins") \
                else self.rng.randrange(n)
        self.nodes: dict[int, list[Replica | None]] = {}  # id -> instances (two for Twins)
        self.ledgers: dict[int, list[CommitCertificate]] = {i: [] for i in range(self.n)}
        # What each replica has stored (it survives a crash): the batch data a Forward carries
        # or a Fetch brings.
        self.stored: dict[int, DigestLedger] = {i: DigestLedger() for i in range(self.n)}
        self.durable: dict[int, Durable | None] = {i: None for i in range(self.n)}
        self.sent_to: dict[bytes, int] = {}  # batch -> the replica its gateway last gave it to
        self.decided: dict[int, bytes] = {}  # height -> proposal digest, over correct replicas
        self.outcome = Outcome(seed, faults.label, {}, 0)
        self.events: list[_Event] = []
        self.seq = 0
        self.now = 0.0
        self.down: set[int] = set()
        self.cut: set[tuple[int, int]] = set()  # (a, b): a's messages do not reach b
        self.seen: list[Signed] = []  # for replay
        self.submitted: list[tuple[float, bytes]] = []
        self.batch_no = 0

    # -- scheduling ---------------------------------------------------------------------

    def _at(self, time: float, kind: str, node: int, payload: object = None) -> None:
        self.seq += 1
        heapq.heappush(self.events, _Event(time, self.seq, kind, node, payload))

    def _healed(self) -> bool:
        return self.now >= self.heal_at

    def _correct(self, i: int) -> bool:
        return i != self.byzantine

    # -- run ---------------------------------------------------------------------------

    def run(self) -> Outcome:
        for i in range(self.n):
            copies = 2 if ("twins" in self.faults and i == self.byzantine) else 1
            self.nodes[i] = [self._new_replica(i) for _ in range(copies)]
            for c in range(copies):
                self._apply(i, c, self.nodes[i][c].start(0.0))
            self._at(self.rng.uniform(0, 0.05), "tick", i)
        self._at(0.05, "batch", -1)
        self._at(1.0, "resend", -1)
        self._schedule_faults()
        while self.events and self.outcome.violation is None:
            ev = heapq.heappop(self.events)
            if ev.time > self.duration:
                break
            self.now = ev.time
            getattr(self, f"_on_{ev.kind.replace('-', '_')}")(ev)
        self._check_liveness()
        self.outcome.view_changes = sum(r.view_change_count for rs in self.nodes.values() for r in rs if r)
        up = [rs[0] for i, rs in sorted(self.nodes.items()) if self._correct(i) and rs[0] is not None]
        if up:
            self.outcome.swaps = sum(a.active != b.active for a, b in zip(up[0].epochs, up[0].epochs[1:]))
        return self.outcome

    def _new_replica(self, i: int) -> Replica:
        keys = SimulatedReplicaKeys(i, self.secrets)
        return Replica(self.config, keys, self.stored[i], committed=list(self.ledgers[i]), durable=self.durable[i])

    def _schedule_faults(self) -> None:
        f = self.config.f
        candidates = [i for i in range(self.n) if self._correct(i)]
        if "crash" in self.faults:
            for _ in range(3):
                i = self.rng.choice(candidates)
                t = self.rng.uniform(0.5, self.heal_at - 1.5)
                self._at(t, "crash", i)
                self._at(t + self.rng.uniform(0.3, 1.5), "restart", i)
        if "quorum-loss" in self.faults:  # f+1 replicas down: the chain must halt, then resume safely
            t = self.rng.uniform(1.0, 2.0)
            for i in self.rng.sample(candidates, f + 1):
                self._at(t, "crash", i)
                self._at(self.heal_at - 0.5, "restart", i)
        if "partition" in self.faults:
            for _ in range(2):
                t = self.rng.uniform(0.5, self.heal_at - 2.0)
                side = set(self.rng.sample(range(self.n), self.rng.randint(1, self.n // 2)))
                self._at(t, "partition", -1, side)
                self._at(t + self.rng.uniform(0.5, 2.0), "heal", -1)
        if "twins" in self.faults:
            # Each twin talks to one half of the others: both halves may see "the" replica as correct.
            others = [i for i in range(self.n) if i != self.byzantine]
            self.twin_sides = (set(others[: len(others) // 2 + 1]), set(others[len(others) // 2:]))
        if "replay" in self.faults:
            self._at(1.0, "replay", self.byzantine)
        for t, kind, node in self.script:
            self._at(t, kind, node, {node} if kind == "isolate" else None)

    # -- events --------------------------------------------------------------------------

    def _on_tick(self, ev: _Event) -> None:
        i = ev.node
        for c, r in enumerate(self.nodes[i]):
            if r is not None and i not in self.down:
                self._apply(i, c, r.tick(self.now))
        self._at(self.now + 0.05, "tick", i)

    def _on_batch(self, ev: _Event) -> None:
        if self.now < self.duration - 2.0:  # the last seconds leave time to finish
            self.batch_no += 1
            digest = hashlib.sha256(f"batch-{self.seed}-{self.batch_no}".encode()).digest()
            target = self.rng.randrange(self.n)
            self.submitted.append((self.now, digest))
            self._submit(target, digest)
        self._at(self.now + self.rng.expovariate(1 / self.batch_interval), "batch", -1)

    def _on_resend(self, ev: _Event) -> None:
        """Gateways send again what is not receipted after a while, to any replica (the agent
        does this with the hubs it knows): a batch held only by a replica that crashed is not lost."""
        decided = {b for c in (self.ledgers[i] for i in range(self.n) if self._correct(i)) for cert in c
                   for b in cert.proposal.batches}
        for t, digest in self.submitted:
            if t < self.now - 1.0 and digest not in decided:
                # An agent with no receipt moves on to another hub that answers (edge/uplink.py
                # fails over after its receipt timeout), not to the one that kept the batch.
                live = [i for i in range(self.n) if i not in self.down and i != self.sent_to.get(digest)]
                self._submit(self.rng.choice(live) if live else self.rng.randrange(self.n), digest)
        self._at(self.now + 1.0, "resend", -1)

    def _submit(self, target: int, digest: bytes) -> None:
        self.sent_to[digest] = target
        if target in self.down:
            return
        self.stored[target].held.add(digest)  # the hub stores a batch before it submits it
        for c, r in enumerate(self.nodes[target]):
            if r is not None:
                self._apply(target, c, r.submit([digest], self.now))

    def _on_deliver(self, ev: _Event) -> None:
        copy, m = ev.payload
        i = ev.node
        r = self.nodes[i][copy]
        if r is None or i in self.down:
            return
        if isinstance(m.body, Forward) and not self.config.custody:  # the batches' data travels with their forward
            self.stored[i].held.update(b for b in m.body.batches if self.stored[m.replica].holds(b))
        self._apply(i, copy, r.receive(m, self.now))

    def _on_arrive(self, ev: _Event) -> None:
        copy, batches = ev.payload
        r = self.nodes[ev.node][copy]
        if r is None or ev.node in self.down:
            return
        self.stored[ev.node].held.update(batches)
        self._apply(ev.node, copy, r.batches_arrived(batches, self.now))

    def _fetch(self, i: int, copy: int, a: Fetch) -> None:
        """A peer that is up, reachable and correct serves what it holds of the batches; the
        answer is lost like any message."""
        for peer in a.peers:
            if peer in self.down or (peer, i) in self.cut or not self._correct(peer):
                continue
            served = tuple(b for b in a.batches if self.stored[peer].holds(b))
            if served:
                if not self._healed() and "drop" in self.faults and self.rng.random() < 0.1:
                    return
                self._at(self.now + self.rng.uniform(0.002, 0.02), "arrive", i, (copy, served))
                return

    def _on_crash(self, ev: _Event) -> None:
        if self.now < self.heal_at:
            self.down.add(ev.node)
            self.nodes[ev.node] = [None for _ in self.nodes[ev.node]]

    def _on_restart(self, ev: _Event) -> None:
        i = ev.node
        if i in self.down:
            self.down.discard(i)
            self.nodes[i] = [self._new_replica(i)]
            self._apply(i, 0, self.nodes[i][0].start(self.now))

    def _on_partition(self, ev: _Event) -> None:
        side = ev.payload
        self.cut = {(a, b) for a in range(self.n) for b in range(self.n) if (a in side) != (b in side)}

    def _on_heal(self, ev: _Event) -> None:
        self.cut = set()

    def _on_isolate(self, ev: _Event) -> None:
        self._on_partition(_Event(ev.time, ev.seq, "partition", -1, {ev.node}))

    def _on_replay(self, ev: _Event) -> None:
        if self.seen:
            for m in self.rng.sample(self.seen, min(5, len(self.seen))):
                for j in range(self.n):
                    if j != ev.node:
                        self._deliver_later(ev.node, j, m)
        self._at(self.now + 0.3, "replay", ev.node)

    # -- actions -------------------------------------------------------------------------

    def _apply(self, i: int, copy: int, actions: list) -> None:
        for a in actions:
            if isinstance(a, Persist):
                if copy == 0:
                    self.durable[i] = a.state
            elif isinstance(a, Decide):
                self._decided(i, copy, a.certificate)
            elif isinstance(a, Fetch):
                self._fetch(i, copy, a)
            elif isinstance(a, Send):
                for m, to in self._misbehave(i, a):
                    self._send(i, copy, m, to)

    def _decided(self, i: int, copy: int, cert: CommitCertificate) -> None:
        h = cert.proposal.height
        if copy == 0:
            self.ledgers[i].append(cert)
            assert len(self.ledgers[i]) == h or not self._correct(i), (i, h, len(self.ledgers[i]))
        if not self._correct(i):
            return
        d = cert.proposal.digest
        known = self.decided.setdefault(h, d)
        if known != d:
            self.outcome.violation = (
                f"replica {i} decided {d.hex()[:12]} at height {h}, another correct replica {known.hex()[:12]}"
            )

    def _send(self, i: int, copy: int, m: Signed, to: int | None) -> None:
        targets = [to] if to is not None else [j for j in range(self.n) if j != i]
        if "replay" in self.faults and len(self.seen) < 2000:
            self.seen.append(m)
        for j in targets:
            if "twins" in self.faults and i == self.byzantine and j not in self.twin_sides[copy]:
                continue
            self._deliver_later(i, j, m)

    def _deliver_later(self, i: int, j: int, m: Signed) -> None:
        if (i, j) in self.cut or j in self.down:
            return
        extra = 0.0
        if self.intercept is not None:
            verdict = self.intercept(self, i, j, m)
            if verdict is None:
                return
            extra = verdict
        faulty = not self._healed()
        if faulty and "drop" in self.faults and self.rng.random() < 0.1:
            return
        lo, hi = (0.001, 0.2) if (faulty and "delay" in self.faults) else (0.001, 0.01)
        copies = 2 if (faulty and "duplicate" in self.faults and self.rng.random() < 0.1) else 1
        for _ in range(copies):
            for c in range(len(self.nodes[j])):
                if "twins" in self.faults and j == self.byzantine and i not in self.twin_sides[c]:
                    continue
                self._at(self.now + extra + self.rng.uniform(lo, hi), "deliver", j, (c, m))

    # -- Byzantine behaviour -------------------------------------------------------------

    def _misbehave(self, i: int, a: Send) -> list[tuple[Signed, int | None]]:
        if i != self.byzantine:
            return [(a.message, a.to)]
        keys = SimulatedReplicaKeys(i, self.secrets)
        body = a.message.body
        others = [j for j in range(self.n) if j != i]
        if "silent-primary" in self.faults and isinstance(body, PrePrepare | NewView):
            return []
        if "equivocate" in self.faults and isinstance(body, PrePrepare):
            out = []
            for j in others:  # a different proposal for every backup
                p = body.proposal
                batches = tuple(reversed(p.batches))[: max(1, len(p.batches) - (j % 2))]
                alt = replace(p, batches=batches, header=self.stored[i].build(p.height, p.prev, batches, self.now))
                if j % 2 == 0:
                    alt = p
                out.append((sign_message(keys, PrePrepare(body.view, alt)), j))
            return out
        if "conflicting-votes" in self.faults and isinstance(body, Prepare | Commit):
            out = []
            for j in others:
                d = body.digest if j % 2 else hashlib.sha256(body.digest + bytes([j])).digest()
                out.append((sign_message(keys, type(body)(body.view, body.height, d)), j))
            return out
        if "forged-view-change" in self.faults and isinstance(body, ViewChange):
            # claim a prepared certificate for a proposal nobody prepared, prepares all self-made
            base = body.committed.proposal.height if body.committed else 0
            prev = body.committed.proposal.digest if body.committed else bytes(32)
            forged_batch = (hashlib.sha256(b"forged" + bytes([i])).digest(),)
            fake = Proposal(base + 1, prev, forged_batch, self.stored[i].build(base + 1, prev, forged_batch, self.now))
            pp = sign_message(keys, PrePrepare(max(body.view - 1, 0), fake))
            prepares = tuple(sign_message(keys, Prepare(max(body.view - 1, 0), fake.height, fake.digest))
                             for _ in range(self.config.quorum - 1))
            forged = ViewChange(body.view, body.committed, PreparedCertificate(pp, prepares))
            return [(sign_message(keys, forged), a.to)]
        if "forged-view-change" in self.faults and isinstance(body, NewView) and body.pre_prepare is not None:
            p = body.pre_prepare.body.proposal
            fake = replace(p, batches=(hashlib.sha256(b"forged-nv").digest(),))
            return [(sign_message(keys, NewView(body.view, body.view_changes,
                                                sign_message(keys, PrePrepare(body.view, fake)))), a.to)]
        if "bad-blocks" in self.faults and isinstance(body, Blocks):
            bad = tuple(
                CommitCertificate(
                    replace(c.proposal, batches=(hashlib.sha256(b"bad" + c.proposal.digest).digest(),)),
                    tuple(sign_message(keys, Commit(0, c.proposal.height, c.proposal.digest))
                          for _ in range(self.config.quorum)),
                )
                for c in body.certificates
            )
            return [(sign_message(keys, Blocks(bad)), a.to)]
        return [(a.message, a.to)]

    # -- liveness ------------------------------------------------------------------------

    def _check_liveness(self) -> None:
        # A replica still down at the end (a scripted crash without restart) is not held to it.
        correct = [i for i in range(self.n) if self._correct(i) and i not in self.down]
        self.outcome.heights = {i: len(self.ledgers[i]) for i in correct}
        if self.outcome.violation is not None:
            return
        # Data safety: what any correct replica decided, some correct replica stores (with
        # custody, f+1 said they do; storage survives crashes).
        keepers = [i for i in range(self.n) if self._correct(i)]
        decided = {b for i in keepers for c in self.ledgers[i] for b in c.proposal.batches}
        lost = sorted(b for b in decided if not any(self.stored[i].holds(b) for i in keepers))
        if lost:
            self.outcome.violation = f"{len(lost)} decided batches are stored by no correct replica"
            return
        due = {d for t, d in self.submitted if t < self.heal_at}
        for i in correct:
            done = {b for c in self.ledgers[i] for b in c.proposal.batches}
            missing = due - done
            if missing:
                self.outcome.stalled = (
                    f"replica {i} did not decide {len(missing)} of the {len(due)} batches submitted before "
                    f"the network healed at {self.heal_at:g} s (height {len(self.ledgers[i])})"
                )
                return


def simulate(n: int, seeds: range, faults: Faults, progress: Callable[[Outcome], None] | None = None,
             **kwargs: object) -> list[Outcome]:
    out = []
    for seed in seeds:
        o = Simulation(n, seed, faults, **kwargs).run()  # type: ignore[arg-type]
        out.append(o)
        if progress is not None:
            progress(o)
    return out
