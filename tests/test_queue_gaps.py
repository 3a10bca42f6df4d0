"""Tests for edge/queue.py (the agent's durable queue): gaps: failed polls open and extend gaps, readings close them."""

from __future__ import annotations

from queuefixtures import GW, T0, S, _open_gaps, reading, seal_all

from edge.queue import DurableQueue, QueueError
from protos.records import (
    Gap,
    RecordError,
)

# ---------------------------------------------------------------------------
# Gaps.
# ---------------------------------------------------------------------------


def _gaps(queue: DurableQueue) -> list:
    seal_all(queue)
    return [e for b in queue.pending_batches(0, 1000) for e in b.entries if isinstance(e, Gap)]


def test_record_failure_opens_and_extends_a_gap(q, qpath):
    q.record_failure("MTR-1", T0, "timeout", 60 * S)
    assert q.stats().open_gaps == 1
    assert q.stats().unbatched_entries == 0  # an open gap is not an entry yet
    assert _open_gaps(qpath) == [("MTR-1", T0, T0, "timeout", 1)]
    q.record_failure("MTR-1", T0 + S, "timeout", 60 * S)
    q.record_failure("MTR-1", T0 + 2 * S, "timeout", 60 * S)
    assert _open_gaps(qpath) == [("MTR-1", T0, T0 + 2 * S, "timeout", 3)]
    assert q.stats().unbatched_entries == 0


def test_reading_again_closes_the_gap_before_the_reading(q):
    q.record_failure("MTR-1", T0, "timeout", 60 * S)
    q.record_failure("MTR-1", T0 + S, "timeout", 60 * S)
    q.append_readings([reading("MTR-1", 1, ts=T0 + 2 * S)])
    assert q.stats().open_gaps == 0
    seal_all(q)
    (b,) = q.pending_batches(0, 10)
    assert list(b.entries) == [Gap("MTR-1", T0, T0 + S, "timeout", 2), reading("MTR-1", 1, ts=T0 + 2 * S)]
    assert (b.header.first_ns, b.header.last_ns) == (T0 + S, T0 + 2 * S)


def test_readings_of_other_meters_leave_the_gap_open(q):
    q.record_failure("MTR-1", T0, "timeout", 60 * S)
    q.append_readings([reading("MTR-2", 1)])
    assert q.stats().open_gaps == 1


def test_old_gap_is_reported_while_the_outage_lasts(q, qpath):
    report = 10 * S
    for k in range(12):  # one failure per second for 12 s
        q.record_failure("MTR-1", T0 + k * S, "timeout", report)
    # at k=10 the gap (T0..T0+9s, 10 polls) was closed into an entry, a new one opened
    assert _open_gaps(qpath) == [("MTR-1", T0 + 10 * S, T0 + 11 * S, "timeout", 2)]
    assert _gaps(q) == [Gap("MTR-1", T0, T0 + 9 * S, "timeout", 10)]


def test_changed_reason_closes_the_gap(q, qpath):
    q.record_failure("MTR-1", T0, "timeout", 60 * S)
    q.record_failure("MTR-1", T0 + S, "timeout", 60 * S)
    q.record_failure("MTR-1", T0 + 2 * S, "modbus-exception-2", 60 * S)
    assert _open_gaps(qpath) == [("MTR-1", T0 + 2 * S, T0 + 2 * S, "modbus-exception-2", 1)]
    assert _gaps(q) == [Gap("MTR-1", T0, T0 + S, "timeout", 2)]


def test_close_all_gaps(q, qpath):
    q.record_failure("MTR-1", T0, "timeout", 60 * S)
    q.record_failure("MTR-2", T0 + S, "unreachable", 60 * S)
    q.record_failure("MTR-2", T0 + 2 * S, "unreachable", 60 * S)
    q.close_all_gaps()
    assert q.stats().open_gaps == 0
    assert _open_gaps(qpath) == []
    assert sorted(_gaps(q), key=lambda g: g.meter_id) == [
        Gap("MTR-1", T0, T0, "timeout", 1),
        Gap("MTR-2", T0 + S, T0 + 2 * S, "unreachable", 2),
    ]
    q.close_all_gaps()  # nothing open: nothing happens
    assert q.stats().unbatched_entries == 0


def test_open_gap_survives_reopen(qpath):
    q1 = DurableQueue(qpath, GW)
    q1.record_failure("MTR-1", T0, "timeout", 60 * S)
    q1.close()
    q2 = DurableQueue(qpath, GW)
    try:
        q2.record_failure("MTR-1", T0 + S, "timeout", 60 * S)
        q2.append_readings([reading("MTR-1", 1, ts=T0 + 2 * S)])
        assert _gaps(q2) == [Gap("MTR-1", T0, T0 + S, "timeout", 2)]
    finally:
        q2.close()


def test_clock_stepping_back_during_outage_does_not_poison_the_meter(q):
    q.record_failure("MTR-1", T0 + 10 * S, "timeout", 60 * S)
    q.record_failure("MTR-1", T0 + 5 * S, "timeout", 60 * S)  # NTP stepped the clock back
    q.append_readings([reading("MTR-1", 1, ts=T0 + 6 * S)])
    assert q.next_seq("MTR-1") == 2


def test_bad_gap_reason_is_refused_up_front(q):
    try:
        q.record_failure("MTR-1", T0, "x" * 300, 60 * S)
    except (RecordError, QueueError):
        return  # refused at once: fine
    q.append_readings([reading("MTR-1", 1)])
