"""Max-sliced distances: the slicing parameters are optimised by gradient ascent (Adam), not drawn at random.

Both functions run `n_steps` ascent steps inside `lax.scan` (paper Alg. 3; directions are re-normalised after
each step and the step size decays to 0 so the ascent settles on the non-smooth maximum instead of oscillating
around it), then return the distance at the final parameters, held fixed (stop_gradient): the gradient with
respect to the points is the envelope-theorem gradient of the max. The paper's flows used 100 steps at
lr 1e-4; the default lr 0.05 moves unit directions appreciably in 100 steps. Gradient ascent finds a local
maximum: several random starts (n_projections > 1 or several keys) guard against poor ones.

Both take the measures in POT / OTT-JAX order, `f(x, y, a=None, b=None, *, key, ...)` (docs/api.md).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh
from jax.typing import ArrayLike

from tsw_sl import sharding, validation
from tsw_sl.distance import Distance, tree_costs
from tsw_sl.one_dim import projected_costs
from tsw_sl.splitting import SplittingMap
from tsw_sl.trees import TreeSystem, normalize, random_directions, sample_trees


def _ascend(objective, params, n_steps, lr, project):
    """Maximises objective(params) (the mean scaled cost: the mean cost up to a power-of-two factor, 1 for
    ordinary inputs; `one_dim.power_scale`) with Adam, step size cosine-decayed from lr to 0 over n_steps (lax.scan),
    applying `project` after each step; returns the final params (no gradient)."""
    opt = optax.adam(optax.cosine_decay_schedule(lr, max(n_steps, 1)))

    def step(carry, _):
        params, state = carry
        grads = jax.grad(lambda q: -objective(q))(params)
        updates, state = opt.update(grads, state, params)
        return (project(optax.apply_updates(params, updates)), state), None

    (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), None, length=n_steps)
    return jax.lax.stop_gradient(params)


def _check_steps(n_steps):
    if not isinstance(n_steps, int) or isinstance(n_steps, bool) or n_steps < 0:
        raise ValueError(f"n_steps must be a non-negative Python int; got {n_steps!r}")


def _one_pair(name, x, y, a, b, normalize_weights):
    x, y, a, b = validation.measures(x, y, a, b, normalize_weights)
    if x.ndim != 2:
        raise ValueError(f"{name} takes one pair x [n, d], y [m, d] (vmap for batches); got x {x.shape}")
    return x, y, a, b


@functools.partial(jax.jit, static_argnames=("n_steps", "p", "sort_method", "uniform_equal", "return_costs", "mesh"))
def _max_sliced(x, y, a, b, theta0, lr, *, n_steps, p, sort_method, uniform_equal, return_costs, mesh):
    n_total = theta0.shape[0]

    def costs(theta, x, y, a, b):  # on normalised directions: the gradient is tangent to the sphere
        return projected_costs(x, y, a, b, normalize(theta), p, sort_method, uniform_equal)

    def ascended_costs(shared, theta0):  # each direction's ascent is independent of the others'
        x, y, a, b, lr = shared
        fixed = jax.lax.stop_gradient((x, y, a, b))
        theta = _ascend(lambda q: jnp.sum(costs(q, *fixed)[0]) / n_total, theta0, n_steps, lr, normalize)
        return costs(theta, x, y, a, b)

    mean, scale, scaled = sharding.mean_costs(ascended_costs, (x, y, a, b, lr), theta0, n_batch=0, tree_axis=0,
                                              p=p, mesh=mesh)
    out = sharding.finish(mean, scale, scaled, p, return_costs)
    return validation.nonfinite_to_nan(out, x, y, a, b, theta0, lr)


def max_sliced_wasserstein(x: ArrayLike, y: ArrayLike, a: ArrayLike | None = None, b: ArrayLike | None = None, *,
                           key: jax.Array, n_steps: int = 100, lr: float = 0.05, n_projections: int = 1,
                           p: float = 2, normalize_weights: bool = False, sort_method: str = "auto",
                           return_costs: bool = False, mesh: Mesh | None = None) -> Distance:
    """Max-sliced Wasserstein: max over unit directions theta of W_p(theta # mu, theta # nu), by ascent.

    Args:
      x: [n, d], y: [m, d] supports; a: [n], b: [m] weights; key: PRNG key for the initial direction(s);
      n_steps (static), lr: Adam ascent; n_projections: number of directions optimised jointly (their mean
      W_p^p is maximised; 1 gives Max-SW); p: static >= 1; return_costs: static.
      mesh: optional `jax.sharding.Mesh` (axis "data", size dividing n_projections): the directions and their
        ascents are split over its devices (docs/tsw_sl.md §16.1).
    Returns:
      scalar distance at the optimised direction(s); with `return_costs`, (distance, costs [n_projections]),
      the W_p^p along each optimised direction (distance = mean(costs)^(1/p)). Batch over measure pairs with
      jax.vmap.
    """
    _check_steps(n_steps)
    uniform_equal = validation.uniform_equal(x, y, a, b)
    x, y, a, b = _one_pair("max_sliced_wasserstein", x, y, a, b, normalize_weights)
    p = validation.power(p)
    validation.count("n_projections", n_projections)
    validation.scalar("lr", lr, positive=True)
    return_costs = validation.flag("return_costs", return_costs)
    mesh = sharding.check_mesh(mesh, n_projections, "n_projections")
    theta0 = random_directions(key, (n_projections,), x.shape[-1], x.dtype)
    return _max_sliced(x, y, a, b, theta0, jnp.asarray(lr), n_steps=n_steps, p=p, sort_method=sort_method,
                       uniform_equal=uniform_equal, return_costs=return_costs, mesh=mesh)


def _max_tree(x, y, a, b, trees0, lr, delta, t_low, t_high, *, n_steps, splitting, p, sort_method,
              uniform_equal, return_costs, mesh):
    kind, n_total = trees0.kind, trees0.n_trees

    def costs(params, x, y, a, b, delta):
        trees = TreeSystem.from_params(*params, kind=kind)
        return tree_costs(x, y, a, b, trees, splitting, delta, p, sort_method, uniform_equal)

    def project(params):
        root, t, theta = params
        return root, jnp.clip(t, t_low, t_high), normalize(theta)

    def ascended_costs(shared, trees0):  # each tree's ascent is independent of the others'
        x, y, a, b, lr, delta = shared
        fixed = jax.lax.stop_gradient((x, y, a, b, delta))
        params = _ascend(lambda q: jnp.sum(costs(q, *fixed)[0]) / n_total, trees0.params(), n_steps, lr, project)
        return costs(params, x, y, a, b, delta)

    mean, scale, scaled = sharding.mean_costs(ascended_costs, (x, y, a, b, lr, delta), trees0, n_batch=0,
                                              tree_axis=0, p=p, mesh=mesh)
    out = sharding.finish(mean, scale, scaled, p, return_costs)
    return validation.nonfinite_to_nan(out, x, y, a, b, trees0, lr, delta)


_max_tree_jit = jax.jit(_max_tree, static_argnames=("n_steps", "splitting", "p", "sort_method", "uniform_equal",
                                                    "return_costs", "mesh"))


def max_tsw_sl(x: ArrayLike, y: ArrayLike, a: ArrayLike | None = None, b: ArrayLike | None = None, *,
               key: jax.Array, n_trees: int = 1, n_lines: int = 4, n_steps: int = 100, lr: float = 0.05,
               kind: str = "chain", splitting: SplittingMap = "uniform", delta: ArrayLike = 1.0, p: float = 1,
               normalize_weights: bool = False, sort_method: str = "auto", return_costs: bool = False,
               mesh: Mesh | None = None, **tree_options) -> Distance:
    """Max-TSW-SL: gradient ascent on the tree parameters (root, chain coordinates t_2..t_k, directions).

    Args:
      x: [n, d], y: [m, d]; a: [n], b: [m]; key: PRNG key for the initial trees (`sample_trees` with
      `tree_options`); n_trees: L trees optimised jointly (their mean cost is maximised); n_lines: k;
      n_steps (static), lr: Adam ascent; kind, splitting, delta, p, return_costs, mesh: as in
      `tree_wasserstein` (with a mesh, the trees and their ascents are split over its devices).
    Returns:
      scalar distance at the optimised trees (with `return_costs`, also their costs [L]). With a uniform
      splitting only the directions matter (docs/tsw_sl.md §7), so this is a max-sliced W1 over k directions;
      "distance" splitting makes roots and t count.
      With a non-constant splitting the cost grows without bound as lines move apart or the root moves away
      from the data: chain coordinates t are projected back onto `t_range` (default (-1, 1)) after each
      step, but the root is free, so `n_steps` and `lr` then act as a regulariser.
    """
    _check_steps(n_steps)
    uniform_equal = validation.uniform_equal(x, y, a, b)
    x, y, a, b = _one_pair("max_tsw_sl", x, y, a, b, normalize_weights)
    p = validation.power(p)
    validation.splitting(splitting)
    validation.scalar("lr", lr, positive=True)
    validation.scalar("delta", delta)
    return_costs = validation.flag("return_costs", return_costs)
    mesh = sharding.check_mesh(mesh, n_trees, "n_trees")
    trees0 = sample_trees(key, n_trees, n_lines, x.shape[-1], kind, dtype=x.dtype, **tree_options)
    t_low, t_high = tree_options.get("t_range", (-1.0, 1.0))
    fn = _max_tree_jit if isinstance(splitting, str) else _max_tree
    return fn(x, y, a, b, trees0, jnp.asarray(lr), jnp.asarray(delta), t_low, t_high, n_steps=n_steps,
              splitting=splitting, p=p, sort_method=sort_method, uniform_equal=uniform_equal,
              return_costs=return_costs, mesh=mesh)
