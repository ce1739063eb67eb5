"""Zoo generation throughput: the population training step of MNIST-sized Small-CNN-Zoo networks, and SIREN fits.

    python -m benchmarks.zoo_throughput [--dataset mnist] [--populations 8 32] [--chunks 1 4] [--steps 48]
                                        [--activations relu tanh] [--workers 2] [--siren-images 64] [--siren-steps 200]
                                        [--siren-chunks 1 4 16] [--no-components] [--out benchmarks/results]
                                        [--quick]

Population step. ``common.population.train_population`` with the recipe's task (`magep.zoo_recipes.cnn_task`:
hyperparameters as sampled, every member with a seeded subset of ``steps * batch`` images of the whole training
set, so every member does every step and reads rows from the whole set as in a zoo); the step time is the difference of two calls, ``epochs=2`` minus ``epochs=1`` (each with one
initialisation and one final evaluation on 512 test images, which cancel), divided by ``steps * P``: ms per
model-step, everything the engine does per step included (data gathering, dropout draws, forward and backward,
all optimizers, freezing). Compile time apart: the first call (which compiles) minus the same call again.
The same cells again in ``--workers`` processes at once (default 2), each pinned to one CPU with one XLA thread, as
the zoos are generated here (one worker per core): each worker's step time and the machine's (model-steps per
second summed over the workers), against the same calibration.

FLOPs counted: 3 x the forward pass's multiply-adds x 2 (forward, gradient w.r.t. the weights, gradient w.r.t.
the inputs; the last is not needed for the first layer, so the true count is about 7% lower), at the batch
size: 0.358 GFLOP per model-step for 28 x 28 x 1 inputs at batch 512. GFLOP/s are set against the run's matmul
calibration (``benchmarks.harness``). Components: one model's gradient at batch 512 (``harness.measure_jitted``),
lax.conv against the patch matmul, Threefry against hashed dropout masks, whole batch against micro-batches of
64, 128 and 256 rows; a ceiling: the conv layers' patch matmuls alone (forward, input and weight gradients at
the layers' shapes, in micro-batches of 128), without patch extraction, activations, dropout or pooling. Each
component row also gives XLA's bytes accessed per call and that traffic's rate against the run's copy bandwidth
(``harness.matmul_calibration``): a row near 100% of it is memory-bound.

SIREN: the recipe's fits (Adam, lr 5e-5, full 28 x 28 grid) of the first MNIST test images, vmapped; fit-steps
per second from the same two-call difference, FLOPs 3 x 2 x multiply-adds of the 2-32-32-1 network per pixel.
Ceilings per fit-step: the fit's 2 x 784 x 64 sines and cosines alone, by ``jnp.sin`` (a scalar library call
per entry on CPU) and by `common.sine.sin` (what ``siren_apply`` uses), and the bare vmapped fit (gradient +
Adam in a `jax.lax.scan` over steps, no engine).
Against plain PyTorch (``--reference-python PY``, a Python with torch): the same recipes written the way the
original zoos were made, one model at a time with 2 threads (`benchmarks.vs_reference_zoo_torch`, each in its own
process), ms per model-step and the recipe's FLOP rate beside our best population row, and the speed-up (target
>= 3x). Skipped without ``--reference-python``.
``--quick`` is a smoke run (tiny sizes). Writes ``zoo_throughput.json`` and ``zoo_throughput.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import asdict

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import harness, vs_reference
from common import compilation_cache
from common.cli import non_negative_int, positive_int, positive_int_or_all
from common.distributed import make_mesh
from common.nets import cnn_apply, hash_uniform, siren_apply
from common.population import CPU_CHUNK, train_population
from common.sine import sin
from magep import zoo_recipes as recipes

QUICK = dict(populations=[2], chunks=[1], steps=1, activations=["relu"], siren_images=2, siren_steps=2,
             siren_chunks=[1], components=False, workers=0)
ONE_THREAD_XLA = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
WORKER_RESULT = "WORKER_ROWS "  # the line a --population-worker process ends its output with
EVAL_ROWS = 512


def cnn_step_flops(height: int, width: int, batch: int, widths=recipes.CNN_WIDTHS) -> float:
    """FLOPs of one forward + backward pass of a Small-CNN-Zoo network at ``batch``: 3 x 2 x multiply-adds."""
    macs, h, w = 0, height, width
    for c_in, c_out in zip(widths[:3], widths[1:4]):
        h, w = (h - 3) // 2 + 1, (w - 3) // 2 + 1
        macs += h * w * c_out * 9 * c_in
    macs += widths[3] * widths[4]
    return 6.0 * macs * batch


def siren_step_flops(pixels: int, out_channels: int = 1) -> float:
    """FLOPs of one full-grid forward + backward pass of a 2-32-32-c SIREN: 3 x 2 x multiply-adds."""
    widths = recipes.SIREN_WIDTHS + (out_channels,)
    return 6.0 * pixels * sum(a * b for a, b in zip(widths[:-1], widths[1:]))


def population_step_time(run, steps_per_epoch: int, models: int, repeats: int = 3) -> dict:
    """Seconds per model-step from ``run(epochs)``: (2 epochs - 1 epoch) / (steps * models), each the fastest of
    ``repeats`` calls (single calls varied by +-15% on this machine); the first call compiles, and its excess over
    the fastest one-epoch call is the compile time."""
    _, first = harness.measure_cpu(lambda: run(1))
    one = min((harness.measure_cpu(lambda: run(1))[1] for _ in range(repeats)), key=lambda m: m.wall_s)
    two = min((harness.measure_cpu(lambda: run(2))[1] for _ in range(repeats)), key=lambda m: m.wall_s)
    step_s = max(two.wall_s - one.wall_s, 1e-9) / (steps_per_epoch * models)
    return {"step_s": step_s, "compile_s": max(first.wall_s - one.wall_s, 0.0), "one_epoch_s": one.wall_s,
            "two_epochs_s": two.wall_s, "repeats": repeats, "cpu": asdict(two)}


def population_step(dataset: str, activations, population_sizes, chunks, steps: int, batch_size: int,
                    peak: float) -> list[dict]:
    """ms per model-step of the recipe's population training, per activation, population size and chunk size."""
    train, test, _ = recipes.cnn_dataset(dataset)
    # every member's epoch is `steps` steps over its own seeded subset of the WHOLE training set, as in a zoo
    # (a set cut to steps * batch images stays in cache: ReLU, 8 networks, one at a time, ran 8.3 ms per
    # model-step on 4,096 images against about 18 ms on the 60,000)
    fraction = steps * batch_size / len(train["y"])
    test = {k: v[:EVAL_ROWS] for k, v in test.items()}
    flops = cnn_step_flops(*train["x"].shape[1:3], batch_size)
    mesh = make_mesh(jax.devices()[:1])
    rows = []
    for activation in activations:
        configs = recipes.sample_cnn_configs(max(population_sizes), seed=0, dataset=dataset, epochs=2)
        for c in configs:
            c["activation"], c["train_fraction"] = activation, fraction
        for p in population_sizes:
            for chunk in chunks:
                hp = recipes.cnn_hparams(configs[:p])
                run = lambda e: train_population(recipes.cnn_task(activation), hp, train, test, epochs=e,
                                                 batch_size=batch_size, mesh=mesh, chunk_size=chunk, progress=False)
                timing = population_step_time(run, steps, p)
                rows.append({"activation": activation, "models": p, "chunk_size": chunk, **timing,
                             "ms_per_model_step": 1e3 * timing["step_s"], "gflops": flops / timing["step_s"] / 1e9,
                             "percent_of_peak": 100 * flops / timing["step_s"] / 1e9 / peak})
    return rows


