"""Generator benchmark: MLP generators trained with SW and TSW-SL (equal number of lines) on MNIST and
Fashion-MNIST, scored with the classifier Frechet distance (not the Inception FID), several seeds.

The generator and its training loop are `tsw_sl.generate`; this module adds the data, the score and the report.
Quality is the *classifier Frechet distance*: the Frechet distance between Gaussians fitted to the
penultimate-layer features (128-d) of a small MLP classifier (784-256-128-10) trained here on the same data set
(``train_classifier``). It plays the role of FID but is NOT the Inception FID and its values are not comparable
to published FIDs.

``python -m benchmarks.tsw_generate [--quick] [--out DIR] [--run-dir DIR] [--datasets ...] [--seeds S]
[--steps N]`` writes DIR/tsw_generate.json, .md and .png (sample grids and distance curves); checkpoints go to
--run-dir (runs are resumed from there).
"""
from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.linalg
from tqdm.auto import tqdm

from benchmarks import harness
from benchmarks import tsw_report as report
from common.cli import positive_int
from common.data import load_fashion_mnist, load_mnist
from common.training import fit
from tsw_sl import flows
from tsw_sl import generate as gen

DATASETS = {"mnist": load_mnist, "fashion_mnist": load_fashion_mnist}
CLASSIFIER_SIZES = (784, 256, 128, 10)
# The paper's comparison at this scale: the same number of lines, SW L = 100 vs TSW-SL L = 20 trees x k = 5;
# p = 2 for both (the authors' TSW-SL code uses p = 2 in its generative runs, docs/tsw_sl.md §8).
CONFIGS = {"sw": flows.Settings(n_directions=100), "tsw_sl": flows.Settings(n_directions=100, n_lines=5, p_tree=2)}
CONFIG_LABELS = {"sw": "SW (L = 100)", "tsw_sl": "TSW-SL (L = 20, k = 5)"}


