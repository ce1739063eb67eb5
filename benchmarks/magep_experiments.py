"""MAGEP-NFN experiments on zoos generated here (docs/magep.md §9-§10).

    python -m benchmarks.magep_experiments generalization [--datasets mnist fashion_mnist cifar10_gs]
        [--methods magep monomial np hnp statnn mlp] [--models N] [--zoo-epochs [DATASET=]E ...] [--seeds S]
        [--quick] [--out DIR]
    python -m benchmarks.magep_experiments inr-classification [--datasets mnist fashion_mnist cifar10]
        [--methods magep monomial np hnp mlp] [--inrs N] [--test-inrs N] [--fit-steps S] [--steps S] [--seeds S]
        [--quick] [--out DIR]      (`benchmarks.magep_inr`)
    python -m benchmarks.magep_experiments inr-editing [--datasets mnist cifar10] [--methods magep monomial np hnp mlp]
        [--inrs N] [--test-inrs N] [--fit-steps S] [--steps S] [--seeds S] [--quick] [--out DIR]
                                   (`benchmarks.magep_inr_editing`)

``generalization`` (§9.1): CNN zoos (Small CNN Zoo recipe, `magep.zoo`) per dataset, split by network id (last 50%
test, first 50% split 80/20 train/validation, as the authors' code), one predictor per method, activation subset
(ReLU: "positive" group; Tanh: "sign"), augmentation and seed, trained with BCE (Adam 1e-3, batch 8) through
`common.training.fit` and kept at its best validation Kendall tau; reported: test tau, mean and std over seeds.
Augmentations: "none"; "k1".."k4" (ReLU: every split gets one permuted-and-scaled copy per network, d ~ U[1, 10^k]);
"sign" (Tanh: one permuted and sign-flipped copy).

Every stage resumes: the zoo shards, every training run (checkpoints and its best-validation model) and every
finished cell (``result.json``) are kept under ``--work`` (default ``<out>/magep_runs``); a rerun skips what is done.
The un-augmented cells of every activation run first. Kept in git: the finished cells' ``result.json``, each
dataset's zoo summary (``runs/<dataset>/summary.json``) and the final checkpoints of its zoo
(``zoos/<dataset>_cnn_final``, `final_zoo`: what the cells read); the full zoos and the training checkpoints stay
local. A later session or another machine goes on without regenerating a zoo, and a dataset whose cells are all
done is reported without one (`benchmarks.studies.study_inputs`). Several processes may run the same command at
once, each taking the next cell nobody holds (`benchmarks.studies.run_cells`).
Results: ``<out>/magep_generalization.{json,md}`` and figures ``magep_generalization_scatter.png`` (predicted vs
true accuracy per method) and ``magep_generalization_augmentation.png`` (tau against k, one line per method).
"""
from __future__ import annotations

import argparse
import os
import time
import zlib
from collections.abc import Sequence

import jax
import numpy as np
import optax
from flax import nnx

from benchmarks import harness, magep_inr, magep_inr_editing, studies
from common import zoo_store
from common.cli import add_compile_arguments, configure_compiles, positive_int
from common.accuracy_prediction import kendall_tau, predict_logits
from common.training import trainable_parameters
from magep import GeneralizationPredictor
from magep.baselines import standardization_stats, standardize
from magep.train import augment_with_group, train_generalization_predictor, zoo_features
from magep.zoo import generate_cnn_zoo

DEFAULT_OUT = "benchmarks/results"
DATASETS = ("mnist", "fashion_mnist", "cifar10_gs", "digits")
METHODS = ("magep", "monomial", "np", "hnp", "statnn", "mlp")
LABELS = {"magep": "MAGEP-NFN", "monomial": "Monomial-NFN", "np": "NP", "hnp": "HNP", "statnn": "STATNN",
          "mlp": "MLP"}