def worker_command(args, cpu: int, workers_python: str = sys.executable) -> list[str]:
    """The command of one ``--population-worker`` process measuring ``args``' population cells on CPU ``cpu``."""
    return [workers_python, "-m", "benchmarks.zoo_throughput", "--population-worker", str(cpu), "--dataset", args.dataset,
            "--batch-size", str(args.batch_size), "--steps", str(args.steps), "--activations", *args.activations,
            "--populations", *map(str, args.populations),
            "--chunks", *("all" if c is None else str(c) for c in args.chunks)]


def pin_process(cpu: int) -> None:
    """Pin every thread of this process to CPU ``cpu`` (threads started later inherit it; Linux)."""
    for tid in os.listdir("/proc/self/task"):
        os.sched_setaffinity(int(tid), {cpu})


def combine_workers(per_worker: list[list[dict]], flops: float, peak: float) -> list[dict]:
    """One row per cell from the rows of workers that ran the same cells at once: each worker's ms per
    model-step, and the machine's, 1 / (sum over workers of model-steps per second), at ``flops`` per
    model-step against ``peak`` GFLOP/s; ``other_cores``: the fewest other busy cores any worker saw during its
    timed calls (about workers - 1 when the workers overlapped)."""
    rows = []
    for cells in zip(*per_worker, strict=True):
        step_s = 1.0 / sum(1.0 / c["step_s"] for c in cells)
        others = [c["cpu"]["other_cores"] for c in cells if c["cpu"].get("other_cores") is not None]
        rows.append({"activation": cells[0]["activation"], "models": cells[0]["models"],
                     "chunk_size": cells[0]["chunk_size"], "workers": len(cells), "step_s": step_s,
                     "worker_ms_per_model_step": [1e3 * c["step_s"] for c in cells],
                     "compile_s": max(c["compile_s"] for c in cells), "ms_per_model_step": 1e3 * step_s,
                     "gflops": flops / step_s / 1e9, "percent_of_peak": 100 * flops / step_s / 1e9 / peak,
                     "other_cores": min(others, default=None)})
    return rows


