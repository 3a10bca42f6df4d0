"""Tests for edge/queue.py (the agent's durable queue): sealing readings into the signed batch chain, pending batches and deleting receipted batches."""

from __future__ import annotations

import pytest
from queuefixtures import GW, SIGNER, T0, S, all_entries, reading, seal_all, sealer

from edge.queue import DurableQueue
from protos.batch import check_batch
from protos.canonical import batch_hash, encode_entry
from protos.records import (
    ZERO_HASH,
)

# ---------------------------------------------------------------------------
# Batches.
# ---------------------------------------------------------------------------


def test_seal_next_batch_takes_entries_in_order_and_chains(q):
    rs = [reading("MTR-1", i) for i in range(1, 6)]
    q.append_readings(rs[:3])
    q.append_readings(rs[3:])
    assert q.seal_next_batch(10, sealer()) is not None
    assert q.seal_next_batch(10, sealer()) is None  # nothing left
    q.append_readings([reading("MTR-1", 6)])
    h2 = q.seal_next_batch(10, sealer())
    b1, b2 = q.pending_batches(0, 10)
    assert b1.header.seq == 1 and b2.header.seq == 2 and h2 == b2.header
    assert b1.header.prev_hash == ZERO_HASH
    assert b2.header.prev_hash == b1.hash == batch_hash(b1.header)
    assert b2.hash == batch_hash(b2.header)
    assert list(b1.entries) == rs
    assert list(b2.entries) == [reading("MTR-1", 6)]
    # what is stored verifies as a batch
    for b in (b1, b2):
        entries = [encode_entry(e) for e in b.entries]
        assert check_batch(b.header, b.signature, entries, [e.timestamp_ns for e in b.entries],
                           SIGNER.public_key) == b.hash
    assert q.batch_hash(1) == b1.hash and q.batch_hash(3) is None


def test_seal_respects_max_entries(q):
    q.append_readings([reading("MTR-1", i) for i in range(1, 6)])
    headers = seal_all(q, max_entries=2)
    assert [h.entry_count for h in headers] == [2, 2, 1]
    assert [h.seq for h in headers] == [1, 2, 3]
    batches = q.pending_batches(0, 10)
    assert [[e.seq for e in b.entries] for b in batches] == [[1, 2], [3, 4], [5]]
    assert q.stats().unbatched_entries == 0


def test_entries_appended_during_seal_are_not_swept_in(q):
    q.append_readings([reading("MTR-1", 1), reading("MTR-1", 2)])
    q.seal_next_batch(1, sealer())
    (b,) = q.pending_batches(0, 10)
    assert [e.seq for e in b.entries] == [1]
    assert q.stats().unbatched_entries == 1


def test_batch_chain_continues_across_reopen(qpath):
    q1 = DurableQueue(qpath, GW)
    q1.append_readings([reading("MTR-1", 1)])
    seal_all(q1)
    h1_hash = q1.batch_hash(1)
    q1.close()
    q2 = DurableQueue(qpath, GW)
    try:
        q2.append_readings([reading("MTR-1", 2)])
        (h2,) = seal_all(q2)
        assert h2.seq == 2 and h2.prev_hash == h1_hash
        # also after the earlier batch was receipted and deleted
        q2.delete_batch(1)
        q2.delete_batch(2)
    finally:
        q2.close()
    q3 = DurableQueue(qpath, GW)
    try:
        q3.append_readings([reading("MTR-1", 3)])
        (h3,) = seal_all(q3)
        assert h3.seq == 3 and h3.prev_hash == batch_hash(h2)
    finally:
        q3.close()


def test_failing_seal_callback_changes_nothing(q):
    q.append_readings([reading("MTR-1", 1)])

    def broken(*_):
        raise RuntimeError("signer unavailable")

    with pytest.raises(RuntimeError):
        q.seal_next_batch(10, broken)
    assert q.stats().batches == 0 and q.stats().unbatched_entries == 1
    (h,) = seal_all(q)
    assert h.seq == 1 and h.prev_hash == ZERO_HASH


def test_pending_batches_after_seq_and_limit(q):
    for i in range(1, 6):
        q.append_readings([reading("MTR-1", i)])
        q.seal_next_batch(10, sealer())
    assert [b.header.seq for b in q.pending_batches(0, 100)] == [1, 2, 3, 4, 5]
    assert [b.header.seq for b in q.pending_batches(2, 100)] == [3, 4, 5]
    assert [b.header.seq for b in q.pending_batches(2, 2)] == [3, 4]
    assert q.pending_batches(5, 10) == []
    b = q.pending_batches(3, 1)[0]
    assert b.entries == (reading("MTR-1", 4),)
    assert isinstance(b.signature, bytes) and isinstance(b.hash, bytes)


def test_delete_batch_removes_only_that_batch_and_its_entries(q, qpath):
    for i in range(1, 4):
        q.append_readings([reading("MTR-1", 2 * i - 1), reading("MTR-1", 2 * i)])
        q.seal_next_batch(10, sealer())
    q.append_readings([reading("MTR-1", 7)])  # unbatched
    q.record_failure("MTR-2", T0, "timeout", 60 * S)  # open gap
    q.delete_batch(2)
    assert [b.header.seq for b in q.pending_batches(0, 10)] == [1, 3]
    assert [e.seq for b in q.pending_batches(0, 10) for e in b.entries] == [1, 2, 5, 6]
    st = q.stats()
    assert (st.unbatched_entries, st.batches, st.open_gaps) == (1, 2, 1)
    assert [e.seq for e in all_entries(qpath)] == [1, 2, 5, 6, 7]
    q.delete_batch(2)  # idempotent: a receipt may arrive twice
    q.delete_batch(99)
    assert q.stats() == st
