"""Orbax checkpoints of a training-state pytree, with typed PRNG keys stored as their raw key data.

The data-iterator position needs no separate entry: batches are a pure function of the step, which
is part of the state.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import warnings
from typing import Any

import jax
import orbax.checkpoint as ocp

from common.distributed import is_typed_key


def open_manager(run_dir: str | os.PathLike, max_to_keep: int | None = 3) -> ocp.CheckpointManager:
    """A ``CheckpointManager`` over ``run_dir/checkpoints`` (created if absent) keeping the last
    ``max_to_keep`` steps (``None``: all). Close it with ``.close()`` to finish pending saves."""
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
    return ocp.CheckpointManager(os.path.abspath(os.path.join(run_dir, "checkpoints")),
                                 options=options)


def _to_savable(tree: Any) -> Any:
    return jax.tree.map(lambda x: jax.random.key_data(x) if is_typed_key(x) else x, tree)


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (a full disk, a file-size limit, no permission)."""


def _write_error(manager: ocp.CheckpointManager, err: Exception) -> CheckpointWriteError:
    """CheckpointWriteError naming the checkpoint folder, the cause (the OS error when there is one: orbax
    reports it as a tensorstore ValueError whose message ends in ``os_error_code=N``) and how to resume."""
    code = re.search(r"os_error_code='?(\d+)", str(err))
    if isinstance(err, OSError) and err.errno:
        reason = os.strerror(err.errno)
    elif code:
        reason = os.strerror(int(code.group(1)))
    else:
        reason = f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0][:300]}"
    latest = manager.latest_step()
    return CheckpointWriteError(
        f"could not write a checkpoint in {manager.directory} ({reason}); the finished checkpoints are intact: "
        f"once the cause is fixed, run again with the same run_dir to resume from "
        f"{'step ' + str(latest) if latest is not None else 'the start'}")


def save(manager: ocp.CheckpointManager, step: int, tree: Any) -> None:
    """Start saving pytree ``tree`` of ``jax.Array`` as checkpoint ``step`` (asynchronously: the
    arrays are copied to host before returning, so they may be donated afterwards).

    Raises CheckpointWriteError when this save or the previous one (whose failure, in orbax's background
    thread, surfaces here) could not be written."""
    try:
        manager.save(step, args=ocp.args.StandardSave(_to_savable(tree)))
    except Exception as err:
        raise _write_error(manager, err) from err


@contextlib.contextmanager
def closing(manager: ocp.CheckpointManager):
    """Context that waits for the pending saves of ``manager`` and closes it on exit. A failed background
    save raises CheckpointWriteError; when the body raised, its exception is the one reported."""
    try:
        yield manager
    except BaseException:
        with contextlib.suppress(Exception):
            manager.close()
        raise
    try:
        manager.close()
    except Exception as err:
        raise _write_error(manager, err) from err


CORRUPT_DIR = "checkpoints_corrupt"


def _set_aside(manager: ocp.CheckpointManager, step: int) -> str:
    """Move the folder of checkpoint ``step`` to ``<run_dir>/checkpoints_corrupt/<step>[-n]`` (process 0;
    every process then reloads the manager's step list); returns the new path."""
    source = os.path.join(str(manager.directory), str(step))
    target = os.path.join(os.path.dirname(str(manager.directory)), CORRUPT_DIR, str(step))
    n = 0
    while os.path.exists(target + (f"-{n}" if n else "")):
        n += 1
    target += f"-{n}" if n else ""
    if jax.process_index() == 0:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.move(source, target)
    manager.reload()
    return target


def restore_latest(manager: ocp.CheckpointManager, like: Any) -> Any | None:
    """The newest readable checkpoint restored with the structure, shapes, dtypes and shardings of pytree
    ``like`` (typed PRNG keys come back typed, with ``like``'s key implementation), or ``None`` if the
    directory holds no finished, readable checkpoint.

    A checkpoint that cannot be read (truncated array file or metadata, a different structure) is moved
    to ``<run_dir>/checkpoints_corrupt/`` with a warning naming it and the error, and the next older one
    is tried (docs/common.md §5); the run then redoes the lost steps, which, batches and keys being
    functions of the step, gives the same result.
    """
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), _to_savable(like))
    for step in sorted(manager.all_steps(), reverse=True):
        path = os.path.join(str(manager.directory), str(step))
        try:
            restored = manager.restore(step, args=ocp.args.StandardRestore(abstract))
        except Exception as err:  # orbax/tensorstore raise many types for a damaged checkpoint
            message = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
            moved = _set_aside(manager, step)
            warnings.warn(f"checkpoint {path} (step {step}) cannot be read ({type(err).__name__}: {message}); "
                          f"moved to {moved}; falling back to the previous checkpoint", RuntimeWarning,
                          stacklevel=2)
            continue
        return jax.tree.map(
            lambda x, r: jax.random.wrap_key_data(r, impl=jax.random.key_impl(x)) if is_typed_key(x)
            else r, like, restored)
    return None
