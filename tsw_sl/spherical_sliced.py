"""Spherical sliced Wasserstein distance (SSW; Bonet et al., 2023), the sliced baseline of `spherical_tsw`
(docs/tsw_sl.md §11.1).

A great circle is a 2-plane of R^D with an orthonormal basis U (rows [2, D]); a point x on the sphere goes to
the circle point U x / |U x|, with coordinate u = (pi + atan2(-<U_1, x>, -<U_0, x>)) / (2 pi) in [0, 1) (POT's
convention). SSW_p^p is the mean over random great circles of W_p^p on the circle of length 1, where

    W_p^p(mu, nu) = min_alpha c(alpha),   c(alpha) = integral_0^1 |F^{-1}(t) - Q(t + alpha)|^p dt,

F^{-1} the quantile function of mu on [0, 1) and Q that of nu lifted periodically to R (Q(s + 1) = Q(s) + 1):
c(alpha) is the 1-D cost between mu and the unit window of mass (alpha, 1 + alpha] of the lifted nu (Delon,
Salomon and Sobolevski, 2010). For discrete measures c is convex and piecewise linear in alpha, with slope

    c'(alpha) = sum over the jumps s of Q in (alpha, 1 + alpha] of h(F^{-1}(s - alpha) - Q(s+)) - h(F^{-1}(s - alpha) - Q(s-)),

h = |.|^p, so alpha* is found by bisection on the sign of the slope (no sort per step), and c(alpha*) is then
the 1-D cost of `one_dim.wasserstein_1d_pow` against the window (a measure of 3m atoms y_j + k, k in {-1, 0, 1},
each cut to the window). alpha* carries no gradient: at a minimum over alpha the value's gradient is the
partial gradient at fixed alpha (the envelope theorem), so points and weights get their gradients through the
1-D cost. The bisection runs to the resolution of the dtype, so the result is exact up to rounding (POT's
`ot.wasserstein_circle` stops at its tolerance eps = 1e-6).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.typing import ArrayLike

from tsw_sl import sharding, sorting, validation
from tsw_sl.one_dim import abs_pow, wasserstein_1d_pow
from tsw_sl.sliced import Distance, mean_over_slices
from tsw_sl.trees import normalize, random_directions


def circle_coordinates(z: jax.Array, planes: jax.Array) -> jax.Array:
    """Coordinates in [0, 1) of unit points on great circles.

    z: [N, D] unit points; planes: [P, 2, D] orthonormal bases of the circles' planes -> [P, N]. A point
    orthogonal to a plane (measure zero) is sent to coordinate 0.5 with a zero gradient.
    """
    c = jnp.einsum("nd,pkd->pkn", z, planes)
    off = jnp.sum(jnp.square(c), axis=-2) > 0
    c0, c1 = jnp.where(off, c[:, 0], -1.0), jnp.where(off, c[:, 1], 0.0)
    return ((jnp.pi + jnp.arctan2(-c1, -c0)) / (2 * jnp.pi)) % 1.0


def _slope(alpha: jax.Array, us: jax.Array, cum_a: jax.Array, vs: jax.Array, cum_b: jax.Array, p: float) -> jax.Array:
    """Slope of c at alpha for sorted supports us [n] (cumulative weights cum_a [n]) and vs [m] (cum_b [m])."""
    k = jnp.floor(1.0 + alpha - cum_b)  # the lift of jump j that falls in the window (alpha, 1 + alpha]
    t = cum_b + k - alpha
    quantile = us[jnp.minimum(jnp.searchsorted(cum_a, t), us.shape[0] - 1)]
    after = jnp.concatenate([vs[1:], vs[:1] + 1.0])  # Q just after the j-th jump (the last wraps around)
    return jnp.sum(abs_pow(quantile - after - k, p) - abs_pow(quantile - vs - k, p))


def _window(vs: jax.Array, b_s: jax.Array, cum_b: jax.Array, alpha: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The unit window (alpha, 1 + alpha] of the lifted measure: atoms vs + k, k in {-1, 0, 1}, with their
    weights b_s cut to the window -> (atoms [3m], masses [3m])."""
    shifts = jnp.arange(-1.0, 2.0, dtype=vs.dtype)[:, None]
    hi = jnp.clip(cum_b + shifts, alpha, 1.0 + alpha)
    lo = jnp.clip(cum_b - b_s + shifts, alpha, 1.0 + alpha)
    return (vs + shifts).reshape(-1), (hi - lo).reshape(-1)


