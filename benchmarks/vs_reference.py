"""Side by side with the authors' code: our NFN training steps, TSW-SL / SW distances and zoo generation against
the authors' PyTorch implementations, POT and OTT-JAX, and plain one-model-at-a-time PyTorch training.

    python -m benchmarks.vs_reference [--reference-dir DIR] [--reference-python PY] [--ott-python PY]
        [--groups nfn tsw zoo large] [--only JOB ...] [--passes N] [--resume [--remeasure]]
        [--max-load 0.10 | --no-wait] [--repeats R] [--out benchmarks/results]
    python -m benchmarks.vs_reference --report-only [--out benchmarks/results]   # render the stored report again
    python -m benchmarks.vs_reference --count-flops --reference-dir DIR --reference-python PY [--groups nfn]

The full quiet measurement (after the set-up below; about 300 jobs, roughly an hour on 2 quiet cores;
``--resume`` makes a rerun redo only the jobs whose records were disturbed, and starts afresh over a smoke run;
with ``--remeasure`` it measures the selected groups again, keeping the other groups' records):

    python -m benchmarks.vs_reference --reference-dir $SCRATCH/peers \
        --reference-python $SCRATCH/torchvenv/bin/python --groups nfn tsw zoo --resume

A smoke run under load (every job once, 2 timed calls, no waiting for a quiet machine; NOT evidence):

    python -m benchmarks.vs_reference --reference-dir $SCRATCH/peers \
        --reference-python $SCRATCH/torchvenv/bin/python --smoke

Protocol (``benchmarks.vs_reference_protocol``). Every job (one model or distance, one shape, one mode) runs in its
own fresh process, under an address-space limit (``--mem-gb``) and a timeout; the authors' job and ours of the same
shape run one after the other (interleaved), so both see the machine in the same state. Before each job the driver
waits (at most ``--max-wait`` s) until other processes use at most ``--max-load`` of the CPUs. In the job: a 512 x
512 numpy matmul calibration, the first call timed apart (it includes ``jax.jit`` / ``torch.compile``), 2 warm-up
calls, then at least 5 timed calls (more while the timed window is under 1 s and the total under 4 s); the median
and min; peak RSS of the process; ``other_cpu_frac``, the share of all CPUs other processes used during the timed
calls. A record above ``--contended`` (0.10) is disturbed: the job is rerun (``--reruns`` times); the report takes
the best undisturbed record and marks a cell with only disturbed records with a dagger. ``--passes N`` runs the
whole interleaved list N times, one pass after the other, so each side of a cell is measured in N processes minutes
apart; the tables take each job's lowest undisturbed median over its passes, for the authors' jobs and ours alike
(this host's speed drifts by up to 2x between the passes of one run, and a slow spell only adds time), and each
job's lowest first call over the same records, for the same reason. The driver's own record
(``benchmarks.harness``): load averages at start and end and a jitted matmul calibration. Our NFN jobs compile as
the library's train step does (`common.training.STEP_COMPILER_OPTIONS`) and record XLA's FLOP count of one call
(``cost_analysis``, taken after the timed calls), so the report gives each step's achieved GFLOP/s against the job's
own matmul calibration, and then time their step's matrix products alone in the same process
(``vs_reference_ours.products_record``), the floor the report sets against the goal for a row that misses it.
``--count-flops`` times nothing: it counts the authors' matrix-product FLOPs of the selected NFN jobs (torch's
``FlopCounterMode``, one untimed call per job in its own process), keeps them in the stored result
(``flop_counts``, carried over by later runs, since they depend on the code and not on the host) and renders the
report again with an arithmetic table: their FLOPs against our step's dots (``step_profile.json``) and the rate
each side runs them at. Results: ``vs_reference.json`` (every record) and ``vs_reference.md``.

Modes. NFNs: ``fwd`` = forward only; ``fwdbwd`` = forward + BCE loss + gradient w.r.t. every parameter (a
training step without the optimizer update); ours computed as the library predicts and trains, in micro-batches of
16 rows above batch 64 (`common.microbatch` "auto", the jobs running on the calling thread); random-normal
inputs shaped like the zoos (CNN zoo: conv 1-16-16-16 3x3 + dense 16-10; MNIST small-transformer zoo: D=32, 2
heads, Dk=Dv=16, DA=64, 2 blocks); MAGEP-NFN twice, in the authors' architecture and with the library's
default scale normalisation (`vs_reference_ours.NFN_OPTIONS`). TSW / SW: the distance between two clouds of N
points in R^d, or distance + gradient w.r.t. the moving cloud; L trees x k = 4 lines (SW: L k projections), frames
drawn once outside the timed calls. Zoo (``train``): ms per model-step of the Small CNN Zoo recipe (batch 512,
MNIST) and of SIREN fits (full 28 x 28 grid), plain PyTorch one model at a time
(``benchmarks.vs_reference_zoo_torch``) against our vmapped populations (``benchmarks.zoo_throughput``).

The authors' code is not part of this project: it is imported at run time from checkouts under
``--reference-dir``, one folder per repository, at these commits (the record of each job carries the commit it
found: ``git rev-parse HEAD`` or a ``.peer_commit`` file written when the tree was exported):

    folder            repository                          commit
    MAGEP-NFN         Fsoft-AIC/MAGEP-NFN                 d3298f5105d99f0b970ba7c7296f3b96f3963834
    Monomial-NFN      MathematicalAI-NUS/Monomial-NFN     43aa468faa7a323e5ae666688c73e275258bf01b
    nfn               AllanYangZhou/nfn                   ce783221fd7c511596220d805c7a5beccd764ee8
    Transformer-NFN   Fsoft-AIC/Transformer-NFN           c1520e2c6067e20565062300a87acf1c426a8fce
    DbTSW             Fsoft-AIC/DbTSW                     c8c124d009368cb9ae41fa792ed642424f31e17d
    TS-Sobolev        thanhquangtran/TS-Sobolev           8cb1ec6070698807b8cb4d9265b5ce351a4bee89

Set-up (once): clone or export each repository into ``$SCRATCH/peers/<folder>`` (``git archive HEAD | tar -x``;
for DbTSW and TS-Sobolev, whose snapshots may lack a data file no job uses, extract file by file), write the
commit to ``<folder>/.peer_commit``. One local fix in the Transformer-NFN checkout (it moves a tensor to the GPU
unconditionally): in ``nfn_transformer/model.py``, ``InvariantNFN.forward``, replace
``embedding = embedding.cuda()`` by ``embedding = embedding.to(self.final_classifier_head[0].weight.device)``.
The reference Python: ``python3 -m venv $SCRATCH/torchvenv && $SCRATCH/torchvenv/bin/pip install torch numpy
einops pot`` (CPU torch; ``torch.compile`` for DbTSW needs a C++ compiler). OTT-JAX (optional): a venv with
``jax ott-jax`` named by ``--ott-python``, or the project's Python when it has ``ott``.

Without ``--reference-dir`` / ``--reference-python`` the benchmark still runs our jobs, POT (torch backend in the
reference Python, else numpy backend, value only) and OTT-JAX where available, and the report lists what it
skipped and why.
"""
from __future__ import annotations

import argparse
import collections
import importlib.util
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from typing import NamedTuple

from benchmarks import harness
from benchmarks.vs_reference_protocol import CALIBRATION_FLOP, RESULT_PREFIX, machine_busy_frac
from common.cli import positive_int

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME = "vs_reference"
MODES = ("fwd", "fwdbwd")
# (authors' job, our job, display name): MAGEP-NFN twice, in the authors' architecture and with the library's default
# scale normalisation (`benchmarks.vs_reference_ours.NFN_OPTIONS`), both against the same authors' step
NFN_ROWS = (("magep", "ours_magep", "MAGEP-NFN"), ("magep", "ours_magep_normalized", "MAGEP-NFN, normalised"),
            ("monomial", "ours_monomial", "Monomial-NFN"), ("nfn_hnp", "ours_nfn_hnp", "HNP (nfn)"),
            ("nfn_np", "ours_nfn_np", "NP (nfn)"), ("tnfn", "ours_tnfn", "Transformer-NFN"))
CNN_BATCHES = (8, 64, 256)
TNFN_BATCHES = (16, 64, 256)
REFERENCE_TSW = ("tsw_chain", "dbtsw", "dbtsw_compiled", "pot", "ott")
OURS_TSW = ("ours_tsw_chain", "ours_dbtsw", "ours_tsw_weighted", "ours_sw", "ours_tsw_distance")
TSW_N, TSW_D, TSW_TREES, TSW_LINES = (100, 1000, 5000), (2, 100), (25, 100), 4
LARGE_N, LARGE_JOBS = (100_000, 1_000_000), ("pot", "ours_tsw_chain", "ours_sw")
# zoo: (plain PyTorch job, our job, display name, models ours trains together, steps per timed call or epoch,
#       optimizer steps one model takes in the recipe)
ZOO = {"cnn": ("torch_cnn_zoo", "ours_cnn_zoo", "Small CNN Zoo (MNIST, batch 512)", 32, 8, 86 * 118),
       "siren": ("torch_siren", "ours_siren", "SIREN fit (28 x 28 grid)", 64, 200, 5000)}
