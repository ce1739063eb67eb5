"""`common.host_memory.keep_freed_memory`: after it, repeated jitted calls stop page-faulting their temporaries in
anew (measured in fresh processes: the median minor page faults per call of the same program under each setting;
the median because a call now and then places its temporaries anew and faults them in once).

The program's temporaries (108 MiB) exceed the 64 MiB that a worker thread's glibc arena keeps, so the mmap
thresholds alone do not help while JAX runs the call on its worker thread; running it on the calling thread does."""
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from common.host_memory import keep_freed_memory

PROGRAM = textwrap.dedent("""
    import importlib.util, json, resource, sys
    # the module loaded from its file, not through `common` (which imports numpy and JAX): an arena that a thread
    # took before M_ARENA_MAX is set stays, and glibc hands it to later threads too
    spec = importlib.util.spec_from_file_location("host_memory", "common/host_memory.py")
    host_memory = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(host_memory)
    calling_thread_dispatch, keep_freed_memory = host_memory.calling_thread_dispatch, host_memory.keep_freed_memory
    mode = sys.argv[1]  # before JAX creates its client and threads:
    settings = {"thresholds": dict(calling_thread=False), "keep": {},
                "single": dict(single_arena=True, calling_thread=False)}
    applied = keep_freed_memory(**settings[mode]) if mode in settings else None
    import jax, jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (49152, 144))
    b = jax.random.normal(jax.random.key(1), (144, 144))
    step = jax.jit(jax.grad(lambda b, a: jnp.sum(jnp.maximum(jnp.maximum(a, 0) @ b, 0) @ b), argnums=(0, 1)))
    temp = step.lower(b, a).compile().memory_analysis().temp_size_in_bytes
    for _ in range(3):
        jax.block_until_ready(step(b, a))
    faults = []
    for _ in range(9):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        jax.block_until_ready(step(b, a))
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    again = keep_freed_memory(**settings[mode]) if applied else None
    print(json.dumps(dict(faults=sorted(faults)[4], applied=applied, again=again, temp=temp,
                          inline=calling_thread_dispatch())))
""")


def faults_per_call(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROGRAM, mode], capture_output=True, text=True, check=True,
                         env={k: v for k, v in os.environ.items() if k != "XLA_FLAGS"},
                         cwd=pathlib.Path(__file__).parents[1])
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_keep_freed_memory_stops_the_per_call_page_faults():
    if not keep_freed_memory(calling_thread=False):
        pytest.skip("no glibc here: keep_freed_memory changes nothing in the allocator on this platform")
    runs = {mode: faults_per_call(mode) for mode in ("default", "thresholds", "keep", "single")}
    default = runs["default"]
    assert default["temp"] > 64 * 2**20 and not default["inline"]
    assert all(runs[m]["applied"] and runs[m]["again"] for m in ("thresholds", "keep", "single"))
    pages = default["temp"] / 4096
    assert default["faults"] > 0.7 * pages  # every temporary page mapped in anew on every call (measured 27.6k a call)
    # a worker thread's arena maps blocks above 64 MiB afresh whatever the thresholds (27.6-34.5k) ...
    assert not runs["thresholds"]["inline"] and runs["thresholds"]["faults"] > 0.7 * pages
    # ... while the calling thread's heap keeps them (measured 0), as does one shared arena (0)
    assert runs["keep"]["inline"] and runs["keep"]["faults"] < 0.02 * pages
    assert runs["single"]["faults"] < 0.3 * pages
