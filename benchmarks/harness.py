"""One harness for every benchmark: timing, memory, machine load, matmul calibration, result files, figures.

Timing. ``measure_jitted(fn, *args, repeats=)`` lowers and compiles ``jax.jit(fn)`` (``compile_s``, reported
apart), makes one warm-up call (``first_s``), then times ``repeats`` calls, each ended by
``jax.block_until_ready``; the figures are the median and the min of the timed calls. ``time_calls`` does the
same for any callable (its first call then includes any compilation); ``measure_call`` adds memory for a
callable that is not a JAX executable (a numpy baseline).

Memory: the one definition every table reports, ``MEMORY_DEFINITION``: XLA's static buffer assignment of the
compiled executable plus the host allocations tracemalloc sees during one call. Static, so other processes do
not move it and it means the same on CPU and GPU (the CPU runtime has no peak-memory counter; a process RSS
delta, even in a fresh subprocess, counts the runtime, the compiler and their caches, and is noisy on a shared
machine).

Load. ``start_run()`` records the environment, the 1/5/15-minute load averages and a matmul calibration
(``matmul_calibration``: GFLOP/s of a jitted float32 matmul, the rate beside which tables put the FLOP rates
they achieve); ``Run.finish()`` adds the load at the end and the wall time. Every timing carries a ``CpuUse``
of its calls: the cores this process kept busy, the cores other processes kept busy (``/proc/stat``; inside a
container it counts the host's CPUs) and the load average before and after, so a table can say how contended
each cell was.

Files. ``write_results(out_dir, name, result, markdown)`` writes ``name.json`` and ``name.md``, each
atomically (``common.zoo_store.atomic_write``); ``save_figure`` writes a PNG the same way. matplotlib is
imported only inside the plotting helpers.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.vs_reference_protocol import COPY_BYTES, copy_bandwidth, system_busy_s
from common import llvm_options
from common.host_memory import keep_freed_memory
from common.zoo_store import atomic_write

keep_freed_memory()  # before the first computation, as a training script starts (docs/common.md §10)
llvm_options.set_options()  # as the command lines compile (docs/common.md §11)

MEMORY_DEFINITION = (
    "peak bytes of one call = arguments + outputs + temporaries of the compiled XLA executable "
    "(`compiled.memory_analysis()`, the static buffer assignment: what one call needs resident on the device) "
    "+ the peak of host allocations traced by tracemalloc during one call (numpy work in callbacks); for a "
    "callable that is not a JAX executable, the bytes of its array arguments + that host peak")
TIMING_DEFINITION = ("compile time apart; one warm-up call, then the median (and min) wall time of the timed "
                     "calls, each ended by `jax.block_until_ready`")
MATMUL_SIZE = 2048
MIN_CPU_WINDOW_S = 0.2


# ------------------------------------------------------------------------------------------ machine load


def load_average() -> tuple[float, float, float]:
    """The 1-, 5- and 15-minute load averages of the machine."""
    return tuple(round(x, 2) for x in os.getloadavg())


@dataclass(frozen=True)
class CpuUse:
    """CPU use over a block of code: how contended the machine was while it ran.

    Attributes:
      wall_s: wall seconds of the block.
      process_cpu_s: CPU seconds of this process over the block (all its threads).
      process_cores: process_cpu_s / wall_s.
      other_cores: (CPU seconds the whole machine spent busy - this process's) / wall seconds: the mean number
        of cores other processes took, from ``/proc/stat`` (10 ms ticks); None where there is no ``/proc/stat``
        or the block ran under ``MIN_CPU_WINDOW_S`` (too short for the ticks to resolve).
      load_start, load_end: the 1-minute load average before and after.
    """

    wall_s: float
    process_cpu_s: float
    process_cores: float
    other_cores: float | None
    load_start: float
    load_end: float


def measure_cpu(block: Callable[[], Any]) -> tuple[Any, CpuUse]:
    """Runs ``block()``; returns its result and the ``CpuUse`` of the run."""
    load_start, busy_start = os.getloadavg()[0], system_busy_s()
    cpu_start, wall_start = time.process_time(), time.perf_counter()
    result = block()
    wall, cpu = time.perf_counter() - wall_start, time.process_time() - cpu_start
    busy_end = system_busy_s()
    wall_div = max(wall, 1e-9)
    resolved = busy_start is not None and busy_end is not None and wall >= MIN_CPU_WINDOW_S
    others = max(busy_end - busy_start - cpu, 0.0) / wall_div if resolved else None
    return result, CpuUse(wall_s=wall, process_cpu_s=cpu, process_cores=cpu / wall_div, other_cores=others,
                          load_start=round(load_start, 2), load_end=round(os.getloadavg()[0], 2))


# ------------------------------------------------------------------------------------------------ timing


@dataclass(frozen=True)
class Timing:
    """Wall times of a callable.

    Attributes:
      first_s: the warm-up call (it includes compilation when the callable was not compiled yet); None when
        there was none.
      samples_s: the timed calls, one entry per repeat.
      cpu: ``CpuUse`` of the timed calls together.
    """

    first_s: float | None
    samples_s: tuple[float, ...]
    cpu: CpuUse

    @property
    def median_s(self) -> float:
        return statistics.median(self.samples_s)

    @property
    def min_s(self) -> float:
        return min(self.samples_s)

    def as_dict(self) -> dict:
        """``first_s``, ``median_s``, ``min_s``, ``samples_s`` and ``cpu`` as JSON-ready values."""
        return dict(first_s=self.first_s, median_s=self.median_s, min_s=self.min_s, samples_s=list(self.samples_s),
                    cpu=asdict(self.cpu))


def _check_repeats(repeats: int) -> None:
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")


def _timed_call(call: Callable[[], Any]) -> float:
    start = time.perf_counter()
    jax.block_until_ready(call())
    return time.perf_counter() - start


def time_calls(call: Callable[[], Any], repeats: int, warmup: bool = True) -> Timing:
    """Times ``repeats`` calls of ``call()`` (each ended by ``jax.block_until_ready``), after one warm-up call
    when ``warmup``; a caller that warms up with a different call passes ``warmup=False``."""
    _check_repeats(repeats)
    first = _timed_call(call) if warmup else None
    samples, cpu = measure_cpu(lambda: tuple(_timed_call(call) for _ in range(repeats)))
    return Timing(first_s=first, samples_s=samples, cpu=cpu)


def compile_jitted(fn: Callable, *args) -> tuple[Any, float]:
    """``jax.jit(fn)`` lowered and compiled for ``args`` (any pytrees): (compiled executable, compile seconds)."""
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    return compiled, time.perf_counter() - start


# ------------------------------------------------------------------------------------------------ memory


def traced_call(call: Callable[[], Any]) -> tuple[Any, float, int]:
    """Runs ``call()`` under tracemalloc: (result, wall seconds, peak bytes of host allocations)."""
    tracing = tracemalloc.is_tracing()
    if not tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    start = time.perf_counter()
    result = jax.block_until_ready(call())
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1] - base
    if not tracing:
        tracemalloc.stop()
    return result, seconds, max(peak, 0)


def xla_memory(compiled) -> dict:
    """Argument, output and temporary bytes of a compiled executable (``compiled.memory_analysis()``)."""
    mem = compiled.memory_analysis()
    return dict(argument_bytes=int(mem.argument_size_in_bytes), output_bytes=int(mem.output_size_in_bytes),
                temp_bytes=int(mem.temp_size_in_bytes))


def array_bytes(*args) -> int:
    """Bytes of the array leaves of ``args`` (any pytrees)."""
    return int(sum(np.asarray(x).nbytes for x in jax.tree.leaves(args)))


def peak_memory(argument_bytes: int, output_bytes: int, temp_bytes: int, host_peak_bytes: int) -> dict:
    """The memory record of one call (``MEMORY_DEFINITION``): the four parts and their sum ``peak_bytes``."""
    parts = dict(argument_bytes=argument_bytes, output_bytes=output_bytes, temp_bytes=temp_bytes,
                 host_peak_bytes=host_peak_bytes)
    return dict(parts, peak_bytes=int(sum(parts.values())))


def xla_cost(compiled) -> dict:
    """XLA's cost analysis of one call of a compiled executable: ``flops`` and ``bytes_accessed`` (each None
    when the backend gives none)."""
    cost = compiled.cost_analysis()
    cost = (cost[0] if isinstance(cost, (list, tuple)) and cost else cost) or {}
    pick = lambda name: float(cost[name]) if cost.get(name) is not None and cost[name] >= 0 else None
    return {"flops": pick("flops"), "bytes_accessed": pick("bytes accessed")}


def measure_jitted(fn: Callable, *args, repeats: int) -> dict:
    """Compile time, timing, memory and FLOP rate of ``jax.jit(fn)(*args)``.

    Args:
      fn: a function of pytrees of arrays, traceable by ``jax.jit``.
      *args: its arguments (pytrees; registered pytree classes such as ``WeightSpace`` lower as they are).
      repeats: number of timed calls (>= 1).

    Returns:
      ``{"compile_s", "first_s", "median_s", "min_s", "samples_s", "cpu", "memory", "flops", "gflops",
      "bytes_accessed", "gbytes_per_s"}``: seconds as in ``TIMING_DEFINITION`` (``first_s`` is the warm-up call,
      which also gives the host peak), ``cpu`` the ``CpuUse`` of the whole cell (compile, warm-up and timed
      calls: long enough to resolve the other processes' share), ``memory`` as in ``peak_memory``, ``flops``
      and ``bytes_accessed`` XLA's counts per call (operands and results of every op after fusion), ``gflops``
      = flops / median_s / 1e9 and ``gbytes_per_s`` = bytes_accessed / median_s / 1e9 (None without a count).
    """
    _check_repeats(repeats)

    def cell():
        compiled, compile_s = compile_jitted(fn, *args)
        _, first_s, host_peak = traced_call(lambda: compiled(*args))
        timing = time_calls(lambda: compiled(*args), repeats, warmup=False)
        return compiled, compile_s, first_s, host_peak, timing

    (compiled, compile_s, first_s, host_peak, timing), cpu = measure_cpu(cell)
    cost = xla_cost(compiled)
    rate = lambda count: count / timing.median_s / 1e9 if count is not None else None
    return dict(timing.as_dict(), compile_s=compile_s, first_s=first_s, cpu=asdict(cpu),
                memory=peak_memory(host_peak_bytes=host_peak, **xla_memory(compiled)), **cost,
                gflops=rate(cost["flops"]), gbytes_per_s=rate(cost["bytes_accessed"]))


def measure_call(call: Callable, *args, repeats: int) -> dict:
    """Timing and memory of ``call(*args)`` for a callable that is not a JAX executable (a numpy baseline).

    Returns:
      ``{"compile_s": None, "first_s", "median_s", "min_s", "samples_s", "cpu", "memory"}``: ``cpu`` over the
      warm-up and timed calls, memory with the array bytes of ``args`` as arguments and the host peak of the
      warm-up call.
    """
    _check_repeats(repeats)

    def cell():
        _, first_s, host_peak = traced_call(lambda: call(*args))
        return first_s, host_peak, time_calls(lambda: call(*args), repeats, warmup=False)

    (first_s, host_peak, timing), cpu = measure_cpu(cell)
    return dict(timing.as_dict(), compile_s=None, first_s=first_s, cpu=asdict(cpu),
                memory=peak_memory(array_bytes(*args), 0, 0, host_peak))


# ----------------------------------------------------------------------------------- calibration and runs


def matmul_calibration(size: int | None = None, repeats: int = 5) -> dict:
    """The machine's matmul rate and memory bandwidth now: GFLOP/s of ``[size, size] @ [size, size]`` in
    float32, jitted JAX (default precision, the device of ``jax.devices()[0]``) and numpy (host BLAS), and GB/s
    of a numpy copy of ``COPY_BYTES`` (bytes read + bytes written: the roofline for memory-bound work), median
    and best of ``repeats`` timed calls after a warm-up (``size`` defaults to ``MATMUL_SIZE``). Tables report
    their achieved FLOP rates against ``jax_gflops``.
    """
    size = MATMUL_SIZE if size is None else size
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    flop = 2.0 * size**3
    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    matmul = jax.jit(jnp.matmul)
    jax_timing = time_calls(lambda: matmul(a, a), repeats)
    host = np.asarray(a)
    np_timing = time_calls(lambda: host @ host, repeats)
    copy_gbps, copy_gbps_best = copy_bandwidth(repeats)
    return dict(copy_bytes=COPY_BYTES, copy_gbps=copy_gbps, copy_gbps_best=copy_gbps_best, size=size,
                dtype="float32", repeats=repeats, device=str(jax.devices()[0]),
                jax_gflops=flop / jax_timing.median_s / 1e9, jax_gflops_best=flop / jax_timing.min_s / 1e9,
                numpy_gflops=flop / np_timing.median_s / 1e9, numpy_gflops_best=flop / np_timing.min_s / 1e9,
                other_cores=jax_timing.cpu.other_cores)


def cpu_model() -> str:
    """The host CPU as /proc/cpuinfo names it, with its family and model numbers (a virtual machine may give only
    the vendor's name: "AMD EPYC (cpu family 25, model 17)"); ``platform.processor()`` where there is no /proc/cpuinfo.
    Hosts behind the same core count differ (their XLA CPU libraries rank differently), so every run records it."""
    try:
        with open("/proc/cpuinfo") as f:
            fields = dict(line.split(":", 1) for line in f.read().split("\n\n")[0].splitlines() if ":" in line)
    except OSError:
        return platform.processor() or "unknown"
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    numbers = [f"{k} {fields[k]}" for k in ("cpu family", "model") if k in fields]
    return fields.get("model name", platform.processor() or "unknown") + (f" ({', '.join(numbers)})" if numbers else "")


def numpy_simd() -> list[str] | None:
    """The SIMD targets numpy dispatches its kernels to in this process (its sorts among them): those of its build
    that this CPU has and ``NPY_DISABLE_CPU_FEATURES`` leaves on, as ``numpy.show_runtime()`` lists them as
    "found" (None where numpy does not say). On an AMD Zen 4 host numpy's AVX-512 sort of rows longer than 256
    keys ran 2.4-3.2x slower than its AVX2 one (docs/tsw_sl.md §16.3), so every run records which ran."""
    try:
        from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__
    except ImportError:
        return None
    return [target for target in __cpu_dispatch__ if __cpu_features__.get(target)]


def environment() -> dict:
    """Versions and hardware: jax and numpy versions, numpy's SIMD targets (`numpy_simd`), backend, device kind and
    count, CPU count and model, machine, platform."""
    return dict(jax=jax.__version__, numpy=np.__version__, numpy_simd=numpy_simd(), backend=jax.default_backend(),
                device=str(jax.devices()[0]), device_kind=jax.devices()[0].device_kind,
                device_count=jax.device_count(), cpu_count=os.cpu_count(), cpu_model=cpu_model(),
                machine=platform.machine(), platform=platform.platform())


@dataclass
class Run:
    """A benchmark run in progress: made by ``start_run``, closed by ``finish``."""

    environment: dict
    started_utc: str
    load_start: tuple[float, float, float]
    calibration: dict | None
    started: float

    def finish(self) -> dict:
        """The run record: environment, start time, wall seconds, load averages at start and end (1, 5, 15
        min), the matmul calibration, and the timing and memory definitions the tables use."""
        return dict(environment=self.environment, started_utc=self.started_utc,
                    wall_s=time.perf_counter() - self.started, load_average_start=list(self.load_start),
                    load_average_end=list(load_average()), calibration=self.calibration,
                    timing_definition=TIMING_DEFINITION, memory_definition=MEMORY_DEFINITION)


def fill_defaults(args, defaults: dict, skip: tuple = ()) -> None:
    """Set every option of ``args`` (an argparse Namespace) that is still None to its value in ``defaults`` (the
    drivers' full or --quick settings; explicit options win), except the names in ``skip``."""
    for name, value in defaults.items():
        if getattr(args, name) is None and name not in skip:
            setattr(args, name, value)


def parse_benchmark_args(parser, argv, quick: dict):
    """``parser.parse_args(argv)`` after adding ``--out`` (default ``benchmarks/results``) and ``--quick`` (a smoke
    run: the ``quick`` settings become the defaults; explicit options still win)."""
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    parser.add_argument("--quick", action="store_true", help=f"smoke run: {quick}")
    args = parser.parse_args(argv)
    if args.quick:
        parser.set_defaults(**quick)
        args = parser.parse_args(argv)
    return args


def start_run(calibrate: bool = True, matmul_size: int | None = None) -> Run:
    """Records the environment and the load, then (when ``calibrate``) measures ``matmul_calibration`` at
    ``matmul_size`` (default ``MATMUL_SIZE``)."""
    load = load_average()
    return Run(environment=environment(), started_utc=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
               load_start=load, calibration=matmul_calibration(matmul_size) if calibrate else None,
               started=time.perf_counter())


# ------------------------------------------------------------------------------------------------ reports


def mib(n_bytes: float | None) -> str:
    """Bytes as MiB with one decimal ('-' for None)."""
    return "-" if n_bytes is None else f"{n_bytes / 2**20:.1f}"


def roofline_bound_s(flops: float | None, bytes_accessed: float | None, calibration: dict) -> float:
    """Seconds a call cannot beat as compiled: max(FLOPs / the run's jitted matmul rate, bytes / its copy
    bandwidth), from XLA's counts of one call (`xla_cost`) and the run's ``calibration`` (`matmul_calibration`:
    ``jax_gflops``, ``copy_gbps``). The byte count is every kernel's operands and results, so a step whose kernels
    hit the cache can run below it."""
    return max((flops or 0.0) / (calibration["jax_gflops"] * 1e9),
               (bytes_accessed or 0.0) / (calibration["copy_gbps"] * 1e9))


def percent_of_matmul(gflops: float | None, run: dict) -> str:
    """An achieved GFLOP/s as a percentage of the run's jitted matmul rate ('-' when either is missing)."""
    cal = run.get("calibration")
    return "-" if gflops is None or not cal else f"{100 * gflops / cal['jax_gflops']:.0f}%"


def run_markdown(run: dict) -> list[str]:
    """Markdown lines describing a run record (``Run.finish``): machine, load at start and end, matmul
    calibration, timing and memory definitions."""
    env, cal = run["environment"], run["calibration"]
    fmt = lambda load: " / ".join(f"{x:.1f}" for x in load)
    lines = [f"Machine: {env['device']} ({env['device_kind']}, {env['device_count']} device(s)), "
             f"{env['cpu_count']} CPUs{' (' + env['cpu_model'] + ')' if env.get('cpu_model') else ''}, "
             f"{env['machine']}; jax {env['jax']}, backend {env['backend']}"
             + (f"; numpy {env['numpy']}, its SIMD targets {', '.join(env['numpy_simd'])}" if env.get("numpy_simd")
                else "") + ". "
             f"Run started {run['started_utc']}, {run['wall_s']:.0f} s wall.",
             f"Load average (1 / 5 / 15 min): {fmt(run['load_average_start'])} at start, "
             f"{fmt(run['load_average_end'])} at the end (a load above the CPU count means shared cores and "
             "noisy times; per-cell CPU use is in the JSON, `cpu`)."]
    if cal:
        lines.append(f"Matmul calibration ({cal['size']}x{cal['size']} float32): jitted JAX "
                     f"{cal['jax_gflops']:.1f} GFLOP/s (best {cal['jax_gflops_best']:.1f}), numpy "
                     f"{cal['numpy_gflops']:.1f} GFLOP/s (best {cal['numpy_gflops_best']:.1f}); memory bandwidth "
                     f"(numpy copy of {cal['copy_bytes'] / 2**20:.0f} MiB, read + write) {cal['copy_gbps']:.1f} GB/s "
                     f"(best {cal['copy_gbps_best']:.1f}).")
    lines += [f"Times: {run['timing_definition']}. Memory: {run['memory_definition']}.", ""]
    return lines


def contention_line(cpus) -> str:
    """One sentence on the contention of a run's cells, from their ``cpu`` records (``CpuUse`` as dicts;
    None entries, cells without a record, are skipped)."""
    others = [c["other_cores"] for c in cpus if c and c.get("other_cores") is not None]
    if not others:
        return "other processes' CPU use per cell not recorded."
    return (f"other processes kept a median {statistics.median(others):.1f} cores busy during a cell (max "
            f"{max(others):.1f}, over {len(others)} cells).")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """A Markdown table: the header row, the separator and one line per row (cells formatted with str)."""
    return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Writes ``obj`` as indented JSON to ``path`` atomically (the text is built first, so an object that does
    not serialise leaves the file as it was), creating the folder."""
    write_text(path, json.dumps(obj, indent=1))


def write_text(path: str | os.PathLike, text: str) -> None:
    """Writes ``text`` to ``path`` atomically, creating the folder."""
    if not isinstance(text, str):
        raise ValueError(f"write_text: text must be a str, got {type(text).__name__}")
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    atomic_write(os.fspath(path), lambda f: f.write(text), mode="w")


def read_json(path: str | os.PathLike, default: Any = None) -> Any:
    """The JSON value in ``path``, or ``default`` when the file does not exist."""
    if not os.path.exists(path):
        return default
    with open(path) as f:
        return json.load(f)


def write_results(out_dir: str | os.PathLike, name: str, result: dict, markdown: str) -> tuple[str, str]:
    """Writes ``out_dir/name.json`` (``result``) and ``out_dir/name.md`` (``markdown``), each atomically: the
    JSON text is built first, so a result that does not serialise leaves both files as they were.

    Returns: the paths of the JSON and Markdown files.
    """
    if not isinstance(markdown, str):
        raise ValueError(f"write_results: markdown must be a str, got {type(markdown).__name__}")
    text = json.dumps(result, indent=1)
    paths = (os.path.join(out_dir, f"{name}.json"), os.path.join(out_dir, f"{name}.md"))
    for path, body in zip(paths, (text, markdown)):
        write_text(path, body)
    return paths


def read_results(out_dir: str | os.PathLike, name: str) -> dict:
    """The result ``write_results`` wrote as ``out_dir/name.json``."""
    with open(os.path.join(out_dir, f"{name}.json")) as f:
        return json.load(f)


# ------------------------------------------------------------------------------------------------ figures


def subplots(*args, **kwargs):
    """``matplotlib.pyplot.subplots`` on the non-interactive Agg backend (matplotlib is imported here, so a
    benchmark that draws nothing never imports it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def save_figure(fig, path: str | os.PathLike, dpi: int = 80) -> None:
    """Saves a matplotlib figure as PNG (atomically, creating the folder) and closes it."""
    import matplotlib.pyplot as plt

    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    fig.tight_layout()
    atomic_write(os.fspath(path), lambda f: fig.savefig(f, format="png", dpi=dpi, bbox_inches="tight"))
    plt.close(fig)


def prediction_scatter(records: Sequence[dict], row_names: Sequence[str], methods: Sequence[str], labels: dict,
                       path: str | os.PathLike, row_label: Callable[[str], str]) -> None:
    """Predicted against true accuracy, a panel per record at (``row_names.index(r["dataset"])``,
    ``methods.index(r["method"])``), titled with the method's label and the record's test tau; the rows' y labels
    are ``row_label(name)``. Records hold ``dataset``, ``method``, ``true``, ``predicted`` and ``test_tau``."""
    fig, axes = subplots(len(row_names), len(methods), figsize=(2.5 * len(methods), 2.7 * len(row_names)),
                         squeeze=False)
    for r in records:
        ax = axes[row_names.index(r["dataset"])][methods.index(r["method"])]
        ax.scatter(r["true"], r["predicted"], s=5)
        ax.plot([0, 1], [0, 1], lw=0.5, color="grey")
        ax.set_title(f"{labels[r['method']]}: tau {r['test_tau']:.2f}", fontsize=7)
        ax.set_xlabel("true accuracy", fontsize=7)
    for row, name in zip(axes, row_names):
        row[0].set_ylabel(row_label(name), fontsize=7)
    save_figure(fig, path)
