"""Sliced-Wasserstein generator: an MLP maps Gaussian noise to images and is trained by minimising a
(tree-)sliced distance between generated and real batches in pixel space (no discriminator).

The loss is any method of ``tsw_sl.flows.METHODS``; the paper's comparison matches the number of lines, TSW-SL
with L trees of k lines against SW with L k directions (``flows.Settings.n_directions``). Training runs
through the project's data-parallel loop ``common.training.fit`` (orbax checkpoints, automatic resume).

Quality is the *classifier Frechet distance*: the Frechet distance between Gaussians fitted to the
penultimate-layer features (128-d) of a small MLP classifier (784-256-128-10) trained by the library on the
same data set (``train_classifier``). It plays the role of FID but is NOT the Inception FID and its values are
not comparable to published FIDs. Run as ``python -m tsw_sl.generate`` (see ``tsw_sl.experiments.generate_report``).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.linalg

from common.data import load_fashion_mnist, load_mnist
from common.training import fit
from tsw_sl import flows

DATASETS = {"mnist": load_mnist, "fashion_mnist": load_fashion_mnist}
GENERATOR_SIZES = (256, 512)
CLASSIFIER_SIZES = (784, 256, 128, 10)


def load_images(dataset, split="train"):
    """Images of `dataset` ("mnist" or "fashion_mnist") flattened to float32 [N, 784] in [0, 1], and labels [N]."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose from {sorted(DATASETS)}")
    images, labels = DATASETS[dataset](split)
    return images.reshape(len(images), -1).astype(np.float32) / 255.0, labels


def init_mlp(key, sizes):
    """He-initialised dense layers: sizes (d_0, ..., d_L) -> [{"w": [d_i, d_i+1], "b": [d_i+1]}, ...]."""
    keys = jax.random.split(key, len(sizes) - 1)
    return [{"w": jax.random.normal(k, (i, o)) * jnp.sqrt(2.0 / i), "b": jnp.zeros(o)}
            for k, i, o in zip(keys, sizes[:-1], sizes[1:])]


def mlp_features(params, x):
    """ReLU activations of the last hidden layer: x [b, d_0] -> [b, d_{L-1}]."""
    for layer in params[:-1]:
        x = jax.nn.relu(x @ layer["w"] + layer["b"])
    return x


def mlp_apply(params, x):
    """Pre-activation output of the MLP: x [b, d_0] -> [b, d_L]."""
    return mlp_features(params, x) @ params[-1]["w"] + params[-1]["b"]


def init_generator(key, latent_dim=32, image_dim=784):
    """Generator parameters: MLP latent_dim -> 256 -> 512 -> image_dim."""
    return init_mlp(key, (latent_dim, *GENERATOR_SIZES, image_dim))


def generate(params, key, n):
    """n samples of the generator: float32 [n, image_dim] in (0, 1) (sigmoid output)."""
    z = jax.random.normal(key, (n, params[0]["w"].shape[0]))
    return jax.nn.sigmoid(mlp_apply(params, z))


def generator_loss(params, batch, key, method="tsw_sl", settings=flows.Settings()):
    """D_method(generated batch, real batch) for a real batch [b, 784]; returns (loss, {})."""
    k_noise, k_slice = jax.random.split(key)
    fake = generate(params, k_noise, batch.shape[0])
    return flows.METHODS[method](fake, batch, k_slice, settings), {}


def classifier_loss(params, batch, key):
    """Cross-entropy of the classifier on batch = (images [b, 784], labels [b]); returns (loss, {"accuracy"})."""
    del key
    images, labels = batch
    logits = mlp_apply(params, images)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, {"accuracy": jnp.mean(jnp.argmax(logits, -1) == labels)}


def sampler(data, batch_size, seed):
    """Deterministic batches(step) for `fit`: rows of `data` (an array or a tuple of arrays with N rows) drawn
    uniformly with numpy's generator seeded by (seed, step)."""
    arrays = data if isinstance(data, tuple) else (data,)

    def batches(step):
        idx = np.random.default_rng([seed, step]).integers(0, len(arrays[0]), batch_size)
        picked = tuple(a[idx] for a in arrays)
        return picked if isinstance(data, tuple) else picked[0]

    return batches


def train_classifier(key, images, labels, num_steps, batch_size=128, lr=1e-3, run_dir=None, progress=False):
    """Trains the feature classifier (MLP 784-256-128-10, Adam) with `common.training.fit`; returns params.

    A finished run in `run_dir` is restored instead of retrained."""
    k_init, k_fit = jax.random.split(key)
    seed = int(jax.random.randint(k_init, (), 0, 2**31 - 1))
    state, _ = fit(classifier_loss, init_mlp(k_init, CLASSIFIER_SIZES), optax.adam(lr),
                   sampler((images, labels.astype(np.int32)), batch_size, seed), key=k_fit, num_steps=num_steps,
                   run_dir=run_dir, checkpoint_every=num_steps, progress=progress)
    return state.params


def gaussian_stats(features):
    """Mean [f] and covariance [f, f] (float64) of features [n, f]."""
    features = np.asarray(features, np.float64)
    return features.mean(0), np.cov(features, rowvar=False)


def frechet_distance(stats_a, stats_b):
    """||m_a - m_b||^2 + tr(C_a + C_b - 2 (C_a C_b)^(1/2)) between two Gaussians given as (mean, cov).

    tr (C_a C_b)^(1/2) is computed as the sum of square roots of the eigenvalues of the symmetric
    C_a^(1/2) C_b C_a^(1/2) (stable for singular covariances, e.g. dead ReLU features).
    """
    (m_a, c_a), (m_b, c_b) = stats_a, stats_b
    w, v = scipy.linalg.eigh(c_a)
    half = (v * np.sqrt(np.maximum(w, 0.0))) @ v.T
    tr_root = np.sum(np.sqrt(np.maximum(scipy.linalg.eigvalsh(half @ c_b @ half), 0.0)))
    return float(np.sum((m_a - m_b) ** 2) + np.trace(c_a) + np.trace(c_b) - 2.0 * tr_root)


@jax.jit
def classifier_features(classifier, images):
    """Penultimate-layer features of the classifier: images [n, 784] -> [n, 128]."""
    return mlp_features(classifier, images)


def classifier_frechet(classifier, reference_stats, images):
    """Classifier Frechet distance between `images` [n, 784] and reference statistics (`gaussian_stats`)."""
    return frechet_distance(gaussian_stats(classifier_features(classifier, images)), reference_stats)


def train_generator(key, images, method, num_steps, *, settings=flows.Settings(), batch_size=128, lr=1e-3,
                    latent_dim=32, run_dir=None, checkpoint_every=None, eval_fn=None, eval_every=None,
                    progress=False):
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


if __name__ == "__main__":
    from tsw_sl.experiments.generate_report import main

    main()
