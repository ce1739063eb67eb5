"""Gradient-flow benchmark: W_2^2 curves of every method on every target, beside the TSW-SL paper's numbers.

``python -m benchmarks.tsw_flows [--quick] [--out DIR] [--targets ...] [--methods ...] [--runs R] [--steps N]`` writes
DIR/tsw_flows.json (every finished (target, method) cell, saved as it completes; a rerun with the same settings
skips finished cells), DIR/tsw_flows.md (tables), DIR/tsw_flows.png (curves, log scale) and
DIR/tsw_flows.snapshots.png (particles of the first run).
"""
from __future__ import annotations

import os
import time
import zlib

import jax
import numpy as np
from tqdm.auto import tqdm

from benchmarks import harness
from benchmarks import tsw_report as report
from common.cli import positive_int
from tsw_sl import flows, targets

N_POINTS = 100
LOW_DIM = ("swiss_roll", "25_gaussians", "8_gaussians", "heart", "crescent", "bunny", "spot")
HIGH_DIM = tuple(f"gaussian_{d}" for d in targets.GAUSSIAN_DIMS)
ALL_METHODS = ("sw", "max_sw", "tsw_sl", "tsw_sl_distance", "max_tsw_sl", "db_tsw")

# TSW-SL paper v2 (arXiv 2406.13725, gradient-flow tables): W_2^2 at iterations 500 ... 2500 and seconds per iteration.
PAPER = {
    ("swiss_roll", "sw"): ([5.73e-3, 2.04e-3, 1.23e-3, 1.11e-3, 1.05e-3], 0.009),
    ("swiss_roll", "max_sw"): ([2.47e-2, 1.03e-2, 6.10e-3, 4.47e-3, 3.45e-3], 2.46),
    ("swiss_roll", "tsw_sl"): ([9.41e-3, 2.03e-7, 9.63e-8, 4.44e-8, 3.65e-8], 0.014),
    ("swiss_roll", "max_tsw_sl"): ([2.75e-6, 8.24e-7, 5.14e-7, 5.02e-7, 5.00e-7], 2.53),
    ("25_gaussians", "sw"): ([1.61e-1, 9.52e-2, 3.44e-2, 2.56e-2, 2.20e-2], 0.006),
    ("25_gaussians", "max_sw"): ([5.09e-1, 2.36e-1, 1.33e-1, 9.70e-2, 8.48e-2], 2.38),
    ("25_gaussians", "tsw_sl"): ([3.49e-1, 9.06e-2, 2.96e-2, 1.20e-2, 3.03e-7], 0.010),
    ("25_gaussians", "max_tsw_sl"): ([1.12e-1, 8.28e-3, 1.61e-6, 7.32e-7, 5.19e-7], 2.49),
    ("gaussian_10", "sw"): ([4.32e-3, 2.94e-3, 2.81e-3, 2.23e-3, 2.28e-3], 0.010),
    ("gaussian_10", "tsw_sl"): ([2.81e-3, 2.00e-3, 1.55e-3, 1.59e-3, 1.75e-3], 0.015),
    ("gaussian_50", "sw"): ([50.41, 45.69, 42.56, 38.81, 35.75], 0.014),
    ("gaussian_50", "tsw_sl"): ([39.26, 21.91, 11.91, 4.08, 1.72], 0.018),
    ("gaussian_75", "sw"): ([92.39, 90.79, 90.07, 86.58, 90.31], 0.015),
    ("gaussian_75", "tsw_sl"): ([79.71, 67.99, 53.92, 44.91, 31.61], 0.018),
    ("gaussian_100", "sw"): ([130.12, 128.13, 128.58, 129.80, 128.29], 0.018),
    ("gaussian_100", "tsw_sl"): ([117.66, 103.23, 93.41, 80.46, 75.28], 0.019),
    ("gaussian_150", "sw"): ([214.09, 213.71, 215.05, 212.90, 216.32], 0.020),
    ("gaussian_150", "tsw_sl"): ([203.30, 190.62, 186.77, 183.52, 182.63], 0.022),
    ("gaussian_200", "sw"): ([302.84, 301.35, 303.07, 302.70, 301.51], 0.020),
    ("gaussian_200", "tsw_sl"): ([289.83, 283.34, 276.94, 279.24, 279.08], 0.021),
}


