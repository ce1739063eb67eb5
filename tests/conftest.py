"""Test-session set-up: four simulated CPU devices, so the data-parallel tests can build meshes, one
persistent compilation cache for the whole run, and `common.host_memory.keep_freed_memory` as a script calls it.

Must run before JAX initialises its backends; every test module imports jax only after this file.

The suite is dominated by XLA compiles of small programs (each eager op or jitted closure of a new shape
compiles once per process). The cache is keyed by the compiled program, so the pytest-xdist workers and the
subprocesses that tests start (which inherit these environment variables) reuse each other's compiles. It lives
in a fresh temporary folder per run (set ``JAX_COMPILATION_CACHE_DIR`` to keep one across runs).

Hypothesis (the fuzz tests, docs/input_policy.md): the default profile "ci" runs few examples, derandomised
(the same examples every run) and without deadlines (first calls compile); ``HYPOTHESIS_PROFILE=long`` runs
many more, randomised, for a nightly-style search.
"""
import gc
import os
import tempfile

# Most test programs are tiny, so XLA's compile time dominates; backend optimisation level 0 compiles them
# ~3x faster (matmuls and convolutions still run in the optimised runtime kernels), and XLA CPU's older elemental
# emitters compile ~40% faster than its MLIR fusion emitters (measured on tiny programs; results may differ from the
# default emitters' in the last bits, see tests/test_eval_shape.py).
os.environ["XLA_FLAGS"] = " ".join(filter(None, [os.environ.get("XLA_FLAGS"), "--xla_backend_optimization_level=0",
                                                  "--xla_cpu_use_fusion_emitters=false"]))
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="nfn_tsw_jax_cache_"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
import jax  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

jax.config.update("jax_num_cpu_devices", 4)
from common import llvm_options  # noqa: E402
from common.host_memory import keep_freed_memory  # noqa: E402

keep_freed_memory()  # as a script should start (docs/common.md §10): single-device calls run on this thread
# as the command lines and benchmarks compile (docs/common.md §11; the train steps compile at -O1, where LLVM's
# loop unroller runs), whatever the collected modules import first
llvm_options.set_options()

_NO_DEADLINE = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("ci", max_examples=6, derandomize=True, database=None, print_blob=True, **_NO_DEADLINE)
settings.register_profile("long", max_examples=500, **_NO_DEADLINE)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# Scheduling: pytest-xdist's worksteal deals each worker a contiguous share of the collection and steals from the
# end of a queue, so the modules with the longest tests (measured with `make test`'s --durations) run first and the
# run ends on short tests instead of one worker finishing a long test alone. Order within a module is kept (module
# fixtures are set up once); modules not listed follow in their usual order. The first three run back to back on one
# worker and train digits CNN populations of one shape (tests/magep_fixtures.py DIGITS_ZOO_BATCH_SIZE): the first
# compiles the population programs, the other two reuse them in-process. test_tnfn_experiments follows
# test_zoo_transformer for the same reason (transformer populations of one shape).
LONGEST_MODULES_FIRST = ("test_magep_experiments", "test_zoo_cnn", "test_zoo_population", "test_tsw_experiments",
                         "test_tsw_sharded", "test_tsw_spherical",
                         "test_magep_robustness", "test_readme", "test_tnfn_train", "test_tnfn_model",
                         "test_magep_models", "test_zoo_transformer", "test_tnfn_experiments", "test_training",
                         "test_checkpoint_faults", "test_common_groups", "test_magep_baselines")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_MODULES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))


def pytest_collection_finish(session):
    # Tracing allocates many short-lived objects and JAX's caches keep many long-lived ones, so Python's cyclic
    # collector ran ~3,000 times in two test modules (5% of their time). Freezing what collection imported and
    # collecting the young generation less often cut that to a third (measured: 8.4 -> 2.8 s in 158 s).
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)
