"""Matrix products on YNNPACK (XLA's default) against XLA's own dot runtime, per NFN predictor cell.

    python -m benchmarks.dot_runtime [--jobs ours_monomial ...] [--batches 8 64] [--modes fwdbwd fwd] [--rounds 12]
    python -m benchmarks.dot_runtime --quick      # one small cell, a smoke run

Each cell (predictor, batch, mode) is built as `benchmarks.vs_reference` times it (`benchmarks.vs_reference_ours`)
and runs in two fresh processes, one per compile order: its step is lowered once and compiled with
`common.training.STEP_COMPILER_OPTIONS` (YNNPACK takes the row-major products) and with
`common.training.STEP_COMPILER_OPTIONS_XLA_DOTS` (every product on XLA's own dot runtime, Eigen; YNNPACK keeps the
reductions), each executable's first run is timed, then bursts of ``--calls`` calls of the two alternate for
``--rounds`` rounds and the ratio of the two bursts' medians is taken per round. Two programs compiled one after the
other in one process can run 10-15% apart (docs/magep.md §9.4), hence the two orders; the host's drift between
processes (10-40% on some hosts) cancels within a round. Which of the two is faster depends on the host (its CPU
model is recorded) and on the model (docs/common.md §11). Results: ``dot_runtime.{json,md}`` in ``--out``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

from benchmarks import harness
from benchmarks.step_profile import JOBS, NAMES, add_cell_arguments, cells, run_cell
from benchmarks.vs_reference_protocol import Contention
from common import compilation_cache
from common.cli import positive_int

VARIANTS = ("ynnpack", "xla_dots")  # STEP_COMPILER_OPTIONS, STEP_COMPILER_OPTIONS_XLA_DOTS


def compare_cell(job: str, batch: int, mode: str, xla_dots_first: bool, rounds: int, calls: int) -> dict:
    """One cell and compile order, in this process: per variant its YNNPACK fusions (kernels XLA gives YNNPACK), its
    first run (s) and the median of each round's burst (s), and the per-round ratios xla_dots / ynnpack."""
    import jax

    from benchmarks import vs_reference_ours as ours
    from common.training import STEP_COMPILER_OPTIONS, STEP_COMPILER_OPTIONS_XLA_DOTS

    jitted, args = ours.build_nfn(job, batch, mode)[0].staged()
    lowered = jitted.lower(*args)
    options = dict(zip(VARIANTS, (STEP_COMPILER_OPTIONS, STEP_COMPILER_OPTIONS_XLA_DOTS)))
    order = VARIANTS[::-1] if xla_dots_first else VARIANTS
    compiled, first_run, ynn_fusions = {}, {}, {}
    for variant in order:
        compiled[variant] = lowered.compile(compiler_options=dict(options[variant]))
        ynn_fusions[variant] = compiled[variant].as_text().count('"kind":"__ynn_fusion"')
        start = time.perf_counter()
        jax.block_until_ready(compiled[variant](*args))
        first_run[variant] = time.perf_counter() - start
    bursts = {variant: [] for variant in VARIANTS}
    with Contention() as contention:
        for r in range(rounds):
            for variant in order if r % 2 == 0 else order[::-1]:
                times = []
                for _ in range(calls):
                    start = time.perf_counter()
                    jax.block_until_ready(compiled[variant](*args))
                    times.append(time.perf_counter() - start)
                bursts[variant].append(statistics.median(times))
    ratios = [x / y for x, y in zip(bursts["xla_dots"], bursts["ynnpack"])]
    return dict(job=job, batch=batch, mode=mode, xla_dots_first=xla_dots_first, ynn_fusions=ynn_fusions,
                first_run_s=first_run, burst_median_s=bursts, ratios=ratios, other_cpu_frac=contention.other_cpu_frac)


def _cell_in_process(job: str, batch: int, mode: str, xla_dots_first: bool, rounds: int, calls: int) -> dict:
    """`compare_cell` in a fresh Python process (its record, or one with ``error``)."""
    cell_args = [job, str(batch), mode, "xla_dots" if xla_dots_first else "ynnpack", "--rounds", str(rounds),
                 "--calls", str(calls)]
    return run_cell("benchmarks.dot_runtime", cell_args,
                    dict(job=job, batch=batch, mode=mode, xla_dots_first=xla_dots_first))[0]


