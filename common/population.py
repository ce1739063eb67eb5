"""Population training: P models of one architecture trained at once, one compiled program for a sweep.

Every model has its own hyperparameters, given as data: a dict ``hparams`` of arrays with a leading
population axis ``[P, ...]`` that is vmapped alongside the parameters. Three keys are read by the engine:

    seed            int    [P]  the model's PRNG seed: init, train subset, shuffling and dropout all derive
                                from it alone, so a model trained in a population and the same model trained
                                alone see the same random numbers (and agree to float rounding)
    optimizer       int    [P]  index into ``task.optimizers`` (0 .. len - 1)
    train_fraction  float  [P]  fraction of the training set the model learns from (a seeded subset), in (0, 1]

any other entry (learning rate, weight decay, dropout, init std, a target image ...) is the task's business.

Optimizer family as data. ``task.optimizers`` are learning-rate-free optax transformations (e.g.
``optax.scale_by_adam()``, ``optax.scale_by_rms()``, ``optax.identity()`` for plain SGD); every model carries
the state of all of them, all are updated, and ``lax.select_n`` picks the model's direction, which is scaled by
``-task.learning_rate(hp, epoch)``. The optimizer update is elementwise and cheap next to the forward and
backward passes, so one mixed population (one compilation, one vmapped group) beats one group per family.

Epochs. Model m with n_m training examples does ceil(n_m / batch_size) steps per epoch over a fresh seeded
shuffle of its subset (in data order if ``task.shuffle`` is False; last batch partial, as Keras and PyTorch
do). The population steps in lockstep for the longest epoch; a model whose epoch is over is frozen (no
parameter, optimizer-state or step-count change).

Random numbers are drawn with ``jax.threefry_partitionable(False)``: under `jax.vmap` over per-model keys the
partitionable Threefry compiles about 20x slower on CPU, and the population axis is what gets sharded anyway.

Devices. The population axis is sharded over the ``"data"`` axis of a `common.distributed.make_mesh` mesh (the
population is padded to a multiple of the number of devices and trimmed back); data sets are replicated.

Micro-batches. ``task.micro_batch`` rows per gradient pass: a step's gradient is accumulated over the batch's
micro-batches (a `jax.lax.scan`) before the one update. On a CPU core the working set of a pass (activations,
patches, dropout masks and their gradients) then stays in cache: a Small-CNN-Zoo step on 28 x 28 images at
batch 512 ran 1.5x (one model) to 3x (a chunk of 4 models) faster in micro-batches of 128, measured on a
loaded 2-core machine (`benchmarks/results/zoo_throughput.md`).

Chunks. On one CPU device a vmapped population is stepped ``chunk_size`` models at a time (a `jax.lax.scan`
over chunks, each chunk vmapped; ``CPU_CHUNK``): a large population vmapped at once no longer fits in cache.
A chunk of one model is stepped unbatched (no vmap: a vmapped axis of one still turns every matmul with the
weights into a batched one, 1.5x slower for the zoo transformer). A chunk whose members are all past their
epoch is skipped, so a population ordered by train fraction (as `magep.zoo_recipes.sample_cnn_configs` orders
it) does not pay the longest member's epoch for every member.
Accelerators and sharded meshes vmap the whole population at once.

Divergence. A model whose parameters hold a NaN or inf at a checkpoint is flagged there (``Checkpoint.diverged``,
the ``diverged`` column of a zoo's metadata) and its metrics are NaN: argmax of NaN logits would otherwise
report a plausible chance-level accuracy.

Evaluation reads each model's own rows only (its training subset, or the whole test set), in chunks of
``eval_batch_size`` rows, models chunked as in training.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh
from common.checks import count
from common.distributed import DATA_AXIS, batch_sharding, make_mesh, replicated
from common.progress import progress_bar

__all__ = ["PopulationTask", "Checkpoint", "train_population", "resolve_chunk_size", "REQUIRED_HPARAMS", "CPU_CHUNK"]

REQUIRED_HPARAMS = ("seed", "optimizer", "train_fraction")
CPU_CHUNK = 4  # models vmapped together per step on a single CPU device (see "Chunks" above)
_INIT, _SUBSET, _SHUFFLE, _STEP = range(4)  # fold_in tags of a model's key streams


class PopulationTask(NamedTuple):
    """The pure functions of ONE model (the engine vmaps them over the population).

    Attributes:
      init: ``init(key, hp) -> params``; ``hp`` is one model's row of ``hparams`` (scalars).
      loss: ``loss(params, hp, batch, key) -> (per_example [B], penalty scalar)``; ``batch`` is a pytree of
        ``[B, ...]`` rows of the training set; the engine averages ``per_example`` over the valid rows and adds
        ``penalty`` (e.g. an L2 term).
      evaluate: ``evaluate(params, hp, batch) -> {name: [B]}`` per-example metrics (e.g. loss, accuracy),
        averaged by the engine over a whole data set.
      learning_rate: ``learning_rate(hp, epoch) -> scalar``; ``epoch`` is the model's float epoch count
        (updates done / its steps per epoch), for warm-up and decay schedules.
      optimizers: learning-rate-free optax transformations; ``hp["optimizer"]`` indexes them.
      micro_batch: rows per gradient pass (None: the whole batch at once). A step's gradient is accumulated
        over micro-batches of this many rows (the batch padded with invalid rows to a multiple), micro-batch j
        getting the key ``fold_in(step_key, j)``: the same update up to float rounding and dropout draws, with
        a working set that stays in a CPU core's cache (see "Micro-batches" above).
      shuffle: draw a fresh seeded order of the model's subset every epoch (True), or visit it in data order
        every epoch (False: no per-epoch draw and sort; for full-batch tasks whose loss is a mean over the
        rows and draws no randomness from their order, e.g. SIREN fits, where it changes only float rounding).
      cpu_chunk: models vmapped together per step on a single CPU device when ``chunk_size="auto"`` (see
        "Chunks" above); the best value depends on the model's working set, so a task may set its own.
    """

    init: Callable[[jax.Array, Mapping[str, jax.Array]], Any]
    loss: Callable[..., tuple[jax.Array, jax.Array]]
    evaluate: Callable[..., Mapping[str, jax.Array]]
    learning_rate: Callable[[Mapping[str, jax.Array], jax.Array], jax.Array]
    optimizers: tuple[optax.GradientTransformation, ...]
    micro_batch: int | None = None
    shuffle: bool = True
    cpu_chunk: int = CPU_CHUNK


class Checkpoint(NamedTuple):
    """One checkpoint of the whole population (numpy, population axis first).

    Attributes:
      epoch: epochs completed (0 = initialisation).
      params: parameter pytree, leaves ``[P, ...]``.
      metrics: ``{"train_<name>": [P], "test_<name>": [P]}`` for every name of ``task.evaluate``; train
        metrics are over each model's own training subset; NaN for a diverged model.
      diverged: bool [P], True where a parameter is NaN or inf.
    """

    epoch: int
    params: Any
    metrics: dict[str, np.ndarray]
    diverged: np.ndarray


class _State(NamedTuple):
    params: Any
    opt_states: tuple
    count: jax.Array  # int32 [P]: updates applied


def _model_key(hp, tag):
    return jax.random.fold_in(jax.random.key(hp["seed"]), tag)


def _membership(hp, n: int) -> jax.Array:
    """bool [n]: the model's training subset, the first round(fraction * n) of a seeded permutation."""
    n_m = jnp.clip(jnp.round(hp["train_fraction"] * n), 1, n).astype(jnp.int32)
    rank = jnp.argsort(jax.random.permutation(_model_key(hp, _SUBSET), n))
    return rank < n_m


