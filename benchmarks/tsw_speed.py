"""Speed and memory of TSW-SL against sliced Wasserstein baselines at equal numbers of directions.

Methods (L k = number of directions, k = 4 lines per tree):
  tsw_chain           tsw_sl.tsw_sl, chain trees, uniform splitting (the paper's TSW-SL); with n = m and default
                      weights it takes the docs/tsw_sl.md §7 path (W_1 / k per line from two sorts of n values)
  tsw_chain_weighted  the same with explicit uniform weights a, b: the closed form (one sort of 2n values per
                      line), the TSW-SL counterpart of sw_ours_weighted
  tsw_chain_distance  tsw_sl.tsw_sl, chain trees, "distance" splitting
  db_tsw              tsw_sl.db_tsw (concurrent trees, distance splitting)
  tsw_chain_xla_sort  tsw_chain with XLA's sort instead of numpy's (sort-method check; 100 directions only)
  sw_ours             tsw_sl.sliced_wasserstein (p = 2); with n = m and uniform weights it takes its shortcut
                      (two sorts of n values per direction, mean |u_(i) - v_(i)|^p)
  sw_ours_weighted    the same with explicit uniform weights a, b: the general quantile path, the SW
                      counterpart of TSW-SL's general (weighted) computation
  sw_pot              POT's ot.sliced_wasserstein_distance, numpy backend (value only: POT's JAX backend is not
                      traceable and torch is not installed, so POT has no value+gradient entry)
  sw_ott              OTT-JAX's ott.tools.sliced.sliced_wasserstein, when `import ott` works (n <= 1e4: one
                      n = 1e5 call ran for minutes)

For each cell (directions, n = m, d, mode in {value, value+grad}) we record, with `benchmarks.harness`, the
compile time, the median and min wall time of `repeats` calls after a warm-up, memory as
`harness.MEMORY_DEFINITION` (for jitted JAX functions XLA's argument + output + temporary buffers plus the peak
of host allocations during the warm-up call, numpy's argsort inside the sort callback; for POT its float64
arguments plus that host peak) and the CPU use of the cell; the run records the load and a matmul calibration.

Trees split over devices (docs/tsw_sl.md §16.1): `--sharded` runs, in a process with 4 simulated CPU devices,
tsw_chain, db_tsw and sw_ours at 128 directions (32 trees of 4 lines) with `mesh=None` against
`mesh=common.distributed.make_mesh()` (both with XLA's sort, which `sort_method="auto"` picks when there are
several devices), value+grad, and stores the rows under "sharded" in the existing tsw_speed.json. On the 2-core
machine the four devices share two cores: the ratio shows the overhead of the split and the use of the second
core, not a speed-up from more hardware.

Run: python -m benchmarks.tsw_speed [--quick | --full | --sharded] [--merge] [--out benchmarks/results]
The default grid (100 directions, n in {1e3, 1e4}, d in {2, 100}) runs in a few minutes on the shared 2-core
machine; --full runs the whole grid (about an hour there); --merge replaces only the rerun cells in an
existing tsw_speed.json and keeps the other rows (marked with the run they come from).
"""
from __future__ import annotations

import argparse
import statistics
import time
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import ot

import tsw_sl
from benchmarks import harness
from common import compilation_cache
from common.cli import positive_int
from common.distributed import make_mesh

try:
    with warnings.catch_warnings():  # OTT-JAX imports jaxopt, which warns that it is no longer maintained
        warnings.filterwarnings("ignore", "JAXopt is no longer maintained", DeprecationWarning)
        from ott.tools import sliced as ott_sliced
except ImportError:  # optional baseline
    ott_sliced = None

K_LINES = 4
GRID = dict(directions=(100, 1000), n=(1_000, 10_000, 100_000), d=(2, 100))
DEFAULT = dict(directions=(100,), n=(1_000, 10_000), d=(2, 100))
QUICK = dict(directions=(100,), n=(1_000, 10_000), d=(2,))
# [L k, 2n] arrays of 1000 x 200,000 floats are 0.8 GB each; the 2-core / 23 GB machine shared by several
# engineers cannot hold the few of them a call needs, nor sort 2e8 keys per call in the time budget.
SKIP = {(1000, 100_000)}
# (method, baseline, target time ratio) for the ratio columns and the summary: the targets (within 1.5x
# of our SW at equal directions, faster than POT), the default paths and the weighted (closed-form) paths.
RATIOS = (("tsw_chain", "sw_ours", 1.5), ("tsw_chain_weighted", "sw_ours_weighted", 1.5),
          ("tsw_chain_weighted", "sw_ours", 1.5), ("tsw_chain", "sw_pot", 1.0), ("tsw_chain", "sw_ott", 1.0))


