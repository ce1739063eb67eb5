"""Closed-form tree Wasserstein distance on systems of lines: TSW-SL and Db-TSW.

For one tree, stack Z = [x; y] (N = n + m points) with signed weights w = [a; -b]. Line i receives mass
alpha_i(z_j) w_j at coordinate s_ij = <z_j - x_i, theta_i>. On a chain, line i's descendants hang from the
point at coordinate c_i = <x_{i+1} - x_i, theta_i>, and act there as one pseudo-point carrying their total
mass R_i = sum_{i' > i} sum_j alpha_{i'}(z_j) w_j. With that node, the transport cost of line i is
sum_e len_e |G_e|^p over the segments between sorted coordinates, G_e the signed mass beyond the segment
seen from the line's source (docs/tsw_sl.md §6, written per segment instead of per node). Concurrent
trees have no pseudo-points (all c_i = 0). Cost O(L k N log N) time and O(L k N) memory.

p = 1 is the paper's W_{d_T, 1}. For p > 1 the value is ((1/L) sum_trees sum_edges w_e |Delta mass|^p)^(1/p),
the authors' code convention (a Sobolev-transport-like quantity, not W_p on the tree).

Every distance takes the measures in POT / OTT-JAX order, `f(x, y, a=None, b=None, *, ...)`: everything after
the weights is keyword-only, randomness is the keyword `key`, and `return_costs=True` also returns the per-tree
costs whose mean is the distance to the power p (docs/api.md).
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.typing import ArrayLike

from tsw_sl import sharding, sorting, splitting as splitting_lib, validation
from tsw_sl.one_dim import abs_pow, power_scale, projected_costs
from tsw_sl.splitting import SplittingMap
from tsw_sl.trees import TreeSystem, sample_trees

Distance = jax.Array | tuple[jax.Array, jax.Array]  # the distance, or (distance, costs) with return_costs=True


def line_costs(coords: jax.Array, mass: jax.Array, p: float, sort_method: str = "auto"
               ) -> tuple[jax.Array, jax.Array]:
    """Transport cost on rooted lines: coords, mass [..., M] (each line's root at coordinate 0; mass may broadcast
    to coords' shape) -> scaled costs [...] and one power-of-two scale (cost = scale^p * scaled;
    `one_dim.power_scale` of the masses).

    After sorting, the segment between consecutive nodes s_j <= s_{j+1} carries the mass at or below s_j
    (CL_j) on its part left of the root and the mass above (total - CL_j) on its part right of the root; the
    segments between the root and the extreme nodes carry the total. The cost is sum length * |mass|^p.
    The gradient is written out (`_line_costs_bwd`, docs/tsw_sl.md §6): per node, two differences of |mass|^p
    and a reverse prefix sum, carried back to the input order by scatters with the permutation (`sorting.put_last`);
    autodiff of the same steps costs 3-4x the forward pass (scatter-adds for the gathers' transposes, one fusion
    per branch).
    Reverse mode only (jax.grad / vjp).
    """
    coords, mass = sharding.varying_alike(coords, jnp.broadcast_to(mass, coords.shape))
    scaled, scale = _line_costs(coords, mass, p, sort_method)
    return scaled, jax.lax.stop_gradient(scale)  # as `power_scale`'s: no gradient (nor through a pmax over devices)


def sorted_line_costs(s: jax.Array, m: jax.Array, p: float) -> tuple[jax.Array, jax.Array]:
    """`line_costs` of coordinates already sorted along the last axis: s [..., M] (or broadcastable to m's
    shape, e.g. [L, 1, M] for k lines sharing their coordinates) and the masses m [..., M] in that order."""
    return _cumulative_costs(s, sorting.cumsum(m), p)[:2]


def _cumulative_costs(s, below, p):
    """`sorted_line_costs` from the prefix sums ``below`` of the masses: (scaled costs, scale, scaled prefix sums)."""
    scale = power_scale(below, p)  # |CL_j|, |total| <= max |below|, |CL_j - total| <= 2 max |below|
    below = below / scale
    total = below[..., -1:]
    lo, hi, cl = s[..., :-1], s[..., 1:], below[..., :-1]
    left = (jnp.minimum(hi, 0.0) - jnp.minimum(lo, 0.0)) * abs_pow(cl, p)
    right = (jnp.maximum(hi, 0.0) - jnp.maximum(lo, 0.0)) * abs_pow(cl - total, p)
    ends = (jnp.maximum(s[..., 0], 0.0) - jnp.minimum(s[..., -1], 0.0)) * abs_pow(total[..., 0], p)
    return jnp.sum(left + right, axis=-1) + ends, scale, below


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _line_costs(coords, mass, p, sort_method):
    return _line_costs_fwd(coords, mass, p, sort_method)[0]


def _line_costs_fwd(coords, mass, p, sort_method):
    s, perm = sorting.sort_keys(coords, sort_method)
    scaled, scale, below = _cumulative_costs(s, sorting.cumsum(sorting.take_last(mass, perm)), p)
    return (scaled, scale), (perm, s, below, scale)


def _abs_pow_slope(v, p):
    """d |v|^p / dv (0 at v = 0)."""
    return jnp.sign(v) if p == 1 else p * jnp.sign(v) * jnp.abs(v) ** (p - 1)


def _line_costs_bwd(p, sort_method, residuals, cotangents):
    """Gradients of `line_costs` w.r.t. coords and mass (the scale carries none: `power_scale`). With B the scaled
    prefix sums (B_{-1} = 0, T = B_{M-1}) and f = |.|^p, cost = sum_{j=-1}^{M-1} (min(s_{j+1}, 0) - min(s_j, 0))
    f(B_j) + (max(s_{j+1}, 0) - max(s_j, 0)) f(B_j - T) with s_{-1} = min(s_0, 0), s_M = max(s_{M-1}, 0), so
    d/ds_j = [s_j < 0] (f(B_{j-1}) - f(B_j)) + [s_j > 0] (f(B_{j-1} - T) - f(B_j - T)); d/dB_j for j < M - 1 is
    the segment's slope terms, and T collects the rest; the masses' gradient is the reverse prefix sum of d/dB."""
    perm, s, below, scale = residuals
    g = cotangents[0][..., None]
    total = below[..., -1:]
    f = lambda v: abs_pow(v, p)
    previous = jnp.concatenate([jnp.zeros_like(total), below[..., :-1]], axis=-1)
    d_s = jnp.where(s < 0, f(previous) - f(below), jnp.where(s > 0, f(previous - total) - f(below - total), 0.0))
    lo, hi, cl = s[..., :-1], s[..., 1:], below[..., :-1]
    right_slope = (jnp.maximum(hi, 0.0) - jnp.maximum(lo, 0.0)) * _abs_pow_slope(cl - total, p)
    d_cl = (jnp.minimum(hi, 0.0) - jnp.minimum(lo, 0.0)) * _abs_pow_slope(cl, p) + right_slope
    ends = (jnp.maximum(s[..., :1], 0.0) - jnp.minimum(s[..., -1:], 0.0)) * _abs_pow_slope(total, p)
    d_total = ends - jnp.sum(right_slope, axis=-1, keepdims=True)
    d_below = jnp.concatenate([d_cl, d_total], axis=-1) * (g / scale)
    d_mass = jnp.flip(sorting.cumsum(jnp.flip(d_below, -1)), -1)  # below = cumsum(mass)
    return sorting.put_last(d_s * g, perm), sorting.put_last(d_mass, perm)


_line_costs.defvjp(_line_costs_fwd, _line_costs_bwd)


def tree_costs(x: jax.Array, y: jax.Array, a: jax.Array, b: jax.Array, trees: TreeSystem, splitting: SplittingMap,
               delta: ArrayLike, p: float, sort_method: str = "auto", uniform_equal: bool = False
               ) -> tuple[jax.Array, jax.Array]:
    """Per-tree cost sum_edges w_e |Delta mass|^p for one pair of measures (validated inputs), as scaled costs
    and a power-of-two scale: cost = scale^p * scaled (`one_dim.power_scale`; the scale is 1 for p = 1).

    x: [n, d], y: [m, d], a: [n], b: [m], trees: sources/directions [L, k, d] -> scaled [L], scale [].
    `uniform_equal` (static): a and b are uniform and n == m.

    With the constant "uniform" splitting every line carries mass (sum a - sum b) / k = 0 in total, so the
    chain's pseudo-points carry none and are left out (docs/tsw_sl.md §7); for p = 1 each line's cost is then
    W_1 / k of the projections, which for uniform_equal inputs is the mean |u_(i) - v_(i)| of two sorts of n
    values instead of one sort of n + m + 1.
    """
    if splitting == "uniform" and p == 1 and uniform_equal:
        scaled, scale = projected_costs(x, y, a, b, trees.directions, 1, sort_method, uniform_equal=True)
        return jnp.mean(scaled, axis=-1), scale
    z = jnp.concatenate([x, y], axis=0)
    w = jnp.concatenate([a, -b], axis=0)
    origin = jax.lax.stop_gradient(jnp.mean(z, axis=0))  # any common origin gives the same values
    zc, src, theta = z - origin, trees.sources - origin, trees.directions
    proj = splitting_lib.project(zc, theta)
    if splitting != "uniform":  # uniform: no line carries net mass, so its cost does not depend on where its
        # source lies; coordinates from the common origin keep the data's precision (sources at distance 1
        # would round data of size 1e-10 to one point)
        proj = proj - jnp.einsum("lkd,lkd->lk", src, theta)[..., None]
    alpha = splitting_lib.line_weights(splitting, z, zc, src, proj, delta, trees)
    mass = alpha * w
    if trees.kind == "chain" and splitting != "uniform":
        on_line = jnp.sum(mass, axis=-1)
        below = jnp.cumsum(on_line[..., ::-1], axis=-1)[..., ::-1] - on_line  # R_i; R_k = 0
        attach = jnp.einsum("lkd,lkd->lk", src[..., 1:, :] - src[..., :-1, :], theta[..., :-1, :])
        attach = jnp.pad(attach, [(0, 0)] * (attach.ndim - 1) + [(0, 1)])  # node (0, 0) on line k
        proj = jnp.concatenate([proj, attach[..., None]], axis=-1)
        mass = jnp.concatenate([mass, below[..., None]], axis=-1)
    scaled, scale = line_costs(proj, mass, p, sort_method)
    return jnp.sum(scaled, axis=-1), scale


def tree_wasserstein(x: ArrayLike, y: ArrayLike, a: ArrayLike | None = None, b: ArrayLike | None = None, *,
                     trees: TreeSystem, splitting: SplittingMap = "uniform", delta: ArrayLike = 1.0, p: float = 1,
                     normalize_weights: bool = False, sort_method: str = "auto",
                     return_costs: bool = False, mesh: Mesh | None = None) -> Distance:
    """Tree Wasserstein distance between mu = sum a_i delta_{x_i} and nu = sum b_j delta_{y_j}, projected
    onto the given tree systems and averaged over trees: ((1/L) sum_l TW_l^p-cost)^(1/p).

    Args:
      x: [..., n, d] and y: [..., m, d] supports (n != m allowed).
      a: [..., n], b: [..., m] non-negative weights summing to one (default uniform); with
        `normalize_weights=True` any non-negative weights with a positive total are rescaled.
      trees: TreeSystem with sources/directions [L, k, d] or [..., L, k, d] (same batch axes as x).
      splitting: "uniform" (1/k per line), "distance" (softmax over lines of -delta * distance to the line;
        with concurrent trees this is Db-TSW) or a callable (z [N, d], trees) -> [L or 1, k, N] such as
        `LearnedSplitting`.
      delta: inverse temperature of the "distance" splitting (scalar, may be traced).
      p: static exponent >= 1; p = 1 is the paper's metric, p > 1 the authors' code convention.
      sort_method: "auto" (numpy on CPU, XLA elsewhere), "numpy" or "xla".
      return_costs: static; also return the per-tree costs.
      mesh: optional `jax.sharding.Mesh` with an axis "data" whose size divides L: the trees are split over its
        devices, the points replicated, and one all-reduce sums the per-tree costs (docs/tsw_sl.md §16.1).
    Returns:
      [...] distances (a scalar for unbatched inputs); with `return_costs`, (distances, costs [..., L]) where
      costs[l] = sum_edges w_e |Delta mass|^p on tree l and distance = mean_l(costs)^(1/p).
      Deterministic; jit/vmap/grad-safe.
    Raises:
      ValueError on mismatched shapes, negative / non-normalised / non-finite weights, non-finite or empty
      points, non-finite trees or delta, p not a finite number >= 1 (value checks only on concrete inputs;
      under jit a NaN or inf input gives a NaN distance and gradient, docs/input_policy.md); TypeError when a
      PRNG key is passed as a weight.
    """
    uniform_equal = validation.uniform_equal(x, y, a, b)
    x, y, a, b = validation.measures(x, y, a, b, normalize_weights)
    validation.trees(trees, x)
    p = validation.power(p)
    validation.splitting(splitting)
    validation.scalar("delta", delta)
    return_costs = validation.flag("return_costs", return_costs)
    mesh = sharding.check_mesh(mesh, trees.n_trees, "the number of trees")
    fn = _averaged_jit if isinstance(splitting, str) else _averaged
    return fn(x, y, a, b, trees, jnp.asarray(delta), splitting=splitting, p=p, sort_method=sort_method,
              uniform_equal=uniform_equal, return_costs=return_costs, mesh=mesh)


def _averaged(x, y, a, b, trees, delta, *, splitting, p, sort_method, uniform_equal, return_costs, mesh):
    """((1/L) sum_l cost_l)^(1/p) (and the costs [L] when `return_costs`) over the leading batch axes of
    validated inputs, with the trees split over the devices of `mesh` when one is given (tsw_sl.sharding)."""
    n_batch = x.ndim - 2
    batched_trees = trees.sources.ndim > 3

    def costs(shared, trees):
        x, y, a, b, delta = shared

        def one(x, y, a, b, trees):
            return tree_costs(x, y, a, b, trees, splitting, delta, p, sort_method, uniform_equal)

        return validation.vmap_leading(one, n_batch, in_axes)(x, y, a, b, trees)

    in_axes = (0, 0, 0, 0, 0 if batched_trees else None)
    values = math.prod(x.shape[:-2]) * trees.sources.shape[-2] * (x.shape[-2] + y.shape[-2] + 1)
    mean, scale, scaled = sharding.mean_costs(costs, (x, y, a, b, delta), trees, n_batch=n_batch,
                                              tree_axis=n_batch if batched_trees else 0, p=p, mesh=mesh,
                                              values_per_tree=values)
    out = sharding.finish(mean, scale, scaled, p, return_costs)
    guard = validation.vmap_leading(validation.nonfinite_to_nan, n_batch, (0, 0, 0, 0, 0, in_axes[-1], None))
    return guard(out, x, y, a, b, trees, delta)


_averaged_jit = jax.jit(_averaged,
                        static_argnames=("splitting", "p", "sort_method", "uniform_equal", "return_costs", "mesh"))


def tsw_sl(x: ArrayLike, y: ArrayLike, a: ArrayLike | None = None, b: ArrayLike | None = None, *, key: jax.Array,
           n_trees: int, n_lines: int, kind: str = "chain", splitting: SplittingMap = "uniform",
           delta: ArrayLike = 1.0, p: float = 1, normalize_weights: bool = False, sort_method: str = "auto",
           return_costs: bool = False, mesh: Mesh | None = None, **tree_options) -> Distance:
    """Monte Carlo TSW-SL: samples L tree systems of k lines (`sample_trees`) and returns `tree_wasserstein`.

    Args:
      x: [..., n, d], y: [..., m, d]; a: [..., n], b: [..., m] weights (default uniform).
      key: PRNG key; n_trees: L; n_lines: k (static ints).
      kind, splitting, delta, p, normalize_weights, sort_method, return_costs, mesh: as in `sample_trees` /
        `tree_wasserstein`.
      tree_options: root_mean, root_std, root_box, t_range, orthogonal (see `sample_trees`).
    Returns:
      [...] distances (with `return_costs`, also the per-tree costs [..., L]); one tree system is shared by the
      whole batch.
    Note: with the default uniform splitting TSW-SL equals sliced W1 over the k L directions (docs/tsw_sl.md §7).
    """
    x, y = validation.points(x, y)
    trees = sample_trees(key, n_trees, n_lines, x.shape[-1], kind, dtype=x.dtype, **tree_options)
    return tree_wasserstein(x, y, a, b, trees=trees, splitting=splitting, delta=delta, p=p,
                            normalize_weights=normalize_weights, sort_method=sort_method, return_costs=return_costs,
                            mesh=mesh)


def db_tsw(x: ArrayLike, y: ArrayLike, a: ArrayLike | None = None, b: ArrayLike | None = None, *, key: jax.Array,
           n_trees: int, n_lines: int, delta: ArrayLike = 1.0, p: float = 1, root_mean: ArrayLike | None = None,
           root_std: float = 0.1, orthogonal: bool = False, normalize_weights: bool = False,
           sort_method: str = "auto", return_costs: bool = False, mesh: Mesh | None = None) -> Distance:
    """Distance-based TSW (Db-TSW): concurrent trees rooted near the data, "distance" splitting.

    Roots ~ N(root_mean, root_std^2 I); root_mean defaults to the mean of the mixture (mu + nu) / 2 (no
    gradient), which keeps the estimator symmetric and E(d)-equivariant (the Db-TSW code uses the target's
    mean). Directions: normalised Gaussians, or orthonormal per tree when `orthogonal` (Db-TSW-orth, k <= d).

    Args:
      x: [..., n, d], y: [..., m, d]; a: [..., n], b: [..., m]; key: PRNG key; n_trees: L; n_lines: k.
      delta, p, normalize_weights, sort_method, return_costs, mesh: as in `tree_wasserstein`.
      root_mean: [d] (or batched [..., d]) root mean; None -> mixture mean.
    Returns:
      [...] distances (with `return_costs`, also the per-tree costs [..., L]).
    """
    x, y, a, b = validation.measures(x, y, a, b, normalize_weights)
    if root_mean is None:
        mix = 0.5 * (jnp.einsum("...n,...nd->...d", a, x) + jnp.einsum("...m,...md->...d", b, y))
        root_mean = jax.lax.stop_gradient(mix)
    root_mean = jnp.asarray(root_mean, x.dtype)
    d = x.shape[-1]
    sampler = functools.partial(sample_trees, key, n_trees, n_lines, d, "concurrent", root_std=root_std,
                                orthogonal=orthogonal, dtype=x.dtype)
    trees = validation.vmap_leading(lambda r: sampler(root_mean=r), root_mean.ndim - 1, 0)(root_mean)
    return tree_wasserstein(x, y, a, b, trees=trees, splitting="distance", delta=delta, p=p,
                            sort_method=sort_method, return_costs=return_costs, mesh=mesh)
