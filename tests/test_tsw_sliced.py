"""tsw_sl.sliced_wasserstein against POT and scipy; max-sliced variants against brute-force maxima."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import ot
import pytest
import scipy.stats

import tsw_sl


def measures(seed, n, m, d, weighted):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    y = rng.normal(size=(m, d)) * 1.5 + 0.3
    if not weighted:
        return x, y, None, None
    a, b = rng.uniform(0.05, 1, n), rng.uniform(0.05, 1, m)
    return x, y, a / a.sum(), b / b.sum()


@pytest.mark.parametrize("n, m, weighted", [(9, 9, False), (9, 9, True), (11, 6, False), (7, 13, True)])
@pytest.mark.parametrize("p", [1, 2, 1.5])
def test_sliced_matches_pot_with_shared_projections(n, m, weighted, p):
    with jax.enable_x64(True):
        x, y, a, b = measures(n * m + int(10 * p), n, m, 3, weighted)
        theta = np.asarray(tsw_sl.random_directions(jax.random.key(0), (20,), 3, jnp.float64))
        got = tsw_sl.sliced_wasserstein(x, y, a, b, p=p, projections=theta)
        want = ot.sliced_wasserstein_distance(x, y, a, b, projections=theta.T, p=p)
        np.testing.assert_allclose(got, want, rtol=1e-10)


@pytest.mark.parametrize("weighted", [False, True])
def test_call_in_pots_order_gives_pots_number(weighted):
    """POT: sliced_wasserstein_distance(X_s, X_t, a, b, n_projections, p, projections=[d, P]); here the same
    leading (x, y, a, b) and the rest by keyword, with the directions as rows [P, d], or drawn from `key`."""
    with jax.enable_x64(True):
        x, y, a, b = measures(4, 12, 9, 3, weighted)
        key = jax.random.key(2)
        theta = np.asarray(tsw_sl.random_directions(key, (25,), 3, jnp.float64))
        want = ot.sliced_wasserstein_distance(x, y, a, b, 25, 2, projections=theta.T)
        np.testing.assert_allclose(tsw_sl.sliced_wasserstein(x, y, a, b, p=2, projections=theta), want, rtol=1e-12)
        np.testing.assert_allclose(tsw_sl.sliced_wasserstein(x, y, a, b, key=key, n_projections=25, p=2), want,
                                   rtol=1e-12)


@pytest.mark.parametrize("n, m, weighted", [(8, 8, False), (8, 8, True), (9, 6, False)])
def test_sliced_return_costs_are_pots_projected_costs(n, m, weighted):
    with jax.enable_x64(True):
        x, y, a, b = measures(n + m, n, m, 3, weighted)
        theta = np.asarray(tsw_sl.random_directions(jax.random.key(0), (7,), 3, jnp.float64))
        dist, costs = tsw_sl.sliced_wasserstein(x, y, a, b, p=2, projections=theta, return_costs=True)
        assert dist.shape == () and costs.shape == (7,)
        _, log = ot.sliced_wasserstein_distance(x, y, a, b, projections=theta.T, p=2, log=True)
        np.testing.assert_allclose(costs, log["projected_emds"], rtol=1e-12)       # W_2^2 per direction
        np.testing.assert_allclose(dist, np.mean(costs) ** 0.5, rtol=1e-15)
        np.testing.assert_allclose(dist, tsw_sl.sliced_wasserstein(x, y, a, b, p=2, projections=theta), rtol=1e-14)


def test_sliced_return_costs_batched_and_under_jit():
    rng = np.random.default_rng(1)
    xs = jnp.asarray(rng.normal(size=(3, 8, 2)), jnp.float32)
    ys = jnp.asarray(rng.normal(size=(3, 8, 2)) + 1, jnp.float32)
    key = jax.random.key(0)

    @functools.partial(jax.jit, static_argnames="return_costs")
    def f(x, y, return_costs):
        return tsw_sl.sliced_wasserstein(x, y, key=key, n_projections=16, p=2, return_costs=return_costs)

    dist, costs = f(xs, ys, return_costs=True)
    assert dist.shape == (3,) and costs.shape == (3, 16)
    np.testing.assert_allclose(dist, f(xs, ys, return_costs=False), rtol=1e-6)
    np.testing.assert_allclose(dist, jnp.sqrt(jnp.mean(costs, -1)), rtol=1e-6)


def test_max_sliced_return_costs():
    x, y, a, b = measures(5, 20, 15, 2, True)
    key = jax.random.key(1)
    dist, costs = tsw_sl.max_sliced_wasserstein(x, y, a, b, key=key, n_steps=10, n_projections=3, return_costs=True)
    assert costs.shape == (3,) and np.all(costs >= 0)
    np.testing.assert_allclose(dist, jnp.sqrt(jnp.mean(costs)), rtol=1e-6)
    np.testing.assert_allclose(dist, tsw_sl.max_sliced_wasserstein(x, y, a, b, key=key, n_steps=10, n_projections=3),
                               rtol=1e-6)
    dist, costs = tsw_sl.max_tsw_sl(x, y, a, b, key=key, n_trees=2, n_lines=3, n_steps=5, splitting="distance",
                                    return_costs=True)
    assert costs.shape == (2,)
    np.testing.assert_allclose(dist, jnp.mean(costs), rtol=1e-6)                # p = 1: the mean itself
    np.testing.assert_allclose(dist, tsw_sl.max_tsw_sl(x, y, a, b, key=key, n_trees=2, n_lines=3, n_steps=5,
                                                       splitting="distance"), rtol=1e-6)


def test_sliced_float32_matches_pot_and_scipy():
    x, y, a, b = measures(1, 40, 25, 4, True)
    key = jax.random.key(3)
    theta = np.asarray(tsw_sl.random_directions(key, (30,), 4), np.float64)
    got = tsw_sl.sliced_wasserstein(x, y, a, b, key=key, n_projections=30, p=1)   # same key -> same directions
    want = ot.sliced_wasserstein_distance(x, y, a, b, projections=theta.T, p=1)
    np.testing.assert_allclose(got, want, rtol=2e-5)
    per_dir = [scipy.stats.wasserstein_distance(x @ t, y @ t, a, b) for t in theta]
    np.testing.assert_allclose(got, np.mean(per_dir), rtol=2e-5)
    assert got.dtype == jnp.float32


def test_sliced_jit_vmap_grad():
    rng = np.random.default_rng(0)
    xs = jnp.asarray(rng.normal(size=(3, 8, 2)), jnp.float32)
    ys = jnp.asarray(rng.normal(size=(3, 8, 2)), jnp.float32)
    key = jax.random.key(0)
    f = jax.jit(lambda x, y: tsw_sl.sliced_wasserstein(x, y, key=key, n_projections=16, p=2))
    loop = np.array([f(xs[i], ys[i]) for i in range(3)])
    np.testing.assert_allclose(jax.vmap(f)(xs, ys), loop, rtol=1e-5)
    np.testing.assert_allclose(tsw_sl.sliced_wasserstein(xs, ys, key=key, n_projections=16), loop, rtol=1e-5)
    # finite gradients at zero distance (sqrt at 0) and with ties
    g = jax.jit(jax.grad(f))(xs[0], xs[0])
    assert np.all(np.isfinite(g)) and np.all(g == 0)
    b = jnp.full(5, 0.2)
    g = jax.grad(lambda x: tsw_sl.sliced_wasserstein(x, xs[0, :5], b=b, key=key, n_projections=16, p=2))(xs[0])
    assert np.all(np.isfinite(g)) and np.any(g != 0)


def _brute_max_2d(x, y, p, n_angles=3600):
    """Max over a fine grid of 2-D directions of W_p(theta # mu, theta # nu), from POT's per-direction costs."""
    ang = np.linspace(0, np.pi, n_angles, endpoint=False)
    theta = np.stack([np.cos(ang), np.sin(ang)])
    _, log = ot.sliced_wasserstein_distance(x, y, projections=theta, p=p, log=True)
    return np.max(log["projected_emds"]) ** (1 / p)


def test_max_sliced_reaches_the_brute_force_maximum():
    rng = np.random.default_rng(2)          # a shift plus anisotropy: one maximum (up to sign) near the shift
    x = rng.normal(size=(60, 2)) * np.array([1.0, 0.5])
    y = rng.normal(size=(50, 2)) * np.array([0.5, 1.0]) + np.array([0.8, 0.6])
    key = jax.random.key(1)
    got = float(tsw_sl.max_sliced_wasserstein(x, y, key=key, n_steps=150, lr=0.05, p=2))
    assert got == pytest.approx(_brute_max_2d(x, y, 2), rel=5e-3)
    assert got > float(tsw_sl.sliced_wasserstein(x, y, key=key, n_projections=200, p=2)) * 1.05
    # Max-TSW-SL with one line and uniform splitting is Max-SW1
    got = float(tsw_sl.max_tsw_sl(x, y, key=key, n_trees=1, n_lines=1, n_steps=150, lr=0.05))
    assert got == pytest.approx(_brute_max_2d(x, y, 1), rel=5e-3)


def test_max_tsw_sl_improves_on_its_initial_trees_and_is_differentiable():
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(30, 3)), jnp.float32)
    y = jnp.asarray(rng.normal(size=(20, 3)) * 0.5 + 0.5, jnp.float32)
    key = jax.random.key(4)
    # roots, t and directions all move
    opts = dict(key=key, n_trees=2, n_lines=3, kind="chain", splitting="distance", root_std=0.3)
    start = tsw_sl.tsw_sl(x, y, **opts)
    best, g = jax.value_and_grad(lambda x: tsw_sl.max_tsw_sl(x, y, n_steps=30, **opts))(x)
    assert best > start * 1.02
    assert np.all(np.isfinite(g)) and np.any(g != 0)
    g = jax.jit(jax.grad(lambda x: tsw_sl.max_sliced_wasserstein(x, y, key=key, n_steps=5)))(x)
    assert np.all(np.isfinite(g)) and np.any(g != 0)


