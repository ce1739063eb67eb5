"""Host memory reuse for XLA on CPU: freed blocks stay in the process instead of going back to the OS.

XLA's CPU runtime allocates the temporary buffers of every call with ``malloc`` and frees them when the call
ends. By default glibc hands large freed blocks back to the OS (blocks above its mmap threshold are unmapped,
the top of the heap is trimmed), so the next call page-faults the same memory in again, and the kernel zeroes
every page first. Measured on one core (docs/common.md §10): the gradient of a 2-layer ReLU MLP on [16384, 144]
rows took 11,500 minor page faults (47 MB) and 20 ms of kernel time per call beside 20 ms of compute; the
Monomial-NFN predictor's training step at batch 64 27,800 faults (114 MB), 48 ms kernel beside 66 ms user time.

`keep_freed_memory` does two things. It raises glibc's mmap and trim thresholds (``mallopt``), and, called before
JAX creates its CPU client, it makes JAX run single-device CPU computations on the calling thread
(``jax_cpu_enable_async_dispatch = False``). The second matters because JAX otherwise runs them on a worker thread,
whose glibc arena maps every block above 64 MiB afresh whatever the thresholds: the MAGEP-NFN step on a 12-layer
MLP (261 MiB of temporaries) took 67,000 faults and 139 ms of kernel time per call, 215 ms in all, and its time
against depth jumped 2x where the temporaries passed 64 MiB; on the calling thread (the main heap) it took no
fault and 152 ms. The price: the process keeps its peak heap, and Python no longer runs ahead of the computation
it dispatched.

`common.training.fit` (one jitted call per step) and the benchmarks call it; call it yourself first thing in a
script that loops over jitted CPU calls. A loop inside one jitted call (`jax.lax.scan`, the population trainer's
epochs) reuses its buffers anyway.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools

__all__ = ["keep_freed_memory", "calling_thread_dispatch"]

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8  # glibc's mallopt parameters (malloc.h)
_LARGEST = 2**31 - 1  # mallopt takes an int
_ASYNC_DISPATCH = "jax_cpu_enable_async_dispatch"


@functools.cache
def keep_freed_memory(single_arena: bool = False, calling_thread: bool = True) -> bool:
    """Make glibc keep freed memory for reuse (mmap and trim thresholds raised to 2 GiB) and, before JAX's
    first computation, run CPU computations on the calling thread; idempotent.

    Args:
      single_arena: also route every thread's allocations to one arena (``M_ARENA_MAX = 1``), the other way to
        keep blocks above 64 MiB of threads other than the main one. It costs elsewhere (2 XLA threads, quiet,
        3 runs each, docs/common.md §10): the MAGEP-NFN step at batch 8 took 6-15 ms by default and 22-23 ms
        with one arena, and every XLA compile ~45% longer (MAGEP 4.8-6.6 -> 7.9-9.6 s). Call it before the first
        JAX computation: threads that have allocated already keep their own arenas, and glibc then hands those arenas
        to later threads too (it takes turns among the existing ones), so a thread started on importing numpy or
        JAX (OpenBLAS's) that took an arena first defeats the limit (the likely cause of one failure in a loaded
        test run). Where one arena must hold, set ``MALLOC_ARENA_MAX=1`` in the environment before Python starts.
      calling_thread: when JAX has not created its backends yet, set ``jax_cpu_enable_async_dispatch`` to
        False, so single-device CPU computations run on the calling thread and take their temporaries from its
        heap, which keeps blocks of any size (a worker thread's arena maps each block above 64 MiB afresh). JAX
        reads the setting when it creates its CPU client, so later calls change nothing; computations over
        several devices run on worker threads either way.
    Returns:
      True when glibc accepted every setting, False where there is no glibc (macOS, Windows, musl): nothing
      changes in the allocator there (the dispatch setting applies everywhere).
    """
    if calling_thread:
        _dispatch_on_calling_thread()
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


def _dispatch_on_calling_thread() -> None:
    import jax
    from jax._src import xla_bridge  # no public API says whether the backends exist yet

    if not xla_bridge.backends_are_initialized():
        jax.config.update(_ASYNC_DISPATCH, False)


def calling_thread_dispatch() -> bool:
    """True when JAX is set to run single-device CPU computations on the calling thread
    (``jax_cpu_enable_async_dispatch`` False, as `keep_freed_memory` sets it before the first computation). JAX
    reads the setting when it creates its CPU client: a change made after that is reported but not in effect."""
    import jax

    return not jax.config.read(_ASYNC_DISPATCH)
