"""Small CNN Zoo and SIREN recipes (docs/magep.md §10) as `common.population` tasks, data and configurations.

CNN zoo (Unterthiner et al.): 3 x Conv(3x3, 16, stride 2, VALID) + activation + dropout, global average pool,
Dense(10); softmax cross-entropy; L2 penalty ``l2reg * sum w^2`` on kernels; inputs grayscale in [-1, 1].
Per network: activation (relu / tanh: one population per activation), optimizer (adam / rmsprop / sgd with
Keras defaults: selected as data), learning rate log-U[5e-4, 5e-2], l2reg log-U[1e-8, 1e-2], dropout U[0, 0.7],
kernel init (glorot uniform, he normal, orthogonal, random normal, truncated normal; the last two with
init_std log-U[1e-3, 0.5]), zero biases, train fraction {0.1, 0.25, 0.5, 1}, batch 512. Ranges **unverified**
(docs/magep.md §10.1). Data: MNIST and Fashion-MNIST (full splits); CIFAR-10 grayscale from the official python
release's 50k train / 10k test splits when the data root holds ``cifar10/cifar-10-python.tar.gz`` (``python -m
common.data fetch cifar10``), else from the 10k test JPEGs split 8k/2k stratified (seed 0; documented deviation);
scikit-learn digits (1,797 8 x 8 images, split 1,437/360
stratified, seed 0, ink 0..16 mapped to [-1, 1] and upsampled 2x to 16 x 16 so three stride-2 VALID convs fit).

Training and evaluation use `nets.cnn_apply(..., conv="patches")`: each conv as patch extraction + one matmul,
the same function as lax.conv, but under `jax.vmap` over networks lax.conv becomes a grouped convolution that
is several times slower on CPU, while the matmul form batches over networks cleanly. Dropout masks are
`common.nets.hash_uniform` draws and each step's gradient is accumulated over micro-batches of
``CNN_MICRO_BATCH`` rows (docs/magep.md §10.1): implementation choices for speed, not part of the recipe.

SIREN zoo (Zhou et al.): one SIREN 2 -> 32 -> 32 -> c (w0 = 30) per image, pixel grid coordinates in [-1, 1]^2
(``coords[..., 0]`` = row, ``[..., 1]`` = column), targets scaled to [-1, 1], 5,000 full-grid Adam steps at lr
5e-5; init: first layer U(-1/n_in, 1/n_in), others U(-sqrt(6/n_in)/w0, sqrt(6/n_in)/w0), biases
U(-1/sqrt(n_in), 1/sqrt(n_in)) (PyTorch's Linear default, which the SIREN reference keeps). Stored weights are
the raw (W, b) of ``nets.siren_apply(ws, coords, w0=30)``; PSNR = 10 log10(2^2 / MSE) for the [-1, 1] range.
Fits visit the grid in data order (``shuffle=False``), and ``siren_apply`` uses the vectorised
`common.sine.sin` in a [units, pixels] layout: implementation choices for speed (docs/magep.md §10.2) that
change results only by float rounding.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from common import data as zoo_data
from common.nets import cnn_apply, siren_apply
from common.population import PopulationTask
from common.weight_space import WeightSpace

CNN_DATASETS = ("mnist", "fashion_mnist", "cifar10_gs", "digits")
CNN_ACTIVATIONS = ("relu", "tanh")
CNN_OPTIMIZERS = ("adam", "rmsprop", "sgd")
CNN_W_INITS = ("glorot_uniform", "he_normal", "orthogonal", "random_normal", "truncated_normal")
CNN_TRAIN_FRACTIONS = (0.1, 0.25, 0.5, 1.0)
CNN_WIDTHS = (1, 16, 16, 16, 10)
CNN_BATCH_SIZE = 512
CNN_MICRO_BATCH = 128  # rows per gradient pass (common.population.PopulationTask.micro_batch): faster on CPU
CNN_TRAIN_EVAL_ROWS = 10_000  # train metrics per checkpoint on at most this many rows of a model's subset
# Measured on MNIST, 16 networks, quiet 2-core machine: evaluation passes of 128 rows ran 2.1x faster than of 1,024
# (cache), and one model per step (chunk 1) trained ReLU networks 1.4x faster than chunks of 4 (21.2 vs 29.3 ms per
# model-step; Tanh: equal, 31 ms).
CNN_EVAL_BATCH = 128
CNN_CPU_CHUNK = 1
CNN_EPOCHS = 86
_ORIGINAL_MARKS = (20, 40, 60, 80)  # later checkpoints of the 86-epoch original, scaled with the run length

SIREN_DATASETS = ("mnist", "fashion_mnist", "cifar10")
SIREN_WIDTHS = (2, 32, 32)
SIREN_W0 = 30.0
SIREN_STEPS = 5000
SIREN_LEARNING_RATE = 5e-5


# ------------------------------------------------------------------------------------------------ CNN
def cnn_checkpoint_epochs(epochs: int) -> list[int]:
    """Checkpoint epochs like the original's 0, 1, 2, 3, 20, 40, 60, 80, 86, scaled to ``epochs``."""
    late = {round(m * epochs / CNN_EPOCHS) for m in _ORIGINAL_MARKS}
    return sorted({e for e in (0, 1, 2, 3) if e <= epochs} | late | {epochs})