NEEDS_CHECKOUT = ("magep", "monomial", "nfn_hnp", "nfn_np", "tnfn", "tsw_chain", "dbtsw", "dbtsw_compiled")
TORCH_JOBS = NEEDS_CHECKOUT + ("torch_cnn_zoo", "torch_siren")
CONTENDED = 0.10
SMOKE = dict(repeats=2, wait=False, reruns=0, batches=[8], tnfn_batches=[16], tsw_n=[100], tsw_d=[2],
             tsw_trees=[25], zoo_models=2, zoo_steps=3, large_n=[])
SHAPE_FIELDS = ("batch", "n", "d", "trees", "lines", "models", "steps")
KEY_FIELDS = ("job", "mode", "batch", "n", "d", "trees", "lines")


# ------------------------------------------------------------------------------------------------ jobs


def nfn_jobs(batches, tnfn_batches, modes=MODES) -> list[dict]:
    """Authors' and our NFN jobs, interleaved: each authors' job is followed by ours of the same shape."""
    jobs = []
    for ref in dict.fromkeys(ref for ref, _, _ in NFN_ROWS):
        for batch in (tnfn_batches if ref == "tnfn" else batches):
            for mode in modes:
                jobs += [dict(job=ref, mode=mode, batch=batch)]
                jobs += [dict(job=ours, mode=mode, batch=batch) for r, ours, _ in NFN_ROWS if r == ref]
    return jobs


def tsw_jobs(ns, ds, trees_list, modes=MODES, references=REFERENCE_TSW, ours=OURS_TSW) -> list[dict]:
    """TSW / SW jobs of the grid, references and ours interleaved per cell and mode."""
    jobs = []
    for trees in trees_list:
        for d in ds:
            for n in ns:
                for mode in modes:
                    order = [j for pair in zip(references, ours) for j in pair]
                    order += list(references[len(ours):]) + list(ours[len(references):])
                    jobs += [dict(job=j, mode=mode, n=n, d=d, trees=trees, lines=TSW_LINES) for j in order]
    return jobs


def large_jobs(ns, modes=MODES) -> list[dict]:
    """n = 1e5, 1e6 at d = 2, 25 trees x 4 lines: POT against our TSW-SL fast path and SW."""
    return [dict(job=j, mode=mode, n=n, d=2, trees=25, lines=TSW_LINES) for n in ns for mode in modes
            for j in LARGE_JOBS]


def zoo_jobs(models: int | None, steps: int | None) -> list[dict]:
    """Plain PyTorch (one model) and our population (``models`` together) per recipe."""
    jobs = []
    for torch_job, ours_job, _, default_models, default_steps, _ in ZOO.values():
        s = default_steps if steps is None else steps
        jobs += [dict(job=torch_job, mode="train", models=1, steps=max(1, min(s, 20))),
                 dict(job=ours_job, mode="train", models=default_models if models is None else models, steps=s)]
    return jobs


def job_key(record: dict) -> str:
    """The identity of a job (same shape, same mode, same code)."""
    return json.dumps({k: record[k] for k in KEY_FIELDS if k in record}, sort_keys=True)


def job_command(job: dict, options) -> tuple[list[str] | None, str | None]:
    """(command, None) that runs ``job`` in a fresh process, or (None, reason) when it cannot run here."""
    name = job["job"]
    if name in NEEDS_CHECKOUT:
        if not options.reference_dir:
            return None, "no --reference-dir (the authors' checkouts)"
    if name in TORCH_JOBS and not options.reference_python:
        return None, "no --reference-python (a Python with torch)"
    if name == "ott":
        python = options.ott_python or (sys.executable if importlib.util.find_spec("ott") else None)
        if not python:
            return None, "no --ott-python and the project's Python has no ott-jax"
        module = "benchmarks.vs_reference_ott"
    elif name == "pot":
        python = options.reference_python or sys.executable
        if options.reference_python is None and job["mode"] != "fwd":
            return None, "POT's value and gradient need its torch backend: no --reference-python"
        module = "benchmarks.vs_reference_torch"
    elif name in ("torch_cnn_zoo", "torch_siren"):
        python, module = options.reference_python, "benchmarks.vs_reference_zoo_torch"
    elif name in TORCH_JOBS:
        python, module = options.reference_python, "benchmarks.vs_reference_torch"
    else:
        python, module = sys.executable, "benchmarks.vs_reference_ours"
    command = [python, "-m", module, "--job", name, "--mode", job["mode"], "--threads", str(options.threads)]
    for field in SHAPE_FIELDS:
        if field in job:
            command += [f"--{field}", str(job[field])]
    if options.reference_dir:
        command += ["--reference-dir", os.path.abspath(options.reference_dir)]
    if options.repeats is not None:
        command += ["--repeats", str(options.repeats)]
    return command, None


def project_env(**overrides: str) -> dict:
    """The environment of a child process run from the project root: this one's, the project first on
    ``PYTHONPATH``, then ``overrides``."""
    return dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), **overrides)


def run_job(command: list[str], mem_gb: float, timeout_s: float) -> dict:
    """Runs one job's process (its address space capped at ``mem_gb`` by the job itself, killed after
    ``timeout_s``) from the project root; returns its ``RESULT`` record, or a record with status timeout / oom /
    killed / error."""
    command = command + ["--mem-gb", str(mem_gb)]
    env = project_env(PYTHONDONTWRITEBYTECODE="1")
    start = time.time()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, cwd=ROOT,
                              env=env)
    except subprocess.TimeoutExpired:
        return dict(status="timeout", error=f"killed after {timeout_s} s", wall_s=time.time() - start)
    record = None
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            record = json.loads(line[len(RESULT_PREFIX):])
    if record is None:
        tail = (done.stderr or "")[-400:]
        status = "killed" if done.returncode < 0 else "oom" if "MemoryError" in tail else "error"
        return dict(status=status, error=f"rc={done.returncode}: {tail}", wall_s=time.time() - start)
    record["wall_s"] = time.time() - start
    return record


def is_clean(record: dict, contended: float = CONTENDED) -> bool:
    """Undisturbed: a failure that is not about time (oom, error, skipped), or timed with other processes
    using at most ``contended`` of the CPUs."""
    if record.get("status") in ("oom", "error", "skipped"):
        return True
    other = record.get("other_cpu_frac")
    return record.get("status") in ("ok", "slow") and other is not None and other <= contended


def wait_quiet(max_load: float, max_wait_s: float) -> float | None:
    """Waits until other processes use at most ``max_load`` of the CPUs (at most ``max_wait_s``); returns the
    last reading."""
    start = time.time()
    while True:
        busy = machine_busy_frac()
        if busy is None or busy <= max_load or time.time() - start > max_wait_s:
            return busy
        time.sleep(10)


def without_defaults(record: dict, job: dict) -> dict:
    """A job script's ``record`` without the shape fields the script filled in with its defaults (those ``job``
    does not have)."""
    for field in SHAPE_FIELDS:
        if field not in job:
            record.pop(field, None)
    return record


def measure_job(job: dict, options) -> list[dict]:
    """The records of one job: a skipped record, or one run plus up to ``options.reruns`` reruns while the runs
    are disturbed."""
    command, reason = job_command(job, options)
    if command is None:
        return [dict(job, status="skipped", error=reason)]
    records = []
    for attempt in range(1 + options.reruns):
        busy = wait_quiet(options.max_load, options.max_wait) if options.wait else machine_busy_frac(0.5)
        record = without_defaults(run_job(command, options.mem_gb, options.timeout), job)
        record.update(job, busy_before=busy, attempt=attempt, mem_limit_gb=options.mem_gb,
                      measured_utc=time.strftime("%Y-%m-%d %H:%M", time.gmtime()))
        if "steps" in job and job["job"].startswith("torch_") and record.get("median_s") is not None:
            record["model_step_s"] = record["median_s"] / job["steps"]
        elif job["job"].startswith("ours_") and job["mode"] == "train" and record.get("median_s") is not None:
            record["model_step_s"] = record["median_s"]
        records.append(record)
        if is_clean(record, options.contended):
            break
    return records


# ---------------------------------------------------------------------------------------------- report


