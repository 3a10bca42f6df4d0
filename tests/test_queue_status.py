"""Tests for edge/queue.py (the agent's durable queue): status for `gridtrace edge status`, read while the agent runs."""

from __future__ import annotations

import sqlite3

import pytest
from queuefixtures import GW, LIMIT, T0, S, _fill, _old_queue, reading, seal_all

from edge.queue import DurableQueue, QueueError

# ---------------------------------------------------------------------------
# Status for `gridtrace edge status`, read while the agent runs.
# ---------------------------------------------------------------------------


def test_read_status_while_the_queue_is_in_use(qpath):
    from edge.queue_status import ErrorCount, OpenGap, read_status

    q = DurableQueue(qpath, GW, max_bytes=LIMIT)
    try:
        q.append_readings([reading("MTR-1", 1), reading("MTR-2", 1)])
        q.append_readings([reading("MTR-1", 2)])
        q.record_failure("MTR-2", T0 + 5 * S, "timeout", 60 * S, message="no answer from unit 2: check wiring")
        q.record_failure("MTR-2", T0 + 6 * S, "timeout", 60 * S)
        q.record_failure("MTR-3", T0 + 7 * S, "modbus-exception-2", 60 * S)
        seal_all(q, max_entries=2)
        q.delete_batch(1, received_ns=T0 + 9 * S, hub="hub-b:7700")
        q.append_readings([reading("MTR-1", 3)])

        # a writer holding the database's write lock does not block the reader
        blocker = sqlite3.connect(qpath, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            st = read_status(qpath, now_ns=T0 + 10 * S)
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert st.gateway_id == GW and st.max_bytes == LIMIT and st.full_since_ns is None
        assert (st.entries, st.unbatched_entries, st.batches) == (2, 1, 1)
        assert st.bytes == q.stats().bytes == q.recount_bytes()
        assert st.oldest_ts_ns == T0 + 2 * S and st.oldest_age_s == 8.0
        assert (st.last_batch_seq, st.last_receipt_seq, st.last_receipt_ns, st.last_receipt_hub) == (
            2, 1, T0 + 9 * S, "hub-b:7700"
        )
        m1, m2, m3 = st.meters
        assert (m1.meter_id, m1.last_seq, m1.last_reading_ns, m1.errors, m1.open_gap) == (
            "MTR-1", 3, T0 + 3 * S, (), None
        )
        assert m2.last_seq == 1 and m2.errors == (ErrorCount("timeout", 2, T0 + 6 * S),)
        assert m2.last_error == "timeout" and m2.last_error_ns == T0 + 6 * S  # no message given the 2nd time
        assert m2.open_gap == OpenGap("MTR-2", T0 + 5 * S, T0 + 6 * S, "timeout", 2)
        assert (m3.last_seq, m3.last_reading_ns, m3.errors) == (0, None, (ErrorCount("modbus-exception-2", 1, T0 + 7 * S),))
        assert st.open_gaps == (m2.open_gap, m3.open_gap)
        # the reader left nothing behind that changes the queue
        assert q.next_seq("MTR-3") == 1
        q.record_failure("MTR-2", T0 + 11 * S, "timeout", 60 * S, message="no answer: check the unit id")
        assert read_status(qpath).meters[1].last_error == "no answer: check the unit id"
    finally:
        q.close()


def test_read_status_shows_a_full_queue_and_refused_polls(qpath):
    from edge.queue_status import read_status

    q = DurableQueue(qpath, GW, max_bytes=LIMIT)
    try:
        polls = 0
        while not q.full:
            _fill(q, ["MTR-1"], T0 + polls * S)
            polls += 1
        _fill(q, ["MTR-1"], T0 + polls * S)
    finally:
        q.close()
    st = read_status(qpath)
    assert st.full_since_ns == T0 + (polls - 1) * S and st.bytes <= LIMIT
    (m,) = st.meters
    assert [(e.reason, e.count) for e in m.errors] == [("queue-full", 2)]
    assert "queue full" in m.last_error and m.open_gap.reason == "queue-full"


def test_read_status_errors_name_the_file_and_what_to_do(tmp_path, qpath):
    from edge.queue_status import read_status

    with pytest.raises(QueueError, match=r"no queue at .*queue.sqlite; check \[gateway\] queue"):
        read_status(qpath)
    _old_queue(qpath)
    with pytest.raises(QueueError, match="start the agent once"):
        read_status(qpath)
    newer = tmp_path / "newer.sqlite"
    DurableQueue(newer, GW).close()
    db = sqlite3.connect(newer)
    db.execute("PRAGMA user_version = 99")
    db.commit()
    db.close()
    with pytest.raises(QueueError, match="newer gridtrace"):
        DurableQueue(newer, GW)
    with pytest.raises(QueueError, match="layout 99"):
        read_status(newer)
