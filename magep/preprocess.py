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


def _max_abs(weights: tuple, biases: tuple) -> jax.Array:
    """m per tensor, stacked [2L, c, ...]: m = max |x| over a tensor's index axes (W^(1..L), then b^(1..L);
    channels-leading inputs [c, ..., *index]), m = 1 where the tensor is 0 there (or below the smallest normal
    float). m carries no gradient: every use below rescales by exactly m again, so the results do not depend on it
    and stopping its gradient leaves the gradient exact. The per-channel scalars of the normalisation are kept
    stacked like this so that each step on them is one kernel for all 2L tensors, not one per tensor."""
    sg = jax.lax.stop_gradient
    m = jnp.stack([jnp.max(jnp.abs(sg(w)), axis=(-2, -1)) for w in weights]
                  + [jnp.max(jnp.abs(sg(b)), axis=-1) for b in biases])
    return jnp.where(m > jnp.finfo(m.dtype).tiny, m, 1.0)


def _per_tensor(op, weights: tuple, biases: tuple, stacked: jax.Array) -> tuple[tuple, tuple]:
    """``op(x, s)`` for W^(l) and b^(l) with their per-channel entry s of ``stacked`` [2L, c, ...] (as
    `_max_abs`)."""
    L = len(weights)
    return (tuple(op(w, stacked[l][..., None, None]) for l, w in enumerate(weights)),
            tuple(op(b, stacked[L + l][..., None]) for l, b in enumerate(biases)))


def _sums_above(log_mw: jax.Array) -> jax.Array:
    """[L, c, ...]: entry t = sum_{k > t} log m_k (t = 0..L-1) of the weights' stacked log scales ``log_mw``
    [L, c, ...] (elementwise adds: no scan kernel)."""
    above = [log_mw[-1]]
    for t in range(len(log_mw) - 2, -1, -1):
        above.append(above[-1] + log_mw[t])
    return jnp.stack(above[::-1])


def _log_scale(B: list, scaled_b: tuple, log_m: jax.Array) -> jax.Array:
    """log r [c, ...] of `invariant_log_scale` from the suffix products of the max-scaled weights ``B`` (B_t =
    W^(L,t) / prod_{k>t} m_k [c, ..., n_L, n_t]), the max-scaled biases and the stacked log scales."""
    L = len(B)
    paths = [B[0], scaled_b[-1]] + [jnp.einsum("...ab,...b->...a", B[t], scaled_b[t - 1]) for t in range(L - 1, 0, -1)]
    sq = jnp.stack([jnp.sum(jnp.square(x), axis=(-2, -1) if i == 0 else -1) for i, x in enumerate(paths)])
    above, log_mb = _sums_above(log_m[:L]), log_m[L:]
    # offsets of the terms: 2 sum_k log m_k for W^(L,0); 2 (sum_{k>t} log m_k + log m'_t) for t = L, L-1, ..., 1
    offsets = jnp.concatenate([above[:1], log_mb[-1:], above[-1:0:-1] + log_mb[-2::-1]])
    terms = safe_log(sq) + 2 * offsets  # [L + 1, c, ...]: log ||W^(L,0)||^2, log ||W^(L,t) b^(t)||^2 for t = L..1
    nonzero = jnp.any(jnp.isfinite(terms), axis=0)
    log_n2 = jax.nn.logsumexp(jnp.where(nonzero, terms, 0.0), axis=0)  # all -inf would give a NaN gradient
    return jnp.where(nonzero, log_n2, 0.0) / (2 * L)


def _leading(weights: tuple, biases: tuple, layout: str) -> tuple[tuple, tuple]:
    return leading_tensors(weights, layout), leading_tensors(biases, layout)


def _max_scaled_log_scale(weights: tuple, biases: tuple) -> tuple[tuple, tuple, list, jax.Array, jax.Array]:
    """(W^(l) / m_l, b^(l) / m'_l, suffix products B of the former, stacked log m [2L, c, ...], log r [c, ...])
    for channels-leading inputs."""
    m = _max_abs(weights, biases)
    scaled_w, scaled_b = _per_tensor(jnp.divide, weights, biases, m)
    log_m = jnp.log(m)
    B = suffix_products(scaled_w)
    return scaled_w, scaled_b, B, log_m, _log_scale(B, scaled_b, log_m)


def normalize_with_suffix(weights: tuple, biases: tuple) -> tuple[tuple, tuple, list]:
    """`normalize_scale` of channels-leading inputs ([c, ..., *index]) and the suffix products of its output
    weights, [W^(L,0) / r^L, ..., W^(L,L-1) / r] ([c, ..., n_L, n_t], as `terms.suffix_products` of the output),
    rescaled from the products the scale itself needs instead of multiplied again."""
    weights, biases = (tuple(checks.at_least_float32(v, jnp.float32) for v in leaves) for leaves in (weights, biases))
    scaled_w, scaled_b, B, log_m, log_r = _max_scaled_log_scale(weights, biases)
    L = len(weights)
    per_channel = lambda a: a.reshape((-1,) + (1,) * log_r.ndim)
    powers = per_channel(jnp.concatenate([jnp.ones(L), jnp.arange(1, L + 1)]).astype(log_r.dtype))
    out_w, out_b = _per_tensor(jnp.multiply, scaled_w, scaled_b, jnp.exp(log_m - powers * log_r))
    suffix_factors = jnp.exp(_sums_above(log_m[:L]) - per_channel(jnp.arange(L, 0, -1).astype(log_r.dtype)) * log_r)
    return out_w, out_b, [b * f[..., None, None] for b, f in zip(B, suffix_factors)]


def invariant_log_scale(weights: tuple, biases: tuple, layout: str = "channels_last") -> jax.Array:
    """log r per channel [..., c] (channels leading: [c, ...]) of the scale normalisation (`normalize_scale`):

        r = (||W^(L,0)||_F^2 + sum_{t=1..L} ||W^(L,t) b^(t)||^2)^(1/(2L))   (W^(L,L) = I; r = 1 where all are 0),

    the size of the network's end-to-end affine map: its linear part and the paths of its bias. These are invariant
    under every monomial g (§3), so r is; under the ReLU rescaling W^(l) -> a W^(l), b^(l) -> a^l b^(l) each of
    them scales by a^L, so r -> a r. Evaluated on max-scaled tensors with the scales added back as logs, so no
    product or square overflows or underflows in float32.
    """
    log_r = _max_scaled_log_scale(*_leading(weights, biases, layout))[4]
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
    out_w, out_b, _ = normalize_with_suffix(*_leading(weights, biases, layout))
    if layout == "channels_leading":
        return out_w, out_b
    return tuple(map(channels_trailing, out_w)), tuple(map(channels_trailing, out_b))
