"""transformer_nfn.tree_baselines: the authors' tree baselines on the flat raw weights (docs/transformer_nfn.md §8)."""
import dataclasses

import jax
import numpy as np
import pytest
from scipy.stats import kendalltau

from transformer_nfn import nets
from transformer_nfn.tree_baselines import TREE_KINDS, fit_trees, flat_weights
from transformer_nfn.zoo import ZOO_SPEC


@pytest.fixture(scope="module")
def zoo_weights():
    keys = jax.random.split(jax.random.key(0), 3)
    return jax.jit(jax.vmap(lambda k: nets.init_weights(k, ZOO_SPEC, 10)))(keys)


def test_flat_weights_follow_the_authors_order_and_counts(zoo_weights):
    tw = zoo_weights
    flat = flat_weights(tw)
    assert flat.shape == (3, 18_506) and flat.dtype == np.float32  # MNIST: embedding, classifier, encoder
    emb, cls = tw.embedding, tw.classifier
    np.testing.assert_array_equal(flat[:, :512], np.asarray(emb.weights[0]).reshape(3, -1))
    np.testing.assert_array_equal(flat[:, 512:544], np.asarray(emb.biases[0]).reshape(3, -1))
    np.testing.assert_array_equal(flat[:, 544:544 + 1024], np.asarray(cls.weights[0]).reshape(3, -1))
    block = ZOO_SPEC.params_per_block
    first = flat[:, 544 + 1386:544 + 1386 + block]
    np.testing.assert_array_equal(first[:, :1024], np.asarray(tw.blocks[0].q).reshape(3, -1))  # q before k
    np.testing.assert_array_equal(first[:, 1024:2048], np.asarray(tw.blocks[0].k).reshape(3, -1))
    np.testing.assert_array_equal(flat[:, -32:], np.asarray(tw.blocks[-1].b_b).reshape(3, -1))
    without = flat_weights(dataclasses.replace(tw, embedding=None))
    assert without.shape == (3, 17_962)  # AG News: no stored embedding
    np.testing.assert_array_equal(without, flat[:, 544:])


def test_flat_weights_reject_features_and_other_batch_shapes(zoo_weights):
    with pytest.raises(ValueError, match="raw TransformerWeights"):
        flat_weights(zoo_weights.to_features())
    with pytest.raises(ValueError, match="one leading row axis"):
        flat_weights(jax.tree.map(lambda a: a[0], zoo_weights))


@pytest.mark.parametrize("kind", TREE_KINDS)
def test_trees_learn_a_signal_and_pick_their_rounds_on_validation(kind):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(700, 12)).astype(np.float32)
    y = (1 / (1 + np.exp(-2 * x[:, 0] - x[:, 1])) + 0.02 * rng.normal(size=700)).astype(np.float32)
    predict, info = fit_trees(kind, (x[:400], y[:400]), (x[400:550], y[400:550]), threads=1)
    limit = 50 if kind == "xgboost" else 1000
    assert 1 <= info["rounds"] <= limit and info["val_rmse"] < np.std(y[400:550])
    predicted = predict(x[550:])
    assert predicted.shape == (150,) and kendalltau(predicted, y[550:]).statistic > 0.6
    again, _ = fit_trees(kind, (x[:400], y[:400]), (x[400:550], y[400:550]), threads=1)
    np.testing.assert_array_equal(again(x[550:]), predicted)  # seeded: the same model twice


def test_fit_trees_names_bad_arguments():
    x, y = np.zeros((8, 3), np.float32), np.zeros(8, np.float32)
    with pytest.raises(ValueError, match="kind must be one of"):
        fit_trees("catboost", (x, y), (x, y))
    with pytest.raises(ValueError, match=r"train needs features \[R, F\] and targets \[R\], got \(8, 3\) and \(7,\)"):
        fit_trees("xgboost", (x, y[:7]), (x, y))
    with pytest.raises(ValueError, match="train has 3 features, validation 2"):
        fit_trees("lightgbm", (x, y), (x[:, :2], y))


def test_xgboost_first_rounds_of_a_long_run_equal_a_short_run():
    # why one 50-round run scored per round replaces the authors' 50 fresh runs of r = 1..50 rounds
    import xgboost as xgb

    from transformer_nfn.tree_baselines import XGBOOST_PARAMS
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(300, 6)), rng.normal(size=300)
    data = xgb.DMatrix(x, label=y)
    long = xgb.train({**XGBOOST_PARAMS, "nthread": 1}, data, num_boost_round=12)
    for r in (1, 5, 12):
        short = xgb.train({**XGBOOST_PARAMS, "nthread": 1}, data, num_boost_round=r)
        np.testing.assert_array_equal(short.predict(data), long.predict(data, iteration_range=(0, r)))


@pytest.mark.parametrize("kind", ["lightgbm", "rf"])
def test_a_capped_histogram_cache_grows_the_same_trees(kind, monkeypatch):
    """LightGBM's per-leaf histogram cache is capped (`HISTOGRAM_POOL_MB`: ~19 GB uncapped on the zoo's 18,506
    features); a cache too small for every leaf recomputes what it dropped, so the model is the same."""
    from transformer_nfn import tree_baselines

    rng = np.random.default_rng(1)
    x = rng.normal(size=(700, 200)).astype(np.float32)  # all leaves' histograms: ~200 MB, held by the default cap
    y = (1 / (1 + np.exp(-x[:, 0] - x[:, 1] * x[:, 2])) + 0.02 * rng.normal(size=700)).astype(np.float32)
    fit = lambda: fit_trees(kind, (x[:400], y[:400]), (x[400:550], y[400:550]), threads=1)  # noqa: E731
    predict, info = fit()
    monkeypatch.setitem(tree_baselines.LIGHTGBM_PARAMS, "histogram_pool_size", 1)  # 1 MB: most leaves evicted
    small_predict, small_info = fit()
    assert small_info == info
    np.testing.assert_array_equal(small_predict(x[550:]), predict(x[550:]))