def _uniform(x, y):
    """Explicit uniform weights (a [n], b [m]): they turn off the equal-size, default-weight shortcuts."""
    return jnp.full(x.shape[-2], 1.0 / x.shape[-2]), jnp.full(y.shape[-2], 1.0 / y.shape[-2])


def jax_methods(n_dirs, n, d):
    """Name -> f(x, y) for one cell; the two secondary variants only where they are cheap (L k = 100, d = 2,
    n <= 1e4) to keep the benchmark within its time budget on the shared 2-core machine."""
    key = jax.random.key(0)
    n_trees = n_dirs // K_LINES
    methods = {
        "tsw_chain": lambda x, y: tsw_sl.tsw_sl(x, y, key=key, n_trees=n_trees, n_lines=K_LINES, kind="chain"),
        "tsw_chain_weighted": lambda x, y: tsw_sl.tsw_sl(x, y, *_uniform(x, y), key=key, n_trees=n_trees,
                                                         n_lines=K_LINES, kind="chain"),
        "db_tsw": lambda x, y: tsw_sl.db_tsw(x, y, key=key, n_trees=n_trees, n_lines=K_LINES),
        "sw_ours": lambda x, y: tsw_sl.sliced_wasserstein(x, y, key=key, n_projections=n_dirs, p=2),
        "sw_ours_weighted": lambda x, y: tsw_sl.sliced_wasserstein(x, y, *_uniform(x, y), key=key,
                                                                   n_projections=n_dirs, p=2),
    }
    if n_dirs == 100 and d == 2 and n <= 10_000:
        methods["tsw_chain_distance"] = lambda x, y: tsw_sl.tsw_sl(x, y, key=key, n_trees=n_trees, n_lines=K_LINES,
                                                                   kind="chain", splitting="distance",
                                                                   root_mean=jnp.mean(y, 0))
        methods["tsw_chain_xla_sort"] = lambda x, y: tsw_sl.tsw_sl(x, y, key=key, n_trees=n_trees, n_lines=K_LINES,
                                                                   kind="chain", sort_method="xla")
    if ott_sliced is not None and n <= 10_000:  # at n = 1e5 one OTT call ran for minutes: left out
        methods["sw_ott"] = lambda x, y: ott_sliced.sliced_wasserstein(x, y, n_proj=n_dirs, rng=key)[0]
    return methods


def _row(m: dict) -> dict:
    """The row fields of a harness measurement: seconds, memory (harness.MEMORY_DEFINITION) and CPU use."""
    return dict(compile_s=m["compile_s"] or 0.0, time_s=m["median_s"], min_s=m["min_s"],
                peak_bytes=m["memory"]["peak_bytes"], memory=m["memory"], cpu=m["cpu"])


def time_jax(fn, x, y, mode, repeats):
    """Row fields of `fn(x, y)` ("value") or of its value and gradient in x, y ("value+grad"), jitted."""
    f = fn if mode == "value" else jax.value_and_grad(fn)
    return _row(harness.measure_jitted(f, x, y, repeats=repeats))


def time_pot(x, y, n_dirs, repeats):
    """Row fields of POT's sliced Wasserstein distance (p = 2, numpy, float64 copies of x, y)."""
    pot = lambda xn, yn: ot.sliced_wasserstein_distance(xn, yn, n_projections=n_dirs, p=2, seed=0)
    return _row(harness.measure_call(pot, np.asarray(x, np.float64), np.asarray(y, np.float64), repeats=repeats))


REPEATS_NOTE = "3 when directions * n >= 1e7, 10 when >= 1e6, else 20"


def repeats_for(n_dirs, n):
    """Timed repeats of a cell: many for the short calls, whose fastest repeat is noisy with few (REPEATS_NOTE)."""
    return 3 if n_dirs * n >= 10**7 else 10 if n_dirs * n >= 10**6 else 20


