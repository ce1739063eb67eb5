"""Sorting (with payloads, differentiable through the gathers) and prefix sums along the last axis.

The permutation carries no gradient, so it is computed on `stop_gradient`-ed keys and gradients flow through
the gathers. On CPU, XLA's floating-point sort is an order of magnitude slower than numpy's (docs/tsw_sl.md §16:
~350 ms vs ~35 ms for [100, 20001] on this project's machine), so `method="auto"` calls numpy's sort
through `jax.experimental.buffer_callback` there (numpy reads XLA's input buffer and sorts the packed keys inside
its result buffer, which then holds both the permutation and the sorted keys: a round trip of ~0.01 ms, against
0.07-0.25 ms for `jax.pure_callback`'s copies of [100, 200]-[100, 2000] arrays) and keeps XLA's sort on GPU/TPU.
A process with several devices also keeps XLA's sort: inside a program sharded over several CPU devices a host
callback pins the data to one device and can stall the other devices' collectives (seen as an all-reduce rendezvous
time-out in a 4-device run). Likewise `jnp.cumsum` lowers to a slow reduce-window on CPU (~40 ms for [100, 20001]);
`cumsum` here is a blocked triangular matrix product.

numpy picks its sort kernels by the CPU's instruction sets when it is imported. On an AMD EPYC of the Zen 4
generation (cpu family 25 with AVX-512) its AVX-512 sort of rows longer than 256 keys ran 2.4-3.2x slower than
its AVX2 sort (and 1.5x faster on shorter rows); there, start Python with ``NPY_DISABLE_CPU_FEATURES=X86_V4``
(numpy 2.4's name for its AVX-512 group; ``numpy.show_runtime()`` lists the names of the installed numpy) when
the rows are long (docs/tsw_sl.md §16.3). numpy reads it when it is imported, so it is a setting of the process,
not of this module.
"""
from __future__ import annotations

import concurrent.futures
import functools
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.buffer_callback import Buffer, buffer_callback

METHODS = ("auto", "numpy", "xla")


def _pack_keys(keys: np.ndarray, packed: np.ndarray) -> None:
    """Writes into `packed` (int64, the shape of the float32 `keys` [..., N], N < 2^31) each key's bits, mapped to
    a signed integer in the same order, above its index: sorting these integers with numpy's vectorised integer
    sort gives the stable sorting permutation in their low 32 bits and the sorted keys' mapped bits in their high
    32 (2x faster than `np.argsort` on [100, 2000]; docs/tsw_sl.md §16); -0.0 sorts before 0.0, NaNs last unless
    their sign bit is set (then first)."""
    np.left_shift(_ordered_bits(keys.view(np.int32)), 32, out=packed, dtype=np.int64)
    packed |= np.arange(keys.shape[-1], dtype=np.int64)


def _ordered_bits(bits):
    """float32 bits (as int32) -> int32 in the floats' order, and back (the map is its own inverse): negative
    floats have their 31 lower bits flipped, which reverses their order. numpy or jax arrays."""
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


PARALLEL_MIN_SIZE = 1 << 16  # keys per call from which rows may be sorted on several threads (docs/tsw_sl.md §16.3)
PARALLEL_ALWAYS_SIZE = 1 << 20  # keys per call from which they always are (below it, `_parallel_pays` decides)
TRIAL_CALLS = 3  # timed calls each way per shape before `_parallel_pays` keeps the faster way
_trials: dict[tuple[int, ...], tuple[list[float], list[float]]] = {}  # shape + blocks -> seconds one way, the other
_parallel: dict[tuple[int, ...], bool] = {}  # shape + blocks -> the way kept


@functools.cache
def _sort_pool(workers: int) -> concurrent.futures.ThreadPoolExecutor:
    return concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="tsw_sl_sort")


