"""Sliced Wasserstein distance (the reference TSW-SL is compared with).

SW_p(mu, nu) = (mean_theta W_p^p(theta # mu, theta # nu))^(1/p) with the 1-D W_p^p computed from quantile
functions: integral_0^1 |F^{-1}(t) - G^{-1}(t)|^p dt over the merged grid of cumulative weights. This is the
quantity of POT's `ot.sliced_wasserstein_distance` given the same projections.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from tsw_sl import sorting, validation
from tsw_sl.distance import root_p
from tsw_sl.trees import random_directions


def _pow(v, p):
    return jnp.abs(v) if p == 1 else jnp.abs(v) ** p


def wasserstein_1d_pow(u, v, a, b, p, sort_method="auto", uniform_equal=False):
    """W_p^p between 1-D measures, batched over projections.

    Args:
      u: [P, n], v: [P, m] projected supports; a: [n], b: [m] weights summing to one; p: static >= 1.
      uniform_equal: static; True when a and b are uniform with n == m (then W_p^p = mean |u_(i) - v_(i)|^p).
    Returns:
      [P] values of W_p^p.
    """
    if uniform_equal:
        us, = sorting.sort_with(u, method=sort_method)
        vs, = sorting.sort_with(v, method=sort_method)
        return jnp.mean(_pow(us - vs, p), axis=-1)
    n = u.shape[-1]
    us, a_s = sorting.sort_with(u, a, method=sort_method)
    vs, b_s = sorting.sort_with(v, b, method=sort_method)
    levels = jnp.concatenate([sorting.cumsum(a_s), sorting.cumsum(b_s)], axis=-1)
    from_u = jnp.concatenate([jnp.ones_like(u, jnp.int32), jnp.zeros_like(v, jnp.int32)], axis=-1)
    levels, from_u = sorting.sort_with(levels, from_u, method=sort_method)
    # On (levels[j-1], levels[j]] the quantile of u is its (number of u-levels before j)-th sorted value.
    iu = sorting.cumsum(from_u) - from_u
    iv = jnp.arange(levels.shape[-1], dtype=jnp.int32) - iu
    iu, iv = jnp.minimum(iu, n - 1), jnp.minimum(iv, v.shape[-1] - 1)
    width = jnp.diff(levels, axis=-1, prepend=jnp.zeros_like(levels[..., :1]))
    return jnp.sum(width * _pow(sorting.take_last(us, iu) - sorting.take_last(vs, iv), p), axis=-1)


def sliced_cost(x, y, a, b, directions, p, sort_method="auto", uniform_equal=False):
    """Mean over directions of W_p^p for one validated pair: x [n, d], y [m, d], directions [P, d] -> []."""
    u = jnp.einsum("nd,pd->pn", x, directions)
    v = jnp.einsum("md,pd->pm", y, directions)
    return jnp.mean(wasserstein_1d_pow(u, v, a, b, p, sort_method, uniform_equal))


def sliced_wasserstein(x, y, key=None, n_projections=50, a=None, b=None, p=2, *, projections=None,
                       normalize_weights=False, sort_method="auto"):
    """Sliced p-Wasserstein distance with directions uniform on S^{d-1}.

    Args:
      x: [..., n, d], y: [..., m, d] supports; key: PRNG key (unused when `projections` is given);
      n_projections: number of random directions P (static).
      a: [..., n], b: [..., m] weights (default uniform), each summing to one.
      p: static exponent >= 1.
      projections: optional [P, d] directions (rows; unit norm for the usual definition). POT's
        `projections` argument is the transpose, [d, P].
    Returns:
      [...] (mean_theta W_p^p(theta # mu, theta # nu))^(1/p); one set of directions shared by the batch.
    """
    uniform_equal = a is None and b is None and jnp.shape(x)[-2] == jnp.shape(y)[-2]
    x, y, a, b = validation.measures(x, y, a, b, normalize_weights)
    p = validation.power(p)
    d = x.shape[-1]
    if projections is None and key is None:
        raise ValueError("sliced_wasserstein needs a key (or explicit projections)")
    if projections is not None:
        projections = jnp.asarray(projections, x.dtype)
        if projections.ndim != 2 or projections.shape[1] != d:
            raise ValueError(f"projections must have shape [P, {d}]; got {projections.shape} for x {x.shape}")
    return _sliced(x, y, a, b, key, projections, n_projections=n_projections, p=p, sort_method=sort_method,
                   uniform_equal=uniform_equal)


@functools.partial(jax.jit, static_argnames=("n_projections", "p", "sort_method", "uniform_equal"))
def _sliced(x, y, a, b, key, projections, *, n_projections, p, sort_method, uniform_equal):
    if projections is None:
        projections = random_directions(key, (n_projections,), x.shape[-1], x.dtype)

    def one(x, y, a, b):
        return root_p(sliced_cost(x, y, a, b, projections, p, sort_method, uniform_equal), p)

    return validation.vmap_leading(one, x.ndim - 2, 0)(x, y, a, b)
