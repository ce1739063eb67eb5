"""Transformer-zoo generation throughput: the population training step of the zoo transformer.

    python -m benchmarks.tnfn_zoo_throughput [--datasets mnist ag_news] [--populations 8] [--chunks 1 4]
                                             [--micro-batches 32 all] [--steps 64] [--no-components]
                                             [--out benchmarks/results] [--quick]

Population step. ``common.population.train_population`` with the recipe's task (`transformer_nfn.zoo`: runs as
sampled from the grid, every member with a seeded subset of ``steps * 128`` rows of the whole training set); the
step time is the difference of two calls, ``epochs=2`` minus ``epochs=1`` (each with one initialisation and one
evaluation on 256 test rows, which cancel), divided by ``steps * P``: ms per model-step, everything the engine
does per step included (data gathering, random crops, dropout draws, forward and backward, all optimizers).
Compile time apart: the first call minus the same call again. Rows: models vmapped together (``chunk``) x rows
per gradient pass (``micro-batch``).

FLOPs counted (`transformer_step_flops`): 3 x 2 x the forward multiply-adds at batch 128 (patch embedding or
nothing for the frozen token table, the q/k/v/o projections, the attention products, the feed-forward layers
and the classifier): 0.873 GFLOP per model-step on MNIST (49 tokens), 3.22 GFLOP on AG News (128 tokens).
GFLOP/s are set against the run's matmul calibration (``benchmarks.harness``).

Components (MNIST, one model, batch 128, jitted gradient of the training loss): the recipe's loss; without the
random crop; Threefry against hashed dropout masks; ``jax.nn.softmax`` differentiated by autodiff against
`transformer_nfn.nets.softmax` (gradient written out); the loss in micro-batches of 16 and 32 rows; and a
ceiling: the step's matmuls alone at their shapes (projections, attention products, feed-forward, forward and
both gradients) in micro-batches of 32.
``--quick`` is a smoke run (tiny sizes). Writes ``tnfn_zoo_throughput.json`` and ``tnfn_zoo_throughput.md``.
"""
from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import optax

from benchmarks import harness
from benchmarks.zoo_throughput import population_step_time
from common import compilation_cache
from common.cli import positive_int, positive_int_or_all
from common.distributed import make_mesh
from common.nets import hash_uniform
from common.population import train_population
from transformer_nfn import nets, zoo

QUICK = dict(datasets=["mnist"], populations=[2], chunks=[1], micro_batches=[None], steps=1, components=False)
EVAL_ROWS = 256
TOKENS = {"mnist": 49, "ag_news": zoo.MAX_TOKENS}


def transformer_step_flops(dataset: str, batch: int = zoo.BATCH_SIZE, spec=zoo.ZOO_SPEC) -> float:
    """FLOPs of one forward + backward pass of the zoo transformer on ``dataset`` at ``batch``: 3 x 2 x the
    forward multiply-adds (the frozen token table of AG News costs none)."""
    t, d, h = TOKENS[dataset], spec.d_model, spec.num_heads
    per_token = h * d * (2 * spec.d_k + spec.d_v) + h * spec.d_v * d + 2 * d * spec.d_ffn  # projections, FFN
    per_token += h * t * (spec.d_k + spec.d_v)  # q k^T and softmax(.) v
    macs = spec.num_blocks * per_token * t + (16 * d * t if dataset == "mnist" else 0)  # 4 x 4 patch embedding
    macs += d * d + d * zoo.DATASETS[dataset]  # classifier on the pooled features
    return 6.0 * macs * batch


