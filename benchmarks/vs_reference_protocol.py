"""The measuring protocol every job of ``benchmarks.vs_reference`` follows, in its own process.

Standard library and numpy only: the same module runs in the project's Python (our jobs), in the reference
Python that has torch (the authors' jobs, POT) and in the OTT-JAX Python, so every job is timed the same way.

One job = one fresh process: ``calibrate()`` (median ms of a 512 x 512 float32 numpy matmul, the machine's speed
now), the first call timed apart (it includes ``jax.jit`` / ``torch.compile`` compilation), then ``time_calls``:
2 warm-up calls (0 when the first took over 10 s), then at least ``min_reps`` timed calls, more while the timed
window is under ``min_window_s`` (so the ``/proc/stat`` contention reading resolves) and the total under
``budget_s``; the median and min of the timed calls. A call over ``SLOW_S`` ends the job ("slow"). Contention:
``other_cpu_frac`` = the share of all CPUs that other processes used during the timed calls. Peak memory:
``VmHWM`` of the process at the end (the peak resident set of its address space, interpreter and framework
included; not ``ru_maxrss``, which Linux carries over from the parent at fork across ``exec``, so every job
would report at least its driver's resident memory). Then, after the peak was read (so that its buffers stay out
of it), the memory bandwidth of a timed job that has XLA's byte count: ``copy_gbps``, a numpy copy of
``COPY_BYTES`` (`copy_bandwidth`), which the report sets that count against. ``emit`` prints the record as one
``RESULT {json}`` line, which the driver reads.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import sys
import time
import traceback

SLOW_S = 60.0
RESULT_PREFIX = "RESULT "


def system_busy_s() -> float | None:
    """Busy CPU seconds of the whole machine since boot (``/proc/stat``), None off Linux."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
    except (OSError, ValueError):
        return None
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def machine_busy_frac(interval_s: float = 2.0) -> float | None:
    """Share of all CPUs busy over the next ``interval_s`` seconds (this process sleeps meanwhile)."""
    start = system_busy_s()
    time.sleep(interval_s)
    end = system_busy_s()
    return None if start is None or end is None else (end - start) / (interval_s * (os.cpu_count() or 1))


class Contention:
    """Context manager: ``other_cpu_frac`` = (machine busy CPU-s - this process's CPU-s) / (wall-s x CPUs) over
    the block; 0 on a quiet machine, 0.5 when another process kept one of two cores busy."""

    def __enter__(self):
        self._wall, self._busy, self._own = time.perf_counter(), system_busy_s(), time.process_time()
        return self

    def __exit__(self, *exc):
        wall = max(time.perf_counter() - self._wall, 1e-9)
        own = time.process_time() - self._own
        busy = system_busy_s()
        self.wall_s, self.own_cores = wall, own / wall
        # /proc/stat counts in 10 ms ticks: over a block of a few ms one tick of another process reads as
        # several CPUs' worth; a share of all CPUs is at most 1
        self.other_cpu_frac = (None if busy is None or self._busy is None else
                               min(max(busy - self._busy - own, 0.0) / (wall * (os.cpu_count() or 1)), 1.0))
        return False


def time_calls(fn, *, warmup: int = 2, min_reps: int = 5, max_reps: int = 200, min_window_s: float = 1.0,
               budget_s: float = 4.0) -> dict:
    """Warm-up calls, then timed calls of ``fn()`` (see the module docstring). Returns ``warmup_s``, ``times_s``,
    ``median_s``, ``min_s``, ``reps``, ``slow``, ``other_cpu_frac`` and ``own_cores`` (this process's mean busy
    cores over the timed calls)."""
    warm = []
    for _ in range(warmup):
        start = time.perf_counter()
        fn()
        warm.append(time.perf_counter() - start)
        if warm[-1] > SLOW_S:
            return {"warmup_s": warm, "times_s": [], "slow": True}
        if warm[-1] > 10.0:
            break
    times, slow, window = [], False, time.perf_counter()
    with Contention() as c:
        while len(times) < max_reps:
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
            if times[-1] > SLOW_S:
                slow = True
                break
            elapsed = time.perf_counter() - window
            if len(times) >= min_reps and (elapsed >= min_window_s or elapsed > budget_s):
                break
    return {"warmup_s": warm, "times_s": times, "median_s": statistics.median(times), "min_s": min(times),
            "reps": len(times), "slow": slow,
            "other_cpu_frac": None if c.other_cpu_frac is None else round(c.other_cpu_frac, 3),
            "own_cores": round(c.own_cores, 3)}


CALIBRATION_SIZE = 512  # the calibration's square matmul
CALIBRATION_FLOP = 2 * CALIBRATION_SIZE**3


def calibrate(repeats: int = 15) -> float:
    """The machine's speed now: median ms of a 512 x 512 float32 numpy matmul (after 3 warm-up products)."""
    import numpy as np

    a = np.random.default_rng(0).random((CALIBRATION_SIZE, CALIBRATION_SIZE), dtype=np.float32)
    for _ in range(3):
        a @ a
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ a
        times.append(time.perf_counter() - start)
    return round(1e3 * statistics.median(times), 3)


COPY_BYTES = 256 * 2**20  # the bandwidth calibration's copy: far beyond every cache