def sample_cnn_configs(n: int, seed: int, dataset: str, epochs: int = CNN_EPOCHS,
                       batch_size: int = CNN_BATCH_SIZE) -> list[dict]:
    """``n`` network configurations drawn from the recipe's distributions, the activations balanced (model i of
    the draw gets activation i mod 2: the recipe's uniform choice without its sampling noise, so a zoo of ``n``
    networks holds ceil(n/2) ReLU and floor(n/2) Tanh networks), ordered by activation, then train
    fraction: a shard is then (mostly) one activation, one compiled population, and its members' epochs have
    (mostly) the same number of steps, so little lockstep time is wasted on finished members.

    Returns:
      dicts with model_id (0..n-1 in that order), dataset, activation, optimizer, learning_rate, l2reg,
      dropout, w_init, init_std, b_init, train_fraction, epochs, batch_size, seed.
    """
    rng = np.random.default_rng(seed)
    log_u = lambda lo, hi: float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    configs = [dict(dataset=dataset, activation=CNN_ACTIVATIONS[i % len(CNN_ACTIVATIONS)],
                    optimizer=str(rng.choice(CNN_OPTIMIZERS)), learning_rate=log_u(5e-4, 5e-2),
                    l2reg=log_u(1e-8, 1e-2), dropout=float(rng.uniform(0.0, 0.7)),
                    w_init=str(rng.choice(CNN_W_INITS)), init_std=log_u(1e-3, 0.5), b_init="zeros",
                    train_fraction=float(rng.choice(CNN_TRAIN_FRACTIONS)), epochs=int(epochs),
                    batch_size=batch_size, seed=int(rng.integers(2**31 - 1)))
               for i in range(n)]
    configs.sort(key=lambda c: (CNN_ACTIVATIONS.index(c["activation"]), c["train_fraction"]))
    return [{"model_id": i, **c} for i, c in enumerate(configs)]


def cnn_hparams(configs: list[dict]) -> dict[str, np.ndarray]:
    """Numeric hyperparameter arrays [P] of CNN configurations (names become indices)."""
    column = lambda k, dtype: np.asarray([c[k] for c in configs], dtype)
    return {"seed": column("seed", np.int32),
            "optimizer": np.asarray([CNN_OPTIMIZERS.index(c["optimizer"]) for c in configs], np.int32),
            "w_init": np.asarray([CNN_W_INITS.index(c["w_init"]) for c in configs], np.int32),
            **{k: column(k, np.float32) for k in ("train_fraction", "learning_rate", "l2reg", "dropout", "init_std")}}


