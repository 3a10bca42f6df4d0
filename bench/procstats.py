"""CPU time, peak memory and threads of a process and its descendants, from /proc (Linux).

The benches compare programs that are built differently: ours is one process, a
ThingsBoard gateway may start helpers (pip at first start, its own subprocesses).
So a measurement covers the whole tree under the started process, sampled while
it runs: children that come and go between samples still show up in the parent's
cumulative child time (cutime/cstime) once they are waited for.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Self

TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    # The command name may contain spaces and parentheses; everything after the last ")" is fixed.
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int, with_children: bool = True) -> float:
    """utime + stime (+ cutime + cstime: children already waited for) of one process."""
    f = _stat_fields(pid)
    ticks = int(f[11]) + int(f[12])
    if with_children:
        ticks += int(f[13]) + int(f[14])
    return ticks / TICKS


def status_value(pid: int, key: str) -> int:
    """One numeric field of /proc/PID/status (kB for memory fields)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(f"/proc/{pid}/status has no {key}")


def descendants(pid: int) -> list[int]:
    """pid and every live process below it."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            ppid = int(_stat_fields(int(entry.name))[1])
        except (OSError, IndexError, ValueError):
            continue  # exited while we looked
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


@dataclass(frozen=True)
class TreeSample:
    cpu_s: float          # cumulative CPU seconds of the tree (live processes + waited-for children)
    rss_kb: int           # sum of current VmRSS
    hwm_kb: int           # sum of VmHWM (each process's own peak)
    threads: int
    processes: int


def sample_tree(pid: int) -> TreeSample:
    cpu = 0.0
    rss = hwm = threads = n = 0
    for p in descendants(pid):
        try:
            # Only the root's cutime/cstime: a waited-for grandchild is already in its parent's.
            cpu += cpu_seconds(p, with_children=(p == pid))
            rss += status_value(p, "VmRSS")
            hwm += status_value(p, "VmHWM")
            threads += status_value(p, "Threads")
            n += 1
        except (OSError, KeyError):
            continue  # exited meanwhile (a zombie has no VmRSS)
    return TreeSample(cpu, rss, hwm, threads, n)


class TreeWatcher:
    """Samples a process tree every `period` s in a thread; keeps the peaks seen."""

    def __init__(self, pid: int, period: float = 0.5) -> None:
        self.pid = pid
        self.period = period
        self.peak_rss_kb = 0      # highest sum of VmRSS seen in one sample
        self.peak_hwm_kb = 0      # highest sum of per-process VmHWM (>= peak_rss_kb)
        self.max_threads = 0
        self.max_processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _sample(self) -> None:
        try:
            s = sample_tree(self.pid)
        except OSError:
            return
        self.peak_rss_kb = max(self.peak_rss_kb, s.rss_kb)
        self.peak_hwm_kb = max(self.peak_hwm_kb, s.hwm_kb)
        self.max_threads = max(self.max_threads, s.threads)
        self.max_processes = max(self.max_processes, s.processes)

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self._sample()


@dataclass(frozen=True)
class Footprint:
    """What one measured window of one program cost."""

    cpu_pct: float        # % of one core over the window
    peak_rss_mb: float    # VmHWM summed over the tree (peak since the process started)
    threads: int          # most threads seen in the tree during the window
    processes: int
    rss_start_mb: float   # VmRSS summed over the tree when the window opened ...
    rss_end_mb: float     # ... and when it closed: growth here over long runs would be a leak


def measure(pid: int, seconds: float) -> Footprint:
    """CPU % of one core over `seconds` of wall time from now, and the memory/threads peaks."""
    with TreeWatcher(pid) as w:
        s0, t0 = sample_tree(pid), time.monotonic()
        time.sleep(seconds)
        s1, t1 = sample_tree(pid), time.monotonic()
    return Footprint(100 * (s1.cpu_s - s0.cpu_s) / (t1 - t0), w.peak_hwm_kb / 1024, w.max_threads, w.max_processes,
                     s0.rss_kb / 1024, s1.rss_kb / 1024)
