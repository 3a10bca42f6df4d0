"""Tests for edge/queue.py (the agent's durable queue): the queue file and crash safety: WAL with synchronous=FULL, SIGKILL and power loss lose nothing committed."""

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
from queuefixtures import GW, T0, S, all_entries, reading, seal_all, sealer

from edge.queue import DurableQueue, QueueError
from protos.batch import check_batch
from protos.canonical import encode_entry
from protos.records import (
    ZERO_HASH,
    Reading,
)
from protos.signing import load_private_key, write_private_key

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