def _host_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. 1 under `taskset -c 0`)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _sort_block(keys: np.ndarray, packed: np.ndarray) -> None:
    """`_pack_keys` of float32 keys [..., N] into `packed` (int64, same shape), then each row of `packed` sorted in
    place, on the calling thread."""
    _pack_keys(keys, packed)
    packed.sort(axis=-1)


def _sort_rows(keys: np.ndarray, packed: np.ndarray) -> None:
    """`_sort_block`, with the rows split into one block per core the process may use and sorted on a thread pool
    (numpy releases the GIL while it sorts; XLA's own threads wait for the callback, so the cores are otherwise
    idle) from `PARALLEL_ALWAYS_SIZE` keys on, and from `PARALLEL_MIN_SIZE` on where `_parallel_pays` for the
    shape. The permutation is the same either way."""
    n = keys.shape[-1]
    blocks = min(_host_cores(), keys.size // max(n, 1))
    if keys.size < PARALLEL_MIN_SIZE or blocks < 2:
        _sort_block(keys, packed)
        return
    trial = (*keys.shape, blocks)
    always = keys.size >= PARALLEL_ALWAYS_SIZE
    timed = not always and trial not in _parallel  # the shape's trial still runs
    parallel = always or _parallel_pays(trial)
    start = time.perf_counter()
    if parallel:
        parts = (np.array_split(v.reshape(-1, n), blocks) for v in (keys, packed))
        list(_sort_pool(blocks).map(_sort_block, *parts))  # list(): waits, and raises a block's error
    else:
        _sort_block(keys, packed)
    if timed:
        _record_trial(trial, parallel, time.perf_counter() - start)


def _parallel_pays(trial: tuple[int, ...]) -> bool:
    """Whether keys of a shape are sorted on the thread pool (``trial``: the shape, then the number of blocks).
    Below `PARALLEL_ALWAYS_SIZE` keys which way is faster depends on the host: [400, 200] keys sorted in 0.39 ms on
    one thread and 0.35 ms in two blocks on one 2-core machine, in 0.24-0.29 against 0.27-0.35 ms on another, whose
    numpy sorts rows of up to 256 keys 3x faster per key than longer ones and whose pool threads wake slowly
    (docs/tsw_sl.md §16.3). So each shape's first calls alternate between the ways, `TRIAL_CALLS` each, timed by
    `_sort_rows`, and then the way whose fastest call was faster stays."""
    if trial in _parallel:
        return _parallel[trial]
    one, pooled = _trials.setdefault(trial, ([], []))
    return len(pooled) < len(one)


def _record_trial(trial: tuple[int, ...], parallel: bool, seconds: float) -> None:
    """Adds a timed call to ``trial``'s while `_parallel_pays` is still timing (a shape already decided, by another
    thread too, is left alone), and keeps the faster way once each has `TRIAL_CALLS` calls."""
    timed = _trials.get(trial)
    if timed is None:  # decided meanwhile
        return
    one, pooled = timed
    (pooled if parallel else one).append(seconds)
    if len(one) >= TRIAL_CALLS and len(pooled) >= TRIAL_CALLS:
        _parallel[trial] = min(pooled) < min(one)
        _trials.pop(trial, None)


def _packable(keys) -> bool:
    """Whether `_pack_keys` applies: float32 keys with fewer than 2^31 per row."""
    return keys.dtype == np.float32 and keys.shape[-1] < 2 ** 31


def host_argsort(keys: np.ndarray) -> np.ndarray:
    """The host sort `argsort` runs on a CPU, here with numpy arrays in and out: the stable sorting permutation of
    keys [..., N] along the last axis -> int32 [..., N]; float32 keys by `_sort_rows`, other dtypes by
    `np.argsort`."""
    keys = np.asarray(keys)
    if not _packable(keys):
        return np.argsort(keys, axis=-1, kind="stable").astype(np.int32)
    packed = np.empty(keys.shape, np.int64)
    _sort_rows(keys, packed)
    return packed.astype(np.int32)  # the low 32 bits: the index


# The callbacks of `sort_keys` (`jax.experimental.buffer_callback`): numpy reads XLA's input buffer and writes into
# its result buffers in place, with none of `jax.pure_callback`'s copies.
def _sort_words_into(context, words: Buffer, keys: Buffer) -> None:
    """float32 keys [..., N] -> int32 words [..., N, 2]: each pair the little-endian halves of one sorted int64
    of `_pack_keys` (the index, then the key's mapped bits)."""
    del context
    words = np.asarray(words)
    _sort_rows(np.asarray(keys), words.view(np.int64).reshape(words.shape[:-1]))


def _argsort_into(context, perm: Buffer, keys: Buffer) -> None:
    """Keys [..., N] of another dtype -> their stable sorting permutation, int32 [..., N]."""
    del context
    np.copyto(np.asarray(perm), np.argsort(np.asarray(keys), axis=-1, kind="stable"), casting="unsafe")


def _host_sort(method: str) -> bool:
    """Whether `method` sorts on the host (numpy) rather than with XLA's sort; a ValueError for unknown ones."""
    if method not in METHODS:
        raise ValueError(f"sort_method must be one of {METHODS}; got {method!r}")
    return method == "numpy" or (method == "auto" and jax.default_backend() == "cpu" and jax.device_count() == 1)


def sort_keys(keys: jax.Array, method: str = "auto") -> tuple[jax.Array, jax.Array]:
    """The keys [..., N] sorted along the last axis and the (stable) permutation that sorts them, int32 [..., N];
    no gradient (for a custom VJP that carries gradients back itself). The sorted keys come out of the sort itself
    (on the host, for float32 keys, the high halves of its packed integers; XLA's sort carries the indices beside the
    keys), not from a gather by the permutation."""
    keys = jax.lax.stop_gradient(keys)
    if _host_sort(method):
        if _packable(keys) and sys.byteorder == "little":
            out = jax.ShapeDtypeStruct(keys.shape + (2,), jnp.int32)
            words = buffer_callback(_sort_words_into, out, vmap_method="broadcast_all")(keys)
            ordered = _ordered_bits(words[..., 1])
            return jax.lax.bitcast_convert_type(ordered, jnp.float32), words[..., 0]
        out = jax.ShapeDtypeStruct(keys.shape, jnp.int32)
        perm = buffer_callback(_argsort_into, out, vmap_method="broadcast_all")(keys)
        return take_last(keys, perm), perm
    index = jax.lax.broadcasted_iota(jnp.int32, keys.shape, keys.ndim - 1)
    return jax.lax.sort_key_val(keys, index, dimension=keys.ndim - 1, is_stable=True)  # one XLA sort gives both


def argsort(keys: jax.Array, method: str = "auto") -> jax.Array:
    """Permutation sorting `keys` [..., N] along the last axis -> int32 [..., N] (no gradient)."""
    return sort_keys(keys, method)[1]


def take_last(values: jax.Array, index: jax.Array) -> jax.Array:
    """values[..., index[..., j]] along the last axis as one flat gather ([..., N], [..., M] -> [..., M]).

    Equivalent to jnp.take_along_axis(values, index, -1) with equal leading shapes and indices in [0, N), but
    lowers to a 1-D gather, which XLA runs several times faster on CPU (also under vmap). The flat indices are
    unsigned and promised in bounds: no wrapping of negative indices, no clamping.
    """
    flat = _flat_positions(index, values.shape[-1])
    return values.reshape(-1).at[flat].get(mode="promise_in_bounds").reshape(index.shape)


def put_last(values: jax.Array, perm: jax.Array) -> jax.Array:
    """The inverse of `take_last` by a permutation: out[..., perm[..., j]] = values[..., j] along the last axis
    (values and perm [..., N], each row of perm a permutation of 0..N-1; -> [..., N]).

    One flat scatter, its indices promised unique and in bounds: it carries values computed in sorted order
    back to the input order without building the inverse permutation and gathering by it, and without the add of
    a gather's transpose (docs/tsw_sl.md §16.3). ValueError when the shapes differ.
    """
    if values.shape != perm.shape:
        raise ValueError(f"put_last: values {values.shape} and perm {perm.shape} must have the same shape")
    flat = _flat_positions(perm, perm.shape[-1])
    out = jnp.zeros(values.size, values.dtype).at[flat]
    return out.set(values.reshape(-1), unique_indices=True, mode="promise_in_bounds").reshape(values.shape)


def _flat_positions(index: jax.Array, n: int) -> jax.Array:
    """Indices [..., M] into rows of length n -> their positions in the flattened rows, uint32 [size]."""
    rows = index.size // max(index.shape[-1], 1)
    offsets = (jnp.arange(rows, dtype=jnp.int32) * n).reshape(index.shape[:-1] + (1,))
    return (index + offsets).reshape(-1).astype(jnp.uint32)


def sort_with(keys: jax.Array, *payloads: jax.Array, method: str = "auto") -> tuple[jax.Array, ...]:
    """Sorts `keys` [..., N] along the last axis and applies the same order to each payload [..., N].

    Returns (sorted_keys, *sorted_payloads); differentiable in keys and payloads (forward and reverse mode).
    """
    sorted_keys, perm = _sort_keys_differentiably(keys, method)
    return (sorted_keys,) + tuple(take_last(jnp.broadcast_to(v, keys.shape), perm) for v in payloads)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _sort_keys_differentiably(keys: jax.Array, method: str) -> tuple[jax.Array, jax.Array]:
    """`sort_keys` with the sorted keys differentiable: their tangent is the keys' tangent in sorted order (a
    gather by the permutation, which reverse mode transposes), while the values themselves come from the sort (on
    the host path without a gather)."""
    return sort_keys(keys, method)


@_sort_keys_differentiably.defjvp
def _sort_keys_jvp(method, primals, tangents):
    sorted_keys, perm = sort_keys(primals[0], method)
    return (sorted_keys, perm), (take_last(tangents[0], perm), np.zeros(perm.shape, jax.dtypes.float0))


PREFIX_BLOCK = 32  # entries per block of `cumsum`'s triangular matrix product


def cumsum(values: jax.Array) -> jax.Array:
    """Inclusive prefix sum along the last axis ([..., N] -> [..., N]).

    Floating-point values go in blocks of `PREFIX_BLOCK`: one matrix product with an upper-triangular matrix of
    ones gives every block's own prefix sums, and the prefix sums of the block totals (the same way, recursively)
    are added back. On CPU that is 2-5x faster than `jnp.cumsum` (a reduce-window) and than a parallel
    associative scan from [100, 200] to [1, 10^7] (docs/tsw_sl.md §16), with a small program; the product runs at
    the highest precision (no bfloat16 / TF32 passes on accelerators). A non-finite entry makes its whole block
    non-finite (0 x inf in the product). Other dtypes use `jnp.cumsum`.
    """
    n = values.shape[-1]
    if n == 0 or not jnp.issubdtype(values.dtype, jnp.floating):
        return jnp.cumsum(values, axis=-1)
    block = min(n, PREFIX_BLOCK)
    blocks = -(-n // block)
    padded = jnp.pad(values, [(0, 0)] * (values.ndim - 1) + [(0, blocks * block - n)])
    upper = jnp.triu(jnp.ones((block, block), values.dtype))
    local = jnp.matmul(padded.reshape(values.shape[:-1] + (blocks, block)), upper,
                       precision=jax.lax.Precision.HIGHEST)                 # [..., blocks, block]
    if blocks > 1:
        totals = local[..., -1]
        local = local + (cumsum(totals) - totals)[..., None]               # plus the totals of earlier blocks
    return local.reshape(values.shape[:-1] + (blocks * block,))[..., :n]
