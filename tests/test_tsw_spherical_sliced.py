"""Spherical sliced Wasserstein (docs/tsw_sl.md §11.1): W_p on the circle against POT's circle solver and a brute
force over cyclic matchings, SSW against POT's `ot.sliced_wasserstein_sphere` given the same great circles, O(D)
invariance (two-sided), gradients, jit / vmap, input errors."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import ot
import pytest
from scipy.stats import ortho_group

import tsw_sl
from tests.sphere_fixtures import sphere_points, weights
from tsw_sl.spherical_sliced import circle_coordinates, circle_wasserstein_pow
from tsw_sl.trees import random_directions


def circle_cost(u, v, a, b, p):
    scaled, scale = jax.jit(circle_wasserstein_pow, static_argnums=4)(u, v, a, b, p)
    return float(scaled * scale ** p)


def planes(seed, count, dim):
    return random_directions(jax.random.key(seed), (count, 2), dim, jnp.float64, orthogonal=True)


@pytest.mark.parametrize("p", [1, 2, 3.5])
def test_circle_cost_matches_pot_with_weights(p):
    rng = np.random.default_rng(int(10 * p))
    with jax.enable_x64(True):
        for n, m in [(1, 1), (1, 6), (7, 3), (12, 12)]:
            u, v, a, b = rng.random(n), rng.random(m), weights(rng, n), weights(rng, m)
            ref = float(np.ravel(ot.wasserstein_circle(u, v, a, b, p=p, eps=1e-13))[0])
            assert circle_cost(u, v, a, b, p) == pytest.approx(ref, rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("p", [1, 2, 3])
def test_circle_cost_matches_best_cyclic_matching(p):
    """Uniform equal-size measures: the optimal plan on the circle matches the sorted points up to a cyclic
    shift, each pair at its geodesic distance min(|d|, 1 - |d|) (an independent reference, not POT)."""
    rng = np.random.default_rng(p)
    with jax.enable_x64(True):
        for n in (2, 5, 9):
            u, v = np.sort(rng.random(n)), np.sort(rng.random(n))
            d = np.abs(u[None, :] - np.stack([np.roll(v, s) for s in range(n)]))
            brute = np.min(np.mean(np.minimum(d, 1 - d) ** p, axis=-1))
            assert circle_cost(u, v, np.full(n, 1 / n), np.full(n, 1 / n), p) == pytest.approx(brute, rel=1e-9)


@pytest.mark.parametrize("dim, p", [(3, 2), (5, 1), (4, 3)])
def test_matches_pot_spherical_sliced_wasserstein(dim, p):
    rng = np.random.default_rng(dim)
    x, y, a, b = sphere_points(rng, 11, dim), sphere_points(rng, 8, dim), weights(rng, 11), weights(rng, 8)
    with jax.enable_x64(True):
        circles = planes(dim, 16, dim)
        ours = tsw_sl.spherical_sliced_wasserstein(x, y, a, b, projections=circles, p=p)
        ref = ot.sliced_wasserstein_sphere(x, y, a, b, n_projections=16, p=p,
                                           projections=np.asarray(jnp.swapaxes(circles, 1, 2)))
        assert float(ours) == pytest.approx(float(ref), rel=1e-6)


def test_coordinates_follow_pot_and_are_safe_off_the_plane():
    rng = np.random.default_rng(1)
    z = sphere_points(rng, 6, 3)
    with jax.enable_x64(True):
        circles = planes(1, 4, 3)
        ref = ot.utils.get_coordinate_circle(np.einsum("pkd,nd->pnk", circles, z).reshape(-1, 2)
                                             / np.linalg.norm(np.einsum("pkd,nd->pnk", circles, z), axis=-1).reshape(-1, 1))
        np.testing.assert_allclose(circle_coordinates(jnp.asarray(z), circles).reshape(-1), ref % 1, atol=1e-12)
        normal = np.cross(circles[0, 0], circles[0, 1])  # orthogonal to the first plane
        g = jax.jacobian(lambda z: circle_coordinates(z, circles[:1]))(jnp.asarray(normal[None]))
        assert np.all(np.isfinite(g))


@pytest.mark.parametrize("dim", [3, 5])
def test_invariant_under_orthogonal_maps_of_points_and_circles_only(dim):
    rng = np.random.default_rng(dim + 20)
    x, y, a, b = sphere_points(rng, 9, dim), sphere_points(rng, 7, dim), weights(rng, 9), weights(rng, 7)
    q = ortho_group.rvs(dim, random_state=rng)
    with jax.enable_x64(True):
        circles = planes(dim, 12, dim)
        base = tsw_sl.spherical_sliced_wasserstein(x, y, a, b, projections=circles)
        moved = tsw_sl.spherical_sliced_wasserstein(x @ q.T, y @ q.T, a, b, projections=circles @ q.T)
        assert float(moved) == pytest.approx(float(base), rel=1e-10)
        points_only = tsw_sl.spherical_sliced_wasserstein(x @ q.T, y, a, b, projections=circles)
        assert abs(float(points_only) - float(base)) > 1e-3 * float(base)


def test_zero_on_identical_measures_and_positive_otherwise():
    rng = np.random.default_rng(3)
    x, a, perm = sphere_points(rng, 10, 3), weights(rng, 10), rng.permutation(10)
    key = jax.random.key(0)
    with jax.enable_x64(True):
        assert float(tsw_sl.spherical_sliced_wasserstein(x, x[perm], a, a[perm], key=key)) < 1e-7
    # float32: the cost is zero up to rounding of the cumulative weights (~1e-8), its square root ~1e-4
    x32 = x.astype(np.float32)
    assert float(tsw_sl.spherical_sliced_wasserstein(x32, x32[perm], a, a[perm], key=key)) < 1e-3
    assert float(tsw_sl.spherical_sliced_wasserstein(x32, -x32, a, a, key=key)) > 0.1


def test_gradient_is_tangent_finite_and_matches_finite_differences():
    rng = np.random.default_rng(4)
    with jax.enable_x64(True):
        x, y, a, b = sphere_points(rng, 6, 3), sphere_points(rng, 5, 3), weights(rng, 6), weights(rng, 5)
        circles = planes(4, 8, 3)
        fn = lambda x: tsw_sl.spherical_sliced_wasserstein(x, y, a, b, projections=circles, p=2)  # noqa: E731
        g = np.asarray(jax.grad(fn)(x))
        np.testing.assert_allclose(np.sum(g * x, axis=-1), 0, atol=1e-12)
        v = np.cross(x, rng.normal(size=x.shape))
        eps = 1e-7
        moved = lambda t: (x + t * v) / np.linalg.norm(x + t * v, axis=-1, keepdims=True)  # noqa: E731
        fd = (fn(moved(eps)) - fn(moved(-eps))) / (2 * eps)
        assert float(fd) == pytest.approx(float(np.sum(g * v)), rel=1e-5)
        for partner in (x, -x):  # coincident and antipodal points
            assert np.all(np.isfinite(jax.grad(lambda x: tsw_sl.spherical_sliced_wasserstein(
                x, partner, projections=circles))(jnp.asarray(x))))


def test_batch_vmap_and_jit_agree_with_eager_calls():
    rng = np.random.default_rng(5)
    xs = np.stack([sphere_points(rng, 8, 3) for _ in range(3)]).astype(np.float32)
    ys = np.stack([sphere_points(rng, 6, 3) for _ in range(3)]).astype(np.float32)
    key = jax.random.key(1)
    ssw = tsw_sl.spherical_sliced_wasserstein
    eager = [ssw(x, y, key=key, n_projections=6) for x, y in zip(xs, ys)]
    np.testing.assert_allclose(ssw(xs, ys, key=key, n_projections=6), eager, rtol=1e-5)
    np.testing.assert_allclose(jax.vmap(lambda x, y: ssw(x, y, key=key, n_projections=6))(xs, ys), eager, rtol=1e-5)
    jitted = jax.jit(lambda x, y, k: ssw(x, y, key=k, n_projections=6, return_costs=True))(xs[0], ys[0], key)
    np.testing.assert_allclose(jitted[0], eager[0], rtol=1e-5)
    np.testing.assert_allclose(jnp.mean(jitted[1]) ** 0.5, eager[0], rtol=1e-5)


def test_bad_arguments_raise():
    rng = np.random.default_rng(6)
    x, y = sphere_points(rng, 5, 3), sphere_points(rng, 4, 3)
    ssw = tsw_sl.spherical_sliced_wasserstein
    with pytest.raises(TypeError, match="key="):
        ssw(x, y)
    with pytest.raises(ValueError, match=r"x must lie on the unit sphere.*shape \(5, 3\)"):
        ssw(x * 1.01, y, key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"projections must have shape \[P, 2, 3\].*\(4, 3\)"):
        ssw(x, y, projections=np.ones((4, 3)))
    for name, value in itertools.product(("n_projections",), (0, 1.5)):
        with pytest.raises(ValueError, match=name):
            ssw(x, y, key=jax.random.key(0), **{name: value})
