"""The PBFT core as a state machine: messages, votes that survive a restart, view changes.

Driven by hand here (a few replicas, messages passed explicitly); tests/test_consensus_sim.py
drives thousands of seeded runs with faults.
"""

from __future__ import annotations

import hashlib

import pytest

from hub.consensus.certificates import valid_view_change
from hub.consensus.config import ConsensusConfig
from hub.consensus.core import Decide, Fetch, Persist, Replica, Send
from hub.consensus.ledger import DigestLedger
from hub.consensus.keys import Ed25519ReplicaKeys, SimulatedReplicaKeys, sign_message, verify_message
from hub.consensus.messages import (
    Commit,
    CommitCertificate,
    Forward,
    MessageError,
    NewView,
    PrePrepare,
    Prepare,
    PreparedCertificate,
    Proposal,
    Signed,
    ViewChange,
    decode,
    encode,
)
from protos.signing import Signer

SECRETS = {i: bytes([i]) * 32 for i in range(4)}
CONFIG = ConsensusConfig(n=4, checkpoint_interval=2, base_timeout=1.0)


def batch(i: int) -> bytes:
    return hashlib.sha256(b"batch %d" % i).digest()


class HoldsAll(DigestLedger):
    """A ledger that holds every batch: these tests are about votes, not batch data."""

    def holds(self, batch: bytes) -> bool:
        return True


HOLDS_ALL = HoldsAll()


def proposal(height: int, prev: bytes, batches: tuple[bytes, ...]) -> Proposal:
    """A proposal with the header the simulator's ledger builds for it."""
    return Proposal(height, prev, batches, HOLDS_ALL.build(height, prev, batches, 0.0))


def keys(i: int) -> SimulatedReplicaKeys:
    return SimulatedReplicaKeys(i, SECRETS)


class Cluster:
    """n replicas and a FIFO of messages in flight, delivered on request."""

    def __init__(self, n: int = 4) -> None:
        self.replicas = [Replica(CONFIG, keys(i), HOLDS_ALL) for i in range(n)]
        self.inbox: list[tuple[int, Signed]] = []
        self.decided: dict[int, list[CommitCertificate]] = {i: [] for i in range(n)}
        self.persisted: dict[int, list] = {i: [] for i in range(n)}
        self.now = 0.0

    def apply(self, i: int, actions: list) -> None:
        for a in actions:
            if isinstance(a, Send):
                for j in ([a.to] if a.to is not None else [j for j in range(len(self.replicas)) if j != i]):
                    self.inbox.append((j, a.message))
            elif isinstance(a, Decide):
                self.decided[i].append(a.certificate)
            elif isinstance(a, Persist):
                self.persisted[i].append(a.state)

    def run(self, drop: set[int] = frozenset(), steps: int = 10_000) -> None:
        """Deliver until quiet; messages to or from replicas in `drop` are lost."""
        while self.inbox and steps:
            steps -= 1
            j, m = self.inbox.pop(0)
            if j in drop or m.replica in drop:
                continue
            self.apply(j, self.replicas[j].receive(m, self.now))

    def submit(self, i: int, *batches: bytes) -> None:
        self.apply(i, self.replicas[i].submit(list(batches), self.now))

    def tick(self, dt: float) -> None:
        self.now += dt
        for i, r in enumerate(self.replicas):
            self.apply(i, r.tick(self.now))


def test_messages_round_trip_and_reject_anything_else() -> None:
    p = proposal(3, bytes(32), (batch(1), batch(2)))
    pp = sign_message(keys(0), PrePrepare(0, p))
    prepares = tuple(sign_message(keys(i), Prepare(0, 3, p.digest)) for i in (1, 2))
    commit_cert = CommitCertificate(p, tuple(sign_message(keys(i), Commit(0, 3, p.digest)) for i in range(3)))
    for m in (p, Forward((batch(1),)), pp, commit_cert, PreparedCertificate(pp, prepares),
              ViewChange(1, commit_cert, None), NewView(1, (sign_message(keys(1), ViewChange(1, None, None)),), pp)):
        assert decode(encode(m)) == m
    data = encode(pp)
    with pytest.raises(MessageError, match="trailing"):
        decode(data + b"\x00")
    with pytest.raises(MessageError, match="truncated"):
        decode(data[:-1])
    with pytest.raises(MessageError, match="unknown message tag"):
        decode(b"\x03abc")
    with pytest.raises(MessageError, match="a digest is 32 bytes"):
        encode(Prepare(0, 1, b"short"))