def copy_bandwidth(repeats: int = 5) -> tuple[float, float]:
    """The memory bandwidth now: GB/s (median, best) of ``repeats`` numpy copies of ``COPY_BYTES`` (bytes read +
    bytes written: the roofline for memory-bound work), after one warm-up copy."""
    import numpy as np

    source = np.ones(COPY_BYTES // 4, np.float32)
    target = np.empty_like(source)
    np.copyto(target, source)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(target, source)
        times.append(time.perf_counter() - start)
    return 2 * COPY_BYTES / statistics.median(times) / 1e9, 2 * COPY_BYTES / min(times) / 1e9


def rss_mb(field: str = "VmRSS") -> float | None:
    """A memory figure of this process from ``/proc/self/status``, MB: ``VmRSS`` (resident now) or ``VmHWM``
    (peak resident, since this program's ``exec``); None off Linux."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """Peak resident memory of this process, MB: ``VmHWM`` where ``/proc`` has it, else ``ru_maxrss`` (which on
    Linux includes the parent's resident memory at fork, so it overstates a child's peak)."""
    peak = rss_mb("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def measure(record: dict, build, repeats: int | None = None) -> dict:
    """Runs one job: ``build()`` returns ``(call, info)`` (``info`` a dict merged into the record: config,
    n_params, versions, ...); then the calibration, the first call (its value, when it returns a number-like,
    is kept as ``value``, a sanity check), warm-up and timed calls. A ``call`` with a ``cost_analysis``
    attribute (a function returning a dict, e.g. XLA's FLOP count) has it merged into the record after the
    timed calls, so its own compile stays out of them. ``repeats`` fixes the number of timed calls
    (a smoke run, which times them even after a first call over ``SLOW_S``); None uses the protocol's adaptive
    count. Errors become ``status`` "oom" or "error" with the
    message; returns the record (also printed by ``emit``)."""
    try:
        call, info = build()
        record.update(info)
        record["calib_ms"] = calibrate()
        record["rss_before_mb"] = rss_mb()
        start = time.perf_counter()
        with Contention() as first:
            out = call()
        record["first_call_s"] = time.perf_counter() - start
        record["value"] = _scalar(out)
        if record["first_call_s"] > SLOW_S and repeats is None:  # a smoke run times its calls regardless
            record["status"] = "slow"  # its one call's contention: a slow job is not rerun for lack of a reading
            record["other_cpu_frac"] = None if first.other_cpu_frac is None else round(first.other_cpu_frac, 3)
        else:
            kw = {} if repeats is None else dict(min_reps=repeats, max_reps=repeats, min_window_s=0.0)
            timing = time_calls(call, warmup=0 if record["first_call_s"] > 10 else 2, **kw)
            record.update(timing)
            record["status"] = "slow" if timing["slow"] else "ok"
            if hasattr(call, "cost_analysis"):
                record.update(call.cost_analysis())
    except MemoryError as e:
        record.update(status="oom", error=f"MemoryError: {str(e)[:300]}")
        traceback.print_exc()
    except Exception as e:  # noqa: BLE001 - a job reports any failure as its record, the driver carries on
        message = f"{type(e).__name__}: {str(e)[:300]}"
        out_of_memory = any(s in message for s in ("RESOURCE_EXHAUSTED", "alloc", "memory", "Memory"))
        record.update(status="oom" if out_of_memory else "error", error=message)
        traceback.print_exc()
    return emit(record)


def _scalar(out) -> float | None:
    try:
        import numpy as np

        if hasattr(out, "detach"):
            out = out.detach().cpu().numpy()
        return float(np.ravel(np.asarray(out))[0])
    except Exception:  # noqa: BLE001 - the sanity value is optional
        return None


def emit(record: dict) -> dict:
    """Adds the Python version, the peak RSS (MB) and then, for a timed job with XLA's byte count
    (``bytes_accessed``), the memory bandwidth of its process now (``copy_gbps``: `copy_bandwidth`'s median, after
    the peak was read, so that its buffers stay out of it), and prints ``RESULT {json}``; returns the record."""
    record.setdefault("python", platform.python_version())
    record["peak_rss_mb"] = peak_rss_mb()
    if record.get("status") == "ok" and record.get("bytes_accessed"):  # what the report sets the bandwidth against
        try:
            record["copy_gbps"] = round(copy_bandwidth()[0], 2)
        except MemoryError:  # a job near its address-space limit keeps its record without the reading
            pass
    sys.stdout.write(RESULT_PREFIX + json.dumps(record) + "\n")
    sys.stdout.flush()
    return record


def job_arguments(description: str, choices, argv=None, flags=()):
    """The command line every job script takes: ``--job`` (one of ``choices``), ``--mode`` fwd / fwdbwd / train,
    the shape options, ``--threads``, ``--repeats``, ``--reference-dir`` and ``--mem-gb`` (applied here, as
    ``RLIMIT_AS``, before the job imports anything large); ``flags``: a script's own on / off options, as
    ``(name, help)`` pairs."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--job", required=True, choices=tuple(choices))
    parser.add_argument("--mode", required=True, choices=("fwd", "fwdbwd", "train"))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--d", type=int, default=2)
    parser.add_argument("--trees", type=int, default=25)
    parser.add_argument("--lines", type=int, default=4)
    parser.add_argument("--p", type=int, default=2)
    parser.add_argument("--models", type=int, default=1, help="zoo jobs: models trained together")
    parser.add_argument("--steps", type=int, default=4, help="zoo jobs: training steps per timed call")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=None, help="fixed number of timed calls (smoke runs)")
    parser.add_argument("--reference-dir", default=None, help="folder of the authors' checkouts")
    parser.add_argument("--mem-gb", type=float, default=None,
                        help="address-space limit of this process: a bigger request fails as an allocation error")
    for name, text in flags:
        parser.add_argument(name, action="store_true", help=text)
    args = parser.parse_args(argv)
    if args.mem_gb is not None:
        limit = int(args.mem_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return args


def base_record(args) -> dict:
    """The job's identity as the driver keys it."""
    record = {"job": args.job, "mode": args.mode}
    for name in ("batch", "n", "d", "trees", "lines", "p", "models", "steps"):
        record[name] = getattr(args, name)
    return record