def _gram_schmidt(a: jax.Array) -> jax.Array:
    """Orthonormal columns of a [m, n] (m >= n): the Q of a QR factorisation with positive diag(R).

    Modified Gram-Schmidt in plain XLA loops (the LAPACK QR custom call was seen to hang on CPU for 256 vmapped
    networks; unrolled in Python, the n(n-1)/2 projections took seconds to compile)."""

    def column(j, q):
        project = lambda i, v: v - jnp.dot(q[:, i], v) * q[:, i]
        v = jax.lax.fori_loop(0, j, project, a[:, j])
        return q.at[:, j].set(v / jnp.linalg.norm(v))

    return jax.lax.fori_loop(0, a.shape[1], column, jnp.zeros_like(a))


def _cnn_kernel(key, shape_oihw, scheme, std):
    """One kernel [out, in, (kh, kw)] by the init scheme index (all computed, one selected: scheme is data).

    One uniform draw per kernel feeds every candidate (only one is ever used): normal and 2-sigma truncated
    normal by the inverse CDF, as `jax.random` does, with Keras fans and scales (he_normal: truncated normal
    with std sqrt(2 / fan_in)); orthogonal by Gram-Schmidt (= QR) of the normal draw reshaped to [kh*kw*in, out].
    """
    keras_shape = shape_oihw[2:] + shape_oihw[1::-1]  # (kh, kw, in, out) / (in, out)
    receptive = int(np.prod(shape_oihw[2:]))
    fan_in, fan_out = receptive * shape_oihw[1], receptive * shape_oihw[0]
    u = jax.random.uniform(key, keras_shape, minval=-1.0 + 1e-7, maxval=1.0)
    normal = math.sqrt(2.0) * jax.scipy.special.erfinv(u)
    truncated = math.sqrt(2.0) * jax.scipy.special.erfinv(u * math.erf(math.sqrt(2.0)))
    flat = normal.reshape(-1, keras_shape[-1])
    tall = flat.shape[0] >= flat.shape[1]
    q = _gram_schmidt(flat if tall else flat.T)
    orthogonal = (q if tall else q.T).reshape(keras_shape)
    candidates = [u * math.sqrt(6.0 / (fan_in + fan_out)),  # glorot_uniform
                  truncated * math.sqrt(2.0 / fan_in) / 0.87962566103423978,  # he_normal
                  orthogonal, std * normal, std * truncated]
    w = jax.lax.select_n(scheme, *candidates)
    return w.transpose((3, 2, 0, 1)) if w.ndim == 4 else w.T


def init_cnn(key: jax.Array, hp: dict) -> WeightSpace:
    """One Small-CNN-Zoo network (widths 1-16-16-16-10) with ``hp["w_init"]``, ``hp["init_std"]``, zero biases."""
    keys = jax.random.split(key, len(CNN_WIDTHS) - 1)
    shapes = [(o, i, 3, 3) for i, o in zip(CNN_WIDTHS[:3], CNN_WIDTHS[1:4])] + [(CNN_WIDTHS[4], CNN_WIDTHS[3])]
    weights = tuple(_cnn_kernel(k, s, hp["w_init"], hp["init_std"]) for k, s in zip(keys, shapes))
    return WeightSpace(weights, tuple(jnp.zeros(s[0]) for s in shapes))


@functools.cache
def cnn_task(activation: str) -> PopulationTask:
    """The population task of Small-CNN-Zoo networks with one activation (batches: {"x": [B,H,W,1], "y": [B]}).

    Cached, so every population of one activation reuses one compiled program."""

    def loss(ws, hp, batch, key):
        logits = cnn_apply(ws, batch["x"], activation, conv="patches", dropout=hp["dropout"], dropout_key=key)
        penalty = hp["l2reg"] * sum(jnp.sum(w ** 2) for w in ws.weights)
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]), penalty

    def evaluate(ws, hp, batch):
        logits = cnn_apply(ws, batch["x"], activation, conv="patches")
        return {"loss": optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]),
                "accuracy": (jnp.argmax(logits, -1) == batch["y"]).astype(jnp.float32)}

    keras = dict(eps=1e-7)  # Keras defaults: Adam(0.9, 0.999, 1e-7), RMSprop(rho 0.9, eps 1e-7), plain SGD
    optimizers = (optax.scale_by_adam(**keras), optax.scale_by_rms(decay=0.9, eps_in_sqrt=False, **keras),
                  optax.identity())
    return PopulationTask(init_cnn, loss, evaluate, lambda hp, epoch: hp["learning_rate"], optimizers,
                          micro_batch=CNN_MICRO_BATCH, cpu_chunk=CNN_CPU_CHUNK)


