"""Trees / directions split over the devices of a mesh (docs/tsw_sl.md §16.1).

Every distance averages independent per-tree (per-direction) costs. With `mesh=` (a `jax.sharding.Mesh` with
the axis "data", `common.distributed.make_mesh`), the per-tree parameters are split along their tree axis over
that axis' devices, the point clouds and weights are replicated, each device projects and sorts for its own trees
only, and one all-reduce sums the per-tree costs (one more, a max of one scalar, agrees on the power-of-two
scale of `one_dim.power_scale`). The costs returned with `return_costs` stay split over the devices; gradients
with respect to the points are summed over the devices by the transpose of the replication. No device ever
holds another device's projections, and the point clouds are never gathered.

Large problems (L k (n + m) projected values above `CHUNK_VALUES`) are processed a block of trees at a time, on one
device or within each device's share: `jax.lax.map` over blocks, each block rematerialised in the backward pass
(`jax.checkpoint`), so the projections, sort permutations and their gradients exist for one block at a time and the
memory no longer grows with L (docs/tsw_sl.md §16.2). Smaller problems run in one block, unchanged.
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

# Largest number of projected values (trees x lines x points x batch) computed at once; about 17 bytes each in a
# forward and backward pass on CPU, so one block needs at most about 0.6 GB.
CHUNK_VALUES = 2**25


def block_size(n_trees: int, values_per_tree: int, limit: int | None = None) -> int:
    """The number of trees computed together: the largest divisor of `n_trees` whose values stay within `limit`
    (default `CHUNK_VALUES`; at least 1 tree), so that every block has the same shape."""
    fitting = max(1, (CHUNK_VALUES if limit is None else limit) // max(values_per_tree, 1))
    return max(c for c in range(1, min(n_trees, fitting) + 1) if n_trees % c == 0)


def _common_scale(scaled: jax.Array, scale: jax.Array, top: jax.Array, p: float) -> jax.Array:
    """Scaled costs [..., L] of scale [...] re-expressed at the power-of-two scale `top` >= scale (exact)."""
    return scaled if p == 1 else scaled * ((scale / top) ** p)[..., None]


def blocked_costs(costs_fn: CostsFn, shared: Any, per_tree: Any, *, tree_axis: int, p: float,
                  values_per_tree: int | None) -> tuple[jax.Array, jax.Array]:
    """`costs_fn(shared, per_tree)` computed a block of `block_size` trees at a time (one block: a plain call).

    per_tree leaves have their L trees at `tree_axis`; `values_per_tree` is the number of projected values one
    tree's costs compute (None: one block). Returns (scaled [..., L], scale [...]) as `costs_fn` would.
    """
    n_trees = jax.tree.leaves(per_tree)[0].shape[tree_axis]
    size = n_trees if values_per_tree is None else block_size(n_trees, values_per_tree)
    if size == n_trees:
        return costs_fn(shared, per_tree)
    blocks = jax.tree.map(lambda v: jnp.moveaxis(v, tree_axis, 0).reshape((n_trees // size, size) + v.shape[:tree_axis]
                                                                          + v.shape[tree_axis + 1:]), per_tree)

    @jax.checkpoint
    def one_block(block):
        return costs_fn(shared, jax.tree.map(lambda v: jnp.moveaxis(v, 0, tree_axis), block))

    scaled, scale = jax.lax.map(one_block, blocks)  # [B, ..., size], [B, ...]
    top = jnp.max(scale, axis=0)
    scaled = jax.vmap(_common_scale, in_axes=(0, 0, None, None))(scaled, scale, top, p)
    return jnp.moveaxis(scaled, 0, -2).reshape(scaled.shape[1:-1] + (n_trees,)), top


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
               mesh: Mesh | None, values_per_tree: int | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Mean per-tree cost of `costs_fn`, computed on one device or split over `mesh` (checked by `check_mesh`).

    Args:
      costs_fn: (shared, per_tree) -> (scaled [..., L], scale [...]) for the trees it is given.
      shared: pytree replicated on every device (points, weights, options that may be traced).
      per_tree: pytree whose leaves have the tree axis at position `tree_axis` (split over the devices).
      n_batch: number of leading batch axes of the outputs; p: static exponent.
      values_per_tree: projected values one tree's costs compute (batch x lines x points); above `CHUNK_VALUES`
        in all, the trees are computed in blocks (`blocked_costs`). None: all at once.
    Returns:
      (mean scaled cost [...], common scale [...], scaled costs [..., L]) with cost = scale^p * scaled; the
      scaled costs are split over the mesh's devices when a mesh is given.
    """
    def blocked(shared, per_tree):
        return blocked_costs(costs_fn, shared, per_tree, tree_axis=tree_axis, p=p, values_per_tree=values_per_tree)

    if mesh is None:
        scaled, scale = blocked(shared, per_tree)
        return jnp.mean(scaled, axis=-1), scale, scaled
    n_trees = jax.tree.leaves(per_tree)[0].shape[tree_axis]

    def local(shared, per_tree):
        scaled, scale = blocked(shared, per_tree)
        top = jax.lax.pmax(scale, DATA_AXIS)  # powers of two: the ratio below is exact
        scaled = _common_scale(scaled, scale, top, p)
        return jax.lax.psum(jnp.sum(scaled, axis=-1), DATA_AXIS) / n_trees, top, scaled

    in_specs = (PartitionSpec(), jax.tree.map(lambda _: _split(tree_axis), per_tree))
    out_specs = (PartitionSpec(), PartitionSpec(), _split(n_batch))
    return jax.shard_map(local, mesh=mesh, in_specs=in_specs, out_specs=out_specs)(shared, per_tree)


def finish(mean: jax.Array, scale: jax.Array, scaled: jax.Array, p: float, return_costs: bool) -> Any:
    """The distance scale * mean^(1/p) [...] (and the costs scale^p * scaled [..., L] when `return_costs`)."""
    distance = scale * root_p(mean, p)
    return (distance, unscale(scaled, scale[..., None], p)) if return_costs else distance


def varying_alike(*arrays: jax.Array) -> list[jax.Array]:
    """The arrays, each marked as varying over every manual mesh axis any of them varies over (inside
    `jax.shard_map`; a no-op outside): a custom VJP must return each input's gradient with the input's own
    variance, and its gradients vary wherever any input does (`distance.line_costs`, `splitting.project`);
    autodiff of the cast then sums the gradient of an input that did not vary over those axes."""
    varying = [jax.typeof(a).manual_axis_type.varying for a in arrays]
    axes = frozenset().union(*varying)
    return [jax.lax.pcast(a, tuple(sorted(axes - v)), to="varying") if axes - v else a
            for a, v in zip(arrays, varying)]
