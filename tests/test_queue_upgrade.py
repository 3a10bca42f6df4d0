"""Tests for edge/queue.py (the agent's durable queue): upgrading a queue file of the previous release, and downtime gaps at start."""

from __future__ import annotations

from queuefixtures import GW, LIMIT, T0, S, _old_queue, reading, seal_all

from edge.queue import DurableQueue

# ---------------------------------------------------------------------------
# Upgrading a queue file of the previous release.
# ---------------------------------------------------------------------------

def test_a_queue_file_of_the_previous_release_is_upgraded_in_place(qpath):
    from edge.queue_status import read_status

    old_hash = _old_queue(qpath)
    q = DurableQueue(qpath, GW, max_bytes=LIMIT)
    try:
        assert q._db.execute("PRAGMA user_version").fetchone()[0] == 1
        st = q.stats()
        assert (st.unbatched_entries, st.batches, st.open_gaps) == (2, 1, 1)
        assert st.bytes == q.recount_bytes() > 0  # counted once, on upgrade
        assert q.next_seq("MTR-1") == 7 and q.next_seq("MTR-2") == 1
        (b,) = q.pending_batches(0, 10)
        assert b.hash == old_hash and [e.seq for e in b.entries] == [3, 4]
        status = read_status(qpath)
        assert status.meters[0].last_reading_ns == T0 + 6 * S  # filled in from the stored entries
        # it keeps working: the chain continues, the old batch is receipted and forgotten
        q.append_readings([reading("MTR-1", 7), reading("MTR-2", 1)])
        (h,) = seal_all(q)
        assert h.seq == 4 and h.prev_hash == old_hash
        q.delete_batch(3)
        assert q.stats().bytes == q.recount_bytes()
        assert read_status(qpath).last_receipt_seq == 3
    finally:
        q.close()
    DurableQueue(qpath, GW).close()  # opening an upgraded file again changes nothing


def test_polls_missed_while_the_agent_was_down_become_a_gap_at_start(tmp_path):
    from edge.queue import AGENT_STOPPED

    q = DurableQueue(tmp_path / "q.sqlite", "gw1")
    t0 = 1_760_000_000_000_000_000
    q.append_readings([_downtime_reading("M1", 1, t0)])
    q.record_failure("M2", t0, "timeout", 60 * 10**9)
    q.close_all_gaps()
    # 100 s later the agent starts again; M1 polls every 1 s, M2 every 10 s, M3 was never polled
    gaps = q.record_downtime({"M1": 1.0, "M2": 10.0, "M3": 1.0}, t0 + 100 * 10**9)
    by_meter = {g.meter_id: g for g in gaps}
    assert set(by_meter) == {"M1", "M2"}
    assert by_meter["M1"].reason == AGENT_STOPPED
    assert (by_meter["M1"].from_ns, by_meter["M1"].to_ns) == (t0 + 10**9, t0 + 100 * 10**9)
    assert by_meter["M1"].missed_polls == 99 and by_meter["M2"].missed_polls == 9
    # a quick restart (less than two intervals) is not an outage
    assert q.record_downtime({"M1": 1.0}, t0 + 100 * 10**9 + 10**9) == []
    q.close()


def _downtime_reading(meter_id: str, seq: int, ts: int):
    from protos.records import ClockStatus, Quality, Quantity, Reading

    return Reading(meter_id, seq, ts, ClockStatus.SYNCHRONIZED, Quality.OK, (Quantity("power_total", "W", 1.0),))
