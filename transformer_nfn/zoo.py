"""Small Transformer Zoo recipe (docs/transformer_nfn.md §1, §7): generation, loading and command line.

    python -m transformer_nfn.zoo --dataset mnist|ag_news --models N --epochs E --out DIR
                                  [--train-limit n] [--test-limit n]

Model: the zoo transformer (2 pre-LN blocks without residuals, D 32, h 2, Dk = Dv = 16, DA 64), final LN, mean
pool, fc1 32 -> 32, ReLU, fc2; weights truncated normal (std = w_init_std), zero biases, seed 3 for every run
(so every run has the same init noise and data order, as in the recipe). Dropout (train only) on the embedded
tokens and on the pooled features (the recipe does not say where; a library choice). Training: 10% of the
epochs linear warm-up from lr/10, then cosine decay to 1e-5; batch 128; PyTorch-style coupled weight decay
(``wd * w`` added to every gradient); optimizers with PyTorch defaults (Adam; RMSprop alpha 0.99; SGD; SGD
momentum 0.9), selected per run as data in one population. Runs are sampled without replacement from the spec's
16,000-run grid. Checkpoints at the recipe's epochs 1, 50, 75, 100 scaled to ``--epochs``; the recipe's "best
on test accuracy" checkpoint is not kept (it leaks the test set).

MNIST: inputs (x - 0.5) / 0.5, RandomCrop(28, padding 2) at train time (padding at the background value),
patch embedding Conv2d(1 -> 32, 4, stride 4) -> 49 tokens, 10 classes.

AG News: word2vec is not available, so the embedding is a **frozen table shared by all runs**, as in the recipe
(which shares frozen word2vec vectors): built once from the training sample (whitespace tokens of the
normalized descriptions with count >= 2; PPMI of +-4-token co-occurrences, 32-d randomized truncated SVD, seed 0),
stored in the zoo folder (``token_embedding.npy``, ``vocabulary.json``) and hashed in ``layout.json``; a shared
frozen table keeps the stored weights comparable across runs and out of the NFN's input. Id 0 is padding and
out-of-vocabulary (a zero row); sequences are cut / padded to 128 tokens; no attention mask (as in the
recipe); 4 classes. Train: ``train_sample_8000.csv`` minus descriptions also in the test split; test:
``test.csv``.
"""
from __future__ import annotations

import argparse
import collections
import hashlib
import itertools
import json
import math
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.sparse

from common import data as zoo_data
from common import zoo_store
from common.cli import add_compile_arguments, configure_compiles, non_negative_int, positive_int
from common.population import PopulationTask, train_population
from transformer_nfn import nets
from transformer_nfn.weights import TransformerSpec, TransformerWeights

__all__ = ["ZOO_SPEC", "CHECKPOINT_FRACTIONS", "sample_transformer_configs", "transformer_checkpoint_epochs",
           "transformer_dataset", "build_token_embedding", "transformer_task", "transformer_hparams", "random_crop",
           "generate_transformer_zoo", "load_transformer_zoo", "load_token_embedding", "main"]

ZOO_SPEC = TransformerSpec(num_blocks=2, num_heads=2, d_model=32, d_k=16, d_v=16, d_ffn=64)
DATASETS = {"mnist": 10, "ag_news": 4}  # number of classes
OPTIMIZERS = ("adam", "rmsprop", "sgd", "sgd_momentum")
FAMILIES = {
    "adaptive": (("adam", "rmsprop"), (3e-4, 5e-4, 1e-3, 3e-3, 5e-3, 1e-2, 3e-2, 5e-2), (0.1, 0.2, 0.3, 0.4, 0.5)),
    "sgd": (("sgd", "sgd_momentum"), (1e-3, 3e-3, 5e-3, 7e-3, 1e-2, 3e-2, 5e-2, 7e-2), (0.1, 0.15, 0.2, 0.25, 0.3)),
}
WEIGHT_DECAYS = (1e-8, 1e-7, 1e-6, 1e-4, 1e-2)
TRAIN_FRACTIONS = (1.0, 0.9, 0.8, 0.7)
DROPOUTS = (0.0, 0.05, 0.1, 0.15, 0.2)
EPOCHS, BATCH_SIZE, SEED, MAX_TOKENS, FINAL_LR = 100, 128, 3, 128, 1e-5
# models stepped together on one CPU device: one, unbatched (vmapping 4 batches every matmul with its weights:
# 20 against 15 ms per model-step on MNIST, benchmarks/results/tnfn_zoo_throughput.md)
CPU_CHUNK = 1
TRAIN_EVAL_ROWS = 2_000  # train metrics per checkpoint on at most this many rows of a run's subset (a uniform sample)
CHECKPOINT_FRACTIONS = (0.01, 0.5, 0.75, 1.0)  # the recipe's checkpoints: epochs 1, 50, 75, 100 of 100


