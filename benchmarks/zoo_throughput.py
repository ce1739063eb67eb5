"""Zoo generation throughput: a vmapped population against the same code training one model at a time.

    python -m benchmarks.zoo_throughput [--dataset digits] [--epochs 3] [--populations 64 256] [--single 8]
                                        [--siren-images 64] [--siren-steps 5000] [--out benchmarks/results]
                                        [--quick]

CNN: Small-CNN-Zoo networks (recipe hyperparameters, but relu and train fraction 1 for all) trained with
`common.population.train_population`; models per second = P / wall time for a population of P, and
K / wall time for K models trained one after another with P = 1 (the same function). Each timing follows a
warm-up call with the same shapes, so compilation is excluded. SIREN: the recipe's fits (5,000 Adam steps at
lr 5e-5) of the first MNIST test images, vmapped; PSNR distribution, and the same fits-per-second comparison
at a shorter run. Timing, CPU use, load and matmul calibration: `benchmarks.harness`. ``--quick`` is a smoke
run (populations of 2, one epoch, 2 SIREN fits of 2 steps); explicit size flags still override it.
Writes ``zoo_throughput.json`` and ``zoo_throughput.md``.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import asdict

import numpy as np

from benchmarks import harness
from common.distributed import make_mesh
from common.population import CPU_CHUNK, resolve_chunk_size, train_population
from magep import zoo_recipes as recipes


QUICK = dict(epochs=1, populations=[2], single=1, siren_images=2, siren_steps=2, siren_timing_steps=2)


def _timed(fn, warmup: bool) -> dict:
    """Wall-clock and process CPU seconds of one call of ``fn()`` (after a warm-up call when ``warmup``), and
    the CPU use of the machine meanwhile (``harness.CpuUse``)."""
    timing = harness.time_calls(fn, repeats=1, warmup=warmup)
    return {"wall_s": timing.median_s, "cpu_s": timing.cpu.process_cpu_s, "cpu": asdict(timing.cpu)}


def _rate(run, configs, population_sizes, single) -> dict:
    """Models per (wall / CPU) second for each population size (the engine's default chunking, and the largest
    also vmapped whole, ``chunk_size=None``) and for ``single`` models one at a time."""
    out = {}
    for p in population_sizes:  # each warm-up call compiles for its population size
        out[f"vmapped_P{p}"] = {"models": p, **_timed(lambda: run(configs[:p]), warmup=True)}
    if resolve_chunk_size("auto", make_mesh()) is not None:
        p = max(population_sizes)
        out[f"vmapped_P{p}_unchunked"] = {"models": p, **_timed(lambda: run(configs[:p], None), warmup=True)}
    run(configs[:1])  # warm-up of the one-at-a-time loop
    out["one_at_a_time"] = {"models": single, **_timed(lambda: [run([c]) for c in configs[:single]], warmup=False)}
    for r in out.values():
        r["per_wall_s"], r["per_cpu_s"] = r["models"] / r["wall_s"], r["models"] / r["cpu_s"]
    return out


def _speedup(rates: dict) -> dict:
    base = rates["one_at_a_time"]
    return {k: {"cpu": v["per_cpu_s"] / base["per_cpu_s"], "wall": v["per_wall_s"] / base["per_wall_s"]}
            for k, v in rates.items() if k != "one_at_a_time"}


def cnn_benchmark(dataset: str, epochs: int, population_sizes, single: int, batch_size: int) -> dict:
    """Models/s of Small-CNN-Zoo training, vmapped and one at a time."""
    train, test, _ = recipes.cnn_dataset(dataset)
    configs = recipes.sample_cnn_configs(max(population_sizes), seed=0, dataset=dataset, epochs=epochs)
    for c in configs:  # one activation and full training sets: every member does the same number of steps
        c["activation"], c["train_fraction"] = "relu", 1.0
    mesh = make_mesh()
    run = lambda cs, chunk="auto": train_population(recipes.cnn_task("relu"), recipes.cnn_hparams(cs), train, test,
                                                    epochs=epochs, batch_size=batch_size, mesh=mesh,
                                                    chunk_size=chunk, progress=False)
    rates = _rate(run, configs, population_sizes, single)
    return {"dataset": dataset, "epochs": epochs, "batch_size": batch_size, "models_per_second": rates,
            "speedup": _speedup(rates)}


def siren_benchmark(images: int, steps: int, timing_steps: int, single: int) -> dict:
    """PSNR of recipe SIREN fits of MNIST test images, and fits/s vmapped vs one at a time."""
    pixels, _ = recipes.siren_images("mnist", "test", images)
    h, w, c = pixels.shape[1:]
    grid = {"coords": recipes.siren_grid(h, w), "pixel": np.arange(h * w, dtype=np.int32)}
    task = recipes.siren_task(c)
    mesh = make_mesh()

    def run(idx, n_steps, chunk="auto"):
        hp = {"seed": np.asarray(idx, np.int32), "optimizer": np.zeros(len(idx), np.int32),
              "train_fraction": np.ones(len(idx), np.float32),
              "learning_rate": np.full(len(idx), recipes.SIREN_LEARNING_RATE, np.float32),
              "image": pixels[idx].reshape(len(idx), h * w, c)}
        return train_population(task, hp, grid, grid, epochs=n_steps, batch_size=h * w, mesh=mesh,
                                chunk_size=chunk, progress=False)[-1]

    every = list(range(images))
    final, full_run = harness.measure_cpu(lambda: run(every, steps))
    psnr = recipes.psnr(final.metrics["test_mse"])
    rates = _rate(lambda idx, chunk="auto": run(idx, timing_steps, chunk), every, [images], single)
    return {"images": images, "steps": steps, "learning_rate": recipes.SIREN_LEARNING_RATE,
            "psnr_db": {"median": float(np.median(psnr)), "min": float(psnr.min()),
                        "q25": float(np.quantile(psnr, 0.25)), "q75": float(np.quantile(psnr, 0.75)),
                        "max": float(psnr.max())},
            "full_run_seconds_incl_compile": full_run.wall_s, "full_run_cpu": asdict(full_run), "timing_steps": timing_steps, "fits_per_second": rates,
            "speedup": _speedup(rates)}


def _markdown(result: dict) -> str:
    cnn, siren = result["cnn"], result["siren"]
    cpus = [r.get("cpu") for part in (cnn["models_per_second"], siren["fits_per_second"]) for r in part.values()]
    lines = ["# Zoo generation throughput", "",
             f"Device: {result['device']} x{result['device_count']} ({result['machine']}). Timed after a warm-up "
             "call (compilation excluded); one-at-a-time = the same `train_population` with P = 1. Rates per "
             "process CPU second (robust on a shared machine) and per wall-clock second.", "",
             *harness.run_markdown(result["run"]),
             f"Contention: {harness.contention_line(cpus)}", "",
             f"## Small CNN Zoo ({cnn['dataset']}, {cnn['epochs']} epochs, batch {cnn['batch_size']}, relu)", "",
             *_table(cnn["models_per_second"], cnn["speedup"], "models"), "",
             "Target: vmapped >= 10x one at a time. vmap pays off where one small model leaves the device idle "
             "(accelerators). On a CPU a single model's step is already compute-bound and a population does the "
             "same arithmetic per model, so the most it can reach is parity; vmapping a whole large population "
             "at once is slower still (per-network activations no longer fit in cache: the `_unchunked` row), "
             "which is why the engine steps a single CPU device's population in vmapped chunks of "
             f"{CPU_CHUNK} models (`chunk_size=\"auto\"`)."]
    p = siren["psnr_db"]
    lines += ["", f"## SIREN fits of MNIST test images ({siren['images']} images, {siren['steps']} Adam steps, "
              f"lr {siren['learning_rate']})", "",
              f"PSNR (dB): median {p['median']:.2f}, min {p['min']:.2f}, q25 {p['q25']:.2f}, q75 {p['q75']:.2f}, "
              f"max {p['max']:.2f} (target: median >= 25 dB).", "",
              f"Throughput at {siren['timing_steps']} steps:", "",
              *_table(siren["fits_per_second"], siren["speedup"], "fits")]
    return "\n".join(lines) + "\n"


def _table(rates: dict, speedup: dict, unit: str) -> list[str]:
    lines = [f"| run | {unit} / CPU s | {unit} / wall s | speed-up (CPU) | speed-up (wall) |", "|---|---|---|---|---|"]
    for k, v in rates.items():
        s = speedup.get(k, {"cpu": 1.0, "wall": 1.0})
        lines.append(f"| {k} | {v['per_cpu_s']:.3g} | {v['per_wall_s']:.3g} | {s['cpu']:.2f}x | {s['wall']:.2f}x |")
    return lines


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits", choices=recipes.CNN_DATASETS)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--populations", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--single", type=int, default=8, help="models timed one at a time")
    parser.add_argument("--siren-images", type=int, default=64)
    parser.add_argument("--siren-steps", type=int, default=recipes.SIREN_STEPS)
    parser.add_argument("--siren-timing-steps", type=int, default=500)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    parser.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK}")
    args = parser.parse_args(argv)
    if args.quick:
        parser.set_defaults(**QUICK)
        args = parser.parse_args(argv)
    record = harness.start_run()
    env = record.environment
    result = {"device": env["device_kind"], "device_count": env["device_count"],
              "machine": f"{env['machine']}, {env['cpu_count']} CPUs",
              "cnn": cnn_benchmark(args.dataset, args.epochs, args.populations, args.single, args.batch_size),
              "siren": siren_benchmark(args.siren_images, args.siren_steps, args.siren_timing_steps,
                                       min(args.single, args.siren_images))}
    result["run"] = record.finish()
    markdown = _markdown(result)
    harness.write_results(args.out, "zoo_throughput", result, markdown)
    print(markdown)


if __name__ == "__main__":
    main()
