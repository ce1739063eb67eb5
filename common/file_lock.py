"""An exclusive advisory lock on a file that never waits: ``fcntl.flock`` released by the operating system when the
holding process ends (even on SIGKILL), so a lock never outlives a killed job. Used by the zoo writer
(`common.zoo_store`) and by studies that several processes run at once."""
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
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            return
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield None
    finally:
        os.close(fd)  # releases the lock