def best_records(records: list[dict], contended: float = CONTENDED) -> dict[str, dict]:
    """Per job key the record the tables use: the lowest median among undisturbed records, else among all
    (marked ``disturbed``), with ``first_call_s`` the lowest first call among the same records (a first call, a
    compile for the most part, drifts with the host as a median does, and independently of it; the record's own
    stays as ``first_call_s_of_record``)."""
    by_key: dict[str, list[dict]] = {}
    for r in records:
        by_key.setdefault(job_key(r), []).append(r)
    best = {}
    for key, rs in by_key.items():
        clean = [r for r in rs if is_clean(r, contended)]
        pool = sorted(clean or rs, key=lambda r: (r.get("median_s") is None, r.get("median_s") or 0.0))
        firsts = [r["first_call_s"] for r in pool if r.get("first_call_s") is not None]
        best[key] = dict(pool[0], disturbed=not clean, n_records=len(rs),
                         first_call_s_of_record=pool[0].get("first_call_s"),
                         first_call_s=min(firsts) if firsts else pool[0].get("first_call_s"))
    return best


def _get(best, **fields):
    return best.get(job_key(fields))


def _ms(r) -> str:
    if r is None:
        return "n/a"
    status = r.get("status")
    if status == "slow":
        return f"> 60 s ({r.get('first_call_s') or 0:.0f} s, 1 call)"
    if status != "ok":
        return {"skipped": "skipped", "oom": "OOM"}.get(status, status)
    x = 1e3 * r["median_s"]
    return (f"{x:.3g}" if x < 100 else f"{x:.0f}") + ("†" if r.get("disturbed") else "")


def _ratio(ours, ref) -> str:
    if not ours or not ref or ours.get("status") != "ok" or ref.get("status") != "ok":
        return "-"
    r = ours["median_s"] / ref["median_s"]
    return f"{r:.2f}" if r >= 0.095 else f"{r:.2g}"


def _first(r) -> str:
    return "-" if not r or r.get("first_call_s") is None else f"{r['first_call_s']:.2f}"


def _rss(r) -> str:
    return "-" if not r or r.get("status") not in ("ok", "slow") else f"{r['peak_rss_mb']:.0f}"


def _other(r) -> str:
    return "-" if not r or r.get("other_cpu_frac") is None else f"{r['other_cpu_frac']:.2f}"


def _gflops(r) -> float | None:
    """Achieved GFLOP/s of a record with XLA's FLOP count (None without one)."""
    if not r or r.get("status") != "ok" or not r.get("flops"):
        return None
    return r["flops"] / r["median_s"] / 1e9


def _share(gflops: float, r) -> str:
    """``gflops`` as a share of the rate of the record's own numpy matmul calibration (taken in the same process
    just before the job, so the two see the host alike)."""
    return f" ({100 * gflops / (CALIBRATION_FLOP / r['calib_ms'] / 1e6):.0f}%)" if r.get("calib_ms") else ""


def _rate_of(flops: float | None, r) -> str:
    """``flops`` over the record's median as GFLOP/s, with its share of the record's calibration ('-' if unknown)."""
    if not flops or not r or r.get("status") != "ok":
        return "-"
    gflops = flops / r["median_s"] / 1e9
    return f"{gflops:.0f}{_share(gflops, r)}"


def _rate(r) -> str:
    """Achieved GFLOP/s of a record (XLA's FLOP count) and its share of the job's own matmul calibration."""
    return _rate_of((r or {}).get("flops"), r)


def _rate_needed(ours, ref) -> str:
    """The rate at which our FLOPs would have to run for ours / authors = `GOAL_RATIO`, and its share of our job's
    calibration: near or above 100%, the row cannot reach the goal without doing fewer FLOPs."""
    if _gflops(ours) is None or not ref or ref.get("status") != "ok":
        return "-"
    needed = ours["flops"] / (GOAL_RATIO * ref["median_s"]) / 1e9
    return f"{needed:.0f}{_share(needed, ours)}"


def nfn_table(best) -> list[str]:
    rows = []
    nfn_names = {job for row in NFN_ROWS for job in row[:2]}
    batches = sorted({r["batch"] for r in best.values() if r["job"] in nfn_names})
    for ref, ours, name in NFN_ROWS:
        for batch in batches:
            for mode in MODES:
                a, o = _get(best, job=ref, mode=mode, batch=batch), _get(best, job=ours, mode=mode, batch=batch)
                if a is None and o is None:
                    continue
                params = f"{(a or {}).get('n_params', '-')} / {(o or {}).get('n_params', '-')}"
                rows.append([name, batch, mode, _ms(a), _ms(o), _ratio(o, a), _rate(o), _rate_needed(o, a),
                             _first(o), _first(a),
                             params, f"{_rss(a)} / {_rss(o)}", f"{_other(a)} / {_other(o)}"])
    return harness.markdown_table(["model", "batch", "mode", "authors ms", "ours ms", "ours / authors",
                                   "our GFLOP/s (% of calibration)", "GFLOP/s for 0.33", "our first call s",
                                   "authors' first call s",
                                   "params authors / ours", "peak RSS MB a / o", "other CPU a / o"], rows)


def counted_flops(result: dict) -> dict[str, dict]:
    """Job key -> the authors' FLOP count of that NFN job (``--count-flops`` records kept in the result)."""
    return {job_key(r): r for r in result.get("flop_counts", []) if r.get("status") == "counted"}


def _products_flops(cell: dict | None) -> float | None:
    """The FLOPs of the matrix products of our compiled step (XLA's dots, from its `profiled_steps` cell)."""
    return (cell or {}).get("products_flops") or None


def _flops_ratio(ours_flops: float | None, count: dict | None) -> float | None:
    return None if not ours_flops or not count or not count.get("flops") else ours_flops / count["flops"]


def arithmetic_table(best, counts: dict[str, dict], profiled: dict | None = None) -> list[str]:
    """The NFN rows' matrix-product FLOPs, the authors' (torch's count, `counted_flops`) against ours (XLA's dots,
    ``profiled`` cells), and the rate at which each side runs them (FLOPs / its median; % of its job's own
    calibration); [] without counts."""
    if not counts:
        return []
    profiled = profiled or {}
    rows = []
    for ref, ours, name in NFN_ROWS:
        for count in sorted((c for c in counts.values() if c["job"] == ref), key=lambda c: (c["batch"], c["mode"])):
            batch, mode = count["batch"], count["mode"]
            a, o = _get(best, job=ref, mode=mode, batch=batch), _get(best, job=ours, mode=mode, batch=batch)
            dots = _products_flops(profiled.get((ours, batch, mode)))
            flops_ratio = _flops_ratio(dots, count)
            rows.append([name, batch, mode, f"{count['flops'] / 1e9:.3g}", "-" if not dots else f"{dots / 1e9:.3g}",
                         "-" if flops_ratio is None else f"{flops_ratio:.2f}", _rate_of(count["flops"], a),
                         _rate_of(dots, o), _ratio(o, a)])
    stamps = sorted(c.get("counted_utc") or "undated" for c in counts.values())
    versions = ", ".join(sorted({str(c.get("torch")) for c in counts.values()}))
    return ["### Arithmetic against the authors'", "",
            "The matrix products of one call, counted on both sides: the authors' by torch's `FlopCounterMode` "
            "(matrix products, batched products, convolutions and their gradients, one untimed call of the same "
            f"job, `--count-flops`, {stamps[0]} to {stamps[-1]} UTC with torch {versions}; elementwise work is not "
            "counted), ours from XLA's dots in the compiled step "
            "(`step_profile.json`: FLOPs of every dot). Each side's rate: its FLOPs / its median time in the table "
            "above, % of that job's own numpy matmul calibration. Where the FLOPs are equal, ours / authors <= 0.33 "
            "asks for three times the authors' rate on the same products.", "",
            *harness.markdown_table(["model", "batch", "mode", "authors GFLOP", "ours GFLOP (dots)",
                                     "FLOPs ours / authors", "authors' GFLOP/s (% of calibration)",
                                     "our GFLOP/s on the dots (% of calibration)", "time ours / authors"], rows), ""]


