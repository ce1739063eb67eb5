"""Splitting maps alpha: R^d -> simplex over the k lines of a tree (how a point's mass is shared).

* "uniform": alpha_i = 1/k (the TSW-SL paper).
* "distance" (Db-TSW): alpha_i(z) = softmax_i(-delta * dist(z, line i)), dist = ||(z - x_i) - s theta_i|| with
  s = <z - x_i, theta_i>. The expanded form ||z||^2 - 2 <z, x_i> + ||x_i||^2 - s^2 cancels near a line (float32
  gradient errors up to tens of per cent; docs/tsw_sl.md §6), so it is used only for d > `COORDINATE_MAX_DIM`
  and only when no pair is near a line or a source; otherwise the distance is the perpendicular vector's norm.
* any callable (z [N, d], trees) -> [L or 1, k, N], e.g. `LearnedSplitting` (the paper's learnable map).
"""
from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import ArrayLike

from tsw_sl import sharding
from tsw_sl.one_dim import power_scale
from tsw_sl.trees import TreeSystem

# "uniform", "distance" or a map (z [N, d], trees) -> mass fractions [L or 1, k, N] (e.g. `LearnedSplitting`).
SplittingMap = str | Callable[[jax.Array, TreeSystem], jax.Array]


def safe_sqrt(v: jax.Array) -> jax.Array:
    """sqrt(max(v, 0)) with a zero (not NaN) gradient at 0."""
    pos = v > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, v, 1.0)), 0.0)


# dimensions up to which the distances and their gradient are computed one coordinate at a time: d arrays
# [L, k, N] per step, exact to rounding near a line; XLA's CPU fusion of a reduction over a short minor axis of
# [L, k, N, d] is 15-60x slower (docs/tsw_sl.md §6). Above, one broadcast-and-reduce over d, and the gradient by
# matrix products.
COORDINATE_MAX_DIM = 16


def project(points: jax.Array, directions: jax.Array) -> jax.Array:
    """Coordinates <z, theta> of points [N, d] along directions [..., d] -> [..., N]. For d <=
    `COORDINATE_MAX_DIM` a sum over coordinates of broadcast products, which XLA fuses into the coordinates'
    consumers (the matrix product's gradient transposed an [N, L k] array: on CPU one strided copy that took 25
    ms of a 100 ms Db-TSW step), with the gradient of `_coordinate_projection_bwd` (reverse mode only there, as
    the line costs that consume the coordinates)."""
    if points.shape[-1] <= COORDINATE_MAX_DIM:
        return _coordinate_projection(*sharding.varying_alike(points, directions))
    return jnp.einsum("nd,...d->...n", points, directions)


@jax.custom_vjp
def _coordinate_projection(points: jax.Array, directions: jax.Array) -> jax.Array:
    """`project` for d <= `COORDINATE_MAX_DIM`: points [N, d], directions [..., d] -> [..., N]."""
    return sum(points[:, i] * directions[..., i, None] for i in range(points.shape[-1]))


def _coordinate_projection_fwd(points, directions):
    return _coordinate_projection(points, directions), (points, directions)


def _coordinate_projection_bwd(residuals, g):
    """Both gradients as matrix products over the R rows of the cotangent g [..., N] (one row per direction): the
    points' [N, d] = g^T theta, the directions' [R, d] = g z. Autodiff of the broadcast products reduces g times a
    broadcast copy of each coordinate instead, and XLA writes each broadcast out as an [..., N] array before its
    reduction (Db-TSW at 100 x 4 lines, n = 5,000: temporaries 298 -> 267 MB this way; docs/tsw_sl.md §16.3)."""
    points, directions = residuals
    rows = g.reshape(-1, g.shape[-1])                                   # [R, N]
    theta = directions.reshape(-1, directions.shape[-1])                # [R, d]
    contract_rows = (((0,), (0,)), ((), ()))
    highest = jax.lax.Precision.HIGHEST                                 # no bf16 passes on accelerators
    d_points = jax.lax.dot_general(rows, theta, contract_rows, precision=highest)             # [N, d]
    d_directions = jnp.matmul(rows, points, precision=highest).reshape(directions.shape)      # [..., d]
    return d_points.astype(points.dtype), d_directions.astype(directions.dtype)


_coordinate_projection.defvjp(_coordinate_projection_fwd, _coordinate_projection_bwd)


