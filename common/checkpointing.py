"""Orbax checkpoints of a training-state pytree, with typed PRNG keys stored as their raw key data.

The data-iterator position needs no separate entry: batches are a pure function of the step, which
is part of the state.
"""
from __future__ import annotations

import os
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


def save(manager: ocp.CheckpointManager, step: int, tree: Any) -> None:
    """Start saving pytree ``tree`` of ``jax.Array`` as checkpoint ``step`` (asynchronously: the
    arrays are copied to host before returning, so they may be donated afterwards)."""
    manager.save(step, args=ocp.args.StandardSave(_to_savable(tree)))


def restore_latest(manager: ocp.CheckpointManager, like: Any) -> Any | None:
    """The latest checkpoint restored with the structure, shapes, dtypes and shardings of pytree
    ``like`` (typed PRNG keys come back typed, with ``like``'s key implementation), or ``None`` if
    the directory holds no finished checkpoint."""
    step = manager.latest_step()
    if step is None:
        return None
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), _to_savable(like))
    restored = manager.restore(step, args=ocp.args.StandardRestore(abstract))
    return jax.tree.map(
        lambda x, r: jax.random.wrap_key_data(r, impl=jax.random.key_impl(x)) if is_typed_key(x)
        else r, like, restored)