GOAL_RATIO, GOAL_FIRST_S = 0.33, 2.0
# our jobs that do more than the authors' step by design: (what, our job without it), set beside them in the verdict
EXTRA_WORK = {"ours_magep_normalized": ("the normalisation", "ours_magep")}
# why a training step above `common.microbatch.CPU_WHOLE_ROWS` rows (in micro-batches, one `jax.lax.scan` over them)
# compiles longer
SCAN_CAUSE = "the micro-batches' scan"
# What bounds each predictor's step, from the per-op profiles in the docs (where a row misses the goal).
NFN_BOUNDS = {  # kernel-time shares and floors: step_profile.md (runs of 2026-12-05 06:05-20:58)
    "MAGEP-NFN": "the authors' architecture: no scale normalisation (`normalize=False`; their code has none) and "
                 "fixed random couplings (`freeze_phi=True`, their buffers), as this row runs since the run of "
                 "2026-12-05 20:45 (before, it ran the library's default, the next row); its training step's program "
                 "is 391 / 505 / 552 kernels at batch 8 / 64 / 256 (forward 150 / 180 / 190), 101 of them matrix-"
                 "vector products that XLA compiles one module each (the zoo's networks read one input channel, so "
                 "every W^(l,0) is a column, every product with it a matrix-vector product); written as broadcast "
                 "products and sums they took 1.1 s off the first call at batch 8 and made the step 7-23% slower, a "
                 "saving spent again after about 700 steps (no YNNPACK fusion setting takes them; docs/magep.md "
                 "§9.4); above 64 rows the micro-batches' scan adds its own kernels (docs/common.md §12); its "
                 "products' gradients read A^T from a copy, which YNNPACK takes (steps 5-15% faster)",
    "MAGEP-NFN, normalised": "the library's default (`normalize=True`): the same predictor with its scale "
                             "normalisation (`magep.normalize_scale`, docs/magep.md §4; not in the authors' "
                             "architecture) before each of its three polynomial layers, so more work than the "
                             "authors' step: measured against the row above (2026-12-05 20:40, persistent processes, "
                             "bursts of calls alternated, six rounds) the training step 15-17% slower and its first "
                             "call 0.8-1.0 s longer (2.33 / 2.76 / 3.00 against 1.52 / 1.71 / 2.08 s at batch 8 / "
                             "64 / 256); compile alone 1.79 / 2.05 / 2.33 against 1.14 / 1.29 / 1.54 s for 572 / 819"
                             " / 783 kernels against 391 / 505 / 552; per layer and tensor a max-abs reduction, the "
                             "max-scaled copy and the normalised output, each a kernel of its own since the 2L "
                             "tensors differ in shape; its per-channel factors folded into the blocks instead (no "
                             "normalised copy written) gave 712 and 1,055 kernels against 625 and 831, each factor's "
                             "gradient a reduction of its own (docs/magep.md §9.4)",
    "Monomial-NFN": "bound by its products and its bytes: at batch 64 its 70 products alone take 77% of its "
                    "training step and its roofline bound 72% (step_profile run of 10:44; the products 79-89% in "
                    "three runs before, on another host), within 12% of that hot in cache and laid out beforehand, "
                    "10-35% slower as PyTorch batched matmuls; the goal allowed 65% of our step in the vs_reference "
                    "run of 10:13, 74% at 03:10 and 91% at 09:08 (docs/magep.md §9.4)",
    "HNP (nfn)": "bound by its products at batch 64 (77% of the training step and 81% of the forward in the "
                 "step_profile run of 10:44, the roofline bounds 93% and 84%; the products 68-75% of the training "
                 "step in three runs before; the goal allowed 71% of it at 10:13, 62% at 03:10, 73% at 09:08; hot "
                 "in cache 67.9 ms, as PyTorch batched matmuls 79 ms, docs/magep.md §9.4); at batch 256 the "
                 "micro-batches' scan compiles about 1 s longer than one chunk, half of it the accumulation's add "
                 "kernels, one per parameter array (docs/common.md §12)",
    "NP (nfn)": "bound by its products in the training step at batch 64 (85% of it in the step_profile run of "
                "10:44, 66-73% in three runs before; the goal allowed 86% at 10:13, 66% at 03:10, 61% at 09:08; hot "
                "in cache 59.6 ms, as PyTorch batched matmuls 86 ms), its forward's products at the goal (18.2 ms "
                "hot in cache against 20.4; docs/magep.md §9.4); a first call is tracing about 2,000 operations "
                "(0.2-0.8 s), lowering 0.1-0.2 s and XLA's compile; at batch 256 the micro-batches' scan adds its "
                "kernels (docs/common.md §11, §12)",
    "Transformer-NFN": "since 14:00 the encoder evaluates its last equivariant layer and the invariant layer as one "
                       "map (`transformer_nfn.readout`: the invariant layer reads the attention outputs only through "
                       "QK and VO's row sums, so products of coefficients replace them; training step 36-38% faster); "
                       "in the runs of 14:05 and 14:40 every training cell met the goal (0.18-0.28) and every first "
                       "call (1.3-2.0 s); the forward at 256 runs in 16-row chunks, 1.3x its forward at 64 per row, "
                       "layout 26% of its kernel time (step_profile run of 14:22), and whole batches of 256 were no "
                       "faster (two rounds, 14:30: 51.8 and 48.0 against 60.4 and 42.9 ms chunked); before, it was "
                       "bound by memory traffic (XLA's byte count at the copy bandwidth 82-107% of each step at 10:44;"
                       " docs/magep.md §9.4)",
}


def profiled_steps(out_dir: str) -> dict:
    """(our job, batch, mode) -> that step's cell of the `benchmarks.step_profile` results beside ours
    (``step_profile.json``: its products-alone time, kernel counts, ...; empty without one), with ``bound_s``, its
    roofline bound in that run (`harness.roofline_bound_s`), and ``copy_gbps``, that run's copy bandwidth, where
    the run has a calibration."""
    found = harness.read_json(os.path.join(out_dir, "step_profile.json"), {}) or {}
    calibration = (found.get("run") or {}).get("calibration")
    bound = lambda c: harness.roofline_bound_s(c.get("flops"), c.get("bytes_accessed"), calibration)
    return {(c["job"], c["batch"], c["mode"]): c | ({"bound_s": bound(c), "copy_gbps": calibration["copy_gbps"]}
                                                    if calibration else {})
            for c in found.get("cells", []) if "error" not in c}


class Floors(NamedTuple):
    """A row's two floors and its products + passes, each as a share of our step within one run (`floors`), and
    the share of our step the goal allows."""
    products: float  # its matrix products alone
    bound: float | None  # its roofline bound as compiled
    passes: float | None  # its products alone, then its other kernels' bytes at the copy bandwidth
    allowed: float  # GOAL_RATIO x the authors' median / ours, in this run
    products_s: float
    where: str  # where the products were timed


def floors(cell: dict | None, ours: dict, ref, copy_gbps: float | None = None) -> Floors | None:
    """A row's floors, each as a share of our step within one run so that the host's drift between runs cancels,
    and the share of our step in this run (``ours``) that the goal allows (``ref``: the authors' record): its
    products alone, timed in our job's own process right after its step where the record has them undisturbed
    (`vs_reference_ours.products_record`; then the passes at the copy bandwidth measured in that process after
    its timed calls, ``ours["copy_gbps"]``, or for a record without it this run's ``copy_gbps``), else in its
    `profiled_steps` cell's run (at that run's copy bandwidth); its roofline bound in the cell's run; and its
    products followed by the bytes of every other kernel of the step (`step_profile.kernel_bytes` of the cell) at
    the copy bandwidth, the step as if its passes ran one after the other at memory speed. None where the products'
    time or the authors' is unknown."""
    if not ref or ref.get("status") != "ok":
        return None
    if ours.get("products_alone_s") and (ours.get("products_other_cpu_frac") or 0.0) <= CONTENDED:
        products_s, step_s, where = ours["products_alone_s"], ours["median_s"], "its own process"
        copy_gbps = ours.get("copy_gbps") or copy_gbps
    elif cell and cell.get("products_alone_s"):
        products_s, step_s, where = cell["products_alone_s"], cell["median_s"], "step_profile's run"
        copy_gbps = cell.get("copy_gbps")
    else:
        return None
    bound = cell["bound_s"] / cell["median_s"] if cell and cell.get("bound_s") else None
    passes = None
    if cell and cell.get("kernel_bytes") and copy_gbps:
        from benchmarks.step_profile import products_and_passes_s  # it imports this module

        passes = products_and_passes_s(products_s, cell["kernel_bytes"], copy_gbps) / step_s
    return Floors(products_s / step_s, bound, passes, GOAL_RATIO * ref["median_s"] / ours["median_s"], products_s,
                  where)


def _profile_text(f: Floors | None) -> str:
    """A row's `floors` as text ('' where unknown)."""
    if f is None:
        return ""
    side = lambda share: "above" if share > f.allowed else "below"
    text = (f", products alone {1e3 * f.products_s:.3g} ms, {f.products:.0%} of our step in {f.where}, "
            f"{'more' if f.products > f.allowed else 'less'} than the {f.allowed:.0%} of ours the goal allows")
    if f.bound is not None:
        text += f", its roofline bound in step_profile's run {f.bound:.0%} ({side(f.bound)} the goal's share)"
    if f.passes is not None:
        text += (f", products + passes (its other kernels' bytes at the copy bandwidth after the products) "
                 f"{f.passes:.0%} ({side(f.passes)} the goal's share)")
    return text


def _verdict(ratio: float | None, slow_first: bool, f: Floors | None, first_cause: str = "",
             without: str = "") -> str:
    """Why a row misses the goal, in words: its ratio at a floor (the products' or the roofline bound's share
    above the goal's), at its products + passes (their share above it), not shown at one, or without a profile;
    and/or its first call, with ``first_cause`` in brackets where given; then ``without`` where given (the same
    row without the work our step adds by design, `EXTRA_WORK`)."""
    why = []
    if ratio is not None and ratio > GOAL_RATIO:
        if f is None:
            why.append("no profile")
        elif max(f.products, f.bound or 0.0) > f.allowed:
            why.append("at a floor")
        elif (f.passes or 0.0) > f.allowed:
            why.append("at its products + passes")
        else:
            why.append("not shown at a floor")
    if slow_first:
        why.append(f"first call above {GOAL_FIRST_S:g} s" + (f" ({first_cause})" if first_cause else ""))
    return "; ".join(why + ([without] if without else []))


