"""Training and scoring models that predict a network's accuracy (a number in [0, 1]) from its weights, or,
with another loss and metric, any other property of it (e.g. the class of an INR).

Family-agnostic: the model is any Flax NNX module with ``model.logits(inputs) -> [R]`` (pre-sigmoid scores), such
as `magep.GeneralizationPredictor` on features or `transformer_nfn.AccuracyPredictor` on transformer weights; the
inputs are any pytree whose leaves have a leading row axis ``[R, ...]``. Training minimises the binary cross-entropy
between ``sigmoid(logits)`` and the accuracies with `common.training.fit`; models are ranked by Kendall's tau, the
metric of the accuracy-prediction papers, and with a validation split the returned model is the one with the best
validation tau (the papers' early stopping), kept across a resumed run. Classifiers (``logits -> [R, K]``) train
the same way with ``loss=cross_entropy_loss, metric=("accuracy", top1_accuracy)``. `magep.train` and
`transformer_nfn.train` add each family's zoo loading and input checks.
"""
from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
import optax
import scipy.stats
from flax import nnx
from jax.sharding import Mesh

from common import checkpointing, training
from common.microbatch import AUTO, chunk_count, map_in_chunks

__all__ = ["random_batches", "bce_loss", "cross_entropy_loss", "predict_logits", "fit_predictor", "kendall_tau",
           "top1_accuracy"]

CHUNK_ROWS = 128  # rows per compiled evaluation chunk (`predict_logits`, validation scoring)


def _rows(inputs: Any, targets: Any, fn: str) -> int:
    """The common row count R of the leaves of ``inputs`` and of ``targets`` [R, ...]."""
    counts = {int(np.shape(leaf)[0]) for leaf in jax.tree.leaves(inputs) if np.ndim(leaf) > 0}
    if np.ndim(targets) < 1 or len(counts) != 1 or counts != {int(np.shape(targets)[0])}:
        shapes = [tuple(np.shape(leaf)) for leaf in jax.tree.leaves(inputs)]
        raise ValueError(f"{fn}: inputs leaves and targets need the same leading row axis; got inputs leaves {shapes} "
                         f"and targets {tuple(np.shape(targets))}")
    return counts.pop()


def random_batches(inputs: Any, targets: Any, batch_size: int) -> Callable[[int], dict]:
    """Deterministic ``batches(step) -> {"x": inputs rows, "y": targets rows}`` for `common.training.fit`.

    Args:
      inputs: pytree with leaves ``[R, ...]``; targets: ``[R]`` (or ``[R, ...]``, e.g. images).
      batch_size: rows per batch, drawn without replacement by ``np.random.default_rng(step)`` (so a resumed run
        sees the same batches).
    Returns:
      ``batches(step)``: ``{"x": pytree with leaves [batch_size, ...], "y": [batch_size]}``.
    Raises:
      ValueError: row counts differ, or ``batch_size`` is not in 1..R.
    """
    n = _rows(inputs, targets, "random_batches")
    if not 1 <= batch_size <= n:
        raise ValueError(f"random_batches: batch_size must be in 1..{n} (the number of rows), got {batch_size}")

    # rows are gathered on the host: an eager jnp gather costs ~2 ms a leaf, more than a small predictor's step
    inputs, targets = jax.device_get((inputs, targets))

    def batches(step: int) -> dict:
        idx = np.random.default_rng(step).choice(n, batch_size, replace=False)
        return {"x": jax.tree.map(lambda a: a[idx], inputs), "y": targets[idx]}

    return batches


def bce_loss(model: nnx.Module, batch: dict, key: jax.Array) -> tuple[jax.Array, dict]:
    """Mean binary cross-entropy of ``sigmoid(model.logits(batch["x"]))`` [b] against ``batch["y"]`` [b] in [0, 1];
    the ``loss(model, batch, key)`` form of `common.training.nnx_loss_fn` (``key`` unused)."""
    del key
    return optax.sigmoid_binary_cross_entropy(model.logits(batch["x"]), batch["y"]).mean(), {}


