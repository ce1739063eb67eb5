"""STATNN (Unterthiner et al. 2020): per-tensor statistics of the weights fed to an MLP.
Permutation-invariant, not scale-invariant."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from common import NetworkSpec, WeightSpace
from magep.mlp import MLP
from magep.validation import check_features, check_spec, resolve_channels

QUANTILES = (0.0, 0.25, 0.5, 0.75, 1.0)


def statistics(feats: WeightSpace) -> jax.Array:
    """Mean, variance and quantiles 0, .25, .5, .75, 1 of every W^(l) and b^(l), per channel.

    Args:
      feats: features (any leading batch axes).
    Returns:
      [..., 7 * (sum of weight and bias channels)] (14 L for one-channel features).
    """
    def stats(x, n_axes):
        flat = x.reshape(x.shape[: x.ndim - n_axes - 1] + (-1, x.shape[-1]))  # [..., entries, C]
        q = jnp.moveaxis(jnp.quantile(flat, jnp.asarray(QUANTILES, flat.dtype), axis=-2), 0, -2)  # [..., 5, C]
        moments = jnp.stack([flat.mean(-2), flat.var(-2)], -2)
        return jnp.concatenate([moments, q], -2).reshape(x.shape[: x.ndim - n_axes - 1] + (-1,))

    return jnp.concatenate([stats(w, 2) for w in feats.weights] + [stats(b, 1) for b in feats.biases], -1)


class StatNN(nnx.Module):
    """`statistics` -> MLP(hidden) -> [..., out_features].

    Args:
      spec: network spec.
      in_channels: channels (as for the layers).
      out_features: output size.
      hidden: MLP hidden sizes (Unterthiner et al.'s are unverified; library default (500, 500)).
    """

    def __init__(self, spec: NetworkSpec, in_channels, out_features: int, *, hidden: tuple[int, ...] = (500, 500),
                 rngs: nnx.Rngs, dropout: float = 0.0):
        check_spec(spec, "StatNN")
        self.spec, self.in_channels = spec, resolve_channels(in_channels, spec, "StatNN", "in_channels")
        n_stats = 2 + len(QUANTILES)
        self.mlp = MLP(n_stats * (sum(self.in_channels.weights) + sum(self.in_channels.biases)), hidden, out_features,
                       rngs=rngs, dropout=dropout)

    def __call__(self, feats: WeightSpace) -> jax.Array:
        check_features(feats, self.spec, self.in_channels, "StatNN")
        return self.mlp(statistics(feats))
