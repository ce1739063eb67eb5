"""Target point clouds for gradient flows: synthetic 2-D mixtures, Gaussians in R^d and shipped point clouds.

Every target is a function ``(key, n) -> float32 [n, d]`` in the registry ``TARGETS``; randomness comes only
from ``key``. The TSW-SL paper does not define its targets exactly (docs/tsw_sl.md §13), so the choices
below are the library's and are recorded in each experiment's metadata (``describe(name)``):

* ``swiss_roll``: t = 1.5 pi (1 + 2 u), u ~ U(0, 1); (t cos t, t sin t) / 5 + N(0, 0.05^2 I); range about
  [-2, 3]^2.
* ``25_gaussians``: centres on the grid {-2, -1, 0, 1, 2}^2, std 0.05, equal weights.
* ``8_gaussians``: centres 2 (cos 2 pi i / 8, sin 2 pi i / 8), std 0.05, equal weights.
* ``gaussian_<d>``: N(1_d, I_d) (mean all ones), d in GAUSSIAN_DIMS.
* shape images (``heart``, ``duck``, ``crescent``, ...): points drawn from the density image (common.data),
  mapped from [0, 1]^2 to [-1, 1]^2.
* meshes (``bunny``, ``spot``): n distinct vertices drawn at random, centred at their mean and scaled so the
  largest absolute coordinate of the whole mesh is 1.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from common.data import load_density_points, load_mesh_vertices

GAUSSIAN_DIMS = (10, 50, 75, 100, 150, 200)
SHAPES = {"heart": "pot_shapes/heart.png", "duck": "pot_shapes/duck.png", "tooth": "pot_shapes/tooth.png",
          "redcross": "pot_shapes/redcross.png", "crescent": "geomloss/crescent_a.png",
          "moon": "geomloss/moon_a.png"}
MESHES = {"bunny": "3d_models/stanford-bunny.obj.gz", "spot": "3d_models/spot.obj.gz"}


def swiss_roll(key: jax.Array, n: int) -> jax.Array:
    """Swiss roll in R^2: [n, 2]."""
    k_t, k_noise = jax.random.split(key)
    t = 1.5 * jnp.pi * (1.0 + 2.0 * jax.random.uniform(k_t, (n,)))
    points = jnp.stack([t * jnp.cos(t), t * jnp.sin(t)], axis=1) / 5.0
    return points + 0.05 * jax.random.normal(k_noise, (n, 2))


def gaussian_mixture(key: jax.Array, n: int, centres: ArrayLike, std: float = 0.05) -> jax.Array:
    """n points of the equal-weight mixture of N(centre, std^2 I): centres [c, d] -> [n, d]."""
    k_c, k_noise = jax.random.split(key)
    centres = jnp.asarray(centres, jnp.float32)
    which = jax.random.randint(k_c, (n,), 0, centres.shape[0])
    return centres[which] + std * jax.random.normal(k_noise, (n, centres.shape[1]))


GRID_25 = np.stack(np.meshgrid(np.arange(-2, 3), np.arange(-2, 3)), -1).reshape(-1, 2)
RING_8 = 2.0 * np.stack([np.cos(np.arange(8) * np.pi / 4), np.sin(np.arange(8) * np.pi / 4)], -1)


def gaussian(key: jax.Array, n: int, dim: int) -> jax.Array:
    """N(1_d, I_d) samples: [n, d]."""
    return 1.0 + jax.random.normal(key, (n, dim))


def shape_points(key: jax.Array, n: int, name: str) -> jax.Array:
    """n points of the density image `name` (a path under pointclouds/), in [-1, 1]^2: [n, 2]."""
    seed = np.asarray(jax.random.key_data(key)).ravel()
    return jnp.asarray(2.0 * load_density_points(name, n, seed) - 1.0)


def mesh_points(key: jax.Array, n: int, name: str) -> jax.Array:
    """n distinct vertices of the mesh `name` (a path under pointclouds/), normalised: [n, 3]."""
    vertices = load_mesh_vertices(name)
    vertices = vertices - vertices.mean(0)
    vertices = vertices / np.abs(vertices).max()
    idx = jax.random.choice(key, vertices.shape[0], (n,), replace=False)
    return jnp.asarray(vertices)[idx]


TARGETS = {
    "swiss_roll": swiss_roll,
    "25_gaussians": functools.partial(gaussian_mixture, centres=GRID_25),
    "8_gaussians": functools.partial(gaussian_mixture, centres=RING_8),
    **{f"gaussian_{d}": functools.partial(gaussian, dim=d) for d in GAUSSIAN_DIMS},
    **{name: functools.partial(shape_points, name=path) for name, path in SHAPES.items()},
    **{name: functools.partial(mesh_points, name=path) for name, path in MESHES.items()},
}


def sample_target(name: str, key: jax.Array, n: int) -> jax.Array:
    """n points of target `name` (a key of TARGETS) as float32 [n, d]."""
    if name not in TARGETS:
        raise ValueError(f"unknown target {name!r}; choose from {sorted(TARGETS)}")
    return jnp.asarray(TARGETS[name](key, n), jnp.float32)


def describe(name: str) -> str:
    """A one-line description of target `name` for experiment metadata."""
    if name in SHAPES:
        return f"{name}: density image pointclouds/{SHAPES[name]} mapped to [-1, 1]^2"
    if name in MESHES:
        return f"{name}: random vertices of pointclouds/{MESHES[name]}, centred, max |coord| = 1"
    if name.startswith("gaussian_"):
        return f"{name}: N(1_d, I_d), d = {name.split('_')[1]}"
    return {"swiss_roll": "swiss_roll: (t cos t, t sin t)/5 + N(0, 0.05^2), t ~ 1.5 pi (1 + 2 U)",
            "25_gaussians": "25_gaussians: grid {-2..2}^2, std 0.05",
            "8_gaussians": "8_gaussians: ring of radius 2, std 0.05"}[name]
