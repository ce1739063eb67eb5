"""Advisory locks on a file that never wait: ``fcntl.flock`` released by the operating system when the holding
process ends (even on SIGKILL), so a lock never outlives a killed job. Used by the zoo writer (`common.zoo_store`)
and by studies that several processes run at once. An exclusive lock (`try_exclusive_lock`) has one holder; a
shared one (`try_shared_lock`) lets any number of cooperating processes in while keeping an exclusive holder out,
and the other way round."""
from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator


@contextlib.contextmanager
def try_exclusive_lock(path: str) -> Iterator[str | None]:
    """Try to take the exclusive ``flock`` on `path` (created if missing) for the block, without waiting.

    Yields None when this process holds it (its pid is then written in the file), else the pid the holder wrote
    ("unknown" if it wrote none)."""
    with _try_lock(path, fcntl.LOCK_EX) as holder:
        yield holder


@contextlib.contextmanager
def try_shared_lock(path: str) -> Iterator[str | None]:
    """Try to take a shared ``flock`` on `path` (created if missing) for the block, without waiting: any number of
    processes may hold it together, none while a process holds `try_exclusive_lock` on the same file.

    Yields None when this process holds it, else the pid the exclusive holder wrote ("unknown" if none)."""
    with _try_lock(path, fcntl.LOCK_SH) as holder:
        yield holder


@contextlib.contextmanager
def _try_lock(path: str, operation: int) -> Iterator[str | None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, operation | fcntl.LOCK_NB)
        except BlockingIOError:
            yield os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            return
        if operation == fcntl.LOCK_EX:
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
        try:
            yield None
        finally:
            if operation == fcntl.LOCK_EX:
                os.ftruncate(fd, 0)  # no stale pid for the next refused process to name
    finally:
        os.close(fd)  # releases the lock