def transformer_checkpoint_epochs(epochs: int, fractions: Sequence[float] = CHECKPOINT_FRACTIONS) -> list[int]:
    """The checkpoint epochs at ``fractions`` of ``epochs`` (default the recipe's 1, 50, 75, 100 of 100; at
    least 1 each)."""
    if not fractions or any(not 0 < f <= 1 for f in fractions):
        raise ValueError(f"fractions must be a non-empty list of numbers in (0, 1], got {list(fractions)}")
    return sorted({max(1, round(f * epochs)) for f in fractions})


def sample_transformer_configs(n: int, seed: int, dataset: str, epochs: int = EPOCHS) -> list[dict]:
    """``n`` distinct runs drawn uniformly from the 16,000-run grid (8,000 per optimizer family).

    Returns:
      dicts with model_id, dataset, family, optimizer, learning_rate, w_init_std, weight_decay, train_fraction,
      dropout, epochs, batch_size, seed (3), n_classes.
    """
    grid = [dict(family=f, optimizer=o, learning_rate=lr, w_init_std=s, weight_decay=wd, train_fraction=tf, dropout=d)
            for f, (opts, lrs, stds) in FAMILIES.items()
            for o, lr, s, wd, tf, d in itertools.product(opts, lrs, stds, WEIGHT_DECAYS, TRAIN_FRACTIONS, DROPOUTS)]
    if n > len(grid):
        raise ValueError(f"n: the grid has {len(grid)} runs, asked for {n}")
    picks = np.random.default_rng(seed).choice(len(grid), n, replace=False)
    return [{"model_id": i, "dataset": dataset, **grid[j], "epochs": epochs, "batch_size": BATCH_SIZE, "seed": SEED,
             "n_classes": DATASETS[dataset]} for i, j in enumerate(picks)]


def transformer_hparams(configs: Sequence[dict]) -> dict[str, np.ndarray]:
    """The population hyperparameters ``{name: [P]}`` of `common.population.train_population` for ``configs``."""
    column = lambda k: np.asarray([c[k] for c in configs], np.float32)
    return {"seed": np.asarray([c["seed"] for c in configs], np.int32),
            "optimizer": np.asarray([OPTIMIZERS.index(c["optimizer"]) for c in configs], np.int32),
            **{k: column(k) for k in ("train_fraction", "learning_rate", "w_init_std", "weight_decay", "dropout",
                                      "epochs")}}


# ------------------------------------------------------------------------------------------------ data
def build_token_embedding(texts: Sequence[str], dim: int = 32, min_count: int = 2, window: int = 4,
                          seed: int = 0) -> tuple[list[str], np.ndarray]:
    """Frozen token table from PPMI co-occurrences (+-``window`` tokens) and a randomized truncated SVD.

    Returns:
      ``(vocabulary, table)``: tokens with count >= ``min_count`` by descending count (ties alphabetical);
      table float32 [len(vocabulary) + 1, dim], row 0 zeros (padding / unknown), row i+1 = vocabulary[i],
      rows scaled to norm sqrt(dim) (unit mean square per coordinate, like the positional encoding's scale).
    """
    docs = [t.split() for t in texts]
    counts = collections.Counter(itertools.chain.from_iterable(docs))
    vocabulary = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
    index = {w: i for i, w in enumerate(vocabulary)}
    rows, cols = [], []
    for doc in docs:
        ids = np.asarray([index.get(w, -1) for w in doc])
        for off in range(1, window + 1):
            a, b = ids[:-off], ids[off:]
            ok = (a >= 0) & (b >= 0)
            rows += [a[ok], b[ok]]
            cols += [b[ok], a[ok]]
    v = len(vocabulary)
    r, c = np.concatenate(rows), np.concatenate(cols)
    co = scipy.sparse.coo_matrix((np.ones(len(r)), (r, c)), shape=(v, v)).tocsr()
    co.sum_duplicates()
    total, marginal = co.sum(), np.asarray(co.sum(axis=1)).ravel()
    co = co.tocoo()
    pmi = np.log(co.data * total / (marginal[co.row] * marginal[co.col]))
    keep = pmi > 0
    ppmi = scipy.sparse.csr_matrix((pmi[keep], (co.row[keep], co.col[keep])), shape=(v, v))
    from sklearn.utils.extmath import randomized_svd  # scikit-learn is imported only by this function

    u, s, _ = randomized_svd(ppmi, dim, n_iter=7, random_state=seed)
    vectors = u * np.sqrt(s)
    vectors *= np.sign(vectors[np.argmax(np.abs(vectors), axis=0), np.arange(dim)])  # deterministic signs
    vectors *= math.sqrt(dim) / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return vocabulary, np.vstack([np.zeros((1, dim)), vectors]).astype(np.float32)


