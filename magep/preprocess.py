"""Group-commuting input maps of the polynomial layers: per-layer channel maps and scale normalisation."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from common import checks
from magep.terms import channels_trailing, leading_tensors, suffix_products


def map_channels(maps: dict, weights: tuple, biases: tuple, layout: str = "channels_last") -> tuple[tuple, tuple]:
    """Apply ``maps["W{l}"]`` [C_l, c] to W^(l) features and ``maps["b{l}"]`` [C'_l, c] to b^(l) (commutes
    with the group, which never acts on channels). Returns (weights, biases) with c channels, in ``layout``
    (channels last, or channels leading: [C, ..., *index] -> [c, ..., *index])."""
    sub = "d...,de->e..." if layout == "channels_leading" else "...d,de->...e"
    return (tuple(jnp.einsum(sub, w, maps[f"W{l}"]) for l, w in enumerate(weights, 1)),
            tuple(jnp.einsum(sub, b, maps[f"b{l}"]) for l, b in enumerate(biases, 1)))


def safe_log(x: jax.Array) -> jax.Array:
    """Elementwise log x for x > 0 and -inf at x = 0 (same shape), with a zero (not NaN) gradient at 0 (the
    double-where form; values below the smallest normal float count as 0)."""
    positive = x > jnp.finfo(x.dtype).tiny
    return jnp.where(positive, jnp.log(jnp.where(positive, x, 1.0)), -jnp.inf)


def max_scaled(x: jax.Array, axes: tuple) -> tuple[jax.Array, jax.Array]:
    """(x / m, log m) with m = max |x| over `axes`: x/m has x's shape, log m keeps `axes` as size-1 axes;
    m = 1 where x is 0 there (or below the smallest normal float).

    m carries no gradient: every use below rescales by exactly m again, so the result does not depend on it
    and stopping its gradient leaves the gradient exact."""
    m = jax.lax.stop_gradient(jnp.max(jnp.abs(x), axis=axes, keepdims=True))
    m = jnp.where(m > jnp.finfo(x.dtype).tiny, m, 1.0)
    return x / m, jnp.log(m)


def log_sq_norm(x: jax.Array, axes: tuple) -> jax.Array:
    """log ||x||^2 over `axes` (removed; -inf where x is 0 there), finite gradient; x should be max-scaled."""
    return safe_log(jnp.sum(x * x, axis=axes))


def _max_scaled_inputs(weights: tuple, biases: tuple) -> tuple[tuple, list, tuple, list]:
    """(W^(l) / m_l, log m_l [c, ...], b^(l) / m'_l, log m'_l [c, ...]) per layer (`max_scaled` per channel;
    channels-leading inputs [c, ..., *index])."""
    scaled_w, log_mw = zip(*(max_scaled(w, (-2, -1)) for w in weights))
    scaled_b, log_mb = zip(*(max_scaled(b, (-1,)) for b in biases))
    return scaled_w, [m[..., 0, 0] for m in log_mw], scaled_b, [m[..., 0] for m in log_mb]


def _log_scale(scaled_w: tuple, log_mw: list, scaled_b: tuple, log_mb: list) -> jax.Array:
    """log r [c, ...] of `invariant_log_scale` from the max-scaled tensors and their log scales."""
    B = suffix_products(scaled_w)  # B_t = W^(L,t) / prod_{k>t} m_k, [c, ..., n_L, n_t]
    L = len(scaled_w)
    terms, log_m_above = [log_sq_norm(B[0], (-2, -1)) + 2 * sum(log_mw)], 0.0  # log ||W^(L,0)||^2; sum_{k>t} log m_k
    for t in range(L, 0, -1):
        b = scaled_b[t - 1]
        path = b if t == L else jnp.einsum("...ab,...b->...a", B[t], b)
        terms.append(log_sq_norm(path, (-1,)) + 2 * (log_m_above + log_mb[t - 1]))  # log ||W^(L,t) b^(t)||^2
        log_m_above = log_m_above + log_mw[t - 1]
    terms = jnp.stack(terms)
    nonzero = jnp.any(jnp.isfinite(terms), axis=0)
    log_n2 = jax.nn.logsumexp(jnp.where(nonzero, terms, 0.0), axis=0)  # all -inf would give a NaN gradient
    return jnp.where(nonzero, log_n2, 0.0) / (2 * L)


def _leading(weights: tuple, biases: tuple, layout: str) -> tuple[tuple, tuple]:
    return leading_tensors(weights, layout), leading_tensors(biases, layout)


def invariant_log_scale(weights: tuple, biases: tuple, layout: str = "channels_last") -> jax.Array:
    """log r per channel [..., c] (channels leading: [c, ...]) of the scale normalisation (`normalize_scale`):

        r = (||W^(L,0)||_F^2 + sum_{t=1..L} ||W^(L,t) b^(t)||^2)^(1/(2L))   (W^(L,L) = I; r = 1 where all are 0),

    the size of the network's end-to-end affine map: its linear part and the paths of its bias. These are invariant
    under every monomial g (§3), so r is; under the ReLU rescaling W^(l) -> a W^(l), b^(l) -> a^l b^(l) each of
    them scales by a^L, so r -> a r. Evaluated on max-scaled tensors with the scales added back as logs, so no
    product or square overflows or underflows in float32.
    """
    log_r = _log_scale(*_max_scaled_inputs(*_leading(weights, biases, layout)))
    return log_r if layout == "channels_leading" else channels_trailing(log_r)


def normalize_scale(weights: tuple, biases: tuple, layout: str = "channels_last") -> tuple[tuple, tuple]:
    """Divide W^(l) by r and b^(l) by r^l, per channel (r of `invariant_log_scale`); features channels last
    ([..., *index, c]) or, with ``layout="channels_leading"``, [c, ..., *index] (computed in that layout).

    Afterwards ||W^(L,0)||_F^2 + sum_t ||W^(L,t) b^(t)||^2 = 1 (or every term is 0): every invariant block of the
    layers (W^(L,0), [WW]^(L,0), [bW]^(L,0), S^(L), b^(L), the traces) is bounded by the coupling norms whatever
    the weight scale, and no channel blows up when its end-to-end linear map nearly vanishes while its bias paths
    do not (docs/magep.md §4, §11 pitfall 2). r is a function of group invariants, so this commutes with every
    monomial g (positive or sign), and the result is exactly invariant to the ReLU-function-preserving rescaling
    W^(l) -> a W^(l), b^(l) -> a^l b^(l). Scale-free (no eps); computed in the log domain, so float32 inputs of
    any finite scale give finite outputs and gradients (zero channels stay zero, gradient finite). Integer and
    half-precision inputs are computed and returned in float32 (in float16, exp(-log m) of the max scaling
    overflows for entries below 1.5e-5; docs/input_policy.md).
    """
    weights, biases = (tuple(checks.at_least_float32(v, jnp.float32) for v in leaves) for leaves in (weights, biases))
    scaled_w, log_mw, scaled_b, log_mb = _max_scaled_inputs(*_leading(weights, biases, layout))
    log_r = _log_scale(scaled_w, log_mw, scaled_b, log_mb)
    out_w = tuple(x * jnp.exp(m - log_r)[..., None, None] for x, m in zip(scaled_w, log_mw))
    out_b = tuple(x * jnp.exp(m - l * log_r)[..., None] for l, (x, m) in enumerate(zip(scaled_b, log_mb), 1))
    if layout == "channels_leading":
        return out_w, out_b
    return tuple(map(channels_trailing, out_w)), tuple(map(channels_trailing, out_b))
