"""Trees / directions split over the devices of a mesh (docs/tsw_sl.md §16.1).

Every distance averages independent per-tree (per-direction) costs. With `mesh=` (a `jax.sharding.Mesh` with
the axis "data", `common.distributed.make_mesh`), the per-tree parameters are split along their tree axis over
that axis' devices, the point clouds and weights are replicated, each device projects and sorts for its own trees
only, and one all-reduce sums the per-tree costs (one more, a max of one scalar, agrees on the power-of-two
scale of `one_dim.power_scale`). The costs returned with `return_costs` stay split over the devices; gradients
with respect to the points are summed over the devices by the transpose of the replication. No device ever
holds another device's projections, and the point clouds are never gathered.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec

from common.distributed import DATA_AXIS
from tsw_sl.one_dim import root_p, unscale

# (shared inputs, per-tree inputs) -> (scaled costs [..., L_local], scale [...]); cost = scale^p * scaled.
CostsFn = Callable[[Any, Any], tuple[jax.Array, jax.Array]]


def check_mesh(mesh: Mesh | None, count: int, name: str) -> Mesh | None:
    """Checks a mesh option: None, or a Mesh with a "data" axis whose size divides `count` (the number of trees or
    directions, named `name`). Returns None for a mesh of one device (nothing to split)."""
    if mesh is None:
        return None
    if not isinstance(mesh, Mesh):
        raise ValueError(f"mesh must be a jax.sharding.Mesh (common.distributed.make_mesh) or None; got "
                         f"{type(mesh).__name__}")
    if DATA_AXIS not in mesh.shape:
        raise ValueError(f"mesh must have an axis {DATA_AXIS!r} to split the trees over; got axes {mesh.axis_names}")
    size = mesh.shape[DATA_AXIS]
    if count % size:
        raise ValueError(f"{name} ({count}) must be a multiple of the {size} devices of the mesh axis {DATA_AXIS!r}")
    return mesh if size > 1 else None


def _split(axis: int) -> PartitionSpec:
    return PartitionSpec(*([None] * axis), DATA_AXIS)


def mean_costs(costs_fn: CostsFn, shared: Any, per_tree: Any, *, n_batch: int, tree_axis: int, p: float,
               mesh: Mesh | None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Mean per-tree cost of `costs_fn`, computed on one device or split over `mesh` (checked by `check_mesh`).

    Args:
      costs_fn: (shared, per_tree) -> (scaled [..., L], scale [...]) for the trees it is given.
      shared: pytree replicated on every device (points, weights, options that may be traced).
      per_tree: pytree whose leaves have the tree axis at position `tree_axis` (split over the devices).
      n_batch: number of leading batch axes of the outputs; p: static exponent.
    Returns:
      (mean scaled cost [...], common scale [...], scaled costs [..., L]) with cost = scale^p * scaled; the
      scaled costs are split over the mesh's devices when a mesh is given.
    """
    if mesh is None:
        scaled, scale = costs_fn(shared, per_tree)
        return jnp.mean(scaled, axis=-1), scale, scaled
    n_trees = jax.tree.leaves(per_tree)[0].shape[tree_axis]

    def local(shared, per_tree):
        scaled, scale = costs_fn(shared, per_tree)
        top = jax.lax.pmax(scale, DATA_AXIS)  # powers of two: the ratio below is exact
        if p != 1:
            scaled = scaled * ((scale / top) ** p)[..., None]
        return jax.lax.psum(jnp.sum(scaled, axis=-1), DATA_AXIS) / n_trees, top, scaled

    in_specs = (PartitionSpec(), jax.tree.map(lambda _: _split(tree_axis), per_tree))
    out_specs = (PartitionSpec(), PartitionSpec(), _split(n_batch))
    return jax.shard_map(local, mesh=mesh, in_specs=in_specs, out_specs=out_specs)(shared, per_tree)


def finish(mean: jax.Array, scale: jax.Array, scaled: jax.Array, p: float, return_costs: bool) -> Any:
    """The distance scale * mean^(1/p) [...] (and the costs scale^p * scaled [..., L] when `return_costs`)."""
    distance = scale * root_p(mean, p)
    return (distance, unscale(scaled, scale[..., None], p)) if return_costs else distance
