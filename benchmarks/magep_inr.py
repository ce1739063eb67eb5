"""INR classification on SIREN sets fitted here (docs/magep.md §9.2, §10.2): `benchmarks.magep_experiments
inr-classification`.

Per dataset: SIRENs of ``--inrs`` training images (the first 90% by image index train the classifier, the last 10%
validate it) and of ``--test-inrs`` test images, fitted with `magep.zoo.generate_siren_zoo` (``--fit-steps`` Adam
steps; the median PSNR of each set is reported); then one `magep.INRClassifier` per method and seed, trained by
cross-entropy (Adam, ``--lr`` after a linear warm-up of min(10k, steps / 10) steps, batch ``--batch-size``,
``--steps`` steps) through `magep.train.train_inr_classifier` on the SIREN tensors divided by their training-set
standard deviations (`magep.train.tensor_scales`; ``--no-standardise``: raw weights), and kept at its best
validation accuracy (``--evals`` scores per run); reported: test accuracy, mean and std over seeds.

Every stage resumes: the SIREN shards, each training run (checkpoints and best model) and each finished cell
(``result.json``) are kept under ``--work``; the finished cells and each dataset's summary (``summary.json``) are
kept in git, and a dataset whose cells are all done is reported without its SIREN sets (`study_sets`). Results:
``<out>/magep_inr_classification.{json,md}``.
"""
from __future__ import annotations

import argparse
import os
import time

import jax
import numpy as np
import optax
from flax import nnx

from benchmarks import harness, studies
from common.accuracy_prediction import predict_logits, top1_accuracy
from common.cli import positive_float, positive_int
from common.training import trainable_parameters
from magep import INRClassifier
from magep.train import divide_by_scales, tensor_scales, train_inr_classifier, zoo_features
from magep.zoo import generate_siren_zoo
from magep.zoo_recipes import siren_images

DATASETS = ("mnist", "fashion_mnist", "cifar10")
METHODS = ("magep", "monomial", "np", "hnp", "mlp")
LABELS = {"magep": "MAGEP-NFN", "monomial": "Monomial-NFN", "np": "NP", "hnp": "HNP", "mlp": "MLP"}
CLASSES = 10
SIZES = {"magep": dict(channels=16, head=500), "monomial": dict(channels=(64, 64, 16), head=500),
         "np": dict(channels=(64, 64, 16), head=500), "hnp": dict(channels=(64, 64, 16), head=500),
         "mlp": dict(head=1000)}  # scaled down from the papers' (MAGEP 128 / 64 channels, NP/HNP 512) for 2 CPU cores:
# one step at batch 32 on one core: MAGEP 127 ms (c = 16; 277 ms at 32, ~0.5 s at 64), Monomial / NP 78, HNP 95, MLP 9
QUICK_SIZES = {"magep": dict(channels=4, head=16), "mlp": dict(head=16),
               **{m: dict(channels=(4, 4, 2), head=16) for m in ("monomial", "np", "hnp")}}
PUBLISHED = {  # test accuracy %: Zhou et al. 2023 (verified; + 10-20 augmentation SIRENs per image) and a
    # secondary summary of reruns without them (unverified)
    "mnist": {"np": "92.9 +- 0.2", "hnp": "92.5 +- 0.1", "mlp": "14.5 +- 0.0",
              "monomial": "68.43 +- 0.51 (unverified)"},
    "fashion_mnist": {"np": "75.6 +- 1.1", "hnp": "72.7 +- 1.5", "mlp": "12.5 +- 0.1",
                      "monomial": "61.15 +- 0.55 (unverified)"},
    "cifar10": {"np": "46.6 +- 0.1", "hnp": "44.1 +- 0.5", "mlp": "16.9 +- 0.3",
                "monomial": "34.23 +- 0.33 (unverified)"},
}
CIFAR_IMAGES = 10_000
CLASSIFIER_WARMUP = 10_000  # the authors' warm-up steps for MNIST (20k for the others, of 200k steps)
FULL = dict(datasets=list(DATASETS), inrs=3000, test_inrs=1000, fit_steps=2000, steps=3000, evals=20, seeds=3)
QUICK = dict(datasets=["mnist"], inrs=40, test_inrs=20, fit_steps=50, steps=20, evals=2, seeds=1)