def run(grid):
    rows = []
    for n_dirs in grid["directions"]:
        for n in grid["n"]:
            if (n_dirs, n) in SKIP:
                continue
            for d in grid["d"]:
                kx, ky = jax.random.split(jax.random.key(n + d))
                x = jax.random.normal(kx, (n, d))
                y = jax.random.normal(ky, (n, d)) + 1.0
                repeats = repeats_for(n_dirs, n)
                cell = dict(directions=n_dirs, n=n, d=d)
                for mode in ("value", "value+grad"):
                    for name, fn in jax_methods(n_dirs, n, d).items():
                        rows.append(dict(cell, method=name, mode=mode, **time_jax(fn, x, y, mode, repeats)))
                        print(rows[-1], flush=True)
                    if mode == "value":
                        rows.append(dict(cell, method="sw_pot", mode=mode, **time_pot(x, y, n_dirs, repeats)))
                        print(rows[-1], flush=True)
    return rows


SHARDED_DEVICES = 4
SHARDED_DIRECTIONS = 128
SHARDED_N = (1_000, 10_000)


def sharded_methods(mesh):
    """Name -> f(x, y) of the distances compared on one device and split over `mesh` (SHARDED_DIRECTIONS)."""
    key = jax.random.key(0)
    n_trees = SHARDED_DIRECTIONS // K_LINES
    return {"tsw_chain": lambda x, y: tsw_sl.tsw_sl(x, y, key=key, n_trees=n_trees, n_lines=K_LINES, mesh=mesh),
            "db_tsw": lambda x, y: tsw_sl.db_tsw(x, y, key=key, n_trees=n_trees, n_lines=K_LINES, mesh=mesh),
            "sw_ours": lambda x, y: tsw_sl.sliced_wasserstein(x, y, key=key, n_projections=SHARDED_DIRECTIONS,
                                                              mesh=mesh)}


def run_sharded(d=2):
    """Rows (n, method, devices) of value+grad timings with the trees on one device and split over all."""
    rows = []
    for n in SHARDED_N:
        kx, ky = jax.random.split(jax.random.key(n + d))
        x, y = jax.random.normal(kx, (n, d)), jax.random.normal(ky, (n, d)) + 1.0
        for devices, mesh in ((1, None), (jax.device_count(), make_mesh())):
            for name, fn in sharded_methods(mesh).items():
                row = time_jax(fn, x, y, "value+grad", repeats_for(SHARDED_DIRECTIONS, n))
                rows.append(dict(n=n, d=d, directions=SHARDED_DIRECTIONS, method=name, devices=devices, **row))
                print(rows[-1], flush=True)
    return rows


def sharded_markdown(sharded):
    """The section of the split-over-devices rows (value+grad, median ms and the min-time ratio)."""
    rows, run = sharded["rows"], sharded["run"]
    index = {(r["n"], r["method"], r["devices"]): r for r in rows}
    many = max(r["devices"] for r in rows)
    out = [f"## trees split over {many} simulated CPU devices (value+grad, {SHARDED_DIRECTIONS} directions, d = 2)",
           "", f"`python -m benchmarks.tsw_speed --sharded`, run started {run['started_utc']}, load (1 min) "
           f"{run['load_average_start'][0]:.1f} / {run['load_average_end'][0]:.1f}; both columns use XLA's sort "
           f"(several devices in the process). The {many} simulated devices share this machine's "
           f"{run['environment']['cpu_count']} cores: no hardware is added, and a ratio below 1 only means that the "
           "split program keeps both cores busy (each simulated device runs on its own thread, while one device's "
           "sort runs on one), net of the split's overhead (collectives, one program per device). Times are noisy "
           f"when the load exceeds the {run['environment']['cpu_count']} cores; values and gradients agree to rtol 1e-6 (tests/test_tsw_sharded.py).", "",
           f"| n | method | 1 device (ms) | {many} devices (ms) | {many} / 1 (fastest repeats) |",
           "|---|---|---|---|---|"]
    for (n, method, devices), r in sorted(index.items()):
        if devices != 1 or (n, method, many) not in index:
            continue
        s = index[(n, method, many)]
        out.append(f"| {n} | {method} | {_fmt_ms(r['time_s'])} | {_fmt_ms(s['time_s'])} | "
                   f"{s['min_s'] / r['min_s']:.2f} |")
    return out + [""]


def _fmt_ms(v):
    return f"{1e3 * v:.1f}" if v is not None else "-"


