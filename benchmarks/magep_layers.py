"""Time and memory of the MAGEP invariant model against Monomial-NFN, HNP and NP, and against depth.

Part 1: the CNN-zoo generalisation predictors at their official configurations (magep_nfn.md §9.1) on
batches of 8, 64 and 256 random CNN-zoo weight spaces: forward and forward+backward (gradient of an MSE
loss w.r.t. all parameters) wall time per batch, compile time reported apart, peak memory.
Part 2: the MAGEP predictor (c = 20, K = 2, head 500) on MLP specs of hidden width 32 (2 inputs, 1 output)
and depth L = 3..8, batch 64,
forward+backward only (each configuration costs an XLA compile, the budget of the run).

Peak memory is XLA's static estimate for the compiled executable, `compiled.memory_analysis()`:
temp + argument + output bytes (what one step needs resident on the device; measured on CPU, where the
runtime allocator has no peak counter). Times: median of `--repeats` runs after one warm-up run.

Run: ``python -m benchmarks.magep_layers [--repeats 3]``; writes benchmarks/results/magep_layers.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from common import NetworkSpec, WeightSpace
from magep import GeneralizationPredictor

CNN_ZOO = NetworkSpec((1, 16, 16, 16, 10), ((3, 3), (3, 3), (3, 3), ()))
MODELS = ("magep", "monomial", "hnp", "np")
BATCHES = (8, 64, 256)
DEPTHS = tuple(range(3, 9))
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


def _time(fn, args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))  # warm-up
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


def measure(model: nnx.Module, feats: WeightSpace, repeats: int, parts=("forward", "forward_backward")) -> dict:
    """Seconds per batch, compile seconds and peak bytes of the forward and/or forward+backward step."""
    graphdef, params = nnx.split(model, nnx.Param)
    # leaves passed as plain tuples: WeightSpace validates shapes in __post_init__, which fails on the
    # ArgInfo placeholders of `Lowered.compile` (reported to common/'s owners)
    forward = lambda p, w, b: nnx.merge(graphdef, p).logits(WeightSpace(w, b, is_features=True))
    target = jnp.full(feats.batch_shape, 0.5)
    step = lambda p, w, b: jax.value_and_grad(lambda q: jnp.mean((jax.nn.sigmoid(forward(q, w, b)) - target) ** 2))(p)
    out = {"params": int(sum(x.size for x in jax.tree.leaves(params)))}
    args = (params, feats.weights, feats.biases)
    for name, fn in ((n, {"forward": forward, "forward_backward": step}[n]) for n in parts):
        start = time.perf_counter()
        compiled = jax.jit(fn).lower(*args).compile()
        out[f"{name}_compile_s"] = time.perf_counter() - start
        out[f"{name}_s"] = _time(compiled, args, repeats)
        mem = compiled.memory_analysis()
        out[f"{name}_peak_bytes"] = int(mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes)
    return out


def run(repeats: int) -> dict:
    results = {"device": str(jax.devices()[0]), "cpu_count": os.cpu_count(), "platform": platform.platform(),
               "jax": jax.__version__, "repeats": repeats, "load_average_start": os.getloadavg()[0],
               "models": {}, "depth": {}}
    start = time.perf_counter()
    for nfn in MODELS:
        model = GeneralizationPredictor(CNN_ZOO, nfn=nfn, rngs=nnx.Rngs(0))
        for batch in BATCHES:
            r = measure(model, random_features(CNN_ZOO, batch), repeats)
            results["models"].setdefault(nfn, {})[str(batch)] = r
            print(f"{nfn:9s} batch {batch:4d}: fwd {r['forward_s'] * 1e3:8.1f} ms  fwd+bwd {r['forward_backward_s'] * 1e3:8.1f} ms"
                  f"  peak {r['forward_backward_peak_bytes'] / 2**20:7.1f} MiB  compile {r['forward_backward_compile_s']:.1f} s",
                  flush=True)
    for L in DEPTHS:
        spec = depth_spec(L)
        model = GeneralizationPredictor(spec, nfn="magep", rngs=nnx.Rngs(0))
        r = measure(model, random_features(spec, 64), repeats, parts=("forward_backward",))
        results["depth"][str(L)] = r
        print(f"magep L={L}: fwd+bwd {r['forward_backward_s'] * 1e3:7.1f} ms"
              f"  peak {r['forward_backward_peak_bytes'] / 2**20:6.1f} MiB", flush=True)
    results["summary"] = summarize(results)
    results["load_average_end"], results["wall_s"] = os.getloadavg()[0], time.perf_counter() - start
    return results


def _linear_fit(xs, ys) -> dict:
    slope, intercept = np.polyfit(xs, ys, 1)
    pred = slope * np.asarray(xs) + intercept
    ss_res, ss_tot = float(np.sum((np.asarray(ys) - pred) ** 2)), float(np.sum((np.asarray(ys) - np.mean(ys)) ** 2))
    return {"slope": float(slope), "intercept": float(intercept), "r2": 1.0 - ss_res / ss_tot if ss_tot else 1.0}


def summarize(results: dict) -> dict:
    """MAGEP / Monomial-NFN ratios per batch and linear fits of time and memory against L."""
    m, mono = results["models"]["magep"], results["models"]["monomial"]
    ratios = {b: {k: m[b][k] / mono[b][k] for k in ("forward_s", "forward_backward_s", "forward_backward_peak_bytes")}
              for b in m}
    depth = results["depth"]
    Ls = [int(L) for L in depth]
    fits = {k: _linear_fit(Ls, [depth[str(L)][k] for L in Ls]) for k in ("forward_backward_s", "forward_backward_peak_bytes")}
    return {"magep_over_monomial": ratios, "depth_linear_fit": fits}


def write_markdown(results: dict, path: str) -> None:
    lines = ["# MAGEP layers benchmark", "",
             f"Device: {results['device']} ({results['cpu_count']} CPUs visible), jax {results['jax']}; "
             f"median of {results['repeats']} runs after a warm-up. Peak memory: XLA `memory_analysis()` of the "
             "compiled step (temp + arguments + outputs). Official CNN-zoo configurations (magep_nfn.md §9.1).",
             f"Run: {results.get('wall_s', float('nan')):.0f} s wall; 1-minute load average "
             f"{results.get('load_average_start', float('nan')):.1f} at start, {results.get('load_average_end', float('nan')):.1f} "
             "at the end (a load far above the CPU count means shared cores and noisy times).", "",
             "| model | params | batch | fwd ms | fwd+bwd ms | fwd+bwd peak MiB | compile fwd+bwd s |",
             "|---|---|---|---|---|---|---|"]
    for nfn, rows in results["models"].items():
        for b, r in rows.items():
            lines.append(f"| {nfn} | {r['params']:,} | {b} | {r['forward_s'] * 1e3:.1f} | {r['forward_backward_s'] * 1e3:.1f} | "
                         f"{r['forward_backward_peak_bytes'] / 2**20:.1f} | {r['forward_backward_compile_s']:.1f} |")
    lines += ["", "MAGEP / Monomial-NFN (target: time <= 2x):", "", "| batch | fwd | fwd+bwd | peak memory |", "|---|---|---|---|"]
    for b, r in results["summary"]["magep_over_monomial"].items():
        lines.append(f"| {b} | {r['forward_s']:.2f} | {r['forward_backward_s']:.2f} | {r['forward_backward_peak_bytes']:.2f} |")
    lines += ["", "MAGEP predictor vs depth (MLP widths (2, 32, ..., 32, 1), batch 64; target: linear in L):", "",
              "| L | params | fwd+bwd ms | fwd+bwd peak MiB |", "|---|---|---|---|"]
    for L, r in results["depth"].items():
        lines.append(f"| {L} | {r['params']:,} | {r['forward_backward_s'] * 1e3:.1f} | "
                     f"{r['forward_backward_peak_bytes'] / 2**20:.1f} |")
    fits = results["summary"]["depth_linear_fit"]
    lines += ["", "Linear fits against L (R^2): " + ", ".join(f"{k} {v['r2']:.3f}" for k, v in fits.items()), ""]
    with open(path, "w") as f:
        f.write("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    results = run(args.repeats)
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "magep_layers.json"), "w") as f:
        json.dump(results, f, indent=2)
    write_markdown(results, os.path.join(RESULTS, "magep_layers.md"))
    print(json.dumps(results["summary"], indent=2))


if __name__ == "__main__":
    main()