def _without_text(best, ours: str, r: dict, a: dict | None) -> str:
    """'without <what> R, first call F s' of a row whose job does more than the authors' step by design
    (`EXTRA_WORK`): the same batch and mode of our job without it, against the same authors' record; '' for
    other jobs or where that record is missing."""
    what, job = EXTRA_WORK.get(ours, (None, None))
    b = job and _get(best, job=job, mode=r["mode"], batch=r["batch"])
    if not b or b.get("status") != "ok" or not a or a.get("status") != "ok":
        return ""
    return f"without {what} {b['median_s'] / a['median_s']:.2f}, first call {_first(b)} s"


def _pct(share: float | None) -> str:
    """A share as a percentage ('-' for None)."""
    return "-" if share is None else f"{share:.0%}"


FIRST_CALL_STAGES = ("trace", "lower", "compile", "first_run")  # `step_profile.first_call_stages`, in order


def stages_text(stages: dict | None, between: str = " + ", gc: str = " s, GC {:.2f} s") -> str:
    """A first call's stages (`step_profile.first_call_stages`) as text: their seconds in `FIRST_CALL_STAGES` order
    joined by ``between``, then ``gc`` formatted with the garbage collector's pauses ("-" without stages)."""
    if not stages:
        return "-"
    return between.join(f"{stages[f'{stage}_s']:.2f}" for stage in FIRST_CALL_STAGES) + gc.format(stages["gc_s"])


def _kernels_text(cell: dict | None) -> str:
    """' (N kernels; ...)' of a row's compiled step from its `profiled_steps` cell: its kernel count and, where the
    cell has them, the stages of its first call there; '' without a cell."""
    if not cell or not cell.get("kernels"):
        return ""
    stages = cell.get("first_call_stages")
    stages = f"; step_profile's first call {stages_text(stages)}" if stages else ""
    return f" ({sum(cell['kernels'].values())} kernels{stages})"


def _arithmetic_text(dots: float | None, count: dict | None, ref) -> str:
    """', products' FLOPs R x the authors' (theirs at G GFLOP/s (P%))' of a row ('' without the authors' count)."""
    ratio = _flops_ratio(dots, count)
    if ratio is None:
        return ""
    return f", its products' FLOPs {ratio:.2f} x the authors' (theirs at {_rate_of(count['flops'], ref)} GFLOP/s)"


def goal_misses(best, profiled: dict | None = None, counts: dict[str, dict] | None = None,
                copy_gbps: float | None = None) -> list[str]:
    """The NFN rows above `GOAL_RATIO` or `GOAL_FIRST_S`, each with its achieved and needed rate, the time of its
    matrix products alone and its kernel count where ``profiled`` (`profiled_steps`) has the cell, its products'
    FLOPs against the authors' where ``counts`` (`counted_flops`) has theirs, and what bounds each model
    (`NFN_BOUNDS`)."""
    from common.microbatch import CPU_WHOLE_ROWS

    profiled, counts = profiled or {}, counts or {}
    misses, table = {}, []
    for ref, ours, name in NFN_ROWS:
        for r in sorted((r for r in best.values() if r["job"] == ours and r.get("status") == "ok"),
                        key=lambda r: (r["batch"], r["mode"])):
            a = _get(best, job=ref, mode=r["mode"], batch=r["batch"])
            ratio = None if not a or a.get("status") != "ok" else r["median_s"] / a["median_s"]
            slow_first = (r.get("first_call_s") or 0) > GOAL_FIRST_S
            if (ratio is not None and ratio > GOAL_RATIO) or slow_first:
                cell = profiled.get((ours, r["batch"], r["mode"]))
                count = counts.get(job_key(dict(job=ref, mode=r["mode"], batch=r["batch"])))
                shares = floors(cell, r, a, copy_gbps)
                ratio_text = "-" if ratio is None else f"{ratio:.2f}"
                misses.setdefault(name, []).append(
                    f"batch {r['batch']} {r['mode']} {ratio_text} at {_rate(r)} GFLOP/s (0.33 needs "
                    f"{_rate_needed(r, a)}){_profile_text(shares)}"
                    f"{_arithmetic_text(_products_flops(cell), count, a)}, first call {_first(r)} s"
                    f"{_kernels_text(cell)}")
                flops_ratio = _flops_ratio(_products_flops(cell), count)
                table.append([name, r["batch"], r["mode"], ratio_text, _first(r)]
                             + [_pct(getattr(shares, field) if shares else None)
                                for field in ("products", "bound", "passes", "allowed")]
                             + ["-" if flops_ratio is None else f"{flops_ratio:.2f}",
                                _verdict(ratio, slow_first, shares,
                                         SCAN_CAUSE if r["mode"] == "fwdbwd" and r["batch"] > CPU_WHOLE_ROWS else "",
                                         _without_text(best, ours, r, a))])
    if not misses:
        return []
    lines = ["### Rows above the goal", "",
             f"Each row above {GOAL_RATIO} or with a first call above {GOAL_FIRST_S:g} s: ours / authors at our "
             "achieved rate, and the rate our FLOPs would need for the goal (% of the job's calibration; near or "
             "above 100% the goal needs fewer FLOPs, not a better schedule). First calls are tracing, lowering "
             "and XLA's CPU compile, mostly LLVM code generation (with LLVM's loop unroller off in our processes "
             "since the run of 2026-12-05 19:28, as in every command line: each compile 10-50% shorter, "
             "`common.llvm_options`): the fused loops in 32 modules compiled in "
             "parallel, and one module for each operation left outside a fusion or a library call; above 64 rows "
             "the micro-batches' scan adds its own kernels (\"the micro-batches' scan\" below: whole batches compile "
             "0.05-1.4 s sooner and their steps run as fast or up to 19% slower, every step; docs/common.md §12); "
             "a rerun reads the program from the persistent "
             "compilation cache (docs/common.md §11). Two floors of each step, each as a share of our step "
             "within one run beside the share of ours the goal allows in this one, so that neither compares times "
             "of two runs: the time of its matrix products alone, every dot of the compiled step computed by one "
             "program with nothing else, each on operands of its own, timed in our job's own process right after "
             "its step where the record has it (the authors' job of the same shape ran just before that process), "
             "else in `step_profile.json`'s run; and its roofline bound (FLOPs at the matmul rate, "
             "bytes at the copy bandwidth) in step_profile's run, whose kernel time by kind and kernel counts are "
             "quoted per row where `step_profile.json` beside these results has the cell. Where the products' "
             "share is the larger, the step cannot meet the goal with these products on this machine, within the "
             "13% by which other ways of timing the same products differ and the drift of the authors' times "
             "between runs (docs/magep.md §9.4): `step_profile.md`. Beside them, products + passes: the products "
             "alone followed by every other kernel of the step (its passes: layout, reductions, elementwise work) "
             "moving its operands and results (`step_profile.kernel_bytes`"
             + (", counted after step_profile's run for its cells that had none, from the same program compiled "
                "again: `step_profile --count-bytes`" if any(c.get("kernel_bytes_counted_utc")
                                                            for c in profiled.values()) else "")
             + ") at the copy bandwidth where the products "
             "were timed (our job's process, measured after its timed calls; for records from before 2026-12-06 "
             "17:05 the run's), the step's time as if its kernels ran one after the other at those two "
             "limits; no floor (kernels whose data sit in the cache move faster, and two can run at once), but "
             "where it is above the goal's share the goal asks for passes that beat memory speed or overlap the "
             "products. \"step_profile's first call a + b + c + d "
             "s\": the same step's first call in that run, stage by stage: trace + lower + compile + first run "
             "(which sets up the YNNPACK fusions and faults the buffers in), and the garbage collector's pauses "
             "within them (docs/common.md §11).", "",
             "In short, per row: its two floors and its products + passes as shares of our step against the share "
             "the goal allows; \"at a floor\": a floor's share is the larger, so the step needs fewer FLOPs or "
             "bytes rather than a better schedule; \"at its products + passes\": no floor is, but products + passes "
             "is; \"not shown at a floor\": none of the three is above the goal's share; products' FLOPs / "
             "authors': our step's dots against torch's count of the authors' products (the arithmetic table "
             "above).", "",
             *harness.markdown_table(["model", "batch", "mode", "ours / authors", "first call s", "products alone",
                                      "roofline bound", "products + passes", "goal allows",
                                      "products' FLOPs / authors'", "why"],
                                     table), ""]
    for name, rows in misses.items():
        lines += [f"- **{name}** ({NFN_BOUNDS[name]}): " + "; ".join(rows) + "."]
    return lines + [""]


