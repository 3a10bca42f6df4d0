"""Tests for edge/queue.py (the agent's durable queue): bounded disk: a full queue keeps the oldest evidence and records refused polls as gaps."""

from __future__ import annotations

import pytest
from queuefixtures import (
    GW,
    LIMIT,
    T0,
    S,
    _fill,
    _open_gaps,
    all_entries,
    reading,
    seal_all,
)

from edge.queue import DurableQueue, QueueError
from protos.canonical import decode_entry
from protos.records import (
    Gap,
    Reading,
)

# ---------------------------------------------------------------------------
# Bounded disk: the oldest evidence is kept, refused readings become gaps.
# ---------------------------------------------------------------------------


def test_byte_count_runs_with_every_commit(q):
    q.append_readings([reading("MTR-1", 1), reading("MTR-2", 1)])
    q.record_failure("MTR-3", T0, "timeout", 60 * S)
    assert q.stats().bytes == q.recount_bytes() > 0
    q.close_all_gaps()
    seal_all(q, max_entries=2)
    assert q.stats().bytes == q.recount_bytes()
    q.delete_batch(1)
    assert q.stats().bytes == q.recount_bytes()
    q.delete_batch(2)
    assert q.stats().bytes == q.recount_bytes() == 0


def test_full_queue_keeps_the_oldest_evidence_and_records_refused_polls_as_gaps(qpath, caplog):
    meters = ["MTR-1", "MTR-2"]
    q = DurableQueue(qpath, GW, max_bytes=LIMIT)
    try:
        polls = 0
        with caplog.at_level("WARNING", logger="gridtrace.edge.queue"):
            while not q.full:
                _fill(q, meters, T0 + polls * S)
                polls += 1
                if polls % 50 == 0:
                    seal_all(q, max_entries=100)  # the sealer keeps sealing; nothing is receipted
            stored_seq = {m: q.next_seq(m) - 1 for m in meters}
            # the round that hit the limit may have stored the first meters' readings
            first_refused = {m: T0 + (min(polls, stored_seq[m])) * S for m in meters}
            refused_then = {m: int(stored_seq[m] < polls) for m in meters}
            for k in range(200):  # 200 more polls while nothing is receipted
                assert _fill(q, meters, T0 + (polls + k) * S) == (0, 2)
            polls += 200
        st = q.stats()
        assert st.full and st.bytes <= LIMIT and st.bytes == q.recount_bytes()
        # the seq of a refused reading is not used: the next stored reading follows on
        assert {m: q.next_seq(m) for m in meters} == {m: stored_seq[m] + 1 for m in meters}
        gaps = _open_gaps(qpath)
        assert [g[0] for g in gaps] == meters
        for meter_id, from_ns, to_ns, reason, missed in gaps:
            assert reason == "queue-full"
            assert (from_ns, to_ns) == (first_refused[meter_id], T0 + (polls - 1) * S)
            assert missed == 200 + refused_then[meter_id]
        # every stored reading is still there, contiguous from 1: nothing old was dropped
        for m in meters:
            assert [e.seq for e in all_entries(qpath) if isinstance(e, Reading) and e.meter_id == m] == list(
                range(1, stored_seq[m] + 1)
            )
        full_logs = [r for r in caplog.records if "queue full" in r.getMessage()]
        assert len(full_logs) == 1 and "max_mb" in full_logs[0].getMessage()

        # Receipts arrive: room again below the resume mark; the gaps close into entries.
        seal_all(q, max_entries=100)
        caplog.clear()
        with caplog.at_level("WARNING", logger="gridtrace.edge.queue"):
            deleted = 0
            for b in q.pending_batches(0, 1000):
                q.delete_batch(b.header.seq)
                deleted += 1
                assert _fill(q, meters, T0 + polls * S)[0] in (0, 2)
                polls += 1
                if not q.full:
                    break
        assert not q.full and deleted > 1  # not the first freed byte: the queue does not flap
        assert _open_gaps(qpath) == []
        assert [r.getMessage() for r in caplog.records if "room again" in r.getMessage()] != []
        assert len(caplog.records) == 1
        seal_all(q)
        entries = [e for b in q.pending_batches(0, 1000) for e in b.entries]
        gap_entries = [e for e in entries if isinstance(e, Gap)]
        assert sorted(gap_entries, key=lambda g: g.meter_id) == [
            Gap(m, first_refused[m], T0 + (polls - 2) * S, "queue-full", 200 + refused_then[m] + deleted - 1)
            for m in meters
        ]
        for m in meters:  # readings resume with the next number: no hole in the sequence
            after = [e.seq for e in entries if isinstance(e, Reading) and e.meter_id == m]
            assert after[-1] == stored_seq[m] + 1
    finally:
        q.close()