def _encoded_afresh(m: object) -> bytes:
    """`encode`, with every cached encoding in `m` and what it nests dropped first."""
    def drop(x: object) -> None:
        if isinstance(x, tuple):
            for y in x:
                drop(y)
        elif hasattr(x, "__dataclass_fields__"):
            x.__dict__.pop("_canonical", None)
            for name in x.__dataclass_fields__:
                drop(getattr(x, name))
    drop(m)
    return encode(m)


def test_bytes_that_decode_are_the_canonical_bytes_of_what_they_decode_to() -> None:
    """`decode` keeps the bytes it read as the message's encoding instead of encoding it again
    to compare: safe only if no other bytes decode to the same message. Mutate encodings of
    every kind of message; whatever still decodes must encode afresh to exactly those bytes."""
    import random

    rng = random.Random(5)
    p = proposal(3, bytes(32), (batch(1), batch(2)))
    pp = sign_message(keys(0), PrePrepare(0, p))
    cert = CommitCertificate(p, tuple(sign_message(keys(i), Commit(0, 3, p.digest)) for i in range(3)))
    samples = [encode(m) for m in (
        p, Forward((batch(1), batch(2)), (b"h1", b"h2")), pp, sign_message(keys(1), Prepare(0, 3, p.digest)), cert,
        PreparedCertificate(pp, (sign_message(keys(1), Prepare(0, 3, p.digest)),)), ViewChange(1, cert, None),
        NewView(1, (sign_message(keys(1), ViewChange(1, None, None)),), pp),
    )]
    decoded = 0

    def mutants(data: bytes):  # noqa: ANN202
        for i in range(len(data)):  # every byte changed, dropped, or preceded by another
            for value in {data[i] ^ 1, data[i] ^ 0x80, 0, 1, 0xFF} - {data[i]}:
                yield data[:i] + bytes([value]) + data[i + 1 :]
            yield data[:i] + data[i + 1 :]
            yield data[:i] + bytes([data[i]]) + data[i:]
        for _ in range(2000):  # and a few bytes at once
            d = bytearray(data)
            for _ in range(3):
                d[rng.randrange(len(d))] = rng.randrange(256)
            yield bytes(d)

    for data in (m for sample in samples for m in mutants(sample)):
        try:
            m = decode(data)
        except MessageError:
            continue
        decoded += 1
        assert _encoded_afresh(m) == data
    assert decoded > 1000  # mutations inside digests, signatures and integers still decode


def test_signatures_bind_the_replica_and_the_bytes() -> None:
    m = sign_message(keys(1), Prepare(0, 1, batch(1)))
    assert verify_message(keys(2), m)
    assert not verify_message(keys(2), Signed(m.body, 2, m.signature))  # claimed by another replica
    assert not verify_message(keys(2), Signed(Prepare(0, 1, batch(2)), 1, m.signature))
    signers = {i: Signer.generate() for i in range(2)}
    ed = {i: Ed25519ReplicaKeys(i, signers[i], {j: s.public_key for j, s in signers.items()}) for i in range(2)}
    m = sign_message(ed[0], Commit(2, 5, batch(3)))
    assert verify_message(ed[1], m) and not verify_message(ed[1], Signed(m.body, 1, m.signature))


def test_the_normal_case_decides_one_block_with_a_quorum_certificate() -> None:
    c = Cluster()
    c.submit(2, batch(1), batch(2))  # a backup received them: forwarded to the primary
    c.run()
    for i in range(4):
        (cert,) = c.decided[i]
        assert cert.proposal.height == 1 and set(cert.proposal.batches) == {batch(1), batch(2)}
        assert len({s.replica for s in cert.commits}) == CONFIG.quorum == 3
    assert len({c.decided[i][0].proposal.digest for i in range(4)}) == 1


def test_one_replica_down_is_tolerated_two_halt_the_chain_then_it_resumes() -> None:
    c = Cluster()
    c.submit(0, batch(1))
    c.run(drop={3})
    assert [len(c.decided[i]) for i in range(4)] == [1, 1, 1, 0]
    c.submit(0, batch(2))
    c.run(drop={2, 3})
    assert [len(c.decided[i]) for i in range(4)] == [1, 1, 1, 0]  # f+1 down: no decision
    c.submit(0, batch(3))
    for _ in range(6):  # back: what was lost is recovered by timeouts (a view change), 3 catches up
        c.tick(CONFIG.max_timeout)
        c.run()
    heights = [len(c.decided[i]) for i in range(4)]
    assert heights[0] >= 2 and len(set(heights)) == 1, heights
    assert {b for cert in c.decided[0] for b in cert.proposal.batches} == {batch(1), batch(2), batch(3)}
    assert len({tuple(x.proposal.digest for x in c.decided[i]) for i in range(4)}) == 1


