"""Gradient flows of particles towards a target point cloud, driven by a (tree-)sliced distance.

Particles X [n, d] follow Adam on D(X, Y) for a target Y [m, d], D one of the methods of the registry
``METHODS`` (name -> loss ``(x, y, key, settings) -> scalar``); the whole flow is one jitted ``lax.scan`` and
several runs are vmapped (``run_flows``).

Paper settings (TSW-SL, docs/tsw_sl.md §13): 100 particles from N(0, 0.25^2 I), Adam, 2,500 iterations;
SW / Max-SW with L = 100 directions, TSW-SL with L = 25 trees of k = 4 lines (L k = 100); learning rate 5e-3
for every baseline, 5e-2 for the tree methods in high dimension (``default_lr``); Max-SW and Max-TSW-SL
optimise their slices with 100 inner Adam steps at lr 1e-4. The experiment (W_2^2 curves of every method on
every target, beside the paper's numbers) is ``python -m benchmarks.tsw_flows``.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from jax.typing import ArrayLike

from tsw_sl import db_tsw, max_sliced_wasserstein, max_tsw_sl, sliced_wasserstein, tsw_sl


@dataclasses.dataclass(frozen=True)
class Settings:
    """Slicing settings shared by the methods (hashable: a static argument under jit).

    Attributes:
      n_directions: SW's number of directions L, and TSW-SL's total number of lines L k.
      n_lines: k, lines per tree (TSW-SL uses n_directions // n_lines trees).
      max_steps, max_lr: inner Adam ascent of Max-SW / Max-TSW-SL.
      p_sw: exponent of SW and Max-SW; p_tree: exponent of the tree methods (1 = the paper's metric).
      delta: inverse temperature of the distance splitting (Db-TSW, "tsw_sl_distance").
      db_root_std: std of Db-TSW's roots around the data mean.
      sort_method: "auto", "numpy" or "xla" (see tsw_sl.sorting); inner_sort_method: the same for the inner
        ascent of the Max methods, which sorts so few values that XLA's sort beats numpy's callback on CPU.
    """
    n_directions: int = 100
    n_lines: int = 4
    max_steps: int = 100
    max_lr: float = 1e-4
    p_sw: int = 2
    p_tree: int = 1
    delta: float = 1.0
    db_root_std: float = 0.1
    sort_method: str = "auto"
    inner_sort_method: str = "xla"

    @property
    def n_trees(self) -> int:
        return max(self.n_directions // self.n_lines, 1)


def _centre(y):
    return jax.lax.stop_gradient(jnp.mean(y, axis=0))


def _sw(x, y, key, s):
    return sliced_wasserstein(x, y, key=key, n_projections=s.n_directions, p=s.p_sw, sort_method=s.sort_method)


def _max_sw(x, y, key, s):
    return max_sliced_wasserstein(x, y, key=key, n_steps=s.max_steps, lr=s.max_lr, p=s.p_sw,
                                  sort_method=s.inner_sort_method)


def _tsw(x, y, key, s, splitting="uniform"):
    return tsw_sl(x, y, key=key, n_trees=s.n_trees, n_lines=s.n_lines, kind="chain", splitting=splitting,
                  delta=s.delta, p=s.p_tree, root_mean=_centre(y), sort_method=s.sort_method)


def _max_tsw(x, y, key, s):
    return max_tsw_sl(x, y, key=key, n_trees=1, n_lines=s.n_lines, n_steps=s.max_steps, lr=s.max_lr, kind="chain",
                      p=s.p_tree, root_mean=_centre(y), sort_method=s.inner_sort_method)


def _db_tsw(x, y, key, s):
    return db_tsw(x, y, key=key, n_trees=s.n_trees, n_lines=s.n_lines, delta=s.delta, p=s.p_tree,
                  root_mean=_centre(y), root_std=s.db_root_std, sort_method=s.sort_method)


# name -> loss (x [n, d], y [m, d], key, settings) -> scalar, differentiable in x.
METHODS = {
    "sw": _sw,
    "max_sw": _max_sw,
    "tsw_sl": _tsw,
    "tsw_sl_distance": functools.partial(_tsw, splitting="distance"),
    "max_tsw_sl": _max_tsw,
    "db_tsw": _db_tsw,
}
TREE_METHODS = ("tsw_sl", "tsw_sl_distance", "max_tsw_sl", "db_tsw")


def check_method(method: str) -> None:
    """Raises ValueError unless `method` is a key of METHODS."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {sorted(METHODS)}")


def default_lr(method: str, dim: int) -> float:
    """The paper's learning rate: 5e-3, except 5e-2 for the tree methods when dim >= 10."""
    check_method(method)
    return 5e-2 if method in TREE_METHODS and dim >= 10 else 5e-3


def initial_particles(key: jax.Array, n: int, dim: int, std: float = 0.25) -> jax.Array:
    """The authors' initialisation N(0, std^2 I): [n, dim]."""
    return std * jax.random.normal(key, (n, dim))


OPTIMIZERS = {"adam": optax.adam, "sgd": optax.sgd}  # "sgd": plain Euler steps x <- x - lr grad


@functools.partial(jax.jit, static_argnames=("method", "n_steps", "snapshot_every", "settings", "optimizer"))
def run_flow(key: jax.Array, source: jax.Array, target: jax.Array, method: str, n_steps: int, lr: ArrayLike,
             snapshot_every: int = 100, settings: Settings = Settings(),
             optimizer: str = "adam") -> tuple[jax.Array, jax.Array]:
    """One gradient flow: optimizer(lr) (Adam by default) on D_method(X, target) starting from X = source.

    Args:
      key: PRNG key (a fresh slice / tree sample per iteration).
      source: [n, d] initial particles; target: [m, d] target points.
      method: key of METHODS (static); n_steps: iterations (static, a multiple of snapshot_every).
      lr: learning rate / step size (may be traced); snapshot_every: static; settings: `Settings` (static);
      optimizer: key of OPTIMIZERS (static).
    Returns:
      (snapshots [n_steps // snapshot_every + 1, n, d], losses [n_steps]): particles at iterations
      0, snapshot_every, ..., n_steps and the loss before each update.
    """
    check_method(method)
    if n_steps % snapshot_every:
        raise ValueError(f"n_steps ({n_steps}) must be a multiple of snapshot_every ({snapshot_every})")
    loss = lambda x, k: METHODS[method](x, target, k, settings)  # noqa: E731
    return descend(loss, OPTIMIZERS[optimizer](lr), key, source, n_steps, snapshot_every)


def descend(loss: Callable[[jax.Array, jax.Array], jax.Array], opt: optax.GradientTransformation, key: jax.Array,
            source: jax.Array, n_steps: int, snapshot_every: int) -> tuple[jax.Array, jax.Array]:
    """Particles moved by ``opt`` on ``loss(x, key)`` (a fresh key per iteration), the loop of every flow.

    Args:
      loss: ``loss(x [n, d], key) -> scalar``; opt: an optax transformation; key: PRNG key; source: [n, d];
      n_steps, snapshot_every: static ints, n_steps a multiple of snapshot_every.
    Returns:
      (snapshots [n_steps // snapshot_every + 1, n, d], losses [n_steps]) as `run_flow`.
    """
    def step(carry, k):
        x, state = carry
        value, grad = jax.value_and_grad(loss)(x, k)
        updates, state = opt.update(grad, state, x)
        return (optax.apply_updates(x, updates), state), value

    def chunk(carry, keys):
        carry, values = jax.lax.scan(step, carry, keys)
        return carry, (carry[0], values)

    keys = jax.random.split(key, n_steps).reshape(n_steps // snapshot_every, snapshot_every)
    _, (snaps, losses) = jax.lax.scan(chunk, (source, opt.init(source)), keys)
    return jnp.concatenate([source[None], snaps]), losses.reshape(-1)


@functools.partial(jax.jit, static_argnames=("method", "n_steps", "snapshot_every", "settings", "optimizer"))
def run_flows(key: jax.Array, sources: jax.Array, targets: jax.Array, method: str, n_steps: int, lr: ArrayLike,
              snapshot_every: int = 100, settings: Settings = Settings(),
              optimizer: str = "adam") -> tuple[jax.Array, jax.Array]:
    """`run_flow` vmapped over runs: sources [R, n, d], targets [R, m, d] -> (snapshots [R, S, n, d],
    losses [R, n_steps]), each run with its own key from `key`."""
    keys = jax.random.split(key, sources.shape[0])
    flow = functools.partial(run_flow, method=method, n_steps=n_steps, snapshot_every=snapshot_every,
                             settings=settings, optimizer=optimizer)
    return jax.vmap(lambda k, s, t: flow(k, s, t, lr=lr))(keys, sources, targets)