def cross_entropy_loss(model: nnx.Module, batch: dict, key: jax.Array) -> tuple[jax.Array, dict]:
    """Mean softmax cross-entropy of ``model.logits(batch["x"])`` [b, K] against integer labels ``batch["y"]`` [b]
    (``key`` unused; dropout streams are reseeded by `common.training.nnx_loss_fn`)."""
    del key
    return optax.softmax_cross_entropy_with_integer_labels(model.logits(batch["x"]), batch["y"]).mean(), {}


def predict_logits(model: nnx.Module, inputs: Any, chunk_size: int = CHUNK_ROWS) -> np.ndarray:
    """``model.logits`` in eval mode (no dropout) on ``inputs`` (leaves ``[R, ...]``) in jitted chunks of
    ``chunk_size`` rows -> float32 [R] (or [R, K] for a classifier; every chunk zero-padded to ``chunk_size`` rows:
    one compiled program for any R). On a CPU each chunk is computed 16 rows at a time (`common.microbatch`:
    ``"auto"`` micro-batches; ``model.logits`` must treat rows independently, as every predictor here does)."""
    graphdef, state = nnx.split(model)
    return _chunked_logits(graphdef, (state,), inputs, chunk_size)


def _chunked_logits(graphdef: nnx.GraphDef, states: tuple, inputs: Any, chunk_size: int) -> np.ndarray:
    """Logits in chunks of ``chunk_size`` rows; the last chunk is zero-padded, so one program serves every chunk."""
    n = int(np.shape(jax.tree.leaves(inputs)[0])[0])
    out = []
    for i in range(0, n, chunk_size):
        rows = min(chunk_size, n - i)
        pad = lambda a: np.pad(np.asarray(a[i:i + rows]), [(0, chunk_size - rows)] + [(0, 0)] * (a.ndim - 1))
        chunk = jax.tree.map(pad, inputs)
        out.append(np.asarray(_jit_logits(graphdef, states, chunk))[:rows])
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0,), np.float32)


@functools.partial(jax.jit, static_argnums=0, compiler_options=training.STEP_COMPILER_OPTIONS)
def _jit_logits(graphdef: nnx.GraphDef, states: tuple, inputs: Any) -> jax.Array:
    model = nnx.merge(graphdef, *states, copy=True)
    model.eval()  # deterministic: no dropout when predicting or scoring
    rows = jax.tree.leaves(inputs)[0].shape[0]
    return map_in_chunks(model.logits, chunk_count(AUTO, rows))(inputs)