def test_a_replica_back_after_the_others_went_quiet_asks_for_the_blocks_it_missed() -> None:
    """Replica 3 misses 60 blocks (more than one answer of fetch_batch), then nothing happens
    any more: no message shows it is behind, so it asks its peers in turn on a quiet tick, and
    follows a full answer with the next question."""
    c = Cluster()
    for i in range(60):
        c.submit(0, batch(100 + i))
        c.run(drop={3})
    assert [len(c.decided[i]) for i in range(4)] == [60, 60, 60, 0]
    c.tick(0.1)  # a tick soon after: not quiet yet for the others, and 3 just asks once
    c.run()
    for _ in range(4):
        c.tick(2 * CONFIG.base_timeout)
        c.run()
    assert len(c.decided[3]) == 60
    assert [x.proposal.digest for x in c.decided[3]] == [x.proposal.digest for x in c.decided[0]]


def test_a_restarted_replica_does_not_vote_twice_at_one_height() -> None:
    """It persisted its prepare before sending it; after a restart it refuses another digest."""
    c = Cluster()
    p = proposal(1, bytes(32), (batch(1),))
    c.apply(1, c.replicas[1].receive(sign_message(keys(0), PrePrepare(0, p)), 0.0))
    persisted = c.persisted[1][-1]
    assert [(v.kind, v.view, v.height, v.digest) for v in persisted.votes] == [("prepare", 0, 1, p.digest)]
    sends = [a for a in c.replicas[1].receive(sign_message(keys(0), PrePrepare(0, p)), 0.0) if isinstance(a, Send)]
    assert sends == []
    restarted = Replica(CONFIG, keys(1), HOLDS_ALL, durable=persisted)
    other = proposal(1, bytes(32), (batch(9),))
    actions = restarted.receive(sign_message(keys(0), PrePrepare(0, other)), 1.0)
    assert not [a for a in actions if isinstance(a, Send) and isinstance(a.message.body, Prepare)]


def test_an_equivocating_primary_is_replaced_and_the_chain_goes_on() -> None:
    c = Cluster()
    c.replicas[1].submit([batch(1)], 0.0)
    c.replicas[2].submit([batch(1)], 0.0)
    a, b = proposal(1, bytes(32), (batch(1),)), proposal(1, bytes(32), (batch(1), batch(2)))
    c.apply(1, c.replicas[1].receive(sign_message(keys(0), PrePrepare(0, a)), 0.0))
    c.apply(1, c.replicas[1].receive(sign_message(keys(0), PrePrepare(0, b)), 0.0))  # same height, other proposal
    assert c.replicas[1].changing_to == 1
    c.inbox = [(j, m) for j, m in c.inbox if not isinstance(m.body, Prepare)]
    c.tick(CONFIG.base_timeout + 0.01)  # the others time out too
    c.run(drop={0})
    views = {r.view for r in c.replicas[1:]}
    assert len(views) == 1 and views.pop() >= 1 and all(r.changing_to is None for r in c.replicas[1:])
    assert all(len(c.decided[i]) == 1 for i in (1, 2, 3))
    assert len({c.decided[i][0].proposal.digest for i in (1, 2, 3)}) == 1


def test_a_forged_prepared_certificate_in_a_view_change_is_refused() -> None:
    fake = proposal(1, bytes(32), (batch(7),))
    forged = PreparedCertificate(
        sign_message(keys(0), PrePrepare(0, fake)),
        tuple(sign_message(keys(0), Prepare(0, 1, fake.digest)) for _ in range(2)),  # one signer, twice
    )
    assert not valid_view_change(lambda h: CONFIG.initial_membership(), keys(2), sign_message(keys(0), ViewChange(1, None, forged)))
    honest = PreparedCertificate(forged.pre_prepare, tuple(sign_message(keys(i), Prepare(0, 1, fake.digest)) for i in (1, 3)))
    assert valid_view_change(lambda h: CONFIG.initial_membership(), keys(2), sign_message(keys(0), ViewChange(1, None, honest)))


def test_timeouts_grow_exponentially_while_views_fail_and_reset_on_a_decision() -> None:
    r = Replica(CONFIG, keys(1), HOLDS_ALL)
    r.submit([batch(1)], 0.0)
    seen = []
    t = 0.0
    for _ in range(4):
        t = r.deadline + 0.001
        r.tick(t)
        seen.append(r.timeout)
    assert seen == [2.0, 4.0, 8.0, 16.0]


