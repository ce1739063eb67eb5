"""Gate: every tsw_sl distance gives the same float64 values as before the POT-order signatures (issue 11).

The literals were computed with the previous API (`f(x, y, key, n_trees, n_lines, a, b, ...)`,
`tree_wasserstein(x, y, trees, a, b, ...)`) at commit ea5499f on the same inputs; the calls below are the same
computations in the new order, so they must agree to the last bit.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import tsw_sl


def measures(seed, n, m, d, weighted):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(n, d)), jnp.float64)
    y = jnp.asarray(rng.normal(size=(m, d)) * 0.8 + 0.5, jnp.float64)
    if not weighted:
        return x, y, None, None
    a = rng.uniform(0.1, 1.0, n); a /= a.sum()
    b = rng.uniform(0.1, 1.0, m); b /= b.sum()
    return x, y, jnp.asarray(a, jnp.float64), jnp.asarray(b, jnp.float64)


def given_trees(kind, splitting, p, weighted, n, m):
    trees = tsw_sl.sample_trees(jax.random.key(3), 5, 4, 3, kind, root_std=0.7, dtype=jnp.float64)
    x, y, a, b = measures(n + m + int(2 * p), n, m, 3, weighted)
    return tsw_sl.tree_wasserstein(x, y, a, b, trees=trees, splitting=splitting, delta=1.5, p=p)


def learned():
    x, y, a, b = measures(11, 6, 8, 3, True)
    trees = tsw_sl.sample_trees(jax.random.key(4), 2, 3, 3, "chain", dtype=jnp.float64)
    split = tsw_sl.LearnedSplitting(3, 3, hidden=(16,), rngs=nnx.Rngs(0))
    return tsw_sl.tree_wasserstein(x, y, a, b, trees=trees, splitting=split)


def sampled(fn, weighted, **kwargs):
    x, y, a, b = measures(5, 10, 10, 4, weighted)
    return fn(x, y, a, b, key=jax.random.key(7), **kwargs)


def tsw_distance_splitting():
    x, y, a, b = measures(5, 10, 10, 4, True)
    return tsw_sl.tsw_sl(x, y, a, b, key=jax.random.key(7), n_trees=6, n_lines=3, splitting="distance", p=2,
                         root_mean=jnp.mean(y, 0), t_range=(-0.1, 0.1))


def given_projections(weighted):
    x, y, a, b = measures(5, 10, 10, 4, weighted)
    theta = tsw_sl.random_directions(jax.random.key(9), (12,), 4, jnp.float64)
    return tsw_sl.sliced_wasserstein(x, y, a, b, p=2, projections=theta)


CASES = {
    "tree chain uniform p=1 weighted": (lambda: given_trees("chain", "uniform", 1, True, 9, 9), 0.8375121040275153),
    "tree chain uniform p=1 default weights (two-sort path)":
        (lambda: given_trees("chain", "uniform", 1, False, 9, 9), 0.7458985795187676),
    "tree chain distance p=2": (lambda: given_trees("chain", "distance", 2, True, 11, 6), 0.34603638027393957),
    "tree chain distance p=1.5": (lambda: given_trees("chain", "distance", 1.5, False, 11, 6), 0.722772028093551),
    "tree concurrent distance p=1": (lambda: given_trees("concurrent", "distance", 1, True, 11, 6),
                                     0.7597324731691444),
    "tree concurrent uniform p=2": (lambda: given_trees("concurrent", "uniform", 2, False, 9, 9), 0.349530262942146),
    "tree learned splitting": (learned, 0.4022358511370726),
    "tsw_sl default": (lambda: sampled(tsw_sl.tsw_sl, False, n_trees=25, n_lines=4), 0.770992910895568),
    "tsw_sl distance p=2": (tsw_distance_splitting, 0.3934731779571168),
    "db_tsw": (lambda: sampled(tsw_sl.db_tsw, True, n_trees=5, n_lines=3, delta=3.0), 1.1580810029864188),
    "db_tsw orthogonal p=2": (lambda: sampled(tsw_sl.db_tsw, False, n_trees=5, n_lines=3, orthogonal=True, p=2),
                              0.4162457636625429),
    "sliced p=2": (lambda: sampled(tsw_sl.sliced_wasserstein, True, n_projections=30, p=2), 1.0142525319538043),
    "sliced p=1 default weights": (lambda: sampled(tsw_sl.sliced_wasserstein, False, n_projections=30, p=1),
                                   0.8019331498414269),
    "sliced given projections": (lambda: given_projections(True), 0.9691311722526499),
    "max sliced": (lambda: sampled(tsw_sl.max_sliced_wasserstein, True, n_steps=5, lr=0.05, p=2), 1.048274047170301),
    "max sliced 3 directions": (lambda: sampled(tsw_sl.max_sliced_wasserstein, False, n_steps=4, lr=0.05, p=1,
                                                n_projections=3), 1.1498638210558951),
    "max tsw_sl": (lambda: sampled(tsw_sl.max_tsw_sl, False, n_trees=2, n_lines=3, n_steps=5, lr=0.05),
                   0.7793977656534152),
    "max tsw_sl distance": (lambda: sampled(tsw_sl.max_tsw_sl, True, n_trees=2, n_lines=3, n_steps=5, lr=0.05,
                                            splitting="distance", root_std=0.3), 1.209376724433387),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_values_unchanged_by_the_new_signatures(name):
    fn, want = CASES[name]
    with jax.enable_x64(True):
        got = fn()
        assert got.dtype == jnp.float64
        # a few ulps: the literals come from the old code under the default XLA flags; the tests compile at a
        # lower optimisation level (tests/conftest.py), which may round the last bits differently (the learned
        # splitting's network has float32 parameters, so its ulps are float32 ones)
        rtol = 1e-6 if name == "tree learned splitting" else 1e-13
        np.testing.assert_allclose(float(got), want, rtol=rtol, atol=0, err_msg=name)