def population_step_workers(args, workers: int, flops: float, peak: float) -> list[dict]:
    """The population cells measured by ``workers`` processes at once, each pinned to its own CPU with one XLA
    thread: how this project's zoos are generated (one worker per core). Rows as `combine_workers`.

    Raises:
      ValueError: more workers than CPUs this process may use; RuntimeError: a worker failed (its stderr tail)."""
    cpus = sorted(os.sched_getaffinity(0))
    if workers > len(cpus):
        raise ValueError(f"--workers {workers}: this process may use {len(cpus)} CPUs ({cpus})")
    env = vs_reference.project_env(XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {ONE_THREAD_XLA}".strip(),
                                   OMP_NUM_THREADS="1")
    procs = [subprocess.Popen(worker_command(args, cpu), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              cwd=vs_reference.ROOT, env=env) for cpu in cpus[:workers]]
    per_worker = []
    for proc in procs:
        out, err = proc.communicate()
        lines = [line for line in out.splitlines() if line.startswith(WORKER_RESULT)]
        if proc.returncode or not lines:
            raise RuntimeError(f"population worker failed (rc {proc.returncode}): {err[-600:]}")
        per_worker.append(json.loads(lines[-1][len(WORKER_RESULT):]))
    return combine_workers(per_worker, flops, peak)