def _token_ids(texts: Sequence[str], vocabulary: Sequence[str]) -> np.ndarray:
    index = {w: i + 1 for i, w in enumerate(vocabulary)}
    ids = np.zeros((len(texts), MAX_TOKENS), np.int32)
    for n, text in enumerate(texts):
        tokens = [index.get(w, 0) for w in text.split()[:MAX_TOKENS]]
        ids[n, :len(tokens)] = tokens
    return ids


def transformer_dataset(name: str, data_dir=None, train_limit: int | None = None,
                        test_limit: int | None = None) -> tuple[dict, dict, dict]:
    """Train and test sets ``{"x": ..., "y": int32 [N]}`` and extras of a transformer zoo.

    ``x`` is float32 [N, 28, 28, 1] in [-1, 1] (MNIST) or int32 token ids [N, 128] (AG News). The limits keep
    the first rows (tiny slices for tests; the AG News vocabulary always comes from the whole training sample).

    Returns:
      ``(train, test, extras)``; extras: ``note`` (the split), and for AG News ``vocabulary`` and
      ``token_embedding`` [V + 1, 32].
    """
    if name == "mnist":
        pack = lambda x, y: {"x": (x.astype(np.float32) / 127.5 - 1.0)[..., None], "y": y.astype(np.int32)}
        train, test = pack(*zoo_data.load_mnist("train", data_dir)), pack(*zoo_data.load_mnist("test", data_dir))
        extras = {"note": "MNIST official train / test"}
    elif name == "ag_news":
        ytr, ttr = zoo_data.load_ag_news("train", data_dir)
        yte, tte = zoo_data.load_ag_news("test", data_dir)
        vocabulary, table = build_token_embedding(ttr)
        train = {"x": _token_ids(ttr, vocabulary), "y": ytr.astype(np.int32)}
        test = {"x": _token_ids(tte, vocabulary), "y": yte.astype(np.int32)}
        extras = {"note": "train_sample_8000.csv minus test duplicates / test.csv", "vocabulary": vocabulary,
                  "token_embedding": table}
    else:
        raise ValueError(f"dataset must be one of {sorted(DATASETS)}, got {name!r}")
    cut = lambda d, n: d if n is None else {k: v[:n] for k, v in d.items()}
    return cut(train, train_limit), cut(test, test_limit), extras


# ----------------------------------------------------------------------------------------------- model
def random_crop(images, key, pad=2):
    """RandomCrop(H, padding=pad) per image of [B, H, W, C], padding at the background value -1."""
    b, h, w, _ = images.shape
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=-1.0)
    offsets = jax.random.randint(key, (b, 2), 0, 2 * pad + 1)
    crop = lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, img.shape[-1]))
    return jax.vmap(crop)(padded, offsets)


def _learning_rate(hp, epoch):
    """Linear warm-up over 10% of the epochs from lr/10 to lr, then cosine decay to 1e-5."""
    lr, total = hp["learning_rate"], hp["epochs"]
    warm = jnp.maximum(1.0, 0.1 * total)
    rise = lr / 10 + (lr - lr / 10) * epoch / warm
    t = jnp.clip((epoch - warm) / jnp.maximum(total - warm, 1.0), 0.0, 1.0)
    return jnp.where(epoch < warm, rise, FINAL_LR + 0.5 * (lr - FINAL_LR) * (1 + jnp.cos(jnp.pi * t)))


