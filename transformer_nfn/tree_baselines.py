"""Gradient-boosted-tree baselines of the transformer accuracy-prediction benchmark: XGBoost, LightGBM and
LightGBM's random forest on the flat raw weights, with the authors' settings (docs/transformer_nfn.md §8).

Features (`flat_weights`), one row per run: the patch embedding's weights then biases (MNIST zoo only), the
classifier's fc1 W, fc1 b, fc2 W, fc2 b, then per encoder block q, k, v, o, w_a, w_b, b_a, b_b, each flattened
row-major: 18,506 numbers on the MNIST zoo transformer, 17,962 on AG News. Targets: test accuracies. The trees
see no symmetry at all (a permuted or GL-moved copy of a run is a different feature vector).

Rounds are chosen on the validation RMSE:
  - XGBoost: at most 50 rounds; the authors train a fresh model for every r = 1..50 and keep the best on the
    validation set. With a fixed seed, boosting r rounds builds exactly the first r trees of a 50-round run, so
    one 50-round run scored after every round picks the same model (50x less work).
  - LightGBM ("gbdt", and "rf" with bagging 0.8 every round and feature fraction 0.8): up to 1,000 rounds, early
    stopping after 50 rounds without a better validation RMSE; the best round is kept.

xgboost and lightgbm are optional (the ``trees`` extra: ``pip install -e '.[trees]'``); they are imported when a
fit starts, never at package import.
"""
from __future__ import annotations

import importlib
from typing import Callable

import numpy as np

from transformer_nfn.baselines import KINDS, layer_tensors
from transformer_nfn.weights import TransformerWeights

__all__ = ["TREE_KINDS", "XGBOOST_PARAMS", "LIGHTGBM_PARAMS", "flat_weights", "fit_trees"]

TREE_KINDS = ("xgboost", "lightgbm", "rf")
SEED = 3  # the authors' seed
XGBOOST_PARAMS = dict(objective="reg:squarederror", eval_metric="rmse", learning_rate=0.1, max_depth=10,
                      min_child_weight=50, subsample=0.8, colsample_bytree=0.8, reg_lambda=0.01, reg_alpha=0.02,
                      tree_method="hist", seed=SEED)
XGBOOST_ROUNDS = 50
# LightGBM caches one feature histogram per leaf: 256 leaves x 18,506 features x up to 255 bins is ~19 GB, which
# killed a 2-process study on a 24 GB machine. A capped cache recomputes what it drops: same trees and
# predictions (test tau 0.853 / 0.778 for gbdt / rf either way), peak 2.3 GB instead of 18.7, rf 2x faster.
HISTOGRAM_POOL_MB = 1024
LIGHTGBM_PARAMS = dict(objective="regression", metric="rmse", boosting_type="gbdt", learning_rate=0.1,
                       num_leaves=256, max_depth=10, min_data_in_leaf=50, subsample=0.8, colsample_bytree=0.8,
                       lambda_l1=0.1, lambda_l2=0.2, min_gain_to_split=0.01, max_bin=255, verbose=-1, seed=SEED,
                       histogram_pool_size=HISTOGRAM_POOL_MB)
LIGHTGBM_FOREST = dict(boosting_type="rf", bagging_fraction=0.8, bagging_freq=1, feature_fraction=0.8)
LIGHTGBM_ROUNDS, LIGHTGBM_PATIENCE = 1000, 50


def flat_weights(tw: TransformerWeights) -> np.ndarray:
    """Raw weights with one leading batch axis [R] -> float32 [R, F] (F = 18,506 on the MNIST zoo transformer,
    17,962 without an embedding); order in the module docstring. ValueError for features or other batch shapes."""
    if not isinstance(tw, TransformerWeights) or tw.is_features:
        raise ValueError(f"flat_weights: tw must be raw TransformerWeights, got {type(tw).__name__}")
    if len(tw.batch_shape) != 1:
        raise ValueError(f"flat_weights: tw needs one leading row axis, got batch shape {tw.batch_shape}")
    tensors = []
    if tw.embedding is not None:
        tensors += list(tw.embedding.weights) + list(tw.embedding.biases)
    if tw.classifier is not None:
        tensors += layer_tensors(tw.classifier)
    tensors += [getattr(b, f) for b in tw.blocks for f in KINDS["statnn"][0]]  # q, k, v, o, w_a, w_b, b_a, b_b
    rows = tw.batch_shape[0]
    return np.concatenate([np.asarray(t, np.float32).reshape(rows, -1) for t in tensors], axis=1)