def components(batch_size: int, peak: float) -> list[dict]:
    """One model's jitted gradient at ``batch_size`` MNIST-sized images: conv form, dropout draw, micro-batches."""
    key = jax.random.key(0)
    ws = recipes.init_cnn(key, {"w_init": jnp.int32(0), "init_std": jnp.float32(0.1)})
    x = jax.random.uniform(key, (batch_size, 28, 28, 1), minval=-1.0, maxval=1.0)
    y = jnp.arange(batch_size, dtype=jnp.int32) % 10
    flops = cnn_step_flops(28, 28, batch_size)

    def gradient(conv, dropout_uniform, micro):
        def loss(w, xb, yb, k):
            logits = cnn_apply(w, xb, "relu", conv=conv, dropout=0.3 if dropout_uniform else 0.0,
                               dropout_key=k if dropout_uniform else None, dropout_uniform=dropout_uniform)
            return optax.softmax_cross_entropy_with_integer_labels(logits, yb).sum() / batch_size

        def grad(w, xb, yb, k):
            parts = batch_size // micro
            split = lambda a: a.reshape((parts, micro) + a.shape[1:])
            body = lambda total, xs: (jax.tree.map(jnp.add, total, jax.grad(loss)(w, xs[0], xs[1], xs[2])), None)
            keys = jax.vmap(lambda j: jax.random.fold_in(k, j))(jnp.arange(parts))
            return jax.lax.scan(body, jax.tree.map(jnp.zeros_like, w), (split(xb), split(yb), keys))[0]
        return grad

    cases = [("lax.conv, no dropout", "lax", None, batch_size),
             ("patches, no dropout", "patches", None, batch_size),
             ("patches, Threefry dropout", "patches", jax.random.uniform, batch_size),
             ("patches, hashed dropout", "patches", hash_uniform, batch_size),
             *[(f"patches, hashed dropout, micro-batches of {m}", "patches", hash_uniform, m)
               for m in (64, recipes.CNN_MICRO_BATCH, 256) if batch_size % m == 0]]
    rows = []
    for name, conv, uniform, micro in cases:
        m = harness.measure_jitted(gradient(conv, uniform, micro), ws, x, y, key, repeats=5)
        rows.append(_component_row(name, m, flops, peak, looped=micro < batch_size))
    rows.append(_component_row(f"ceiling: the conv layers' patch matmuls alone (forward, dX, dW), micro-batches of "
                               f"{recipes.CNN_MICRO_BATCH}", _conv_matmuls(batch_size, recipes.CNN_MICRO_BATCH),
                               flops, peak, looped=True))
    return rows


def _component_row(name: str, m: dict, flops: float, peak: float, looped: bool = False) -> dict:
    """A components-table row; ``looped``: the case runs a `lax.scan`, whose body XLA's byte count covers once,
    so no traffic is reported for it."""
    traffic = (None, None) if looped else (m["bytes_accessed"], m["gbytes_per_s"])
    return {"case": name, "ms": 1e3 * m["median_s"], "compile_s": m["compile_s"], "cpu": m["cpu"],
            "gflops": flops / m["median_s"] / 1e9, "percent_of_peak": 100 * flops / m["median_s"] / 1e9 / peak,
            "xla_bytes_accessed": traffic[0], "gbytes_per_s": traffic[1]}


