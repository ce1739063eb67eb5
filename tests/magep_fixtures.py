"""Random features, specs and a jitted call shared by the magep tests (a helper module, not a test module)."""
import jax
import jax.numpy as jnp
import numpy as np

from common import NetworkSpec, WeightSpace
from common.groups import BrokenAction, io_permutation
from tests.common_fixtures import CNN_ZOO_SPEC, SIREN_SPEC

MLP_SPEC = NetworkSpec.mlp((3, 4, 5, 2))
SPECS = {"mlp": MLP_SPEC, "cnn": CNN_ZOO_SPEC, "siren": SIREN_SPEC}
CHECK_X64 = dict(n_trials=2, rtol=1e-6, atol=1e-8)  # symmetry-check settings on float64 features
IO_PERMUTATION = BrokenAction("input/output permutation", io_permutation)
# Digits CNN populations in the tests (test_zoo_cnn, test_zoo_population, the generalisation pipeline) train at one
# batch size, in populations padded to the 4 test devices: one set of compiled programs serves them all
# (in-process, or across pytest workers through the persistent compilation cache of tests/conftest.py).
DIGITS_ZOO_BATCH_SIZE = 128


def random_features(seed: int, spec: NetworkSpec, channels=None, batch=(), dtype=None) -> WeightSpace:
    """Features with O(1) end-to-end products: W ~ N(0, 1/fan_in), b ~ N(0, 0.5^2).

    channels: None -> ``spec.feature_channels`` weights and 1 bias channel; int c -> c everywhere.
    dtype: default float64 under ``jax.enable_x64(True)``, else float32.
    """
    dtype = jnp.zeros(()).astype(float).dtype if dtype is None else dtype
    L = spec.num_layers
    cw = spec.feature_channels if channels is None else (channels,) * L
    cb = (1,) * L if channels is None else (channels,) * L
    rng = np.random.default_rng(seed)  # numpy: no per-shape XLA compilation
    weights = tuple(jnp.asarray(rng.normal(size=batch + (spec.widths[i + 1], spec.widths[i], cw[i]))
                                / np.sqrt(spec.widths[i] * cw[i]), dtype) for i in range(L))
    biases = tuple(jnp.asarray(0.5 * rng.normal(size=batch + (spec.widths[i + 1], cb[i])), dtype) for i in range(L))
    return WeightSpace(weights, biases, is_features=True)


def jitted(module, method: str = "__call__"):
    """A jitted pure call of an nnx module's `method` (its state passed as an argument, not baked in)."""
    from flax import nnx

    graphdef, state = nnx.split(module)
    call = jax.jit(lambda st, x: getattr(nnx.merge(graphdef, st), method)(x))
    return lambda x: call(state, x)
