"""Gradient-flow benchmark: W_2^2 curves of every method on every target, beside the TSW-SL paper's numbers.

``python -m benchmarks.tsw_flows [--settings library|authors] [--quick] [--out DIR] [--targets ...] [--methods ...]
[--runs R] [--steps N] [--high-dim-steps N] [--fresh]`` writes DIR/<stem>.json (every finished (target, method) cell,
saved as it completes; a rerun with the same settings skips finished cells and adds the new ones, and a rerun with
other settings is refused unless ``--fresh`` replaces the stored cells), DIR/<stem>.md (tables), DIR/<stem>.png
(curves, log scale) and DIR/<stem>.snapshots.png (particles of the first run); <stem> is ``tsw_flows`` for the
library profile and ``tsw_flows_authors`` for the authors' one.

Settings profiles (docs/tsw_sl.md §13.1):

* ``library`` (default): `tsw_sl.flows` as the library defines it: the library's targets, SW_2 as the SW loss,
  tree methods at p = 1, chain roots uniform in the unit box around the target mean with t ~ U(-1, 1), Db-TSW
  roots N(target mean, 0.1^2 I).
* ``authors``: the authors' public gradient-flow code (`benchmarks.tsw_authors`): their centred and rescaled
  targets, the loss n L SW_2^2, tree methods at p = 2 with roots N(target mean, 0.001^2 I) and t ~ U(-0.1, 0.1),
  Max-SW's inner lr 5e-3. The authors' report also puts the library profile's final values and the paper's
  side by side.

``--ablation`` runs the small study that explains the ordering on the swiss roll instead: SW against TSW-SL over
p in {1, 2}, the tree spread (authors' narrow trees vs the library's wide ones) and the learning rate, on the
authors' target, and writes DIR/tsw_flows_ablation.{json,md}.
"""
from __future__ import annotations

import os
import time
import zlib

import jax
import numpy as np
from tqdm.auto import tqdm

from benchmarks import harness
from benchmarks import tsw_authors as authors
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


PROFILES = ("library", "authors")


def profile_parts(profile):
    """(target sampler (name, key, n) -> [n, d], vmapped flow runner, default settings) of a settings profile."""
    if profile == "library":
        return targets.sample_target, flows.run_flows, flows.Settings()
    if profile == "authors":
        return authors.authors_target, authors.run_flows, authors.AuthorsSettings()
    raise ValueError(f"unknown settings profile {profile!r}; choose from {PROFILES}")


