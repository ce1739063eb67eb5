"""`common.host_memory.keep_freed_memory`: after it, repeated jitted calls stop page-faulting their temporaries in
anew (measured in a fresh process: the minor page faults of the same calls before and after the switch)."""
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from common.host_memory import keep_freed_memory

PROGRAM = textwrap.dedent("""
    import json, resource
    import jax, jax.numpy as jnp
    from common.host_memory import keep_freed_memory

    a = jax.random.normal(jax.random.key(0), (8192, 144))
    b = jax.random.normal(jax.random.key(1), (144, 144))
    step = jax.jit(jax.grad(lambda b, a: jnp.sum(jnp.maximum(jnp.maximum(a, 0) @ b, 0) @ b), argnums=(0, 1)))

    def faults_per_call(calls=5):
        jax.block_until_ready(step(b, a))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(calls):
            jax.block_until_ready(step(b, a))
        return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / calls

    default = faults_per_call()
    applied = keep_freed_memory()
    print(json.dumps(dict(default=default, kept=faults_per_call(), applied=applied, again=keep_freed_memory())))
""")


def test_keep_freed_memory_stops_the_per_call_page_faults():
    if not keep_freed_memory():
        pytest.skip("no glibc here: keep_freed_memory changes nothing on this platform")
    out = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True, check=True,
                         env=dict(os.environ), cwd=pathlib.Path(__file__).parents[1])
    faults = json.loads(out.stdout.strip().splitlines()[-1])
    assert faults["applied"] and faults["again"]
    assert faults["default"] > 500  # ~25 MB of temporaries mapped in anew on every call by default
    assert faults["kept"] < 0.05 * faults["default"]
