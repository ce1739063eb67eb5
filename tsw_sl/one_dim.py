"""One-dimensional optimal transport on projected supports, shared by SW and by TSW-SL's constant-splitting
path: W_p^p between 1-D measures from quantile functions, the same along given directions, and the p-th root
with a finite gradient at 0."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from tsw_sl import sorting


def abs_pow(v: jax.Array, p: float) -> jax.Array:
    """|v|^p elementwise (p static)."""
    return jnp.abs(v) if p == 1 else jnp.abs(v) ** p


def root_p(v: jax.Array, p: float) -> jax.Array:
    """v^(1/p) with a finite gradient at v = 0 (p is static)."""
    if p == 1:
        return v
    pos = v > 0
    return jnp.where(pos, jnp.where(pos, v, 1.0) ** (1.0 / p), 0.0)


def wasserstein_1d_pow(u: jax.Array, v: jax.Array, a: jax.Array, b: jax.Array, p: float, sort_method: str = "auto",
                       uniform_equal: bool = False) -> jax.Array:
    """W_p^p between 1-D measures, batched over projections.

    W_p^p = integral_0^1 |F^{-1}(t) - G^{-1}(t)|^p dt over the merged grid of cumulative weights.

    Args:
      u: [..., n], v: [..., m] projected supports; a: [n], b: [m] weights summing to one; p: static >= 1.
      uniform_equal: static; True when a and b are uniform with n == m (then W_p^p = mean |u_(i) - v_(i)|^p:
        two sorts of n values and no merge).
    Returns:
      [...] values of W_p^p.
    """
    if uniform_equal:
        us, = sorting.sort_with(u, method=sort_method)
        vs, = sorting.sort_with(v, method=sort_method)
        return jnp.mean(abs_pow(us - vs, p), axis=-1)
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
    return jnp.sum(width * abs_pow(sorting.take_last(us, iu) - sorting.take_last(vs, iv), p), axis=-1)


def projected_costs(x: jax.Array, y: jax.Array, a: jax.Array, b: jax.Array, directions: jax.Array, p: float,
                    sort_method: str = "auto", uniform_equal: bool = False) -> jax.Array:
    """W_p^p between the projections of one validated pair onto each direction.

    x: [n, d], y: [m, d], a: [n], b: [m], directions: [..., d] -> [...]; p, sort_method, uniform_equal as in
    `wasserstein_1d_pow`.
    """
    u = jnp.einsum("nd,...d->...n", x, directions)
    v = jnp.einsum("md,...d->...m", y, directions)
    return wasserstein_1d_pow(u, v, a, b, p, sort_method, uniform_equal)