def _gradient(task, params, hp, train, rows, valid, key):
    """Gradient of (mean loss over the valid rows + penalty) on the training rows ``rows`` int [B], accumulated
    over ``task.micro_batch`` rows at a time; each micro-batch is gathered from ``train`` inside its pass (no
    whole-batch copy, no transpose of it under `jax.vmap`)."""
    n_rows = valid.shape[0]
    micro = min(task.micro_batch or n_rows, n_rows)
    parts = -(-n_rows // micro)
    n_valid = jnp.maximum(jnp.sum(valid), 1).astype(jnp.float32)

    def objective(p, part_rows, weight, part_key):
        per_example, penalty = task.loss(p, hp, jax.tree.map(lambda a: a[part_rows], train), part_key)
        w = weight.astype(per_example.dtype)
        return jnp.sum(per_example * w) / n_valid.astype(per_example.dtype) + penalty / parts

    if parts == 1:
        return jax.grad(objective)(params, rows, valid, key)
    pad = parts * micro - n_rows
    split = lambda a: jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1)).reshape((parts, micro) + a.shape[1:])

    def accumulate(total, xs):
        part_rows, weight, j = xs
        g = jax.grad(objective)(params, part_rows, weight, jax.random.fold_in(key, j))
        return jax.tree.map(jnp.add, total, g), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    return jax.lax.scan(accumulate, zeros, (split(rows), split(valid), jnp.arange(parts)))[0]