def image_source(dataset: str, split: str, args: argparse.Namespace) -> tuple[str, int]:
    """(data split, first image index) of the SIRENs of ``split`` ("train" or "test"). CIFAR-10 has only its test
    images here: its training SIRENs fit the first ``--inrs`` of them and its test SIRENs the last ``--test-inrs``,
    in `magep.zoo_recipes.siren_images`'s class-interleaved order (both ranges stratified)."""
    if dataset != "cifar10":
        return split, 0
    if args.inrs + args.test_inrs > CIFAR_IMAGES:
        raise ValueError(f"cifar10: --inrs + --test-inrs = {args.inrs + args.test_inrs} exceeds the {CIFAR_IMAGES} "
                         "CIFAR-10 test images the SIRENs are fitted to")
    return "test", 0 if split == "train" else CIFAR_IMAGES - args.test_inrs


def siren_sets(dataset: str, args: argparse.Namespace) -> tuple[dict, dict]:
    """``({split: (feats, labels)}, {"spec", "psnr": median PSNR per set, "images": {split: [N, H, W, c]}})`` of one
    dataset; the images (in [-1, 1]) are those the SIRENs of each split fit, row for row."""
    sets, psnr, images = {}, {}, {}
    for split, count in (("train", args.inrs), ("test", args.test_inrs)):
        source, offset = image_source(dataset, split, args)
        folder = os.path.join(args.work, "inrs", f"{dataset}_{split}")
        rows = generate_siren_zoo(folder, dataset, count, split=source, offset=offset, progress=not args.quick,
                                  steps=args.fit_steps)
        psnr[split] = float(np.median([float(r["psnr"]) for r in rows]))
        feats, labels, spec = zoo_features(folder, None, target="label")
        sets[split] = (feats, np.asarray(labels, np.int32))
        images[split] = siren_images(dataset, source, count, offset)[0]
    feats, labels = sets.pop("train")
    cut = int(round(0.9 * len(labels)))  # rows are in image order
    sets["train"] = (jax.tree.map(lambda a: a[:cut], feats), labels[:cut])
    sets["val"] = (jax.tree.map(lambda a: a[cut:], feats), labels[cut:])
    train_images = images.pop("train")
    images.update(train=train_images[:cut], val=train_images[cut:])
    return sets, {"spec": spec, "psnr": psnr, "images": images}


