"""The authors' settings profile of the TSW-SL experiments (``--settings authors``; docs/tsw_sl.md §13.1).

The library profile (``--settings library``, the default) runs `tsw_sl.flows` as the library defines it: p = 1
for the tree methods, chain roots in the unit box around the target mean with t ~ U(-1, 1), Db-TSW roots
N(mean, 0.1^2 I), the loss SW_2 (a root) and the library's targets. This module is what the authors' public
gradient-flow code does instead (Fsoft-AIC/DbTSW and thanhquangtran/TS-Sobolev, `experiments/*gradient-flow*`),
built from the library's own pieces (`sample_trees`, `tree_wasserstein`, `sliced_wasserstein`, ...):

* targets (``authors_target``): 100 points, centred at their mean; the swiss roll scaled by its largest
  absolute coordinate; 25 Gaussians on the grid 2 {-2..2}^2 with std 0.05 (4 points per centre) divided by
  2.828; 8 Gaussians on the ring of radius 2 with std 0.02 divided by 1.414; ``gaussian_<d>``: N(u, I_d) with
  u ~ U(0, 1)^d; every other target is the library's, centred;
* SW: 100 directions, loss n L SW_2^2 (their sum of squared sorted differences); Max-SW: that loss on one
  direction found by 100 inner Adam steps at the flow's SW learning rate (5e-3);
* TSW-SL: chain trees, root N(target mean, 0.001^2 I), t ~ U(-0.1, 0.1), uniform splitting, p = 2 (their
  command line); Db-TSW: concurrent trees, root N(target mean, 0.001^2 I), distance splitting, delta = 1, p = 2;
  Max-TSW-SL (no flow code published): one chain tree, the same tree law, p = 2, 100 inner steps at lr 1e-4;
* Adam, learning rate 5e-3 (tree methods 5e-2 in d >= 10, `tsw_sl.flows.default_lr`), 100 particles from
  N(0, 0.25^2 I).

``run_flows`` is the flow of `tsw_sl.flows.run_flows` with these losses; ``AuthorsSettings`` holds the knobs the
ablation varies (p, the root law and scale, the t range).
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

from tsw_sl import (flows, max_sliced_wasserstein, max_tsw_sl, sample_trees, sliced_wasserstein, targets,
                    tree_wasserstein)

ROOT_LAWS = ("normal", "box")


@dataclasses.dataclass(frozen=True)
class AuthorsSettings:
    """The authors' flow settings (hashable: a static argument under jit).

    Attributes:
      n_directions: SW's L, and the tree methods' total number of lines L k; n_lines: k.
      p_tree: exponent of the tree methods; delta: inverse temperature of Db-TSW's distance splitting.
      root_law: "normal" (root ~ N(target mean, root_scale^2 I)) or "box" (U(target mean +- root_scale)).
      t_range: law U(t_range) of a chain line's source on its parent.
      max_steps: inner Adam steps of Max-SW / Max-TSW-SL; max_sw_lr, max_tsw_lr: their inner learning rates.
      sw_squared: SW's loss is n L SW_2^2 (the authors'); False: SW_2 (the library's, for the ablation).
    """
    n_directions: int = 100
    n_lines: int = 4
    p_tree: float = 2
    delta: float = 1.0
    root_law: str = "normal"
    root_scale: float = 1e-3
    t_range: tuple[float, float] = (-0.1, 0.1)
    max_steps: int = 100
    max_sw_lr: float = 5e-3
    max_tsw_lr: float = 1e-4
    sw_squared: bool = True

    def __post_init__(self):
        if self.root_law not in ROOT_LAWS:
            raise ValueError(f"root_law must be one of {ROOT_LAWS}; got {self.root_law!r}")

    @property
    def n_trees(self) -> int:
        return max(self.n_directions // self.n_lines, 1)

    def tree_options(self, y: jax.Array) -> dict:
        """`sample_trees` keywords: the root law around the (gradient-free) mean of y [m, d], and t_range."""
        scale = "root_std" if self.root_law == "normal" else "root_box"
        return {"root_mean": jax.lax.stop_gradient(jnp.mean(y, axis=0)), scale: self.root_scale,
                "t_range": self.t_range}


def _sw(x, y, key, s):
    sw = sliced_wasserstein(x, y, key=key, n_projections=s.n_directions, p=2)
    return x.shape[0] * s.n_directions * sw ** 2 if s.sw_squared else sw


def _max_sw(x, y, key, s):
    return x.shape[0] * max_sliced_wasserstein(x, y, key=key, n_steps=s.max_steps, lr=s.max_sw_lr, p=2) ** 2


def _tree(x, y, key, s, kind, splitting):
    trees = sample_trees(key, s.n_trees, s.n_lines, x.shape[-1], kind, dtype=x.dtype, **s.tree_options(y))
    return tree_wasserstein(x, y, trees=trees, splitting=splitting, delta=s.delta, p=s.p_tree)


def _max_tsw(x, y, key, s):
    return max_tsw_sl(x, y, key=key, n_trees=1, n_lines=s.n_lines, n_steps=s.max_steps, lr=s.max_tsw_lr,
                      kind="chain", p=s.p_tree, **s.tree_options(y))


# name (as in tsw_sl.flows.METHODS) -> loss (x [n, d], y [m, d], key, AuthorsSettings) -> scalar.
LOSSES = {
    "sw": _sw,
    "max_sw": _max_sw,
    "tsw_sl": functools.partial(_tree, kind="chain", splitting="uniform"),
    "tsw_sl_distance": functools.partial(_tree, kind="chain", splitting="distance"),
    "max_tsw_sl": _max_tsw,
    "db_tsw": functools.partial(_tree, kind="concurrent", splitting="distance"),
}


@functools.partial(jax.jit, static_argnames=("method", "n_steps", "snapshot_every", "settings"))
def run_flows(key: jax.Array, sources: jax.Array, targets: jax.Array, method: str, n_steps: int, lr: ArrayLike,
              snapshot_every: int = 100, settings: AuthorsSettings = AuthorsSettings()
              ) -> tuple[jax.Array, jax.Array]:
    """Adam(lr) flows of R runs on LOSSES[method]: sources [R, n, d], targets [R, m, d] -> (snapshots
    [R, n_steps // snapshot_every + 1, n, d] at iterations 0, snapshot_every, ..., n_steps, losses [R, n_steps]).
    Each run draws its own slices / trees from `key`, a fresh draw per iteration."""
    if method not in LOSSES:
        raise ValueError(f"unknown method {method!r}; choose from {sorted(LOSSES)}")
    if n_steps % snapshot_every:
        raise ValueError(f"n_steps ({n_steps}) must be a multiple of snapshot_every ({snapshot_every})")
    def one(key, source, target):
        loss = lambda x, k: LOSSES[method](x, target, k, settings)  # noqa: E731
        return flows.descend(loss, optax.adam(lr), key, source, n_steps, snapshot_every)

    return jax.vmap(one)(jax.random.split(key, sources.shape[0]), sources, targets)


def _centred(points: np.ndarray) -> np.ndarray:
    return (points - points.mean(0)).astype(np.float32)


def authors_target(name: str, key: jax.Array, n: int) -> np.ndarray:
    """n points of target `name` as the authors' flow code defines it, centred at their mean: float32 [n, d]."""
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel())
    if name == "swiss_roll":
        t = 1.5 * np.pi * (1 + 2 * rng.uniform(size=n))
        points = np.stack([t * np.cos(t), t * np.sin(t)], 1)
        return _centred(points / np.abs(points).max())
    if name == "25_gaussians":
        centres = 2.0 * targets.GRID_25[np.arange(n) % 25]
        return _centred(rng.permutation(centres + 0.05 * rng.normal(size=(n, 2))) / 2.828)
    if name == "8_gaussians":
        centres = targets.RING_8[rng.integers(0, 8, n)]
        return _centred((centres + 0.02 * rng.normal(size=(n, 2))) / 1.414)
    if name.startswith("gaussian_"):
        dim = int(name.split("_")[1])
        return _centred(rng.uniform(size=dim) + rng.normal(size=(n, dim)))
    return _centred(np.asarray(targets.sample_target(name, key, n)))


def describe_target(name: str) -> str:
    """One line saying how `authors_target` draws `name`."""
    own = {"swiss_roll": "swiss roll (t cos t, t sin t), t ~ 1.5 pi (1 + 2 U), divided by its max |coordinate|",
           "25_gaussians": "grid 2 {-2..2}^2, std 0.05, 4 points per centre, divided by 2.828",
           "8_gaussians": "ring of radius 2, std 0.02, divided by 1.414"}
    if name.startswith("gaussian_"):
        text = f"N(u, I_d), u ~ U(0, 1)^d, d = {name.split('_')[1]}"
    else:
        text = own.get(name, f"the library's {targets.describe(name)}")
    return f"{name} (authors): {text}; centred at its mean"


# Colour transfer (Fsoft-AIC/DbTSW, experiments/image-style-transfer): colours in 0..255, plain SGD on
# n * sqrt(D) with the palette clipped at 0 after every step; SW L = 100 at step 1; TSW-SL and Db-TSW on
# int(100 / 3) = 33 concurrent trees of k = 3 lines, roots N(target palette mean, 1^2 I), p = 2, delta = 1, step 11.
COLOUR_SCALE = 255.0
COLOUR_STEP = {"sw": 1.0, "tsw_sl": 11.0, "db_tsw": 11.0}
COLOUR_TREES = AuthorsSettings(n_directions=100, n_lines=3, p_tree=2, delta=1.0, root_scale=1.0)


def _colour_loss(x, y, key, method):
    if method == "sw":
        distance = sliced_wasserstein(x, y, key=key, n_projections=100, p=2)
    else:
        s = COLOUR_TREES
        trees = sample_trees(key, s.n_trees, s.n_lines, x.shape[-1], "concurrent", dtype=x.dtype,
                             root_mean=jax.lax.stop_gradient(jnp.mean(y, axis=0)), root_std=s.root_scale)
        distance = tree_wasserstein(x, y, trees=trees, splitting="uniform" if method == "tsw_sl" else "distance",
                                    delta=s.delta, p=s.p_tree)
    return x.shape[0] * jnp.sqrt(distance)


@functools.partial(jax.jit, static_argnames=("method", "n_steps", "n_snapshots"))
def transfer_palette(key: jax.Array, source: jax.Array, target: jax.Array, method: str, n_steps: int,
                     n_snapshots: int = 10) -> jax.Array:
    """The authors' palette flow: source [K, 3], target [K', 3] colours in [0, 1], flowed at their 0..255 scale
    with projected SGD (COLOUR_STEP[method]) -> snapshots [n_snapshots + 1, K, 3] back in [0, 1]-units at steps
    0, n_steps / n_snapshots, ..., n_steps."""
    if method not in COLOUR_STEP:
        raise ValueError(f"unknown method {method!r}; choose from {sorted(COLOUR_STEP)}")
    if n_steps % n_snapshots:
        raise ValueError(f"n_steps ({n_steps}) must be a multiple of n_snapshots ({n_snapshots})")
    y = COLOUR_SCALE * target
    grad = jax.grad(lambda x, k: _colour_loss(x, y, k, method))

    def step(x, k):
        return jnp.maximum(x - COLOUR_STEP[method] * grad(x, k), 0.0), None

    def chunk(x, keys):
        x, _ = jax.lax.scan(step, x, keys)
        return x, x

    keys = jax.random.split(key, n_steps).reshape(n_snapshots, n_steps // n_snapshots)
    x0 = COLOUR_SCALE * source
    _, snaps = jax.lax.scan(chunk, x0, keys)
    return jnp.concatenate([x0[None], snaps]) / COLOUR_SCALE