def test_a_block_decided_during_a_view_change_keeps_its_timer_so_a_silent_next_primary_is_passed_over() -> None:
    """Found by the simulator (custody, drop+forged-view-change, seed 50050): the three correct
    replicas were changing to a view whose primary was the faulty one when a quorum's commits
    of the old view decided a block; the decision cleared their timer, and they waited for
    that primary's new view for ever."""
    r = Replica(CONFIG, keys(2), HOLDS_ALL)
    r.submit([batch(1), batch(2)], 0.0)
    p = proposal(1, bytes(32), (batch(1),))
    r.receive(sign_message(keys(0), PrePrepare(0, p)), 0.0)
    t = r.deadline + 0.001
    sent = [a.message.body for a in r.tick(t) if isinstance(a, Send)]
    assert any(isinstance(m, ViewChange) and m.view == 1 for m in sent) and r.changing_to == 1
    for i in (0, 1, 3):  # the old view's commits still come in: the block is decided
        r.receive(sign_message(keys(i), Commit(0, 1, p.digest)), t + 0.01)
    assert r.height == 1 and r.changing_to == 1
    assert r.deadline is not None  # replica 1, primary of view 1, never sends its new view
    sent = [a.message.body for a in r.tick(r.deadline + 0.001) if isinstance(a, Send)]
    assert any(isinstance(m, ViewChange) and m.view == 2 for m in sent) and r.changing_to == 2


def test_a_backup_votes_only_once_it_holds_the_blocks_batches_and_fetches_them_first() -> None:
    """A commit quorum must mean f+1 correct replicas stored every batch of the block."""
    ledger = DigestLedger()
    r = Replica(CONFIG, keys(1), ledger)
    p = proposal(1, bytes(32), (batch(1), batch(2)))
    ledger.held.add(batch(1))
    actions = r.receive(sign_message(keys(0), PrePrepare(0, p)), 0.0)
    assert actions == []  # no vote; no fetch yet either: a forward or fetch under way may bring it
    assert not [a for a in r.tick(CONFIG.base_timeout / 8) if isinstance(a, Fetch)]
    fetches = [a for a in r.tick(CONFIG.base_timeout / 4) if isinstance(a, Fetch)]
    assert [(f.batches, f.peers[0]) for f in fetches] == [((batch(2),), 0)]  # the primary is asked first
    again = r.tick(CONFIG.base_timeout / 2)  # the answer was lost: asked again
    assert [a.batches for a in again if isinstance(a, Fetch)] == [(batch(2),)]
    ledger.held.add(batch(2))
    actions = r.batches_arrived([batch(2)], 0.6)
    assert [a.message.body for a in actions if isinstance(a, Send)] == [Prepare(0, 1, p.digest)]


def test_a_header_that_does_not_match_its_batches_gets_no_vote_but_a_view_change() -> None:
    p = proposal(1, bytes(32), (batch(1), batch(2)))
    lying = Proposal(1, bytes(32), (batch(1),), p.header)  # the header of another batch list
    r = Replica(CONFIG, keys(1), HOLDS_ALL)
    sent = [a.message.body for a in r.receive(sign_message(keys(0), PrePrepare(0, lying)), 0.0) if isinstance(a, Send)]
    assert [type(b) for b in sent] == [ViewChange] and sent[0].view == 1
    honest = Replica(CONFIG, keys(2), HOLDS_ALL)
    assert [a.message.body for a in honest.receive(sign_message(keys(0), PrePrepare(0, p)), 0.0)
            if isinstance(a, Send)] == [Prepare(0, 1, p.digest)]


def test_a_primary_proposes_only_batches_it_holds_and_fetches_the_others_from_who_told_it() -> None:
    ledger = DigestLedger({batch(1)})
    primary = Replica(CONFIG, keys(0), ledger)
    actions = primary.receive(sign_message(keys(2), Forward((batch(1), batch(2)))), 0.0)
    proposals = [a.message.body.proposal for a in actions if isinstance(a, Send)
                 and isinstance(a.message.body, PrePrepare)]
    assert [p.batches for p in proposals] == [(batch(1),)]
    fetches = [a for a in primary.tick(0.6 * CONFIG.base_timeout) if isinstance(a, Fetch)]
    assert [(f.batches, f.peers) for f in fetches] == [((batch(2),), (2, 1, 3))]  # the teller, then the others