def _perpendicular(zc: jax.Array, sources: jax.Array, directions: jax.Array, proj: jax.Array) -> jax.Array:
    """(z - x_i) - proj_i(z) theta_i: [L, k, N, d] (reduced over d right away by the caller)."""
    return zc - sources[..., None, :] - proj[..., None] * directions[..., None, :]


# A squared distance computed as ||z||^2 - 2 <z, x_i> + ||x_i||^2 - s^2 is off by a few float epsilons times
# (||z|| + ||x_i||)^2; it is kept when every square is at least this fraction of that size (the distance then
# within ~1e-6 of the size in float32), otherwise the squares come from the perpendicular vectors.
EXPANSION_MIN_RATIO = 2.0 ** -7


def _expanded_squares(zc: jax.Array, sources: jax.Array, proj: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Squared distances ||z - x_i||^2 - proj^2 by one matrix product ([L, k, N]; O(L k N d) in a GEMM instead of
    an [L, k, N, d] reduction, 15-25x faster at d = 100), and whether all of them are far enough from zero,
    relative to the sizes of z and x_i, for the expansion's cancellation to be harmless (a scalar bool)."""
    z2 = jnp.sum(jnp.square(zc), axis=-1)                               # [N]
    x2 = jnp.sum(jnp.square(sources), axis=-1)[..., None]              # [L, k, 1]
    inner = jnp.einsum("nd,lkd->lkn", zc, sources, precision=jax.lax.Precision.HIGHEST)  # no bf16 passes (TPU)
    squares = z2 - 2.0 * inner + x2 - jnp.square(proj)
    size = jnp.square(jnp.sqrt(z2) + jnp.sqrt(x2))
    return squares, jnp.all(squares >= EXPANSION_MIN_RATIO * size)


def _perpendicular_coordinates(zc: jax.Array, sources: jax.Array, directions: jax.Array,
                               proj: jax.Array) -> list[jax.Array]:
    """The d coordinates of (z - x_i) - proj_i(z) theta_i, each [L, k, N]."""
    return [zc[:, i] - sources[..., i, None] - proj * directions[..., i, None] for i in range(zc.shape[-1])]


@jax.custom_vjp
def distance_to_lines(zc: jax.Array, sources: jax.Array, directions: jax.Array, proj: jax.Array) -> jax.Array:
    """Euclidean distance from each point to each line, ||(z - x_i) - proj_i(z) theta_i||.

    Args:
      zc: [N, d] points; sources: [L, k, d] line sources (same origin as zc); directions: [L, k, d] unit
      directions; proj: [L, k, N] coordinates <z - x_i, theta_i>.
    Returns:
      [L, k, N] distances, with a zero gradient at distance 0. For d <= `COORDINATE_MAX_DIM` a sum over the
      coordinates of [L, k, N] squares; above, the expanded squares by a matrix product (`_expanded_squares`),
      or, when a point lies near a line or a source (a `lax.cond`: under vmap both are computed), one
      broadcast-and-reduce over the perpendicular vectors that XLA fuses; the gradient
      (`_distance_bwd`) never stores the [L, k, N, d] perpendicular vectors (plain autodiff of the broadcast
      stores them: 2 L k N d floats). Reverse mode only (jax.grad / vjp); forward mode (jvp, jacfwd) is not
      defined.
    """
    if zc.shape[-1] <= COORDINATE_MAX_DIM:
        squares = sum(jnp.square(v) for v in _perpendicular_coordinates(zc, sources, directions, proj))
    else:
        squares, expansion_safe = _expanded_squares(zc, sources, proj)
        perpendicular_squares = lambda: jnp.sum(jnp.square(_perpendicular(zc, sources, directions, proj)), axis=-1)
        squares = jax.lax.cond(expansion_safe, lambda: squares, perpendicular_squares)
    return safe_sqrt(squares)


def _distance_fwd(zc, sources, directions, proj):
    dist = distance_to_lines(zc, sources, directions, proj)
    return dist, (zc, sources, directions, proj, dist)


def _distance_bwd(residuals, g):
    """d dist / d perp = perp / dist = c perp, with c = g / dist (0 at distance 0), contracted without the
    [L, k, N, d] perpendicular vectors: for d <= `COORDINATE_MAX_DIM` one coordinate at a time
    (`_coordinate_gradients`), above by matrix products of their parts (`_product_gradients`)."""
    zc, sources, directions, proj, dist = residuals
    pos = dist > 0
    c = jnp.where(pos, g / jnp.where(pos, dist, 1.0), 0.0)
    if zc.shape[-1] <= COORDINATE_MAX_DIM:
        return _coordinate_gradients(zc, sources, directions, proj, c)
    return _product_gradients(zc, sources, directions, proj, c)


def _coordinate_gradients(zc, sources, directions, proj, c):
    """The four gradients from c perp, one coordinate of the perpendicular vectors at a time ([L, k, N] arrays):
    exact to float rounding near a line."""
    weighted = [c * v for v in _perpendicular_coordinates(zc, sources, directions, proj)]
    stack = lambda parts: jnp.stack(parts, axis=-1)
    d_zc = stack([jnp.sum(v, axis=tuple(range(v.ndim - 1))) for v in weighted])
    d_sources = -stack([jnp.sum(v, axis=-1) for v in weighted])
    d_directions = -stack([jnp.sum(proj * v, axis=-1) for v in weighted])
    d_proj = -sum(v * directions[..., i, None] for i, v in enumerate(weighted))
    return d_zc, d_sources, d_directions, d_proj


def _product_gradients(zc, sources, directions, proj, c):
    """The four gradients from perp = zc - x - s theta split into its parts, each sum over points or lines a
    matrix product ([L k, N] x [N, d] and back): O(L k N d) work in GEMMs, no [.., N, d] temporaries. The parts
    are large where a point is near a line (c = g / dist large) and cancel there: float32 errors of 1e-5..2e-4
    of the largest gradient for points 1e-4..1e-2 from a line (d = 4..32), against ~1e-6 from the vectors
    themselves (tests/test_tsw_hardening.py)."""
    cs = c * proj                                                      # [L, k, N]
    d_zc = (zc * jnp.sum(c, axis=(0, 1))[:, None] - jnp.einsum("lkn,lkd->nd", c, sources)
            - jnp.einsum("lkn,lkd->nd", cs, directions))
    c_sum, cs_sum, css_sum = (jnp.sum(v, axis=-1)[..., None] for v in (c, cs, cs * proj))  # [L, k, 1]
    d_sources = -(jnp.einsum("lkn,nd->lkd", c, zc) - c_sum * sources - cs_sum * directions)
    d_directions = -(jnp.einsum("lkn,nd->lkd", cs, zc) - cs_sum * sources - css_sum * directions)
    along = (jnp.einsum("nd,lkd->lkn", zc, directions) - jnp.sum(sources * directions, axis=-1)[..., None]
             - proj * jnp.sum(directions * directions, axis=-1)[..., None])  # <perp, theta>
    return d_zc, d_sources, d_directions, -c * along


distance_to_lines.defvjp(_distance_fwd, _distance_bwd)


def line_weights(splitting: SplittingMap, z: jax.Array, zc: jax.Array, sources: jax.Array, proj: jax.Array,
                 delta: ArrayLike, trees: TreeSystem) -> jax.Array:
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
    # "distance": in units of a power of two near the largest coordinate, so that squares neither overflow
    # nor underflow (exactly 1 for coordinates within 2^-16..2^16 in float32)
    unit = power_scale(jnp.stack([jnp.max(jnp.abs(zc)), jnp.max(jnp.abs(sources))]), 2)
    dist = unit * distance_to_lines(zc / unit, sources / unit, trees.directions, proj / unit)
    return jax.nn.softmax(-delta * dist, axis=-2)


class LearnedSplitting(nnx.Module):
    """Learnable splitting alpha(z) = softmax(MLP(z)) over k lines (the paper's trainable option; the authors'
    code adds dropout 0.2 between the 64-unit layers, omitted here so the map stays deterministic).

    Call: (z [N, d], trees) -> [1, k, N]; pass the module as `splitting=` to `tree_wasserstein`.
    """

    def __init__(self, dim: int, n_lines: int, hidden: tuple[int, ...] = (64, 64), *, rngs: nnx.Rngs):
        sizes = (dim,) + tuple(hidden) + (n_lines,)
        self.layers = nnx.List([nnx.Linear(i, o, rngs=rngs) for i, o in zip(sizes[:-1], sizes[1:])])

    def __call__(self, z: jax.Array, trees: TreeSystem | None = None) -> jax.Array:
        h = z
        for layer in self.layers[:-1]:
            h = jax.nn.relu(layer(h))
        return jax.nn.softmax(self.layers[-1](h), axis=-1).T[None]
