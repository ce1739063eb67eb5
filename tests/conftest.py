"""Test-session set-up: four simulated CPU devices, so the data-parallel tests can build meshes, and one
persistent compilation cache for the whole run.

Must run before JAX initialises its backends; every test module imports jax only after this file.

The suite is dominated by XLA compiles of small programs (each eager op or jitted closure of a new shape
compiles once per process). The cache is keyed by the compiled program, so the pytest-xdist workers and the
subprocesses that tests start (which inherit these environment variables) reuse each other's compiles. It lives
in a fresh temporary folder per run (set ``JAX_COMPILATION_CACHE_DIR`` to keep one across runs).

Hypothesis (the fuzz tests, docs/input_policy.md): the default profile "ci" runs few examples, derandomised
(the same examples every run) and without deadlines (first calls compile); ``HYPOTHESIS_PROFILE=long`` runs
many more, randomised, for a nightly-style search.
"""
import os
import tempfile

# Most test programs are tiny, so XLA's compile time dominates; backend optimisation level 0 compiles them
# ~3x faster (matmuls and convolutions still run in the optimised runtime kernels).
os.environ["XLA_FLAGS"] = " ".join(filter(None, [os.environ.get("XLA_FLAGS"), "--xla_backend_optimization_level=0"]))
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="nfn_tsw_jax_cache_"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
import jax  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

jax.config.update("jax_num_cpu_devices", 4)

_NO_DEADLINE = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("ci", max_examples=6, derandomize=True, database=None, print_blob=True, **_NO_DEADLINE)
settings.register_profile("long", max_examples=500, **_NO_DEADLINE)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
