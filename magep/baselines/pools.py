"""Invariant pools of the baselines: NP and HNP mean pools (Zhou et al. Eq. 17) and the Monomial-NFN
pool (scale normalisation I_Delta, then HNP pooling I_P)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from common import NetworkSpec, WeightSpace
from magep.validation import Channels, check_features, check_spec, resolve_channels


def np_pool(feats: WeightSpace) -> jax.Array:
    """P(U) = (W^(1)_**, ..., W^(L)_**, b^(1)_*, ..., b^(L)_*) per channel -> [..., sum of channels]."""
    return jnp.concatenate([w.mean(axis=(-3, -2)) for w in feats.weights] + [b.mean(axis=-2) for b in feats.biases], -1)


def hnp_pool(feats: WeightSpace, redundant_means: bool = True) -> jax.Array:
    """HNP pool: (P(U), W^(1)_{*,:}, W^(L)_{:,*}, b^(L)) per channel, flattened -> [..., F].

    Args:
      feats: features (any leading batch axes).
      redundant_means: keep W^(1)_**, W^(L)_** and b^(L)_* (Eq. 17, R^{2L + n_0 + 2 n_L} per channel); they are
        means of the kept vectors, and the Monomial-NFN pool (I_P) drops them (R^{2L - 3 + n_0 + 2 n_L}).
    """
    L = feats.num_layers
    means = [w.mean(axis=(-3, -2)) for w in feats.weights] + [b.mean(axis=-2) for b in feats.biases]
    if not redundant_means:
        means = means[1 : L - 1] + means[L : 2 * L - 1]
    flat = lambda x: x.reshape(x.shape[:-2] + (-1,))
    vectors = [flat(feats.weights[0].mean(axis=-3)), flat(feats.weights[-1].mean(axis=-2)), flat(feats.biases[-1])]
    return jnp.concatenate(means + vectors, -1)


def hnp_pool_size(spec: NetworkSpec, channels: Channels, redundant_means: bool = True) -> int:
    """Length of `hnp_pool`'s output."""
    cw, cb = channels.weights, channels.biases
    means = sum(cw) + sum(cb) if redundant_means else sum(cw[1:-1]) + sum(cb[:-1])
    return means + spec.widths[0] * cw[0] + spec.widths[-1] * (cw[-1] + cb[-1])


class NPPool(nnx.Module):
    """`np_pool` as a layer; output [..., sum of weight and bias channels]."""

    def __init__(self, spec: NetworkSpec, in_channels):
        check_spec(spec, "NPPool", 2)
        self.spec, self.in_channels = spec, resolve_channels(in_channels, spec, "NPPool", "in_channels")
        self.out_features = sum(self.in_channels.weights) + sum(self.in_channels.biases)

    def __call__(self, feats: WeightSpace) -> jax.Array:
        check_features(feats, self.spec, self.in_channels, "NPPool")
        return np_pool(feats)


class HNPPool(nnx.Module):
    """`hnp_pool` as a layer; output [..., `hnp_pool_size`]. ``redundant_means=False`` is the authors' code
    (their HNPPool keeps W^(1)_{*,:}, W^(L)_{:,*} and b^(L) but not their means)."""

    def __init__(self, spec: NetworkSpec, in_channels, *, redundant_means: bool = True):
        check_spec(spec, "HNPPool", 2)
        self.spec, self.in_channels = spec, resolve_channels(in_channels, spec, "HNPPool", "in_channels")
        self.redundant_means = redundant_means
        self.out_features = hnp_pool_size(spec, self.in_channels, redundant_means)

    def __call__(self, feats: WeightSpace) -> jax.Array:
        check_features(feats, self.spec, self.in_channels, "HNPPool")
        return hnp_pool(feats, self.redundant_means)


def unit_channels(x: jax.Array) -> jax.Array:
    """x_{..,c} / ||x_{..,:}||_2 over the channel axis (0 where x_{..,:} = 0), scale-free: computed from x / max_c |x|,
    so no square overflows or underflows, with a finite gradient everywhere (double where)."""
    m = jax.lax.stop_gradient(jnp.max(jnp.abs(x), axis=-1, keepdims=True))
    nonzero = m > jnp.finfo(x.dtype).tiny
    y = x / jnp.where(nonzero, m, 1.0)
    sq = jnp.sum(y * y, axis=-1, keepdims=True)
    return jnp.where(nonzero, y * jax.lax.rsqrt(jnp.where(nonzero, sq, 1.0)), 0.0)


def scale_normalize(params: dict, feats: WeightSpace, scaling: str) -> WeightSpace:
    """I_Delta: x_hat_{..,c} = gamma_c x_{..,c} / ||x_{..,:}||_2 + beta_c on every tensor (taking |x| first for
    "sign", except on b^(L), which the group fixes), with x / ||x|| = 0 where x_{..,:} = 0 (`unit_channels`).

    Invariant under every monomial g: an entry's channel vector is only multiplied by its d_j / d_k (or d_j),
    which the division removes exactly; scale-free, so the output is bounded for weights of any scale. The
    authors' pool normalises with F.normalize (clamped at 1e-12) and passes b^(L) through raw; b^(L) is
    normalised here too so that the predictor stays bounded for large-scale networks (docs/magep.md §8).

    Args:
      params: ``{"gamma": {"W{l}"/"b{l}": [C]}, "beta": {...}}``.
    """
    def norm(x, name, last=False):
        x = jnp.abs(x) if scaling == "sign" and not last else x
        return params["gamma"][name] * unit_channels(x) + params["beta"][name]

    L = feats.num_layers
    return WeightSpace(tuple(norm(w, f"W{l}") for l, w in enumerate(feats.weights, 1)),
                       tuple(norm(b, f"b{l}", l == L) for l, b in enumerate(feats.biases, 1)), is_features=True)


class MonomialPool(nnx.Module):
    """Monomial-NFN invariant pool I_P o I_Delta; output [..., `hnp_pool_size`(redundant_means=False)].

    Args:
      spec: network spec.
      in_channels: channels (as for the layers).
      scaling: "positive" or "sign".
    """

    def __init__(self, spec: NetworkSpec, in_channels, *, scaling: str = "positive", param_dtype=jnp.float32):
        check_spec(spec, "MonomialPool", 2)
        if scaling not in ("positive", "sign"):
            raise ValueError(f"MonomialPool: scaling must be 'positive' or 'sign', got {scaling!r}")
        self.spec, self.scaling = spec, scaling
        self.in_channels = resolve_channels(in_channels, spec, "MonomialPool", "in_channels")
        sizes = {**{f"W{l}": c for l, c in enumerate(self.in_channels.weights, 1)},
                 **{f"b{l}": c for l, c in enumerate(self.in_channels.biases, 1)}}
        self.gamma = nnx.Dict({k: nnx.Param(jnp.asarray(np.ones((c,)), param_dtype)) for k, c in sizes.items()})
        self.beta = nnx.Dict({k: nnx.Param(jnp.asarray(np.zeros((c,)), param_dtype)) for k, c in sizes.items()})
        self.out_features = hnp_pool_size(spec, self.in_channels, redundant_means=False)

    def __call__(self, feats: WeightSpace) -> jax.Array:
        check_features(feats, self.spec, self.in_channels, "MonomialPool")
        params = {"gamma": {k: v[...] for k, v in self.gamma.items()}, "beta": {k: v[...] for k, v in self.beta.items()}}
        return hnp_pool(scale_normalize(params, feats, self.scaling), redundant_means=False)
