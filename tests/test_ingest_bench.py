"""bench/ingest.py runs end to end at a tiny scale and ends with its JSON line.

Figures are not judged here (benchmarks print them; tests do not time things): the
run must measure every part, and its own check that the hub's database holds exactly
what was receipted, all sealed, must have passed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from systemtools import require_tool

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_ingest_bench_smoke(backend):
    if backend == "postgresql":  # the bench starts its own server, with the tests' procedure
        from pgserver import find_pg_bindir

        bindir = find_pg_bindir()
        require_tool("initdb", "postgresql", "the bench runs the hub on a real PostgreSQL server",
                     fallback=f"{bindir}/initdb" if bindir else None)
    p = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "ingest.py"), "--gateways", "2", "--meters", "2", "--batch-size", "20",
         "--seconds", "1", "--processes", "1", "--runs", "1", "--max-rate", "2000", "--backend", backend, "--json"],
        capture_output=True, text=True, timeout=240, cwd=ROOT,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    out = json.loads(p.stdout.strip().splitlines()[-1])
    for key in ("readings_per_s", "baseline_readings_per_s", "ratio", "cpu_us_per_reading", "receipt_p50_ms",
                "receipt_p99_ms"):
        assert isinstance(out[key], (int, float)) and out[key] > 0, (key, out)
    # stored_and_sealed: the database held exactly what was receipted, all of it sealed
    assert out["backend"] == backend and out["available"] is True and out["stored_and_sealed"] is True
    assert out["readings_receipted"] > 0
    assert "ratio hub/baseline" in p.stdout


def test_profile_top_frames_leave_idle_threads_out(tmp_path):
    from ingest import top_frames

    raw = tmp_path / "hub.txt"
    raw.write_text(
        "main (a.py:1);verify (protos/signing.py:90) 30\n"
        "main (a.py:1);store_batches (hub/storage/store.py:196) 10\n"
        "Thread.run (threading.py:975);_worker (concurrent/futures/thread.py:81) 500\n"
        "main (a.py:1);verify (protos/signing.py:90) 10\n"
    )
    top = top_frames(raw)
    assert top[0] == ("verify (protos/signing.py:90)", 80.0)
    assert top[1] == ("store_batches (hub/storage/store.py:196)", 20.0)
    assert len(top) == 2
