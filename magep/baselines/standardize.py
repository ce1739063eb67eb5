"""Input standardisation of Zhou et al.'s np_inv (``normalize: true``; docs/magep.md §8): every feature minus
its training-set mean, over its training-set standard deviation (one below ``min_std`` counts as 1).
Dataset-level constants, no parameters."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from common import WeightSpace

PER = ("entry", "tensor")


def standardization_stats(feats: WeightSpace, per: str = "entry",
                          min_std: float = 1e-5) -> tuple[WeightSpace, WeightSpace]:
    """Means and standard deviations of training features.

    Args:
      feats: features of the training networks, one leading network axis: weights [N, n_l, n_{l-1}, C_l],
        biases [N, n_l, C'_l].
      per: "entry" (the authors': one mean and std per weight/bias entry and channel; not permutation-invariant)
        or "tensor" (one per tensor and channel, pooled over its neurons: commutes with every permutation).
      min_std: standard deviations below this are replaced by 1.
    Returns:
      (mean, std), features of one network ([n_l, n_{l-1}, C_l], [n_l, C'_l]) or, for "tensor", [1, 1, C_l]
      and [1, C'_l].
    """
    if per not in PER:
        raise ValueError(f"standardization_stats: per must be one of {PER}, got {per!r}")
    if feats.weights[0].ndim != 4:
        raise ValueError(f"standardization_stats: feats need one leading network axis, weights[0] has shape "
                         f"{tuple(feats.weights[0].shape)} (want [N, n_1, n_0, C_1])")

    def axes(x):
        return (0,) if per == "entry" else tuple(range(x.ndim - 1))

    mean = jax.tree.map(lambda x: x.mean(axis=axes(x), keepdims=True)[0], feats)
    std = jax.tree.map(lambda x: x.std(axis=axes(x), keepdims=True)[0], feats)
    return mean, jax.tree.map(lambda s: jnp.where(s < min_std, 1.0, s).astype(s.dtype), std)


def standardize(feats: WeightSpace, stats: tuple[WeightSpace, WeightSpace]) -> WeightSpace:
    """(feats - mean) / std with `standardization_stats`' output; feats with any leading batch axes."""
    mean, std = stats
    return jax.tree.map(lambda x, m, s: (x - m) / s, feats, mean, std)
