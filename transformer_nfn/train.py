"""Training Transformer-NFN accuracy predictors on a transformer zoo, on top of `common.accuracy_prediction`.

    tw, acc = zoo_weights(zoo_dir, "train")
    model = AccuracyPredictor(ZOO_SPEC, classifier_widths=(32, 32, 10), embedding_size=544, rngs=nnx.Rngs(0))
    model, history = train_accuracy_predictor(model, tw, acc, key=jax.random.key(0), num_steps=300)
    tau = kendall_tau(model(test_tw), test_acc)          # common.accuracy_prediction.kendall_tau
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from common.accuracy_prediction import fit_predictor
from transformer_nfn.weights import TransformerWeights
from transformer_nfn.zoo import load_transformer_zoo

__all__ = ["zoo_weights", "train_accuracy_predictor"]


def zoo_weights(zoo_dir: str, split: str | None = None, *, target: str = "test_accuracy",
                **options) -> tuple[TransformerWeights, jax.Array]:
    """Raw weights and targets of one split of a transformer zoo (`transformer_nfn.zoo.load_transformer_zoo`).

    Args:
      zoo_dir: a zoo folder written by `transformer_nfn.zoo`; split, options: ``"train"``/``"val"``/``"test"`` or
        None, ``fractions``, ``seed``, ``epochs``, ``where``, ``min_accuracy`` (`common.zoo_store.select_weights`).
      target: the metadata column returned (default the test accuracy).
    Returns:
      ``(tw, targets)``: `TransformerWeights` with leaves ``[R, ...]`` as jax arrays, targets float32 [R].
    """
    tw, targets, _ = load_transformer_zoo(zoo_dir, split, target=target, **options)
    return jax.tree.map(jnp.asarray, tw), jnp.asarray(targets, jnp.float32)


def train_accuracy_predictor(model: nnx.Module, tw: TransformerWeights, accuracies: Any, *, key: jax.Array,
                             num_steps: int, **options) -> tuple[nnx.Module, list[dict]]:
    """Train a `transformer_nfn.AccuracyPredictor` on raw weights of R networks and their accuracies [R].

    ``tw`` is raw `TransformerWeights` with leaves ``[R, ...]``; the other arguments and the result
    ``(trained copy of model, history)`` are those of `common.accuracy_prediction.fit_predictor` (options:
    ``batch_size``, ``optimizer``, ``run_dir``, ``checkpoint_every``, ``mesh``, ``progress``). ValueError when
    ``tw`` is not raw `TransformerWeights` with one leading row axis.
    """
    if not isinstance(tw, TransformerWeights) or tw.is_features:
        raise ValueError("train_accuracy_predictor: tw must be raw TransformerWeights [R, ...], got "
                         f"{'features' if isinstance(tw, TransformerWeights) else type(tw).__name__}")
    if len(tw.batch_shape) != 1:
        raise ValueError(f"train_accuracy_predictor: tw needs one leading row axis [R, ...]; batch shape "
                         f"{tw.batch_shape}")
    return fit_predictor(model, tw, np.asarray(accuracies, np.float32), key=key, num_steps=num_steps, **options)
