"""One-dimensional optimal transport on projected supports, shared by SW and by TSW-SL's constant-splitting
path: W_p^p between 1-D measures from quantile functions, the same along given directions, and the p-th root
with a finite gradient at 0.

Costs |v|^p overflow or underflow for large p or extreme magnitudes (p = 50 with masses 0.1, p = 2 with
coordinates 1e20 in float32), so the functions computing them return scaled costs with a power-of-two scale:
the costs are scale^p * scaled (docs/tsw_sl.md §8). The scale is 1 whenever max |v|^p is safely
representable, so ordinary inputs are computed exactly as without scaling.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from tsw_sl import sorting


def abs_pow(v: jax.Array, p: float) -> jax.Array:
    """|v|^p elementwise (p static)."""
    return jnp.abs(v) if p == 1 else jnp.abs(v) ** p


def power_scale(v: jax.Array, p: float) -> jax.Array:
    """A power of two s (a scalar, no gradient) such that |v / s|^p neither overflows nor underflows at the
    largest |v|: 1 when p = 1 or when |log2 max|v|| * p < maxexp / 4 of v's dtype (32 in float32, 256 in
    float64), else 2^e with max |v| = f 2^e, f in [0.5, 1). Also 1 when max |v| is 0 or not finite (so NaN
    and inf propagate). Dividing by s is exact."""
    one = jnp.ones((), v.dtype)
    if p == 1:
        return one
    _, e = jnp.frexp(jax.lax.stop_gradient(jnp.max(jnp.abs(v))))
    e = jnp.where(jnp.abs(e) * p < jnp.finfo(v.dtype).maxexp // 4, 0, e)
    return jnp.ldexp(one, e)


def root_p(v: jax.Array, p: float) -> jax.Array:
    """v^(1/p) with a finite gradient at v = 0 (p is static); NaN stays NaN (value and gradient), +inf stays
    +inf, and v < 0 (rounding) gives 0."""
    if p == 1:
        return v
    pos = v > 0
    return jnp.where(pos, jnp.where(pos, v, 1.0) ** (1.0 / p), jnp.where(jnp.isnan(v), v, 0.0))


def scaled_root(scaled: jax.Array, scale: jax.Array, p: float) -> jax.Array:
    """The distance (mean costs)^(1/p) from scaled costs: scale * (mean scaled)^(1/p). scaled: [...] -> []."""
    return scale * root_p(jnp.mean(scaled), p)


def unscale(scaled: jax.Array, scale: jax.Array, p: float) -> jax.Array:
    """The costs scale^p * scaled (they may overflow or underflow where the scale is not 1)."""
    return scaled if p == 1 else scale ** p * scaled


def wasserstein_1d_pow(u: jax.Array, v: jax.Array, a: jax.Array, b: jax.Array, p: float, sort_method: str = "auto",
                       uniform_equal: bool = False) -> tuple[jax.Array, jax.Array]:
    """W_p^p between 1-D measures, batched over projections, as (scaled, scale): W_p^p = scale^p * scaled.

    W_p^p = integral_0^1 |F^{-1}(t) - G^{-1}(t)|^p dt over the merged grid of cumulative weights.

    Args:
      u: [..., n], v: [..., m] projected supports; a: [n], b: [m] weights summing to one; p: static >= 1.
      uniform_equal: static; True when a and b are uniform with n == m (then W_p^p = mean |u_(i) - v_(i)|^p:
        two sorts of n values and no merge).
    Returns:
      scaled [...] and one power-of-two scale (`power_scale` of all the quantile differences).
    """
    if uniform_equal:
        us, = sorting.sort_with(u, method=sort_method)
        vs, = sorting.sort_with(v, method=sort_method)
        diff = us - vs
        scale = power_scale(diff, p)
        return jnp.mean(abs_pow(diff / scale, p), axis=-1), scale
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
    diff = sorting.take_last(us, iu) - sorting.take_last(vs, iv)
    scale = power_scale(diff, p)
    return jnp.sum(width * abs_pow(diff / scale, p), axis=-1), scale


def projected_costs(x: jax.Array, y: jax.Array, a: jax.Array, b: jax.Array, directions: jax.Array, p: float,
                    sort_method: str = "auto", uniform_equal: bool = False) -> tuple[jax.Array, jax.Array]:
    """W_p^p between the projections of one validated pair onto each direction, as (scaled, scale).

    x: [n, d], y: [m, d], a: [n], b: [m], directions: [..., d] -> scaled [...] and a scalar scale; p,
    sort_method, uniform_equal as in `wasserstein_1d_pow`.
    """
    u = jnp.einsum("nd,...d->...n", x, directions)
    v = jnp.einsum("md,...d->...m", y, directions)
    return wasserstein_1d_pow(u, v, a, b, p, sort_method, uniform_equal)
