"""Time and memory of the MAGEP invariant model against Monomial-NFN, HNP and NP, and against depth.

Part 1: the CNN-zoo generalisation predictors at their official configurations (docs/magep.md §9.1) on
batches of 8, 64 and 256 random CNN-zoo weight spaces: forward and forward+backward (gradient of an MSE
loss w.r.t. all parameters) wall time per batch, compile time reported apart, peak memory; whole batches, plain
`jax.jit` (the library's micro-batched, train-step-compiled steps are timed in `benchmarks.vs_reference`).
Part 2: the MAGEP predictor (c = 20, K = 2, head 500) on MLP specs of hidden width 32 (2 inputs, 1 output)
and depth L = 3..12, batch 16 (the library's CPU micro-batch),
forward+backward only (each configuration costs an XLA compile, the budget of the run).

Timing, memory (`harness.MEMORY_DEFINITION`), load and matmul calibration: `benchmarks.harness`. Times are
the median of `--repeats` runs after one warm-up run; the tables put the FLOP rate XLA counts for the step
beside the run's matmul rate.

Run: ``python -m benchmarks.magep_layers [--repeats 3] [--quick] [--out benchmarks/results]``; writes
magep_layers.{json,md}. ``--quick`` is a smoke run (a small CNN spec, batch 2, MAGEP and Monomial-NFN, L = 2, 3).
"""
from __future__ import annotations

import argparse
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks import harness
from common import NetworkSpec, WeightSpace
from common import compilation_cache
from common.cli import positive_int
from magep import GeneralizationPredictor

CNN_ZOO = NetworkSpec((1, 16, 16, 16, 10), ((3, 3), (3, 3), (3, 3), ()))
MODELS = ("magep", "monomial", "hnp", "np")
BATCHES = (8, 64, 256)
DEPTHS = tuple(range(3, 13))
# batch 16 against depth: the library trains and predicts in micro-batches of 16 rows on a CPU (common.microbatch), so
# a step at batch 64 is four of these; whole batches of 64 outgrew the cache (1 GB at L = 12) and ran at 5-8% of the
# matmul rate, their times set by memory traffic rather than by the terms' count (docs/magep.md §9.4)
FULL = dict(cnn=CNN_ZOO, models=MODELS, batches=BATCHES, depths=DEPTHS, depth_batch=16)
QUICK = dict(cnn=NetworkSpec((1, 4, 10), ((3, 3), ())), models=("magep", "monomial"), batches=(2,), depths=(2, 3),
             depth_batch=2)
RESULTS = os.path.join(os.path.dirname(__file__), "results")


def depth_spec(L: int) -> NetworkSpec:
    """MLP of depth L with hidden width 32 and a SIREN-like interface (2 inputs, 1 output): the first- and
    last-layer terms of MAGEP carry fixed-index coefficients of size n_0 n_L^2 (e x d each), which would
    dominate every cost for n_0 = n_L = 32 and hide the dependence on L."""
    return NetworkSpec.mlp((2,) + (32,) * (L - 1) + (1,))


def random_features(spec: NetworkSpec, batch: int, seed: int = 0) -> WeightSpace:
    """A batch of He-scaled random networks of `spec` as features (float32)."""
    rng = np.random.default_rng(seed)
    weights, biases = [], []
    for i, c in enumerate(spec.feature_channels):
        shape = (batch, spec.widths[i + 1], spec.widths[i], c)
        weights.append(jnp.asarray(rng.normal(size=shape) * np.sqrt(2.0 / (spec.widths[i] * c)), jnp.float32))
        biases.append(jnp.asarray(0.1 * rng.normal(size=(batch, spec.widths[i + 1], 1)), jnp.float32))
    return WeightSpace(tuple(weights), tuple(biases), is_features=True)