TSW_NAMES = {"tsw_chain": "TS-Sobolev TSWChain", "dbtsw": "DbTSW eager", "dbtsw_compiled": "DbTSW compiled",
             "pot": "POT SW", "ott": "OTT-JAX SW", "ours_tsw_chain": "ours TSW-SL fast (p=1)",
             "ours_tsw_weighted": "ours TSW-SL a,b (p=2)", "ours_tsw_distance": "ours TSW-SL distance (p=2)",
             "ours_dbtsw": "ours Db-TSW (p=2)", "ours_sw": "ours SW (p=2)"}
TSW_RATIOS = (("ours_tsw_chain", "tsw_chain"), ("ours_dbtsw", "dbtsw"), ("ours_dbtsw", "dbtsw_compiled"),
              ("ours_sw", "pot"), ("ours_sw", "ott"), ("ours_tsw_chain", "pot"))


def tsw_tables(best) -> list[str]:
    cells = sorted({(r["trees"], r["lines"], r["d"], r["n"]) for r in best.values()
                    if r["job"] in TSW_NAMES and r.get("mode") in MODES})
    if not cells:
        return []
    lines = []
    columns = list(TSW_NAMES)
    for mode in [m for m in MODES if any(r.get("mode") == m and r["job"] in TSW_NAMES for r in best.values())]:
        rows = []
        for trees, k, d, n in cells:
            get = lambda j: _get(best, job=j, mode=mode, n=n, d=d, trees=trees, lines=k)  # noqa: E731
            rows.append([f"{trees} x {k}", d, n, *[_ms(get(j)) for j in columns],
                         *[_ratio(get(a), get(b)) for a, b in TSW_RATIOS]])
        header = ["L x k", "d", "N", *[TSW_NAMES[j] for j in columns],
                  *[f"{TSW_NAMES[a].split(' (')[0]} / {TSW_NAMES[b]}" for a, b in TSW_RATIOS]]
        lines += [f"### TSW / SW {mode}: median ms per call (ratios ours / theirs)", "",
                  *harness.markdown_table(header, rows), ""]
    rows = []
    for trees, k, d, n in cells:
        get = lambda j, m: _get(best, job=j, mode=m, n=n, d=d, trees=trees, lines=k)  # noqa: E731
        rows.append([f"{trees} x {k}", d, n, *[f"{_rss(get(j, 'fwd'))} / {_rss(get(j, 'fwdbwd'))}" for j in columns],
                     *[f"{_first(get(j, 'fwd'))} / {_first(get(j, 'fwdbwd'))}" for j in ("dbtsw_compiled", "ott")
                       + OURS_TSW]])
    header = ["L x k", "d", "N", *[f"RSS MB {TSW_NAMES[j]}" for j in columns],
              *[f"first call s {TSW_NAMES[j]}" for j in ("dbtsw_compiled", "ott") + OURS_TSW]]
    lines += ["### TSW / SW: peak RSS MB (fwd / fwd+bwd) and first calls, s (fwd / fwd+bwd)", "",
              *harness.markdown_table(header, rows), ""]
    return lines


def _traffic(r, copy_gbps: float | None) -> str:
    """A record's rate of memory traffic as XLA counts it (``bytes_accessed`` / median time) and its share of
    the run's copy bandwidth ``copy_gbps``."""
    if not r.get("bytes_accessed"):
        return "- (no byte count)"
    gbps = r["bytes_accessed"] / r["median_s"] / 1e9
    return f"{gbps:.1f} GB/s" + (f" ({100 * gbps / copy_gbps:.0f}% of the copy bandwidth)" if copy_gbps else "")


def _sort_and_passes(r, budget_s: float, copy_gbps: float | None) -> str:
    """The host sort's time in Db-TSW record ``r`` against ``budget_s`` (the time the goal allows), and with its
    XLA-counted bytes at ``copy_gbps`` beside it (sort + passes; "at its sort + passes" from 100% of the budget
    on). Empty without a sort time."""
    sort_s = r.get("host_sort_s")
    if not sort_s:
        return ""
    text = (f"; the host sort alone {1e3 * sort_s:.3g} ms, {100 * sort_s / budget_s:.0f}% of the "
            f"{1e3 * budget_s:.3g} ms the goal allows")
    if not copy_gbps or not r.get("bytes_accessed"):
        return text
    total_s = sort_s + r["bytes_accessed"] / (copy_gbps * 1e9)
    return (text + f"; sort + passes {1e3 * total_s:.3g} ms ({100 * total_s / budget_s:.0f}%)"
            + (": at its sort + passes" if total_s >= budget_s else ""))


def dbtsw_misses(best, copy_gbps: float | None) -> list[str]:
    """The Db-TSW cells above `GOAL_RATIO` against the authors' `torch.compile`d code, each with our rate of
    XLA-counted memory traffic, its share of the copy bandwidth (the job's own, ``copy_gbps`` of its record, or for
    a record without it the run's ``copy_gbps``, GB/s, or None) and `_sort_and_passes`."""
    misses = []
    for r in sorted((r for r in best.values() if r["job"] == "ours_dbtsw" and r.get("status") == "ok"),
                    key=lambda r: (r["mode"], r["d"], r["trees"], r["n"])):
        ref = _get(best, job="dbtsw_compiled", mode=r["mode"], n=r["n"], d=r["d"], trees=r["trees"], lines=r["lines"])
        if ref and ref.get("status") == "ok" and r["median_s"] / ref["median_s"] > GOAL_RATIO:
            bandwidth = r.get("copy_gbps") or copy_gbps
            misses.append(f"- {r['trees']} x {r['lines']} lines, d = {r['d']}, n = {r['n']}, {r['mode']}: "
                          f"{_ratio(r, ref)} at {_traffic(r, bandwidth)}"
                          f"{_sort_and_passes(r, GOAL_RATIO * ref['median_s'], bandwidth)}")
    if not misses:
        return []
    return ["### Db-TSW cells above the goal", "",
            f"Ours / the authors' `torch.compile`d DbTSW above {GOAL_RATIO}, with our rate of memory traffic as "
            "XLA counts it (operands and results of every fused kernel, per call / median time; the host sort in "
            "its numpy callback is not counted) and its share of the copy bandwidth (the memory rate of a plain "
            "streaming pass, measured in the job's process after its timed calls; the run's, in the header, for "
            "records from before 2026-12-06 17:05), and the time of our host sort alone (numpy, measured in the "
            "same job) against the time the goal allows (0.33 x the authors'). The step has no large matrix "
            "product, so the matmul rate is no measure for it. The authors' step sorts the same [L k, 2n] keys with "
            "`torch.sort`, 2.2-3x slower than our host sort on these cores, so our sort alone takes part of the time "
            "the goal allows (per cell below; with the host's speed it has ranged from a seventh to all of it at n >= "
            "1,000 and d = 2); what is left is "
            "passes over [L k, 2n] arrays, the gathers by sort order among them (random access: ~2.5 ns an element "
            "at n = 5,000), and at n = 100 the fixed costs of tens of kernels of microseconds each (88 in the "
            "forward + backward program at 100 x 4 lines; the callback's "
            "round trip is ~0.01 ms since it works in XLA's buffers in place); the bytes move at "
            "the rate given (near the copy bandwidth, a cell needs fewer bytes moved, not a better schedule). Sort + "
            "passes: the host sort followed by XLA's bytes at the copy bandwidth, the step's time were the sort and "
            "its passes run one after the other at those two limits (no floor: data in the cache move faster, and "
            "XLA runs independent kernels on both cores); where it reaches the time the goal allows (\"at its sort + "
            "passes\"), the goal asks for a sort faster than numpy's or passes faster than a streaming copy. Cells "
            "move by up to 0.3 between runs on this host (docs/tsw_sl.md §16.3).", "",
            *misses, ""]


def zoo_table(best) -> list[str]:
    rows = []
    for torch_job, ours_job, name, _, _, recipe_steps in ZOO.values():
        t = next((r for r in best.values() if r["job"] == torch_job), None)
        o = next((r for r in best.values() if r["job"] == ours_job), None)
        if t is None and o is None:
            continue
        step = lambda r: None if not r or r.get("model_step_s") is None else r["model_step_s"]  # noqa: E731
        fmt = lambda s: "-" if s is None else f"{1e3 * s:.3g}"  # noqa: E731
        per_s = lambda s: "-" if s is None else f"{1 / s:.1f}"  # noqa: E731
        models_h = lambda s: "-" if s is None else f"{3600 / (s * recipe_steps):.2f}"  # noqa: E731
        ts, os_ = step(t), step(o)
        speedup = "-" if ts is None or os_ is None else f"{ts / os_:.2f}"
        status = lambda r: "" if not r or r.get("status") == "ok" else f" ({r.get('status')})"  # noqa: E731
        rows.append([name, fmt(ts) + status(t), f"{fmt(os_)}{status(o)} ({(o or {}).get('models', '-')} models)",
                     f"{per_s(ts)} / {per_s(os_)}", f"{models_h(ts)} / {models_h(os_)}", speedup,
                     f"{_other(t)} / {_other(o)}"])
    if not rows:
        return []
    return ["## Zoo generation: plain PyTorch, one model at a time, against our vmapped populations", "",
            "ms per model-step (one optimizer step of one model); models per hour at the recipe's length "
            f"(CNN {ZOO['cnn'][5]} steps: 86 epochs x 118 steps; SIREN {ZOO['siren'][5]} steps); speed-up = "
            "PyTorch ms / our ms (target >= 3).", "",
            *harness.markdown_table(["recipe", "PyTorch ms / model-step", "ours ms / model-step",
                                     "model-steps/s PyTorch / ours", "models/hour PyTorch / ours", "speed-up",
                                     "other CPU t / o"], rows), ""]