def population_step(dataset: str, population_sizes, chunks, micro_batches, steps: int, peak: float) -> list[dict]:
    """ms per model-step of the recipe's population training per population size, chunk and micro-batch."""
    train, test, extras = zoo.transformer_dataset(dataset)
    steps = min(steps, len(train["y"]) // zoo.BATCH_SIZE)  # AG News: 62 full batches of 8,000 rows
    fraction = steps * zoo.BATCH_SIZE / len(train["y"])
    test = {k: v[:EVAL_ROWS] for k, v in test.items()}
    flops = transformer_step_flops(dataset)
    mesh = make_mesh(jax.devices()[:1])
    configs = zoo.sample_transformer_configs(max(population_sizes), 0, dataset, epochs=2)
    for c in configs:
        c["train_fraction"] = fraction
    hp_all = zoo.transformer_hparams(configs)
    rows = []
    for p in population_sizes:
        hp = {k: v[:p] for k, v in hp_all.items()}
        for micro in micro_batches:
            task = zoo.transformer_task(dataset, extras.get("token_embedding"))._replace(micro_batch=micro)
            for chunk in chunks:
                run = lambda e: train_population(task, hp, train, test, epochs=e, batch_size=zoo.BATCH_SIZE,
                                                 mesh=mesh, chunk_size=chunk, progress=False)
                timing = population_step_time(run, steps, p)
                rows.append({"dataset": dataset, "models": p, "chunk_size": chunk, "micro_batch": micro,
                             "steps": steps, **timing,
                             "ms_per_model_step": 1e3 * timing["step_s"], "gflops": flops / timing["step_s"] / 1e9,
                             "percent_of_peak": 100 * flops / timing["step_s"] / 1e9 / peak})
    return rows


def components(peak: float) -> list[dict]:
    """One MNIST model's jitted gradient at batch 128: crop, dropout draw, softmax gradient, micro-batches."""
    key = jax.random.key(0)
    tw = nets.init_weights(key, zoo.ZOO_SPEC, 10, w_init_std=0.1)
    batch = zoo.BATCH_SIZE
    x = jax.random.uniform(key, (batch, 28, 28, 1), minval=-1.0, maxval=1.0)
    y = jnp.arange(batch, dtype=jnp.int32) % 10
    flops = transformer_step_flops("mnist")

    def gradient(crop=True, uniform=hash_uniform, micro=batch, autodiff_softmax=False):
        def loss(w, xb, yb, k):
            xb = zoo.random_crop(xb, jax.random.fold_in(k, 2)) if crop else xb
            logits = nets.classifier_apply(w, xb, dropout=0.1, dropout_key=k, dropout_uniform=uniform)
            return optax.softmax_cross_entropy_with_integer_labels(logits, yb).sum() / batch

        def grad(w, xb, yb, k):
            split = lambda a: a.reshape((batch // micro, micro) + a.shape[1:])
            keys = jax.vmap(lambda j: jax.random.fold_in(k, j))(jnp.arange(batch // micro))
            body = lambda total, xs: (jax.tree.map(jnp.add, total, jax.grad(loss)(w, *xs)), None)
            return jax.lax.scan(body, jax.tree.map(jnp.zeros_like, w), (split(xb), split(yb), keys))[0]

        return (lambda *args: _with_autodiff_softmax(grad, *args)) if autodiff_softmax else grad

    cases = [("recipe loss (random crop, hashed dropout, nets.softmax)", gradient()),
             ("no random crop", gradient(crop=False)),
             ("Threefry dropout", gradient(uniform=jax.random.uniform)),
             ("jax.nn.softmax by autodiff", gradient(autodiff_softmax=True)),
             *[(f"micro-batches of {m}", gradient(micro=m)) for m in (16, 32)]]
    rows = [_component_row(name, harness.measure_jitted(fn, tw, x, y, key, repeats=10), flops, peak)
            for name, fn in cases]
    rows.append(_component_row("ceiling: the step's matmuls alone (forward, dX, dW), micro-batches of 32",
                               _matmul_ceiling(batch, 32), flops, peak))
    return rows


def _with_autodiff_softmax(fn, *args):
    """``fn(*args)`` traced with `nets.softmax` replaced by ``jax.nn.softmax`` (differentiated by autodiff);
    JAX's tracing caches are cleared around it, so neither version leaks into the other's traces."""
    original = nets.softmax
    jax.clear_caches()
    nets.softmax = lambda x: jax.nn.softmax(x, axis=-1)
    try:
        return fn(*args)
    finally:
        nets.softmax = original
        jax.clear_caches()


def _component_row(name: str, m: dict, flops: float, peak: float) -> dict:
    return {"case": name, "ms": 1e3 * m["median_s"], "min_ms": 1e3 * m["min_s"], "compile_s": m["compile_s"],
            "cpu": m["cpu"], "gflops": flops / m["median_s"] / 1e9,
            "percent_of_peak": 100 * flops / m["median_s"] / 1e9 / peak}


def _matmul_ceiling(batch: int, micro: int, spec=zoo.ZOO_SPEC) -> dict:
    """The step's matmuls at their shapes for one micro-batch, forward and both gradients (three products per
    dense layer, batched for the attention products), scanned over the batch's micro-batches."""
    t, d, h, r = 49, spec.d_model, spec.num_heads, micro * 49
    block = [(r, d, h * (2 * spec.d_k + spec.d_v)), (r, h * spec.d_v, d), (r, d, spec.d_ffn), (r, spec.d_ffn, d)]
    dense = [(r, 16, d)] + block * spec.num_blocks  # the 4 x 4 patch embedding, then q/k/v, o, FFN per block
    keys = iter(jax.random.split(jax.random.key(1), 64))
    mats = [(jax.random.normal(next(keys), (m, k)), jax.random.normal(next(keys), (k, n)),
             jax.random.normal(next(keys), (m, n))) for m, k, n in dense]
    att = [jax.random.normal(next(keys), (micro * h, t, n)) for n in (spec.d_k, t, spec.d_v)]  # q, weights, v

    def step(mats, att):
        def body(total, _):
            for a, w, g in mats:
                total = total + jnp.sum(a @ w) + jnp.sum(a.T @ g) + jnp.sum(g @ w.T)
            q, s, v = att
            for _ in range(2 * spec.num_blocks):  # q k^T and s v per block, each with its two gradients
                total = total + jnp.sum(q @ jnp.swapaxes(q, 1, 2)) + jnp.sum(s @ q) + jnp.sum(jnp.swapaxes(s, 1, 2) @ v)
            return total, None
        return jax.lax.scan(body, jnp.zeros(()), None, length=batch // micro)[0]
    return harness.measure_jitted(step, mats, att, repeats=10)


def _markdown(result: dict) -> str:
    chunk = lambda c: "all" if c is None else str(c)
    rows = result["population"]
    lines = ["# Transformer-zoo generation throughput", "", *harness.run_markdown(result["run"]),
             f"Contention: {harness.contention_line([r.get('cpu') for r in rows + result['components']])}", "",
             "## Population step (batch 128)", "",
             "FLOPs per model-step: " + ", ".join(f"{d} {f / 1e9:.3f} GFLOP" for d, f in result["flops"].items())
             + " (3 x 2 x the forward multiply-adds); % of the run's jitted matmul calibration. Step time = (2 "
             "epochs - 1 epoch) / (steps x P), everything the engine does per step included (the per-epoch shuffle, "
             "an argsort of the whole training set per model, is spread over the epoch's steps, as in a zoo); "
             "compile apart.", "",
             *harness.markdown_table(
                 ["dataset", "P", "steps", "chunk", "micro-batch", "ms / model-step", "GFLOP/s", "% of peak",
                  "compile s"],
                 [[r["dataset"], r["models"], r["steps"], chunk(r["chunk_size"]), chunk(r["micro_batch"]),
                   f"{r['ms_per_model_step']:.1f}", f"{r['gflops']:.1f}", f"{r['percent_of_peak']:.0f}%",
                   f"{r['compile_s']:.0f}"] for r in rows])]
    if result["components"]:
        lines += ["", "## One MNIST model's gradient at batch 128 (jitted)", "",
                  "Median (min) of 10 timed calls; GFLOP/s and % of peak of the step's FLOP count.", "",
                  *harness.markdown_table(["case", "ms", "GFLOP/s", "% of peak"],
                                          [[r["case"], f"{r['ms']:.1f} ({r['min_ms']:.1f})", f"{r['gflops']:.1f}",
                                            f"{r['percent_of_peak']:.0f}%"] for r in result["components"]])]
    return "\n".join(lines) + "\n"


@compilation_cache.disabled()  # first calls are measured: compiled afresh, never read from a cache
def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["mnist", "ag_news"], choices=sorted(zoo.DATASETS))
    parser.add_argument("--steps", type=positive_int, default=64,
                        help="steps per timed epoch (at most the training set's full batches)")
    parser.add_argument("--populations", type=positive_int, nargs="+", default=[8])
    parser.add_argument("--chunks", type=positive_int_or_all, nargs="+", default=[1, 4],
                        help="models vmapped together per step ('all': the whole population)")
    parser.add_argument("--micro-batches", type=positive_int_or_all, nargs="+", default=[32, None],
                        help="rows per gradient pass ('all': the whole batch of 128)")
    parser.add_argument("--no-components", dest="components", action="store_false",
                        help="skip the component and ceiling rows")
    args = harness.parse_benchmark_args(parser, argv, QUICK)
    record = harness.start_run()
    peak = record.calibration["jax_gflops"]
    result = {"flops": {d: transformer_step_flops(d) for d in args.datasets},
              "components": components(peak) if args.components else [],
              "population": [row for d in args.datasets
                             for row in population_step(d, args.populations, args.chunks, args.micro_batches,
                                                        args.steps, peak)]}
    result["run"] = record.finish()
    markdown = _markdown(result)
    harness.write_results(args.out, "tnfn_zoo_throughput", result, markdown)
    print(markdown)


if __name__ == "__main__":
    main()
