"""Group-commuting input maps of the polynomial layers: per-layer channel maps and scale normalisation."""
from __future__ import annotations

import jax.numpy as jnp

from magep.terms import prefix_products


def map_channels(maps: dict, weights: tuple, biases: tuple) -> tuple[tuple, tuple]:
    """Apply ``maps["W{l}"]`` [C_l, c] to W^(l) features and ``maps["b{l}"]`` [C'_l, c] to b^(l) (commutes
    with the group, which never acts on channels). Returns (weights, biases) with c channels."""
    return (tuple(jnp.einsum("...d,de->...e", w, maps[f"W{l}"]) for l, w in enumerate(weights, 1)),
            tuple(jnp.einsum("...d,de->...e", b, maps[f"b{l}"]) for l, b in enumerate(biases, 1)))


def normalize_scale(weights: tuple, biases: tuple, eps: float = 1e-3) -> tuple[tuple, tuple]:
    """Divide W^(l) by r and b^(l) by r^l, per channel, with r = (eps + ||W^(L,0)||_F)^(1/L).

    r is a function of the group-invariant end-to-end product W^(L,0), so this commutes with every monomial
    g (positive or sign). The result is invariant to the ReLU-function-preserving rescaling
    W^(l) -> a W^(l), b^(l) -> a^l b^(l) (a > 0) up to eps, which keeps the degree-(L+1) products at O(1)
    for deep or large-norm networks.
    """
    L = len(weights)
    norm = jnp.sqrt(jnp.sum(prefix_products(weights)[-1] ** 2, axis=(-3, -2)))  # [..., c]
    r = (eps + norm) ** (1.0 / L)
    return (tuple(w / r[..., None, None, :] for w in weights),
            tuple(b / r[..., None, :] ** l for l, b in enumerate(biases, 1)))