def contention_table(best) -> list[str]:
    """Per job: the share of the CPUs other processes used while it was timed, the load before it started, its
    numpy matmul calibration and how many records it has."""
    rows = [[f"`{key}`", r.get("status"), _other(r),
             "-" if r.get("busy_before") is None else f"{r['busy_before']:.2f}",
             "-" if r.get("calib_ms") is None else f"{r['calib_ms']:.2f}", r["n_records"],
             "yes" if r.get("disturbed") and r.get("status") in ("ok", "slow") else ""]
            for key, r in sorted(best.items()) if r.get("status") != "skipped"]
    if not rows:
        return []
    return ["## Contention per job", "",
            "`other CPU` = share of all CPUs other processes used during the timed calls; `busy before` = share "
            "of all CPUs busy just before the job started; calibration = median ms of a 512 x 512 float32 numpy "
            "matmul in the job's process.", "",
            *harness.markdown_table(["job", "status", "other CPU", "busy before", "calibration ms", "records",
                                     "disturbed"], rows), ""]


def _group(record: dict) -> str:
    """The report's name for a record's group of jobs."""
    return "NFN" if "batch" in record else "TSW / SW" if record["job"] in TSW_NAMES else "zoo"


def measured_when(best: dict[str, dict]) -> str:
    """One line: the minutes (UTC) in which each group's reported records were measured (a resumed run keeps
    earlier runs' records, so the run header above dates only the last run); records from before the
    timestamps were kept are counted apart; skipped jobs are left out."""
    groups = {}
    for r in (r for r in best.values() if r.get("status") != "skipped"):
        groups.setdefault(_group(r), []).append(r.get("measured_utc"))
    parts = []
    for name, stamps in groups.items():
        known = sorted(s for s in stamps if s)
        undated = len(stamps) - len(known)
        says = ([f"{known[0]} to {known[-1]} UTC"] if known else []) + (
            [f"{undated} record(s) from earlier runs (undated)"] if undated else [])
        parts.append(f"{name} " + " and ".join(says))
    return "Measured: " + "; ".join(parts) + "."


def markdown(result: dict, profiled: dict | None = None) -> str:
    """The report of a run's records; ``profiled``: the NFN steps' `benchmarks.step_profile` cells
    (`profiled_steps`), quoted in the rows above the goal."""
    best = best_records(result["records"], result["options"]["contended"])
    counts = counted_flops(result)
    lines = ["# Side by side with the authors' code (CPU)", ""]
    if result.get("note"):
        lines += [result["note"], ""]
    if result["smoke"]:
        lines += ["**SMOKE RUN under load: NOT evidence.** Every job ran with a fixed small number of timed calls "
                  "and without waiting for a quiet machine; the figures only show that each job runs and the "
                  "report renders. The quiet measurement is the command in `benchmarks/vs_reference.py`.", ""]
    lines += [*harness.run_markdown(result["run"]), measured_when(best),
              f"Jobs: {len(best)} ({len(result['records'])} records); each in its own process, interleaved "
              f"authors / ours{passes_text(result['records'])}, protocol in `benchmarks/vs_reference.py`. "
              "Contention: `other CPU` = share of "
              "all CPUs other processes used while a job was timed; above "
              f"{result['options']['contended']:.2f} a record is disturbed (rerun; † = only disturbed records). "
              f"Numpy 512 x 512 matmul calibration per job: median {_calib(best)} ms.", ""]
    skipped = sorted({(r["job"], r.get("error", "")) for r in best.values() if r.get("status") == "skipped"})
    if skipped:
        lines += ["Skipped:", "", *[f"- `{job}`: {why}" for job, why in skipped], ""]
    missing = [key for key in result.get("planned", []) if key not in best]
    if missing:
        lines += [f"Not run ({len(missing)} planned jobs: the run stopped, or is still running, before them):", "",
                  *[f"- `{key}`" for key in missing], ""]
    failed = sorted({(r["job"], r.get("status"),
                      (r.get("error") or f"first call {r.get('first_call_s') or 0:.0f} s")[:160])
                     for r in best.values() if r.get("status") not in ("ok", "skipped")})
    if failed:
        lines += ["Failed:", "", *[f"- `{job}` ({status}): {why}" for job, status, why in failed], ""]
    copy_gbps = (result["run"].get("calibration") or {}).get("copy_gbps")  # for records without their own
    if any("batch" in r for r in best.values()):
        lines += ["## NFN predictors: median ms per batch", "",
                  "fwd = forward; fwdbwd = forward + BCE loss + gradient w.r.t. all parameters (ours: as the library "
                  "predicts and trains, in micro-batches of 16 rows above batch 64). Goal: ours / "
                  "authors <= 0.33 and our first call <= 2 s. Our GFLOP/s = XLA's FLOP count of one call "
                  "(`cost_analysis`) / our median time; % of the rate of the job's own numpy 512 x 512 matmul "
                  "calibration (`calib_ms`, per job in the contention table); GFLOP/s for 0.33 = the rate our "
                  "FLOPs would need for ours / authors = 0.33.", "", *nfn_table(best), "",
                  *arithmetic_table(best, counts, profiled),
                  *goal_misses(best, profiled, counts, copy_gbps)]
    tables = tsw_tables(best)
    if tables:
        lines += ["## Tree-sliced and sliced Wasserstein", "", *tables, *dbtsw_misses(best, copy_gbps)]
    lines += zoo_table(best)
    lines += contention_table(best)
    commits = sorted({(r["repo"], r["commit"]) for r in best.values() if r.get("repo") and r.get("commit")})
    if commits:
        named = lambda commit: commit[:10] + (" with uncommitted changes" if commit.endswith("+modified") else "")
        lines += ["Code measured: " + "; ".join(f"{repo} @ {named(commit)}" for repo, commit in commits) + ".", ""]
    return "\n".join(lines) + "\n"


def passes_text(records: list[dict]) -> str:
    """The groups whose records come from more than one pass of the interleaved job list, and how many; where only
    some of a group's jobs ran several passes (a resumed run that remeasured them), those jobs by name."""
    passes, jobs = {}, {}
    for r in records:
        passes[r["job"]] = max(passes.get(r["job"], 0), 1 + r.get("pass", 0))
        jobs.setdefault(_group(r), set()).add(r["job"])
    several = []
    for group, names in jobs.items():
        for n in sorted({passes[j] for j in names if passes[j] > 1}):
            these = sorted(j for j in names if passes[j] == n)
            named = "" if len(these) == len(names) else " " + ", ".join(f"`{j}`" for j in these)
            several.append(f"the {group} jobs{named} in {n} passes")
    return "" if not several else (f", {' and '.join(several)} of the list (each table cell: the job's lowest "
                                   "undisturbed median over its passes, on both sides, and its lowest first call "
                                   "over the same records)")


def _calib(best) -> str:
    values = [r["calib_ms"] for r in best.values() if r.get("calib_ms") is not None]
    return "-" if not values else f"{statistics.median(values):.2f} (range {min(values):.2f}-{max(values):.2f})"


# ------------------------------------------------------------------------------------------------ main


def select_jobs(options) -> list[dict]:
    """The jobs of the selected groups, filtered by ``--only``."""
    jobs = []
    if "nfn" in options.groups:
        jobs += nfn_jobs(options.batches, options.tnfn_batches, options.modes)
    if "tsw" in options.groups:
        jobs += tsw_jobs(options.tsw_n, options.tsw_d, options.tsw_trees, options.modes)
    if "large" in options.groups:
        jobs += large_jobs(options.large_n, options.modes)
    if "zoo" in options.groups:
        jobs += zoo_jobs(options.zoo_models, options.zoo_steps)
    if options.only:
        jobs = [j for j in jobs if j["job"] in options.only]
    return jobs


NFN_REFERENCE_JOBS = tuple(dict.fromkeys(ref for ref, _, _ in NFN_ROWS))