KEY = jax.random.key(0)


@pytest.mark.parametrize("call", [
    lambda x, y: tsw_sl.sliced_wasserstein(x, y, KEY),                  # a key where the weight a goes
    lambda x, y: tsw_sl.sliced_wasserstein(x, y, None, None, 50),       # n_projections by position
    lambda x, y: tsw_sl.sliced_wasserstein(x, y),                       # neither key nor projections
    lambda x, y: tsw_sl.max_sliced_wasserstein(x, y, KEY),
    lambda x, y: tsw_sl.max_sliced_wasserstein(x, y),
    lambda x, y: tsw_sl.max_tsw_sl(x, y, KEY, n_trees=1),
])
def test_key_and_options_are_keyword_only(call):
    x, y = np.zeros((4, 3)), np.ones((5, 3))
    with pytest.raises(TypeError):
        call(x, y)


@pytest.mark.parametrize("call, match", [
    (lambda x, y: tsw_sl.sliced_wasserstein(x, y, projections=np.ones((5, 2))),
     r"projections must have shape \[P, 3\]"),
    (lambda x, y: tsw_sl.sliced_wasserstein(x, y[:, :2], key=jax.random.key(0)), r"same dimension d"),
    (lambda x, y: tsw_sl.sliced_wasserstein(x, y, np.ones(4), key=jax.random.key(0)), r"a must sum to 1"),
    (lambda x, y: tsw_sl.sliced_wasserstein(x, y, key=jax.random.key(0), p=0), r"p must be"),
    (lambda x, y: tsw_sl.sliced_wasserstein(x, y, key=jax.random.key(0), return_costs=None), r"return_costs must"),
    (lambda x, y: tsw_sl.max_sliced_wasserstein(x, y, key=jax.random.key(0), n_steps=-1), r"n_steps must be"),
    (lambda x, y: tsw_sl.max_tsw_sl(x[None], y[None], key=jax.random.key(0)), r"takes one pair"),
    (lambda x, y: tsw_sl.sliced_wasserstein(x, y, key=jax.random.key(0), sort_method="gpu"), r"sort_method must be"),
])
def test_sliced_bad_inputs_raise(call, match):
    x, y = np.zeros((4, 3)), np.ones((5, 3))
    with pytest.raises(ValueError, match=match):
        call(x, y)