def markdown(rows, meta):
    cells = sorted({(r["directions"], r["n"], r["d"], r["mode"]) for r in rows},
                   key=lambda c: (c[3], c[0], c[1], c[2]))
    methods = [m for m in ("tsw_chain", "tsw_chain_weighted", "tsw_chain_distance", "db_tsw", "tsw_chain_xla_sort",
                           "sw_ours", "sw_ours_weighted", "sw_pot", "sw_ott") if any(r["method"] == m for r in rows)]
    index = {(r["directions"], r["n"], r["d"], r["mode"], r["method"]): r for r in rows}
    out = ["# TSW-SL speed benchmark", "",
           f"Generated by `python -m benchmarks.tsw_speed` on {meta['machine']}; jax {meta['jax']}, "
           f"backend {meta['backend']}; {meta['note']}", "",
           *([f"Cells from more than one run: {meta['runs']}", ""] if meta.get("runs") else []),
           *(harness.run_markdown(meta["run"]) if "run" in meta else
             [f"Load average (1 min) at start / end: {meta['load']} (a run before benchmarks/harness.py: no "
              "calibration; its rows' peak_bytes add the arguments x, y to the XLA and host bytes it stored).", ""]),
           f"Contention: {harness.contention_line(r.get('cpu') for r in rows)} Single cells are noisy; compare "
           "ratios.", "",
           "Times: median wall-clock milliseconds per call after compilation (compile time is in the JSON); "
           "the ratio columns use the fastest of the repeats (min_s), less sensitive to other processes. "
           "n = m points, k = 4 lines per tree, L k = directions. Memory: `peak_bytes` (definition above), "
           "in MiB.", ""]
    for mode in ("value", "value+grad"):
        out += [f"## {mode}: time (ms)", "",
                "| directions | n | d | " + " | ".join(methods) + " | "
                + " | ".join(f"{a} / {b}" for a, b, _ in RATIOS) + " |",
                "|" + "---|" * (len(methods) + 3 + len(RATIOS))]
        for c in (c for c in cells if c[3] == mode):
            get = lambda m: index.get(c + (m,))
            t = {m: (get(m) or {}).get("time_s") for m in methods}
            best = lambda m: (get(m) or {}).get("min_s")
            ratios = [f"{best(a) / best(b):.2f}" if best(a) and best(b) else "-" for a, b, _ in RATIOS]
            out.append(f"| {c[0]} | {c[1]} | {c[2]} | " + " | ".join(_fmt_ms(t[m]) for m in methods)
                       + " | " + " | ".join(ratios) + " |")
        out.append("")
    out += ["## memory (MiB), value+grad (sw_pot: value)", "",
            "| directions | n | d | " + " | ".join(methods) + " |",
            "|" + "---|" * (len(methods) + 3)]
    for c in (c for c in cells if c[3] == "value+grad"):
        vals = []
        for m in methods:
            r = index.get(c[:3] + ("value" if m == "sw_pot" else c[3], m))  # POT: value only
            vals.append(harness.mib(r["peak_bytes"]) if r else "-")
        out.append(f"| {c[0]} | {c[1]} | {c[2]} | " + " | ".join(vals) + " |")
    out.append("")
    out += summary(rows, index)
    if meta.get("sharded"):
        out += sharded_markdown(meta["sharded"])
    return "\n".join(out)


def summary(rows, index):
    """Key ratios and the memory scaling of tsw_chain in n."""
    lines = ["## summary", ""]
    for mode in ("value", "value+grad"):
        for method, other, target in RATIOS:
            ratios = [index[(r["directions"], r["n"], r["d"], mode, method)]["min_s"] / r["min_s"]
                      for r in rows if r["method"] == other and r["mode"] == mode
                      and (r["directions"], r["n"], r["d"], mode, method) in index]
            if ratios:
                lines.append(f"- {mode}: {method} / {other} time ratio (fastest repeats) over {len(ratios)} cells: "
                             f"median {statistics.median(ratios):.2f}, range {min(ratios):.2f}-{max(ratios):.2f}; "
                             f"below the target {target} in {sum(r < target for r in ratios)} of {len(ratios)} cells")
    lines += ["", "Memory of tsw_chain (value+grad) against n: MiB, and KiB per point (constant = linear in n)", "",
              "| directions | d | n: MiB (KiB/point) |", "|---|---|---|"]
    for n_dirs, d in sorted({(r["directions"], r["d"]) for r in rows}):
        cells = []
        for r in sorted((r for r in rows if (r["directions"], r["d"], r["mode"], r["method"])
                         == (n_dirs, d, "value+grad", "tsw_chain")), key=lambda r: r["n"]):
            total = r["peak_bytes"]
            cells.append(f"{r['n']}: {total / 2**20:.1f} ({total / 2**10 / (2 * r['n']):.2f})")
        lines.append(f"| {n_dirs} | {d} | " + "; ".join(cells) + " |")
    lines.append("")
    return lines


