"""Time and memory of the Transformer-NFN accuracy predictor and its layers on zoo-shaped weights.

Configuration: the authors' README model (docs/transformer_nfn.md §6) on MNIST-zoo-shaped transformers (D = 32,
h = 2, Dk = Dv = 16, DA = 64, 2 blocks, patch embedding 544 parameters, classifier 32 -> 32 -> 10), batches
of 16 and 64 weight sets. For each function: compile time (lower + compile, reported apart), the median
wall time of the compiled executable over repeats (forward; forward + backward = value_and_grad of the BCE
loss w.r.t. the model parameters), memory as `harness.MEMORY_DEFINITION` (XLA's memory analysis of the
compiled executable plus host allocations), and the FLOP rate beside the run's matmul calibration.

Run: ``python -m benchmarks.tnfn_layers [--repeats N] [--quick] [--out benchmarks/results]``; writes
tnfn_layers.{json,md}. ``--quick`` is a smoke run (one block, D = 4, batch 2, the README predictor only).
"""
from __future__ import annotations

import argparse
import os

import jax
import optax
from flax import nnx

from benchmarks import harness
from common import compilation_cache
from common.cli import positive_int
from transformer_nfn import AccuracyPredictor, TransformerEquivariant, TransformerInvariant, TransformerSpec, nets, relu_ffn

ZOO = TransformerSpec(num_blocks=2, num_heads=2, d_model=32, d_k=16, d_v=16, d_ffn=64)
FULL = dict(zoo=ZOO, batches=(16, 64), ffn_scaling=(False, True))
QUICK = dict(zoo=TransformerSpec(num_blocks=1, num_heads=1, d_model=4, d_k=2, d_v=2, d_ffn=4), batches=(2,),
             ffn_scaling=(False,))
RESULTS = os.path.join(os.path.dirname(__file__), "results")


def zoo_batch(zoo: TransformerSpec, n: int, key: jax.Array):
    """n zoo-shaped MNIST transformers (zoo initialisation, w_init_std 0.3) and target accuracies."""
    keys = jax.random.split(key, n)
    tw = jax.vmap(lambda k: nets.init_weights(k, zoo, 10, w_init_std=0.3))(keys)
    return tw, jax.random.uniform(key, (n,))


def measure(fn, args, repeats: int) -> dict:
    """Compile time, median/min run time (ms), memory (MiB), GFLOP/s and CPU use of jax.jit(fn)(*args)."""
    m = harness.measure_jitted(fn, *args, repeats=repeats)
    mib = lambda b: round(b / 2**20, 3)
    mem = m["memory"]
    return dict(
        compile_s=round(m["compile_s"], 2), median_ms=round(1e3 * m["median_s"], 2), min_ms=round(1e3 * m["min_s"], 2),
        memory_mib=dict(arguments=mib(mem["argument_bytes"]), outputs=mib(mem["output_bytes"]),
                        temporaries=mib(mem["temp_bytes"]), host_peak=mib(mem["host_peak_bytes"]),
                        total=mib(mem["peak_bytes"])),
        gflops=m["gflops"], cpu=m["cpu"],
    )


def model_functions(model: nnx.Module):
    """Pure forward and forward+backward of a predictor: (params, tw, acc) -> logits / (loss, grads)."""
    graphdef, params = nnx.split(model, nnx.Param)

    def forward(p, tw, acc):
        return nnx.merge(graphdef, p).logits(tw)

    def loss(p, tw, acc):
        return optax.sigmoid_binary_cross_entropy(forward(p, tw, acc), acc).mean()

    return params, forward, jax.value_and_grad(loss)


def predictor(zoo: TransformerSpec, ffn_scaling: bool) -> AccuracyPredictor:
    """The README accuracy predictor for MNIST zoos of `zoo` (patch embedding 16 D + D, classifier D -> D -> 10)."""
    d = zoo.d_model
    return AccuracyPredictor(zoo, classifier_widths=(d, d, 10), embedding_size=17 * d, ffn_scaling=ffn_scaling,
                             rngs=nnx.Rngs(0))


def run(repeats: int, grid: dict = FULL) -> dict:
    """Every row of the report on `grid` (`FULL` or `QUICK`); the result of `main`'s JSON file."""
    record = harness.start_run()
    zoo, rows = grid["zoo"], []
    predictors = {f"AccuracyPredictor{', ffn_scaling=True' if s else ' (README config)'}": predictor(zoo, s)
                  for s in grid["ffn_scaling"]}
    eq = TransformerEquivariant(zoo, 1, 10, rngs=nnx.Rngs(1))
    inv = TransformerInvariant(zoo, 10, 10, rngs=nnx.Rngs(2))
    for n in grid["batches"]:
        tw, acc = zoo_batch(zoo, n, jax.random.key(n))
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
    run_record = record.finish()
    return dict(
        config=dict(zoo=vars(zoo), hidden_channels=[10], invariant_features=10, width=10,
                    classifier=[zoo.d_model, zoo.d_model, 10], embedding_size=17 * zoo.d_model, repeats=repeats,
                    dtype="float32"),
        environment=dict(jax=jax.__version__, backend=jax.default_backend(), devices=str(jax.devices()[0]),
                         device_count=jax.device_count(), cpu_count=os.cpu_count(),
                         machine=run_record["environment"]["machine"],
                         load_average=run_record["load_average_end"]),
        memory_method=harness.MEMORY_DEFINITION,
        run=run_record,
        rows=rows,
    )


def to_markdown(result: dict) -> str:
    """The Markdown report of `run`'s result."""
    zoo, run = result["config"]["zoo"], result["run"]
    lines = [
        "# Transformer-NFN: time and memory (benchmarks/tnfn_layers.py)",
        "",
        f"Zoo-shaped inputs (D = {zoo['d_model']}, h = {zoo['num_heads']}, Dk = {zoo['d_k']}, Dv = {zoo['d_v']}, "
        f"DA = {zoo['d_ffn']}, {zoo['num_blocks']} block(s), MNIST embedding and classifier), float32. Median over "
        "repeats of the compiled executable; compile time (lower + compile) apart. GFLOP/s: XLA's FLOP count / "
        "median time, and its share of the run's jitted matmul rate.",
        "",
        *harness.run_markdown(run),
    ]
    lines += harness.markdown_table(
        ("model / layer", "params", "batch", "mode", "median ms", "min ms", "compile s", "peak memory MiB",
         "temp MiB", "GFLOP/s (% matmul)"),
        [(r["model"], f"{r['params']:,}", r["batch"], r["mode"], r["median_ms"], r["min_ms"], r["compile_s"],
          r["memory_mib"]["total"], r["memory_mib"]["temporaries"],
          "-" if r.get("gflops") is None else f"{r['gflops']:.3g} ({harness.percent_of_matmul(r['gflops'], run)})")
         for r in result["rows"]])
    lines += ["", "Anchors: the paper's timing/memory figures were not obtained; parameter count of the README model, "
              "MNIST zoo: 1,812,181 (derived), reproduced exactly above."]
    return "\n".join(lines) + "\n"


@compilation_cache.disabled()  # first calls are measured: compiled afresh, never read from a cache
def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=positive_int, default=10)
    parser.add_argument("--quick", action="store_true", help="smoke run: one tiny block, batch 2, one predictor")
    parser.add_argument("--out", default=RESULTS)
    args = parser.parse_args(argv)
    result = run(args.repeats, QUICK if args.quick else FULL)
    markdown = to_markdown(result)
    harness.write_results(args.out, "tnfn_layers", result, markdown)
    print(markdown)


if __name__ == "__main__":
    main()
