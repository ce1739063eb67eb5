"""Population training: P models of one architecture trained at once, one compiled program for a sweep.

Every model has its own hyperparameters, given as data: a dict ``hparams`` of arrays with a leading
population axis ``[P, ...]`` that is vmapped alongside the parameters. Three keys are read by the engine:

    seed            int    [P]  the model's PRNG seed: init, train subset, shuffling and dropout all derive
                                from it alone, so a model trained in a population and the same model trained
                                alone see the same random numbers (and agree to float rounding)
    optimizer       int    [P]  index into ``task.optimizers``
    train_fraction  float  [P]  fraction of the training set the model learns from (a seeded subset)

any other entry (learning rate, weight decay, dropout, init std, a target image ...) is the task's business.

Optimizer family as data. ``task.optimizers`` are learning-rate-free optax transformations (e.g.
``optax.scale_by_adam()``, ``optax.scale_by_rms()``, ``optax.identity()`` for plain SGD); every model carries
the state of all of them, all are updated, and ``lax.select_n`` picks the model's direction, which is scaled by
``-task.learning_rate(hp, epoch)``. The optimizer update is elementwise and cheap next to the forward and
backward passes, so one mixed population (one compilation, one vmapped group) beats one group per family.

Epochs. Model m with n_m training examples does ceil(n_m / batch_size) steps per epoch over a fresh seeded
shuffle of its subset (last batch partial, as Keras and PyTorch do). The population steps in lockstep for the
longest epoch; a model whose epoch is over is frozen (no parameter, optimizer-state or step-count change).

Random numbers are drawn with ``jax.threefry_partitionable(False)``: under `jax.vmap` over per-model keys the
partitionable Threefry compiles about 20x slower on CPU, and the population axis is what gets sharded anyway.

Devices. The population axis is sharded over the ``"data"`` axis of a `common.distributed.make_mesh` mesh (the
population is padded to a multiple of the number of devices and trimmed back); data sets are replicated.

Chunks. On one CPU device a step of a large vmapped population runs slower per model than a single model's step
(its activations no longer fit in cache: 2.8 ms against 1.9 ms per model-step for P = 64 small CNNs at batch 128
on the project machine), so there the step maps over chunks of ``CPU_CHUNK`` models (`jax.lax.map` with
``batch_size``), each chunk vmapped; accelerators and sharded meshes vmap the whole population at once.
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
from common.distributed import DATA_AXIS, batch_sharding, make_mesh, replicated
from common.progress import progress_bar

__all__ = ["PopulationTask", "Checkpoint", "train_population", "resolve_chunk_size", "REQUIRED_HPARAMS", "CPU_CHUNK"]

REQUIRED_HPARAMS = ("seed", "optimizer", "train_fraction")
CPU_CHUNK = 8  # models vmapped together per step on a single CPU device (see "Chunks" above)
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
    """

    init: Callable[[jax.Array, Mapping[str, jax.Array]], Any]
    loss: Callable[..., tuple[jax.Array, jax.Array]]
    evaluate: Callable[..., Mapping[str, jax.Array]]
    learning_rate: Callable[[Mapping[str, jax.Array], jax.Array], jax.Array]
    optimizers: tuple[optax.GradientTransformation, ...]


class Checkpoint(NamedTuple):
    """One checkpoint of the whole population (numpy, population axis first).

    Attributes:
      epoch: epochs completed (0 = initialisation).
      params: parameter pytree, leaves ``[P, ...]``.
      metrics: ``{"train_<name>": [P], "test_<name>": [P]}`` for every name of ``task.evaluate``; train
        metrics are over each model's own training subset.
    """

    epoch: int
    params: Any
    metrics: dict[str, np.ndarray]


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


def _model_step(task, batch_size, params, opt_states, count, hp, batch, valid, n_m):
    """One update of one model; frozen when no row of its batch is valid."""
    key = jax.random.fold_in(_model_key(hp, _STEP), count)

    def objective(p):
        per_example, penalty = task.loss(p, hp, batch, key)
        w = valid.astype(per_example.dtype)
        return jnp.sum(per_example * w) / jnp.maximum(jnp.sum(w), 1.0) + penalty

    grads = jax.grad(objective)(params)
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


def _shard_population(tree, mesh):
    """Constrain every leaf's leading (population) axis to the mesh's data axis: one layout, one compilation."""
    return jax.lax.with_sharding_constraint(tree, batch_sharding(mesh))