def _model_step(task, batch_size, train, params, opt_states, count, hp, rows, valid, n_m):
    """One update of one model on the training rows ``rows`` int [B]; frozen when no row is valid."""
    key = jax.random.fold_in(_model_key(hp, _STEP), count)
    grads = _gradient(task, params, hp, train, rows, valid, key)
    results = [opt.update(grads, s, params) for opt, s in zip(task.optimizers, opt_states)]
    directions = [r[0] for r in results]
    direction = jax.tree.map(lambda *d: jax.lax.select_n(hp["optimizer"], *d), *directions)
    steps_per_epoch = jnp.ceil(n_m / batch_size)
    lr = task.learning_rate(hp, count / steps_per_epoch)
    new_params = jax.tree.map(lambda p, d: p - (lr * d).astype(p.dtype), params, direction)
    active = jnp.any(valid)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(active, a, b), new, old)
    return (keep(new_params, params), keep(tuple(r[1] for r in results), opt_states),
            count + active.astype(count.dtype))


def _in_chunks(fn, chunk_size, carried, *args):
    """``jax.vmap(fn)(*carried, *args)`` computed ``chunk_size`` models at a time (a `jax.lax.scan` over chunks;
    the population padded with copies of its last model), returning ``carried``'s structure. A chunk whose
    models all have ``args[-2]`` (valid rows, bool [P, B]) all False is skipped (`jax.lax.cond`): its models
    are frozen anyway, and populations are ordered so that such chunks are common late in an epoch."""
    p = jax.tree.leaves(carried)[0].shape[0]
    chunk_size = min(chunk_size, p)
    chunks = -(-p // chunk_size)
    take = jnp.minimum(jnp.arange(chunks * chunk_size), p - 1)
    split = lambda a: a[take].reshape((chunks, chunk_size) + a.shape[1:])

    def one(*xs):  # a chunk of one model: called unbatched (a vmap over an axis of 1 batches every matmul with its
        # weights, e.g. a zoo transformer step ran 21 ms per step against 14 ms without it)
        return jax.tree.map(lambda t: t[None], fn(*jax.tree.map(lambda t: t[0], xs)))

    def body(_, xs):
        c, a = xs
        active = jnp.any(a[-2])
        return None, jax.lax.cond(active, lambda: (one if chunk_size == 1 else jax.vmap(fn))(*c, *a), lambda: c)

    out = jax.lax.scan(body, None, (jax.tree.map(split, carried), jax.tree.map(split, args)))[1]
    return jax.tree.map(lambda a: a.reshape((chunks * chunk_size,) + a.shape[2:])[:p], out)


def _shard_population(tree, mesh):
    """Constrain every leaf's leading (population) axis to the mesh's data axis: one layout, one compilation."""
    return jax.lax.with_sharding_constraint(tree, batch_sharding(mesh))


def resolve_chunk_size(chunk_size, mesh, cpu_chunk: int = CPU_CHUNK):
    """Models vmapped together per step: None (all) or a positive int; "auto" -> ``cpu_chunk`` on one CPU device."""
    if chunk_size == "auto":
        single_cpu = mesh.devices.size == 1 and mesh.devices.flat[0].platform == "cpu"
        return cpu_chunk if single_cpu else None
    if chunk_size is not None and (not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1):
        raise ValueError(f"chunk_size must be 'auto', None or a positive int; got {chunk_size!r}")
    return chunk_size


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3), donate_argnums=4)
def _run_epochs(task, batch_size, mesh, chunk_size, state, hp, member, train, steps, first_epoch, last_epoch):
    """Epochs ``first_epoch .. last_epoch - 1`` of the whole population, ``steps`` (the longest epoch) steps
    each, ``chunk_size`` models vmapped at a time (None: all); traced bounds, so one compilation serves every
    call, and no cross-device collective is needed."""
    n = member.shape[1]
    n_m = jnp.sum(member, axis=1)
    padded = math.ceil(n / batch_size) * batch_size
    model_step = lambda *a: _model_step(task, batch_size, train, *a)
    if chunk_size is None:
        step_fn = lambda carried, *a: jax.vmap(model_step)(*carried, *a)
    else:
        step_fn = lambda carried, *a: _in_chunks(model_step, chunk_size, carried, *a)

    def order(e, hp_m, member_m):
        rank = jnp.where(member_m, 0.0, 2.0)  # subset first
        if task.shuffle:
            rank = rank + jax.random.uniform(jax.random.fold_in(_model_key(hp_m, _SHUFFLE), e), (n,))
        return jnp.pad(jnp.argsort(rank, stable=True), (0, padded - n))

    data_order = None if task.shuffle else jax.vmap(lambda h, m: order(0, h, m))(hp, member)

    def epoch(e, state):
        orders = jax.vmap(lambda h, m: order(e, h, m))(hp, member) if task.shuffle else data_order

        def step(t, state):
            rows = jax.lax.dynamic_slice_in_dim(orders, t * batch_size, batch_size, axis=1)  # [P, B]
            valid = (t * batch_size + jnp.arange(batch_size))[None, :] < n_m[:, None]
            return _State(*step_fn(tuple(state), hp, rows, valid, n_m))

        return jax.lax.fori_loop(0, steps, step, state)

    return _shard_population(jax.lax.fori_loop(first_epoch, last_epoch, epoch, state), mesh)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _evaluate(task, eval_batch_size, chunk_size, params, hp, data, member, max_rows):
    """Mean of ``task.evaluate`` per model over its rows of ``data`` (``member`` bool [P, n]), at most the
    first ``max_rows`` of them in data order (int scalar).

    Each model reads its own rows, in order, ``eval_batch_size`` at a time, for as many chunks as the largest
    row count needs (a traced loop bound: a 10% subset costs a tenth of the full set); ``chunk_size`` models
    at a time as in training (None: all)."""
    n = member.shape[1]
    chunks = math.ceil(n / eval_batch_size)
    rows = jnp.argsort(~member, axis=1, stable=True)  # [P, n]: each model's rows first, in order
    rows = jnp.pad(rows, ((0, 0), (0, chunks * eval_batch_size - n)))
    n_rows = jnp.minimum(jnp.sum(member, axis=1), max_rows)
    apply = lambda p, h, r: task.evaluate(p, h, jax.tree.map(lambda a: a[r], data))
    if chunk_size is None:
        apply_all = jax.vmap(apply)
    else:
        apply_all = lambda *a: jax.lax.map(lambda x: apply(*x), a, batch_size=chunk_size)

    def body(c, sums):
        r = jax.lax.dynamic_slice_in_dim(rows, c * eval_batch_size, eval_batch_size, axis=1)  # [P, E]
        w = ((c * eval_batch_size + jnp.arange(eval_batch_size))[None, :] < n_rows[:, None]).astype(jnp.float32)
        values = apply_all(params, hp, r)
        return {k: sums[k] + jnp.sum(values[k] * w, axis=1) for k in sums}

    p = n_rows.shape[0]
    names = jax.eval_shape(apply, jax.tree.map(lambda a: a[0], params), jax.tree.map(lambda a: a[0], hp), rows[0, :1])
    sums = {k: jnp.zeros((p,), jnp.float32) for k in names}
    sums = jax.lax.fori_loop(0, (jnp.max(n_rows) + eval_batch_size - 1) // eval_batch_size, body, sums)
    total = jnp.maximum(n_rows, 1).astype(jnp.float32)
    return {k: v / total for k, v in sums.items()}


@functools.partial(jax.jit, static_argnums=(0, 1))
def _init(task, mesh, hp):
    params = jax.vmap(lambda h: task.init(_model_key(h, _INIT), h))(hp)
    opt_states = tuple(jax.vmap(opt.init)(params) for opt in task.optimizers)
    return _shard_population(_State(params, opt_states, jnp.zeros(hp["seed"].shape, jnp.int32)), mesh)


@functools.partial(jax.jit, static_argnums=1)
def _memberships(hp, n):
    return jax.vmap(lambda h: _membership(h, n))(hp)


def _check_hparams(hparams: Mapping[str, Any], n_optimizers: int) -> int:
    """P, after checking the engine's entries of ``hparams`` model by model (ValueError naming the first bad one)."""
    missing = [k for k in REQUIRED_HPARAMS if k not in hparams]
    if missing:
        raise ValueError(f"hparams: missing {missing}; the engine needs {list(REQUIRED_HPARAMS)}")
    sizes = {k: np.shape(v)[0] if np.ndim(v) else None for k, v in hparams.items()}
    if len(set(sizes.values())) != 1 or None in sizes.values():
        raise ValueError(f"hparams: every entry needs the same leading population axis, got {sizes}")
    checks = (("optimizer", lambda v: (v == np.round(v)) & (v >= 0) & (v < n_optimizers),
               f"an integer index in 0..{n_optimizers - 1} (task.optimizers has {n_optimizers})"),
              ("train_fraction", lambda v: (v > 0) & (v <= 1), "a fraction in (0, 1]"))
    for name, ok, expected in checks:
        values = np.asarray(hparams[name], np.float64)
        bad = np.flatnonzero(~ok(values))
        if bad.size:
            raise ValueError(f"hparams[{name!r}] of model {bad[0]} is {np.asarray(hparams[name])[bad[0]].item()!r}; "
                             f"expected {expected} "
                             f"({bad.size} of {values.size} models are out of range)")
    return next(iter(sizes.values()))


def _diverged(params: Any) -> np.ndarray:
    """bool [P]: models with a NaN or inf parameter (params: numpy leaves [P, ...])."""
    leaves = jax.tree.leaves(params)
    finite = np.ones(leaves[0].shape[0], bool)
    for leaf in leaves:
        finite &= np.isfinite(leaf.reshape(leaf.shape[0], -1)).all(axis=1)
    return ~finite


def train_population(task: PopulationTask, hparams: Mapping[str, Any], train: Any, test: Any, *,
                     epochs: int, batch_size: int, checkpoint_epochs: Sequence[int] = (),
                     eval_batch_size: int = 1024, train_eval_rows: int | None = None, mesh: Mesh | None = None,
                     chunk_size: int | str | None = "auto", epochs_per_call: int | None = None, progress: bool = True,
                     desc: str | None = None) -> list[Checkpoint]:
    """Train P models at once and return their checkpoints.

    Args:
      task: the model's pure functions, see `PopulationTask`.
      hparams: ``{name: array [P, ...]}`` with at least ``seed``, ``optimizer``, ``train_fraction``.
      train: training set, a pytree of arrays ``[N, ...]`` (shared by all models; each model uses its subset).
      test: test set, a pytree of arrays ``[M, ...]``.
      epochs: number of epochs.
      batch_size: rows per step (per model).
      checkpoint_epochs: epochs (0..epochs) after which to record weights and metrics; ``epochs`` is always
        recorded.
      eval_batch_size: rows of a model's data per evaluation pass.
      train_eval_rows: train metrics over at most this many rows of each model's subset, the first in data
        order (a uniform sample, the subset being a seeded random one); None: the whole subset. The test
        metrics always read the whole test set.
      mesh: mesh with a ``"data"`` axis to shard the population over; default all devices.
      chunk_size: models vmapped together in a training step and in evaluation (the chunks follow one another;
        a chunk whose models are all past their epoch is skipped); None vmaps all of them; "auto" is
        ``task.cpu_chunk`` on a single CPU device, else None. Results do not depend on it (up to float rounding).
      epochs_per_call: epochs per compiled call (progress granularity); default about 1% of ``epochs``.
      progress: show a progress bar over epochs (`common.progress.progress_bar`: shown when tqdm is installed).
      desc: the bar's label.

    Returns:
      The `Checkpoint` list in epoch order; parameters and metrics as numpy arrays ``[P, ...]``; a diverged
      model (a NaN/inf parameter) is flagged in ``diverged`` and has NaN metrics.
    Raises:
      ValueError: a missing or out-of-range hyperparameter (an ``optimizer`` index outside
        ``task.optimizers``, a ``train_fraction`` outside (0, 1]), naming the first bad model; ``epochs`` < 0,
        ``batch_size`` or ``eval_batch_size`` < 1.
    """
    count("epochs", epochs, 0)
    count("batch_size", batch_size)
    count("eval_batch_size", eval_batch_size)
    count("train_eval_rows", train_eval_rows, allow_none=True)
    p = _check_hparams(hparams, len(task.optimizers))
    marks = sorted({int(e) for e in checkpoint_epochs} | {int(epochs)})
    if marks[0] < 0 or marks[-1] > epochs:
        raise ValueError(f"checkpoint_epochs must lie in 0..{epochs}, got {list(checkpoint_epochs)}")
    mesh = make_mesh() if mesh is None else mesh
    chunk_size = resolve_chunk_size(chunk_size, mesh, task.cpu_chunk)
    devices = mesh.shape[DATA_AXIS]
    rows = np.arange(math.ceil(p / devices) * devices) % p  # pad with copies of the first models
    shard = batch_sharding(mesh)
    hp = jax.device_put({k: np.asarray(v)[rows] for k, v in hparams.items()}, shard)
    train, test = jax.device_put((train, test), replicated(mesh))
    n = jax.tree.leaves(train)[0].shape[0]

    with jax.threefry_partitionable(False):
        member = _memberships(hp, n)
        steps = math.ceil(int(np.max(np.sum(np.asarray(member), axis=1))) / batch_size)

        all_rows = jax.device_put(np.ones((len(rows), jax.tree.leaves(test)[0].shape[0]), bool), shard)
        state = _init(task, mesh, hp)
        chunk = epochs_per_call or max(1, epochs // 100)
        done, out = 0, []
        with progress_bar(total=epochs, desc=desc, enabled=progress, leave=False) as bar:
            for mark in marks:
                while done < mark:
                    stop = min(mark, done + chunk)
                    state = _run_epochs(task, batch_size, mesh, chunk_size, state, hp, member, train, steps, done, stop)
                    bar.update(stop - done)
                    done = stop
                sets = (("train", train, member, train_eval_rows or n), ("test", test, all_rows, all_rows.shape[1]))
                metrics = {f"{name}_{k}": v for name, data, weight, limit in sets
                           for k, v in _evaluate(task, eval_batch_size, chunk_size, state.params, hp, data,
                                                 weight, limit).items()}
                trim = lambda a: np.asarray(a)[:p]
                params = jax.tree.map(trim, state.params)
                diverged = _diverged(params)
                metrics = {k: np.where(diverged, np.nan, trim(v)) for k, v in metrics.items()}
                out.append(Checkpoint(mark, params, metrics, diverged))
    return out
