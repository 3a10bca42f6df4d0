"""Keeping the agent small on a gateway with little memory.

glibc gives every thread that allocates its own malloc arena (up to 8 per core) and keeps
freed memory in them; with gRPC's, SQLite's and asyncio's worker threads that is several MB
of resident memory the agent never uses again. Two arenas are plenty for a process whose
work is a few small allocations per reading. The cap applies to arenas created afterwards,
so it is set before the agent starts any thread. Setting MALLOC_ARENA_MAX in the environment
does the same and wins if given (an operator may know better).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

__all__ = ["MALLOC_ARENAS", "limit_malloc_arenas"]

MALLOC_ARENAS = 2
_M_ARENA_MAX = -8  # from glibc's <malloc.h>


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas; False where that is not possible (not glibc, or the
    environment already sets it)."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return mallopt(_M_ARENA_MAX, arenas) == 1
