"""Time and memory of the Transformer-NFN accuracy predictor and its layers on zoo-shaped weights.

Configuration: the authors' README model (transformer_nfn.md §6) on MNIST-zoo-shaped transformers (D = 32,
h = 2, Dk = Dv = 16, DA = 64, 2 blocks, patch embedding 544 parameters, classifier 32 -> 32 -> 10), batches
of 16 and 64 weight sets. For each function: compile time (lower + compile, reported apart), the median
wall time of the compiled executable over repeats (forward; forward + backward = value_and_grad of the BCE
loss w.r.t. the model parameters), and XLA's memory analysis of the compiled executable (arguments +
outputs + temporaries; on CPU this is the static buffer assignment, our measure of peak memory).

Run: ``python -m benchmarks.tnfn_layers [--repeats N]``; writes benchmarks/results/tnfn_layers.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import jax
import optax
from flax import nnx

from transformer_nfn import AccuracyPredictor, TransformerEquivariant, TransformerInvariant, TransformerSpec, nets, relu_ffn

ZOO = TransformerSpec(num_blocks=2, num_heads=2, d_model=32, d_k=16, d_v=16, d_ffn=64)
RESULTS = Path(__file__).parent / "results"


def zoo_batch(n: int, key: jax.Array):
    """n zoo-shaped MNIST transformers (zoo initialisation, w_init_std 0.3) and target accuracies."""
    keys = jax.random.split(key, n)
    tw = jax.vmap(lambda k: nets.init_weights(k, ZOO, 10, w_init_std=0.3))(keys)
    return tw, jax.random.uniform(key, (n,))


def measure(fn, args, repeats: int) -> dict:
    """Compile time, median/min run time (ms) and memory analysis (MiB) of jax.jit(fn)(*args)."""
    leaves, treedef = jax.tree.flatten(args)  # lower on flat arrays (pytree classes validate their leaves)
    flat_fn = lambda *xs: fn(*jax.tree.unflatten(treedef, xs))
    t0 = time.perf_counter()
    compiled = jax.jit(flat_fn).lower(*leaves).compile()
    compile_s = time.perf_counter() - t0
    args = leaves
    jax.block_until_ready(compiled(*args))  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(1e3 * (time.perf_counter() - t0))
    mem = compiled.memory_analysis()
    mib = lambda b: round(b / 2**20, 3)
    return dict(
        compile_s=round(compile_s, 2), median_ms=round(statistics.median(times), 2), min_ms=round(min(times), 2),
        memory_mib=dict(arguments=mib(mem.argument_size_in_bytes), outputs=mib(mem.output_size_in_bytes),
                        temporaries=mib(mem.temp_size_in_bytes),
                        total=mib(mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes)),
    )


def model_functions(model: nnx.Module):
    """Pure forward and forward+backward of a predictor: (params, tw, acc) -> logits / (loss, grads)."""
    graphdef, params = nnx.split(model, nnx.Param)

    def forward(p, tw, acc):
        return nnx.merge(graphdef, p).logits(tw)

    def loss(p, tw, acc):
        return optax.sigmoid_binary_cross_entropy(forward(p, tw, acc), acc).mean()

    return params, forward, jax.value_and_grad(loss)


def run(repeats: int, batches=(16, 64)) -> dict:
    rows = []
    predictors = {
        "AccuracyPredictor (README config)": AccuracyPredictor(
            ZOO, classifier_widths=(32, 32, 10), embedding_size=544, rngs=nnx.Rngs(0)),
        "AccuracyPredictor, ffn_scaling=True": AccuracyPredictor(
            ZOO, classifier_widths=(32, 32, 10), embedding_size=544, ffn_scaling=True, rngs=nnx.Rngs(0)),
    }
    eq = TransformerEquivariant(ZOO, 1, 10, rngs=nnx.Rngs(1))
    inv = TransformerInvariant(ZOO, 10, 10, rngs=nnx.Rngs(2))
    for n in batches:
        tw, acc = zoo_batch(n, jax.random.key(n))
        for name, model in predictors.items():
            params, forward, fwd_bwd = model_functions(model)
            n_params = sum(x.size for x in jax.tree.leaves(params))
            for mode, fn in (("forward", forward), ("forward+backward", fwd_bwd)):
                rows.append(dict(model=name, params=n_params, batch=n, mode=mode, **measure(fn, (params, tw, acc), repeats)))
                print(rows[-1], flush=True)
        feats = tw.to_features()
        hidden = relu_ffn(nnx.jit(lambda m, f: m(f))(eq, feats))
        for name, layer, x in (("TransformerEquivariant 1->10", eq, feats), ("TransformerInvariant 10->10", inv, hidden)):
            graphdef, params = nnx.split(layer, nnx.Param)
            fn = lambda p, f, graphdef=graphdef: nnx.merge(graphdef, p)(f)
            n_params = sum(x.size for x in jax.tree.leaves(params))
            rows.append(dict(model=name, params=n_params, batch=n, mode="forward", **measure(fn, (params, x), repeats)))
            print(rows[-1], flush=True)
    return dict(
        config=dict(zoo=vars(ZOO), hidden_channels=[10], invariant_features=10, width=10, classifier=[32, 32, 10],
                    embedding_size=544, repeats=repeats, dtype="float32"),
        environment=dict(jax=jax.__version__, backend=jax.default_backend(), devices=str(jax.devices()[0]),
                         device_count=jax.device_count(), cpu_count=os.cpu_count(), machine=platform.machine(),
                         load_average=os.getloadavg()),
        memory_method="compiled.memory_analysis(): argument + output + temp buffer sizes of the XLA executable",
        rows=rows,
    )


def to_markdown(result: dict) -> str:
    env = result["environment"]
    lines = [
        "# Transformer-NFN: time and memory (benchmarks/tnfn_layers.py)",
        "",
        f"Zoo-shaped inputs (D = 32, h = 2, Dk = Dv = 16, DA = 64, 2 blocks, MNIST embedding and classifier), float32, "
        f"backend {env['backend']} ({env['device_count']} device(s), {env['cpu_count']} CPU cores, load average at the "
        f"end {tuple(round(x, 1) for x in env['load_average'])}; the machine was shared with other jobs, so times are "
        "indicative). Median over repeats of the compiled executable; compile time (lower + compile) apart. Memory: "
        f"{result['memory_method']}.",
        "",
        "| model / layer | params | batch | mode | median ms | min ms | compile s | memory MiB (args + out + temp) | temp MiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        m = r["memory_mib"]
        lines.append(f"| {r['model']} | {r['params']:,} | {r['batch']} | {r['mode']} | {r['median_ms']} | {r['min_ms']} | "
                     f"{r['compile_s']} | {m['total']} | {m['temporaries']} |")
    lines += ["", "Anchors: the paper's timing/memory figures were not obtained (anchors.md §4); parameter count of the "
              "README model, MNIST zoo: 1,812,181 (anchors.md §7, derived), reproduced exactly above."]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    result = run(args.repeats)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "tnfn_layers.json").write_text(json.dumps(result, indent=2))
    (RESULTS / "tnfn_layers.md").write_text(to_markdown(result))
    print(to_markdown(result))


if __name__ == "__main__":
    main()