def _stratified_split(labels: np.ndarray, test_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    test = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:test_per_class] for c in np.unique(labels)])
    mask = np.zeros(len(labels), bool)
    mask[test] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def cnn_dataset(name: str, data_dir=None) -> tuple[dict, dict, str]:
    """Train and test sets of a CNN zoo: ``{"x": float32 [N, H, W, 1] in [-1, 1], "y": int32 [N]}``.

    ``cifar10_gs``: the official python release's train / test splits when the data root holds it
    (`common.data.cifar10_python_available`), else the 8,000 / 2,000 split of the 10k test JPEGs.

    Returns:
      ``(train, test, note)``; ``note`` describes the split (stored in the zoo's layout).
    """
    if name in ("mnist", "fashion_mnist"):
        load = zoo_data.load_mnist if name == "mnist" else zoo_data.load_fashion_mnist
        (xtr, ytr), (xte, yte) = load("train", data_dir), load("test", data_dir)
        scale = lambda x: x.astype(np.float32) / 127.5 - 1.0
        pack = lambda x, y: {"x": scale(x)[..., None], "y": y.astype(np.int32)}
        return pack(xtr, ytr), pack(xte, yte), "official train / test splits"
    if name == "cifar10_gs" and zoo_data.cifar10_python_available(data_dir):
        (xtr, ytr), (xte, yte) = (zoo_data.load_cifar10(split, data_dir, grayscale=True) for split in ("train", "test"))
        pack = lambda x, y: {"x": x[..., None], "y": y.astype(np.int32)}
        note = f"official CIFAR-10 python release: {len(ytr):,} train / {len(yte):,} test"
        return pack(xtr, ytr), pack(xte, yte), note
    if name == "cifar10_gs":
        images, labels = zoo_data.load_cifar10_test(data_dir, grayscale=True)
        train, test = _stratified_split(labels, 200, seed=0)
        pack = lambda i: {"x": images[i][..., None], "y": labels[i].astype(np.int32)}
        return pack(train), pack(test), "CIFAR-10 test JPEGs only: 8,000 train / 2,000 test, stratified, seed 0"
    if name == "digits":
        images, labels = zoo_data.load_digits()
        x = np.repeat(np.repeat(images.astype(np.float32) / 8.0 - 1.0, 2, axis=1), 2, axis=2)[..., None]
        train, test = _stratified_split(labels, 36, seed=0)
        pack = lambda i: {"x": x[i], "y": labels[i].astype(np.int32)}
        note = "sklearn digits upsampled 2x to 16x16: 1,437 train / 360 test, stratified, seed 0"
        return pack(train), pack(test), note
    raise ValueError(f"dataset must be one of {CNN_DATASETS}, got {name!r}")


# ---------------------------------------------------------------------------------------------- SIREN
def siren_grid(height: int, width: int) -> np.ndarray:
    """Pixel-centre grid coordinates in [-1, 1]^2, row-major: float32 [height * width, 2] (row, column)."""
    rows, cols = np.meshgrid(np.linspace(-1, 1, height), np.linspace(-1, 1, width), indexing="ij")
    return np.stack([rows.ravel(), cols.ravel()], axis=-1).astype(np.float32)


def class_interleaved_order(labels: np.ndarray) -> np.ndarray:
    """Indices that visit the classes round-robin: the k-th image of every class (in the given order) before the
    (k+1)-th of any, classes in increasing label order, so every contiguous range of the result is stratified.

    Args:
      labels: int [n].
    Returns:
      int [n], a permutation of ``range(n)``.
    """
    labels = np.asarray(labels)
    by_class = np.argsort(labels, kind="stable")
    rank = np.empty(len(labels), np.int64)
    starts = np.searchsorted(labels[by_class], labels[by_class], side="left")
    rank[by_class] = np.arange(len(labels)) - starts  # position of each image within its class
    return np.lexsort((labels, rank))


