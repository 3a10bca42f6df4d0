"""Tests for edge/queue.py (the agent's durable queue): readings and per-meter sequence numbers."""

from __future__ import annotations

import pytest
from queuefixtures import GW, T0, S, reading, seal_all

from edge.queue import DurableQueue, QueueError

# ---------------------------------------------------------------------------
# Readings and sequence numbers.
# ---------------------------------------------------------------------------


def test_readings_survive_reopen(qpath):
    q1 = DurableQueue(qpath, GW)
    rs = [reading("MTR-1", 1), reading("MTR-2", 1)]
    q1.append_readings(rs)
    q1.append_readings([reading("MTR-1", 2)])
    q1.close()

    q2 = DurableQueue(qpath, GW)
    try:
        assert q2.stats().unbatched_entries == 3
        assert q2.oldest_unbatched() == (3, T0 + S)
        seal_all(q2)
        (batch,) = q2.pending_batches(0, 10)
        assert list(batch.entries) == [*rs, reading("MTR-1", 2)]
    finally:
        q2.close()


def test_next_seq_continues_after_reopen(qpath):
    q1 = DurableQueue(qpath, GW)
    assert q1.next_seq("MTR-1") == 1
    for seq in range(1, 6):
        q1.append_readings([reading("MTR-1", q1.next_seq("MTR-1"))])
    q1.append_readings([reading("MTR-2", 1)])
    q1.close()
    q2 = DurableQueue(qpath, GW)
    try:
        assert q2.next_seq("MTR-1") == 6
        assert q2.next_seq("MTR-2") == 2
        assert q2.next_seq("MTR-3") == 1
        q2.append_readings([reading("MTR-1", 6)])
        assert q2.next_seq("MTR-1") == 7
    finally:
        q2.close()


def test_next_seq_survives_deleted_batches(q):
    q.append_readings([reading("MTR-1", 1), reading("MTR-1", 2)])
    (h,) = seal_all(q)
    q.delete_batch(h.seq)
    assert q.stats().batches == 0
    assert q.next_seq("MTR-1") == 3  # never reuse a number, even when its entry is gone
    with pytest.raises(QueueError):
        q.append_readings([reading("MTR-1", 1)])


@pytest.mark.parametrize("bad_seq", [1, 3, 100])  # 1 repeats, 3 skips, 100 jumps
def test_append_refuses_seq_that_does_not_follow_and_commits_nothing(q, bad_seq):
    q.append_readings([reading("MTR-1", 1), reading("MTR-2", 1)])
    before = q.stats()
    with pytest.raises(QueueError, match=rf"meter MTR-1: reading seq {bad_seq} does not follow 1"):
        # MTR-2's reading is fine and comes first: it must not be committed either
        q.append_readings([reading("MTR-2", 2), reading("MTR-1", bad_seq)])
    assert q.stats() == before
    assert q.next_seq("MTR-1") == 2
    assert q.next_seq("MTR-2") == 2
    # the queue is still usable afterwards
    q.append_readings([reading("MTR-2", 2), reading("MTR-1", 2)])
    assert q.stats().unbatched_entries == 4


def test_append_refuses_first_seq_other_than_one(q):
    with pytest.raises(QueueError, match="does not follow 0"):
        q.append_readings([reading("MTR-9", 2)])
    assert q.next_seq("MTR-9") == 1


def test_several_readings_of_one_meter_in_one_call(q):
    q.append_readings([reading("MTR-1", 1), reading("MTR-1", 2), reading("MTR-1", 3)])
    assert q.next_seq("MTR-1") == 4
    with pytest.raises(QueueError):
        q.append_readings([reading("MTR-1", 4), reading("MTR-1", 4)])
    assert q.next_seq("MTR-1") == 4


def test_refused_append_keeps_open_gap(q):
    q.record_failure("MTR-1", T0, "timeout", 60 * S)
    q.append_readings([reading("MTR-2", 1)])
    with pytest.raises(QueueError):
        q.append_readings([reading("MTR-1", 5)])
    assert q.stats().open_gaps == 1  # closing the gap was rolled back with the rest
    assert q.stats().unbatched_entries == 1