class _BestByValidation:
    """``eval_fn`` of `common.training.fit` that scores the parameters by a metric (higher is better) on a
    validation split and keeps the best ones (on host, and in ``run_dir/best`` when given, so a resumed run keeps
    its best model).

    The best model is written at the last score before each training checkpoint (every ``checkpoint_every``
    steps, and the last step) when it changed since the last write, not at every improvement (one write costs
    0.25-0.5 s). Nothing is lost by a kill: training resumes from its last checkpoint, which follows the last
    write of every earlier best, and its deterministic batches replay the same steps and scores, so any later
    best is found again.
    """

    def __init__(self, graphdef, frozen, inputs, targets, params, run_dir, eval_every, metric, checkpoint_every,
                 num_steps):
        self.graphdef, self.frozen, self.inputs, self.targets = graphdef, tuple(frozen), inputs, np.asarray(targets)
        self.eval_every, self.step, (self.name, self.metric) = eval_every, 0, metric
        self.checkpoint_every, self.num_steps, self.unsaved = checkpoint_every, num_steps, False
        self.best = {"params": jax.device_get(params), "tau": np.float64(-np.inf), "step": np.int64(0)}
        self.manager = None
        if run_dir is not None:
            with checkpointing.open_manager(run_dir) as runs:  # fit resumes from this step
                self.step = runs.latest_step() or 0
            self.manager = checkpointing.open_manager(os.path.join(run_dir, "best"), 1)
            restored = checkpointing.restore_latest(self.manager, jax.tree.map(jax.numpy.asarray, self.best))
            self.best = self.best if restored is None else jax.device_get(restored)

    def __call__(self, params: nnx.State, step: int | None = None) -> dict:
        # fit evaluates at multiples of eval_every; the last step is scored explicitly
        self.step = (self.step // self.eval_every + 1) * self.eval_every if step is None else step
        logits = _chunked_logits(self.graphdef, (params,) + self.frozen, self.inputs, CHUNK_ROWS)
        score = self.metric(logits, self.targets) if np.ptp(logits) > 0 else 0.0
        score = score if np.isfinite(score) else 0.0
        if score > self.best["tau"]:  # the stored key keeps its first name, so older runs' best models restore
            self.best = {"params": jax.device_get(params), "tau": np.float64(score), "step": np.int64(self.step)}
            self.unsaved = True
        if self.manager is not None and self.unsaved and self._checkpoint_before_next_score():
            checkpointing.save(self.manager, self.step, self.best)
            self.manager.wait_until_finished()
            self.unsaved = False
        return {self.name: score}

    def _checkpoint_before_next_score(self) -> bool:
        """Whether `fit` writes a training checkpoint (or ends) at this step or before the next score."""
        every = self.checkpoint_every or self.num_steps
        next_checkpoint = min(-(-self.step // every) * every, self.num_steps)
        return next_checkpoint < self.step + self.eval_every


def kendall_tau(predicted: Any, targets: Any) -> float:
    """Kendall's tau-b between predicted [R] and true [R] accuracies (`scipy.stats.kendalltau`).

    Raises:
      ValueError: the shapes differ or are not [R] with R >= 2.
    """
    predicted, targets = np.asarray(predicted, np.float64), np.asarray(targets, np.float64)
    if predicted.ndim != 1 or predicted.shape != targets.shape or len(predicted) < 2:
        raise ValueError(f"kendall_tau: predicted and targets must both be [R] with R >= 2; got "
                         f"{predicted.shape} and {targets.shape}")
    return float(scipy.stats.kendalltau(predicted, targets).statistic)


def fit_predictor(model: nnx.Module, inputs: Any, targets: Any, *, key: jax.Array, num_steps: int,
                  batch_size: int = 32, optimizer: optax.GradientTransformation | None = None,
                  run_dir: str | None = None, checkpoint_every: int | None = None, mesh: Mesh | None = None,
                  progress: bool = False, validation: tuple[Any, Any] | None = None,
                  eval_every: int | None = None, loss: Callable = bce_loss,
                  metric: tuple[str, Callable] = ("tau", kendall_tau), micro_batch: int | str | None = "auto",
                  compiler_options: Mapping[str, Any] | None = training.STEP_COMPILER_OPTIONS
                  ) -> tuple[nnx.Module, list[dict]]:
    """Train ``model`` by ``loss`` (default `bce_loss`) on `random_batches` with `common.training.fit`.

    Args:
      model: NNX module with ``logits(inputs rows) -> [b]``; not modified (a trained copy is returned). Only its
        ``nnx.Param`` variables are trained; other variables (e.g. frozen bases) are kept.
      inputs: pytree with leaves ``[R, ...]``; targets: accuracies ``[R]`` in [0, 1].
      key: PRNG key of the run; num_steps: optimizer steps; batch_size: rows per step.
      optimizer: default ``optax.flatten(optax.adam(1e-3))`` (Adam on all parameters as one vector: the same
        updates, and a train step with far fewer kernels to compile than one Adam update per parameter array;
        for the NP / HNP predictors the first call 1 s shorter, docs/common.md §11).
      run_dir, checkpoint_every, mesh, progress: as in `common.training.fit` (``checkpoint_every`` defaults to
        ``num_steps``: one checkpoint at the end when ``run_dir`` is set, and to ``eval_every`` with a validation
        split).
      validation: ``(inputs [V, ...], targets [V])``: score them every ``eval_every`` steps (logged as
        ``eval/<metric name>``) and return the parameters with the best score (ties: the earliest), not the last.
      eval_every: steps between validation scores (default: one pass over the training rows, ``R // batch_size``).
      loss: ``loss(model, batch, key) -> (scalar, metrics)`` on ``{"x": inputs rows, "y": targets rows}``
        (`bce_loss`: targets are accuracies in [0, 1]; `cross_entropy_loss`: integer class labels).
      metric: ``(name, fn)``, ``fn(logits, targets) -> float``, higher is better (default Kendall tau, `kendall_tau`;
        classifiers: ``("accuracy", top1_accuracy)``).
      micro_batch: rows per device of each gradient chunk, as in `common.training.fit` (default ``"auto"``: chunks
        of 16 rows on a CPU for batches of more rows per device, batches of up to 64 rows whole on the calling
        thread; ``loss`` must be a mean over rows, as both losses here are).
      compiler_options: XLA options of the train step, as in `common.training.fit` (default
        `training.STEP_COMPILER_OPTIONS`; `training.STEP_COMPILER_OPTIONS_XLA_DOTS` computes the products with XLA's
        own dot runtime, faster for the NP, HNP and Monomial-NFN predictors on some hosts, docs/common.md §11).
    Returns:
      ``(trained model, history)``, history as returned by `common.training.fit`; with ``validation``, the model
      holds the best validation parameters (the last step is always scored) and a last record
      ``{"step", "best/<metric name>", "best/step"}`` is appended.
    Raises:
      ValueError: row counts differ, or (with `bce_loss`) targets leave [0, 1].
    """
    name, score = metric
    checked = (("targets", targets), ("validation accuracies", None if validation is None else validation[1]))
    for what, values in checked if loss is bce_loss else ():
        values = np.asarray([] if values is None else values)
        if values.size and not (np.all(values >= 0) and np.all(values <= 1)):
            raise ValueError(f"fit_predictor: {what} must lie in [0, 1] (accuracies); got range "
                             f"[{values.min()}, {values.max()}]")
    batches = random_batches(inputs, targets, batch_size)
    graphdef, params, *frozen = nnx.split(model, nnx.Param, ...)
    scorer = None
    if validation is not None:
        _rows(*validation, "fit_predictor (validation)")
        eval_every = max(_rows(inputs, targets, "fit_predictor") // batch_size, 1) if eval_every is None else eval_every
        if eval_every < 1:
            raise ValueError(f"fit_predictor: eval_every must be >= 1, got {eval_every}")
        checkpoint_every = eval_every if checkpoint_every is None else checkpoint_every
        scorer = _BestByValidation(graphdef, frozen, *validation, params, run_dir, eval_every, (name, score),
                                   checkpoint_every, num_steps)
    try:
        state, history = training.fit(
            training.nnx_loss_fn(graphdef, loss, *frozen), params,
            optax.flatten(optax.adam(1e-3)) if optimizer is None else optimizer, batches, key=key, num_steps=num_steps,
            run_dir=run_dir, checkpoint_every=num_steps if checkpoint_every is None else checkpoint_every,
            mesh=mesh, progress=progress, eval_fn=scorer, eval_every=eval_every if scorer else None,
            micro_batch=micro_batch, compiler_options=compiler_options)
        if scorer is not None and int(state.step) % eval_every:
            history = history + [{"step": int(state.step),
                                  **{f"eval/{k}": v for k, v in scorer(state.params, int(state.step)).items()}}]
    finally:
        if scorer is not None and scorer.manager is not None:
            scorer.manager.close()
    if scorer is None:
        return nnx.merge(graphdef, state.params, *frozen), history
    history = history + [{"step": int(state.step), f"best/{name}": float(scorer.best["tau"]),
                          "best/step": int(scorer.best["step"])}]
    return nnx.merge(graphdef, scorer.best["params"], *frozen), history


def top1_accuracy(logits: Any, labels: Any) -> float:
    """Fraction of rows whose largest logit [R, K] is at the label [R] (ties: the first)."""
    logits, labels = np.asarray(logits), np.asarray(labels)
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"top1_accuracy: logits must be [R, K] and labels [R]; got {logits.shape} and {labels.shape}")
    return float(np.mean(np.argmax(logits, axis=1) == labels))