def run_cell(inputs: tuple, method: str, seed: int, run_dir: str, args: argparse.Namespace) -> dict:
    """Train one classifier (resuming from ``run_dir``) on ``inputs`` = (sets, spec) of `siren_sets` and score it;
    writes ``run_dir/result.json`` and returns the cell's result record."""
    sets, spec = inputs
    sizes = (QUICK_SIZES if args.quick else SIZES)[method]
    model = INRClassifier(spec, CLASSES, nfn=method, scaling="sign", rngs=nnx.Rngs(seed), **sizes)
    n_params = trainable_parameters(model)
    scales = tensor_scales(sets["train"][0]) if args.standardise else None
    scaled = lambda feats: feats if scales is None else divide_by_scales(feats, scales)
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = [(scaled(sets[k][0]), sets[k][1])
                                                            for k in ("train", "val", "test")]
    start = time.perf_counter()
    eval_every = max(args.steps // args.evals, 1)  # one validation score and checkpoint each
    model, history = train_inr_classifier(
        model, x_train, y_train, key=jax.random.key(seed), num_steps=args.steps, batch_size=args.batch_size,
        optimizer=optax.adam(warmup_schedule(args.lr, args.steps, CLASSIFIER_WARMUP)), run_dir=run_dir,
        validation=(x_val, y_val), eval_every=eval_every)
    record = {"method": method, "seed": seed, "params": n_params, "standardised": args.standardise,
              "train_inrs": len(y_train), "val_inrs": len(y_val), "test_inrs": len(y_test), "steps": args.steps,
              "batch_size": args.batch_size, "best_step": history[-1]["best/step"],
              "val_accuracy": history[-1]["best/accuracy"],
              "test_accuracy": top1_accuracy(predict_logits(model, x_test), y_test),
              "wall_s": time.perf_counter() - start}
    harness.write_json(os.path.join(run_dir, "result.json"), record)
    return record


def warmup_schedule(lr: float, steps: int, warmup: int) -> optax.Schedule:
    """Linear warm-up from 0 to ``lr`` over the authors' ``warmup`` steps, cut to a tenth of short runs (at least
    one step), then constant."""
    return optax.linear_schedule(0.0, lr, max(min(warmup, steps // 10), 1))


def grid_dirs(args: argparse.Namespace, study: str, dataset: str) -> dict:
    """``{(method, seed): run folder}`` of one dataset of an INR study (``<work>/runs/<study>/<dataset>/...``)."""
    return {(method, seed): os.path.join(args.work, "runs", study, dataset, method, f"seed{seed}")
            for method in args.methods for seed in range(args.seeds)}


def study_sets(args: argparse.Namespace, study: str, dataset: str, prepare) -> tuple[dict, object]:
    """``(summary, inputs)`` of one dataset of an INR study (`benchmarks.studies.study_inputs`): the SIREN sets are
    fitted (or loaded) only while a cell is missing; ``prepare(sets, info) -> (summary, inputs)``."""
    return studies.study_inputs(os.path.join(args.work, "runs", study, dataset, "summary.json"),
                                grid_dirs(args, study, dataset).values(),
                                lambda: prepare(*siren_sets(dataset, args)))


def run_grid(args: argparse.Namespace, dataset: str, study: str, report: str, run_one) -> list[dict]:
    """Every cell's record for every method and seed of ``args`` (run folders `grid_dirs`), running the missing
    ones by ``run_one(method, seed, run_dir)`` (`benchmarks.studies.run_cells`: several processes may share the
    grid); prints ``report`` (a format string over the record) of each cell run here unless --quick."""
    def run(cell, run_dir):
        record = run_one(*cell, run_dir)
        if not args.quick:
            print(f"{dataset} {cell[0]} seed {cell[1]}: " + report.format(**record), flush=True)
        return record

    return [{**record, "dataset": dataset}
            for record in studies.run_cells(grid_dirs(args, study, dataset), run).values()]


def scale_settings(args: argparse.Namespace, optimizer_note: str, models: str) -> dict:
    """The ``settings`` record of an INR study: its scale sentence and its options."""
    return {"scale": (f"{args.inrs} training-image SIRENs (90% train / 10% validation) and {args.test_inrs} "
                      f"test-image SIRENs per dataset, {args.fit_steps} fit steps; {args.steps} training steps "
                      f"at batch {args.batch_size}, Adam {args.lr:g}{optimizer_note}; {args.seeds} seed(s)"
                      + (f"; --quick miniature (small {models})" if args.quick else "")),
            **{k: getattr(args, k) for k in ("datasets", "methods", "inrs", "test_inrs", "fit_steps", "steps",
                                              "batch_size", "lr", "seeds", "quick")}}


def summarise(records: list[dict], metric: str = "test_accuracy", plural: str = "test_accuracies",
              keys: tuple = ()) -> list[dict]:
    """One row per (dataset, method): ``metric`` mean and std over seeds (and the per-seed values as ``plural``),
    with the cell's scale and the first record's ``keys``."""
    cells = {}
    for r in records:
        cells.setdefault((r["dataset"], r["method"]), []).append(r)
    rows = []
    for (dataset, method), rs in sorted(cells.items(), key=lambda kv: (kv[0][0], METHODS.index(kv[0][1]))):
        values = np.asarray([r[metric] for r in rs])
        rows.append({"dataset": dataset, "method": method, f"{metric}_mean": float(values.mean()),
                     f"{metric}_std": float(values.std()), "seeds": len(rs), plural: values.tolist(),
                     **{k: rs[0][k] for k in ("params", "train_inrs", "val_inrs", "test_inrs", "steps") + keys},
                     "wall_s_mean": float(np.mean([r["wall_s"] for r in rs]))})
    return rows


def markdown(rows: list[dict], settings: dict, fits: dict, run: dict) -> str:
    """The report: scale, our table (test accuracy % mean +- std over seeds) beside the published numbers."""
    lines = ["# MAGEP-NFN: INR classification (test accuracy of SIREN classifiers)", "",
             f"Scale: {settings['scale']}.", ""]
    lines += [f"- {d}: {f['train']} + {f['test']} SIRENs; median fit PSNR {f['psnr']['train']:.1f} dB (train "
              f"images) / {f['psnr']['test']:.1f} dB (test images)" for d, f in fits.items()]
    methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
    table = {}
    for r in rows:
        table.setdefault(r["dataset"], {})[r["method"]] = r
    body = []
    for dataset, cells in table.items():
        any_cell = next(iter(cells.values()))
        body.append([dataset, f"{any_cell['train_inrs']}/{any_cell['val_inrs']}/{any_cell['test_inrs']}"]
                    + [f"{100 * cells[m]['test_accuracy_mean']:.1f} +- {100 * cells[m]['test_accuracy_std']:.1f} "
                       f"({cells[m]['seeds']})" if m in cells else "-" for m in methods])
    lines += ["", "Ours: test accuracy %, mean +- std over seeds (model kept at its best validation accuracy).", ""]
    lines += harness.markdown_table(["dataset", "train/val/test INRs"] + [LABELS[m] for m in methods], body)
    params = {r["method"]: r["params"] for r in rows}
    lines += ["", "Trainable parameters: " + ", ".join(f"{LABELS[m]} {params[m]:,}" for m in methods) + ".", "",
              "## Published", "",
              "Zhou et al. 2023 (45k SIRENs per set plus 10-20 augmentation SIRENs per training image, 200k steps; "
              "verified) and, for Monomial-NFN, a secondary summary of reruns (unverified). The MAGEP paper's own "
              "numbers were not obtained.", ""]
    lines += harness.markdown_table(["dataset"] + [LABELS[m] for m in ("np", "hnp", "monomial", "mlp")],
                                    [[d] + [PUBLISHED[d][m] for m in ("np", "hnp", "monomial", "mlp")]
                                     for d in table if d in PUBLISHED])
    lines += ["", "Our sets are far smaller and our fits shorter (above): compare orderings, not values.", "",
              "## Run", ""]
    lines += harness.run_markdown(run)
    return "\n".join(lines) + "\n"


def classification(args: argparse.Namespace) -> dict:
    """Run (or resume) the INR classification study; writes the report and returns its JSON record."""
    run = harness.start_run(calibrate=False)
    records, fits = [], {}
    for dataset in args.datasets:
        fits[dataset], inputs = study_sets(
            args, "inr_classification", dataset,
            lambda sets, info: ({"train": args.inrs, "test": args.test_inrs, "psnr": info["psnr"]},
                                (sets, info["spec"])))
        records += run_grid(args, dataset, "inr_classification", "test accuracy {test_accuracy:.3f}",
                            lambda method, seed, run_dir: run_cell(inputs, method, seed, run_dir, args))
    rows = summarise(records)
    settings = scale_settings(args, f" after a linear warm-up of min({CLASSIFIER_WARMUP}, steps / 10)"
                              + ("; every weight and bias tensor divided by its training-set std"
                                 if args.standardise else ""), "classifiers")
    record = run.finish()
    result = {"settings": settings, "fits": fits, "cells": rows, "run": record}
    harness.write_results(args.out, "magep_inr_classification", result, markdown(rows, settings, fits, record))
    return result


def add_parser(sub) -> argparse.ArgumentParser:
    """The ``inr-classification`` sub-command (defaults None: filled from `FULL` or, with --quick, `QUICK`)."""
    p = sub.add_parser("inr-classification", help="SIREN classification (docs/magep.md §9.2)")
    p.add_argument("--datasets", nargs="+", default=None, choices=DATASETS,
                   help=f"default {FULL['datasets']} ({QUICK['datasets']} with --quick)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    add_scale_arguments(p, FULL, QUICK, "classifier")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--lr", type=positive_float, default=1e-3,
                   help="Adam learning rate (the papers': 1e-4 over 200k steps; 1e-3 suits our 3k-step runs)")
    p.add_argument("--no-standardise", dest="standardise", action="store_false",
                   help="feed the raw SIREN weights (default: every weight and bias tensor divided by its "
                        "training-set standard deviation, `magep.train.tensor_scales`)")
    return p


def add_scale_arguments(p: argparse.ArgumentParser, full: dict, quick: dict, model: str) -> None:
    """The SIREN-set and training-scale options shared by the INR sub-commands (defaults from ``full`` /
    ``quick``)."""
    for name, help_text in (("inrs", "SIRENs of training images (90%% train, 10%% validation)"),
                            ("test-inrs", "SIRENs of test images"), ("fit-steps", "Adam steps per SIREN fit"),
                            ("steps", f"{model} training steps"),
                            ("evals", "validation scores (and checkpoints) per training run"),
                            ("seeds", "seeds per cell")):
        key = name.replace("-", "_")
        p.add_argument(f"--{name}", type=positive_int, default=None,
                       help=f"{help_text} (default {full[key]}; {quick[key]} with --quick)")
