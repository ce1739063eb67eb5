"""`common.llvm_options`: LLVM options reach XLA's CPU compiles through XLA_FLAGS, set before the first computation
only, never over the user's own choice. Each case runs in a fresh process (this one's backends exist already)."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

import jax
import pytest

from common import llvm_options

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMPUTE = "import jax, jax.numpy as jnp; print(float(jax.jit(lambda x: jnp.sin(x) * 2)(jnp.ones(4)).sum()))"


def run(code: str, **env) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=base | env, capture_output=True, text=True,
                          timeout=120)


def test_options_reach_llvm_when_set_before_the_first_computation():
    """An unknown LLVM option set first makes LLVM complain at the compile (so the options reach it); the
    default options compile and compute without complaint, and XLA_FLAGS carries them."""
    bad = run("from common import llvm_options; assert llvm_options.set_options(('-no-such-llvm-option=3',)); "
              + COMPUTE)
    assert "Unknown command line argument '-no-such-llvm-option=3'" in bad.stderr
    good = run("import os; from common import llvm_options; assert llvm_options.set_options(); "
               "print(os.environ['XLA_FLAGS']); " + COMPUTE)
    assert good.returncode == 0, good.stderr
    assert "--xla_backend_extra_options=-unroll-threshold=0" in good.stdout
    assert "Unknown command line argument" not in good.stderr
    assert abs(float(good.stdout.split()[-1]) - 8 * 0.8414709848) < 1e-5


def test_nothing_is_set_after_the_first_computation_or_over_the_users_flags():
    late = run("import os, jax.numpy as jnp; jnp.ones(2).sum(); from common import llvm_options; "
               "print(llvm_options.set_options(), os.environ.get('XLA_FLAGS'))")
    assert late.stdout.split() == ["False", "None"], late.stderr
    mine = "--xla_backend_extra_options=-vectorize-slp=false"
    kept = run("import os; from common import llvm_options; print(llvm_options.set_options()); "
               "print(os.environ['XLA_FLAGS'])", XLA_FLAGS=mine)
    assert kept.stdout.split() == ["False", mine], kept.stderr
    other = run("import os; from common import llvm_options; print(llvm_options.set_options()); "
                "print(os.environ['XLA_FLAGS'])", XLA_FLAGS="--xla_cpu_use_thunk_runtime=true", JAX_PLATFORMS="cpu")
    assert other.stdout.split() == ["True", "--xla_cpu_use_thunk_runtime=true",
                                    "--xla_backend_extra_options=-unroll-threshold=0"], other.stderr


def test_this_process_is_left_alone():
    """Once JAX's backends exist, set_options changes nothing (XLA has read XLA_FLAGS)."""
    jax.numpy.zeros(1).block_until_ready()
    before = os.environ.get("XLA_FLAGS")
    assert llvm_options.set_options() is False
    assert os.environ.get("XLA_FLAGS") == before


@pytest.mark.parametrize("argv, expected", [([], True), (["--llvm-unroll"], False)])
def test_command_line_flag(argv, expected, monkeypatch):
    parser = argparse.ArgumentParser()
    llvm_options.add_arguments(parser)
    args = parser.parse_args(argv)
    assert args.llvm_unroll is not expected
    calls = []
    monkeypatch.setattr(llvm_options, "set_options", lambda: calls.append(1) or True)
    assert llvm_options.configure(args) is expected
    assert len(calls) == int(expected)
