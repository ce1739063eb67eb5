"""Sliced Wasserstein distance (the reference TSW-SL is compared with).

SW_p(mu, nu) = (mean_theta W_p^p(theta # mu, theta # nu))^(1/p) with the 1-D W_p^p of `one_dim`. This is the
quantity of POT's `ot.sliced_wasserstein_distance` given the same projections, and the call takes POT's order
`sliced_wasserstein(x, y, a, b, ...)` (everything after the weights keyword-only; docs/api.md).
"""
from __future__ import annotations

import functools
import math

import jax
from jax.sharding import Mesh
from jax.typing import ArrayLike

from tsw_sl import sharding, validation
from tsw_sl.one_dim import projected_costs
from tsw_sl.trees import random_directions

Distance = jax.Array | tuple[jax.Array, jax.Array]  # the distance, or (distance, costs) with return_costs=True


def sliced_wasserstein(x: ArrayLike, y: ArrayLike, a: ArrayLike | None = None, b: ArrayLike | None = None, *,
                       key: jax.Array | None = None, n_projections: int = 50, p: float = 2,
                       projections: ArrayLike | None = None, normalize_weights: bool = False,
                       sort_method: str = "auto", return_costs: bool = False, mesh: Mesh | None = None) -> Distance:
    """Sliced p-Wasserstein distance with directions uniform on S^{d-1}.

    Args:
      x: [..., n, d], y: [..., m, d] supports; a: [..., n], b: [..., m] weights (default uniform), each summing
        to one.
      key: PRNG key of the random directions (required unless `projections` is given, then unused);
      n_projections: number of random directions P (static).
      p: static exponent >= 1.
      projections: optional [P, d] directions (rows; unit norm for the usual definition). POT's
        `projections` argument is the transpose, [d, P].
      return_costs: static; also return the per-direction costs.
      mesh: optional `jax.sharding.Mesh` with an axis "data" whose size divides P: the directions are split over
        its devices (as the trees of `tree_wasserstein`; docs/tsw_sl.md §16.1).
    Returns:
      [...] (mean_theta W_p^p(theta # mu, theta # nu))^(1/p); one set of directions shared by the batch. With
      `return_costs`, (distances, costs [..., P]) where costs[i] = W_p^p along direction i.
    Raises:
      TypeError without key and projections, or when a PRNG key is passed as a weight; ValueError as in
      `tree_wasserstein`, and for n_projections < 1 or empty / non-finite projections.
    """
    uniform_equal = validation.uniform_equal(x, y, a, b)
    x, y, a, b = validation.measures(x, y, a, b, normalize_weights)
    p = validation.power(p)
    return_costs = validation.flag("return_costs", return_costs)
    if projections is None and key is None:
        raise TypeError("sliced_wasserstein needs the keyword argument key= (or explicit projections=)")
    if projections is not None:
        projections = validation.projections(projections, x)
    else:
        validation.count("n_projections", n_projections)
    count = n_projections if projections is None else projections.shape[0]
    mesh = sharding.check_mesh(mesh, count, "the number of projections")
    return _sliced(x, y, a, b, key, projections, n_projections=n_projections, p=p, sort_method=sort_method,
                   uniform_equal=uniform_equal, return_costs=return_costs, mesh=mesh)


@functools.partial(jax.jit, static_argnames=("n_projections", "p", "sort_method", "uniform_equal", "return_costs",
                                             "mesh"))
def _sliced(x, y, a, b, key, projections, *, n_projections, p, sort_method, uniform_equal, return_costs, mesh):
    if projections is None:
        projections = random_directions(key, (n_projections,), x.shape[-1], x.dtype)
    n_batch = x.ndim - 2

    def costs(shared, projections):
        def one(x, y, a, b):
            return projected_costs(x, y, a, b, projections, p, sort_method, uniform_equal)

        return validation.vmap_leading(one, n_batch, 0)(*shared)

    return mean_over_slices(costs, x, y, a, b, projections, p=p, return_costs=return_costs, mesh=mesh)


def mean_over_slices(costs: sharding.CostsFn, x: jax.Array, y: jax.Array, a: jax.Array, b: jax.Array,
                     slices: jax.Array, *, p: float, return_costs: bool, mesh: Mesh | None) -> Distance:
    """A sliced distance from its per-slice costs (shared by the Euclidean and spherical sliced distances).

    costs: ((x, y, a, b), slices [P_local, ...]) -> (scaled [..., P_local], scale [...]); x: [..., n, d],
    y: [..., m, d], a: [..., n], b: [..., m]; slices [P, ..., d] one set for the batch (P directions, or P
    planes [P, 2, d]), split over `mesh` and computed in blocks when large (`sharding.blocked_costs`).
    Returns the distances [...] (NaN where an input is not finite), with `return_costs` also the costs [..., P].
    """
    n_batch = x.ndim - 2
    values = math.prod(x.shape[:-2]) * math.prod(slices.shape[1:-1]) * (x.shape[-2] + y.shape[-2])
    mean, scale, scaled = sharding.mean_costs(costs, (x, y, a, b), slices, n_batch=n_batch, tree_axis=0, p=p,
                                              mesh=mesh, values_per_tree=values)
    out = sharding.finish(mean, scale, scaled, p, return_costs)
    guard = validation.vmap_leading(validation.nonfinite_to_nan, n_batch, (0, 0, 0, 0, 0, None))
    return guard(out, x, y, a, b, slices)
