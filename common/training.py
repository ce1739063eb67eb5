"""One data-parallel training loop for every model of the project.

The model is a pure loss function over a parameter pytree,
``loss_fn(params, batch, key) -> (loss, metrics)`` with ``loss`` a scalar and ``metrics`` a dict of
scalars; the data is a pure function ``batches(step) -> batch`` (pytree of arrays ``[b, ...]``), so a
resumed run sees exactly the batches the uninterrupted run would have seen. The batch is sharded over
the ``"data"`` axis of a device mesh; parameters, optimizer state and RNG key are replicated; the
train step is one ``jax.jit`` with ``NamedSharding`` in/out shardings (XLA inserts the gradient
all-reduce). Flax NNX models go through :func:`nnx_loss_fn`. Multi-host use: see
:mod:`common.distributed`.

Example::

    state, history = fit(loss_fn, params, optax.adam(1e-3), lambda step: data[step % n],
                         key=jax.random.key(0), num_steps=1000, run_dir="runs/a",
                         checkpoint_every=100, eval_fn=evaluate, eval_every=100)
"""
from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from common import checkpointing, checks
from common.distributed import (DATA_AXIS, batch_sharding, initialize_distributed, make_mesh, replicate,
                                replicated, shard_batch)
from common.host_memory import keep_freed_memory
from common.microbatch import chunk_count, resolve_micro_batch, value_and_grad_in_chunks
from common.progress import progress_bar

__all__ = ["TrainState", "init_train_state", "make_train_step", "fit", "nnx_loss_fn", "reseed_streams",
           "trainable_parameters", "make_mesh", "shard_batch", "initialize_distributed", "STEP_COMPILER_OPTIONS",
           "STEP_COMPILER_OPTIONS_XLA_DOTS"]

LossFn = Callable[[Any, Any, jax.Array], tuple[jax.Array, Mapping[str, jax.Array]]]

# XLA options of the compiled train step: LLVM's -O1 instead of -O2 for the kernels XLA generates, and XLA CPU's
# older (LLVM IR) loop emitters instead of its MLIR fusion emitters. The NFN predictors' steps compile 20-35%
# faster at -O1 and run as fast (their time is in the library matmuls, not in the generated loops): MAGEP-NFN at
# batch 64 9.9 -> 6.8 s, the others 2.2-4.5 s from 3.4-7.0 s, steps within +-6% in an interleaved run; without
# the fusion emitters the batch-8 steps compile 0-45% faster again (MAGEP-NFN 4.5 -> 3.4 s, Monomial-NFN
# 1.5-2.1 -> 0.9-1.1 s, Transformer-NFN 1.8 -> 1.1 s), the steps within -15..+16% (docs/common.md §11). Options
# other backends do not use are ignored there. `fit` / `make_train_step` take others (``compiler_options=``).
STEP_COMPILER_OPTIONS = {"xla_backend_optimization_level": 1, "xla_cpu_use_fusion_emitters": False}
# The same with the matrix products on XLA's own dot runtime (Eigen) instead of YNNPACK, which keeps the reductions.
# A choice of host and model, not a default: on an AMD EPYC (family 25, model 17) host the steps of the NFN
# baselines, whose products are 2-D, ran 7-17% faster for Monomial-NFN and 3-9% for NP and HNP at 64 rows (at 8
# rows from 7% faster to 9% slower), their first runs 0.05-0.1 s shorter, while MAGEP-NFN, whose per-channel
# products are batched and which Eigen computes one matrix at a time, ran 6-46% slower and Transformer-NFN did not
# move (`benchmarks.dot_runtime`, docs/common.md §11).
STEP_COMPILER_OPTIONS_XLA_DOTS = {**STEP_COMPILER_OPTIONS,
                                  "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"}