def resolve_chunk_size(chunk_size, mesh):
    """Models vmapped together per step: None (all) or a positive int; "auto" -> CPU_CHUNK on one CPU device."""
    if chunk_size == "auto":
        single_cpu = mesh.devices.size == 1 and mesh.devices.flat[0].platform == "cpu"
        return CPU_CHUNK if single_cpu else None
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
    model_step = lambda *a: _model_step(task, batch_size, *a)
    if chunk_size is None:
        step_fn = jax.vmap(model_step)
    else:
        step_fn = lambda *a: jax.lax.map(lambda args: model_step(*args), a, batch_size=chunk_size)

    def epoch(e, state):
        def order(hp_m, member_m):
            noise = jax.random.uniform(jax.random.fold_in(_model_key(hp_m, _SHUFFLE), e), (n,))
            perm = jnp.argsort(noise + jnp.where(member_m, 0.0, 2.0))  # subset first, shuffled
            return jnp.pad(perm, (0, padded - n))

        orders = jax.vmap(order)(hp, member)

        def step(t, state):
            idx = jax.lax.dynamic_slice_in_dim(orders, t * batch_size, batch_size, axis=1)  # [P, B]
            valid = (t * batch_size + jnp.arange(batch_size))[None, :] < n_m[:, None]
            batch = jax.tree.map(lambda a: a[idx], train)
            return _State(*step_fn(state.params, state.opt_states, state.count, hp, batch, valid, n_m))

        return jax.lax.fori_loop(0, steps, step, state)

    return _shard_population(jax.lax.fori_loop(first_epoch, last_epoch, epoch, state), mesh)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _evaluate(task, eval_batch_size, params, hp, data, member):
    """Mean of ``task.evaluate`` over ``data`` per model; rows weighted by ``member`` bool [P, n]."""
    n = jax.tree.leaves(data)[0].shape[0]
    chunks = math.ceil(n / eval_batch_size)
    pad = chunks * eval_batch_size - n
    chunked = jax.tree.map(lambda a: jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1)).reshape(
        (chunks, eval_batch_size) + a.shape[1:]), data)
    p = jax.tree.leaves(hp)[0].shape[0]
    weight = member.astype(jnp.float32)
    weight = jnp.pad(weight, ((0, 0), (0, pad))).reshape(p, chunks, eval_batch_size).transpose(1, 0, 2)
    apply = jax.vmap(task.evaluate, in_axes=(0, 0, None))

    def body(sums, chunk):
        batch, w = chunk
        values = apply(params, hp, batch)
        return {k: sums[k] + jnp.sum(values[k] * w, axis=1) for k in sums}, None

    names = jax.eval_shape(apply, params, hp, jax.tree.map(lambda a: a[0], chunked))
    sums = {k: jnp.zeros((p,), jnp.float32) for k in names}
    sums = jax.lax.scan(body, sums, (chunked, weight))[0]
    total = jnp.maximum(jnp.sum(weight, axis=(0, 2)), 1.0)
    return {k: v / total for k, v in sums.items()}


@functools.partial(jax.jit, static_argnums=(0, 1))
def _init(task, mesh, hp):
    params = jax.vmap(lambda h: task.init(_model_key(h, _INIT), h))(hp)
    opt_states = tuple(jax.vmap(opt.init)(params) for opt in task.optimizers)
    return _shard_population(_State(params, opt_states, jnp.zeros(hp["seed"].shape, jnp.int32)), mesh)


@functools.partial(jax.jit, static_argnums=1)
def _memberships(hp, n):
    return jax.vmap(lambda h: _membership(h, n))(hp)


def _check_hparams(hparams: Mapping[str, Any]) -> int:
    missing = [k for k in REQUIRED_HPARAMS if k not in hparams]
    if missing:
        raise ValueError(f"hparams: missing {missing}; the engine needs {list(REQUIRED_HPARAMS)}")
    sizes = {k: np.shape(v)[0] if np.ndim(v) else None for k, v in hparams.items()}
    if len(set(sizes.values())) != 1 or None in sizes.values():
        raise ValueError(f"hparams: every entry needs the same leading population axis, got {sizes}")
    return next(iter(sizes.values()))


def train_population(task: PopulationTask, hparams: Mapping[str, Any], train: Any, test: Any, *,
                     epochs: int, batch_size: int, checkpoint_epochs: Sequence[int] = (),
                     eval_batch_size: int = 1024, mesh: Mesh | None = None,
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
      eval_batch_size: rows per evaluation chunk.
      mesh: mesh with a ``"data"`` axis to shard the population over; default all devices.
      chunk_size: models vmapped together in a training step (the rest of the population waits its turn in a
        `jax.lax.map`); None vmaps all of them; "auto" is ``CPU_CHUNK`` on a single CPU device, else None.
        Results do not depend on it.
      epochs_per_call: epochs per compiled call (progress granularity); default about 1% of ``epochs``.
      progress: show a progress bar over epochs (`common.progress.progress_bar`: shown when tqdm is installed).
      desc: the bar's label.

    Returns:
      The `Checkpoint` list in epoch order; parameters and metrics as numpy arrays ``[P, ...]``.
    """
    p = _check_hparams(hparams)
    marks = sorted({int(e) for e in checkpoint_epochs} | {int(epochs)})
    if marks[0] < 0 or marks[-1] > epochs:
        raise ValueError(f"checkpoint_epochs must lie in 0..{epochs}, got {list(checkpoint_epochs)}")
    mesh = make_mesh() if mesh is None else mesh
    chunk_size = resolve_chunk_size(chunk_size, mesh)
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
                sets = (("train", train, member), ("test", test, all_rows))
                metrics = {f"{name}_{k}": v for name, data, weight in sets
                           for k, v in _evaluate(task, eval_batch_size, state.params, hp, data, weight).items()}
                trim = lambda a: np.asarray(a)[:p]
                out.append(Checkpoint(mark, jax.tree.map(trim, state.params), jax.tree.map(trim, metrics)))
    return out