def count_flops(jobs: list[dict], options) -> list[dict]:
    """The authors' FLOP counts of the NFN jobs among ``jobs`` (`vs_reference_torch.count_nfn_flops`, each in its
    own process, untimed), each record dated; a job that cannot run here gives its skipped record."""
    counts = []
    for job in (j for j in jobs if j["job"] in NFN_REFERENCE_JOBS):
        command, reason = job_command(job, options)
        record = (dict(status="skipped", error=reason) if command is None
                  else without_defaults(run_job(command + ["--count-flops"], options.mem_gb, options.timeout), job))
        counts.append(dict(record, **job, counted_utc=time.strftime("%Y-%m-%d %H:%M", time.gmtime())))
        flops = record.get("flops")
        print(f"[count {len(counts)}] {job_key(job)} -> {record['status']}"
              f"{'' if flops is None else f', {flops / 1e9:.3g} GFLOP'}", flush=True)
    return counts


def merged_counts(kept: list[dict], new: list[dict]) -> list[dict]:
    """FLOP counts ``kept`` from the stored result with ``new`` ones replacing those of the same job."""
    replaced = {job_key(r) for r in new}
    return [r for r in kept if job_key(r) not in replaced] + new


def kept_records(previous: list[dict], jobs: list[dict], remeasure: bool) -> list[dict]:
    """The earlier records a resumed run keeps: all of them, or (``remeasure``) all but the selected jobs'."""
    if not remeasure:
        return list(previous)
    selected = {job_key(j) for j in jobs}
    return [r for r in previous if job_key(r) not in selected]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference-dir", default=None, help="folder holding the authors' checkouts")
    parser.add_argument("--reference-python", default=None, help="a Python with torch, numpy, einops, POT")
    parser.add_argument("--ott-python", default=None, help="a Python with jax and ott-jax")
    parser.add_argument("--groups", nargs="+", default=["nfn", "tsw", "zoo"],
                        choices=("nfn", "tsw", "zoo", "large"))
    parser.add_argument("--only", nargs="+", default=None, help="only these jobs (e.g. magep ours_magep)")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES, help="NFN and TSW modes")
    parser.add_argument("--batches", type=positive_int, nargs="+", default=list(CNN_BATCHES))
    parser.add_argument("--tnfn-batches", type=positive_int, nargs="+", default=list(TNFN_BATCHES))
    parser.add_argument("--tsw-n", type=positive_int, nargs="+", default=list(TSW_N))
    parser.add_argument("--tsw-d", type=positive_int, nargs="+", default=list(TSW_D))
    parser.add_argument("--tsw-trees", type=positive_int, nargs="+", default=list(TSW_TREES))
    parser.add_argument("--large-n", type=positive_int, nargs="+", default=list(LARGE_N))
    parser.add_argument("--zoo-models", type=positive_int, default=None, help="models our population trains")
    parser.add_argument("--zoo-steps", type=positive_int, default=None, help="steps per timed epoch / call")
    parser.add_argument("--threads", type=positive_int, default=2, help="torch threads")
    parser.add_argument("--repeats", type=positive_int, default=None, help="fixed timed calls per job (smoke)")
    parser.add_argument("--max-load", type=float, default=CONTENDED,
                        help="wait before each job until other processes use at most this share of the CPUs")
    parser.add_argument("--max-wait", type=float, default=1800.0, help="seconds to wait for a quiet machine")
    parser.add_argument("--no-wait", dest="wait", action="store_false", help="do not wait for a quiet machine")
    parser.add_argument("--contended", type=float, default=CONTENDED, help="other processes' CPU share above "
                        "which a record is disturbed")
    parser.add_argument("--reruns", type=int, default=2, help="reruns of a disturbed job")
    parser.add_argument("--passes", type=positive_int, default=1,
                        help="run the interleaved job list this many times; the tables take each job's lowest "
                        "undisturbed median over its passes")
    parser.add_argument("--mem-gb", type=float, default=20.0, help="address-space limit per job")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per job")
    parser.add_argument("--resume", action="store_true",
                        help="keep the records of the existing result (and its `note`, a text written into the "
                        "JSON by hand that heads the report); run only the jobs (in each pass) without an undisturbed "
                        "ok / slow / oom record")
    parser.add_argument("--remeasure", action="store_true",
                        help="with --resume: drop the kept records of the selected jobs and measure them again (so "
                        "their ratios come from this run), keeping every other job's records")
    parser.add_argument("--no-calibration", dest="calibration", action="store_false",
                        help="skip the driver's jitted matmul calibration (each job still calibrates)")
    parser.add_argument("--report-only", action="store_true",
                        help="measure nothing: render the Markdown report again from the stored JSON (its records "
                        "and its run's header), e.g. after the report's layout or step_profile.json changed")
    parser.add_argument("--count-flops", action="store_true",
                        help="time nothing: count the authors' matrix-product FLOPs of the selected NFN jobs (torch's "
                        "FlopCounterMode, one untimed call each), keep them in the stored result beside its timed "
                        "records and render the report again")
    parser.add_argument("--smoke", action="store_true", help=f"smoke run, NOT evidence: {SMOKE}")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    options = parser.parse_args(argv)
    if options.smoke:
        parser.set_defaults(**SMOKE)
        options = parser.parse_args(argv)
    if options.remeasure and not options.resume:
        raise ValueError("--remeasure needs --resume (without it no earlier record is kept anyway)")
    if options.reruns < 0:
        raise ValueError(f"--reruns must be >= 0, got {options.reruns}")
    return options


def stored_result(out_dir: str, option: str) -> dict:
    """The result stored in ``out_dir``; ValueError naming ``option`` (the command-line option that needs it) when
    there is none."""
    stored = harness.read_json(os.path.join(out_dir, f"{NAME}.json"), None)
    if not stored:
        raise ValueError(f"{option}: no {NAME}.json in {out_dir} (run the timed benchmark first)")
    return stored


def render_again(out_dir: str) -> tuple[dict, str]:
    """The Markdown report of the result stored in ``out_dir`` rendered again (its JSON untouched) with the
    `benchmarks.step_profile` cells beside it; ValueError when there is no stored result. Returns (the stored
    result, the report's text)."""
    stored = stored_result(out_dir, "--report-only")
    text = markdown(stored, profiled_steps(out_dir))
    harness.write_text(os.path.join(out_dir, f"{NAME}.md"), text)
    return stored, text


def add_flop_counts(options) -> tuple[dict, str]:
    """``--count-flops``: the stored result with the authors' FLOP counts of the selected NFN jobs merged in
    (`count_flops`, `merged_counts`), written back with its report; ValueError when there is no stored result."""
    stored = stored_result(options.out, "--count-flops")
    stored["flop_counts"] = merged_counts(stored.get("flop_counts", []), count_flops(select_jobs(options), options))
    text = markdown(stored, profiled_steps(options.out))
    harness.write_results(options.out, NAME, stored, text)
    return stored, text


def main(argv=None) -> dict:
    options = parse_args(argv)
    if options.report_only or options.count_flops:
        stored, text = add_flop_counts(options) if options.count_flops else render_again(options.out)
        print(text)
        return stored
    run = harness.start_run(calibrate=options.calibration)
    smoke = options.smoke or options.repeats is not None or not options.wait
    stored = harness.read_json(os.path.join(options.out, f"{NAME}.json"), {})
    previous = stored if options.resume else {}
    if previous.get("smoke", False) != smoke:  # a measurement never mixes smoke and quiet records
        previous = {}
    jobs = select_jobs(options)
    records = kept_records(previous.get("records", []), jobs, options.remeasure)
    done = collections.Counter(job_key(r) for r in records
                               if is_clean(r, options.contended) and r.get("status") in ("ok", "slow", "oom"))

    profiled = profiled_steps(options.out)

    def write() -> tuple[dict, str]:  # after every job, so a stopped run keeps what it measured
        result = {"records": records, "smoke": smoke, "run": run.finish(), "planned": [job_key(j) for j in jobs],
                  "options": {k: v for k, v in vars(options).items()},
                  "flop_counts": stored.get("flop_counts", []),  # the code's, not the host's: kept across runs
                  **({"note": previous["note"]} if previous.get("note") else {})}  # a resumed folder keeps its note
        text = markdown(result, profiled)
        harness.write_results(options.out, NAME, result, text)
        return result, text

    for pass_index, (i, job) in itertools.product(range(options.passes), enumerate(jobs)):
        if done[job_key(job)] > pass_index:  # a resumed run: this pass of the job has a clean record already
            continue
        new = [dict(r, **{"pass": pass_index}) for r in measure_job(job, options)]
        records += new
        last = new[-1]
        median = last.get("median_s")
        print(f"[pass {pass_index + 1}/{options.passes}, {i + 1}/{len(jobs)}] {job_key(job)} -> {last['status']}"
              f"{'' if median is None else f', median {1e3 * median:.3g} ms'}"
              f"{'' if is_clean(last, options.contended) else ' (disturbed)'}", flush=True)
        write()
    result, text = write()
    print(text)
    return result


if __name__ == "__main__":
    main()