def load_images(dataset, split="train"):
    """Images of `dataset` ("mnist" or "fashion_mnist") flattened to float32 [N, 784] in [0, 1], and labels [N]."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose from {sorted(DATASETS)}")
    images, labels = DATASETS[dataset](split)
    return images.reshape(len(images), -1).astype(np.float32) / 255.0, labels


def classifier_loss(params, batch, key):
    """Cross-entropy of the classifier on batch = (images [b, 784], labels [b]); returns (loss, {"accuracy"})."""
    del key
    images, labels = batch
    logits = gen.mlp_apply(params, images)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, {"accuracy": jnp.mean(jnp.argmax(logits, -1) == labels)}


def train_classifier(key, images, labels, num_steps, batch_size=128, lr=1e-3, run_dir=None, progress=False):
    """Trains the feature classifier (MLP 784-256-128-10, Adam) with `common.training.fit`; returns params.

    A finished run in `run_dir` is restored instead of retrained."""
    k_init, k_fit = jax.random.split(key)
    seed = int(jax.random.randint(k_init, (), 0, 2**31 - 1))
    state, _ = fit(classifier_loss, gen.init_mlp(k_init, CLASSIFIER_SIZES), optax.adam(lr),
                   gen.sampler((images, labels.astype(np.int32)), batch_size, seed), key=k_fit,
                   num_steps=num_steps, run_dir=run_dir, checkpoint_every=num_steps, progress=progress)
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
    return gen.mlp_features(classifier, images)


def classifier_frechet(classifier, reference_stats, images):
    """Classifier Frechet distance between `images` [n, 784] and reference statistics (`gaussian_stats`)."""
    return frechet_distance(gaussian_stats(classifier_features(classifier, images)), reference_stats)


def grid(images, rows=8, side=28):
    """Tiles rows x rows images [n, side^2] into one [rows side, rows side] array."""
    tiles = np.asarray(images[: rows * rows]).reshape(rows, rows, side, side)
    return tiles.transpose(0, 2, 1, 3).reshape(rows * side, rows * side)


def seconds_per_step(params, batch, method, settings, repeats=20):
    """Wall seconds of one compiled loss-and-gradient evaluation of the generator (median of `repeats`)."""
    grad = jax.jit(jax.grad(lambda p, k: gen.generator_loss(p, batch, k, method, settings)[0]))
    jax.block_until_ready(grad(params, jax.random.key(0)))
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(grad(params, jax.random.key(i)))
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def run_dataset(dataset, args, key):
    """Classifier, reference statistics and every (method, seed) generator of one data set -> (cell, grids)."""
    train, labels = load_images(dataset, "train")
    test, test_labels = load_images(dataset, "test")
    k_clf, k_eval, k_ref = jax.random.split(jax.random.fold_in(key, len(dataset)), 3)
    clf = train_classifier(k_clf, train, labels, args.classifier_steps,
                           run_dir=os.path.join(args.run_dir, f"classifier_{dataset}_{args.classifier_steps}"))
    accuracy = float(np.mean(np.argmax(np.asarray(gen.mlp_apply(clf, test)), -1) == test_labels))
    ref = gaussian_stats(classifier_features(clf, test[: args.n_eval]))
    real = np.asarray(jax.random.choice(k_ref, len(train), (args.n_eval,), replace=False))
    cell = dict(classifier_test_accuracy=accuracy, real_train_vs_test=classifier_frechet(clf, ref, train[real]))
    grids = {}
    for method, settings in CONFIGS.items():
        runs = []
        for seed in range(args.seeds):
            def evaluate(params):
                return {"cfd": classifier_frechet(clf, ref, gen.samples(params, k_eval, args.n_eval))}

            tag = f"L{settings.n_directions}k{settings.n_lines}p{settings.p_sw}{settings.p_tree}"
            run_dir = os.path.join(args.run_dir, f"{dataset}_{method}_{tag}_seed{seed}_{args.steps}")
            params, history = gen.train_generator(
                jax.random.key(seed), train, method, args.steps, settings=settings, run_dir=run_dir,
                checkpoint_every=args.eval_every, eval_fn=evaluate, eval_every=args.eval_every, progress=True)
            evals = [(h["step"], h["eval/cfd"]) for h in history if "eval/cfd" in h]
            runs.append(dict(seed=seed, cfd=evaluate(params)["cfd"], eval_steps=[s for s, _ in evals],
                             eval_cfd=[v for _, v in evals], first_loss=history[0]["loss"],
                             final_loss=float(np.mean([h["loss"] for h in history[-20:]]))))
            if seed == 0:
                grids[(dataset, method)] = grid(gen.samples(params, jax.random.key(123), 64))
        cfd = [r["cfd"] for r in runs]
        cell[method] = dict(label=CONFIG_LABELS[method], cfd_mean=float(np.mean(cfd)), cfd_std=float(np.std(cfd)),
                            runs=runs, s_per_step=seconds_per_step(params, train[:128], method, settings))
    return cell, grids


def figure(results, grids, path):
    """Sample grids (seed 0) per data set and method, and the classifier Frechet distance during training."""
    datasets = list(results)
    cols = len(CONFIGS) + 1
    fig, axes = harness.subplots(len(datasets), cols, figsize=(3.3 * cols, 3.3 * len(datasets)), squeeze=False)
    for row, dataset in zip(axes, datasets):
        for ax, method in zip(row, CONFIGS):
            ax.imshow(grids[(dataset, method)], cmap="gray", vmin=0, vmax=1)
            ax.set_title(f"{dataset}: {CONFIG_LABELS[method]}", fontsize=8)
            ax.axis("off")
        for method in CONFIGS:
            for r in results[dataset][method]["runs"]:
                row[-1].plot(r["eval_steps"], r["eval_cfd"], color="C0" if method == "sw" else "C1",
                             label=CONFIG_LABELS[method] if r["seed"] == 0 else None)
        row[-1].axhline(results[dataset]["real_train_vs_test"], color="k", ls=":", label="real train vs test")
        row[-1].set_yscale("log")
        row[-1].set_xlabel("step")
        row[-1].set_title("classifier Frechet distance", fontsize=8)
        row[-1].legend(fontsize=7)
    harness.save_figure(fig, path, dpi=80)


def markdown(results, config):
    """The tables of tsw_generate.md."""
    lines = ["# Sliced-Wasserstein generators: SW vs TSW-SL with equal numbers of lines", "",
             "**Metric: a Frechet distance in the features of our own classifier (the 'classifier Frechet distance', "
             "CFD), NOT the FID.** It is the Frechet distance between Gaussian fits of the 128-d penultimate features "
             f"of a small MLP classifier (784-256-128-10, {config['classifier_steps']} Adam steps) that this benchmark "
             "trains on the same data set (MNIST or Fashion-MNIST), not of the Inception network; its values are not "
             "comparable to published FIDs.", "",
             f"Scale: MLP generator (32 -> 256 -> 512 -> 784, sigmoid) trained in pixel space for {config['steps']} "
             f"steps (batch 128, Adam lr 1e-3, b1 0.5) with the distance between generated and real batches as the "
             f"loss; {config['seeds']} seeds, mean +- std over seeds; SW p = 2; TSW-SL chain trees, uniform "
             "splitting, p = 2 (the authors' convention in their generative runs). CFD of "
             f"{config['n_eval']} generated samples against {config['n_eval']} test images; lower is better; 'real' "
             "is the CFD of real training images against the test images (the floor at this sample size). s/step: "
             "median wall time of one compiled loss-and-gradient evaluation (batch 128).", "",
             "| data set | classifier test acc. | real | SW (L = 100) CFD | TSW-SL (L = 20, k = 5) CFD | per seed SW; TSW-SL "
             "| s/step SW / TSW-SL |", "|---|---|---|---|---|---|---|"]
    for dataset, c in results.items():
        per_step = " / ".join(f"{c[m]['s_per_step']:.4f}" for m in CONFIGS)
        per_seed = "; ".join(", ".join(f"{r['cfd']:.1f}" for r in c[m]["runs"]) for m in CONFIGS)
        lines.append(f"| {dataset} | {c['classifier_test_accuracy']:.3f} | {c['real_train_vs_test']:.2f} | "
                     + " | ".join(f"{c[m]['cfd_mean']:.2f} +- {c[m]['cfd_std']:.2f}" for m in CONFIGS)
                     + f" | {per_seed} | {per_step} |")
    lines += ["", "Paper (SN-GAN on CIFAR-10, Inception FID, 3 runs; TSW-SL paper v2, arXiv 2406.13725): SW L = 50 "
              "16.80 +- 0.45 vs TSW-SL L = 10, k = 5 15.44 +- 0.42; SW L = 500 14.23 +- 0.84 vs TSW-SL L = 100, "
              "k = 5 13.27 +- 0.23. Those anchors are not reproduced here (no GAN, no CIFAR training split, CPU only, "
              "and a different metric).", "", "![samples](tsw_generate.png)", ""]
    return "\n".join(lines)


def main(argv=None):
    p = report.parser("MLP generators trained with SW and TSW-SL losses (TSW-SL paper, sec. 6.3, reduced scale).")
    p.add_argument("--datasets", nargs="+", default=None, choices=list(DATASETS),
                   help="default: mnist fashion_mnist (quick: mnist)")
    p.add_argument("--seeds", type=positive_int, default=None, help="seeds per configuration (default 3, quick 1)")
    p.add_argument("--steps", type=positive_int, default=None, help="generator steps (default 2000, quick 200)")
    p.add_argument("--classifier-steps", type=positive_int, default=None, help="default 2000, quick 300")
    p.add_argument("--n-eval", type=positive_int, default=None, help="samples per Frechet distance (default 5000, quick 1000)")
    p.add_argument("--run-dir", default=None,
                   help="checkpoints, resumed if present (default runs/tsw_generate; quick: OUT/tsw_generate_runs)")
    args = report.parse_args(p, argv)
    q = args.quick
    args.datasets = args.datasets or (["mnist"] if q else list(DATASETS))
    args.seeds = args.seeds or (1 if q else 3)
    args.steps = args.steps or (200 if q else 2000)
    args.classifier_steps = args.classifier_steps or (300 if q else 2000)
    args.n_eval = args.n_eval or (1000 if q else 5000)
    args.eval_every = max(args.steps // 10, 1)
    args.run_dir = args.run_dir or (os.path.join(args.out, "tsw_generate_runs") if q else "runs/tsw_generate")
    config = dict(steps=args.steps, seeds=args.seeds, classifier_steps=args.classifier_steps, n_eval=args.n_eval,
                  seed=args.seed)
    key = jax.random.key(args.seed)
    results, grids = {}, {}
    for dataset in tqdm(args.datasets, desc="generators"):
        results[dataset], g = run_dataset(dataset, args, key)
        grids |= g
    stem = os.path.join(args.out, "tsw_generate")
    harness.write_json(stem + ".json", dict(config=config, results=results))
    harness.write_text(stem + ".md", markdown(results, config))
    figure(results, grids, stem + ".png")
    print(f"wrote {stem}.json, .md, .png")


if __name__ == "__main__":
    main()