STANDARDIZED = ("np",)  # methods whose inputs are standardised (np_inv's normalize: true, docs/magep.md §8)
SCALING = {"relu": "positive", "tanh": "sign"}
AUGMENTATIONS = {"relu": ("none", "k1", "k2", "k3", "k4"), "tanh": ("none", "sign")}
SPLIT_FRACTIONS = (0.4, 0.1, 0.5)  # train / validation / test networks
# Training state saved every 10 epochs, not every epoch: a save cost 0.25-0.5 s (orbax; measured beside the same
# run without saves), 15-30% of a 50-epoch cell; a killed cell loses at most 10 epochs (seconds). The best
# validation model is saved whenever it improves, as before.
CHECKPOINT_EPOCHS = 10
QUICK_SIZES = {"magep": dict(channels=4, head=16), "monomial": dict(channels=(4, 4, 2), head=16),
               "np": dict(channels=(4, 4, 2), head=16), "hnp": dict(channels=(4, 4, 2), head=16),
               "statnn": dict(head=16), "mlp": dict(head=16)}
PUBLISHED = [  # Zhou et al. 2023, whole Small CNN Zoo (not activation subsets), test tau (docs/magep.md §9.1)
    ("CIFAR-10-GS (30k nets, both activations)", {"hnp": "0.934 +- 0.001", "np": "0.922 +- 0.001",
                                                  "statnn": "0.915 +- 0.002"}),
    ("SVHN-GS (30k nets, both activations)", {"hnp": "0.931 +- 0.005", "np": "0.856 +- 0.001",
                                             "statnn": "0.843 +- 0.000"}),
]


def max_scale(augmentation: str) -> float:
    """The upper end 10^k of the scales of augmentation "k<k>"."""
    return 10.0 ** int(augmentation[1:])


def load_splits(zoo_dir: str, activation: str, epoch: int) -> dict:
    """Train / val / test features and accuracies of one activation subset at checkpoint ``epoch``, without
    diverged networks: ``{split: (feats, accuracies)}`` and ``"spec"``."""
    out = {}
    for split in ("train", "val", "test"):
        feats, acc, spec = zoo_features(zoo_dir, split, fractions=SPLIT_FRACTIONS, seed=0, epochs=[epoch],
                                        where={"activation": activation})
        finite = np.isfinite(np.asarray(acc)) & np.all(  # diverged networks (NaN weights or metrics) are dropped
            [np.isfinite(np.asarray(leaf)).reshape(len(acc), -1).all(1) for leaf in jax.tree.leaves(feats)], axis=0)
        out[split], out["spec"] = (jax.tree.map(lambda a: a[finite], feats), acc[finite]), spec
    return out


def augmented(splits: dict, activation: str, augmentation: str) -> dict:
    """The splits with one group-transformed copy per network (the same copies for every method and seed)."""
    if augmentation == "none":
        return splits
    scaling = SCALING[activation]
    if (augmentation == "sign") != (scaling == "sign"):
        raise ValueError(f"augmentation {augmentation!r} does not apply to {activation} networks "
                         f"(use {AUGMENTATIONS[activation]})")
    top = 1.0 if augmentation == "sign" else max_scale(augmentation)
    key = jax.random.key(zlib.crc32(f"{activation} {augmentation}".encode()))
    out = {"spec": splits["spec"]}
    for i, split in enumerate(("train", "val", "test")):
        feats, acc = splits[split]
        out[split] = augment_with_group(feats, acc, splits["spec"], jax.random.fold_in(key, i), scaling=scaling,
                                        max_scale=top)
    return out