def measure(model: nnx.Module, feats: WeightSpace, repeats: int, parts=("forward", "forward_backward")) -> dict:
    """Per part ("forward", "forward_backward"): seconds per batch (median `_s`, `_min_s`), `_compile_s`,
    `_peak_bytes` and its parts (`_memory`), `_gflops` and the CPU use of the timed calls (`_cpu`)."""
    graphdef, params = nnx.split(model, nnx.Param)
    forward = lambda p, f: nnx.merge(graphdef, p).logits(f)
    target = jnp.full(feats.batch_shape, 0.5)
    step = lambda p, f: jax.value_and_grad(lambda q: jnp.mean((jax.nn.sigmoid(forward(q, f)) - target) ** 2))(p)
    out = {"params": int(sum(x.size for x in jax.tree.leaves(params)))}
    for name in parts:
        m = harness.measure_jitted({"forward": forward, "forward_backward": step}[name], params, feats, repeats=repeats)
        out.update({f"{name}_compile_s": m["compile_s"], f"{name}_s": m["median_s"], f"{name}_min_s": m["min_s"],
                    f"{name}_peak_bytes": m["memory"]["peak_bytes"], f"{name}_memory": m["memory"],
                    f"{name}_gflops": m["gflops"], f"{name}_flops": m["flops"], f"{name}_cpu": m["cpu"]})
    return out


def run(repeats: int, grid: dict = FULL) -> dict:
    """The two parts on `grid` (`FULL` or `QUICK`); the result of `main`'s JSON file."""
    record = harness.start_run()
    env = record.environment
    results = {"device": env["device"], "cpu_count": env["cpu_count"], "platform": env["platform"],
               "jax": env["jax"], "repeats": repeats, "load_average_start": record.load_start[0],
               "models": {}, "depth": {}, "depth_batch": grid["depth_batch"]}
    for nfn in grid["models"]:
        model = GeneralizationPredictor(grid["cnn"], nfn=nfn, rngs=nnx.Rngs(0))
        for batch in grid["batches"]:
            r = measure(model, random_features(grid["cnn"], batch), repeats)
            results["models"].setdefault(nfn, {})[str(batch)] = r
            print(f"{nfn:9s} batch {batch:4d}: fwd {r['forward_s'] * 1e3:8.1f} ms  fwd+bwd {r['forward_backward_s'] * 1e3:8.1f} ms"
                  f"  peak {r['forward_backward_peak_bytes'] / 2**20:7.1f} MiB  compile {r['forward_backward_compile_s']:.1f} s",
                  flush=True)
    for L in grid["depths"]:
        spec = depth_spec(L)
        model = GeneralizationPredictor(spec, nfn="magep", rngs=nnx.Rngs(0))
        r = measure(model, random_features(spec, grid["depth_batch"]), repeats, parts=("forward_backward",))
        results["depth"][str(L)] = r
        print(f"magep L={L}: fwd+bwd {r['forward_backward_s'] * 1e3:7.1f} ms"
              f"  peak {r['forward_backward_peak_bytes'] / 2**20:6.1f} MiB", flush=True)
    results["summary"] = summarize(results)
    results["run"] = record.finish()
    results["load_average_end"], results["wall_s"] = results["run"]["load_average_end"][0], results["run"]["wall_s"]
    return results


def _linear_fit(xs, ys) -> dict:
    slope, intercept = np.polyfit(xs, ys, 1)
    pred = slope * np.asarray(xs) + intercept
    ss_res, ss_tot = float(np.sum((np.asarray(ys) - pred) ** 2)), float(np.sum((np.asarray(ys) - np.mean(ys)) ** 2))
    return {"slope": float(slope), "intercept": float(intercept), "r2": 1.0 - ss_res / ss_tot if ss_tot else 1.0}


def summarize(results: dict) -> dict:
    """MAGEP / Monomial-NFN ratios per batch (where both ran) and linear fits of time (median and min of the timed
    calls), memory and XLA's FLOP count against L (where two or more depths ran)."""
    m, mono = results["models"].get("magep", {}), results["models"].get("monomial", {})
    ratios = {b: {k: m[b][k] / mono[b][k] for k in ("forward_s", "forward_backward_s", "forward_backward_peak_bytes")}
              for b in m if b in mono}
    depth = results["depth"]
    Ls = [int(L) for L in depth]
    keys = [k for k in ("forward_backward_s", "forward_backward_min_s", "forward_backward_peak_bytes",
                        "forward_backward_flops")
            if all(depth[str(L)].get(k) is not None for L in Ls)]  # XLA may give no FLOP count
    fits = {k: _linear_fit(Ls, [depth[str(L)][k] for L in Ls]) for k in keys if len(Ls) >= 2}
    return {"magep_over_monomial": ratios, "depth_linear_fit": fits}