class TrainState(NamedTuple):
    """Everything a training run carries from step to step (a pytree).

    Attributes:
      step: int32 scalar, number of optimizer updates applied so far (= index of the next batch).
      params: parameter pytree.
      opt_state: optax state of ``params``.
      key: PRNG key, split once per step; the step consumes one half and keeps the other.
    """
    step: jax.Array
    params: Any
    opt_state: optax.OptState
    key: jax.Array


def init_train_state(params: Any, optimizer: optax.GradientTransformation,
                     key: jax.Array) -> TrainState:
    """The state before the first step: ``step=0``, ``optimizer.init(params)``, and ``key``."""
    return TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params), key)


def make_train_step(loss_fn: LossFn, optimizer: optax.GradientTransformation, mesh: Mesh,
                    micro_batch: int | str | None = None,
                    compiler_options: Mapping[str, Any] | None = STEP_COMPILER_OPTIONS
                    ) -> Callable[[TrainState, Any], tuple[TrainState, dict[str, jax.Array]]]:
    """A jit-compiled data-parallel step ``step(state, batch) -> (state, metrics)``, compiled with
    ``compiler_options`` (XLA options, default `STEP_COMPILER_OPTIONS`; None: XLA's defaults).

    ``batch`` is sharded over the mesh's ``"data"`` axis (see :func:`shard_batch`), ``state`` is
    replicated and donated; ``metrics`` is ``{"loss": scalar, **loss_fn's metrics}``, replicated.
    The gradient is that of ``loss_fn`` on the whole global batch, whatever the number of devices.
    ``micro_batch`` (rows per device, an int, ``"auto"`` or None: `common.microbatch.resolve_micro_batch`):
    the gradient is accumulated over chunks of that many rows per device (`common.microbatch.value_and_grad_in_chunks`;
    only for a loss that is a mean over rows); a ValueError at the first call when it does not divide the
    rows per device.
    """
    devices = mesh.shape[DATA_AXIS]

    def step(state: TrainState, batch: Any) -> tuple[TrainState, dict[str, jax.Array]]:
        key, step_key = jax.random.split(state.key)
        rows = jax.tree.leaves(batch)[0].shape[0]
        chunks = chunk_count(micro_batch, rows, devices)
        (loss, metrics), grads = value_and_grad_in_chunks(loss_fn, chunks)(state.params, batch, step_key)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return TrainState(state.step + 1, params, opt_state, key), {"loss": loss, **metrics}

    rep = replicated(mesh)
    return jax.jit(step, in_shardings=(rep, batch_sharding(mesh)), out_shardings=(rep, rep),
                   donate_argnums=0, compiler_options=None if compiler_options is None else dict(compiler_options))


def nnx_loss_fn(graphdef: nnx.GraphDef, loss: Callable[..., Any], *frozen: nnx.State) -> LossFn:
    """Adapt ``loss(model, batch, key) -> (loss, metrics)`` on a Flax NNX module to a pure loss.

    Split the module first, ``graphdef, params, *frozen = nnx.split(model, nnx.Param, ...)``, and
    train ``params`` (an ``nnx.State``); ``frozen`` states (e.g. batch statistics, RNG streams) are
    merged back unchanged at every step. Every RNG stream of the module (e.g. the one ``nnx.Dropout`` draws
    from) is reseeded from the step's ``key`` inside the step (`reseed_streams`), so dropout masks differ from step
    to step and follow the run's key (a resumed run draws the same ones). Get the trained module with
    ``nnx.merge(graphdef, state.params, *frozen)``.
    """
    def loss_fn(params: nnx.State, batch: Any, key: jax.Array):
        model = nnx.merge(graphdef, params, *frozen, copy=True)  # fresh variables: the streams may advance
        return loss(reseed_streams(model, key), batch, key)
    return loss_fn


def trainable_parameters(model: nnx.Module) -> int:
    """Number of scalars in the ``nnx.Param`` variables of a Flax NNX module (works on `nnx.eval_shape` modules:
    nothing need be allocated)."""
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