def flow_cell(data_key, flow_key, target, method, n_runs, n_steps, snapshot_every, settings=None,
              profile="library", lr=None):
    """Runs `n_runs` vmapped flows of `method` towards samples of `target` and measures them.

    `data_key` draws the targets and initial particles (share it across methods for paired comparisons),
    `flow_key` the slices / trees. `profile` ("library" or "authors") picks the targets, losses and default
    `settings` (`tsw_sl.flows.Settings` or `benchmarks.tsw_authors.AuthorsSettings`); `lr` defaults to
    `tsw_sl.flows.default_lr`.

    Returns a dict: iterations [S], w2_mean / w2_std [S] (exact W_2^2 over runs), w2_final [R] (every run's last
    value), lr, seconds per iteration of the compiled vmapped flow (all runs together) and compile seconds, and
    the first run's snapshots at iterations 0, n_steps / 5 and n_steps (only for d <= 3).
    """
    sample, runner, default_settings = profile_parts(profile)
    settings = default_settings if settings is None else settings
    k_src, k_tgt = jax.random.split(data_key)
    tgt = np.stack([np.asarray(sample(target, k, N_POINTS)) for k in jax.random.split(k_tgt, n_runs)])
    dim = tgt.shape[-1]
    src = jax.vmap(lambda k: flows.initial_particles(k, N_POINTS, dim))(jax.random.split(k_src, n_runs))
    lr = flows.default_lr(method, dim) if lr is None else lr
    static = dict(method=method, n_steps=n_steps, snapshot_every=snapshot_every, settings=settings)
    start = time.perf_counter()
    compiled = runner.lower(flow_key, src, tgt, lr=lr, **static).compile()
    compiled_at = time.perf_counter()
    snaps, _ = jax.block_until_ready(compiled(flow_key, src, tgt, lr=lr))
    seconds = time.perf_counter() - compiled_at
    snaps = np.asarray(snaps)
    w2 = np.array([[report.wasserstein2_squared(s, t) for s in run] for run, t in zip(snaps, tgt)])
    cell = dict(iterations=list(range(0, n_steps + 1, snapshot_every)), w2_mean=w2.mean(0).tolist(),
                w2_std=w2.std(0).tolist(), w2_final=w2[:, -1].tolist(), lr=lr, runs=n_runs, steps=n_steps,
                s_per_it=seconds / n_steps, compile_s=compiled_at - start)
    if dim <= 3:
        shown = [0, len(snaps[0]) // 5, len(snaps[0]) - 1]
        cell |= dict(snapshot_iterations=[cell["iterations"][i] for i in shown],
                     snapshots=snaps[0, shown].round(4).tolist(), target=tgt[0].round(4).tolist())
    return cell


def _fmt(values):
    return " / ".join(f"{v:.2e}" for v in values)


AUTHORS_METHODS = ("sw", "max_sw", "tsw_sl", "max_tsw_sl", "db_tsw")
STEMS = {"library": "tsw_flows", "authors": "tsw_flows_authors"}


def _missing_note(results, methods=ALL_METHODS):
    """A sentence naming the (target, method) cells not run yet, or nothing when every cell is there."""
    missing = [f"{t}/{m}" for t, cells in results.items() for m in methods if m not in cells]
    if not missing:
        return ""
    return (f" Not run yet: {', '.join(missing)}; rerunning `python -m benchmarks.tsw_flows` computes only the missing "
            "cells.")


def _scale(config, profile):
    """The paragraph saying how the cells of `profile` were run."""
    steps = f"{config['steps']} iterations"
    if config.get("high_dim_steps", config["steps"]) != config["steps"]:
        steps += f" ({config['high_dim_steps']} for the Gaussians in d >= 10)"
    common = (f"{config['runs']} runs of {steps}, {N_POINTS} particles from N(0, 0.25^2 I), Adam; learning rates 5e-3, "
              "5e-2 for the tree methods in d >= 10")
    if profile == "authors":
        settings = ("Settings: the authors' (docs/tsw_sl.md §13.1; `benchmarks.tsw_authors`): their targets (centred, "
                    "rescaled: swiss roll to max |coordinate| 1, 25 Gaussians / 2.828, Gaussians N(u, I) with "
                    "u ~ U(0, 1)^d); SW / Max-SW L = 100 directions with the loss n L SW_2^2, Max-SW 100 inner Adam "
                    "steps at lr 5e-3; tree methods L = 25 trees x k = 4 lines at p = 2, roots N(target mean, 0.001^2 I); "
                    "TSW-SL: chain trees, t ~ U(-0.1, 0.1), uniform splitting; Db-TSW: concurrent trees, distance "
                    "splitting, delta = 1; Max-TSW-SL: one chain tree, 100 inner steps at lr 1e-4")
    else:
        settings = ("Settings: the library's: SW / Max-SW L = 100 directions (p = 2); tree methods L = 25 trees x k = 4 "
                    "lines (p = 1; TSW-SL: chain trees, root uniform in the unit box around the target mean, "
                    "t ~ U(-1, 1), uniform splitting, which makes it SW_1 over the 100 lines (docs/tsw_sl.md §7); "
                    "TSW-SL (distance): the same trees with distance splitting, delta = 1; Db-TSW: concurrent trees, "
                    "roots N(target mean, 0.1^2 I), distance splitting, delta = 1; Max-TSW-SL: one chain tree of 4 "
                    "lines); Max methods 100 inner Adam steps at lr 1e-4")
    return (f"Scale: {common}. {settings}. Cells: mean (std) over runs at iterations steps / 5, 2 steps / 5, ..., "
            "steps; s/it: wall seconds per iteration of the compiled, vmapped flow of all runs together on this "
            "machine (2 shared CPU cores; the paper's timings are per run on a GPU; cells were run at different "
            "loads of the shared machine, so compare s/it within a row's order of magnitude only). Paper: TSW-SL "
            "v2, arXiv 2406.13725 (no 8-Gaussians or point-cloud numbers).")


def _final(cell):
    """'mean [median] (steps its)' of a cell's last W_2^2 ('-' for a missing cell; no median in older cells)."""
    if not cell:
        return "-"
    median = f" [{np.median(cell['w2_final']):.1e}]" if "w2_final" in cell else ""
    return f"{cell['w2_mean'][-1]:.2e}{median} ({cell['steps']} its)"


def side_by_side(results, library_results):
    """Markdown table: final W_2^2 per target and method, authors' profile | library profile | paper (2,500 its)."""
    lines = ["## Side by side: final W_2^2, mean over runs [median]", "",
             "A mean over runs can be set by one stuck run: the median says what a typical run reaches. The paper's "
             "value is taken at the authors' profile's iteration count (500, 1,000, ..., 2,500).", "",
             "| target | method | authors' settings | library settings | paper |", "|---|---|---|---|---|"]
    for target, cells in results.items():
        for method, c in cells.items():
            paper = PAPER.get((target, method), (None,))[0]
            at = c["steps"] // 500 - 1
            paper = f"{paper[at]:.2e} ({c['steps']} its)" if paper and c["steps"] % 500 == 0 and 0 <= at < 5 else "-"
            lines.append(f"| {target} | {report.LABELS[method]} | {_final(c)} | "
                         f"{_final(library_results.get(target, {}).get(method))} | {paper} |")
    return lines + [""]


def markdown(results, config, profile="library", library_results=None):
    """The tables of tsw_flows.md (or tsw_flows_authors.md, with the side-by-side table) from the JSON results."""
    methods = AUTHORS_METHODS if profile == "authors" else ALL_METHODS
    title = "Gradient flows: W_2^2 to the target (exact OT, POT `ot.emd2`)"
    if profile == "authors":
        title += ", authors' settings"
    lines = [f"# {title}", "",
             _scale(config, profile) + _missing_note(results, methods), ""]
    if library_results is not None:
        lines += side_by_side(results, library_results)
    describe = authors.describe_target if profile == "authors" else targets.describe
    for target, cells in results.items():
        steps = next(iter(cells.values())).get("steps", config["steps"])
        its = [steps * i // 5 for i in range(1, 6)]
        lines += [f"## {describe(target)}", "",
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


WIDE = dict(root_law="box", root_scale=1.0, t_range=(-1.0, 1.0))  # the library's chain trees
# (label, method, AuthorsSettings overrides, lr): SW against TSW-SL over p, the tree spread and the learning rate.
ABLATION = (
    ("SW, loss n L SW_2^2 (authors')", "sw", {}, 5e-3),
    ("SW, loss SW_2 (library's)", "sw", dict(sw_squared=False), 5e-3),
    ("TSW-SL p = 2, narrow trees (authors')", "tsw_sl", {}, 5e-3),
    ("TSW-SL p = 2, wide trees", "tsw_sl", dict(WIDE), 5e-3),
    ("TSW-SL p = 1, narrow trees", "tsw_sl", dict(p_tree=1), 5e-3),
    ("TSW-SL p = 1, wide trees (library's)", "tsw_sl", dict(p_tree=1, **WIDE), 5e-3),
    ("SW, loss n L SW_2^2, lr 5e-2", "sw", {}, 5e-2),
    ("TSW-SL p = 1, narrow trees, lr 5e-4", "tsw_sl", dict(p_tree=1), 5e-4),
)


def ablation_markdown(rows, config):
    """The table of tsw_flows_ablation.md: final W_2^2 (mean, std, median over runs) per variant."""
    lines = ["# Why the 2-D ordering differs: SW vs TSW-SL over p, tree spread and learning rate", "",
             f"Target: {authors.describe_target(config['target'])}. {config['runs']} runs of {config['steps']} "
             f"iterations, {N_POINTS} particles from N(0, 0.25^2 I), Adam, the authors' settings "
             "(`--settings authors`) except where the row says otherwise. Narrow trees: roots N(target mean, "
             "0.001^2 I), chain t ~ U(-0.1, 0.1) (the authors'); wide trees: roots uniform in the unit box around the "
             "target mean, t ~ U(-1, 1) (the library's). Paired: every row flows the same targets and initial "
             "particles. Paper (swiss roll, 2,500 its): SW 1.05e-3, TSW-SL 3.65e-8.", "",
             "| variant | W_2^2 at the end: mean (std) | median | at steps / 5 |", "|---|---|---|---|"]
    for label, c in rows.items():
        final = np.array(c["w2_final"])
        lines.append(f"| {label} | {final.mean():.2e} ({final.std():.1e}) | {np.median(final):.2e} | "
                     f"{c['w2_mean'][len(c['w2_mean']) // 5]:.2e} |")
    return "\n".join(lines + [""])


def run_ablation(args, runs, steps):
    """Runs ABLATION on the swiss roll (resuming finished rows) and writes tsw_flows_ablation.{json,md}."""
    stem = os.path.join(args.out, "tsw_flows_ablation")
    config = dict(target="swiss_roll", runs=runs, steps=steps, seed=args.seed, n_points=N_POINTS)
    saved = harness.read_json(stem + ".json", {})
    rows = saved.get("results", {}) if saved.get("config") == config else {}
    data_key = jax.random.fold_in(jax.random.key(args.seed), zlib.crc32(b"swiss_roll"))
    for i, (label, method, overrides, lr) in enumerate(tqdm(ABLATION, desc="ablation")):
        if label in rows:
            continue
        settings = authors.AuthorsSettings(**overrides)
        rows[label] = flow_cell(data_key, jax.random.fold_in(data_key, 100 + i), "swiss_roll", method, runs, steps,
                                steps // 25, settings, profile="authors", lr=lr)
        rows[label] |= dict(settings=repr(settings))
        harness.write_json(stem + ".json", dict(config=config, results=rows))
    harness.write_text(stem + ".md", ablation_markdown(rows, config))
    print(f"wrote {stem}.json, .md")


def main(argv=None):
    p = report.parser("Gradient flows with SW, Max-SW, TSW-SL, Max-TSW-SL and Db-TSW (TSW-SL paper, sec. 6.1).")
    p.add_argument("--settings", choices=PROFILES, default="library",
                   help="settings profile: the library's (default) or the authors' public code's (module docstring)")
    p.add_argument("--targets", nargs="+", default=None, help=f"default: {' '.join(LOW_DIM + HIGH_DIM)}")
    p.add_argument("--methods", nargs="+", default=None,
                   help=f"default: {' '.join(ALL_METHODS)} (authors: {' '.join(AUTHORS_METHODS)}; "
                        "quick: sw tsw_sl db_tsw)")
    p.add_argument("--runs", type=positive_int, default=None, help="runs per cell (default 10, quick 3)")
    p.add_argument("--steps", type=positive_int, default=None, help="iterations (default 2500, quick 500)")
    p.add_argument("--high-dim-steps", type=positive_int, default=None,
                   help="iterations for the Gaussians in d >= 10 (default: --steps)")
    p.add_argument("--ablation", action="store_true", help="run the swiss-roll ablation instead (module docstring)")
    p.add_argument("--fresh", action="store_true",
                   help="replace stored results of other settings (without it, a settings mismatch is an error)")
    args = report.parse_args(p, argv)
    quick = args.quick
    runs = args.runs or (3 if quick else 10)
    steps = args.steps or (500 if quick else 2500)
    high_steps = args.high_dim_steps or steps
    for name, value in (("--steps", steps), ("--high-dim-steps", high_steps)):
        if value % 25:
            p.error(f"{name} must be a multiple of 25; got {value}")
    if args.ablation:
        return run_ablation(args, runs, steps)
    profile = args.settings
    names = args.targets or (["swiss_roll", "25_gaussians"] if quick else list(LOW_DIM + HIGH_DIM))
    stem = os.path.join(args.out, STEMS[profile])
    config = dict(runs=runs, steps=steps, snapshot_every=steps // 25, seed=args.seed, n_points=N_POINTS)
    if high_steps != steps:
        config["high_dim_steps"] = high_steps
    if profile == "authors":
        config["settings"] = repr(authors.AuthorsSettings())
    saved = harness.read_json(stem + ".json", {})
    old = saved.get("config", {})
    if saved.get("results") and old != config and not args.fresh:
        changed = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
        p.error(f"{stem}.json holds results of other settings ({', '.join(changed)} differ): pass the same options "
                "to add cells to it, --fresh to replace it, or another --out")
    results = saved.get("results", {}) if old == config else {}
    default_methods = AUTHORS_METHODS if profile == "authors" else ALL_METHODS
    todo = [(t, m) for t in names
            for m in (args.methods or (("sw", "tsw_sl", "db_tsw") if quick else default_methods))
            if m not in results.get(t, {})]
    todo.sort(key=lambda cell: cell[1].startswith("max"))  # the costly Max methods last
    key = jax.random.key(args.seed)
    describe = authors.describe_target if profile == "authors" else targets.describe
    for target, method in tqdm(todo, desc="flows"):
        data_key = jax.random.fold_in(key, zlib.crc32(target.encode()))
        flow_key = jax.random.fold_in(data_key, ALL_METHODS.index(method))
        n = high_steps if target in HIGH_DIM else steps
        results.setdefault(target, {})[method] = flow_cell(data_key, flow_key, target, method, runs, n, n // 25,
                                                           profile=profile)
        harness.write_json(stem + ".json", dict(config=config, targets={t: describe(t) for t in results},
                                                results=results))
    library = None
    if profile == "authors":
        library = harness.read_json(os.path.join(args.out, STEMS["library"] + ".json"), {}).get("results", {})
    harness.write_text(stem + ".md", markdown(results, config, profile, library))
    plot_curves(results, stem + ".png")
    plot_snapshots(results, stem + ".snapshots.png")
    print(f"wrote {stem}.json, .md, .png, .snapshots.png")


if __name__ == "__main__":
    main()
