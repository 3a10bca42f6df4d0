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

from edge.queue import DurableQueue, QueueError
from protos.batch import check_batch, seal_batch
from protos.canonical import batch_hash, decode_entry, encode_entry
from protos.records import (
    ZERO_HASH,
    ClockStatus,
    Gap,
    Quality,
    Quantity,
    Reading,
    RecordError,
)
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


SIGNER = Signer.generate()


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
    child_signer = load_private_key(key)
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


# ---------------------------------------------------------------------------
# Power loss: what a commit leaves on disk is the db file and its WAL.
# ---------------------------------------------------------------------------


def _files(qpath: Path) -> tuple[bytes, bytes]:
    """What would survive a power cut: the db file and the WAL (never the -shm, which is
    rebuilt from the WAL on open)."""
    wal = Path(str(qpath) + "-wal")
    return qpath.read_bytes(), wal.read_bytes() if wal.exists() else b""


def _restore(files: tuple[bytes, bytes], dest: Path) -> Path:
    dest.mkdir()
    (dest / "queue.sqlite").write_bytes(files[0])
    if files[1]:
        (dest / "queue.sqlite-wal").write_bytes(files[1])
    return dest / "queue.sqlite"


def _snapshot(qpath: Path, dest: Path) -> Path:
    return _restore(_files(qpath), dest)


def _state(path: Path) -> tuple:
    """Everything the queue keeps, read through a fresh DurableQueue."""
    q = DurableQueue(path, GW)
    try:
        db = q._reader
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return (
            [tuple(r) for r in db.execute("SELECT meter_id, last_seq FROM meter_seq ORDER BY meter_id")],
            [bytes(b) for (b,) in db.execute("SELECT body FROM entries ORDER BY id")],
            [tuple(r) for r in db.execute("SELECT seq, hash FROM batches ORDER BY seq")],
            [tuple(r) for r in db.execute("SELECT * FROM open_gaps ORDER BY meter_id")],
            db.execute("SELECT last_seq, last_hash, queue_bytes FROM chain").fetchone(),
            q.recount_bytes(),
        )
    finally:
        q.close()


def _random_op(q: DurableQueue, rng) -> None:
    meter = f"MTR-{rng.randint(1, 3)}"
    op = rng.random()
    if op < 0.6:
        q.append_readings([reading(meter, q.next_seq(meter))])
    elif op < 0.75:
        q.record_failure(meter, T0 + rng.randint(0, 100) * S, rng.choice(["timeout", "unreachable"]), 5 * S)
    elif op < 0.9:
        q.seal_next_batch(rng.randint(1, 6), sealer())
    else:
        pending = q.pending_batches(0, 1)
        if pending:
            q.delete_batch(pending[0].header.seq)


def test_committed_state_is_in_the_db_and_wal_files_at_every_commit(tmp_path, qpath):
    import random

    rng = random.Random(7)
    q = DurableQueue(qpath, GW)
    try:
        for i in range(40):
            for _ in range(rng.randint(1, 8)):
                _random_op(q, rng)
            copy = _snapshot(qpath, tmp_path / f"cut{i}")
            # a fresh process finds exactly what was committed, and the count still adds up
            live = _state(qpath)
            assert _state(copy) == live
            assert live[4][2] == live[5]
    finally:
        q.close()