def _module(name: str):
    try:
        return importlib.import_module(name)
    except ImportError as err:
        raise ImportError(f"the tree baselines need {name}: pip install -e '.[trees]'") from err


def _check(x: np.ndarray, y: np.ndarray, what: str) -> None:
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"fit_trees: {what} needs features [R, F] and targets [R], got {x.shape} and {y.shape}")


def fit_trees(kind: str, train: tuple[np.ndarray, np.ndarray], validation: tuple[np.ndarray, np.ndarray], *,
              seed: int = SEED, threads: int | None = None) -> tuple[Callable[[np.ndarray], np.ndarray], dict]:
    """Fit one tree model with the authors' settings, its rounds chosen on the validation RMSE.

    Args:
      kind: "xgboost", "lightgbm" (gbdt) or "rf" (LightGBM's random forest).
      train, validation: (features [R, F], accuracies [R]), e.g. `flat_weights` of the split's runs.
      seed: the library's seed (row and feature subsampling); the authors' is 3.
      threads: CPU threads for the library (default: its own choice).
    Returns:
      ``(predict, info)``: ``predict(features [M, F]) -> [M]`` predicted accuracies at the best round;
      ``info`` = ``{"rounds": best round count, "val_rmse": its validation RMSE}``.
    Raises:
      ValueError: an unknown kind or mismatched shapes; ImportError naming the missing package.
    """
    if kind not in TREE_KINDS:
        raise ValueError(f"fit_trees: kind must be one of {TREE_KINDS}, got {kind!r}")
    (x, y), (xv, yv) = train, validation
    _check(x, y, "train")
    _check(xv, yv, "validation")
    if xv.shape[1] != x.shape[1]:
        raise ValueError(f"fit_trees: train has {x.shape[1]} features, validation {xv.shape[1]}")
    if kind == "xgboost":
        xgb = _module("xgboost")
        params = {**XGBOOST_PARAMS, "seed": seed, **({} if threads is None else {"nthread": threads})}
        dtrain, dval = xgb.DMatrix(x, label=y), xgb.DMatrix(xv, label=yv)
        log: dict = {}
        booster = xgb.train(params, dtrain, num_boost_round=XGBOOST_ROUNDS, evals=[(dval, "val")],
                            evals_result=log, verbose_eval=False)
        rmse = np.asarray(log["val"]["rmse"])
        rounds = int(np.argmin(rmse)) + 1
        predict = lambda f: booster.predict(xgb.DMatrix(f), iteration_range=(0, rounds))
        return predict, {"rounds": rounds, "val_rmse": float(rmse[rounds - 1])}
    lgb = _module("lightgbm")
    params = {**LIGHTGBM_PARAMS, "seed": seed, **(LIGHTGBM_FOREST if kind == "rf" else {}),
              **({} if threads is None else {"num_threads": threads})}
    dtrain = lgb.Dataset(x, label=y)
    dval = lgb.Dataset(xv, label=yv, reference=dtrain)
    log = {}
    booster = lgb.train(params, dtrain, num_boost_round=LIGHTGBM_ROUNDS, valid_sets=[dval], valid_names=["val"],
                        callbacks=[lgb.early_stopping(LIGHTGBM_PATIENCE, verbose=False), lgb.record_evaluation(log)])
    rounds = int(booster.best_iteration) or len(log["val"]["rmse"])
    predict = lambda f: booster.predict(f, num_iteration=rounds)
    return predict, {"rounds": rounds, "val_rmse": float(log["val"]["rmse"][rounds - 1])}