def transformer_task(dataset: str, token_embedding: np.ndarray | None = None) -> PopulationTask:
    """The population task of zoo transformers on ``dataset`` (batches ``{"x", "y"}`` of `transformer_dataset`)."""
    n_classes, images = DATASETS[dataset], dataset == "mnist"
    table = None if token_embedding is None else jnp.asarray(token_embedding)

    def init(key, hp):
        return nets.init_weights(key, ZOO_SPEC, n_classes, w_init_std=hp["w_init_std"], patch_size=4,
                                 in_channels=1 if images else None)

    def loss(tw, hp, batch, key):
        x = random_crop(batch["x"], jax.random.fold_in(key, 2)) if images else batch["x"]
        logits = nets.classifier_apply(tw, x, table, dropout=hp["dropout"], dropout_key=key)
        penalty = 0.5 * hp["weight_decay"] * sum(jnp.sum(p ** 2) for p in jax.tree.leaves(tw))
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]), penalty

    def evaluate(tw, hp, batch):
        logits = nets.classifier_apply(tw, batch["x"], table)
        return {"loss": optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]),
                "accuracy": (jnp.argmax(logits, -1) == batch["y"]).astype(jnp.float32)}

    optimizers = (optax.scale_by_adam(eps=1e-8), optax.scale_by_rms(decay=0.99, eps=1e-8, eps_in_sqrt=False),
                  optax.identity(), optax.trace(decay=0.9))
    return PopulationTask(init, loss, evaluate, _learning_rate, optimizers, cpu_chunk=CPU_CHUNK)


def _template(dataset: str) -> TransformerWeights:
    return jax.eval_shape(lambda: nets.init_weights(jax.random.key(0), ZOO_SPEC, DATASETS[dataset],
                                                    in_channels=1 if dataset == "mnist" else None))


# ------------------------------------------------------------------------------------ generation, loading
TOKEN_EMBEDDING_FILE, VOCABULARY_FILE = "token_embedding.npy", "vocabulary.json"


def _started(zoo_dir: str) -> bool:
    """Whether a zoo was started in ``zoo_dir`` (its ``layout.json`` exists)."""
    return os.path.exists(os.path.join(zoo_dir, zoo_store.LAYOUT_FILE))


def resumed_token_embedding(zoo_dir: str, table: np.ndarray) -> np.ndarray:
    """The token table [V + 1, D] to train the rest of a zoo with: the one stored in ``zoo_dir`` when the zoo
    was started there (its ``layout.json`` exists) and that table equals ``table`` up to float rounding, else
    ``table``.

    The table comes out of a randomized SVD whose last bits depend on the BLAS's thread count (4.7e-10 apart
    between a process with one OpenBLAS thread and one with two), so a resumed zoo must not recompute it: its
    shards would train on other bits and its settings hash (`generate_transformer_zoo`) would no longer match.
    A table that differs beyond rounding is returned as is, and the settings check then refuses the folder.
    """
    path = os.path.join(zoo_dir, TOKEN_EMBEDDING_FILE)
    if not (_started(zoo_dir) and os.path.exists(path)):
        return table
    stored = np.load(path)
    same = stored.shape == table.shape and np.allclose(stored, table, rtol=1e-5, atol=1e-6)
    return stored if same else table


def generate_transformer_zoo(out_dir: str, dataset: str, n_models: int, *, epochs: int = EPOCHS,
                             shard_size: int = 64, seed: int = 0, train_limit: int | None = None,
                             test_limit: int | None = None, data_dir=None, progress: bool = True,
                             share: bool = False,
                             checkpoint_fractions: Sequence[float] = CHECKPOINT_FRACTIONS) -> list[dict]:
    """Train (or resume) a Small-Transformer-Zoo-style zoo of ``n_models`` runs into ``out_dir`` (``share``: together
    with other processes doing the same, each training the shards nobody holds: `common.zoo_store.generate_zoo`).

    ``checkpoint_fractions``: the epoch fractions whose weights and metrics are stored (default the recipe's four;
    a study that reads one checkpoint can keep only that one, a quarter of the storage).

    Returns:
      The metadata rows (one per run checkpoint): config, epoch, train/test loss and accuracy.
    """
    train, test, extras = transformer_dataset(dataset, data_dir, train_limit, test_limit)
    table = extras.get("token_embedding")
    settings = {"dataset": dataset, "split": extras["note"], "models": n_models, "epochs": epochs, "seed": seed,
                "shard_size": shard_size, "train_rows": len(train["y"]), "test_rows": len(test["y"]),
                "checkpoint_epochs": transformer_checkpoint_epochs(epochs, checkpoint_fractions),
                "n_classes": DATASETS[dataset],
                "attention_mask": "none", "spec": vars(ZOO_SPEC), "train_eval_rows": TRAIN_EVAL_ROWS}
    if table is not None:
        os.makedirs(out_dir, exist_ok=True)
        table = resumed_token_embedding(out_dir, table)
        settings["token_embedding_sha256"] = hashlib.sha256(table.tobytes()).hexdigest()
        if not _started(out_dir):  # a resumed zoo keeps its files
            zoo_store.atomic_write(os.path.join(out_dir, TOKEN_EMBEDDING_FILE), lambda f: np.save(f, table))
            zoo_store.atomic_write(os.path.join(out_dir, VOCABULARY_FILE),
                                   lambda f: json.dump(extras["vocabulary"], f), "w")
    layout = {"kind": "transformer", "recipe": "small_transformer_zoo",
              "leaves": zoo_store.leaf_layout(_template(dataset)), "settings": settings}
    task = transformer_task(dataset, table)

    def train_shard(shard):
        ckpts = train_population(task, transformer_hparams(shard), train, test, epochs=epochs, batch_size=BATCH_SIZE,
                                 checkpoint_epochs=settings["checkpoint_epochs"], train_eval_rows=TRAIN_EVAL_ROWS,
                                 progress=progress, desc=f"transformers x{len(shard)}")
        kept = [c for c in ckpts if c.epoch in settings["checkpoint_epochs"]]  # the trainer also records the last
        return zoo_store.checkpoint_rows(shard, kept)

    configs = sample_transformer_configs(n_models, seed, dataset, epochs)
    return zoo_store.generate_zoo(out_dir, layout, configs, shard_size, train_shard, progress, share=share)


