"""A batch's loss gradient, or its outputs, computed a few rows at a time (micro-batches).

Computing a batch in chunks of a few rows (one `jax.lax.scan` over the chunks, gradients summed) bounds the
memory of a pass and gives the same numbers up to float rounding, for a loss that is a mean over rows with no
coupling between rows (no batch statistics, no pairwise terms). Measured on the 2-core CPU (docs/common.md §12),
the NFN predictors' BCE steps: with JAX running computations on a worker thread, chunks of 16 rows ran 1.3-1.8x
faster than whole batches of 64 and 256 (the whole batches' temporaries, above 64 MiB, were page-faulted in on
every call); on the calling thread (`common.host_memory.keep_freed_memory`) whole batches of 64 are as fast or
faster and compile 0.3-3.8 s sooner, while at 256 chunks stay as fast or up to 15% faster. ``"auto"`` follows
that.

Chunk ``j`` of a batch of ``B`` rows split into ``c`` chunks holds rows ``j, j + c, j + 2c, ...`` (strided): on a
mesh that shards the rows over devices in contiguous blocks, every chunk then spans every device, each device
computes its own rows, and no row moves between devices.

Example::

    chunks = chunk_count("auto", rows=64)
    (loss, metrics), grads = value_and_grad_in_chunks(loss_fn, chunks)(params, batch, key)
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from common import checks
from common.host_memory import calling_thread_dispatch

__all__ = ["AUTO", "CPU_MICRO_BATCH", "CPU_WHOLE_ROWS", "resolve_micro_batch", "chunk_count", "split_rows",
           "merge_rows", "value_and_grad_in_chunks", "map_in_chunks"]

AUTO = "auto"
CPU_MICRO_BATCH = 16  # rows per device and chunk chosen by "auto" on a CPU backend (docs/common.md §12)
CPU_WHOLE_ROWS = 64  # ... except that a batch of at most this many rows on one device running computations on the
# calling thread (`common.host_memory.keep_freed_memory`) stays whole: as fast, and its step compiles 0.3-3.8 s sooner


def resolve_micro_batch(micro_batch: int | str | None, rows: int, devices: int = 1) -> int | None:
    """Rows per device and chunk for a batch of ``rows`` rows over ``devices`` devices.

    ``micro_batch``: an int (kept), None (the whole batch at once) or ``"auto"``: `CPU_MICRO_BATCH` on a CPU
    backend when each device holds more rows than that and a multiple of it, else None (accelerators keep their
    batches whole); on one device whose computations run on the calling thread (`calling_thread_dispatch`),
    batches of up to `CPU_WHOLE_ROWS` rows stay whole too. ValueError for anything else.
    """
    if micro_batch == AUTO:
        per_device = rows // max(devices, 1)
        fits = per_device > CPU_MICRO_BATCH and per_device % CPU_MICRO_BATCH == 0
        whole = devices <= 1 and per_device <= CPU_WHOLE_ROWS and calling_thread_dispatch()
        return CPU_MICRO_BATCH if jax.default_backend() == "cpu" and fits and not whole else None
    checks.count("micro_batch", micro_batch, allow_none=True)
    return micro_batch


def chunk_count(micro_batch: int | str | None, rows: int, devices: int = 1) -> int:
    """Number of chunks of ``micro_batch`` rows per device (resolved by `resolve_micro_batch`: an int, ``"auto"``
    or None) in a batch of ``rows`` rows over ``devices`` devices (1 for None or a micro-batch of at least the rows
    per device). ValueError naming the numbers when the rows per device are not a multiple of ``micro_batch``."""
    micro_batch = resolve_micro_batch(micro_batch, rows, devices)
    per_device, left = divmod(rows, max(devices, 1))
    if micro_batch is None or micro_batch >= per_device:
        return 1
    if left or per_device % micro_batch:
        raise ValueError(f"micro_batch={micro_batch} must divide the rows per device: batch of {rows} rows over "
                         f"{devices} device(s)")
    return per_device // micro_batch


def split_rows(tree: Any, chunks: int) -> Any:
    """Leaves ``[B, ...]`` -> ``[chunks, B / chunks, ...]``, chunk ``j`` holding rows ``j::chunks``."""
    return jax.tree.map(lambda a: jnp.swapaxes(a.reshape((a.shape[0] // chunks, chunks) + a.shape[1:]), 0, 1), tree)


def merge_rows(tree: Any) -> Any:
    """The inverse of `split_rows`: leaves ``[chunks, B / chunks, ...]`` -> ``[B, ...]`` in the original row order."""
    return jax.tree.map(lambda a: jnp.swapaxes(a, 0, 1).reshape((-1,) + a.shape[2:]), tree)


def value_and_grad_in_chunks(loss_fn: Callable, chunks: int) -> Callable:
    """``f(params, batch, key) -> ((loss, metrics), grads)`` of ``loss_fn(params, batch, key) -> (loss, metrics)``
    (a scalar loss and a dict of scalars, both means over the rows of ``batch``: leaves ``[B, ...]``), computed
    over ``chunks`` strided chunks of ``B / chunks`` rows (`split_rows`) and averaged; chunk ``j`` gets key
    ``jax.random.split(key, chunks)[j]``. One chunk: `jax.value_and_grad` on the whole batch with ``key``.
    ``loss_fn`` is traced once: the loop's zero-filled start needs the chunk's output shapes, which tracing the
    chunk's gradient gives, and the loop body reuses that trace (the gradient is an inlined `jax.jit`, whose traces
    JAX caches by argument shapes) instead of tracing the model a second time."""
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if chunks == 1:
        return grad_fn
    grad_fn = jax.jit(grad_fn, inline=True)

    def chunked(params, batch, key):
        # each chunk's share is added already divided by `chunks`: a lone add per parameter array would compile
        # to a kernel of its own (docs/common.md §12)
        def accumulate(total, xs):
            out = grad_fn(params, *xs)
            # lax, not jnp: no dtype promotion to trace for each of the many parameter arrays
            share = lambda t, o: lax.add(t, lax.div(lax.convert_element_type(o, t.dtype), np.asarray(chunks, t.dtype)))
            return jax.tree.map(share, total, out), None

        shapes = jax.eval_shape(grad_fn, params, jax.tree.map(lambda a: a[:a.shape[0] // chunks], batch), key)
        # integer metrics (counts) are averaged in the default float dtype, as a division of their sum would give
        zeros = jax.tree.map(lambda s: lax.full(s.shape, 0, s.dtype if jnp.issubdtype(s.dtype, jnp.inexact)
                                                else jnp.result_type(float)), shapes)
        return jax.lax.scan(accumulate, zeros, (split_rows(batch, chunks), jax.random.split(key, chunks)))[0]

    return chunked


def map_in_chunks(fn: Callable, chunks: int) -> Callable:
    """``f(batch) -> fn(batch)`` computed over ``chunks`` strided chunks (`jax.lax.map`) for a row-wise ``fn``
    (output leaves ``[B, ...]``, row i depending on input row i only), rows returned in their order."""
    if chunks == 1:
        return fn
    return lambda batch: merge_rows(jax.lax.map(fn, split_rows(batch, chunks)))
