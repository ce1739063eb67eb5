"""Gradient flows on the sphere S^2 towards a mixture of von Mises-Fisher distributions (docs/tsw_sl.md §11).

``python -m benchmarks.stsw_flows [--quick] [--out DIR] [--runs R] [--steps N]`` writes DIR/stsw_flows.json,
DIR/stsw_flows.md (tables) and DIR/stsw_flows.png (W_2^2 curves and the STSW flow drawn on the sphere).

Particles start in a cap around the north pole and follow projected Adam steps (an Adam step in R^3, then back
onto the sphere by normalising) on D(X, Y), for D the spherical TSW (`tsw_sl.spherical_tsw`, L trees of k = 4
edges), the spherical sliced W_2 (`tsw_sl.spherical_sliced_wasserstein`, L k great circles; it equals POT's
`ot.sliced_wasserstein_sphere` given the same circles, which POT 0.9.7 cannot differentiate with JAX) or the
sliced W_2 of the points seen in R^3 (`tsw_sl.sliced_wasserstein`, L k directions). Progress is measured by the
exact W_2^2 with the squared geodesic cost (POT's `ot.emd2`) and by POT's SSW_2^2 (L k great circles of its own
seed) of the particles at each snapshot.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import ot
from scipy.stats import vonmises_fisher

from benchmarks import harness
from benchmarks import tsw_report as report
from common.cli import positive_int
from tsw_sl import sliced_wasserstein, spherical_sliced_wasserstein, spherical_tsw
from tsw_sl.trees import normalize

N_POINTS = 200
N_LINES = 4
MODES = np.array([[1, 1, 1], [-1, 1, -1], [1, -1, -1], [-1, -1, 1]]) / np.sqrt(3.0)  # a tetrahedron
KAPPA = 50.0
SOURCE_KAPPA = 10.0  # the initial cap around the north pole
METHODS = ("stsw", "ssw", "sw_projected")


def vmf_mixture(rng: np.random.Generator, n: int) -> np.ndarray:
    """n points of the equal-weight mixture of vMF(mode, KAPPA) over MODES: [n, 3]."""
    which = rng.integers(0, len(MODES), n)
    out = np.empty((n, 3))
    for i, mode in enumerate(MODES):
        out[which == i] = vonmises_fisher(mode, KAPPA).rvs(int(np.sum(which == i)), random_state=rng)
    return out


def _loss(method, x, y, key, n_dirs, delta):
    if method == "stsw":
        return spherical_tsw(x, y, key=key, n_trees=n_dirs // N_LINES, n_lines=N_LINES, delta=delta, p=2)
    if method == "ssw":
        return spherical_sliced_wasserstein(x, y, key=key, n_projections=n_dirs, p=2)
    return sliced_wasserstein(x, y, key=key, n_projections=n_dirs, p=2)


@functools.partial(jax.jit, static_argnames=("method", "n_steps", "snapshot_every", "n_dirs"))
def run_flows(key, sources, targets, lr, delta, *, method, n_steps, snapshot_every, n_dirs):
    """Projected Adam flows, vmapped over runs: sources [R, n, 3], targets [R, m, 3] -> snapshots
    [R, n_steps // snapshot_every + 1, n, 3] at iterations 0, snapshot_every, ..., n_steps."""
    opt = optax.adam(lr)

    def flow(key, x, y):
        def step(carry, k):
            x, state = carry
            grad = jax.grad(_loss, argnums=1)(method, x, y, k, n_dirs, delta)
            updates, state = opt.update(grad, state, x)
            return (normalize(optax.apply_updates(x, updates)), state), None

        def chunk(carry, keys):
            carry, _ = jax.lax.scan(step, carry, keys)
            return carry, carry[0]

        keys = jax.random.split(key, n_steps).reshape(n_steps // snapshot_every, snapshot_every)
        _, snaps = jax.lax.scan(chunk, (x, opt.init(x)), keys)
        return jnp.concatenate([x[None], snaps])

    return jax.vmap(flow)(jax.random.split(key, sources.shape[0]), sources, targets)


def flow_cell(seed, method, n_runs, n_steps, snapshot_every, n_dirs, lr, delta):
    """Runs the flows of one method (targets and sources drawn from `seed`, shared by the methods) and measures
    them: geodesic W_2^2 and POT's SSW_2^2 (mean / std over runs) per snapshot, seconds per iteration of the
    compiled vmapped flow (all runs together), compile seconds, and the first run's snapshots and target."""
    rng = np.random.default_rng(seed)
    tgt = np.stack([vmf_mixture(rng, N_POINTS) for _ in range(n_runs)]).astype(np.float32)
    cap = vonmises_fisher(np.array([0.0, 0.0, 1.0]), SOURCE_KAPPA)
    src = np.stack([cap.rvs(N_POINTS, random_state=rng) for _ in range(n_runs)]).astype(np.float32)
    src, tgt = (v / np.linalg.norm(v, axis=-1, keepdims=True) for v in (src, tgt))
    key = jax.random.key(seed)
    static = dict(method=method, n_steps=n_steps, snapshot_every=snapshot_every, n_dirs=n_dirs)
    start = time.perf_counter()
    compiled = run_flows.lower(key, src, tgt, lr, delta, **static).compile()
    compiled_at = time.perf_counter()
    snaps, cpu = harness.measure_cpu(lambda: jax.block_until_ready(compiled(key, src, tgt, lr, delta)))
    snaps = np.asarray(snaps, np.float64)
    snaps /= np.linalg.norm(snaps, axis=-1, keepdims=True)
    w2 = np.array([[report.geodesic_wasserstein2_squared(s, t) for s in run] for run, t in zip(snaps, tgt)])
    ssw = np.array([[ot.sliced_wasserstein_sphere(s, t.astype(np.float64), n_projections=n_dirs, p=2, seed=i) ** 2
                     for s in run] for i, (run, t) in enumerate(zip(snaps, tgt))])
    shown = [0, len(snaps[0]) // 5, len(snaps[0]) - 1]
    return dict(iterations=list(range(0, n_steps + 1, snapshot_every)), w2_mean=w2.mean(0).tolist(),
                w2_std=w2.std(0).tolist(), ssw_mean=ssw.mean(0).tolist(), ssw_std=ssw.std(0).tolist(),
                s_per_it=cpu.wall_s / n_steps, compile_s=compiled_at - start, cpu=dataclasses.asdict(cpu),
                snapshot_iterations=[snapshot_every * i for i in shown], snapshots=snaps[0, shown].round(4).tolist(),
                target=tgt[0].round(4).tolist())


def markdown(results, config, run):
    """The tables of stsw_flows.md."""
    its = [config["steps"] * i // 5 for i in range(1, 6)]
    lines = ["# Gradient flows on S^2 towards a mixture of von Mises-Fisher distributions", "",
             f"Scale: {config['runs']} runs of {config['steps']} iterations, {N_POINTS} particles from vMF(north pole, "
             f"{SOURCE_KAPPA:g}) towards {N_POINTS} points of an equal mixture of vMF(m_i, {KAPPA:g}), m_i the "
             f"vertices of a regular tetrahedron; projected Adam (lr {config['lr']:g}; each step is normalised back "
             f"onto the sphere). STSW: {config['directions'] // N_LINES} trees x {N_LINES} edges, delta = "
             f"{config['delta']:g}, p = 2; SSW: spherical sliced W_2 (`tsw_sl.spherical_sliced_wasserstein`, equal to "
             f"POT's `ot.sliced_wasserstein_sphere` given the same circles) with {config['directions']} great circles; "
             f"SW (projected): sliced W_2 of the points in R^3 with {config['directions']} directions. All three are "
             "flows (gradients by JAX). "
             f"Metrics at iterations {' / '.join(map(str, its))}: exact W_2^2 with "
             "the squared geodesic cost (POT `ot.emd2`) and POT's spherical sliced Wasserstein SSW_2^2 "
             f"(`ot.sliced_wasserstein_sphere`, {config['directions']} great circles, the same number of directions) "
             "as mean (std at the end) over runs. s/it: wall seconds per iteration of the compiled, "
             "vmapped flow of all runs together (compile time apart).", ""]
    lines += harness.run_markdown(run)
    lines += [f"Contention: {harness.contention_line(c.get('cpu') for c in results.values())}", ""]
    lines += ["| method | W_2^2 (geodesic) | SSW_2^2 (POT) | s/it | compile s |", "|---|---|---|---|---|"]
    for method, c in results.items():
        idx = [c["iterations"].index(it) for it in its]
        cells = [" / ".join(f"{c[k + '_mean'][i]:.2e}" for i in idx) + f" ({c[k + '_std'][idx[-1]]:.1e})"
                 for k in ("w2", "ssw")]
        lines.append(f"| {report.LABELS[method]} | {cells[0]} | {cells[1]} | {c['s_per_it']:.4f} | "
                     f"{c['compile_s']:.1f} |")
    return "\n".join(lines) + "\n"


def _sphere_axes(ax, title):
    u, v = np.meshgrid(np.linspace(0, 2 * np.pi, 25), np.linspace(0, np.pi, 13))
    ax.plot_wireframe(np.cos(u) * np.sin(v), np.sin(u) * np.sin(v), np.cos(v), color="0.85", linewidth=0.4)
    ax.set_box_aspect((1, 1, 1))
    ax.set_axis_off()
    ax.set_title(title, fontsize=8)


def plot(results, path):
    """W_2^2 curves (log scale) and STSW's first run on the sphere at three snapshots."""
    fig = harness.subplots(1, 1, figsize=(15, 4))[0]
    fig.clf()
    curves = fig.add_subplot(1, 4, 1)
    for i, (method, c) in enumerate(results.items()):
        mean, std = np.array(c["w2_mean"]), np.array(c["w2_std"])
        curves.plot(c["iterations"], mean, color=f"C{i}", label=report.LABELS[method])
        curves.fill_between(c["iterations"], np.maximum(mean - std, mean * 1e-2), mean + std, color=f"C{i}", alpha=0.2)
    curves.set_yscale("log")
    curves.set_xlabel("iteration")
    curves.set_ylabel("W2^2 (geodesic)")
    curves.legend(fontsize=7)
    shown = results["stsw"] if "stsw" in results else next(iter(results.values()))
    tgt = np.array(shown["target"])
    for j, (it, snap) in enumerate(zip(shown["snapshot_iterations"], shown["snapshots"])):
        ax = fig.add_subplot(1, 4, j + 2, projection="3d")
        _sphere_axes(ax, f"STSW flow, iteration {it}")
        snap = np.array(snap)
        ax.scatter(*tgt.T, s=3, c="0.5", depthshade=False)
        ax.scatter(*snap.T, s=3, c="tab:blue", depthshade=False)
    fig.suptitle("grey: target (vMF mixture); blue: particles", fontsize=8)
    harness.save_figure(fig, path)


def main(argv=None):
    p = report.parser("Gradient flows on S^2: spherical TSW against spherical sliced W_2 and sliced W_2 (projected).")
    p.add_argument("--runs", type=positive_int, default=None, help="runs (default 10, quick 2)")
    p.add_argument("--steps", type=positive_int, default=None, help="iterations (default 500, quick 50)")
    p.add_argument("--directions", type=positive_int, default=100, help="SW directions = STSW trees x 4 edges")
    p.add_argument("--lr", type=float, default=0.01, help="Adam learning rate")
    p.add_argument("--delta", type=float, default=1.0, help="STSW splitting inverse temperature")
    args = report.parse_args(p, argv)
    runs = args.runs or (2 if args.quick else 10)
    steps = args.steps or (50 if args.quick else 500)
    if steps % 25 or args.directions % N_LINES:
        p.error(f"--steps must be a multiple of 25 and --directions of {N_LINES}")
    config = dict(runs=runs, steps=steps, snapshot_every=steps // 25, directions=args.directions, lr=args.lr,
                  delta=args.delta, seed=args.seed, n_points=N_POINTS)
    run = harness.start_run(calibrate=False)
    results = {m: flow_cell(args.seed, m, runs, steps, steps // 25, args.directions, args.lr, args.delta)
               for m in METHODS}
    stem = os.path.join(args.out, "stsw_flows")
    record = run.finish()
    harness.write_json(stem + ".json", dict(config=config, run=record, results=results))
    harness.write_text(stem + ".md", markdown(results, config, record))
    plot(results, stem + ".png")
    print(f"wrote {stem}.json, .md, .png")


if __name__ == "__main__":
    main()
