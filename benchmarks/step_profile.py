"""Where the NFN predictors' steps spend their time, kernel by kind, beside this machine's limits.

    python -m benchmarks.step_profile [--jobs ours_magep ...] [--batches 8 64 256] [--modes fwdbwd fwd]
    python -m benchmarks.step_profile --quick      # one small cell, a smoke run
    python -m benchmarks.step_profile --count-bytes --out DIR   # add kernel bytes to an earlier run's cells

Each cell (predictor, batch, mode) runs in its own process and builds the step exactly as
`benchmarks.vs_reference` times it (`benchmarks.vs_reference_ours`: the authors' configurations, random inputs,
forward or forward + BCE + gradient, ``"auto"`` micro-batches). Per cell: the first call stage by stage (trace,
lowering, XLA's compile, the executable's first run, and the garbage collector's pauses within them:
`first_call_stages`; the persistent compilation cache off), the median of the timed calls, then ``--calls`` calls under
``jax.profiler``: every kernel's time (summed over the threads that ran it) is put in one of the kinds of
`KINDS` by its instruction in the compiled HLO (`kernel_kinds`). Beside the times: XLA's FLOP and byte counts of
one call (the whole batch at once; `harness.xla_cost`), the rates they give at the median time, and the run's
calibration (jitted 2048 matmul, numpy copy), so each row says how far the step is from the two limits of this
machine: ``bound ms`` = max(FLOPs / matmul rate, bytes / copy rate). A sharper floor for the step's own
products: every dot of the compiled program (`products`: shapes, dimension numbers, how often a call runs it)
computed alone by one jitted program (`products_alone`), i.e. what this machine's matmul kernels need for those
shapes with nothing else to do. Where `benchmarks/results/vs_reference.json` holds the authors' time for the
cell, the report adds the time the goal of ours / authors <= 0.33 allows.

The profiler adds its own cost (the profiled calls run slower than the timed ones), so the kinds are read as
shares of the kernel time, not as absolute times. Results: ``step_profile.{json,md}`` in ``--out``.
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time

from benchmarks import harness
from benchmarks.vs_reference import (CONTENDED, FIRST_CALL_STAGES, GOAL_RATIO, NFN_ROWS, best_records,
                                     stages_text)
from common import compilation_cache
from common.cli import positive_int

NAMES = {ours: name for _, ours, name in NFN_ROWS}  # our job -> the model's name in the reports
JOBS = tuple(NAMES)
KINDS = {
    "library": "products run by a library (YNNPACK fusions of a matmul with the elementwise work fused into it)",
    "dot": "products XLA compiles itself (small batched dots, single rows or columns)",
    "layout": "data movement only (copies, transposes, concatenations, pads, slices, broadcasts)",
    "reduction": "kernels with a reduction (sums, maxima; XLA's loops or YNNPACK's)",
    "elementwise": "other fused kernels (ReLU and its mask, scalings, the loss)",
    "other": "anything else (sorts, callbacks, custom calls)",
}
LAYOUT_OPS = frozenset({"parameter", "constant", "copy", "transpose", "bitcast", "reshape", "broadcast", "concatenate",
                        "pad", "slice", "dynamic-slice", "dynamic-update-slice", "tuple", "get-tuple-element", "iota"})
OTHER_OPS = frozenset({"custom-call", "sort", "rng", "rng-bit-generator", "gather", "scatter", "all-reduce",
                       "all-gather", "all-to-all", "collective-permute", "send", "recv", "infeed", "outfeed"})
CONTAINER_OPS = frozenset({"while", "conditional", "call", "tuple", "get-tuple-element", "parameter", "constant",
                           "bitcast", "after-all", "opt-barrier", "optimization-barrier"})
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*.*?\s([a-z][a-z\-]*)\(")
_CALLS = re.compile(r"calls=%?([\w.\-]+)")
_CONTROL = re.compile(r"(?:body|condition|true_computation|false_computation)=%?([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")  # unindented, opens a block
_TYPED = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(\w+)\[([\d,]*)\]")  # name = type[shape]...
_OPERANDS = re.compile(r"%([\w.\-]+)")
_BODY = re.compile(r"body=%?([\w.\-]+)")
_TRIP_COUNT = re.compile(r'"known_trip_count":\{"n":"(\d+)"')
XLA_COMPILE_LOG = {"TF_CPP_MIN_LOG_LEVEL": "0", "TF_CPP_VMODULE": "ir_compiler=2,cpu_compiler=1"}  # XLA's timers
MODULE_CLASSES = {
    "fused": "XLA's fused loop kernels, their code generated together in parts (up to "
             "`--xla_cpu_parallel_codegen_split_count` of them, default 32)",
    "dot": "dots XLA writes as loops of its own and compiles one module each (the matrix-vector products and "
           "other dots it does not give to a library: Eigen and YNNPACK kernels need no code generation)",
    "other": "other kernels compiled one module each (concatenations, slices, broadcasts, ...)",
}
_LLVM_MODULE = re.compile(r"Compiled LLVM module: __compute_module_(\S+) time: ")
_LOGGED_TIME = re.compile(r"time: [^(]*\((\d+) us\)")  # XLA's timers print "time: 2.38 s (2382242 us)"
_LOG_LINE = re.compile(r"^[IWEF]\d{4} ")  # a line of XLA's own log
_SHAPE = re.compile(r"\b([a-z]+\d*)\[([\d,]*)\]")  # an array type in HLO text: f32[2048,144]
DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4,
               "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
_DOT_DIMS = ("lhs_contracting_dims", "rhs_contracting_dims", "lhs_batch_dims", "rhs_batch_dims")
FLOAT_TYPES = {"f16": "float16", "bf16": "bfloat16", "f32": "float32", "f64": "float64"}


def _computations(hlo_text: str) -> tuple[str | None, dict[str, list[tuple[str, str, str]]]]:
    """(the entry computation's name, computation -> its instructions as (name, opcode, line)) of an HLO module's
    text."""
    computations, entry, name = {}, None, None
    for line in hlo_text.splitlines():
        head = _COMPUTATION.match(line)
        if head:
            name = head.group(1)
            computations[name] = []
            entry = name if line.startswith("ENTRY") else entry
            continue
        found = _INSTRUCTION.match(line)
        if found and name is not None:
            computations[name].append((found.group(1), found.group(2), line))
    return entry, computations


def _control(line: str) -> list[str]:
    """The computations an instruction's line runs as control flow: a loop's body and condition, a conditional's
    branches."""
    return _CONTROL.findall(line) + [c.strip().lstrip("%") for group in _BRANCHES.findall(line)
                                     for c in group.split(",")]


def kernel_kinds(hlo_text: str) -> dict[str, str]:
    """The kernels of a compiled XLA module (``compiled.as_text()``): instruction name -> kind (a key of `KINDS`),
    for every instruction of the entry and control-flow computations that runs as a kernel of its own (fusions,
    unfused dots, copies, ...; not the instructions inside a fusion, nor loops, tuples and parameters)."""
    entry, computations = _computations(hlo_text)
    running, todo = set(), [entry]  # the entry and the bodies of its loops and branches, not reducers or fusions
    while todo:
        computation = todo.pop()
        if computation in computations and computation not in running:
            running.add(computation)
            todo += [c for _, _, line in computations[computation] for c in _control(line)]
    opcodes = {name: {op for _, op, _ in body} for name, body in computations.items()}
    kinds = {}
    for name in running:
        for instruction, op, line in computations[name]:
            if op in CONTAINER_OPS:
                continue
            calls = _CALLS.search(line)
            inner = opcodes.get(calls.group(1) if calls else None, set()) if op == "fusion" else {op}
            if inner & {"dot", "convolution"}:
                kinds[instruction] = "library" if op == "fusion" and "__ynn" in line else "dot"
            elif inner & {"reduce", "reduce-window"}:
                kinds[instruction] = "reduction"
            elif inner <= LAYOUT_OPS:
                kinds[instruction] = "layout"
            elif op in OTHER_OPS:
                kinds[instruction] = "other"
            else:
                kinds[instruction] = "elementwise"
    return kinds


def _dimensions(line: str, key: str) -> tuple[int, ...]:
    """A dot's dimension list ``key={...}`` on its HLO line (empty where the line has none)."""
    found = re.search(rf"{key}=\{{([\d,]*)\}}", line)
    return tuple(int(n) for n in found.group(1).split(",") if n) if found else ()


def _type_bytes(text: str) -> int:
    """Bytes of the arrays an HLO type names (one array, or every array of a tuple type)."""
    return sum(DTYPE_BYTES[dtype] * math.prod(int(n) for n in dims.split(",") if n)
               for dtype, dims in _SHAPE.findall(text) if dtype in DTYPE_BYTES)


def kernel_bytes(hlo_text: str) -> dict[str, float]:
    """Bytes the kernels of a compiled XLA module (``compiled.as_text()``) read and write in one call, by kind of
    `KINDS`: every kernel of `kernel_kinds` counted with the whole of its operands and results, as many times as
    one call runs it (loops by XLA's known trip count). An upper bound of what a kernel touches (a slice reads
    part of its operand), the count a pass at the copy bandwidth would need."""
    entry, computations = _computations(hlo_text)
    kinds = kernel_kinds(hlo_text)
    moved = collections.Counter()

    def visit(name: str, times: int) -> None:
        sizes = {}
        for instruction, op, line in computations.get(name, ()):
            result, arguments = line.split("=", 1)[1].split(f" {op}(", 1)
            sizes[instruction] = _type_bytes(result)
            if instruction in kinds:
                operands = _OPERANDS.findall(arguments.split(")", 1)[0])
                moved[kinds[instruction]] += times * (sizes[instruction] + sum(sizes.get(o, 0) for o in operands))
            trips = _TRIP_COUNT.search(line)
            for callee in _control(line):
                visit(callee, times * (int(trips.group(1)) if trips and callee in _BODY.findall(line) else 1))

    visit(entry, 1)
    return {kind: float(moved.get(kind, 0)) for kind in KINDS}


def products(hlo_text: str) -> list[dict]:
    """The matrix products of a compiled XLA module (``compiled.as_text()``), each distinct one once:
    ``dict(lhs=shape, rhs=shape, dtype=name, dimension_numbers=((lhs contracting, rhs contracting), (lhs batch,
    rhs batch)), count=n)``, with ``count`` the times one call runs it (every ``dot`` of the module, inside
    fusions too, counted through the computations that run it and through loops by XLA's known trip count, 1
    where XLA knows none). Products of other than floating-point types are left out."""
    entry, computations = _computations(hlo_text)
    counts = collections.Counter()

    def visit(name: str, times: int) -> None:
        types = {}
        for instruction, op, line in computations.get(name, ()):
            typed = _TYPED.match(line)
            if typed:
                types[instruction] = (typed.group(2), tuple(int(n) for n in typed.group(3).split(",") if n))
            if op == "dot":
                lhs, rhs = _OPERANDS.findall(line.split("dot(", 1)[1].split(")", 1)[0])[:2]
                if types[lhs][0] in FLOAT_TYPES:
                    dims = tuple(_dimensions(line, key) for key in _DOT_DIMS)
                    counts[(types[lhs][1], types[rhs][1], types[lhs][0], (dims[:2], dims[2:]))] += times
            trips = _TRIP_COUNT.search(line)
            for callee in _CALLS.findall(line) + _control(line):
                visit(callee, times * (int(trips.group(1)) if trips and callee in _BODY.findall(line) else 1))

    visit(entry, 1)
    return [dict(lhs=lhs, rhs=rhs, dtype=FLOAT_TYPES[dtype], dimension_numbers=dims, count=n)
            for (lhs, rhs, dtype, dims), n in counts.items()]


def product_flops(product: dict) -> float:
    """FLOPs of one run of a product of `products`: 2 x its output's size x its contracted size."""
    (_, rhs_contracting), (_, rhs_batch) = product["dimension_numbers"]
    free = [n for i, n in enumerate(product["rhs"]) if i not in rhs_contracting + rhs_batch]
    return 2.0 * math.prod(product["lhs"]) * math.prod(free)


def products_alone(found: list[dict]) -> dict:
    """The products of `products` run alone: one jitted program (the train step's compile options) computing
    every product ``count`` times, each on operands of its own (random normal, so XLA merges none). Returns
    ``seconds`` (median of the timed calls, `vs_reference_protocol.time_calls`), ``flops`` of one call and
    ``other_cpu_frac`` (the share of all CPUs other processes used during the timed calls)."""
    import jax
    import numpy as np

    from benchmarks.vs_reference_protocol import time_calls
    from common.training import STEP_COMPILER_OPTIONS

    rng = np.random.default_rng(0)
    draw = lambda shape, dtype: jax.numpy.asarray(rng.standard_normal(shape), dtype)
    runs = [(p["dimension_numbers"], draw(p["lhs"], p["dtype"]), draw(p["rhs"], p["dtype"]))
            for p in found for _ in range(p["count"])]
    program = jax.jit(lambda operands: [jax.lax.dot_general(a, b, dims) for (dims, _, _), (a, b) in
                                        zip(runs, operands)], compiler_options=STEP_COMPILER_OPTIONS)
    operands = [(a, b) for _, a, b in runs]
    timing = time_calls(lambda: jax.block_until_ready(program(operands)))
    return dict(seconds=timing["median_s"], flops=sum(product_flops(p) * p["count"] for p in found),
                other_cpu_frac=timing["other_cpu_frac"])


def first_call_stages(jitted, args: tuple) -> tuple[dict[str, float], object]:
    """A jitted function's first call on ``args``, stage by stage through JAX's ahead-of-time API (the same work a
    first call does): seconds ``trace_s`` (Python to a jaxpr), ``lower_s`` (to StableHLO), ``compile_s`` (XLA's
    passes and code generation) and ``first_run_s`` (the executable's first run, which also sets up its library
    kernels and faults its buffers in), and ``gc_s``, the time Python's garbage collector paused within them.
    Returns (those seconds, the compiled executable)."""
    import gc

    import jax

    started, pauses = [], []

    def on_collection(phase: str, info: dict) -> None:
        if phase == "start":
            started.append(time.perf_counter())
        elif started:
            pauses.append(time.perf_counter() - started.pop())

    marks = [time.perf_counter()]
    gc.callbacks.append(on_collection)
    try:
        traced = jitted.trace(*args)
        marks.append(time.perf_counter())
        lowered = traced.lower()
        marks.append(time.perf_counter())
        compiled = lowered.compile()
        marks.append(time.perf_counter())
        jax.block_until_ready(compiled(*args))
        marks.append(time.perf_counter())
    finally:
        gc.callbacks.remove(on_collection)
    seconds = {f"{stage}_s": end - start for stage, start, end in zip(FIRST_CALL_STAGES, marks, marks[1:])}
    return seconds | {"gc_s": sum(pauses)}, compiled


def compile_log(log: str, program: str) -> dict | None:
    """Where XLA's first compile of ``program`` (an HLO module's name, e.g. ``"jit_gradient"``) went, read from the
    log of a process run with `XLA_COMPILE_LOG` in its environment: ``compile_s`` (XLA's whole compile, wall
    time), ``hlo_passes_s`` (its HLO passes, the part before code generation) and, per class of `MODULE_CLASSES`,
    the LLVM modules compiled (``count``) and ``thread_s``, their code generation summed over the threads that ran
    it (on 2 cores up to twice the wall time it took). None when the log holds no finished compile of it."""
    lines = log.splitlines()
    start = next((i for i, line in enumerate(lines) if line.endswith(f"Compiling: {program}")), None)
    if start is None:
        return None
    end = next((i for i in range(start, len(lines)) if f"Compiling [{program}] for CPU using JIT time:" in lines[i]),
               None)
    if end is None:
        return None
    seconds = lambda line: 1e-6 * int(_LOGGED_TIME.search(line).group(1))
    passes = [line for line in lines[:start] if f"Running HLO passes on [{program}]" in line]
    modules = {k: {"count": 0, "thread_s": 0.0} for k in MODULE_CLASSES}
    for line in lines[start:end]:
        found = _LLVM_MODULE.search(line)
        if found:
            name = found.group(1)
            kind = "fused" if name.startswith("part_") else "dot" if name.startswith("dot") else "other"
            modules[kind]["count"] += 1
            modules[kind]["thread_s"] += seconds(line)
    return dict(compile_s=seconds(lines[end]), hlo_passes_s=seconds(passes[-1]) if passes else None, modules=modules)


def kernel_times(trace_dir: str, kinds: dict[str, str], calls: int) -> dict[str, float]:
    """Seconds per call by kind, from the perfetto trace ``jax.profiler.trace`` wrote under ``trace_dir`` over
    ``calls`` calls: the durations of the events named after a kernel of ``kinds``, summed over threads."""
    path = glob.glob(os.path.join(trace_dir, "**", "*perfetto_trace.json.gz"), recursive=True)
    if not path:
        raise FileNotFoundError(f"no perfetto trace under {trace_dir}")
    with gzip.open(path[0]) as f:
        events = json.load(f)
    events = events["traceEvents"] if isinstance(events, dict) else events
    total = collections.Counter()
    for e in events:
        if e.get("ph") == "X" and e.get("name") in kinds:
            total[kinds[e["name"]]] += e["dur"] * 1e-6 / calls
    return {kind: total.get(kind, 0.0) for kind in KINDS}


def profile_cell(job: str, batch: int, mode: str, calls: int) -> dict:
    """One cell, in this process: the first call by stage, timed calls, kernel counts and profiled kernel times by
    kind."""
    import jax

    from benchmarks import vs_reference_ours as ours
    from benchmarks.vs_reference_protocol import time_calls

    call, info = ours.build_nfn(job, batch, mode)
    jitted, args = call.staged()
    stages, compiled = first_call_stages(jitted, args)
    timing = time_calls(call)
    hlo_text = compiled.as_text()
    kinds = kernel_kinds(hlo_text)
    for _ in range(2):
        jax.block_until_ready(compiled(*args))
    with tempfile.TemporaryDirectory() as trace_dir:
        start = time.perf_counter()
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            for _ in range(calls):
                jax.block_until_ready(compiled(*args))
        profiled_s = (time.perf_counter() - start) / calls
        times = kernel_times(trace_dir, kinds, calls)
    first_s = sum(stages[f"{stage}_s"] for stage in FIRST_CALL_STAGES)
    return dict(job=job, batch=batch, mode=mode, first_call_s=first_s, first_call_stages=stages,
                median_s=timing["median_s"], min_s=timing["min_s"], other_cpu_frac=timing["other_cpu_frac"],
                profiled_call_s=profiled_s, kernel_s=times, kernels=dict(collections.Counter(kinds.values())),
                kernel_bytes=kernel_bytes(hlo_text),
                **call.cost_analysis(), config=info["config"],
                program=hlo_text.split(",", 1)[0].removeprefix("HloModule ").strip())


def same_program_bytes(cell: dict, hlo_text: str) -> dict[str, float] | None:
    """`kernel_bytes` of a compiled module (``compiled.as_text()``) for a recorded ``cell``, where the module is the
    program the cell timed: the same kernels by kind (`kernel_kinds`, the cell's ``kernels``) and the same matrix
    products (how many one call runs, ``products``, and their FLOPs, ``products_flops``). None where it is not.
    The bytes are a count of the program, not a measurement, so a cell recorded before they were counted can take
    them from the same program compiled again (`count_bytes`)."""
    found = products(hlo_text)
    same = (dict(collections.Counter(kernel_kinds(hlo_text).values())) == cell.get("kernels")
            and sum(p["count"] for p in found) == cell.get("products")
            and math.isclose(sum(product_flops(p) * p["count"] for p in found), cell.get("products_flops") or 0.0))
    return kernel_bytes(hlo_text) if same else None


def count_bytes(out_dir: str) -> None:
    """Adds `kernel_bytes` to the cells of ``step_profile.json`` in ``out_dir`` that lack them (records from before
    they were counted), each from its step compiled again in this process where `same_program_bytes` finds the
    recorded program, with ``kernel_bytes_counted_utc`` (when); other cells are left as they are and named. The
    report is written again."""
    from benchmarks import vs_reference_ours as ours

    result = harness.read_results(out_dir, "step_profile")
    now = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    for cell in result["cells"]:
        if "error" in cell or cell.get("kernel_bytes"):
            continue
        jitted, args = ours.build_nfn(cell["job"], cell["batch"], cell["mode"])[0].staged()
        moved = same_program_bytes(cell, jitted.lower(*args).compile().as_text())
        if moved is None:
            print(f"{cell['job']} {cell['batch']} {cell['mode']}: compiled here, not the recorded program; left out",
                  flush=True)
            continue
        cell.update(kernel_bytes=moved, kernel_bytes_counted_utc=now)
    harness.write_results(out_dir, "step_profile", result, markdown(result))


def run_cell(module: str, cell_args: list[str], cell: dict, env: dict | None = None) -> tuple[dict, str]:
    """``python -m module --cell *cell_args`` in a fresh Python process, from the project's root (a driver's
    ``--cell`` prints its record as the last JSON line of its output). Returns (that record, or ``cell`` with
    ``error``: the last line of the process's stderr that is not XLA's own log; the process's stderr)."""
    done = subprocess.run([sys.executable, "-m", module, "--cell", *cell_args], capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(__file__)), env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        errors = [line for line in done.stderr.strip().splitlines() if not _LOG_LINE.match(line)]
        return cell | {"error": (errors or ["?"])[-1][:300]}, done.stderr
    return json.loads(lines[-1]), done.stderr


def _cell_in_process(job: str, batch: int, mode: str, calls: int) -> dict:
    """`profile_cell` in a fresh Python process with XLA's compile timers on (its record with `compile_log` of its
    first call's compile as ``compile_log``, or a record with ``error``)."""
    record, stderr = run_cell("benchmarks.step_profile", [job, str(batch), mode, "--calls", str(calls)],
                              dict(job=job, batch=batch, mode=mode), env=os.environ | XLA_COMPILE_LOG)
    return record if "error" in record else record | {"compile_log": compile_log(stderr, record["program"])}


def _authors_ms(out_dir: str) -> tuple[dict, str | None]:
    """((job, batch, mode) -> the authors' median ms, a sentence dating them) from ``vs_reference.json`` beside the
    results, the record its tables use per cell (`best_records`); empty and None without one."""
    found = harness.read_json(os.path.join(out_dir, "vs_reference.json"), {}) or {}
    refs = {ref for ref, _, _ in NFN_ROWS}
    records = [r for r in best_records(found.get("records", [])).values()
               if r.get("job") in refs and r.get("median_s") and "batch" in r]
    if not records:
        return {}, None
    run, cal = found.get("run", {}), (found.get("run", {}).get("calibration") or {})
    source = (f"the authors' medians of `vs_reference.json` (run started {run.get('started_utc', '?')}, jitted 2048 "
              f"matmul {cal.get('jax_gflops', float('nan')):.0f} GFLOP/s there: compare rates within one run)")
    return {(ours, r["batch"], r["mode"]): 1e3 * r["median_s"] for r in records
            for ref, ours, _ in NFN_ROWS if ref == r["job"]}, source


PRODUCT_KINDS = ("library", "dot")  # the `KINDS` that run matrix products; the other kernels are passes


def products_and_passes_s(products_s: float, moved: dict[str, float], copy_gbps: float) -> float:
    """A step's products alone (``products_s``), then the bytes of its other kernels (``moved``, `kernel_bytes`)
    at the copy bandwidth ``copy_gbps`` (GB/s): the step's time were its kernels run one after the other at those
    two limits (no floor: data in the cache moves faster, and two kernels can run at once)."""
    passes = sum(n for kind, n in moved.items() if kind not in PRODUCT_KINDS)
    return products_s + passes / (copy_gbps * 1e9)


def _contention(share: float | None) -> str:
    """Other processes' share of all CPUs during the timed calls, † above `CONTENDED` (a disturbed cell)."""
    return "-" if share is None else f"{share:.2f}" + (" †" if share > CONTENDED else "")


def markdown(result: dict) -> str:
    """The report: run record, one row per cell, the kinds' definitions."""
    cal = result["run"]["calibration"]
    lines = ["# Where the NFN steps spend their time (CPU)", "",
             "Scale: the five predictors in the authors' configurations, and MAGEP-NFN with the library's default "
             "scale normalisation beside them (`benchmarks.vs_reference`), random inputs, one process per cell; "
             f"{result['calls']} profiled calls per cell.", ""]
    lines += harness.run_markdown(result["run"])
    header = ["model", "batch", "mode", "median ms", "first call s", "trace / lower / compile / first run s (GC)",
              "GFLOP", "GFLOP/s (% of matmul)", "GB", "GB/s (% of copy)", "bound ms", "products alone ms",
              "products + passes ms", "goal ms",
              "kernel ms / call"] + [f"% {k}" for k in KINDS] + ["kernels", "other CPU"]
    rows = []
    for r in result["cells"]:
        if "error" in r:
            rows.append([NAMES[r["job"]], r["batch"], r["mode"], "failed: " + r["error"]] + [""] * (len(header) - 4))
            continue
        t = r["median_s"]
        flop, moved = r.get("flops") or 0.0, r.get("bytes_accessed") or 0.0
        bound = harness.roofline_bound_s(flop, moved, cal)
        goal = r.get("goal_ms")
        kernel = sum(r["kernel_s"].values())
        rows.append([NAMES[r["job"]], r["batch"], r["mode"], f"{1e3 * t:.1f}", f"{r['first_call_s']:.2f}",
                     stages_text(r.get("first_call_stages"), " / ", " ({:.2f})"), f"{flop / 1e9:.2f}",
                     f"{flop / t / 1e9:.0f} ({100 * flop / t / 1e9 / cal['jax_gflops']:.0f}%)",
                     f"{moved / 1e9:.2f}", f"{moved / t / 1e9:.1f} ({100 * moved / t / 1e9 / cal['copy_gbps']:.0f}%)",
                     f"{1e3 * bound:.1f}", f"{1e3 * r['products_alone_s']:.1f} ({r['products']})",
                     (f"{1e3 * products_and_passes_s(r['products_alone_s'], r['kernel_bytes'], cal['copy_gbps']):.1f}"
                      if r.get("kernel_bytes") else "-"),
                     "-" if goal is None else f"{goal:.1f}", f"{1e3 * kernel:.1f}"]
                    + [f"{100 * r['kernel_s'][k] / kernel:.0f}" if kernel else "-" for k in KINDS]
                    + [sum(r["kernels"].values()), _contention(r.get("other_cpu_frac"))])
    lines += harness.markdown_table(header, rows)
    lines += ["", "Columns: GFLOP and GB are XLA's counts for one call on the whole batch (`cost_analysis`: FLOPs, "
              "and the operands and results of every kernel); the rates are those counts over the median time, "
              "beside the run's jitted 2048 matmul rate and numpy copy bandwidth; bound ms = max(GFLOP / matmul "
              "rate, GB / copy rate), the time the step could not beat at either limit as compiled; products alone "
              "ms = the step's matrix products (every dot of the compiled program, with its shapes and dimension "
              "numbers, as many times as one call runs it; their number in brackets) computed alone by one jitted "
              "program on random operands (`products_alone`): a goal below it cannot be met with these products, "
              "whatever else the step does, if the goal's run found the host as fast as this one (vs_reference.md "
              "compares the products' share of our step with the goal's share within each run instead); products + "
              "passes ms = the products alone, then every other kernel's operands and results (`kernel_bytes`) at "
              "the copy bandwidth (`products_and_passes_s`)" + _counted_later(result["cells"]) + "; goal ms = "
              + (f"{GOAL_RATIO} x {result['goal_source']} for the same cell" if result.get("goal_source") else
                 f"{GOAL_RATIO} x the authors' median (none here: no vs_reference.json beside the results)")
              + ". Kernel ms / call: the kernels' time under the profiler, summed over the threads that ran them "
              "(2 cores: up to twice the wall time), and its shares by kind of kernel:", ""]
    lines += [f"- **{k}**: {text}" for k, text in KINDS.items()]
    lines += ["", "First call = trace (Python to a jaxpr) + lower (to StableHLO) + compile (XLA's passes and code "
              "generation, mostly LLVM's, on both cores) + first run (the executable's first run, which also sets up "
              "its YNNPACK fusions and faults its buffers in), timed apart through JAX's ahead-of-time API "
              "(`first_call_stages`); GC = how long Python's garbage collector paused within them (a full collection "
              "walks every live Python object). kernels = kernels of the compiled program (each one is compiled on "
              "a first call). other CPU = "
              f"share of all CPUs other processes used during the timed calls († above {CONTENDED}: disturbed, "
              "rerun it).", ""]
    return "\n".join(lines + _compile_markdown(result["cells"]))


def _counted_later(cells: list[dict]) -> str:
    """A clause naming when `count_bytes` counted the kernels' bytes of cells recorded without them ('' if none)."""
    when = sorted({c["kernel_bytes_counted_utc"] for c in cells if c.get("kernel_bytes_counted_utc")})
    return (f" (this run's records had no byte counts: counted on {', '.join(when)} from each step compiled again, "
            "the same program as its kernels by kind and its products show, `--count-bytes`)" if when else "")


def _compile_markdown(cells: list[dict]) -> list[str]:
    """The table of `compile_log` per cell: where each program's first compile went."""
    rows = []
    for r in cells:
        log = r.get("compile_log")
        if not log:
            continue
        mods = log["modules"]
        codegen = sum(m["thread_s"] for m in mods.values())
        rows.append([NAMES[r["job"]], r["batch"], r["mode"], f"{log['compile_s']:.2f}",
                     "-" if log["hlo_passes_s"] is None else f"{log['hlo_passes_s']:.2f}", f"{codegen:.2f}"]
                    + [f"{m['count']} / {m['thread_s']:.2f}" for m in mods.values()])
    if not rows:
        return []
    header = ["model", "batch", "mode", "XLA compile s", "HLO passes s", "code generation thread-s"] + [
        f"{k}: modules / thread-s" for k in MODULE_CLASSES]
    return (["## Where each first compile goes", "",
             "From XLA's own timers (the cell's process runs with "
             + ", ".join(f"`{k}={v}`" for k, v in XLA_COMPILE_LOG.items()) + "; `compile_log`): XLA compile s = its "
             "whole compile of the step (wall), HLO passes s = its passes before code generation, then LLVM's code "
             "generation, module by module, summed over the threads that ran it (2 cores: up to twice the wall "
             "time), by class of module:", ""]
            + [f"- **{k}**: {text}" for k, text in MODULE_CLASSES.items()] + [""]
            + harness.markdown_table(header, rows) + [""])


def add_cell_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that choose a driver's cells: ``--jobs``, ``--batches``, ``--modes`` (see `cells`)."""
    parser.add_argument("--jobs", nargs="+", choices=JOBS)
    parser.add_argument("--batches", nargs="+", type=positive_int,
                        help="Transformer-NFN runs 16 where 8 is asked (its smallest batch in vs_reference)")
    parser.add_argument("--modes", nargs="+", choices=("fwd", "fwdbwd"))


def cells(jobs, batches, modes) -> list[tuple[str, int, str]]:
    """Every (job, batch, mode) of the options, in that order; Transformer-NFN at 16 rows where 8 is asked (the
    authors' smallest batch there)."""
    return [(job, 16 if job == "ours_tnfn" and batch == 8 else batch, mode)
            for job in jobs for batch in batches for mode in modes]


@compilation_cache.disabled()  # first calls are measured: compiled afresh, never read from a cache
def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_cell_arguments(parser)
    parser.add_argument("--calls", type=positive_int, default=None, help="profiled calls per cell")
    parser.add_argument("--cell", nargs=3, metavar=("JOB", "BATCH", "MODE"), help=argparse.SUPPRESS)
    parser.add_argument("--count-bytes", action="store_true",
                        help="add the kernels' bytes to an earlier run's cells that lack them (`count_bytes`), "
                             "nothing timed")
    quick = dict(jobs=["ours_monomial"], batches=[8], modes=["fwdbwd"], calls=2)
    args = harness.parse_benchmark_args(parser, argv, quick)
    harness.fill_defaults(args, dict(jobs=list(JOBS), batches=[8, 64, 256], modes=["fwdbwd", "fwd"], calls=10))
    if args.count_bytes:
        count_bytes(args.out)
        return
    if args.cell:
        job, batch, mode = args.cell
        print(json.dumps(profile_cell(job, int(batch), mode, args.calls)), flush=True)
        return
    run = harness.start_run()
    authors, goal_source = _authors_ms(args.out)
    records = []
    for job, batch, mode in cells(args.jobs, args.batches, args.modes):
        record = _cell_in_process(job, batch, mode, args.calls)
        theirs = authors.get((job, batch, mode))
        record["goal_ms"] = None if theirs is None else GOAL_RATIO * theirs
        records.append(record)
        print(json.dumps({k: record.get(k) for k in ("job", "batch", "mode", "median_s", "error")}), flush=True)
    result = dict(run=run.finish(), calls=args.calls, cells=records, goal_source=goal_source)
    harness.write_results(args.out, "step_profile", result, markdown(result))


if __name__ == "__main__":
    main()
