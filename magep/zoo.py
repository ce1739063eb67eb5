"""Generate Small-CNN-Zoo and SIREN zoos (recipes in `magep.zoo_recipes`, storage in `common.zoo_store`).

    python -m magep.zoo cnn   --dataset digits|mnist|fashion_mnist|cifar10_gs --models N --epochs E --out DIR
    python -m magep.zoo siren --dataset mnist|fashion_mnist|cifar10 --models N [--split train|test]
                              [--epochs STEPS] --out DIR

A rerun with the same arguments resumes after the last stored shard. Load a zoo with
`common.zoo_store.load_weight_space_zoo` (targets e.g. ``test_accuracy`` for CNNs, ``label`` for SIRENs).
"""
from __future__ import annotations

import argparse
import itertools
from collections.abc import Sequence

import jax
import numpy as np

from common import zoo_store
from common.cli import add_compile_arguments, configure_compiles, non_negative_int, positive_float, positive_int
from common.population import train_population
from magep import zoo_recipes as recipes

__all__ = ["generate_cnn_zoo", "generate_siren_zoo", "summary", "main"]


def generate_cnn_zoo(out_dir: str, dataset: str, n_models: int, *, epochs: int = recipes.CNN_EPOCHS,
                     shard_size: int = 64, seed: int = 0, batch_size: int = recipes.CNN_BATCH_SIZE,
                     data_dir=None, progress: bool = True) -> list[dict]:
    """Train (or resume) a Small-CNN-Zoo-style zoo of ``n_models`` networks into ``out_dir``.

    Every model gets the checkpoints `recipes.cnn_checkpoint_epochs` (``epochs``), each with its test metrics
    (whole test set) and train metrics (at most `recipes.CNN_TRAIN_EVAL_ROWS` rows of its training subset: on
    MNIST, evaluating the whole subset cost more than half of the checkpoint evaluations); a shard of
    ``shard_size`` models is one population per activation.

    Returns:
      The metadata rows (one per model checkpoint): config, epoch, train/test loss and accuracy.
    """
    train, test, note = recipes.cnn_dataset(dataset, data_dir)
    configs = recipes.sample_cnn_configs(n_models, seed, dataset, epochs, batch_size)
    marks = recipes.cnn_checkpoint_epochs(epochs)
    template = jax.eval_shape(recipes.init_cnn, jax.random.key(0), {"w_init": 0, "init_std": 0.1})
    layout = {"kind": "weight_space", "recipe": "small_cnn_zoo", "leaves": zoo_store.leaf_layout(template),
              "settings": {"dataset": dataset, "split": note, "models": n_models, "epochs": epochs, "seed": seed,
                           "shard_size": shard_size, "batch_size": batch_size, "checkpoint_epochs": marks,
                           "train_eval_rows": recipes.CNN_TRAIN_EVAL_ROWS}}

    def train_shard(shard):
        parts = []
        for activation, group in itertools.groupby(shard, key=lambda c: c["activation"]):
            group = list(group)
            ckpts = train_population(recipes.cnn_task(activation), recipes.cnn_hparams(group), train, test,
                                     epochs=epochs, batch_size=batch_size, checkpoint_epochs=marks,
                                     train_eval_rows=recipes.CNN_TRAIN_EVAL_ROWS,
                                     eval_batch_size=recipes.CNN_EVAL_BATCH,
                                     progress=progress, desc=f"{activation} x{len(group)}")
            parts.append(zoo_store.checkpoint_rows(group, ckpts))
        return np.concatenate([w for w, _ in parts]), [r for _, rows in parts for r in rows]

    return zoo_store.generate_zoo(out_dir, layout, configs, shard_size, train_shard, progress)