def test_made_up_forwarded_digests_cause_no_view_change_and_are_forgotten() -> None:
    """A faulty replica forwarding digests of batches nobody holds must not trigger view
    changes (no correct replica can propose them) nor fill memory for ever."""
    r = Replica(CONFIG, keys(1), DigestLedger())
    r.receive(sign_message(keys(3), Forward((batch(5),))), 0.0)
    t = 0.0
    while t < 10 * CONFIG.max_timeout:
        t += 0.05
        r.tick(t)
    assert r.view_change_count == 0 and r.changing_to is None
    assert batch(5) not in r.pending


# -- custody (payload_copies < n) ------------------------------------------------------------

CUSTODY = ConsensusConfig(n=4, checkpoint_interval=2, base_timeout=1.0, payload_copies=2)


def custody_forward(sender: int, *batches: bytes, headers: tuple[bytes, ...] | None = None) -> Signed:
    from hub.consensus.ledger import sim_header

    return sign_message(keys(sender), Forward(batches, headers if headers is not None else
                                              tuple(sim_header(b) for b in batches)))


def test_with_custody_one_replica_besides_the_teller_fetches_and_says_so_and_the_others_do_not() -> None:
    """payload_copies = 2: of the three replicas told by replica 0, exactly one (picked by the
    digest, alike everywhere) fetches the batch; once stored it forwards it in turn."""
    b = batch(7)
    fetchers = []
    for i in (1, 2, 3):
        r = Replica(CUSTODY, keys(i), DigestLedger())
        if any(isinstance(a, Fetch) for a in r.receive(custody_forward(0, b), 0.0)):
            fetchers.append((i, r))
    assert len(fetchers) == 1
    i, r = fetchers[0]
    r.ledger.held.add(b)
    sent = [a.message.body for a in r.batches_arrived([b], 0.1) if isinstance(a, Send)]
    assert any(isinstance(m, Forward) and m.batches == (b,) and m.headers for m in sent)


def _backup_told_by_one_holder(b: bytes) -> tuple[Replica, int, Proposal]:
    """A backup that is not a custodian of `b`, told of it by replica 0 (its only holder so
    far), then sent replica 0's proposal of it: one holder is not enough (it may be the faulty
    one), so no vote; no fetch yet either: the custodian's forward was sent before the
    pre-prepare and is likely on its way."""
    backup = next(i for i in (1, 2, 3) if not Replica(CUSTODY, keys(i), DigestLedger())._custodian(b, 0))
    r = Replica(CUSTODY, keys(backup), DigestLedger())
    r.receive(custody_forward(0, b), 0.0)
    p = proposal(1, bytes(32), (b,))
    assert r.receive(sign_message(keys(0), PrePrepare(0, p)), 0.0) == []
    return r, backup, p


def test_with_custody_a_replica_votes_for_a_batch_it_does_not_store_once_f_plus_1_say_they_do() -> None:
    b = batch(8)
    r, backup, p = _backup_told_by_one_holder(b)
    assert r.tick(0.1) == []
    other = next(i for i in (1, 2, 3) if i != backup)
    acts = r.receive(custody_forward(other, b), 0.15)
    assert [a.message.body for a in acts if isinstance(a, Send)] == [Prepare(0, 1, p.digest)]
    assert not r.ledger.holds(b)


def test_with_custody_a_replica_fetches_a_batch_only_one_replica_says_it_stores_after_its_patience() -> None:
    b = batch(8)
    r, _, _ = _backup_told_by_one_holder(b)
    acts = r.tick(CUSTODY.base_timeout / 4)  # the custodian never said it stores b: fetch it
    assert [(a.batches, a.peers[0]) for a in acts if isinstance(a, Fetch)] == [((b,), 0)]
    assert not any(isinstance(a, Send) and isinstance(a.message.body, Prepare) for a in acts)


def test_with_custody_a_forward_whose_header_is_not_the_batchs_counts_for_nothing() -> None:
    b = batch(9)
    r = Replica(CUSTODY, keys(1), DigestLedger())
    assert r.receive(custody_forward(2, b, headers=(b"not the header",)), 0.0) == []
    assert r.receive(sign_message(keys(2), Forward((b,))), 0.0) == []  # no headers at all
    assert b not in r.pending and not r.ledger.knows(b)
    r.receive(custody_forward(3, b), 0.0)
    r.receive(custody_forward(2, b, headers=(b"lie",)), 0.0)
    assert r.holders[b] == {3}


def test_payload_copies_below_f_plus_1_is_refused() -> None:
    with pytest.raises(ValueError, match="f\\+1 = 2"):
        ConsensusConfig(n=4, payload_copies=1)
