"""Host memory reuse for XLA on CPU: freed blocks stay in the process instead of going back to the OS.

XLA's CPU runtime allocates the temporary buffers of every call with ``malloc`` and frees them when the call
ends. By default glibc hands large freed blocks back to the OS (blocks above its mmap threshold are unmapped,
the top of the heap is trimmed), so the next call page-faults the same memory in again, and the kernel zeroes
every page first. Measured on one core (docs/common.md §10): the gradient of a 2-layer ReLU MLP on [16384, 144]
rows took 11,500 minor page faults (47 MB) and 20 ms of kernel time per call beside 20 ms of compute; the
Monomial-NFN predictor's training step at batch 64 27,800 faults (114 MB), 48 ms kernel beside 66 ms user time.
`keep_freed_memory` raises glibc's mmap and trim thresholds (``mallopt``): on one XLA thread the faults are gone
and both calls ran about 2x faster. The price: the process keeps its peak heap (freed memory is reused, not
returned). With several XLA threads, temporaries above 64 MiB fault in anew unless every thread shares one
arena (``single_arena=True``), which in turn slows compiles and small steps (see its docstring).

`common.training.fit` (one jitted call per step), the test session and the benchmarks call it; call it yourself
before your own loop of jitted CPU calls. A loop inside one jitted call (`jax.lax.scan`, the population trainer's
epochs) reuses its buffers anyway.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools

__all__ = ["keep_freed_memory"]

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8  # glibc's mallopt parameters (malloc.h)
_LARGEST = 2**31 - 1  # mallopt takes an int


@functools.cache
def keep_freed_memory(single_arena: bool = False) -> bool:
    """Make glibc keep freed memory for reuse (mmap and trim thresholds raised to 2 GiB); idempotent.

    Args:
      single_arena: also route every thread's allocations to one arena (``M_ARENA_MAX = 1``). A thread's own
        arena maps each block above 64 MiB afresh, so only this removes the faults of such temporaries when XLA
        runs on several threads. It costs elsewhere (2 XLA threads, quiet, 3 runs each, docs/common.md §10):
        the Monomial-NFN training step at batch 64 took 62-66 ms by default, 65-82 ms with the thresholds alone
        and 43-45 ms with one arena, but the MAGEP-NFN step at batch 8 took 6-15 ms, 10-11 ms and 22-23 ms, and
        every XLA compile took ~45% longer with one arena (MAGEP 4.8-6.6 -> 7.9-9.6 s). Call it before the first
        JAX computation: threads that have allocated already keep their own arenas.
    Returns:
      True when glibc accepted every setting, False where there is no glibc (macOS, Windows, musl): nothing
      changes there.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return False
    if not (hasattr(libc, "mallopt") and hasattr(libc, "gnu_get_libc_version")):  # musl's mallopt does nothing
        return False
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    settings = ((_M_MMAP_THRESHOLD, _LARGEST), (_M_TRIM_THRESHOLD, _LARGEST))
    settings += ((_M_ARENA_MAX, 1),) if single_arena else ()
    return all(mallopt(parameter, value) == 1 for parameter, value in settings)
