"""Training MAGEP-NFN and baseline accuracy predictors on a CNN zoo, on top of `common.accuracy_prediction`.

    feats, acc, spec = zoo_features(zoo_dir, "train", where={"activation": "relu"})
    model = GeneralizationPredictor(spec, nfn="magep", rngs=nnx.Rngs(0))
    model, history = train_generalization_predictor(model, feats, acc, key=jax.random.key(0), num_steps=300)
    tau = kendall_tau(model(test_feats), test_acc)          # common.accuracy_prediction.kendall_tau

`augment_with_group` builds the papers' robustness-study splits (every network plus one permuted-and-scaled copy);
`train_generalization_predictor(..., validation=(val_feats, val_acc))` returns the model with the best validation
tau (the papers' early stopping); `train_inr_classifier` does the same for INR classification (cross-entropy, best
validation accuracy) and `train_inr_editor` for INR editing (pixel MSE of the rendered edited SIRENs, lowest
validation MSE; `edited_mse` scores a test split).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from common import NetworkSpec, WeightSpace, groups, zoo_store
from common.accuracy_prediction import cross_entropy_loss, fit_predictor, predict_logits, top1_accuracy
from magep.editing import RenderedEdit

__all__ = ["zoo_features", "tensor_scales", "divide_by_scales", "augment_with_group",
           "train_generalization_predictor", "train_inr_classifier", "train_inr_editor", "edited_mse",
           "pixel_mse_loss", "negative_mse"]


def zoo_features(zoo_dir: str, split: str | None = None, *, target: str = "test_accuracy",
                 **options) -> tuple[WeightSpace, jax.Array, NetworkSpec]:
    """NFN features and targets of one split of a library CNN/SIREN zoo (`common.zoo_store.load_weight_space_zoo`).

    Args:
      zoo_dir: a zoo folder written by `magep.zoo`; split, options: ``"train"``/``"val"``/``"test"`` or None,
        ``fractions``, ``seed``, ``epochs``, ``where``, ``min_accuracy`` (see `common.zoo_store.select_weights`).
      target: the metadata column returned (default the test accuracy).
    Returns:
      ``(feats, targets, spec)``: features (``ws.to_features()``) with leaves ``[R, ...]`` as jax arrays, targets
      float32 [R], and the `NetworkSpec` of the raw networks (with their kernel shapes: a predictor's ``spec``).
    """
    ws, targets, _ = zoo_store.load_weight_space_zoo(zoo_dir, split, target=target, **options)
    feats = jax.tree.map(jnp.asarray, ws.to_features())
    return feats, jnp.asarray(targets, jnp.float32), NetworkSpec.from_weights(ws)


def tensor_scales(feats: WeightSpace) -> WeightSpace:
    """One positive scale per weight and bias tensor: its standard deviation over all rows and entries.

    Dividing a set by the scales of its training split (`divide_by_scales`) puts every tensor at unit size. SIREN
    hidden weights are ~0.01 next to first-layer weights ~0.3: unscaled, the NP / HNP layers stay in their linear
    regime on them and their pooled features lose the class. A scalar per tensor commutes with every linear group
    action (permutations, scalings, sign flips), so an invariant model stays invariant.

    Args:
      feats: features with leaves [R, ...] (R >= 2 rows).
    Returns:
      a `WeightSpace` of the same structure whose leaves hold one float32 value each, shape [1, ..., 1] of the
      tensor's rank (1 where a tensor is constant).
    Raises:
      ValueError: ``feats`` are raw weights or carry fewer than 2 rows.
    """
    _check_rows(feats, "tensor_scales")
    rows = jax.tree.leaves(feats)[0].shape[0]
    if rows < 2:
        raise ValueError(f"tensor_scales: feats need at least 2 rows for a standard deviation, got {rows}")
    def scale(a):
        std = jnp.std(a, keepdims=True)
        return jnp.where(std > 0, std, 1.0).astype(jnp.float32)
    return jax.tree.map(scale, feats)


def divide_by_scales(feats: WeightSpace, scales: WeightSpace) -> WeightSpace:
    """``feats`` with every tensor divided by its scale (`tensor_scales`, same structure): leaves [R, ...]."""
    return jax.tree.map(lambda a, c: a / c, feats, scales)


def augment_with_group(feats: WeightSpace, targets: Any, spec: NetworkSpec, key: jax.Array, *, scaling: str,
                       max_scale: float = 1.0, copies: int = 1) -> tuple[WeightSpace, jax.Array]:
    """Every network followed by ``copies`` random group transforms of it (docs/magep.md §9.1 robustness study).

    Each copy applies its own random element of the monomial group of ``spec``: a permutation of every hidden
    layer's neurons times, for ``scaling="positive"``, scales d ~ U[1, max_scale] per hidden neuron (the papers'
    d ~ U[1, 10^k]) or, for ``"sign"``, random sign flips. The function a network computes, hence its accuracy,
    is unchanged, so the targets are repeated.

    Args:
      feats: features (``ws.to_features()``) of R networks, leaves ``[R, ...]``; targets: [R].
      spec: the networks' `NetworkSpec`; key: PRNG key.
      scaling: "positive" (ReLU nets) or "sign" (tanh nets); max_scale: upper end of d (>= 1; "positive" only).
      copies: transformed copies per network (>= 1).
    Returns:
      ``(feats, targets)`` with R * (1 + copies) rows: the R originals first, then the copies, copy-major.
    Raises:
      ValueError: bad ``scaling``, ``max_scale`` < 1 or ``copies`` < 1.
    """
    if scaling not in ("positive", "sign"):
        raise ValueError(f"augment_with_group: scaling must be 'positive' or 'sign', got {scaling!r}")
    if not max_scale >= 1.0:
        raise ValueError(f"augment_with_group: max_scale must be >= 1, got {max_scale}")
    if copies < 1:
        raise ValueError(f"augment_with_group: copies must be >= 1, got {copies}")
    rows = int(feats.batch_shape[0]) if feats.batch_shape else 0
    keys = jax.random.split(key, (copies, rows))
    sample = lambda k: groups.sample_monomial(k, spec, scaling, scale_range=(1.0, max_scale),
                                              scale_distribution="uniform")
    moved = [jax.vmap(lambda k, f: groups.act(sample(k), f))(keys[c], feats) for c in range(copies)]
    stacked = jax.tree.map(lambda *leaves: jnp.concatenate(leaves), feats, *moved)
    return stacked, jnp.tile(jnp.asarray(targets, jnp.float32), 1 + copies)


def train_generalization_predictor(model: nnx.Module, feats: WeightSpace, accuracies: Any, *, key: jax.Array,
                                   num_steps: int, **options) -> tuple[nnx.Module, list[dict]]:
    """Train a `magep.GeneralizationPredictor` (any ``nfn``) on features [R, ...] and accuracies [R].

    Args:
      model: the predictor (not modified; a trained copy is returned).
      feats: NFN features of R networks (``ws.to_features()``, leaves ``[R, ...]``).
      accuracies: [R] in [0, 1].
      key, num_steps, options: ``batch_size``, ``optimizer``, ``run_dir``, ``checkpoint_every``, ``mesh``,
        ``progress``, ``validation`` (features and accuracies: keep the best-validation-tau model) and
        ``eval_every`` of `common.accuracy_prediction.fit_predictor`.
    Returns:
      ``(trained model, history)``.
    Raises:
      ValueError: ``feats`` are raw weights (call ``ws.to_features()`` first) or carry no row axis.
    """
    _check_rows(feats, "train_generalization_predictor")
    return fit_predictor(model, feats, np.asarray(accuracies, np.float32), key=key, num_steps=num_steps, **options)


def train_inr_classifier(model: nnx.Module, feats: WeightSpace, labels: Any, *, key: jax.Array, num_steps: int,
                         **options) -> tuple[nnx.Module, list[dict]]:
    """Train a `magep.INRClassifier` (any ``nfn``) by cross-entropy on features [R, ...] and class labels [R].

    Options as in `train_generalization_predictor`; with ``validation=(feats, labels)`` the model with the best
    validation accuracy is returned (history records ``eval/accuracy`` and a last ``best/accuracy``).
    Raises:
      ValueError: ``feats`` are raw weights or carry no row axis; labels are not integers >= 0.
    """
    _check_rows(feats, "train_inr_classifier")
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer) or (labels.size and labels.min() < 0):
        raise ValueError(f"train_inr_classifier: labels must be integers >= 0, got dtype {labels.dtype}")
    return fit_predictor(model, feats, labels.astype(np.int32), key=key, num_steps=num_steps,
                         loss=cross_entropy_loss, metric=("accuracy", top1_accuracy), **options)


def pixel_mse_loss(model: nnx.Module, batch: dict, key: jax.Array) -> tuple[jax.Array, dict]:
    """Mean squared error of ``model.logits(batch["x"])`` (rendered pixels [b, P]) against ``batch["y"]`` [b, P]
    (``key`` unused); the editing objective."""
    del key
    return jnp.mean((model.logits(batch["x"]) - batch["y"]) ** 2), {}


def negative_mse(predicted: Any, targets: Any) -> float:
    """-mean((predicted - targets)^2): the editing score (higher is better, as `fit_predictor` keeps the best)."""
    return -float(np.mean((np.asarray(predicted, np.float64) - np.asarray(targets, np.float64)) ** 2))


def train_inr_editor(editor: nnx.Module, feats: WeightSpace, targets: Any, coords: Any, *, key: jax.Array,
                     num_steps: int, w0: float = 30.0, **options) -> tuple[nnx.Module, list[dict]]:
    """Train a `magep.INREditor` (any ``nfn``) so that its edited SIRENs, rendered on ``coords``, match the edited
    images (docs/magep.md §9.3): pixel MSE through `magep.editing.RenderedEdit`.

    Args:
      editor: the editor (not modified; a trained copy is returned).
      feats: SIREN features [R, ...]; targets: the edited images flattened [R, P * c] (pixel-major, channels
        last); coords: the pixel grid [P, 2] of the SIRENs (`magep.zoo_recipes.siren_grid`); w0: SIREN frequency.
      key, num_steps, options: as in `train_generalization_predictor`; with ``validation=(feats, targets)`` the
        editor with the lowest validation MSE is returned (history: ``eval/neg_mse``, a last ``best/neg_mse``).
    Returns:
      ``(trained editor, history)``.
    Raises:
      ValueError: ``feats`` are raw weights or carry no row axis; targets are not [R, P * c].
    """
    _check_rows(feats, "train_inr_editor")
    model = RenderedEdit(editor, coords, w0)
    targets = np.asarray(targets, np.float32)
    pixels = int(model.coords.shape[0]) * editor.spec.widths[-1]
    if targets.ndim != 2 or targets.shape[1] != pixels:
        raise ValueError(f"train_inr_editor: targets must be [R, {pixels}] (the grid's pixels times channels), got "
                         f"{targets.shape}")
    model, history = fit_predictor(model, feats, targets, key=key, num_steps=num_steps, loss=pixel_mse_loss,
                                   metric=("neg_mse", negative_mse), **options)
    return model.editor, history


def edited_mse(editor: nnx.Module, feats: WeightSpace, targets: Any, coords: Any, w0: float = 30.0) -> float:
    """Mean squared error between the edited SIRENs rendered on ``coords`` and ``targets`` [R, P * c] (the
    editing table's test metric)."""
    return -negative_mse(predict_logits(RenderedEdit(editor, coords, w0), feats), targets)


def _check_rows(feats: Any, fn: str) -> None:
    if not isinstance(feats, WeightSpace) or not feats.is_features:
        raise ValueError(f"{fn}: feats must be NFN features (ws.to_features()), got "
                         f"{'raw weights' if isinstance(feats, WeightSpace) else type(feats).__name__}")
    if len(feats.batch_shape) != 1:
        raise ValueError(f"{fn}: feats need one leading row axis [R, ...]; batch shape {feats.batch_shape}")