def circle_wasserstein_pow(u: jax.Array, v: jax.Array, a: jax.Array, b: jax.Array, p: float,
                           sort_method: str = "auto") -> tuple[jax.Array, jax.Array]:
    """W_p^p on the circle R / Z between measures on one circle, as (scaled, scale) (`one_dim.power_scale`).

    u: [n], v: [m] coordinates in [0, 1); a: [n], b: [m] weights summing to one; p: static >= 1.
    Returns scaled [] and scale [] with W_p^p = scale^p * scaled.
    """
    us, a_s = sorting.sort_with(u, a, method=sort_method)
    vs, b_s = sorting.sort_with(v, b, method=sort_method)
    cum_a, cum_b = jnp.cumsum(a_s), jnp.cumsum(b_s)
    fixed = jax.lax.stop_gradient((us, cum_a, vs, cum_b))
    zero = 0.0 * fixed[0][0]  # like the inputs (varying over a mesh's devices inside `sharding.mean_costs`)

    def halve(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        up = _slope(mid, *fixed, p) > 0
        return jnp.where(up, lo, mid), jnp.where(up, mid, hi)

    steps = jnp.finfo(u.dtype).nmant + 3  # [-1, 1] halved down to the dtype's resolution
    lo, hi = jax.lax.fori_loop(0, steps, halve, (zero - 1.0, zero + 1.0))
    atoms, mass = _window(vs, b_s, cum_b, jax.lax.stop_gradient(0.5 * (lo + hi)))
    return wasserstein_1d_pow(us, atoms, a_s, mass, p, sort_method)


def spherical_sliced_wasserstein(x: ArrayLike, y: ArrayLike, a: ArrayLike | None = None, b: ArrayLike | None = None,
                                 *, key: jax.Array | None = None, n_projections: int = 50, p: float = 2,
                                 projections: ArrayLike | None = None, normalize_weights: bool = False,
                                 sort_method: str = "auto", return_costs: bool = False,
                                 mesh: Mesh | None = None) -> Distance:
    """Spherical sliced p-Wasserstein distance between measures on the unit sphere S^{D-1} of R^D.

    Args:
      x: [..., n, D], y: [..., m, D] unit vectors (norms within `validation.sphere_tolerance` of 1; D >= 2);
        a: [..., n], b: [..., m] weights (default uniform), each summing to one (or any positive total with
        `normalize_weights=True`).
      key: PRNG key of P = n_projections great circles, uniform (Haar) 2-frames; required unless `projections`
        is given, then unused.
      projections: optional [P, 2, D] orthonormal bases of the circles' planes (rows). POT's `projections`
        argument of `ot.sliced_wasserstein_sphere` is the transpose, [P, D, 2].
      p: static exponent >= 1.
      sort_method, return_costs, mesh: as in `sliced_wasserstein` (with a mesh the circles are split over its
        devices; P must be a multiple of its size).
    Returns:
      [...] (mean over circles of W_p^p on the circle of length 1)^(1/p), POT's `ot.sliced_wasserstein_sphere`
      given the same planes; with `return_costs`, (distances, costs [..., P]). jit/vmap/grad-safe; the points
      are normalised inside, so the gradient is tangent to the sphere.
    Raises:
      TypeError without key and projections, or when a PRNG key is passed as a weight; ValueError for points off
      the sphere (concrete inputs), projections of the wrong shape, and as in `sliced_wasserstein`.
    """
    x, y, a, b = validation.measures(x, y, a, b, normalize_weights)
    validation.on_sphere("x", x)
    validation.on_sphere("y", y)
    p = validation.power(p)
    return_costs = validation.flag("return_costs", return_costs)
    if projections is not None:
        projections = validation.projections(projections, x, per_slice=(2,))
    elif key is None:
        raise TypeError("spherical_sliced_wasserstein needs the keyword argument key= (or explicit projections=)")
    else:
        validation.count("n_projections", n_projections)
        projections = random_directions(key, (n_projections, 2), x.shape[-1], x.dtype, orthogonal=True)
    mesh = sharding.check_mesh(mesh, projections.shape[0], "the number of projections")
    return _spherical_sliced(x, y, a, b, projections, p=p, sort_method=sort_method, return_costs=return_costs,
                             mesh=mesh)


@functools.partial(jax.jit, static_argnames=("p", "sort_method", "return_costs", "mesh"))
def _spherical_sliced(x, y, a, b, planes, *, p, sort_method, return_costs, mesh):
    n_batch = x.ndim - 2

    def costs(shared, planes):
        def one(x, y, a, b):
            u = circle_coordinates(normalize(x), planes)
            v = circle_coordinates(normalize(y), planes)
            per_circle = jax.vmap(circle_wasserstein_pow, in_axes=(0, 0, None, None, None, None))
            scaled, scale = per_circle(u, v, a, b, p, sort_method)
            top = jnp.max(scale)  # powers of two: rescaling to the largest is exact
            return scaled * (scale / top) ** p, top

        return validation.vmap_leading(one, n_batch, 0)(*shared)

    return mean_over_slices(costs, x, y, a, b, planes, p=p, return_costs=return_costs, mesh=mesh)