def flow_cell(data_key, flow_key, target, method, n_runs, n_steps, snapshot_every, settings=flows.Settings()):
    """Runs `n_runs` vmapped flows of `method` towards samples of `target` and measures them.

    `data_key` draws the targets and initial particles (share it across methods for paired comparisons),
    `flow_key` the slices / trees.

    Returns a dict: iterations [S], w2_mean / w2_std [S] (exact W_2^2 over runs), lr, seconds per iteration
    of the compiled vmapped flow (all runs together) and compile seconds, and the first run's snapshots
    at iterations 0, n_steps / 5 and n_steps (only for d <= 3).
    """
    k_src, k_tgt = jax.random.split(data_key)
    tgt = np.stack([targets.sample_target(target, k, N_POINTS) for k in jax.random.split(k_tgt, n_runs)])
    dim = tgt.shape[-1]
    src = jax.vmap(lambda k: flows.initial_particles(k, N_POINTS, dim))(jax.random.split(k_src, n_runs))
    lr = flows.default_lr(method, dim)
    static = dict(method=method, n_steps=n_steps, snapshot_every=snapshot_every, settings=settings)
    start = time.perf_counter()
    compiled = flows.run_flows.lower(flow_key, src, tgt, lr=lr, **static).compile()
    compiled_at = time.perf_counter()
    snaps, _ = jax.block_until_ready(compiled(flow_key, src, tgt, lr=lr))
    seconds = time.perf_counter() - compiled_at
    snaps = np.asarray(snaps)
    w2 = np.array([[report.wasserstein2_squared(s, t) for s in run] for run, t in zip(snaps, tgt)])
    cell = dict(iterations=list(range(0, n_steps + 1, snapshot_every)), w2_mean=w2.mean(0).tolist(),
                w2_std=w2.std(0).tolist(), lr=lr, runs=n_runs, steps=n_steps,
                s_per_it=seconds / n_steps, compile_s=compiled_at - start)
    if dim <= 3:
        shown = [0, len(snaps[0]) // 5, len(snaps[0]) - 1]
        cell |= dict(snapshot_iterations=[cell["iterations"][i] for i in shown],
                     snapshots=snaps[0, shown].round(4).tolist(), target=tgt[0].round(4).tolist())
    return cell


def _fmt(values):
    return " / ".join(f"{v:.2e}" for v in values)


def _missing_note(results):
    """A sentence naming the (target, method) cells not run yet, or nothing when every cell is there."""
    missing = [f"{t}/{m}" for t, cells in results.items() for m in ALL_METHODS if m not in cells]
    if not missing:
        return ""
    return (f" Not run yet: {', '.join(missing)}; rerunning `python -m benchmarks.tsw_flows` computes only the missing "
            "cells.")


def markdown(results, config):
    """The tables of tsw_flows.md from the JSON results."""
    lines = ["# Gradient flows: W_2^2 to the target (exact OT, POT `ot.emd2`)", "",
             f"Scale: {config['runs']} runs of {config['steps']} iterations, {N_POINTS} particles from "
             "N(0, 0.25^2 I), Adam; SW / Max-SW L = 100 directions (p = 2); tree methods L = 25 trees x k = 4 "
             "lines (p = 1; TSW-SL: chain trees, root uniform in the unit box around the target mean, t ~ U(-1, 1), "
             "uniform splitting, which makes it SW_1 over the 100 lines (docs/tsw_sl.md §7); TSW-SL (distance): the same "
             "trees with distance splitting, delta = 1; Db-TSW: concurrent trees, roots N(target mean, 0.1^2 I), "
             "distance splitting, delta = 1; Max-TSW-SL: one chain tree of 4 lines); Max methods 100 inner Adam steps at lr 1e-4. Learning rates "
             "5e-3, 5e-2 for tree methods in d >= 10. Cells: mean (std) over runs at iterations "
             "steps / 5, 2 steps / 5, ..., steps; s/it: wall seconds per iteration of the compiled, vmapped "
             f"flow of all runs together on this machine (2 shared CPU cores; the paper's timings are per run "
             "on a GPU; cells were run in several sessions at different loads of the shared machine, so compare s/it "
             "within a row's order of magnitude only). Paper: TSW-SL v2, arXiv 2406.13725 (no 8-Gaussians or "
             "point-cloud numbers)." + _missing_note(results), ""]
    for target, cells in results.items():
        its = [config["steps"] * i // 5 for i in range(1, 6)]
        lines += [f"## {targets.describe(target)}", "",
                  f"| method | W_2^2 at {' / '.join(map(str, its))} (std at the end) | s/it | paper (500 / ... / 2500) "
                  "| paper s/it |", "|---|---|---|---|---|"]
        for method, c in cells.items():
            idx = [c["iterations"].index(it) for it in its]
            ours = _fmt([c["w2_mean"][i] for i in idx]) + f" ({c['w2_std'][idx[-1]]:.1e})"
            paper, paper_s = PAPER.get((target, method), (None, None))
            lines.append(f"| {report.LABELS[method]} | {ours} | {c['s_per_it']:.4f} | "
                         f"{_fmt(paper) if paper else '-'} | {paper_s or '-'} |")
        lines.append("")
    return "\n".join(lines)


def plot_curves(results, path):
    """W_2^2 against iteration (log scale), one panel per target, mean +- std over runs."""
    n = len(results)
    cols = min(n, 4)
    rows = -(-n // cols)
    fig, axes = harness.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    for ax, (target, cells) in zip(axes.ravel(), results.items()):
        for method, c in cells.items():
            mean, std = np.array(c["w2_mean"]), np.array(c["w2_std"])
            colour = f"C{ALL_METHODS.index(method)}"  # one colour per method in every panel
            ax.plot(c["iterations"], mean, color=colour, label=report.LABELS[method])
            ax.fill_between(c["iterations"], np.maximum(mean - std, mean * 1e-2), mean + std, color=colour, alpha=0.2)
        ax.set_yscale("log")
        ax.set_title(target)
        ax.set_xlabel("iteration")
        ax.set_ylabel("W2^2")
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    axes[0, 0].legend(fontsize=7)
    harness.save_figure(fig, path)


def plot_snapshots(results, path):
    """Particles of the first run (final iteration, coloured) over the target (grey): targets x methods."""
    low = {t: c for t, c in results.items() if all("snapshots" in v for v in c.values())}
    if not low:
        return
    methods = list(dict.fromkeys(m for c in low.values() for m in c))
    fig, axes = harness.subplots(len(low), len(methods), figsize=(2.2 * len(methods), 2.2 * len(low)),
                             squeeze=False)
    for row, (target, cells) in zip(axes, low.items()):
        for ax, method in zip(row, methods):
            ax.set_xticks([])
            ax.set_yticks([])
            if method not in cells:
                continue
            tgt, snaps = np.array(cells[method]["target"]), np.array(cells[method]["snapshots"])
            ax.scatter(tgt[:, 0], tgt[:, 1], s=6, c="0.7")
            ax.scatter(snaps[1][:, 0], snaps[1][:, 1], s=3, c="tab:orange", alpha=0.5)
            ax.scatter(snaps[-1][:, 0], snaps[-1][:, 1], s=3, c="tab:blue")
            ax.set_title(f"{target} {report.LABELS[method]}", fontsize=7)
    fig.suptitle("grey: target; orange: iteration N/5; blue: final", fontsize=8)
    harness.save_figure(fig, path, dpi=70)


def main(argv=None):
    p = report.parser("Gradient flows with SW, Max-SW, TSW-SL, Max-TSW-SL and Db-TSW (TSW-SL paper, sec. 6.1).")
    p.add_argument("--targets", nargs="+", default=None, help=f"default: {' '.join(LOW_DIM + HIGH_DIM)}")
    p.add_argument("--methods", nargs="+", default=None,
                   help=f"default: {' '.join(ALL_METHODS)} (quick: sw tsw_sl db_tsw)")
    p.add_argument("--runs", type=positive_int, default=None, help="runs per cell (default 10, quick 3)")
    p.add_argument("--steps", type=positive_int, default=None, help="iterations (default 2500, quick 500)")
    args = p.parse_args(argv)
    quick = args.quick
    runs = args.runs or (3 if quick else 10)
    steps = args.steps or (500 if quick else 2500)
    if steps % 25:
        p.error(f"--steps must be a multiple of 25; got {steps}")
    every = steps // 25
    names = args.targets or (["swiss_roll", "25_gaussians"] if quick else list(LOW_DIM + HIGH_DIM))
    stem = os.path.join(args.out, "tsw_flows")
    config = dict(runs=runs, steps=steps, snapshot_every=every, seed=args.seed, n_points=N_POINTS)
    saved = harness.read_json(stem + ".json", {})
    results = saved.get("results", {}) if saved.get("config") == config else {}
    todo = [(t, m) for t in names
            for m in (args.methods or (("sw", "tsw_sl", "db_tsw") if quick else ALL_METHODS))
            if m not in results.get(t, {})]
    todo.sort(key=lambda cell: cell[1].startswith("max"))  # the costly Max methods last
    key = jax.random.key(args.seed)
    for target, method in tqdm(todo, desc="flows"):
        data_key = jax.random.fold_in(key, zlib.crc32(target.encode()))
        flow_key = jax.random.fold_in(data_key, ALL_METHODS.index(method))
        results.setdefault(target, {})[method] = flow_cell(data_key, flow_key, target, method, runs, steps, every)
        harness.write_json(stem + ".json", dict(config=config, targets={t: targets.describe(t) for t in results},
                                            results=results))
    harness.write_text(stem + ".md", markdown(results, config))
    plot_curves(results, stem + ".png")
    plot_snapshots(results, stem + ".snapshots.png")
    print(f"wrote {stem}.json, .md, .png, .snapshots.png")


if __name__ == "__main__":
    main()