def test_a_torn_wal_tail_leaves_the_state_before_or_after_the_commit(tmp_path, qpath):
    """Power lost while a commit's frames were being written: any prefix of the WAL's
    new bytes may have reached the disk. Opening must give the state before the commit
    or after it, never a mix, never an error."""
    import random

    rng = random.Random(11)
    q = DurableQueue(qpath, GW)
    q._db.execute("PRAGMA wal_autocheckpoint=0")  # keep the WAL append-only for the test
    try:
        for i in range(25):
            for _ in range(rng.randint(0, 4)):
                _random_op(q, rng)
            db_before, wal_before = _files(qpath)
            before = _state(_restore((db_before, wal_before), tmp_path / f"before{i}"))
            q.append_readings([reading("MTR-1", q.next_seq("MTR-1")), reading("MTR-2", q.next_seq("MTR-2"))])
            db_after, wal_after = _files(qpath)
            after = _state(_restore((db_after, wal_after), tmp_path / f"after{i}"))
            assert db_after == db_before  # no checkpoint: the commit is in the WAL alone
            assert wal_after[: len(wal_before)] == wal_before and len(wal_after) > len(wal_before)
            # The commit frame is the transaction's last: any shorter prefix is the state before.
            for j, cut in enumerate([*sorted(rng.sample(range(len(wal_before), len(wal_after)), 2)), len(wal_after)]):
                got = _state(_restore((db_before, wal_after[:cut]), tmp_path / f"torn{i}.{j}"))
                assert got == (after if cut == len(wal_after) else before), (
                    f"cut at {cut} of {len(wal_before)}..{len(wal_after)}"
                )
    finally:
        q.close()


# ---------------------------------------------------------------------------
# Bounded disk: the oldest evidence is kept, refused readings become gaps.
# ---------------------------------------------------------------------------

LIMIT = 100_000  # bytes; about 600 small readings


def _fill(q: DurableQueue, meters: list[str], ts: int) -> tuple[int, int]:
    """One poll round for every meter; returns (stored, refused)."""
    before = {m: q.next_seq(m) for m in meters}
    q.append_readings([reading(m, before[m], ts=ts) for m in meters])
    stored = sum(q.next_seq(m) - before[m] for m in meters)
    return stored, len(meters) - stored


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


# ---------------------------------------------------------------------------
# Upgrading a queue file of the previous release.
# ---------------------------------------------------------------------------

# The previous release's schema, verbatim: a file it wrote must open and keep working.
OLD_SCHEMA = """
CREATE TABLE IF NOT EXISTS meter_seq (meter_id TEXT PRIMARY KEY, last_seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY AUTOINCREMENT, meter_id TEXT NOT NULL, ts_ns INTEGER NOT NULL,
    body BLOB NOT NULL, batch_seq INTEGER);
CREATE INDEX IF NOT EXISTS entries_unbatched ON entries (batch_seq, id);
CREATE TABLE IF NOT EXISTS open_gaps (
    meter_id TEXT PRIMARY KEY, from_ns INTEGER NOT NULL, to_ns INTEGER NOT NULL,
    reason TEXT NOT NULL, missed INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY, header BLOB NOT NULL, signature BLOB NOT NULL, hash BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS chain (
    id INTEGER PRIMARY KEY CHECK (id = 1), gateway_id TEXT NOT NULL, last_seq INTEGER NOT NULL,
    last_hash BLOB NOT NULL);
"""


def _old_queue(path: Path) -> bytes:
    """A file as the previous release left it: two receipted-and-deleted batches' worth of
    history, one sealed batch, unbatched readings and an open gap. Returns the batch hash."""
    from protos.canonical import encode_batch_header, encode_reading

    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(OLD_SCHEMA)
    rs = [reading("MTR-1", s) for s in range(3, 7)]
    bodies = [encode_reading(r) for r in rs[:2]]
    b = seal_batch(SIGNER, GW, 3, b"\x01" * 32, bodies, [r.timestamp_ns for r in rs[:2]], T0)
    db.execute("INSERT INTO chain VALUES (1, ?, 3, ?)", (GW, b.hash))
    db.execute("INSERT INTO meter_seq VALUES ('MTR-1', 6)")
    db.execute("INSERT INTO batches VALUES (3, ?, ?, ?)", (encode_batch_header(b.header), b.signature, b.hash))
    for r in rs:
        db.execute("INSERT INTO entries (meter_id, ts_ns, body, batch_seq) VALUES (?, ?, ?, ?)",
                   (r.meter_id, r.timestamp_ns, encode_reading(r), 3 if r.seq < 5 else None))
    db.execute("INSERT INTO open_gaps VALUES ('MTR-2', ?, ?, 'timeout', 4)", (T0, T0 + 3 * S))
    db.close()
    return b.hash


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
