"""Helpers shared by the magep tests (random features, a two-sided check with custom broken actions) and
tests of the helpers themselves."""
import jax
import jax.numpy as jnp
import numpy as np

from common import NetworkSpec, WeightSpace, groups, testing
from tests.common_fixtures import CNN_ZOO_SPEC, SIREN_SPEC

MLP_SPEC = NetworkSpec.mlp((3, 4, 5, 2))
SPECS = {"mlp": MLP_SPEC, "cnn": CNN_ZOO_SPEC, "siren": SIREN_SPEC}


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


def io_permutation(feats: WeightSpace) -> WeightSpace:
    """Reverse the input neurons (columns of W^(1)) and the output neurons (rows of W^(L), entries of b^(L)):
    not a symmetry when input and output neurons are fixed."""
    weights = list(feats.weights)
    weights[0] = weights[0][..., ::-1, :]
    weights[-1] = weights[-1][..., ::-1, :, :]
    biases = feats.biases[:-1] + (feats.biases[-1][..., ::-1, :],)
    return WeightSpace(tuple(weights), biases, is_features=True)


def assert_two_sided(fn, key, feats, spec, scaling, *, equivariant, uncoupled=True, io_perm=False,
                     wrong_scaling=None, rtol=1e-6, atol=1e-8, n_trials=2, min_change=1e-3):
    """common.testing.assert_symmetry for the monomial group of `scaling` with a chosen set of broken actions:
    uncoupled permutations of every hidden layer, a permutation of the (fixed) input neurons, a wrong group."""
    if uncoupled and not io_perm and wrong_scaling is None:
        check = testing.assert_equivariant if equivariant else testing.assert_invariant
        return check(fn, key, feats, spec, scaling, rtol=rtol, atol=atol, n_trials=n_trials, min_change=min_change)
    broken = []
    if uncoupled:
        broken += [(f"uncoupled {l}", lambda ws, l=l: testing.uncoupled_permutation(jax.random.fold_in(key, l), ws, l))
                   for l in range(1, spec.num_layers)]
    if io_perm:
        broken.append(("input/output permutation", io_permutation))
    if wrong_scaling is not None:
        g = groups.sample_monomial(jax.random.fold_in(key, 99), spec, wrong_scaling, scale_range=(0.5, 2.0))
        broken.append((wrong_scaling, lambda ws: groups.act(g, ws)))
    act_out = groups.act if equivariant else None
    testing.assert_symmetry(
        fn, key, feats, lambda k: groups.sample_monomial(k, spec, scaling, scale_range=(0.5, 2.0)), groups.act, act_out,
        [(name, move, act_out and move) for name, move in broken], n_trials=n_trials, rtol=rtol, atol=atol, min_change=min_change)


def test_random_features_shapes_and_scale():
    f = random_features(0, CNN_ZOO_SPEC)
    f.check_spec(CNN_ZOO_SPEC, "f")
    assert [w.shape[-1] for w in f.weights] == list(CNN_ZOO_SPEC.feature_channels)
    ws = WeightSpace.from_features(jax.tree.map(lambda x: x.astype(jnp.float32), f), CNN_ZOO_SPEC)
    assert ws.weights[0].shape == (16, 1, 3, 3)


def test_io_permutation_is_not_a_hidden_symmetry():
    f = random_features(1, MLP_SPEC)
    moved = io_permutation(f)
    assert not np.allclose(moved.weights[0], f.weights[0])
    np.testing.assert_array_equal(moved.weights[1], f.weights[1])


def jitted(module, method: str = "__call__"):
    """A jitted pure call of an nnx module's `method` (its state passed as an argument, not baked in)."""
    from flax import nnx

    graphdef, state = nnx.split(module)
    call = jax.jit(lambda st, x: getattr(nnx.merge(graphdef, st), method)(x))
    return lambda x: call(state, x)