def generate_siren_zoo(out_dir: str, dataset: str, n_models: int, *, split: str = "train", offset: int = 0,
                       steps: int = recipes.SIREN_STEPS, learning_rate: float = recipes.SIREN_LEARNING_RATE,
                       shard_size: int = 256, seed: int = 0, data_dir=None, progress: bool = True) -> list[dict]:
    """Fit (or resume) one SIREN per image ``offset .. offset + n_models - 1`` of ``dataset``/``split``.

    Returns:
      The metadata rows: model_id, image_index, label, seed, learning_rate, steps, epoch (= steps), mse, psnr.
    """
    images, labels = recipes.siren_images(dataset, split, n_models, offset, data_dir)
    h, w, c = images.shape[1:]
    grid = {"coords": recipes.siren_grid(h, w), "pixel": np.arange(h * w, dtype=np.int32)}
    seeds = np.random.default_rng(seed).integers(2**31 - 1, size=n_models)
    configs = [{"model_id": i, "dataset": dataset, "split": split, "image_index": offset + i, "label": int(labels[i]),
                "seed": int(seeds[i]), "learning_rate": learning_rate, "steps": steps} for i in range(n_models)]
    task = recipes.siren_task(c)
    template = jax.eval_shape(task.init, jax.random.key(0), {})
    layout = {"kind": "weight_space", "recipe": "siren", "leaves": zoo_store.leaf_layout(template),
              "settings": {"dataset": dataset, "split": split, "offset": offset, "models": n_models, "steps": steps,
                           "learning_rate": learning_rate, "seed": seed, "shard_size": shard_size,
                           "w0": recipes.SIREN_W0, "pixel_scale": "[-1, 1]", "coords": "[-1, 1]^2 (row, column)"}}

    def train_shard(shard):
        idx = np.asarray([s["image_index"] - offset for s in shard])
        hp = {"seed": np.asarray([s["seed"] for s in shard], np.int32), "optimizer": np.zeros(len(shard), np.int32),
              "train_fraction": np.ones(len(shard), np.float32),
              "learning_rate": np.full(len(shard), learning_rate, np.float32),
              "image": images[idx].reshape(len(shard), h * w, c)}
        ckpts = train_population(task, hp, grid, grid, epochs=steps, batch_size=h * w, progress=progress,
                                 desc=f"SIREN x{len(shard)}")
        weights, rows = zoo_store.checkpoint_rows(shard, ckpts)
        for row in rows:
            mse = row.pop("test_mse")
            del row["train_mse"]
            row.update(mse=mse, psnr=float(recipes.psnr(mse)))
        return weights, rows

    return zoo_store.generate_zoo(out_dir, layout, configs, shard_size, train_shard, progress)


def summary(rows: Sequence[dict], kind: str) -> str:
    """End-of-run summary: final-checkpoint accuracy by activation and optimizer (CNN), PSNR (SIREN)."""
    if kind == "cnn":
        last = max(int(r["epoch"]) for r in rows)
        final = [r for r in rows if int(r["epoch"]) == last]
        return "\n\n".join([zoo_store.describe(final, "test_accuracy", ("activation",)),
                            zoo_store.describe(final, "test_accuracy", ("activation", "optimizer"))])
    return "\n\n".join([zoo_store.describe(rows, "psnr"), zoo_store.describe(rows, "psnr", ("label",))])


def main(argv: Sequence[str] | None = None) -> None:
    """Command line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m magep.zoo", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="kind", required=True)
    cnn = sub.add_parser("cnn", help="Small CNN Zoo recipe")
    cnn.add_argument("--dataset", choices=recipes.CNN_DATASETS, required=True)
    cnn.add_argument("--epochs", type=positive_int, default=recipes.CNN_EPOCHS)
    cnn.add_argument("--batch-size", type=positive_int, default=recipes.CNN_BATCH_SIZE)
    cnn.add_argument("--shard-size", type=positive_int, default=64)
    siren = sub.add_parser("siren", help="one SIREN per image")
    siren.add_argument("--dataset", choices=recipes.SIREN_DATASETS, required=True)
    siren.add_argument("--split", choices=("train", "test"), default="train")
    siren.add_argument("--offset", type=non_negative_int, default=0, help="index of the first image")
    siren.add_argument("--epochs", type=positive_int, default=recipes.SIREN_STEPS, help="full-grid Adam steps")
    siren.add_argument("--lr", type=positive_float, default=recipes.SIREN_LEARNING_RATE)
    siren.add_argument("--shard-size", type=positive_int, default=256)
    for p in (cnn, siren):
        p.add_argument("--models", type=positive_int, required=True)
        p.add_argument("--out", required=True)
        p.add_argument("--seed", type=non_negative_int, default=0)
        p.add_argument("--data-dir", default=None, help="data root (default $NFN_DATA_DIR)")
        add_compile_arguments(p)
    args = parser.parse_args(argv)
    configure_compiles(args)
    if args.kind == "cnn":
        rows = generate_cnn_zoo(args.out, args.dataset, args.models, epochs=args.epochs, shard_size=args.shard_size,
                                seed=args.seed, batch_size=args.batch_size, data_dir=args.data_dir)
    else:
        rows = generate_siren_zoo(args.out, args.dataset, args.models, split=args.split, offset=args.offset,
                                  steps=args.epochs, learning_rate=args.lr, shard_size=args.shard_size,
                                  seed=args.seed, data_dir=args.data_dir)
    print(summary(rows, args.kind))


if __name__ == "__main__":
    main()