def run_cell(splits: dict, method: str, activation: str, seed: int, run_dir: str, *, train_epochs: int,
             batch_size: int, sizes: dict) -> dict:
    """Train one predictor (resuming from ``run_dir``) and score it; writes ``run_dir/result.json`` and returns
    the cell's result record."""
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = splits["train"], splits["val"], splits["test"]
    if method in STANDARDIZED:  # the authors' np_inv standardises its inputs with training statistics per entry
        stats = standardization_stats(x_train, per="entry")
        x_train, x_val, x_test = (standardize(x, stats) for x in (x_train, x_val, x_test))
    model = GeneralizationPredictor(splits["spec"], nfn=method, scaling=SCALING[activation], rngs=nnx.Rngs(seed),
                                    **sizes.get(method, {}))
    n_params = trainable_parameters(model)
    steps_per_epoch = max(len(y_train) // batch_size, 1)
    start = time.perf_counter()
    model, history = train_generalization_predictor(
        model, x_train, y_train, key=jax.random.key(seed), num_steps=train_epochs * steps_per_epoch,
        batch_size=batch_size, optimizer=optax.adam(1e-3), run_dir=run_dir, validation=(x_val, y_val),
        eval_every=steps_per_epoch, checkpoint_every=CHECKPOINT_EPOCHS * steps_per_epoch)
    predicted = np.asarray(jax.nn.sigmoid(predict_logits(model, x_test)))
    record = {"method": method, "activation": activation, "seed": seed, "params": n_params,
              "train_networks": len(y_train), "val_networks": len(y_val), "test_networks": len(y_test),
              "steps": train_epochs * steps_per_epoch, "batch_size": batch_size, "best_step": history[-1]["best/step"],
              "val_tau": history[-1]["best/tau"], "test_tau": kendall_tau(predicted, y_test),
              "wall_s": time.perf_counter() - start,
              "predicted": predicted.tolist(), "true": np.asarray(y_test).tolist()}
    harness.write_json(os.path.join(run_dir, "result.json"), record)
    return record


def cell_order(activations: Sequence[str], augmentations: Sequence[str]) -> list[tuple[str, str]]:
    """The (activation, augmentation) cells to run, every activation's un-augmented cell first (the table's
    core, done first when a run is cut short), then the augmented ones in `AUGMENTATIONS` order."""
    pairs = [(a, g) for a in activations for g in AUGMENTATIONS[a] if g in augmentations]
    return sorted(pairs, key=lambda pair: pair[1] != "none")


def zoo_summary(zoo_rows: Sequence[dict], activations: Sequence[str], epochs: int, dataset: str) -> dict:
    """``{activation: description}`` of a zoo's final checkpoints (networks, epochs, test accuracy range);
    raises ValueError when an activation has fewer than 10 finite networks."""
    final = [r for r in zoo_rows if int(r["epoch"]) == epochs]
    out = {}
    for activation in activations:
        acc = np.asarray([r["test_accuracy"] for r in final if r["activation"] == activation], np.float64)
        acc = acc[np.isfinite(acc)]  # diverged networks carry NaN metrics and are left out
        if len(acc) < 10:
            raise ValueError(f"zoo {dataset}: only {len(acc)} {activation} networks; raise --models")
        out[activation] = (f"{len(acc)} networks, {epochs} epochs, final checkpoint; test accuracy "
                           f"{acc.min():.2f} .. {acc.max():.2f} (median {np.median(acc):.2f})")
    return out


def summarise(records: Sequence[dict]) -> dict:
    """``{(dataset, activation, augmentation, method): {"mean", "std", "seeds", scale...}}`` as a list of rows."""
    cells = {}
    for r in records:
        cells.setdefault((r["dataset"], r["activation"], r["augmentation"], r["method"]), []).append(r)
    rows = []
    order = lambda item: (item[0][0], item[0][1], AUGMENTATIONS[item[0][1]].index(item[0][2]),
                          METHODS.index(item[0][3]))
    for (dataset, activation, augmentation, method), rs in sorted(cells.items(), key=order):
        taus = np.asarray([r["test_tau"] for r in rs])
        rows.append({"dataset": dataset, "activation": activation, "augmentation": augmentation, "method": method,
                     "test_tau_mean": float(taus.mean()), "test_tau_std": float(taus.std()), "seeds": len(rs),
                     "test_taus": taus.tolist(), "params": rs[0]["params"], "train_networks": rs[0]["train_networks"],
                     "val_networks": rs[0]["val_networks"], "test_networks": rs[0]["test_networks"],
                     "steps": rs[0]["steps"], "wall_s_mean": float(np.mean([r["wall_s"] for r in rs]))})
    return rows


def markdown(rows: Sequence[dict], settings: dict, zoos: dict, run: dict) -> str:
    """The report: scale, our table (test tau mean +- std over seeds), the published numbers, the run record."""
    methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
    lines = ["# MAGEP-NFN: CNN generalisation prediction (Kendall tau on the test networks)", "",
             f"Scale: {settings['scale']}.", ""]
    for dataset, zoo in zoos.items():
        lines.append(f"- zoo {dataset}: {zoo}")
    lines += ["", "Test tau, mean +- std over seeds (model chosen by validation tau); augmentation: none, "
              "k<k> (one permuted-and-scaled copy per network, d ~ U[1, 10^k]), sign (one permuted and sign-flipped "
              "copy).", ""]
    table = {}
    for r in rows:
        table.setdefault((r["dataset"], r["activation"], r["augmentation"]), {})[r["method"]] = r
    body = []
    for (dataset, activation, augmentation), cells in table.items():
        any_cell = next(iter(cells.values()))
        scale = f"{any_cell['train_networks']}/{any_cell['val_networks']}/{any_cell['test_networks']}"
        body.append([dataset, activation, augmentation, scale]
                    + [f"{cells[m]['test_tau_mean']:.3f} +- {cells[m]['test_tau_std']:.3f} ({cells[m]['seeds']})"
                       if m in cells else "-" for m in methods])
    lines += harness.markdown_table(["dataset", "activation", "augmentation", "train/val/test nets"]
                                    + [LABELS[m] for m in methods], body)
    params = {r["method"]: r["params"] for r in rows}
    lines += ["", "Trainable parameters: " + ", ".join(f"{LABELS[m]} {params[m]:,}" for m in methods) + ".", "",
              "## Published (Zhou et al. 2023; the MAGEP paper's own table was not obtained)", ""]
    lines += harness.markdown_table(["zoo", "HNP", "NP", "STATNN"],
                                    [[name, vals["hnp"], vals["np"], vals["statnn"]] for name, vals in PUBLISHED])
    lines += ["", "The published zoos hold 30,000 networks trained for 86 epochs and mix both activations; ours are "
              "far smaller (above), so compare orderings, not values.", "",
              "![predicted vs true](magep_generalization_scatter.png)",
              "![tau against the augmentation exponent](magep_generalization_augmentation.png)", "", "## Run", ""]
    lines += harness.run_markdown(run)
    return "\n".join(lines) + "\n"


def figures(records: Sequence[dict], rows: Sequence[dict], out: str) -> None:
    """Scatter of predicted vs true accuracy (one row per dataset: ReLU, no augmentation, first seed; one panel
    per method), and test tau against the augmentation exponent k (ReLU subsets), one line per method and
    dataset."""
    seed = min((r["seed"] for r in records), default=0)
    first = [r for r in records if r["activation"] == "relu" and r["augmentation"] == "none" and r["seed"] == seed]
    datasets = sorted({r["dataset"] for r in first})
    if first:
        methods = [m for m in METHODS if any(r["method"] == m for r in first)]
        harness.prediction_scatter(first, datasets, methods, LABELS,
                                   os.path.join(out, "magep_generalization_scatter.png"),
                                   lambda dataset: f"predicted ({dataset}, ReLU)")
    relu = [r for r in rows if r["activation"] == "relu"]
    if relu:
        datasets = sorted({r["dataset"] for r in relu})
        fig, axes = harness.subplots(1, len(datasets), figsize=(3.6 * len(datasets), 3.0), squeeze=False)
        for ax, dataset in zip(axes[0], datasets):
            for method in METHODS:
                pts = sorted((0 if r["augmentation"] == "none" else int(r["augmentation"][1:]), r["test_tau_mean"],
                              r["test_tau_std"]) for r in relu if r["dataset"] == dataset and r["method"] == method)
                if pts:
                    k, mean, std = map(np.asarray, zip(*pts))
                    ax.errorbar(k, mean, yerr=std, marker="o", ms=3, label=LABELS[method])
            ax.set_title(f"{dataset}, ReLU", fontsize=8)
            ax.set_xlabel("augmentation exponent k (d ~ U[1, 10^k])", fontsize=7)
            ax.set_ylabel("test Kendall tau", fontsize=7)
        axes[0][0].legend(fontsize=6)
        harness.save_figure(fig, os.path.join(out, "magep_generalization_augmentation.png"))


ZOO_SETTINGS = ("dataset", "models", "epochs", "seed", "shard_size")  # what identifies a study's CNN zoo


def final_zoo(work: str, dataset: str, args: argparse.Namespace) -> tuple[str, list[dict]]:
    """``(folder, rows)`` of the final-checkpoint export of a dataset's CNN zoo (`common.zoo_store.
    export_checkpoints`: what the study reads, kept in git, 19 MB for 1,000 networks): read when present, else the
    zoo is generated (or resumed) under ``<work>/zoos/<dataset>_cnn`` and exported. Raises ValueError when the
    kept export was made with other settings."""
    zoo_dir, final_dir = (os.path.join(work, "zoos", f"{dataset}_cnn{tail}") for tail in ("", "_final"))
    epochs = args.zoo_epochs[dataset]
    if os.path.exists(os.path.join(final_dir, "layout.json")):
        settings = harness.read_json(os.path.join(final_dir, "layout.json"))["settings"]
        stored = {k: settings[k] for k in ZOO_SETTINGS}
        expected = dict(dataset=dataset, models=args.models, epochs=epochs, seed=0, shard_size=args.shard_size)
        if stored != expected:
            raise ValueError(f"{final_dir} holds a zoo of other settings ({stored}, expected {expected}): pass its "
                             "settings, or move it away to generate another")
        return final_dir, zoo_store.load_zoo(final_dir)[1]
    generate_cnn_zoo(zoo_dir, dataset, args.models, epochs=epochs, shard_size=args.shard_size, seed=0,
                     progress=not args.quick)
    return final_dir, zoo_store.export_checkpoints(zoo_dir, final_dir, [epochs])


def zoo_inputs(work: str, dataset: str, args: argparse.Namespace) -> tuple[dict, str]:
    """``(zoo summary per activation, final-checkpoint zoo folder)`` of a dataset (`final_zoo`, `zoo_summary`)."""
    folder, rows = final_zoo(work, dataset, args)
    return zoo_summary(rows, args.activations, args.zoo_epochs[dataset], dataset), folder


def generalization(args: argparse.Namespace) -> dict:
    """Run (or resume) the generalisation-prediction study; writes the report and returns its JSON record."""
    run = harness.start_run(calibrate=False)
    work = args.work or os.path.join(args.out, "magep_runs")
    sizes = QUICK_SIZES if args.quick else {}
    records, zoos = [], {}
    for dataset in args.datasets:
        zoo_epochs = args.zoo_epochs[dataset]
        run_dirs = {(activation, augmentation, method, seed):
                    os.path.join(work, "runs", dataset, activation, augmentation, method, f"seed{seed}")
                    for activation, augmentation in cell_order(args.activations, args.augmentations)
                    for method in args.methods for seed in range(args.seeds)}
        summary, zoo_dir = studies.study_inputs(  # zoo_dir: the final-checkpoint zoo, None when all cells are done
            os.path.join(work, "runs", dataset, "summary.json"), run_dirs.values(),
            lambda: zoo_inputs(work, dataset, args))
        zoos.update({f"{dataset} {activation}": summary[activation] for activation in args.activations})
        splits = {}

        def run_one(cell, run_dir):
            activation, augmentation, method, seed = cell
            if (activation, augmentation) not in splits:
                if (activation, "none") not in splits:
                    splits[activation, "none"] = load_splits(zoo_dir, activation, zoo_epochs)
                splits[activation, augmentation] = augmented(splits[activation, "none"], activation, augmentation)
            record = run_cell(splits[activation, augmentation], method, activation, seed, run_dir,
                              train_epochs=args.train_epochs, batch_size=args.batch_size, sizes=sizes)
            if not args.quick:
                print(f"{dataset} {activation} {augmentation} {method} seed {seed}: "
                      f"test tau {record['test_tau']:.3f}", flush=True)
            return record

        for (_, augmentation, _, _), record in studies.run_cells(run_dirs, run_one).items():
            records.append({**record, "dataset": dataset, "augmentation": augmentation})
    rows = summarise(records)
    epochs = ", ".join(f"{d} {args.zoo_epochs[d]}" for d in args.datasets)
    settings = {"scale": (f"{args.models} networks per dataset (both activations), zoo epochs {epochs}; "
                          f"{args.train_epochs} training epochs at batch {args.batch_size}; {args.seeds} seed(s)"
                          + ("; --quick miniature (small predictors)" if args.quick else "")),
                "datasets": list(args.datasets), "methods": list(args.methods), "seeds": args.seeds,
                "models": args.models, "zoo_epochs": {d: args.zoo_epochs[d] for d in args.datasets},
                "train_epochs": args.train_epochs,
                "batch_size": args.batch_size, "augmentations": list(args.augmentations), "quick": args.quick}
    record = run.finish()
    result = {"settings": settings, "zoos": zoos, "cells": rows, "run": record}
    harness.write_results(args.out, "magep_generalization", result, markdown(rows, settings, zoos, record))
    figures(records, rows, args.out)
    return result


FULL = dict(datasets=["mnist", "fashion_mnist", "cifar10_gs"], models=1000,
            zoo_epochs={"mnist": 3, "fashion_mnist": 3, "cifar10_gs": 10}, train_epochs=50, seeds=3,
            augmentations=["none", "k1", "k2", "k3", "k4", "sign"])
QUICK = dict(datasets=["digits"], models=96, zoo_epochs={"digits": 3}, train_epochs=4, seeds=1,
             augmentations=["none", "k4", "sign"])  # the miniature: defaults of --quick (explicit options win)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.magep_experiments", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="experiment", required=True)
    g = sub.add_parser("generalization", help="CNN generalisation prediction (docs/magep.md §9.1)")
    g.add_argument("--datasets", nargs="+", default=None, choices=DATASETS,
                   help=f"default {FULL['datasets']} ({QUICK['datasets']} with --quick)")
    g.add_argument("--activations", nargs="+", default=["relu", "tanh"], choices=tuple(SCALING))
    g.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    g.add_argument("--augmentations", nargs="+", default=None, choices=("none", "k1", "k2", "k3", "k4", "sign"),
                   help=f"default {FULL['augmentations']} ({QUICK['augmentations']} with --quick)")
    g.add_argument("--models", type=positive_int, default=None,
                   help=f"networks per dataset, both activations (default {FULL['models']}; "
                        f"{QUICK['models']} with --quick)")
    g.add_argument("--zoo-epochs", type=studies.per_dataset_entry(DATASETS, positive_int), nargs="+", default=None,
                   metavar="[DATASET=]E",
                   help=f"epochs of the zoo networks: E for every dataset, or DATASET=E entries (default "
                        f"{FULL['zoo_epochs']}; {QUICK['zoo_epochs']} with --quick)")
    g.add_argument("--shard-size", type=positive_int, default=64)
    g.add_argument("--train-epochs", type=positive_int, default=None,
                   help=f"predictor training epochs (default {FULL['train_epochs']}; "
                        f"{QUICK['train_epochs']} with --quick)")
    g.add_argument("--batch-size", type=positive_int, default=8)
    g.add_argument("--seeds", type=positive_int, default=None,
                   help=f"seeds per cell (default {FULL['seeds']}; {QUICK['seeds']} with --quick)")
    g.add_argument("--quick", action="store_true", help="a miniature on digits (pipeline check, < 3 minutes)")
    inr = magep_inr.add_parser(sub)
    edit = magep_inr_editing.add_parser(sub)
    for command in (inr, edit):
        command.add_argument("--quick", action="store_true", help="a miniature on MNIST (pipeline check, < 3 minutes)")
    for command in (g, inr, edit):
        command.add_argument("--out", default=DEFAULT_OUT, help=f"results folder (default {DEFAULT_OUT})")
        command.add_argument("--work", default=None, help="zoos, INR sets and run folders (default <out>/magep_runs)")
        add_compile_arguments(command)
    return p


def main(argv: Sequence[str] | None = None) -> dict:
    """Command line entry point (see the module docstring)."""
    args = parser().parse_args(argv)
    configure_compiles(args)
    inr_drivers = {"inr-classification": (magep_inr, magep_inr.classification),
                   "inr-editing": (magep_inr_editing, magep_inr_editing.editing)}
    if args.experiment in inr_drivers:
        driver, study = inr_drivers[args.experiment]
        harness.fill_defaults(args, driver.QUICK if args.quick else driver.FULL)
        args.work = args.work or os.path.join(args.out, "magep_runs")
        return study(args)
    defaults = QUICK if args.quick else FULL
    harness.fill_defaults(args, defaults, skip=("zoo_epochs",))
    args.zoo_epochs = studies.resolve_per_dataset("--zoo-epochs", args.zoo_epochs, args.datasets,
                                                  defaults["zoo_epochs"])
    return generalization(args)


if __name__ == "__main__":
    main()
