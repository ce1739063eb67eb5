"""Initial values of the MAGEP parameters that are not shared-term coefficients (those: `SharingPlan.init`)."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from common.draws import normal_arrays
from magep.terms import pair_key


def init_couplings(key: jax.Array, pairs, channels: int, n_in: int, n_out: int, dtype=jnp.float32) -> dict:
    """Coupling matrices as in the authors' code: Phi_{s,t} ~ N(0,1)/(c n_0 n_L) [c, n_0, n_L] and
    phi_{s,t} ~ N(0,1)/(c n_L) [c, n_L], one pair per (s, t) in `pairs`.

    Returns:
      ``{"Phi": {key: array}, "phi": {key: array}}``.
    """
    draws = normal_arrays(key, [(channels, n_in, n_out), (channels, n_out)] * len(pairs),
                          [1.0 / (channels * n_in * n_out), 1.0 / (channels * n_out)] * len(pairs), dtype)
    return {"Phi": {pair_key(s, t): z for (s, t), z in zip(pairs, draws[0::2])},
            "phi": {pair_key(s, t): z for (s, t), z in zip(pairs, draws[1::2])}}


def init_channel_maps(key: jax.Array, weight_channels, bias_channels, channels: int, dtype=jnp.float32) -> dict:
    """Per-layer channel maps C_l -> c (weights) and C'_l -> c (biases), xavier-normal.

    Returns:
      ``{"W1": [C_1, c], ..., "b1": [C'_1, c], ...}``.
    """
    sizes = {**{f"W{l}": c for l, c in enumerate(weight_channels, 1)}, **{f"b{l}": c for l, c in enumerate(bias_channels, 1)}}
    draws = normal_arrays(key, [(c, channels) for c in sizes.values()],
                          [math.sqrt(2.0 / (c + channels)) for c in sizes.values()], dtype)
    return dict(zip(sizes, draws))
