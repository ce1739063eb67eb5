"""Splitting maps alpha: R^d -> simplex over the k lines of a tree (how a point's mass is shared).

* "uniform": alpha_i = 1/k (the TSW-SL paper).
* "distance" (Db-TSW): alpha_i(z) = softmax_i(-delta * dist(z, line i)), with
  dist^2 = ||z - x_i||^2 - <z - x_i, theta_i>^2 evaluated from inner products, never from [L, k, N, d] arrays.
* any callable (z [N, d], trees) -> [L or 1, k, N], e.g. `LearnedSplitting` (the paper's learnable map).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


def safe_sqrt(v):
    """sqrt(max(v, 0)) with a zero (not NaN) gradient at 0."""
    pos = v > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, v, 1.0)), 0.0)


def distance_to_lines(zc, sources, proj, kind):
    """Euclidean distance from each point to each line.

    Args:
      zc: [N, d] points; sources: [L, k, d] line sources (same origin as zc);
      proj: [L, k, N] coordinates <z - x_i, theta_i>; kind: tree kind (concurrent trees share one source).
    Returns:
      [L, k, N] distances.
    """
    if kind == "concurrent":
        sources = sources[..., :1, :]
    cross = jnp.einsum("nd,lkd->lkn", zc, sources)
    sq = jnp.sum(zc * zc, -1) - 2.0 * cross + jnp.sum(sources * sources, -1)[..., None]
    return safe_sqrt(sq - proj * proj)


def line_weights(splitting, z, zc, sources, proj, delta, trees):
    """Mass fraction of every point on every line.

    Args:
      splitting: "uniform", "distance" or a callable (z [N, d], trees) -> [L or 1, k, N].
      z: [N, d] points; zc, sources: the same points and the tree sources [L, k, d] shifted by a common
        origin; proj: [L, k, N] coordinates; delta: softmax inverse temperature;
      trees: the TreeSystem (for callables).
    Returns:
      array broadcastable to [L, k, N], summing to one over the line axis.
    """
    if not isinstance(splitting, str):
        return splitting(z, trees)
    if splitting == "uniform":
        return jnp.full((1, 1, 1), 1.0 / proj.shape[-2], proj.dtype)
    dist = distance_to_lines(zc, sources, proj, trees.kind)  # "distance"
    return jax.nn.softmax(-delta * dist, axis=-2)


class LearnedSplitting(nnx.Module):
    """Learnable splitting alpha(z) = softmax(MLP(z)) over k lines (the paper's trainable option; the authors'
    code adds dropout 0.2 between the 64-unit layers, omitted here so the map stays deterministic).

    Call: (z [N, d], trees) -> [1, k, N]; pass the module as `splitting=` to `tree_wasserstein`.
    """

    def __init__(self, dim: int, n_lines: int, hidden=(64, 64), *, rngs: nnx.Rngs):
        sizes = (dim,) + tuple(hidden) + (n_lines,)
        self.layers = nnx.List([nnx.Linear(i, o, rngs=rngs) for i, o in zip(sizes[:-1], sizes[1:])])

    def __call__(self, z, trees=None):
        h = z
        for layer in self.layers[:-1]:
            h = jax.nn.relu(layer(h))
        return jax.nn.softmax(self.layers[-1](h), axis=-1).T[None]