def merge(old, rows, meta):
    """Rows of this run replace the old rows of the same cells (directions, n, d); every row keeps a `run` tag."""
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    old_tag = old["meta"].get("run_tag", "run of commit 465f25d")
    cells = {(r["directions"], r["n"], r["d"]) for r in rows}
    kept = [dict(r, run=r.get("run", old_tag)) for r in old["rows"] if (r["directions"], r["n"], r["d"]) not in cells]
    new = [dict(r, run=stamp) for r in rows]
    runs = dict(old["meta"].get("runs") or {old_tag: old["meta"]["note"]})
    runs = {k: v for k, v in runs.items() if any(r["run"] == k for r in kept)}
    runs[stamp] = (f"cells (directions, n, d) {sorted(cells)}; load {meta['load']}; "
                   f"OTT-JAX {'included' if meta['ott'] else 'not installed'}")
    sharded = {"sharded": old["meta"]["sharded"]} if "sharded" in old["meta"] else {}  # from a --sharded run
    return kept + new, dict(meta, runs=runs, run_tag=stamp, **sharded)


@compilation_cache.disabled()  # first calls are measured: compiled afresh, never read from a cache
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smallest grid (a smoke run; d = 2 only)")
    parser.add_argument("--full", action="store_true", help="the whole grid (about an hour on the 2-core machine)")
    parser.add_argument("--merge", action="store_true",
                        help="replace only the rerun cells in the existing tsw_speed.json, keep the other rows")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--render", action="store_true", help="only rewrite the .md from the existing .json")
    parser.add_argument("--sharded", action="store_true",
                        help=f"only the 1 vs {SHARDED_DEVICES} simulated-device rows, stored in the existing .json")
    for axis in ("directions", "n", "d"):
        parser.add_argument(f"--{axis}", type=positive_int, nargs="+", help=f"override the grid's {axis} values")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.sharded:
        jax.config.update("jax_num_cpu_devices", SHARDED_DEVICES)  # before the first computation
        data = harness.read_results(out, "tsw_speed")
        record = harness.start_run(calibrate=False)
        rows = run_sharded()
        data["meta"]["sharded"] = dict(rows=rows, run=record.finish())
        harness.write_results(out, "tsw_speed", data, markdown(data["rows"], data["meta"]))
        return
    if args.render:
        data = harness.read_results(out, "tsw_speed")
        harness.write_results(out, "tsw_speed", data, markdown(data["rows"], data["meta"]))
        return
    grid = dict(QUICK if args.quick else GRID if args.full else DEFAULT)
    grid.update({axis: tuple(getattr(args, axis)) for axis in ("directions", "n", "d") if getattr(args, axis)})
    record = harness.start_run()
    rows = run(grid)
    run_record = record.finish()
    env = run_record["environment"]
    meta = dict(machine=f"{env['machine']} ({env['device_count']} {env['backend']} device(s), {env['cpu_count']} cores)",
                jax=env["jax"], backend=env["backend"], ott=ott_sliced is not None,
                load=f"{run_record['load_average_start'][0]:.1f} / {run_record['load_average_end'][0]:.1f}",
                total_s=run_record["wall_s"], run=run_record,
                note=f"cells with (directions, n) in {sorted(SKIP)} skipped (memory/time of the shared machine); "
                     f"OTT-JAX {'included for n <= 1e4' if ott_sliced is not None else 'not installed'}; "
                     f"timed repeats: {REPEATS_NOTE}.")
    if args.merge and (out / "tsw_speed.json").exists():
        rows, meta = merge(harness.read_results(out, "tsw_speed"), rows, meta)
    harness.write_results(out, "tsw_speed", dict(meta=meta, rows=rows), markdown(rows, meta))
    print(f"wrote {out / 'tsw_speed.json'} and .md in {meta['total_s']:.0f} s")


if __name__ == "__main__":
    main()
