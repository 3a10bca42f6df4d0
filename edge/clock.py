"""The gateway clock: UTC timestamps and whether the kernel says the clock is synchronised.

The sync status travels with every reading (OCMF's time status), so a clerk can
tell a synchronised timestamp from a free-running one.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import time

from protos.records import ClockStatus

_TIME_ERROR = 5  # adjtimex() result: clock not synchronised


class _Timex(ctypes.Structure):
    # struct timex from <sys/timex.h>; only the return value of adjtimex matters,
    # the buffer is sized generously so the kernel never writes past it.
    _fields_ = [("modes", ctypes.c_uint), ("_rest", ctypes.c_byte * 512)]


def _load_adjtimex():
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        fn = ctypes.CDLL(name, use_errno=True).adjtimex
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.POINTER(_Timex)]
    fn.restype = ctypes.c_int
    return fn


_adjtimex = _load_adjtimex()


def clock_status() -> ClockStatus:
    """SYNCHRONIZED when the kernel's NTP state is in sync, INFORMATIVE when it is
    free-running, UNKNOWN where the kernel cannot be asked."""
    if _adjtimex is None:
        return ClockStatus.UNKNOWN
    state = _adjtimex(ctypes.byref(_Timex(modes=0)))
    if state < 0:
        return ClockStatus.UNKNOWN
    return ClockStatus.INFORMATIVE if state == _TIME_ERROR else ClockStatus.SYNCHRONIZED


def now_ns() -> int:
    return time.time_ns()
