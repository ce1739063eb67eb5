"""Sliced Wasserstein distance (the reference TSW-SL is compared with).

SW_p(mu, nu) = (mean_theta W_p^p(theta # mu, theta # nu))^(1/p) with the 1-D W_p^p of `one_dim`. This is the
quantity of POT's `ot.sliced_wasserstein_distance` given the same projections.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from tsw_sl import validation
from tsw_sl.one_dim import projected_costs, root_p
from tsw_sl.trees import random_directions


def sliced_cost(x, y, a, b, directions, p, sort_method="auto", uniform_equal=False):
    """Mean over directions of W_p^p for one validated pair: x [n, d], y [m, d], directions [P, d] -> []."""
    return jnp.mean(projected_costs(x, y, a, b, directions, p, sort_method, uniform_equal))


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
    uniform_equal = validation.uniform_equal(x, y, a, b)
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
