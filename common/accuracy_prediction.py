"""Training and scoring models that predict a network's accuracy (a number in [0, 1]) from its weights.

Family-agnostic: the model is any Flax NNX module with ``model.logits(inputs) -> [R]`` (pre-sigmoid scores), such
as `magep.GeneralizationPredictor` on features or `transformer_nfn.AccuracyPredictor` on transformer weights; the
inputs are any pytree whose leaves have a leading row axis ``[R, ...]``. Training minimises the binary cross-entropy
between ``sigmoid(logits)`` and the accuracies with `common.training.fit`; models are ranked by Kendall's tau, the
metric of the accuracy-prediction papers. `magep.train` and `transformer_nfn.train` add each family's zoo loading
and input checks.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import optax
import scipy.stats
from flax import nnx
from jax.sharding import Mesh

from common import training

__all__ = ["random_batches", "bce_loss", "fit_predictor", "kendall_tau"]


def _rows(inputs: Any, targets: Any, fn: str) -> int:
    """The common row count R of the leaves of ``inputs`` and of ``targets`` [R]."""
    counts = {int(np.shape(leaf)[0]) for leaf in jax.tree.leaves(inputs) if np.ndim(leaf) > 0}
    if np.ndim(targets) != 1 or len(counts) != 1 or counts != {int(np.shape(targets)[0])}:
        shapes = [tuple(np.shape(leaf)) for leaf in jax.tree.leaves(inputs)]
        raise ValueError(f"{fn}: inputs leaves and targets need the same leading row axis; got inputs leaves {shapes} "
                         f"and targets {tuple(np.shape(targets))}")
    return counts.pop()


def random_batches(inputs: Any, targets: Any, batch_size: int) -> Callable[[int], dict]:
    """Deterministic ``batches(step) -> {"x": inputs rows, "y": targets rows}`` for `common.training.fit`.

    Args:
      inputs: pytree with leaves ``[R, ...]``; targets: ``[R]``.
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

    def batches(step: int) -> dict:
        idx = np.random.default_rng(step).choice(n, batch_size, replace=False)
        return {"x": jax.tree.map(lambda a: a[idx], inputs), "y": targets[idx]}

    return batches


def bce_loss(model: nnx.Module, batch: dict, key: jax.Array) -> tuple[jax.Array, dict]:
    """Mean binary cross-entropy of ``sigmoid(model.logits(batch["x"]))`` [b] against ``batch["y"]`` [b] in [0, 1];
    the ``loss(model, batch, key)`` form of `common.training.nnx_loss_fn` (``key`` unused)."""
    del key
    return optax.sigmoid_binary_cross_entropy(model.logits(batch["x"]), batch["y"]).mean(), {}


def fit_predictor(model: nnx.Module, inputs: Any, targets: Any, *, key: jax.Array, num_steps: int,
                  batch_size: int = 32, optimizer: optax.GradientTransformation | None = None,
                  run_dir: str | None = None, checkpoint_every: int | None = None, mesh: Mesh | None = None,
                  progress: bool = False) -> tuple[nnx.Module, list[dict]]:
    """Train ``model`` by `bce_loss` on `random_batches` with `common.training.fit`.

    Args:
      model: NNX module with ``logits(inputs rows) -> [b]``; not modified (a trained copy is returned). Only its
        ``nnx.Param`` variables are trained; other variables (e.g. frozen bases) are kept.
      inputs: pytree with leaves ``[R, ...]``; targets: accuracies ``[R]`` in [0, 1].
      key: PRNG key of the run; num_steps: optimizer steps; batch_size: rows per step.
      optimizer: default ``optax.adam(1e-3)``.
      run_dir, checkpoint_every, mesh, progress: as in `common.training.fit` (``checkpoint_every`` defaults to
        ``num_steps``: one checkpoint at the end when ``run_dir`` is set).
    Returns:
      ``(trained model, history)``, history as returned by `common.training.fit`.
    Raises:
      ValueError: row counts differ, or targets leave [0, 1].
    """
    targets_np = np.asarray(targets)
    if targets_np.size and not (np.all(targets_np >= 0) and np.all(targets_np <= 1)):
        raise ValueError(f"fit_predictor: targets must lie in [0, 1] (accuracies); got range "
                         f"[{targets_np.min()}, {targets_np.max()}]")
    batches = random_batches(inputs, targets, batch_size)
    graphdef, params, *frozen = nnx.split(model, nnx.Param, ...)
    state, history = training.fit(training.nnx_loss_fn(graphdef, bce_loss, *frozen), params,
                                  optax.adam(1e-3) if optimizer is None else optimizer, batches, key=key,
                                  num_steps=num_steps, run_dir=run_dir,
                                  checkpoint_every=num_steps if checkpoint_every is None else checkpoint_every,
                                  mesh=mesh, progress=progress)
    return nnx.merge(graphdef, state.params, *frozen), history


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
