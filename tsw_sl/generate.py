"""Sliced-Wasserstein generator: an MLP maps Gaussian noise to images and is trained by minimising a
(tree-)sliced distance between generated and real batches in pixel space (no discriminator).

The loss is any method of ``tsw_sl.flows.METHODS``; the paper's comparison matches the number of lines, TSW-SL
with L trees of k lines against SW with L k directions (``flows.Settings.n_directions``). Training runs
through the project's data-parallel loop ``common.training.fit`` (orbax checkpoints, automatic resume).
The experiment (generators on MNIST / Fashion-MNIST scored with a classifier Frechet distance) is
``python -m benchmarks.tsw_generate``.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from common.training import fit
from tsw_sl import flows

MLPParams = list[dict[str, jax.Array]]  # [{"w": [d_i, d_{i+1}], "b": [d_{i+1}]}, ...], one dict per dense layer
GENERATOR_SIZES = (256, 512)


def init_mlp(key: jax.Array, sizes: Sequence[int]) -> MLPParams:
    """He-initialised dense layers: sizes (d_0, ..., d_L) -> [{"w": [d_i, d_i+1], "b": [d_i+1]}, ...]."""
    keys = jax.random.split(key, len(sizes) - 1)
    return [{"w": jax.random.normal(k, (i, o)) * jnp.sqrt(2.0 / i), "b": jnp.zeros(o)}
            for k, i, o in zip(keys, sizes[:-1], sizes[1:])]


def mlp_features(params: MLPParams, x: jax.Array) -> jax.Array:
    """ReLU activations of the last hidden layer: x [b, d_0] -> [b, d_{L-1}]."""
    for layer in params[:-1]:
        x = jax.nn.relu(x @ layer["w"] + layer["b"])
    return x


def mlp_apply(params: MLPParams, x: jax.Array) -> jax.Array:
    """Pre-activation output of the MLP: x [b, d_0] -> [b, d_L]."""
    return mlp_features(params, x) @ params[-1]["w"] + params[-1]["b"]


def init_generator(key: jax.Array, latent_dim: int = 32, image_dim: int = 784) -> MLPParams:
    """Generator parameters: MLP latent_dim -> 256 -> 512 -> image_dim."""
    return init_mlp(key, (latent_dim, *GENERATOR_SIZES, image_dim))


def generate(params: MLPParams, key: jax.Array, n: int) -> jax.Array:
    """n samples of the generator: float32 [n, image_dim] in (0, 1) (sigmoid output)."""
    z = jax.random.normal(key, (n, params[0]["w"].shape[0]))
    return jax.nn.sigmoid(mlp_apply(params, z))


def generator_loss(params: MLPParams, batch: jax.Array, key: jax.Array, method: str = "tsw_sl",
                   settings: flows.Settings = flows.Settings()) -> tuple[jax.Array, dict]:
    """D_method(generated batch, real batch) for a real batch [b, 784]; returns (loss, {})."""
    k_noise, k_slice = jax.random.split(key)
    fake = generate(params, k_noise, batch.shape[0])
    return flows.METHODS[method](fake, batch, k_slice, settings), {}


def sampler(data: np.ndarray | tuple[np.ndarray, ...], batch_size: int, seed: int) -> Callable[[int], Any]:
    """Deterministic batches(step) for `fit`: rows of `data` (an array or a tuple of arrays with N rows) drawn
    uniformly with numpy's generator seeded by (seed, step)."""
    arrays = data if isinstance(data, tuple) else (data,)

    def batches(step):
        idx = np.random.default_rng([seed, step]).integers(0, len(arrays[0]), batch_size)
        picked = tuple(a[idx] for a in arrays)
        return picked if isinstance(data, tuple) else picked[0]

    return batches


def train_generator(key: jax.Array, images: np.ndarray, method: str, num_steps: int, *,
                    settings: flows.Settings = flows.Settings(), batch_size: int = 128, lr: float = 1e-3,
                    latent_dim: int = 32, run_dir: str | None = None, checkpoint_every: int | None = None,
                    eval_fn: Callable[[MLPParams], dict] | None = None, eval_every: int | None = None,
                    progress: bool = False) -> tuple[MLPParams, list[dict]]:
    """Trains a generator with loss D_method through `common.training.fit` (Adam(lr, b1=0.5)).

    Args:
      key: PRNG key (initialisation, batches, noise and slices).
      images: [N, 784] training images in [0, 1].
      method: key of flows.METHODS; settings: flows.Settings (L, k, p).
      run_dir / checkpoint_every: checkpoints and resume (see `fit`); eval_fn(params) -> dict, eval_every.
    Returns:
      (params, history): the trained generator and fit's logged records ({"step", "loss", "eval/..."}).
    """
    flows.check_method(method)
    k_init, k_data, k_fit = jax.random.split(key, 3)
    seed = int(jax.random.randint(k_data, (), 0, 2**31 - 1))
    loss = functools.partial(generator_loss, method=method, settings=settings)
    state, history = fit(loss, init_generator(k_init, latent_dim, images.shape[1]), optax.adam(lr, b1=0.5),
                         sampler(images, batch_size, seed), key=k_fit, num_steps=num_steps, run_dir=run_dir,
                         checkpoint_every=checkpoint_every, eval_fn=eval_fn, eval_every=eval_every,
                         progress=progress)
    return state.params, history


samples = jax.jit(generate, static_argnames="n")  # jitted `generate`: (params, key, n) -> [n, image_dim]

