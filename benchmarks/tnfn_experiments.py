"""Transformer-NFN accuracy prediction on transformer zoos generated here (docs/transformer_nfn.md §7-§10).

    python -m benchmarks.tnfn_experiments [all|prediction|thresholds|ablation|robustness]
        [--datasets|--tasks mnist ag_news] [--report] [--models N] [--zoo-epochs [DATASET=]E ...]
        [--train-limit [DATASET=]n|all ...] [--test-limit ...]
        [--methods tnfn tnfn_authors_init mlp statnn xgboost lightgbm rf] [--thresholds 0 0.2 0.4 0.6 0.8]
        [--epochs E] [--seeds S] [--quick] [--out DIR]

Per dataset: a zoo of ``--models`` runs drawn from the recipe's grid (`transformer_nfn.zoo`, ``--zoo-epochs``
epochs on the first ``--train-limit`` training rows, test accuracy on the first ``--test-limit`` test rows; each
a value for every dataset or DATASET=V entries), storing only the checkpoint the study reads, at 75% of the
epochs (`STUDY_FRACTION`: a quarter of the recipe's four checkpoints' storage); those checkpoints, split 70/15/15 by run
id (seed 3); for every accuracy threshold, the runs below it are dropped from each split (after splitting, so no
run is on two sides). Methods: the Transformer-NFN predictor in the authors' README configuration with the
library's initialisation (``tnfn``) and with the authors' (``tnfn_authors_init``), and the authors' MLP and STATNN
baselines (`transformer_nfn.baselines`), and the gradient-boosted trees on the flat raw weights (XGBoost, LightGBM,
LightGBM's random forest: `transformer_nfn.tree_baselines`, the ``trees`` extra; rounds chosen on the validation
RMSE, seed 3 + the seed index). Training of the neural predictors as the authors' (§8): BCE, Adam 1e-3 with 10% warm-up from 1e-4
and cosine decay to 1e-5, batch 16, ``--epochs`` epochs, through `transformer_nfn.train.train_accuracy_predictor`,
kept at the best validation Kendall tau; reported: test tau, mean and std over ``--seeds``.

Studies (the positional argument; default all; the report also shows the other studies' finished cells):
``prediction``, every method at threshold 0; ``thresholds``, the
thresholds above 0; ``ablation``, the encoder, classifier and embedding branches alone (threshold 0, library
initialisation) beside all three (the main table's ``tnfn`` cell); ``robustness`` (§10), every threshold-0 model
also scored on the test runs moved by random elements of the extended group (FFN scalings log-U[1, 10^k],
k = 0..3, with the paper's group, channel permutations and LayerNorm shifts: `moved_tests`), plus three
extended-group predictors: Transformer-NFN on canonicalised weights (FFN scalings and LN shifts removed), the same
with the channels sorted at every block boundary (all three factors removed) and Transformer-NFN trained with one
extended-group copy of every training run (`method_inputs`).

Every stage resumes: zoo shards, each training run (checkpoints, best model) and each finished cell
(``result.json``) under ``--work``; the zoos' shards (4.9 MB per 64 runs), the finished cells and each dataset's
zoo summary (``summary.json``) are kept in git, so that a later session on a fresh clone goes on where one
stopped, and a dataset whose cells are all done is reported without its zoo (`benchmarks.studies.study_inputs`);
several processes may run the same command at once, e.g. one per core: they share the zoo's shards
(`common.zoo_store.generate_zoo` with ``share=True``) and the cells (`benchmarks.studies.run_cells`).
Results: ``<out>/tnfn_prediction.{json,md}``.
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

from benchmarks import harness, studies
from common.accuracy_prediction import kendall_tau, predict_logits
from common.cli import add_compile_arguments, configure_compiles, positive_int, positive_int_or_all
from common.training import trainable_parameters
from transformer_nfn import AccuracyPredictor
from transformer_nfn.baselines import BaselinePredictor
from transformer_nfn.extended_group import canonicalize, canonicalize_all, move_each
from transformer_nfn.tree_baselines import SEED as TREE_SEED, TREE_KINDS, fit_trees, flat_weights
from transformer_nfn.train import train_accuracy_predictor
from transformer_nfn.zoo import (DATASETS, ZOO_SPEC, generate_transformer_zoo, load_transformer_zoo,
                                 transformer_checkpoint_epochs)

DEFAULT_OUT = "benchmarks/results"
METHODS = ("tnfn", "tnfn_authors_init", "mlp", "statnn", "xgboost", "lightgbm", "rf")
ROBUST_METHODS = ("tnfn_canonical", "tnfn_augmented", "tnfn_sorted")  # the robustness study's extended-group ones
LABELS = {"tnfn": "Transformer-NFN", "tnfn_authors_init": "Transformer-NFN (authors' init)", "mlp": "MLP",
          "statnn": "STATNN", "xgboost": "XGBoost", "lightgbm": "LightGBM", "rf": "Random forest",
          "tnfn_canonical": "Transformer-NFN on canonicalised weights",
          "tnfn_augmented": "Transformer-NFN trained with extended-group copies",
          "tnfn_sorted": "Transformer-NFN on canonicalised weights, channels sorted"}
STUDIES = ("all", "prediction", "thresholds", "ablation", "robustness")
ROBUSTNESS_K = (0, 1, 2, 3)  # test networks moved with FFN scalings d ~ log-U[1, 10^k] (+ the other exact factors)
AUGMENT_MAX_SCALE = 1e3  # FFN scalings of the training copies of "tnfn_augmented"
ALL_BRANCHES = (True, True, True)  # (encoder, classifier, embedding): the full predictor, the main table's "tnfn"
BRANCHES = {"encoder": (True, False, False), "classifier": (False, True, False), "embedding": (False, False, True)}
SPLIT = dict(fractions=(0.7, 0.15, 0.15), seed=3)
MIN_RUNS = {"train": 2, "val": 1, "test": 2}  # fewer runs above a threshold: the cell is reported, not trained
# a training checkpoint (Adam state included: 22 MB, 0.3 s on one core) every 10 epochs, not every epoch: the runs
# took about a fifth less time (430 steps on one core: 24.0-26.5 s against 28.9-31.7 s, compile included); a
# killed run replays at most 10 epochs, with the same scores (fit_predictor)
CHECKPOINT_EPOCHS = 10
STUDY_FRACTION = 0.75  # the protocol reads the recipe's epoch-75-of-100 checkpoint; the zoos store only it
PUBLISHED = {"mnist": "0.905 +- 0.002", "ag_news": "0.910 +- 0.001"}  # Tran et al. 2025, unverified
FIGURES = {"scatter": "tnfn_prediction_scatter.png", "robustness": "tnfn_prediction_robustness.png",
           "zoos": "tnfn_zoo_histograms.png"}  # written beside the report by `figures`
PER_DATASET = ("zoo_epochs", "train_limit", "test_limit")  # options given as V or DATASET=V entries
# MNIST: 4 epochs on 10,000 rows (314 steps); AG News: 2 epochs on all 7,983 training rows (124 steps; the sample
# is ordered by class, so it is not cut); test accuracy on the first 2,000 test rows (docs/transformer_nfn.md §7)
FULL = dict(datasets=["mnist", "ag_news"], models=1000, zoo_epochs={"mnist": 4, "ag_news": 2},
            train_limit={"mnist": 10_000, "ag_news": None}, test_limit={"mnist": 2000, "ag_news": 2000},
            epochs=100, seeds=5, thresholds=[0.0, 0.2, 0.4, 0.6, 0.8])
QUICK = dict(datasets=["mnist"], models=24, zoo_epochs={"mnist": 2}, train_limit={"mnist": 512},
             test_limit={"mnist": 256}, epochs=2, seeds=1, thresholds=[0.0, 0.1])
QUICK_SIZE = dict(hidden_channels=(2,), invariant_features=4, width=5)


def embedding_size(dataset: str) -> int | None:
    """Numbers in the stored patch embedding (MNIST zoo), None for AG News (its frozen table is not stored)."""
    return ZOO_SPEC.d_model * (4 * 4 + 1) if dataset == "mnist" else None


def build(method: str, dataset: str, seed: int, branches=ALL_BRANCHES, quick: bool = False) -> nnx.Module:
    """The predictor of one method (README configuration; ``quick``: tiny Transformer-NFN layers)."""
    classifier = (ZOO_SPEC.d_model, ZOO_SPEC.d_model, DATASETS[dataset])  # fc2: one output per class (docs §7)
    emb = embedding_size(dataset)
    rngs = nnx.Rngs(seed)
    if method in ("mlp", "statnn"):
        return BaselinePredictor(ZOO_SPEC, kind=method, classifier_widths=classifier, embedding_size=emb, rngs=rngs)
    encoder, with_classifier, with_embedding = branches
    return AccuracyPredictor(ZOO_SPEC, classifier_widths=classifier if with_classifier else None,
                             classifier_branch="mlp" if with_classifier else None,
                             embedding_size=emb if with_embedding else None, encoder_branch=encoder,
                             init="authors" if method == "tnfn_authors_init" else "default", rngs=rngs,
                             **(QUICK_SIZE if quick else {}))


def load_splits(zoo_dir: str, epoch: int, threshold: float) -> dict:
    """``{split: (weights, accuracies)}`` of the runs at ``epoch`` with test accuracy >= ``threshold``."""
    out = {}
    for split in ("train", "val", "test"):
        tw, acc, _ = load_transformer_zoo(zoo_dir, split, epochs=[epoch], min_accuracy=threshold or None, **SPLIT)
        keep = np.isfinite(acc)  # diverged runs carry NaN metrics
        out[split] = (jax.tree.map(lambda a: np.asarray(a)[keep], tw), np.asarray(acc, np.float32)[keep])
    return out


def too_few_runs(splits: dict) -> dict | None:
    """The record of a cell whose splits (`load_splits`) hold fewer runs than `MIN_RUNS` (a high accuracy
    threshold on a short zoo): run counts and a NaN tau; None when every split is large enough."""
    counts = {split: len(splits[split][1]) for split in MIN_RUNS}
    if all(counts[split] >= n for split, n in MIN_RUNS.items()):
        return None
    return {"params": None, "steps": 0, "test_tau": float("nan"), **{f"{k}_runs": n for k, n in counts.items()}}


def unfiltered_record(splits: dict, every: dict, zero_dir: str) -> dict | None:
    """The record of a threshold cell that removed no run: its splits (`load_splits`) hold as many runs as
    ``every`` (threshold 0; a threshold only removes runs, so the same runs), so it is the threshold-0 cell of
    the same method and seed, whose record (in ``zero_dir``) is returned without its moved-test scores and with
    ``same_runs_as_threshold`` = 0; None when a run was removed or that record is not written yet (then the cell
    trains, to the same result)."""
    if any(len(splits[k][1]) != len(every[k][1]) for k in every):
        return None
    record = harness.read_json(os.path.join(zero_dir, studies.RESULT))
    if record is None:
        return None
    return {**{k: v for k, v in record.items() if k not in ("moved_k", "moved_test_taus")},
            "same_runs_as_threshold": 0.0}


def run_cell(splits: dict, model: nnx.Module, seed: int, run_dir: str, args: argparse.Namespace,
             moved: Sequence | None = None) -> dict:
    """Train one predictor (resuming from ``run_dir``) and score it, also on the ``moved`` copies of the test
    runs (`moved_tests`, when given: ``moved_test_taus`` at ``moved_k``); writes ``run_dir/result.json`` and
    returns the cell's result record."""
    (x_train, y_train), validation, (x_test, y_test) = splits["train"], splits["val"], splits["test"]
    batch = min(16, len(y_train))
    steps_per_epoch = max(len(y_train) // batch, 1)
    steps = args.epochs * steps_per_epoch
    warmup = max(steps // 10, 1)  # a run of one step still gets a decay phase (optax needs one step of it)
    schedule = optax.warmup_cosine_decay_schedule(1e-4, 1e-3, warmup, max(steps, warmup + 1), 1e-5)
    start = time.perf_counter()
    trained, history = train_accuracy_predictor(model, x_train, y_train, key=jax.random.key(seed), num_steps=steps,
                                                batch_size=batch, optimizer=optax.adam(schedule), run_dir=run_dir,
                                                validation=validation, eval_every=steps_per_epoch,
                                                checkpoint_every=CHECKPOINT_EPOCHS * steps_per_epoch)
    logits = predict_logits(trained, x_test)
    record = {"seed": seed, "params": trainable_parameters(model),
              "train_runs": len(y_train), "val_runs": len(validation[1]), "test_runs": len(y_test), "steps": steps,
              "val_tau": history[-1]["best/tau"], "best_step": history[-1]["best/step"],
              "test_tau": kendall_tau(logits, y_test), "wall_s": time.perf_counter() - start,
              **test_predictions(jax.nn.sigmoid(logits), y_test)}
    if moved is not None:
        record.update(moved_k=list(ROBUSTNESS_K),
                      moved_test_taus=[kendall_tau(predict_logits(trained, m), y_test) for m in moved])
    harness.write_json(os.path.join(run_dir, "result.json"), record)
    return record


def run_tree_cell(splits: dict, method: str, seed: int, run_dir: str, moved: Sequence | None = None) -> dict:
    """Fit one tree baseline on the flat raw weights (rounds chosen on validation RMSE) and score it (also on
    ``moved`` test runs, as `run_cell`); writes ``run_dir/result.json`` and returns the cell's result record."""
    start = time.perf_counter()
    feats = {split: flat_weights(x) for split, (x, _) in splits.items()}
    (_, y_train), (_, y_val), (_, y_test) = splits["train"], splits["val"], splits["test"]
    predict, info = fit_trees(method, (feats["train"], y_train), (feats["val"], y_val), seed=TREE_SEED + seed)
    predicted = predict(feats["test"])
    record = {"seed": seed, "params": None, "train_runs": len(y_train), "val_runs": len(y_val),
              "test_runs": len(y_test), "steps": info["rounds"], "val_tau": kendall_tau(predict(feats["val"]), y_val),
              "best_step": info["rounds"], "test_tau": kendall_tau(predicted, y_test),
              "wall_s": time.perf_counter() - start, **test_predictions(predicted, y_test)}
    if moved is not None:
        record.update(moved_k=list(ROBUSTNESS_K),
                      moved_test_taus=[kendall_tau(predict(flat_weights(m)), y_test) for m in moved])
    harness.write_json(os.path.join(run_dir, "result.json"), record)
    return record


def test_predictions(predicted, true) -> dict:
    """``{"predicted": [...], "true": [...]}``: a cell's predicted and true test accuracies (for the scatter figure)."""
    return {"predicted": np.asarray(predicted, np.float64).round(5).tolist(),
            "true": np.asarray(true, np.float64).round(5).tolist()}


def moved_tests(splits: dict, dataset: str) -> list:
    """The test runs moved by `transformer_nfn.extended_group.move_each` for every k of `ROBUSTNESS_K` (FFN scalings
    log-U[1, 10^k], GL elements, permutations, LayerNorm shifts), the same moves for every method and seed."""
    key = jax.random.key(zlib.crc32(f"robustness {dataset}".encode()))
    return [move_each(splits["test"][0], jax.random.fold_in(key, k), scale_range=(1.0, 10.0 ** k))
            for k in ROBUSTNESS_K]


def method_inputs(method: str, splits: dict, moved: list | None, dataset: str) -> tuple[dict, list | None]:
    """The splits and moved test runs as ``method`` sees them: canonicalised (`extended_group.canonicalize`:
    invariant to FFN scalings and LayerNorm shifts) for "tnfn_canonical", and with the channels sorted as well
    (`extended_group.canonicalize_all`: invariant to the whole extended group but the paper's factors, which the
    predictor is invariant to) for "tnfn_sorted"; for "tnfn_augmented" the training split
    followed by one extended-group copy of every run (FFN scalings up to `AUGMENT_MAX_SCALE`); else unchanged."""
    if method in ("tnfn_canonical", "tnfn_sorted"):
        canonical = canonicalize if method == "tnfn_canonical" else canonicalize_all
        splits = {k: (canonical(x), y) for k, (x, y) in splits.items()}
        return splits, None if moved is None else [canonical(m) for m in moved]
    if method == "tnfn_augmented":
        x, y = splits["train"]
        key = jax.random.key(zlib.crc32(f"augment {dataset}".encode()))
        copies = move_each(x, key, scale_range=(1.0, AUGMENT_MAX_SCALE))
        train = (jax.tree.map(lambda a, b: np.concatenate([a, b]), x, copies), np.concatenate([y, y]))
        return {**splits, "train": train}, moved
    return splits, moved


def cell_dir(args: argparse.Namespace, dataset: str, table: str, threshold: float, method: str, seed: int) -> str:
    """The run folder of one cell and seed."""
    return os.path.join(args.work, "runs", dataset, table, f"t{threshold:g}", method, f"seed{seed}")


def study_cells(args: argparse.Namespace, dataset: str, study: str) -> list[tuple]:
    """(table, threshold, method, branches, robustness) of the chosen study: "prediction" the main cells at
    threshold 0, "thresholds" those above it, "ablation" the single-branch predictors beside the main "tnfn" cell
    (its "all branches" column), "robustness" the main cells at threshold 0 plus `ROBUST_METHODS`; "all" every
    one. Threshold-0 main cells are always scored on moved test runs too (one record serves both tables)."""
    chosen = STUDIES[1:] if study == "all" else (study,)
    main0 = list(args.methods) + [m for m in ROBUST_METHODS if "robustness" in chosen]
    cells = []
    if "prediction" in chosen or "robustness" in chosen:
        cells += [("main", 0.0, m, ALL_BRANCHES, True) for m in main0]
    if "thresholds" in chosen:
        cells += [("main", t, m, ALL_BRANCHES, False) for t in args.thresholds if t > 0 for m in args.methods]
    if "ablation" in chosen:  # beside the full predictor (the main table's "tnfn" cell)
        cells += [("main", 0.0, "tnfn", ALL_BRANCHES, True)] * all(c[:3] != ("main", 0.0, "tnfn") for c in cells)
        cells += [("ablation", 0.0, b, flags, False) for b, flags in BRANCHES.items()
                  if b != "embedding" or embedding_size(dataset)]
    return cells


def summarise(records: Sequence[dict]) -> list[dict]:
    """One row per (dataset, table, threshold, method or branches): test tau mean and std over seeds, scale."""
    cells = {}
    for r in records:
        cells.setdefault((r["dataset"], r["table"], r["threshold"], r["method"]), []).append(r)
    rows = []
    for (dataset, table, threshold, method), rs in cells.items():
        taus = np.asarray([r["test_tau"] for r in rs])
        rows.append({"dataset": dataset, "table": table, "threshold": threshold, "method": method,
                     "test_tau_mean": float(taus.mean()), "test_tau_std": float(taus.std()), "seeds": len(rs),
                     "test_taus": taus.tolist(), **{k: rs[0][k] for k in ("params", "train_runs", "val_runs",
                                                                           "test_runs", "steps")}})
        if any("same_runs_as_threshold" in r for r in rs):
            rows[-1]["same_runs_as_threshold"] = 0.0
        if all("moved_test_taus" in r for r in rs):
            moved = np.asarray([r["moved_test_taus"] for r in rs])  # [seeds, k]
            rows[-1].update(moved_k=rs[0]["moved_k"], moved_tau_mean=moved.mean(0).tolist(),
                            moved_tau_std=moved.std(0).tolist())
    return rows


def format_cell(r: dict | None) -> str:
    """A table cell: test tau mean +- std (seeds), "too few runs (train/val/test)" or "-" (no record)."""
    if r is not None and not np.isfinite(r["test_tau_mean"]):
        return f"too few runs ({r['train_runs']}/{r['val_runs']}/{r['test_runs']})"
    return "-" if r is None else f"{r['test_tau_mean']:.3f} +- {r['test_tau_std']:.3f} ({r['seeds']})"


def markdown(rows: Sequence[dict], settings: dict, zoos: dict, run: dict, drawn: Sequence[str] = ()) -> str:
    """The report: scale, the main table beside the published tau, the thresholds, the branch ablation, the
    robustness study and the ``drawn`` figures (keys of `FIGURES`)."""
    index = {(r["dataset"], r["table"], r["threshold"], r["method"]): r for r in rows}
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
    lines = ["# Transformer-NFN: predicting a transformer's test accuracy from its weights (Kendall tau)", "",
             f"Scale: {settings['scale']}.", ""] + [f"- zoo {d}: {z['text']}" for d, z in zoos.items()]
    lines += ["", "## All runs (threshold 0), test tau mean +- std (seeds)", ""]
    lines += harness.markdown_table(
        ["dataset", "train/val/test runs"] + [LABELS[m] for m in methods] + ["published Transformer-NFN"],
        [[d, "/".join(str(index[(d, "main", 0.0, methods[0])][k]) for k in ("train_runs", "val_runs", "test_runs"))]
         + [format_cell(index.get((d, "main", 0.0, m))) for m in methods] + [PUBLISHED[d] + " (unverified)"]
         for d in datasets if (d, "main", 0.0, methods[0]) in index])
    thresholds = sorted({r["threshold"] for r in rows if r["table"] == "main"})
    if len(thresholds) > 1:
        lines += ["", "## Runs below an accuracy threshold removed (per split, after splitting)", ""]
        lines += harness.markdown_table(["dataset", "threshold", "test runs"] + [LABELS[m] for m in methods],
                                        [[d, f"{t:g}", index[(d, "main", t, methods[0])]["test_runs"]]
                                         + [format_cell(index.get((d, "main", t, m))) for m in methods]
                                         for d in datasets for t in thresholds if (d, "main", t, methods[0]) in index])
        unfiltered = sorted({(r["dataset"], r["threshold"]) for r in rows if "same_runs_as_threshold" in r})
        lines += [""] * bool(unfiltered) + [
            f"{d} at {t:g}: no run falls below the threshold, so its cells are the threshold-0 cells (the same "
            "runs and seeds; their results, not retrained)." for d, t in unfiltered]
    ablation = [r for r in rows if r["table"] == "ablation"]
    if ablation:
        names = [b for b in BRANCHES if any(r["method"] == b for r in ablation)]
        lines += ["", "## Branch ablation (Transformer-NFN, library initialisation, threshold 0)", "",
                  "Published (MNIST, unverified): encoder branch alone 0.902.", ""]
        lines += harness.markdown_table(["dataset"] + [f"{b} branch alone" for b in names] + ["all branches"],
                                        [[d] + [format_cell(index.get((d, "ablation", 0.0, b))) for b in names]
                                         + [format_cell(index.get((d, "main", 0.0, "tnfn")))] for d in datasets])
    robust = [r for r in rows if "moved_tau_mean" in r]
    if robust:
        lines += ["", "## Robustness: test runs moved by the extended group (docs/transformer_nfn.md §10)", "",
                  "Every test run moved by its own random element: FFN hidden-unit scalings d ~ log-U[1, 10^k], "
                  "GL(Dk) / GL(Dv) per head, head, FFN and inter-block channel permutations, LayerNorm shifts; the "
                  "networks' functions, hence accuracies, are unchanged. Test tau mean +- std (seeds) on unmoved "
                  "runs and at each k; models trained on unmoved runs except \"trained with extended-group copies\" "
                  f"(one moved copy per training run, d up to {AUGMENT_MAX_SCALE:g}).", ""]
        lines += harness.markdown_table(
            ["dataset", "method", "unmoved"] + [f"k = {k}" for k in robust[0]["moved_k"]],
            [[r["dataset"], LABELS[r["method"]], format_cell(r)]
             + [f"{m:.3f} +- {sd:.3f}" for m, sd in zip(r["moved_tau_mean"], r["moved_tau_std"])] for r in robust])
    params = {}  # per method, its first trained cell's count (cells with too few runs trained nothing)
    for r in rows:
        if r["table"] == "main" and r["params"] is not None:
            params.setdefault(r["method"], r["params"])
    lines += ["", "Trainable parameters (first dataset): " + ", ".join(f"{LABELS[m]} {params[m]:,}" for m in methods
                                                                     if m in params)
              + ".", "", "Our zoos are far smaller and shorter than the published 16,000 runs of 100 epochs per task "
              "(above): compare methods within this table, not with the published values.", "",
              *[f"![{what}]({FIGURES[what]})" for what in drawn], "", "## Run", ""]
    lines += harness.run_markdown(run)
    return "\n".join(lines) + "\n"


def figures(records: Sequence[dict], rows: Sequence[dict], zoos: dict, out: str) -> list[str]:
    """Draws, beside the report, what the records hold: predicted against true test accuracy (threshold 0, first
    seed; a row per dataset, a panel per method), test tau against k of the robustness study (a panel per
    dataset, a line per method) and the zoos' test-accuracy histograms; returns the keys of `FIGURES` drawn."""
    drawn = []
    first = [r for r in records if r["table"] == "main" and r["threshold"] == 0 and "predicted" in r
             and r["seed"] == min(q["seed"] for q in records)]
    if first:
        datasets = list(dict.fromkeys(r["dataset"] for r in first))
        methods = [m for m in (*METHODS, *ROBUST_METHODS) if any(r["method"] == m for r in first)]
        harness.prediction_scatter(first, datasets, methods, LABELS, os.path.join(out, FIGURES["scatter"]),
                                   lambda dataset: f"predicted ({dataset})")
        drawn.append("scatter")
    robust = [r for r in rows if "moved_tau_mean" in r]
    if robust:
        datasets = list(dict.fromkeys(r["dataset"] for r in robust))
        fig, axes = harness.subplots(1, len(datasets), figsize=(4.0 * len(datasets), 3.0), squeeze=False)
        for r in robust:
            ax = axes[0][datasets.index(r["dataset"])]
            ax.errorbar(r["moved_k"], r["moved_tau_mean"], yerr=r["moved_tau_std"], marker="o", ms=3,
                        label=LABELS[r["method"]])
            ax.set_title(f"{r['dataset']}: test runs moved by the extended group", fontsize=8)
            ax.set_xlabel("k (FFN scalings d ~ log-U[1, 10^k])", fontsize=7)
            ax.set_ylabel("test Kendall tau", fontsize=7)
        axes[0][0].legend(fontsize=5)
        harness.save_figure(fig, os.path.join(out, FIGURES["robustness"]))
        drawn.append("robustness")
    if zoos:
        fig, axes = harness.subplots(1, len(zoos), figsize=(3.4 * len(zoos), 2.6), squeeze=False)
        for ax, (dataset, zoo) in zip(axes[0], zoos.items()):
            ax.hist(zoo["test_accuracy"], bins=20, range=(0.0, 1.0))
            ax.set_title(f"{dataset} zoo: {len(zoo['test_accuracy'])} runs (75% checkpoint)", fontsize=8)
            ax.set_xlabel("test accuracy", fontsize=7)
        axes[0][0].set_ylabel("runs", fontsize=7)
        harness.save_figure(fig, os.path.join(out, FIGURES["zoos"]))
        drawn.append("zoos")
    return drawn


def zoo_summary(zoo_rows: Sequence[dict], epoch: int, args: argparse.Namespace, dataset: str) -> dict:
    """A zoo's checkpoints at ``epoch``: ``{"text": one line (runs, scale, test accuracy range and histogram),
    "test_accuracy": [R]}`` (the accuracies, for the histogram figure)."""
    acc = np.asarray([r["test_accuracy"] for r in zoo_rows if int(r["epoch"]) == epoch], np.float64)
    acc = acc[np.isfinite(acc)]
    counts, _ = np.histogram(acc, bins=10, range=(0.0, 1.0))
    text = (f"{len(acc)} runs, {zoo_scale(args, dataset)}, "
            f"checkpoint epoch {epoch}; test accuracy {acc.min():.2f} .. {acc.max():.2f} (median "
            f"{np.median(acc):.2f}); histogram over [0, 1] in tenths: {counts.tolist()}")
    return {"text": text, "test_accuracy": acc.round(5).tolist()}


def zoo_scale(args: argparse.Namespace, dataset: str) -> str:
    """The zoo's scale in words: epochs, training rows and test rows of ``dataset``."""
    limit = lambda n: "all" if n is None else f"{n:,}"
    return (f"{args.zoo_epochs[dataset]} epochs on {limit(args.train_limit[dataset])} training rows, test accuracy "
            f"on {limit(args.test_limit[dataset])} test rows")


def prediction(args: argparse.Namespace) -> dict:
    """Run (or resume) the study; writes the report and returns its JSON record."""
    run = harness.start_run(calibrate=False)
    records, zoos = [], {}
    for dataset in args.datasets:
        zoo_dir = os.path.join(args.work, "zoos", f"{dataset}_transformer")
        [epoch] = transformer_checkpoint_epochs(args.zoo_epochs[dataset], (STUDY_FRACTION,))
        cells = study_cells(args, dataset, "all" if args.report else args.study)  # + other studies' finished cells
        done = lambda cell: all(os.path.exists(os.path.join(cell_dir(args, dataset, *cell[:3], seed), "result.json"))
                                for seed in range(args.seeds))
        cells += [c for c in study_cells(args, dataset, "all") if c not in cells and done(c)]
        run_dirs = {(table, threshold, method, seed): cell_dir(args, dataset, table, threshold, method, seed)
                    for table, threshold, method, *_ in cells for seed in range(args.seeds)}
        if args.report:  # the finished runs only (seeds as far as they got); nothing generated or trained
            summary = harness.read_json(os.path.join(args.work, "runs", dataset, "summary.json"))
            zoos[dataset] = summary or {"text": "not finished yet (no cell has run on it)", "test_accuracy": []}
            finished = {key: harness.read_json(os.path.join(d, studies.RESULT)) for key, d in run_dirs.items()}
            records += [{**r, "dataset": dataset, "table": table, "threshold": threshold, "method": method}
                        for (table, threshold, method, _), r in finished.items() if r is not None]
            continue
        zoos[dataset], _ = studies.study_inputs(
            os.path.join(args.work, "runs", dataset, "summary.json"), run_dirs.values(),
            lambda: (zoo_summary(generate_transformer_zoo(zoo_dir, dataset, args.models,
                                                          epochs=args.zoo_epochs[dataset], shard_size=args.shard_size,
                                                          train_limit=args.train_limit[dataset],
                                                          test_limit=args.test_limit[dataset],
                                                          progress=not args.quick, share=True,
                                                          checkpoint_fractions=(STUDY_FRACTION,)),
                                 epoch, args, dataset), None))
        splits, moved = {}, None  # per threshold (and the moved test runs), loaded only for a cell still to run
        robust = {cell[:3]: cell[4] for cell in cells}
        flags = {cell[:3]: cell[3] for cell in cells}

        def run_one(cell, run_dir):
            nonlocal moved
            table, threshold, method, seed = cell
            if threshold not in splits:
                splits[threshold] = load_splits(zoo_dir, epoch, threshold)
            record = too_few_runs(splits[threshold])
            if record is not None:  # stored like a trained cell: reported, and not looked at again
                record = {**record, "seed": seed}
                harness.write_json(os.path.join(run_dir, studies.RESULT), record)
                return record
            if table == "main" and threshold > 0:
                if 0.0 not in splits:
                    splits[0.0] = load_splits(zoo_dir, epoch, 0.0)
                record = unfiltered_record(splits[threshold], splits[0.0],
                                           cell_dir(args, dataset, table, 0.0, method, seed))
                if record is not None:  # nothing removed: the threshold-0 cell's result, not retrained
                    harness.write_json(os.path.join(run_dir, studies.RESULT), record)
                    return record
            robustness = robust[cell[:3]]
            if robustness and moved is None:
                moved = moved_tests(splits[threshold], dataset)
            inputs = method_inputs(method, splits[threshold], moved if robustness else None, dataset)
            if method in TREE_KINDS:
                record = run_tree_cell(inputs[0], method, seed, run_dir, inputs[1])
            else:
                kind = "tnfn" if table == "ablation" or method in ROBUST_METHODS else method
                model = build(kind, dataset, seed, flags[cell[:3]], args.quick)
                record = run_cell(inputs[0], model, seed, run_dir, args, inputs[1])
            if not args.quick:
                print(f"{dataset} {table} t{threshold:g} {method} seed {seed}: test tau {record['test_tau']:.3f}",
                      flush=True)
            return record

        for (table, threshold, method, _), record in studies.run_cells(run_dirs, run_one).items():
            records.append({**record, "dataset": dataset, "table": table, "threshold": threshold, "method": method})
    rows = summarise(records)
    settings = {"scale": (f"{args.models} runs per task ("
                          + "; ".join(f"{d}: {zoo_scale(args, d)}" for d in args.datasets)
                          + f"); {args.epochs} predictor epochs at batch 16; {args.seeds} seed(s)"
                          + ("; --quick miniature (tiny Transformer-NFN layers)" if args.quick else "")),
                **{k: getattr(args, k) for k in ("study", "datasets", "methods", "models", "zoo_epochs",
                                                  "train_limit", "test_limit", "epochs", "seeds", "thresholds",
                                                  "quick")}}
    record = run.finish()
    result = {"settings": settings, "zoos": zoos, "cells": rows, "run": record}
    drawn = figures(records, rows, zoos, args.out)
    harness.write_results(args.out, "tnfn_prediction", result, markdown(rows, settings, zoos, record, drawn))
    return result


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.tnfn_experiments", description=__doc__.splitlines()[0])
    p.add_argument("study", nargs="?", default="all", choices=STUDIES,
                   help="which cells to run (default all; see the module docstring)")
    p.add_argument("--datasets", "--tasks", dest="datasets", nargs="+", default=None, choices=tuple(DATASETS))
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    for name in ("models", "epochs", "seeds"):
        p.add_argument(f"--{name}", type=positive_int, default=None,
                       help=f"default {FULL[name]} ({QUICK[name]} with --quick)")
    for name, value in (("zoo-epochs", positive_int), ("train-limit", positive_int_or_all),
                        ("test-limit", positive_int_or_all)):
        key = name.replace("-", "_")
        p.add_argument(f"--{name}", type=studies.per_dataset_entry(tuple(DATASETS), value), nargs="+", default=None,
                       metavar="[DATASET=]V", help=f"V for every dataset or DATASET=V entries (limits: a count or "
                       f"'all'); default {FULL[key]} ({QUICK[key]} with --quick)")
    p.add_argument("--shard-size", type=positive_int, default=64, help="zoo runs trained as one population")
    p.add_argument("--thresholds", nargs="+", type=float, default=None,
                   help=f"test-accuracy thresholds (default {FULL['thresholds']})")
    p.add_argument("--quick", action="store_true", help="a miniature on MNIST (pipeline check, < 3 minutes)")
    p.add_argument("--report", action="store_true",
                   help="write the report from the runs finished so far (e.g. while other processes run the study)")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"results folder (default {DEFAULT_OUT})")
    p.add_argument("--work", default=None, help="zoos and run folders (default <out>/tnfn_runs)")
    add_compile_arguments(p)
    return p


def main(argv: Sequence[str] | None = None) -> dict:
    """Command line entry point (see the module docstring)."""
    args = parser().parse_args(argv)
    configure_compiles(args)
    defaults = QUICK if args.quick else FULL
    harness.fill_defaults(args, defaults, skip=PER_DATASET)
    for key in PER_DATASET:
        setattr(args, key, studies.resolve_per_dataset(f"--{key.replace('_', '-')}", getattr(args, key),
                                                       args.datasets, defaults[key]))
    args.work = args.work or os.path.join(args.out, "tnfn_runs")
    return prediction(args)


if __name__ == "__main__":
    main()