def _rate(r: dict, run: dict) -> str:
    g = r.get("forward_backward_gflops")
    return "-" if g is None else f"{g:.3g} ({harness.percent_of_matmul(g, run)})"


def _other_cores(r: dict) -> str:
    cores = (r.get("forward_backward_cpu") or {}).get("other_cores")
    return "-" if cores is None else f"{cores:.1f}"


def write_markdown(results: dict) -> str:
    """The Markdown report of `run`'s result."""
    run = results["run"]
    lines = ["# MAGEP layers benchmark", "",
             f"Median of {results['repeats']} runs after a warm-up; official CNN-zoo configurations (docs/magep.md "
             "§9.1). GFLOP/s: XLA's FLOP count of the step / median time, and its share of the run's jitted matmul "
             "rate; other cores: mean cores other processes kept busy during the fwd+bwd cell (compile and calls).", "",
             *harness.run_markdown(run)]
    lines += harness.markdown_table(
        ("model", "params", "batch", "fwd ms", "fwd+bwd ms", "fwd+bwd peak MiB", "fwd+bwd GFLOP/s (% matmul)",
         "other cores", "compile fwd+bwd s"),
        [(nfn, f"{r['params']:,}", b, f"{r['forward_s'] * 1e3:.1f}", f"{r['forward_backward_s'] * 1e3:.1f}",
          harness.mib(r["forward_backward_peak_bytes"]), _rate(r, run), _other_cores(r),
          f"{r['forward_backward_compile_s']:.1f}")
         for nfn, rows in results["models"].items() for b, r in rows.items()])
    lines += ["", "MAGEP / Monomial-NFN (target: time <= 2x):", ""]
    lines += harness.markdown_table(
        ("batch", "fwd", "fwd+bwd", "peak memory"),
        [(b, f"{r['forward_s']:.2f}", f"{r['forward_backward_s']:.2f}", f"{r['forward_backward_peak_bytes']:.2f}")
         for b, r in results["summary"]["magep_over_monomial"].items()])
    lines += ["", f"MAGEP predictor vs depth (MLP widths (2, 32, ..., 32, 1), batch {results['depth_batch']}; target: "
              "linear in L):", ""]
    lines += harness.markdown_table(
        ("L", "params", "fwd+bwd ms", "fwd+bwd min ms", "fwd+bwd peak MiB", "fwd+bwd GFLOP/s (% matmul)",
         "other cores"),
        [(L, f"{r['params']:,}", f"{r['forward_backward_s'] * 1e3:.1f}", f"{r['forward_backward_min_s'] * 1e3:.1f}",
          harness.mib(r["forward_backward_peak_bytes"]), _rate(r, run), _other_cores(r))
         for L, r in results["depth"].items()])
    fits = results["summary"]["depth_linear_fit"]
    lines += ["", "Linear fits against L (R^2): " + (", ".join(f"{k} {v['r2']:.3f}" for k, v in fits.items()) or "-"), ""]
    return "\n".join(lines)


@compilation_cache.disabled()  # first calls are measured: compiled afresh, never read from a cache
def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=positive_int, default=2)
    parser.add_argument("--quick", action="store_true", help="smoke run: small spec, batch 2, two models, L = 2, 3")
    parser.add_argument("--out", default=RESULTS)
    args = parser.parse_args(argv)
    results = run(args.repeats, QUICK if args.quick else FULL)
    harness.write_results(args.out, "magep_layers", results, write_markdown(results))
    print(json.dumps(results["summary"], indent=2))


if __name__ == "__main__":
    main()
