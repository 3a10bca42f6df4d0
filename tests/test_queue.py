"""Tests for edge/queue.py: the agent's durable local queue.

The queue is where "nothing acknowledged is lost" starts: readings are
committed here before anything else, sequence numbers and the batch chain
survive restarts, and a SIGKILL loses nothing that was reported committed.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.queue import DurableQueue, QueueError
from protos.batch import check_batch, seal_batch
from protos.canonical import batch_hash, encode_entry
from protos.records import ZERO_HASH, ClockStatus, Gap, Quality, Quantity, Reading, RecordError
from protos.signing import Signer, load_private_key, write_private_key

T0 = 1_700_000_000_000_000_000
S = 10**9
GW = "gw1"


def reading(meter: str, seq: int, ts: int | None = None) -> Reading:
    return Reading(
        meter_id=meter,
        seq=seq,
        timestamp_ns=T0 + seq * S if ts is None else ts,
        clock=ClockStatus.SYNCHRONIZED,
        quality=Quality.OK,
        quantities=(Quantity("energy_import", "kWh", float(seq)), Quantity("power", "W", 100.0 + seq)),
    )


SIGNER = Signer(Ed25519PrivateKey.generate())


def sealer(signer: Signer = SIGNER, gateway_id: str = GW, created_ns: int = T0):
    def seal(seq, prev_hash, bodies, timestamps):
        b = seal_batch(signer, gateway_id, seq, prev_hash, bodies, timestamps, created_ns)
        return b.header, b.signature, b.hash

    return seal


@pytest.fixture
def qpath(tmp_path) -> Path:
    return tmp_path / "queue.sqlite"


@pytest.fixture
def q(qpath):
    queue = DurableQueue(qpath, GW)
    yield queue
    queue.close()


def all_entries(path: Path) -> list:
    """Every entry row in the file, in insertion order (read with a separate connection)."""
    from protos.canonical import decode_entry

    db = sqlite3.connect(path)
    try:
        return [decode_entry(b) for (b,) in db.execute("SELECT body FROM entries ORDER BY id")]
    finally:
        db.close()


def seal_all(queue: DurableQueue, max_entries: int = 10_000, signer: Signer = SIGNER) -> list:
    headers = []
    while (h := queue.seal_next_batch(max_entries, sealer(signer))) is not None:
        headers.append(h)
    return headers


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


# ---------------------------------------------------------------------------
# Gaps.
# ---------------------------------------------------------------------------


def _gaps(queue: DurableQueue) -> list:
    seal_all(queue)
    return [e for b in queue.pending_batches(0, 1000) for e in b.entries if isinstance(e, Gap)]


def _open_gaps(path: Path) -> list[tuple]:
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT meter_id, from_ns, to_ns, reason, missed FROM open_gaps ORDER BY meter_id").fetchall()
    finally:
        db.close()


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


# ---------------------------------------------------------------------------
# The file.
# ---------------------------------------------------------------------------


def test_queue_of_another_gateway_is_refused(qpath):
    DurableQueue(qpath, "gw1").close()
    with pytest.raises(QueueError, match=r"belongs to gateway 'gw1', not 'gw2'"):
        DurableQueue(qpath, "gw2")
    DurableQueue(qpath, "gw1").close()  # the owner still opens it


def test_wal_and_synchronous_full(q, qpath):
    db = sqlite3.connect(qpath)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"
    finally:
        db.close()
    assert q._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_creates_parent_directories(tmp_path):
    q = DurableQueue(tmp_path / "a" / "b" / "queue.sqlite", GW)
    q.close()
    assert (tmp_path / "a" / "b" / "queue.sqlite").exists()


# ---------------------------------------------------------------------------
# SIGKILL: nothing that was reported committed is lost.
# ---------------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import sys
    from edge.queue import DurableQueue
    from protos.batch import seal_batch
    from protos.records import ClockStatus, Quality, Quantity, Reading
    from protos.signing import Signer

    path, key = sys.argv[1], sys.argv[2]
    signer = Signer.from_file(key)
    q = DurableQueue(path, "gw1")

    def seal(seq, prev, bodies, ts):
        b = seal_batch(signer, "gw1", seq, prev, bodies, ts, 0)
        return b.header, b.signature, b.hash

    while True:
        seq = q.next_seq("MTR-1")
        q.append_readings([Reading("MTR-1", seq, 1_700_000_000_000_000_000 + seq, ClockStatus.UNKNOWN,
                                   Quality.OK, (Quantity("energy_import", "kWh", float(seq)),))])
        print(seq, flush=True)
        if seq % 7 == 0:
            q.seal_next_batch(5, seal)
    """
)


def _run_and_kill(qpath: Path, key: Path, at_least: int) -> list[int]:
    """Start the writer, SIGKILL it once it reported `at_least` commits; return every seq it reported."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(qpath), str(key)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    printed: list[int] = []
    deadline = time.monotonic() + 20
    try:
        while len(printed) < at_least:
            line = proc.stdout.readline()
            if not line:
                raise AssertionError(f"writer exited early: {proc.wait()} {proc.stderr.read()}")
            printed.append(int(line))
            assert time.monotonic() < deadline, "writer too slow"
        os.kill(proc.pid, signal.SIGKILL)
        rest, _ = proc.communicate(timeout=10)  # lines it printed before the kill landed
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    printed += [int(x) for x in rest.split()]
    return printed


def test_sigkill_loses_nothing_acknowledged(tmp_path):
    qpath = tmp_path / "queue.sqlite"
    key = tmp_path / "gateway.key"
    write_private_key(key)
    child_signer = Signer(load_private_key(key))
    pub = child_signer.public_key
    acknowledged: list[int] = []
    for _round in range(3):
        printed = _run_and_kill(qpath, key, at_least=50)
        assert printed == list(range(printed[0], printed[0] + len(printed)))
        acknowledged += printed

        q = DurableQueue(qpath, GW)
        try:
            # readings: every acknowledged seq is there, contiguous from 1, no duplicates
            readings = [e for e in all_entries(qpath) if isinstance(e, Reading)]
            seqs = [r.seq for r in readings]
            assert seqs == list(range(1, len(seqs) + 1))
            assert set(acknowledged) <= set(seqs)
            # at most the one reading committed but not yet printed when the kill came
            assert len(seqs) - len(acknowledged) in (0, 1)
            assert q.next_seq("MTR-1") == seqs[-1] + 1
            # the batch chain the writer sealed is intact and verifies
            seal_all(q, signer=child_signer)
            batches = q.pending_batches(0, 10_000)
            assert [b.header.seq for b in batches] == list(range(1, len(batches) + 1))
            prev = ZERO_HASH
            for b in batches:
                assert b.header.prev_hash == prev
                bodies = [encode_entry(e) for e in b.entries]
                check_batch(b.header, b.signature, bodies, [e.timestamp_ns for e in b.entries], pub)
                prev = b.hash
            assert [e.seq for b in batches for e in b.entries] == seqs
        finally:
            q.close()
        acknowledged = seqs  # the next writer continues after whatever was stored