def reseed_streams(model: nnx.Module, key: jax.Array) -> nnx.Module:
    """Reseed every RNG stream of ``model`` in place, stream i (in graph order) with ``fold_in(key, i)``;
    returns ``model``."""
    tags = list(dict.fromkeys(node.tag for _, node in nnx.iter_graph(model) if isinstance(node, nnx.RngStream)))
    if tags:
        nnx.reseed(model, **{tag: jax.random.fold_in(key, i) for i, tag in enumerate(tags)})
    return model


def _load_history(path: str, upto: int) -> list[dict[str, float]]:
    """Records of the JSON-lines file ``path`` with ``step <= upto``; rewrites the file to them
    (dropping also a last line cut short by a killed process)."""
    history = []
    if os.path.exists(path):
        with open(path) as f:
            lines = [line for line in f if line.endswith("\n")]
        history = [r for r in map(json.loads, lines) if r["step"] <= upto]
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in history)
    return history


def _append(path: str, line: str) -> None:
    """Append ``line`` to the file ``path``; an OSError names the file (a write error alone does not)."""
    try:
        with open(path, "a") as f:
            f.write(line)
    except OSError as err:
        raise OSError(err.errno, f"fit: could not append to {path}: {err.strerror}") from err


def fit(loss_fn: LossFn, params: Any, optimizer: optax.GradientTransformation,
        batches: Callable[[int], Any], *, key: jax.Array, num_steps: int,
        run_dir: str | os.PathLike | None = None, checkpoint_every: int | None = None,
        eval_fn: Callable[[Any], Mapping[str, Any]] | None = None, eval_every: int | None = None,
        log_every: int = 1, mesh: Mesh | None = None, progress: bool = True,
        max_to_keep: int | None = 3, micro_batch: int | str | None = None,
        compiler_options: Mapping[str, Any] | None = STEP_COMPILER_OPTIONS
        ) -> tuple[TrainState, list[dict[str, float]]]:
    """Train ``params`` for ``num_steps`` optimizer steps, resuming from ``run_dir`` if possible.

    Args:
      loss_fn: ``loss_fn(params, batch, key) -> (scalar loss, dict of scalar metrics)``, averaged
        over the batch rows; ``key`` is a fresh PRNG key for each step.
      params: initial parameter pytree (copied, never modified).
      optimizer: optax gradient transformation (for a model with many parameter arrays, ``optax.flatten(...)``
        of an elementwise optimizer such as Adam computes the same updates with far fewer kernels to compile).
      batches: deterministic ``batches(step) -> batch`` for ``step = 0 .. num_steps-1``, a pytree of
        arrays ``[b, ...]`` (on several hosts: this host's rows); ``b`` divisible by the number of
        local devices in ``mesh``.
      key: PRNG key of the run.
      num_steps: total number of steps, counting those already done by a resumed run (a ValueError
        if the checkpoint to resume is already past it).
      run_dir: directory for ``metrics.jsonl`` and ``checkpoints/``; ``None``: keep nothing. If it
        holds a checkpoint, training continues from the latest readable one (params, optimizer state,
        step and key; unreadable ones are set aside with a warning, see
        `common.checkpointing.restore_latest`), and ``metrics.jsonl`` is cut back to the restored step.
      checkpoint_every: save a checkpoint every this many steps (and always after the last step,
        when ``run_dir`` is set); ``None`` or 0: only after the last step.
      eval_fn: ``eval_fn(params) -> dict of scalars``, called after step ``s`` if
        ``s % eval_every == 0``; logged with an ``eval/`` prefix.
      eval_every: see ``eval_fn`` (``None`` or 0: never).
      log_every: log the step metrics every this many steps (and after the last step).
      mesh: device mesh with a ``"data"`` axis; default :func:`make_mesh` over all devices.
      progress: show a progress bar (on process 0, when tqdm is installed: `common.progress.progress_bar`).
      max_to_keep: number of checkpoints kept (``None``: all).
      micro_batch: accumulate each step's gradient over chunks of this many rows per device (an int;
        ``"auto"``: 16 on a CPU backend when it divides the rows per device, except batches of up to 64 rows on
        one device running on the calling thread, `common.microbatch.resolve_micro_batch`; None: the whole batch
        at once). Only for a loss that is a mean over rows with no coupling between rows: the gradient is then the
        same up to float rounding, and on a CPU it bounds each pass's memory (NFN predictors at batch 256: whole
        batches as fast or up to 17% slower; docs/common.md §12). Each chunk gets its own key.
      compiler_options: XLA options the train step is compiled with (default `STEP_COMPILER_OPTIONS`, the
        fastest compile for the NFN predictors; None: XLA's defaults, which compile deep MAGEP models on
        long MLPs faster, docs/common.md §11).

    Returns:
      ``(state, history)``: the final replicated :class:`TrainState` and the logged records, one
      dict per logged step (``{"step": s, "loss": ..., ..., "eval/...": ...}``); on process 0 with
      a ``run_dir``, the lines of ``metrics.jsonl`` (including those of the runs it resumed), on
      other processes only this call's steps.

    Raises:
      ValueError for bad counts or a checkpoint past ``num_steps``; `common.checkpointing.CheckpointWriteError`
      (an OSError) when a checkpoint cannot be written, e.g. on a full disk, naming the folder and the
      cause (the finished checkpoints stay intact, so a rerun resumes); an OSError naming ``metrics.jsonl``
      when a record cannot be appended.
    """
    checks.count("num_steps", num_steps, minimum=0)
    checks.count("log_every", log_every)
    checks.count("checkpoint_every", checkpoint_every, minimum=0, allow_none=True)  # None, 0: never
    checks.count("eval_every", eval_every, minimum=0, allow_none=True)
    checks.count("max_to_keep", max_to_keep, allow_none=True)
    resolve_micro_batch(micro_batch, 1)  # ValueError now for a bad value
    # one jitted call per step: reuse its temporaries instead of page-faulting them in anew (the steps also run on
    # this thread only if keep_freed_memory ran before JAX's first computation: call it first in a script, §10)
    keep_freed_memory()
    mesh = make_mesh() if mesh is None else mesh
    state = replicate(init_train_state(params, optimizer, key), mesh)
    manager = log_path = None
    if run_dir is not None:
        os.makedirs(run_dir, exist_ok=True)
        manager = checkpointing.open_manager(run_dir, max_to_keep)
        if jax.process_index() == 0:
            log_path = os.path.join(run_dir, "metrics.jsonl")
    train_step = make_train_step(loss_fn, optimizer, mesh, micro_batch, compiler_options)
    with contextlib.nullcontext() if manager is None else checkpointing.closing(manager):  # waits for saves
        if manager is not None:
            state = checkpointing.restore_latest(manager, state) or state
        start = int(state.step)
        if start > num_steps:
            raise ValueError(f"fit: num_steps={num_steps} but the checkpoint in {run_dir} is at step {start}; "
                             f"pass num_steps >= {start} or use another run_dir")
        history = [] if log_path is None else _load_history(log_path, start)
        bar = progress_bar(range(start + 1, num_steps + 1), total=num_steps, initial=start,
                           enabled=progress and jax.process_index() == 0)
        for step in bar:
            state, metrics = train_step(state, shard_batch(batches(step - 1), mesh))
            record = {}
            if step % log_every == 0 or step == num_steps:
                record = {k: float(v) for k, v in metrics.items()}
            if eval_fn is not None and eval_every and step % eval_every == 0:
                record |= {f"eval/{k}": float(v) for k, v in eval_fn(state.params).items()}
            if record:
                history.append({"step": step, **record})
                bar.set_postfix(record, refresh=False)
                if log_path is not None:
                    _append(log_path, json.dumps(history[-1]) + "\n")
            if manager is not None and (step == num_steps
                                        or (checkpoint_every and step % checkpoint_every == 0)):
                checkpointing.save(manager, step, state)
    return state, history
