"""A replica's votes and decided blocks survive a crash (SQLite, synchronous=FULL), with real keys."""

from __future__ import annotations

import hashlib
import sqlite3

import pytest

from hub.consensus.config import ConsensusConfig
from hub.consensus.core import Replica, Send
from hub.consensus.journal import ConsensusJournal, JournalError
from hub.consensus.ledger import DigestLedger
from hub.consensus.keys import Ed25519ReplicaKeys, sign_message
from hub.consensus.messages import Commit, PrePrepare, Prepare, Proposal
from protos.signing import Signer

CONFIG = ConsensusConfig(n=4, checkpoint_interval=2)
SIGNERS = {i: Signer.generate() for i in range(4)}
PUBLIC = {i: s.public_key for i, s in SIGNERS.items()}


class HoldsAll(DigestLedger):
    """A ledger that holds every batch: these tests are about votes, not batch data."""

    def holds(self, batch: bytes) -> bool:
        return True


HOLDS_ALL = HoldsAll()


def proposal(height: int, prev: bytes, batches: tuple[bytes, ...]) -> Proposal:
    """A proposal with the header the simulator's ledger builds for it, carrying the commit
    votes of replicas 0, 1 and 2 for the block before it (view 0)."""
    votes = tuple(sign_message(keys(r), Commit(0, height - 1, prev)) for r in (0, 1, 2)) if height > 1 else ()
    return Proposal(height, prev, batches, HOLDS_ALL.build(height, prev, batches, 0.0), 0, votes)


def keys(i: int) -> Ed25519ReplicaKeys:
    return Ed25519ReplicaKeys(i, SIGNERS[i], PUBLIC)


def batch(i: int) -> bytes:
    return hashlib.sha256(b"b%d" % i).digest()


def decide_one(journal: ConsensusJournal, replica: Replica, height: int, prev: bytes) -> Proposal:
    """Drive replica 1 through one block with signed messages from the others."""
    p = proposal(height, prev, (batch(height),))
    view = replica.view
    sends = journal.record(replica.receive(sign_message(keys(0), PrePrepare(view, p)), 0.0))
    assert any(isinstance(s.message.body, Prepare) for s in sends)
    for r in (2, 3):
        journal.record(replica.receive(sign_message(keys(r), Prepare(view, height, p.digest)), 0.0))
    for r in (0, 2):
        journal.record(replica.receive(sign_message(keys(r), Commit(view, height, p.digest)), 0.0))
    assert replica.height == height
    return p


def test_a_replica_restarted_from_its_journal_resumes_and_does_not_vote_twice(tmp_path) -> None:
    journal = ConsensusJournal(tmp_path / "replica-1.sqlite")
    r = Replica(CONFIG, keys(1), HOLDS_ALL)
    p1 = decide_one(journal, r, 1, bytes(32))
    p2 = decide_one(journal, r, 2, p1.digest)
    # it prepares height 3, then crashes before anything else
    p3 = proposal(3, p2.digest, (batch(3),))
    sends = journal.record(r.receive(sign_message(keys(0), PrePrepare(0, p3)), 0.0))
    assert [type(s.message.body) for s in sends] == [Prepare]
    journal.close()

    journal = ConsensusJournal(tmp_path / "replica-1.sqlite")
    durable, certs = journal.load()
    assert [c.proposal for c in certs] == [p1, p2]
    assert [(v.kind, v.height, v.digest) for v in durable.votes] == [("prepare", 3, p3.digest)]
    again = Replica(CONFIG, keys(1), HOLDS_ALL, committed=certs, durable=durable)
    assert again.height == 2 and again.last_digest == p2.digest
    other = proposal(3, p2.digest, (batch(99),))
    sends = journal.record(again.receive(sign_message(keys(0), PrePrepare(0, other)), 1.0))
    assert not [s for s in sends if isinstance(s, Send) and isinstance(s.message.body, Prepare)]
    journal.close()


def test_a_damaged_journal_names_the_block(tmp_path) -> None:
    path = tmp_path / "replica-1.sqlite"
    journal = ConsensusJournal(path)
    r = Replica(CONFIG, keys(1), HOLDS_ALL)
    p1 = decide_one(journal, r, 1, bytes(32))
    decide_one(journal, r, 2, p1.digest)
    journal.close()
    db = sqlite3.connect(path)
    db.execute("UPDATE decided SET certificate = substr(certificate, 1, 40) WHERE height = 2")
    db.commit()
    db.close()
    with pytest.raises(JournalError, match="decided block 2: truncated"):
        ConsensusJournal(path).load()
    db = sqlite3.connect(path)
    db.execute("DELETE FROM decided WHERE height = 1")
    db.commit()
    db.close()
    with pytest.raises(JournalError, match="decided block 2: expected height 1; the journal lost a block"):
        ConsensusJournal(path).load()