def load_transformer_zoo(zoo_dir: str, split: str | None = None, *, target: str = "test_accuracy",
                         **options) -> tuple[TransformerWeights, np.ndarray, list[dict]]:
    """Batched `TransformerWeights` [R, ...], targets [R] and rows of a transformer zoo.

    Args:
      split: ``"train"``/``"val"``/``"test"`` by model id, or None; ``options``: ``fractions``, ``seed`` and the
        filters of `common.zoo_store.select_rows` (``epochs``, ``where``, ``min_accuracy``).
    """
    weights, rows, layout = zoo_store.load_zoo(zoo_dir)
    if layout["kind"] != "transformer":
        raise ValueError(f"zoo_dir {zoo_dir} holds a {layout['kind']!r} zoo, not a transformer zoo")
    return zoo_store.select_weights(weights, rows, _template(layout["settings"]["dataset"]), split, target=target,
                                    **options)


def load_token_embedding(zoo_dir: str) -> tuple[list[str], np.ndarray]:
    """The frozen ``(vocabulary, table [V + 1, 32])`` of an AG News transformer zoo."""
    with open(os.path.join(zoo_dir, VOCABULARY_FILE)) as f:
        vocabulary = json.load(f)
    return vocabulary, np.load(os.path.join(zoo_dir, TOKEN_EMBEDDING_FILE))


def main(argv: Sequence[str] | None = None) -> None:
    """Command line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m transformer_nfn.zoo", description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=sorted(DATASETS), required=True)
    parser.add_argument("--models", type=positive_int, required=True)
    parser.add_argument("--epochs", type=positive_int, default=EPOCHS)
    parser.add_argument("--out", required=True)
    parser.add_argument("--shard-size", type=positive_int, default=64)
    parser.add_argument("--seed", type=non_negative_int, default=0, help="grid sampling seed (the runs' own seed is 3)")
    parser.add_argument("--train-limit", type=positive_int, default=None, help="use the first n training rows")
    parser.add_argument("--test-limit", type=positive_int, default=None, help="use the first n test rows")
    parser.add_argument("--data-dir", default=None, help="data root (default $NFN_DATA_DIR)")
    parser.add_argument("--checkpoint-fractions", type=float, nargs="+", default=list(CHECKPOINT_FRACTIONS),
                        help="epoch fractions whose weights are stored (default the recipe's)")
    parser.add_argument("--share", action="store_true",
                        help="cooperate with other processes given --share on the same --out (one per core or host)")
    add_compile_arguments(parser)
    args = parser.parse_args(argv)
    configure_compiles(args)
    rows = generate_transformer_zoo(args.out, args.dataset, args.models, epochs=args.epochs,
                                    shard_size=args.shard_size, seed=args.seed, train_limit=args.train_limit,
                                    test_limit=args.test_limit, data_dir=args.data_dir, share=args.share,
                                    checkpoint_fractions=args.checkpoint_fractions)
    last = max(r["epoch"] for r in rows)  # the last stored checkpoint
    final = [r for r in rows if r["epoch"] == last]
    print(zoo_store.describe(final, "test_accuracy", ("family", "optimizer")))


if __name__ == "__main__":
    main()