def _conv_matmuls(batch_size: int, micro: int) -> dict:
    """The three patch matmuls per conv layer of a step (forward [R, 9C] x [9C, O], input gradient, weight
    gradient; none for the first layer's input) at the layers' shapes, in micro-batches: a practical ceiling
    for the gradient (no patch extraction, activation, dropout or pooling)."""
    shapes, (h, w) = [], (28, 28)
    for c_in, c_out in zip(recipes.CNN_WIDTHS[:3], recipes.CNN_WIDTHS[1:4]):
        h, w = (h - 3) // 2 + 1, (w - 3) // 2 + 1
        shapes.append((micro * h * w, 9 * c_in, c_out))
    keys = jax.random.split(jax.random.key(1), 3 * len(shapes))
    args = [(jax.random.normal(k1, (r, k)), jax.random.normal(k2, (k, o)), jax.random.normal(k3, (r, o)))
            for (r, k, o), k1, k2, k3 in zip(shapes, keys[0::3], keys[1::3], keys[2::3])]

    def step(args):
        def body(total, _):
            for i, (p, wt, g) in enumerate(args):
                total = total + jnp.sum(p @ wt) + jnp.sum(p.T @ g) + (jnp.sum(g @ wt.T) if i else 0.0)
            return total, None
        return jax.lax.scan(body, jnp.zeros(()), None, length=batch_size // micro)[0]
    return harness.measure_jitted(step, args, repeats=5)


def siren_benchmark(images: int, steps: int, chunks, peak: float, ceilings: bool = True) -> dict:
    """Fit-steps per second of recipe SIREN fits of MNIST test images (vmapped), GFLOP/s and final PSNR."""
    pixels, _ = recipes.siren_images("mnist", "test", images)
    h, w, c = pixels.shape[1:]
    grid = {"coords": recipes.siren_grid(h, w), "pixel": np.arange(h * w, dtype=np.int32)}
    task = recipes.siren_task(c)
    mesh = make_mesh(jax.devices()[:1])
    hp = {"seed": np.arange(images, dtype=np.int32), "optimizer": np.zeros(images, np.int32),
          "train_fraction": np.ones(images, np.float32),
          "learning_rate": np.full(images, recipes.SIREN_LEARNING_RATE, np.float32),
          "image": pixels.reshape(images, h * w, c)}
    flops = siren_step_flops(h * w, c)
    rows = []
    for chunk in chunks:
        run = lambda e: train_population(task, hp, grid, grid, epochs=e * steps, batch_size=h * w, mesh=mesh,
                                         chunk_size=chunk, progress=False)[-1].metrics
        timing = population_step_time(run, steps, images)
        rows.append({"chunk_size": chunk, **timing, "ms_per_fit_step": 1e3 * timing["step_s"],
                     "gflops": flops / timing["step_s"] / 1e9, "percent_of_peak": 100 * flops / timing["step_s"] / 1e9 / peak})
    final = run(2)
    psnr = recipes.psnr(final["test_mse"])
    return {"images": images, "steps": steps, "flops_per_fit_step": flops, "rows": rows,
            "ceilings": _siren_ceilings(images, h * w, c, flops, peak) if ceilings else [],
            "psnr_db_after_2x_steps": {"median": float(np.median(psnr)), "min": float(psnr.min()),
                                       "max": float(psnr.max())}}


def _siren_ceilings(images: int, pixels: int, out_channels: int, flops: float, peak: float) -> list[dict]:
    """Per fit-step: the sines and cosines of a fit-step alone (2 x pixels x 64: forward sines, backward
    cosines), by ``jnp.sin`` and by `common.sine.sin` (the one SIREN layers use), and the whole vmapped
    gradient + Adam step in a bare `jax.lax.scan` (no engine)."""
    steps = 20
    z = jax.random.normal(jax.random.key(0), (images, sum(recipes.SIREN_WIDTHS[1:]), pixels)) * 10.0
    sines = lambda f: lambda z: jax.lax.scan(lambda a, _: (a + f(a) + jax.grad(lambda v: jnp.sum(f(v)))(a), None),
                                             z, None, length=steps)[0]  # sin(a) and its derivative cos(a)
    coords = jnp.asarray(recipes.siren_grid(28, 28)) if pixels == 784 else jnp.zeros((pixels, 2))
    ws = jax.vmap(lambda k: recipes.init_siren(k, {}, out_channels))(jax.random.split(jax.random.key(1), images))
    target = jnp.zeros((images, pixels, out_channels))
    adam = optax.scale_by_adam()

    def fit(ws, target):
        def step(carry, _):
            w, state = carry
            g = jax.vmap(jax.grad(lambda w, t: jnp.mean((siren_apply(w, coords) - t) ** 2)))(w, target)
            d, state = jax.vmap(adam.update)(g, state, w)
            return (jax.tree.map(lambda p, u: p - recipes.SIREN_LEARNING_RATE * u, w, d), state), None
        return jax.lax.scan(step, (ws, jax.vmap(adam.init)(ws)), None, length=steps)[0][0]
    cases = [("jnp.sin + cos alone", sines(jnp.sin), (z,)), ("common.sine.sin + cos alone", sines(sin), (z,)),
             ("bare vmapped fit (gradient + Adam, lax.scan over steps)", fit, (ws, target))]
    rows = []
    for name, fn, args in cases:
        m = harness.measure_jitted(fn, *args, repeats=3)
        step_s = m["median_s"] / (steps * images)
        rows.append({"case": name, "ms_per_fit_step": 1e3 * step_s, "cpu": m["cpu"],
                     "percent_of_peak": 100 * flops / step_s / 1e9 / peak})
    return rows


def pytorch_reference(python: str, cnn_steps: int, siren_steps: int, flops: dict, peak: float) -> list[dict]:
    """The recipes in plain PyTorch, one model at a time (``benchmarks.vs_reference_zoo_torch`` run by
    ``python``, 2 threads, each recipe in its own process): ms per model-step, GFLOP/s and % of ``peak`` of
    the recipe's per-step FLOPs ``flops`` ({"cnn", "siren"}); a failed job keeps its status and error."""
    options = argparse.Namespace(reference_python=python, reference_dir=None, ott_python=None, threads=2,
                                 repeats=None)
    rows = []
    for recipe, job, steps in (("cnn", "torch_cnn_zoo", cnn_steps), ("siren", "torch_siren", siren_steps)):
        command, _ = vs_reference.job_command(dict(job=job, mode="train", models=1, steps=steps), options)
        record = vs_reference.run_job(command, mem_gb=20.0, timeout_s=600.0)
        row = {"recipe": recipe, "steps_per_call": steps, "status": record.get("status"),
               "error": record.get("error"), "torch": record.get("torch"),
               "other_cpu_frac": record.get("other_cpu_frac")}
        if record.get("status") == "ok":
            step_s = record["median_s"] / steps
            row.update(ms_per_model_step=1e3 * step_s, gflops=flops[recipe] / step_s / 1e9,
                       percent_of_peak=100 * flops[recipe] / step_s / 1e9 / peak)
        rows.append(row)
    return rows


def _pytorch_markdown(result: dict) -> list[str]:
    ours = {"cnn": min((r["ms_per_model_step"] for r in result["cnn"]["population"]), default=None),
            "siren": min((r["ms_per_fit_step"] for r in result["siren"]["rows"]), default=None)}
    rows = []
    for r in result["pytorch"]:
        torch_ms, our_ms = r.get("ms_per_model_step"), ours[r["recipe"]]
        rows.append([{"cnn": "Small CNN Zoo step", "siren": "SIREN fit-step"}[r["recipe"]],
                     r["status"] if torch_ms is None else f"{torch_ms:.2f}",
                     "-" if torch_ms is None else f"{r['gflops']:.1f} ({r['percent_of_peak']:.0f}%)",
                     "-" if our_ms is None else f"{our_ms:.2f}",
                     "-" if torch_ms is None or our_ms is None else f"{torch_ms / our_ms:.2f}",
                     "-" if r["other_cpu_frac"] is None else f"{r['other_cpu_frac']:.2f}"])
    return ["", "## Against plain PyTorch, one model at a time (2 threads)", "",
            "PyTorch ms per model-step (median of timed calls of several steps each, "
            "`benchmarks.vs_reference_zoo_torch`) against our best population row above; speed-up = PyTorch / "
            "ours (target >= 3); `other CPU` = share of the CPUs other processes used while PyTorch was timed.", "",
            *harness.markdown_table(["recipe", "PyTorch ms / model-step", "PyTorch GFLOP/s (% of peak)",
                                     "ours ms / model-step", "speed-up", "other CPU"], rows)]


def _traffic(row: dict, copy_gbps: float) -> list[str]:
    """MB accessed, GB/s and % of the copy bandwidth of a component row ('-' without XLA's byte count)."""
    if row.get("xla_bytes_accessed") is None:
        return ["-", "-", "-"]
    return [f"{row['xla_bytes_accessed'] / 1e6:.0f}", f"{row['gbytes_per_s']:.1f}",
            f"{100 * row['gbytes_per_s'] / copy_gbps:.0f}%"]


def _markdown(result: dict) -> str:
    cnn, siren = result["cnn"], result["siren"]
    cpus = [r.get("cpu") for r in cnn["population"] + cnn["components"] + siren["rows"] + siren["ceilings"]]
    chunk = lambda c: "all" if c is None else str(c)
    lines = ["# Zoo generation throughput", "", *harness.run_markdown(result["run"]),
             f"Contention: {harness.contention_line(cpus)}", "",
             f"## Small CNN Zoo population step ({cnn['dataset']}, 28 x 28 x 1, batch {cnn['batch_size']})", "",
             f"FLOPs per model-step: {cnn['flops_per_model_step'] / 1e9:.3f} GFLOP (3 x 2 x the forward "
             "multiply-adds); % of the run's jitted matmul calibration. Step time = (2 epochs - 1 epoch) / "
             f"({cnn['steps']} steps x P), everything the engine does per step included; compile apart.", "",
             *harness.markdown_table(
                 ["activation", "P", "chunk", "ms / model-step", "GFLOP/s", "% of peak", "compile s"],
                 [[r["activation"], r["models"], chunk(r["chunk_size"]), f"{r['ms_per_model_step']:.1f}",
                   f"{r['gflops']:.1f}", f"{r['percent_of_peak']:.0f}%", f"{r['compile_s']:.0f}"]
                  for r in cnn["population"]])]
    if cnn.get("workers"):
        lines += ["", "### One worker per core (how the zoos are generated)", "",
                  "The same cells measured by one process per CPU at once, each pinned to its CPU with one XLA "
                  "thread; machine = 1 / (sum over workers of model-steps per second), its GFLOP/s against the "
                  "run's calibration (all threads); `other cores` = the fewest other busy cores a worker saw "
                  "while timed (about workers - 1 when the workers overlapped).", "",
                  *harness.markdown_table(
                      ["activation", "P", "chunk", "workers", "ms / model-step per worker", "machine ms / model-step",
                       "GFLOP/s", "% of peak", "other cores"],
                      [[r["activation"], r["models"], chunk(r["chunk_size"]), r["workers"],
                        " / ".join(f"{ms:.1f}" for ms in r["worker_ms_per_model_step"]),
                        f"{r['ms_per_model_step']:.1f}", f"{r['gflops']:.1f}", f"{r['percent_of_peak']:.0f}%",
                        "-" if r["other_cores"] is None else f"{r['other_cores']:.1f}"]
                       for r in cnn["workers"]])]
    if cnn["components"]:
        copy = result["run"]["calibration"]["copy_gbps"]
        lines += ["", f"### One model's gradient at batch {cnn['batch_size']} (jitted, relu)", "",
                  "Memory traffic: XLA's bytes accessed per call (operands and results of every op after fusion) "
                  f"and its rate, against the run's copy bandwidth ({copy:.1f} GB/s; '-' for the looped cases, whose "
                  "loop body XLA counts once). XLA's count includes traffic that stays in the caches, so a rate near "
                  "or above 100% says the step moves about as many bytes as DRAM could carry in its time, not that "
                  "DRAM is the limit.", "",
                  *harness.markdown_table(["case", "ms", "GFLOP/s", "% of peak", "XLA MB accessed", "GB/s",
                                           "% of bandwidth"],
                                          [[r["case"], f"{r['ms']:.1f}", f"{r['gflops']:.1f}",
                                            f"{r['percent_of_peak']:.0f}%", *_traffic(r, copy)]
                                           for r in cnn["components"]])]
    p = siren["psnr_db_after_2x_steps"]
    lines += ["", f"## SIREN fits ({siren['images']} MNIST test images, full 28 x 28 grid, Adam)", "",
              f"FLOPs per fit-step: {siren['flops_per_fit_step'] / 1e6:.2f} MFLOP. PSNR after "
              f"{2 * siren['steps']} steps: median {p['median']:.1f} dB (min {p['min']:.1f}, max {p['max']:.1f}).", "",
              *harness.markdown_table(["chunk", "ms / fit-step", "GFLOP/s", "% of peak", "compile s"],
                                      [[chunk(r["chunk_size"]), f"{r['ms_per_fit_step']:.2f}", f"{r['gflops']:.1f}",
                                        f"{r['percent_of_peak']:.0f}%", f"{r['compile_s']:.0f}"]
                                       for r in siren["rows"]])]
    if siren["ceilings"]:
        lines += ["", "Ceilings per fit-step (same FLOP count; a sine-only row's % is the rate the fit would reach "
                  "if the sines and cosines were all it did):", "",
                  *harness.markdown_table(["case", "ms / fit-step", "% of peak"],
                                          [[r["case"], f"{r['ms_per_fit_step']:.3f}", f"{r['percent_of_peak']:.0f}%"]
                                           for r in siren["ceilings"]])]
    if result.get("pytorch"):
        lines += _pytorch_markdown(result)
    return "\n".join(lines) + "\n"


@compilation_cache.disabled()  # first calls are measured: compiled afresh, never read from a cache
def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist", choices=("mnist", "fashion_mnist"))
    parser.add_argument("--batch-size", type=positive_int, default=recipes.CNN_BATCH_SIZE)
    parser.add_argument("--steps", type=positive_int, default=48,
                        help="steps per timed epoch (with 8-16 the step time drowned in the fixed cost's noise)")
    parser.add_argument("--activations", nargs="+", default=list(recipes.CNN_ACTIVATIONS))
    parser.add_argument("--populations", type=positive_int, nargs="+", default=[8, 32])
    parser.add_argument("--chunks", type=positive_int_or_all, nargs="+", default=[1, CPU_CHUNK],
                        help="models vmapped together per step ('all': the whole population)")
    parser.add_argument("--siren-images", type=positive_int, default=64)
    parser.add_argument("--siren-chunks", type=positive_int_or_all, nargs="+", default=[1, CPU_CHUNK, 16])
    parser.add_argument("--siren-steps", type=positive_int, default=200)
    parser.add_argument("--no-components", dest="components", action="store_false",
                        help="skip the component and ceiling rows")
    parser.add_argument("--workers", type=non_negative_int, default=2,
                        help="also measure the population cells in this many single-threaded processes at once, "
                             "one per CPU (0: skip)")
    parser.add_argument("--population-worker", type=non_negative_int, default=None, metavar="CPU",
                        help=argparse.SUPPRESS)  # a process of population_step_workers, pinned to this CPU
    parser.add_argument("--reference-python", default=None,
                        help="a Python with torch: adds the recipes in plain PyTorch, one model at a time")
    args = harness.parse_benchmark_args(parser, argv, QUICK)
    if args.population_worker is not None:  # one of population_step_workers' processes: rows on stdout, no files
        pin_process(args.population_worker)
        rows = population_step(args.dataset, args.activations, args.populations, args.chunks, args.steps,
                               args.batch_size, peak=1.0)
        print(WORKER_RESULT + json.dumps(rows), flush=True)
        return
    record = harness.start_run()
    peak = record.calibration["jax_gflops"]
    cnn = {"dataset": args.dataset, "batch_size": args.batch_size, "steps": args.steps,
           "flops_per_model_step": cnn_step_flops(28, 28, args.batch_size),
           "components": components(args.batch_size, peak) if args.components else [],
           "population": population_step(args.dataset, args.activations, args.populations, args.chunks, args.steps,
                                         args.batch_size, peak)}
    if args.workers:
        cnn["workers"] = population_step_workers(args, args.workers, cnn["flops_per_model_step"], peak)
    result = {"cnn": cnn, "siren": siren_benchmark(args.siren_images, args.siren_steps, args.siren_chunks, peak,
                                                             args.components)}
    if args.reference_python:
        flops = {"cnn": cnn["flops_per_model_step"], "siren": result["siren"]["flops_per_fit_step"]}
        result["pytorch"] = pytorch_reference(args.reference_python, min(args.steps, 20), min(args.siren_steps, 20),
                                              flops, peak)
    result["run"] = record.finish()
    markdown = _markdown(result)
    harness.write_results(args.out, "zoo_throughput", result, markdown)
    print(markdown)


if __name__ == "__main__":
    main()
