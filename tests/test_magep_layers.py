"""PolynomialEquivariant / PolynomialInvariant: two-sided symmetry on the MLP, CNN-zoo and SIREN specs for
both scaling groups, options (frozen Phi, channel maps, normalisation), parameter counts, batching."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from common import NetworkSpec, WeightSpace, testing
from common.groups import MonomialGroup
from magep import FrozenCoupling, PolynomialEquivariant, PolynomialInvariant, normalize_scale
from tests.magep_fixtures import CHECK_X64, SPECS, jitted, random_features


def n_params(module, kind=nnx.Param) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(module, kind)))


def shapes_only(cls, *args, **kwargs):
    """``cls(*args, rngs=nnx.Rngs(0), **kwargs)`` with abstract parameters (`nnx.eval_shape`): for counts,
    nothing initialised."""
    return nnx.eval_shape(lambda: cls(*args, rngs=nnx.Rngs(0), **kwargs))


@pytest.mark.parametrize("scaling", ["positive", "sign"])
@pytest.mark.parametrize("name", ["mlp", "cnn", "siren"])
def test_equivariant_layer_two_sided(name, scaling):
    spec = SPECS[name]
    with jax.enable_x64(True):
        feats = random_features(0, spec)  # conv kernels folded: C = (9, 9, 9, 1), bias channels 1
        layer = PolynomialEquivariant(spec, spec.feature_channels, 2, rngs=nnx.Rngs(1))
        testing.assert_equivariant(jitted(layer), MonomialGroup(spec, scaling), jax.random.key(2), feats, **CHECK_X64)


@pytest.mark.parametrize("scaling", ["positive", "sign"])
@pytest.mark.parametrize("name", ["mlp", "cnn", "siren"])
def test_invariant_layer_two_sided(name, scaling):
    spec = SPECS[name]
    with jax.enable_x64(True):
        feats = random_features(3, spec, channels=2)
        layer = PolynomialInvariant(spec, 2, 3, rngs=nnx.Rngs(4))
        testing.assert_invariant(jitted(layer), MonomialGroup(spec, scaling), jax.random.key(5), feats, **CHECK_X64)


@pytest.mark.parametrize("scaling", ["positive", "sign"])
def test_frozen_phi_and_normalisation_keep_equivariance(scaling):
    spec = SPECS["mlp"]
    with jax.enable_x64(True):
        feats = random_features(6, spec, channels=2)
        layer = PolynomialEquivariant(spec, 2, 2, rngs=nnx.Rngs(7), freeze_phi=True, normalize=True)
        testing.assert_equivariant(jitted(layer), MonomialGroup(spec, scaling), jax.random.key(8), feats, **CHECK_X64)
        inv = PolynomialInvariant(spec, 2, 2, rngs=nnx.Rngs(9), normalize=True)
        testing.assert_invariant(jitted(inv), MonomialGroup(spec, scaling), jax.random.key(10), feats, **CHECK_X64)


def test_normalisation_removes_relu_function_scale():
    """W^(l) -> a W^(l), b^(l) -> a^l b^(l) leaves a ReLU net's function up to the factor a^L; the normalised
    inputs do not change (the scale is exactly removed), while the raw layer output does."""
    spec = SPECS["mlp"]
    with jax.enable_x64(True):
        feats = random_features(11, spec, channels=2)
        a = 3.0
        scaled = WeightSpace(tuple(a * w for w in feats.weights),
                             tuple(a ** l * b for l, b in enumerate(feats.biases, 1)), is_features=True)
        n1 = normalize_scale(feats.weights, feats.biases)
        n2 = normalize_scale(scaled.weights, scaled.biases)
        for x, y in zip(jax.tree.leaves(n1), jax.tree.leaves(n2)):
            np.testing.assert_allclose(x, y, rtol=1e-10)
        raw = PolynomialInvariant(spec, 2, 2, rngs=nnx.Rngs(0))
        normed = PolynomialInvariant(spec, 2, 2, rngs=nnx.Rngs(0), normalize=True)
        np.testing.assert_allclose(normed(scaled), normed(feats), rtol=1e-8)
        assert not np.allclose(raw(scaled), raw(feats), rtol=1e-3)


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_normalised_layers_equal_the_raw_layers_on_normalised_inputs(name):
    """With normalize=True the layers reuse the suffix products the scale itself computed (rescaled); this
    equals the same layers without normalisation on `normalize_scale`'s output (every product recomputed), on
    MLP and CNN-zoo specs (one input neuron: B_0's coupling rows stacked), channels at scales 1e-3 and 1e3."""
    spec = SPECS[name]
    with jax.enable_x64(True):
        feats = random_features(12, spec, channels=2)
        spread = jnp.asarray([1e-3, 1e3])
        feats = WeightSpace(tuple(w * spread for w in feats.weights), feats.biases, is_features=True)
        normed = WeightSpace(*normalize_scale(feats.weights, feats.biases), is_features=True)
        for cls, out in ((PolynomialEquivariant, 3), (PolynomialInvariant, 2)):
            on = cls(spec, 2, out, rngs=nnx.Rngs(13), normalize=True)
            off = cls(spec, 2, out, rngs=nnx.Rngs(13))
            for x, y in zip(jax.tree.leaves(on(feats)), jax.tree.leaves(off(normed))):
                np.testing.assert_allclose(x, y, rtol=1e-9, atol=1e-12 * float(jnp.max(jnp.abs(y))))
            assert not np.allclose(jax.tree.leaves(off(feats))[0], jax.tree.leaves(off(normed))[0], rtol=1e-3)


def test_frozen_phi_is_not_a_param_and_gets_no_update():
    spec = SPECS["mlp"]
    learn = PolynomialEquivariant(spec, 2, 3, rngs=nnx.Rngs(0))
    frozen = PolynomialEquivariant(spec, 2, 3, rngs=nnx.Rngs(0), freeze_phi=True)
    L, d, n0, nL = spec.num_layers, 2, spec.widths[0], spec.widths[-1]
    phi_count = (3 * L - 2) * d * (n0 * nL + nL)
    assert n_params(learn) - n_params(frozen) == phi_count == n_params(frozen, FrozenCoupling)
    graphdef, params, rest = nnx.split(frozen, nnx.Param, ...)
    feats = random_features(1, spec, channels=2, dtype=jnp.float32)
    grads = jax.jit(jax.grad(lambda p: jnp.sum(nnx.merge(graphdef, p, rest)(feats).weights[1] ** 2)))(params)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
    assert "couplings" not in nnx.to_pure_dict(grads)


@pytest.mark.parametrize("widths", [(2, 3, 4), (3, 4, 5, 2), (2, 3, 4, 3, 5)])
def test_parameter_counts_match_closed_forms(widths):
    """docs/magep.md §4 and §6 with d = 2 input and e = 3 output channels."""
    spec = NetworkSpec.mlp(widths)
    L, n0, nL, d, e = len(widths) - 1, widths[0], widths[-1], 2, 3
    eq = shapes_only(PolynomialEquivariant, spec, d, e, freeze_phi=True)
    want = e * d * (3 * n0**2 + 4 * n0 + 1 + (L - 2) * (3 * n0 + 5) + 5 * nL**2 + 3 * n0 * nL**2 + 2 * (L - 1) * nL) + e * nL
    assert n_params(eq) == want
    inv = shapes_only(PolynomialInvariant, spec, d, e)
    assert n_params(inv) == e * d * (3 * nL * n0 + 2 * nL + 2 * (L - 1)) + e + L * d * (n0 * nL + nL)


def test_cnn_zoo_layer_counts_match_anchor():
    """PolynomialEquivariant 20 -> 20 on the CNN zoo: 353,800 per layer; PolynomialInvariant: 24,020."""
    spec = SPECS["cnn"]
    assert n_params(shapes_only(PolynomialEquivariant, spec, 20, 20, freeze_phi=True)) == 353_800
    assert n_params(shapes_only(PolynomialInvariant, spec, 20, 20)) == 24_020


def test_batched_input_equals_vmap_and_jit():
    spec = SPECS["mlp"]
    base = random_features(12, spec, channels=1, batch=(2, 3), dtype=jnp.float32)
    twice = lambda x: jnp.concatenate([x, 2 * x], -1)
    mixed = WeightSpace((base.weights[0], twice(base.weights[1]), base.weights[2]),
                        (twice(base.biases[0]), base.biases[1], base.biases[2]), is_features=True)
    layer = PolynomialEquivariant(spec, ((1, 2), (2, 1), (1, 1)), 2, rngs=nnx.Rngs(13))  # with channel maps
    inv = PolynomialInvariant(spec, 1, 4, rngs=nnx.Rngs(14))
    for module, feats in ((layer, mixed), (inv, base)):
        graphdef, state = nnx.split(module)
        one = lambda st, f: nnx.merge(graphdef, st)(f)
        batched = jax.jit(one)(state, feats)
        mapped = jax.jit(jax.vmap(jax.vmap(one, (None, 0)), (None, 0)))(state, feats)
        for got, want in zip(jax.tree.leaves(batched), jax.tree.leaves(mapped)):
            assert got.shape[:2] == (2, 3)
            np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)
    assert inv(base).shape == (2, 3, 4)


def test_gradients_finite_and_nonzero_for_every_parameter():
    spec = SPECS["mlp"]
    feats = random_features(15, spec, channels=2, dtype=jnp.float32)
    for module in (PolynomialEquivariant(spec, 2, 2, rngs=nnx.Rngs(16)), PolynomialInvariant(spec, 2, 2, rngs=nnx.Rngs(17))):
        graphdef, params = nnx.split(module, nnx.Param)
        loss = lambda p: sum(jnp.sum(jnp.sin(x)) for x in jax.tree.leaves(nnx.merge(graphdef, p)(feats)))
        grads = jax.jit(jax.grad(loss))(params)
        for path, g in jax.tree_util.tree_leaves_with_path(grads):
            assert np.all(np.isfinite(g)), path
            assert np.any(g != 0), path  # every coefficient and every coupling matrix is used