def test_full_state_and_open_gaps_survive_restart_and_a_larger_limit_resumes(qpath, caplog):
    q = DurableQueue(qpath, GW, max_bytes=LIMIT)
    polls = 0
    while not q.full:
        _fill(q, ["MTR-1"], T0 + polls * S)
        polls += 1
    last = q.next_seq("MTR-1") - 1
    q.close()
    q = DurableQueue(qpath, GW, max_bytes=LIMIT)
    try:
        assert q.full and q.stats().full
        assert _fill(q, ["MTR-1"], T0 + polls * S) == (0, 1)
    finally:
        q.close()
    q = DurableQueue(qpath, GW, max_bytes=4 * LIMIT)  # the engineer raised max_mb
    try:
        with caplog.at_level("WARNING", logger="gridtrace.edge.queue"):
            assert _fill(q, ["MTR-1"], T0 + (polls + 1) * S) == (1, 0)
        assert not q.full and "room again" in caplog.text
        seal_all(q)
        entries = [e for b in q.pending_batches(0, 1000) for e in b.entries]
        assert entries[-2:] == [
            Gap("MTR-1", T0 + (polls - 1) * S, T0 + polls * S, "queue-full", 2),
            reading("MTR-1", last + 1, ts=T0 + (polls + 1) * S),
        ]
    finally:
        q.close()


def test_while_full_the_entries_written_stay_within_the_limit(qpath):
    """Meters that flap between failing and answering while the queue is full: their polls
    extend one gap each; entries do not grow past the limit however long it lasts."""
    q = DurableQueue(qpath, GW, max_bytes=LIMIT)
    meters = [f"MTR-{i}" for i in range(1, 9)]
    try:
        polls = 0
        for m in meters[4:]:  # outages that began before the queue filled
            q.record_failure(m, T0, "timeout", 10 * S)
        while not q.full:
            _fill(q, meters[:4], T0 + polls * S)
            polls += 1
        before = q.stats()
        gaps_before = {g[0]: g[4] for g in _open_gaps(qpath)}
        last_id = q._reader.execute("SELECT MAX(id) FROM entries").fetchone()[0]
        for k in range(400):
            ts = T0 + (polls + k) * S
            for i, m in enumerate(meters):
                if (k + i) % 2:
                    q.record_failure(m, ts, ["timeout", "modbus-exception-2"][k % 3 == 0], 10 * S)
                else:
                    q.append_readings([reading(m, q.next_seq(m), ts=ts)])
        st = q.stats()
        assert st.full and st.bytes <= LIMIT
        assert st.unbatched_entries - before.unbatched_entries <= len(meters)  # one closed gap per meter at most
        assert st.bytes == q.recount_bytes()
        # every poll is on record: in the gap still open, or in a gap entry closed meanwhile
        open_now = {g[0]: (g[3], g[4]) for g in _open_gaps(qpath)}
        closed = [decode_entry(b) for (b,) in q._reader.execute("SELECT body FROM entries WHERE id > ?", (last_id,))]
        assert all(isinstance(e, Gap) for e in closed)
        for m in meters:
            assert open_now[m][0] == "queue-full"
            in_entries = sum(g.missed_polls for g in closed if g.meter_id == m)
            assert open_now[m][1] + in_entries - gaps_before.get(m, 0) == 400
    finally:
        q.close()


def test_a_full_queue_still_refuses_a_sequence_number_that_does_not_follow(qpath):
    q = DurableQueue(qpath, GW, max_bytes=LIMIT)
    try:
        polls = 0
        while not q.full:
            _fill(q, ["MTR-1"], T0 + polls * S)
            polls += 1
        nxt = q.next_seq("MTR-1")
        before = _open_gaps(qpath)
        with pytest.raises(QueueError, match="does not follow"):
            q.append_readings([reading("MTR-1", nxt + 1)])
        with pytest.raises(QueueError, match="does not follow"):
            q.append_readings([reading("MTR-1", nxt), reading("MTR-1", nxt)])
        assert _open_gaps(qpath) == before
        # several readings of one meter in one call: numbered on as if stored
        q.append_readings([reading("MTR-1", nxt), reading("MTR-1", nxt + 1)])
        assert q.next_seq("MTR-1") == nxt
        assert _open_gaps(qpath)[0][4] == before[0][4] + 2
    finally:
        q.close()


def test_pollers_of_several_connections_see_one_full_state_and_log_it_once(qpath, caplog):
    """Each connection's poller commits from its own thread; the full state lives in the
    file, so the transition is decided and logged once however the commits interleave."""
    import threading

    q = DurableQueue(qpath, GW, max_bytes=LIMIT)
    errors = []

    def poller(meter: str) -> None:
        try:
            for k in range(250):
                q.append_readings([reading(meter, q.next_seq(meter), ts=T0 + k * S)])
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    try:
        with caplog.at_level("WARNING", logger="gridtrace.edge.queue"):
            threads = [threading.Thread(target=poller, args=(f"MTR-{i}",)) for i in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        assert errors == []
        assert q.full and q.stats().bytes <= LIMIT
        assert len([r for r in caplog.records if "queue full" in r.getMessage()]) == 1
        assert not [r for r in caplog.records if "room again" in r.getMessage()]
        gaps = _open_gaps(qpath)
        assert len(gaps) == 4 and {g[3] for g in gaps} == {"queue-full"}
        for meter, _, _, _, missed in gaps:  # every poll is a stored reading or a missed one
            assert q.next_seq(meter) - 1 + missed == 250
    finally:
        q.close()


def test_limit_too_small_is_refused(qpath):
    with pytest.raises(QueueError, match="at least 64 KiB"):
        DurableQueue(qpath, GW, max_bytes=1000)
