"""Spherical TSW (docs/tsw_sl.md §11): brute-force tree Wasserstein on explicit trees, O(D) invariance, zero on
identical measures, finite gradients at degenerate points, input errors, jit / vmap / grad."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import ot
import pytest
from scipy.stats import ortho_group

import tsw_sl
from tests.sphere_fixtures import sphere_points, weights


def brute_splitting(z, root, directions, delta):
    """alpha [k, N] straight from the definition: softmax_l(-delta * arccos<y_l, x_hat> * sin(arccos<r, x>))."""
    theta = np.arccos(np.clip(z @ root, -1, 1))
    tangent = z - np.outer(z @ root, root)
    x_hat = tangent / np.linalg.norm(tangent, axis=-1, keepdims=True)
    phi = np.arccos(np.clip(directions @ x_hat.T, -1, 1))
    logits = -delta * phi * np.sin(theta)
    e = np.exp(logits - logits.max(0))
    return theta, e / e.sum(0)


def brute_tree_cost_lp(x, y, a, b, root, directions, delta):
    """p = 1: exact OT (POT's LP) between the measures pushed onto the tree, with the tree metric
    d((l, s), (l', t)) = |s - t| on one edge and s + t across edges."""
    tx, ax = brute_splitting(x, root, directions, delta)
    ty, ay = brute_splitting(y, root, directions, delta)
    k = directions.shape[0]
    src = [(l, tx[i], ax[l, i] * a[i]) for l in range(k) for i in range(len(a))]
    dst = [(l, ty[j], ay[l, j] * b[j]) for l in range(k) for j in range(len(b))]
    cost = np.array([[abs(s - t) if l == m else s + t for m, t, _ in dst] for l, s, _ in src])
    return ot.emd2(np.array([w for *_, w in src]), np.array([w for *_, w in dst]), cost)


def brute_tree_cost_edges(x, y, a, b, root, directions, delta, p):
    """sum over the edges of the explicit tree (root, then every point's node on each ray) of
    length * |mass of mu - nu beyond the edge|^p."""
    tx, ax = brute_splitting(x, root, directions, delta)
    ty, ay = brute_splitting(y, root, directions, delta)
    coords = np.concatenate([tx, ty])
    total = 0.0
    for l in range(directions.shape[0]):
        mass = np.concatenate([ax[l] * a, -ay[l] * b])
        nodes = np.unique(np.concatenate([[0.0], coords]))
        for lo, hi in zip(nodes[:-1], nodes[1:]):
            beyond = mass[coords > lo].sum()  # the subtree hanging below the edge (lo, hi)
            total += (hi - lo) * abs(beyond) ** p
    return total


def small_case(seed, n=5, m=4, dim=3, n_trees=3, n_lines=3):
    rng = np.random.default_rng(seed)
    x, y = sphere_points(rng, n, dim), sphere_points(rng, m, dim)
    a, b = weights(rng, n), weights(rng, m)
    trees = tsw_sl.sample_spherical_trees(jax.random.key(seed), n_trees, n_lines, dim, jnp.float64)
    return x, y, a, b, trees


@pytest.mark.parametrize("seed, dim, delta", [(0, 3, 2.0), (1, 4, 0.0), (2, 2, 5.0)])
def test_matches_exact_ot_on_the_tree(seed, dim, delta):
    with jax.enable_x64(True):
        x, y, a, b, trees = small_case(seed, dim=dim)
        got, costs = tsw_sl.spherical_tsw(x, y, a, b, trees=trees, delta=delta, return_costs=True)
        roots, dirs = np.asarray(trees.roots), np.asarray(trees.directions)
        want = [brute_tree_cost_lp(x, y, a, b, r, d, delta) for r, d in zip(roots, dirs)]
        np.testing.assert_allclose(costs, want, rtol=1e-6)
        np.testing.assert_allclose(got, np.mean(want), rtol=1e-6)


@pytest.mark.parametrize("p", [1, 2, 3.5])
def test_matches_explicit_tree_edges(p):
    with jax.enable_x64(True):
        x, y, a, b, trees = small_case(3, n=6, m=3, dim=3, n_trees=2, n_lines=4)
        got, costs = tsw_sl.spherical_tsw(x, y, a, b, trees=trees, delta=1.5, p=p, return_costs=True)
        want = [brute_tree_cost_edges(x, y, a, b, r, d, 1.5, p)
                for r, d in zip(np.asarray(trees.roots), np.asarray(trees.directions))]
        np.testing.assert_allclose(costs, want, rtol=1e-6)
        np.testing.assert_allclose(got, np.mean(want) ** (1 / p), rtol=1e-6)


def test_sampled_trees_are_unit_and_tangent():
    trees = tsw_sl.sample_spherical_trees(jax.random.key(0), 7, 5, 4)
    assert trees.roots.shape == (7, 4) and trees.directions.shape == (7, 5, 4)
    np.testing.assert_allclose(jnp.linalg.norm(trees.roots, axis=-1), 1, rtol=1e-6)
    np.testing.assert_allclose(jnp.linalg.norm(trees.directions, axis=-1), 1, rtol=1e-6)
    np.testing.assert_allclose(jnp.einsum("lkd,ld->lk", trees.directions, trees.roots), 0, atol=1e-6)


def rotate(trees, q):
    return tsw_sl.SphericalTrees(trees.roots @ q.T, trees.directions @ q.T)


@pytest.mark.parametrize("dim", [3, 5])
def test_invariant_under_orthogonal_maps_of_points_and_trees(dim):
    with jax.enable_x64(True):
        x, y, a, b, trees = small_case(4, n=12, m=9, dim=dim, n_trees=6, n_lines=4)
        for seed in range(2):
            q = ortho_group.rvs(dim, random_state=seed)
            q[0] *= -1 if seed else 1  # one reflection, one rotation
            args = dict(delta=3.0, p=2, return_costs=True)
            want = tsw_sl.spherical_tsw(x, y, a, b, trees=trees, **args)
            got = tsw_sl.spherical_tsw(x @ q.T, y @ q.T, a, b, trees=rotate(trees, q), **args)
            np.testing.assert_allclose(got[1], want[1], rtol=1e-10)
            np.testing.assert_allclose(got[0], want[0], rtol=1e-10)


def test_invariant_in_law_over_random_trees():
    """The trees stay put and the measures rotate: the mean cost over many random trees agrees (a z-test at 5
    standard errors of the difference), while the per-tree costs differ."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(5)
        x = sphere_points(rng, 40, 3) + np.array([0.0, 0.0, 1.5])
        x /= np.linalg.norm(x, axis=-1, keepdims=True)  # a cap around the north pole
        y = sphere_points(rng, 30, 3)
        q = ortho_group.rvs(3, random_state=7)
        trees = tsw_sl.sample_spherical_trees(jax.random.key(6), 4000, 4, 3, jnp.float64)
        _, c0 = tsw_sl.spherical_tsw(x, y, trees=trees, delta=2.0, return_costs=True)
        _, c1 = tsw_sl.spherical_tsw(x @ q.T, y @ q.T, trees=trees, delta=2.0, return_costs=True)
        c0, c1 = np.asarray(c0), np.asarray(c1)
        diff = c1 - c0
        assert np.abs(diff).max() > 1e-3  # the trees did not move with the measures
        assert abs(diff.mean()) < 5 * diff.std() / np.sqrt(len(diff))


def test_zero_on_identical_measures():
    rng = np.random.default_rng(8)
    x = sphere_points(rng, 10, 3).astype(np.float32)
    a = weights(rng, 10)
    perm = rng.permutation(10)
    d = tsw_sl.spherical_tsw(x, x[perm], a, a[perm], key=jax.random.key(0), n_trees=8, p=2)
    assert float(d) == pytest.approx(0.0, abs=1e-6)


def test_finite_gradients_at_antipodal_coincident_root_and_edge_points():
    with jax.enable_x64(True):
        trees = tsw_sl.sample_spherical_trees(jax.random.key(9), 4, 3, 3, jnp.float64)
        r, y0 = np.asarray(trees.roots[0]), np.asarray(trees.directions[0, 0])
        rng = np.random.default_rng(9)
        base = sphere_points(rng, 4, 3)
        x = np.concatenate([base, [r, -r, y0, np.cos(0.3) * r + np.sin(0.3) * y0]])
        y = np.concatenate([-base, [r, r, -y0, base[0]]])  # antipodes of x, x's root point, a coincident point
        for p in (1, 2):
            fn = lambda x, y: tsw_sl.spherical_tsw(x, y, trees=trees, delta=2.0, p=p)  # noqa: E731
            gx, gy = jax.grad(fn, argnums=(0, 1))(x, y)
            assert np.all(np.isfinite(gx)) and np.all(np.isfinite(gy))
            g_same = jax.grad(fn)(x, x)  # every point coincides with its partner; the distance is 0
            assert np.all(np.isfinite(g_same))


def test_gradient_is_tangent_and_matches_finite_differences():
    with jax.enable_x64(True):
        x, y, a, b, trees = small_case(10, n=6, m=5, dim=3, n_trees=4, n_lines=3)
        fn = lambda x: tsw_sl.spherical_tsw(x, y, a, b, trees=trees, delta=2.0, p=2)  # noqa: E731
        g = np.asarray(jax.grad(fn)(x))
        np.testing.assert_allclose(np.sum(g * x, axis=-1), 0, atol=1e-12)
        v = np.cross(x, np.random.default_rng(0).normal(size=x.shape))  # a tangent direction at every point
        eps = 1e-6
        moved = lambda t: (x + t * v) / np.linalg.norm(x + t * v, axis=-1, keepdims=True)  # noqa: E731
        fd = (fn(moved(eps)) - fn(moved(-eps))) / (2 * eps)
        assert float(fd) == pytest.approx(float(np.sum(g * v)), rel=1e-5)


def test_jit_and_vmap_agree_with_eager_calls():
    rng = np.random.default_rng(11)
    xs = np.stack([sphere_points(rng, 8, 3) for _ in range(3)]).astype(np.float32)
    ys = np.stack([sphere_points(rng, 6, 3) for _ in range(3)]).astype(np.float32)
    key = jax.random.key(1)
    eager = [tsw_sl.spherical_tsw(x, y, key=key, n_trees=5, n_lines=3) for x, y in zip(xs, ys)]
    batched = tsw_sl.spherical_tsw(xs, ys, key=key, n_trees=5, n_lines=3)
    vmapped = jax.vmap(lambda x, y: tsw_sl.spherical_tsw(x, y, key=key, n_trees=5, n_lines=3))(xs, ys)
    jitted = jax.jit(lambda x, y, k: tsw_sl.spherical_tsw(x, y, key=k, n_trees=5, n_lines=3))(xs[0], ys[0], key)
    np.testing.assert_allclose(batched, eager, rtol=1e-5)
    np.testing.assert_allclose(vmapped, eager, rtol=1e-5)
    np.testing.assert_allclose(jitted, eager[0], rtol=1e-5)
    assert batched.shape == (3,)


def test_points_off_the_sphere_raise():
    rng = np.random.default_rng(12)
    x, y = sphere_points(rng, 5, 3), sphere_points(rng, 4, 3)
    key = jax.random.key(0)
    tsw_sl.spherical_tsw(x * (1 + 1e-6), y, key=key, n_trees=2)  # within the tolerance
    with pytest.raises(ValueError, match=r"x must lie on the unit sphere.*shape \(5, 3\)"):
        tsw_sl.spherical_tsw(x * 1.01, y, key=key, n_trees=2)
    with pytest.raises(ValueError, match="y must lie on the unit sphere"):
        tsw_sl.spherical_tsw(x, np.zeros((4, 3)), key=key, n_trees=2)
    with pytest.raises(ValueError, match="D >= 2"):
        tsw_sl.spherical_tsw(np.ones((3, 1)), np.ones((3, 1)), key=key, n_trees=2)


def test_bad_arguments_raise():
    rng = np.random.default_rng(13)
    x, y = sphere_points(rng, 5, 3), sphere_points(rng, 4, 3)
    with pytest.raises(TypeError, match="key="):
        tsw_sl.spherical_tsw(x, y)
    with pytest.raises(ValueError, match="dimension 4"):
        tsw_sl.spherical_tsw(x, y, trees=tsw_sl.sample_spherical_trees(jax.random.key(0), 2, 2, 4))
    with pytest.raises(ValueError, match="SphericalTrees"):
        tsw_sl.spherical_tsw(x, y, trees=tsw_sl.sample_trees(jax.random.key(0), 2, 2, 3))
    with pytest.raises(ValueError, match="dim must be >= 2"):
        tsw_sl.sample_spherical_trees(jax.random.key(0), 2, 2, 1)
    for bad in itertools.product(("n_trees", "n_lines"), (0, 1.5)):
        with pytest.raises(ValueError, match=bad[0]):
            tsw_sl.spherical_tsw(x, y, key=jax.random.key(0), **{bad[0]: bad[1]})
    with pytest.raises(ValueError, match="p must be"):
        tsw_sl.spherical_tsw(x, y, key=jax.random.key(0), p=0.5)
