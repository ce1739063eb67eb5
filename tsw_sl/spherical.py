"""Spherical tree-sliced Wasserstein distance (STSW) between measures on the unit sphere S^{D-1} of R^D
(docs/tsw_sl.md §11).

A spherical tree is a root r on the sphere and k unit tangent directions y_1..y_k at r (y_l orthogonal to r).
Its l-th edge is the half great circle t -> cos(t) r + sin(t) y_l, t in [0, pi]; the k edges are glued at the
root only (their far ends stay apart), which makes a tree of k rays of length pi. A point x sits at the same
coordinate on every edge, its geodesic distance to the root theta(x) = arccos<r, x>, and its mass is shared
over the edges by the distance-based splitting alpha_l(x) = softmax_l(-delta * sin(theta(x)) * phi_l(x)), phi_l(x)
the angle between y_l and the tangent part x - <r, x> r of x. The tree Wasserstein cost of edge l is
integral_0^pi |M_l(t)|^p dt, M_l(t) the signed mass (mu - nu) beyond t on that edge, so one sort of the n + m
coordinates per tree serves all k edges. Everything depends on x only through inner products with r and the
y_l: the distance is invariant under orthogonal maps applied to the points and the trees together.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.typing import ArrayLike

from tsw_sl import sharding, sorting, validation
from tsw_sl.distance import Distance, sorted_line_costs
from tsw_sl.splitting import safe_sqrt
from tsw_sl.trees import SphericalTrees, normalize, sample_spherical_trees


def tree_coordinates(z: jax.Array, trees: SphericalTrees, delta: ArrayLike) -> tuple[jax.Array, jax.Array]:
    """Coordinates and splitting weights of unit points on unbatched trees.

    Args:
      z: [N, D] unit points; trees: roots [L, D], directions [L, k, D]; delta: inverse temperature.
    Returns:
      (theta [L, N] geodesic distances to the roots, alpha [L, k, N] mass fractions summing to one over k).
      Angles are atan2's of a sine and a cosine (accurate near 0 and pi, unlike arccos), the sine from the
      tangent vector itself; gradients stay finite at the roots, their antipodes and on the edges.
    """
    cos = jnp.einsum("nd,ld->ln", z, trees.roots)
    tangent = z - cos[..., None] * trees.roots[:, None, :]  # [L, N, D], reduced right away
    sin = safe_sqrt(jnp.sum(jnp.square(tangent), axis=-1))
    theta = jnp.arctan2(sin, cos)
    along = jnp.einsum("nd,lkd->lkn", z, trees.directions)  # <y_l, z> = <y_l, tangent> as <y_l, r> = 0
    off = sin[:, None, :]
    pos = off > 0  # a point at the root or its antipode has no tangent direction: every edge scores 0
    safe_off, safe_along = jnp.where(pos, off, 1.0), jnp.where(pos, along, 1.0)
    phi = jnp.arctan2(safe_sqrt(jnp.square(safe_off) - jnp.square(safe_along)), safe_along)
    score = jnp.where(pos, safe_off * phi, 0.0)  # sin(theta) * phi_l: sin(theta) = |tangent| for unit z
    return theta, jax.nn.softmax(-delta * score, axis=-2)


def spherical_tree_costs(x: jax.Array, y: jax.Array, a: jax.Array, b: jax.Array, trees: SphericalTrees,
                         delta: ArrayLike, p: float, sort_method: str = "auto") -> tuple[jax.Array, jax.Array]:
    """Per-tree cost sum_l integral_0^pi |M_l(t)|^p dt for one validated pair, as scaled costs and a
    power-of-two scale (cost = scale^p * scaled; `one_dim.power_scale`).

    x: [n, D], y: [m, D] points (normalised here), a: [n], b: [m], trees: roots [L, D], directions [L, k, D]
    -> scaled [L], scale []. One sort of the n + m coordinates per tree.
    """
    z = normalize(jnp.concatenate([x, y], axis=0))
    w = jnp.concatenate([a, -b], axis=0)
    theta, alpha = tree_coordinates(z, trees, delta)
    perm = sorting.argsort(theta, sort_method)
    s = sorting.take_last(theta, perm)[:, None, :]
    mass = sorting.take_last(alpha * w, jnp.broadcast_to(perm[:, None, :], alpha.shape))
    scaled, scale = sorted_line_costs(s, mass, p)  # rays from the root: every coordinate is >= 0
    return jnp.sum(scaled, axis=-1), scale


def spherical_tsw(x: ArrayLike, y: ArrayLike, a: ArrayLike | None = None, b: ArrayLike | None = None, *,
                  key: jax.Array | None = None, trees: SphericalTrees | None = None, n_trees: int = 100,
                  n_lines: int = 4, delta: ArrayLike = 1.0, p: float = 1, normalize_weights: bool = False,
                  sort_method: str = "auto", return_costs: bool = False, mesh: Mesh | None = None) -> Distance:
    """Spherical tree-sliced Wasserstein distance ((1/L) sum_trees cost)^(1/p) between measures on the sphere.

    Args:
      x: [..., n, D], y: [..., m, D] unit vectors (norms within `validation.sphere_tolerance` of 1; D >= 2);
        a: [..., n], b: [..., m] weights (default uniform), each summing to one (or any positive total with
        `normalize_weights=True`).
      key: PRNG key of L = n_trees trees of k = n_lines edges (`sample_spherical_trees`); required unless
        `trees` are given, then unused.
      trees: optional SphericalTrees, roots [L, D] / directions [L, k, D] (or with x's batch axes).
      delta: inverse temperature of the splitting (scalar, may be traced; 0 splits every mass evenly).
      p: static exponent >= 1 (p > 1: the convention of docs/tsw_sl.md §8).
      sort_method, return_costs, mesh: as in `tree_wasserstein` (with a mesh the trees are split over its
        devices; L must be a multiple of its size).
    Returns:
      [...] distances; with `return_costs`, (distances, costs [..., L]), distance = mean_l(costs)^(1/p). One
      set of trees is shared by the batch. jit/vmap/grad-safe; the points are normalised inside, so the
      gradient is tangent to the sphere.
    Raises:
      TypeError without key and trees, or when a PRNG key is passed as a weight; ValueError for points off the
      sphere (concrete inputs), bad trees, and as in `tree_wasserstein`.
    """
    x, y, a, b = validation.measures(x, y, a, b, normalize_weights)
    validation.on_sphere("x", x)
    validation.on_sphere("y", y)
    p = validation.power(p)
    validation.scalar("delta", delta)
    return_costs = validation.flag("return_costs", return_costs)
    if trees is None:
        if key is None:
            raise TypeError("spherical_tsw needs the keyword argument key= (or explicit trees=)")
        trees = sample_spherical_trees(key, n_trees, n_lines, x.shape[-1], x.dtype)
    validation.spherical_trees(trees, x)
    mesh = sharding.check_mesh(mesh, trees.n_trees, "the number of trees")
    return _spherical(x, y, a, b, trees, jnp.asarray(delta), p=p, sort_method=sort_method,
                      return_costs=return_costs, mesh=mesh)


@functools.partial(jax.jit, static_argnames=("p", "sort_method", "return_costs", "mesh"))
def _spherical(x, y, a, b, trees, delta, *, p, sort_method, return_costs, mesh):
    n_batch = x.ndim - 2

    def costs(shared, trees):
        x, y, a, b, delta = shared
        one = functools.partial(spherical_tree_costs, delta=delta, p=p, sort_method=sort_method)
        return validation.vmap_leading(one, n_batch, in_axes)(x, y, a, b, trees)

    in_axes = (0, 0, 0, 0, None if trees.roots.ndim == 2 else 0)
    values = math.prod(x.shape[:-2]) * trees.directions.shape[-2] * (x.shape[-2] + y.shape[-2])
    mean, scale, scaled = sharding.mean_costs(costs, (x, y, a, b, delta), trees, n_batch=n_batch,
                                              tree_axis=trees.roots.ndim - 2, p=p, mesh=mesh, values_per_tree=values)
    out = sharding.finish(mean, scale, scaled, p, return_costs)
    guard = validation.vmap_leading(validation.nonfinite_to_nan, n_batch, (0, 0, 0, 0, 0, in_axes[-1], None))
    return guard(out, x, y, a, b, trees, delta)