def markdown(result: dict) -> str:
    """The report: the run (host, load, calibration), then one row per cell and compile order."""
    header = ["model", "batch", "mode", "compiled first", "YNNPACK ms", "XLA's dots ms", "ratio (median; range)",
              "first run ms YNNPACK / XLA's dots", "YNNPACK fusions", "other CPU"]
    rows = []
    for cell in result["cells"]:
        first = "XLA's dots" if cell["xla_dots_first"] else "YNNPACK"
        if "error" in cell:
            rows.append([NAMES[cell["job"]], cell["batch"], cell["mode"], first, "-", "-", cell["error"]]
                        + ["-"] * 3)
            continue
        bursts, ratios = cell["burst_median_s"], cell["ratios"]
        share = cell["other_cpu_frac"]
        rows.append([NAMES[cell["job"]], cell["batch"], cell["mode"], first,
                     f"{1e3 * statistics.median(bursts['ynnpack']):.3g}",
                     f"{1e3 * statistics.median(bursts['xla_dots']):.3g}",
                     f"{statistics.median(ratios):.3f}; {min(ratios):.2f}-{max(ratios):.2f}",
                     " / ".join(f"{1e3 * cell['first_run_s'][v]:.0f}" for v in VARIANTS),
                     " / ".join(str(cell["ynn_fusions"][v]) for v in VARIANTS),
                     "-" if share is None else f"{share:.2f}"])
    lines = ["# Matrix products: YNNPACK (XLA's default) against XLA's own dot runtime (CPU)", "",
             f"Scale: {result['rounds']} rounds of {result['calls']} calls per variant, cell and compile order; "
             "each cell as `benchmarks.vs_reference` times it (the authors' configurations, random inputs).", ""]
    lines += harness.run_markdown(result["run"]) + [""]
    lines += ["ratio = XLA's dots / YNNPACK, the medians of one round's two bursts, median and range over the rounds "
              "(below 1: XLA's own dot runtime is faster); ms = median over the rounds; first run = each "
              "executable's first call after its compile; YNNPACK fusions = kernels XLA gives YNNPACK in each "
              "(products and reductions, then reductions only); other CPU = share of all CPUs other processes used "
              "during the rounds. Options: `common.training.STEP_COMPILER_OPTIONS` and "
              "`STEP_COMPILER_OPTIONS_XLA_DOTS` (docs/common.md §11).", ""]
    return "\n".join(lines + harness.markdown_table(header, rows)) + "\n"


@compilation_cache.disabled()  # both variants compiled afresh
def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_cell_arguments(parser)
    parser.add_argument("--rounds", type=positive_int, default=None, help="alternations per cell and order")
    parser.add_argument("--calls", type=positive_int, default=None, help="calls per burst")
    parser.add_argument("--cell", nargs=4, metavar=("JOB", "BATCH", "MODE", "FIRST"), help=argparse.SUPPRESS)
    quick = dict(jobs=["ours_monomial"], batches=[8], modes=["fwd"], rounds=2, calls=3)
    args = harness.parse_benchmark_args(parser, argv, quick)
    harness.fill_defaults(args, dict(jobs=list(JOBS), batches=[8, 64], modes=["fwdbwd", "fwd"], rounds=12,
                                     calls=10))
    if args.cell:
        job, batch, mode, first = args.cell
        print(json.dumps(compare_cell(job, int(batch), mode, first == "xla_dots", args.rounds, args.calls)),
              flush=True)
        return
    run = harness.start_run()
    records = []
    for job, batch, mode in cells(args.jobs, args.batches, args.modes):
        for xla_dots_first in (False, True):
            records.append(_cell_in_process(job, batch, mode, xla_dots_first, args.rounds, args.calls))
            print(json.dumps({k: records[-1].get(k) for k in ("job", "batch", "mode", "xla_dots_first", "error")}),
                  flush=True)
    result = dict(run=run.finish(), rounds=args.rounds, calls=args.calls, cells=records)
    harness.write_results(args.out, "dot_runtime", result, markdown(result))


if __name__ == "__main__":
    main()