def siren_images(dataset: str, split: str, count: int, offset: int = 0, data_dir=None) -> tuple[np.ndarray, np.ndarray]:
    """Images ``offset .. offset + count - 1`` of a split, scaled to [-1, 1].

    MNIST and Fashion-MNIST: the files' order. CIFAR-10 (its 10,000 test images, the only ones in the data
    folder, stored grouped by class): `class_interleaved_order`, so that any range, e.g. the first 3,000 for
    training SIRENs and the last 1,000 for test SIRENs, holds every class equally often.

    Returns:
      images float32 [count, H, W, c] (c = 1 for MNIST / Fashion-MNIST, 3 for CIFAR-10), labels int64 [count].
    """
    if dataset in ("mnist", "fashion_mnist"):
        load = zoo_data.load_mnist if dataset == "mnist" else zoo_data.load_fashion_mnist
        images, labels = load(split, data_dir)
        images = images[..., None]
    elif dataset == "cifar10":
        if split != "test":
            raise ValueError("split: only the CIFAR-10 test images exist in the data folder; use 'test'")
        images, labels = zoo_data.load_cifar10_test(data_dir)
        order = class_interleaved_order(labels)
        images, labels = images[order], labels[order]
    else:
        raise ValueError(f"dataset must be one of {SIREN_DATASETS}, got {dataset!r}")
    if offset + count > len(images):
        raise ValueError(f"offset + count = {offset + count} exceeds the {len(images)} {dataset} {split} images")
    sel = slice(offset, offset + count)
    return images[sel].astype(np.float32) / 127.5 - 1.0, labels[sel]


def init_siren(key: jax.Array, hp: dict, out_channels: int) -> WeightSpace:
    """SIREN 2 -> 32 -> 32 -> out_channels with the SIREN initialisation (module docstring)."""
    widths = SIREN_WIDTHS + (out_channels,)
    keys = jax.random.split(key, 2 * (len(widths) - 1))
    weights, biases = [], []
    for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:])):
        bound = 1.0 / n_in if i == 0 else math.sqrt(6.0 / n_in) / SIREN_W0
        weights.append(jax.random.uniform(keys[2 * i], (n_out, n_in), minval=-bound, maxval=bound))
        b = 1.0 / math.sqrt(n_in)
        biases.append(jax.random.uniform(keys[2 * i + 1], (n_out,), minval=-b, maxval=b))
    return WeightSpace(tuple(weights), tuple(biases))


@functools.cache
def siren_task(out_channels: int) -> PopulationTask:
    """Per-image SIREN fitting: ``hp["image"]`` [H*W, c] is the model's target; batches are
    ``{"coords": [B, 2], "pixel": [B]}`` rows of the grid; metric ``mse`` per pixel (mean over channels).
    Full-grid steps in grid order (``shuffle=False``: the loss is a mean over pixels, so order is rounding)."""

    def mse(ws, hp, batch):
        pred = siren_apply(ws, batch["coords"], w0=SIREN_W0)
        return jnp.mean((pred - hp["image"][batch["pixel"]]) ** 2, axis=-1)

    return PopulationTask(lambda key, hp: init_siren(key, hp, out_channels),
                          lambda ws, hp, batch, key: (mse(ws, hp, batch), jnp.zeros(())),
                          lambda ws, hp, batch: {"mse": mse(ws, hp, batch)},
                          lambda hp, epoch: hp["learning_rate"], (optax.scale_by_adam(),), shuffle=False)


def psnr(mse: np.ndarray) -> np.ndarray:
    """PSNR in dB of targets in [-1, 1] (peak-to-peak 2)."""
    return 10.0 * np.log10(4.0 / np.asarray(mse, np.float64))
