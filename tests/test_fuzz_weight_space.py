"""Property-based fuzzing of the weight-space API of common, magep and transformer_nfn (docs/input_policy.md):
any dtype, magnitudes 1e-30..1e30, NaN / inf entries, sizes 0 and 1, mismatched shapes and head layouts.

Every call either raises ValueError exactly when the input is malformed, or returns the right thing: a
`WeightSpace` whose spec reads back; the monomial action equal to a float64 numpy reference (inf only where the
exact value overflows the dtype); the MAGEP invariant layer (scale-normalised) finite for every finite input and
invariant under the monomial group and the ReLU rescaling; the Transformer-NFN invariant layer equal to its
float64 evaluation and invariant under the transformer group. A non-finite input gives a non-finite output.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, strategies as st

from common import NetworkSpec, WeightSpace, groups
from magep import PolynomialInvariant, normalize_scale
from tests.fuzz_strategies import DTYPES, NONFINITE, Drawn, arrays, cast, outcome
from tests.magep_fixtures import jitted
from transformer_nfn import TransformerInvariant, TransformerSpec, TransformerWeights, invariant_apply
from transformer_nfn import groups as transformer_groups
from transformer_nfn.weights import BlockWeights

KEY = jax.random.key(0)


# ---- WeightSpace structure ------------------------------------------------------------------------------------

MUTATIONS = (None, "bias length", "weight rank", "chain", "batch", "bias count")


@st.composite
def structures(draw):
    """(weights, biases, is_features, valid): zero arrays of a drawn structure (1-3 layers, widths 0-3, dense or
    conv, batch axes () or (2,), raw or features), perhaps broken by one of MUTATIONS; a zero width is invalid."""
    widths = draw(st.lists(st.integers(0, 3), min_size=2, max_size=4))
    kernels = [draw(st.sampled_from([(), (1, 2)])) for _ in widths[1:]]
    batch, features = draw(st.sampled_from([(), (2,)])), draw(st.booleans())
    weights, biases = [], []
    for (n_in, n_out), kernel in zip(zip(widths, widths[1:]), kernels):
        channels = (max(1, int(np.prod(kernel))),) if features else kernel
        weights.append(list(batch + (n_out, n_in) + channels))
        biases.append(list(batch + (n_out,) + ((1,) if features else ())))
    mutation = draw(st.sampled_from(MUTATIONS))
    layer = draw(st.integers(0, len(weights) - 1))
    nb = len(batch)
    if mutation == "bias length":
        biases[layer][nb] += 1
    elif mutation == "weight rank":
        weights[layer].append(1) if features or len(weights[layer]) == nb + 4 else weights[layer].pop()
    elif mutation == "chain" and len(weights) > 1:
        weights[-1][nb + 1] += 1
    elif mutation == "batch":
        weights[layer], biases[layer] = [3] + weights[layer], [3] + biases[layer]
    elif mutation == "bias count":
        biases.pop()
    valid = (mutation is None or (mutation in ("chain", "batch") and len(weights) == 1)) and min(widths) > 0
    return (tuple(np.zeros(s, np.float32) for s in weights), tuple(np.zeros(s, np.float32) for s in biases),
            features, valid)


@given(structures())
def test_weight_space_constructs_or_names_the_mismatch(structure):
    weights, biases, features, valid = structure
    ws = outcome(WeightSpace, weights, biases, is_features=features)
    if not valid:
        assert isinstance(ws, ValueError) and "WeightSpace: " in str(ws), ws
        return
    assert isinstance(ws, WeightSpace), ws
    spec = NetworkSpec.from_weights(ws)
    ws.check_spec(spec)
    nb = len(ws.batch_shape)
    assert spec.widths == (weights[0].shape[nb + 1],) + tuple(b.shape[nb] for b in biases)
    if not features:
        back = WeightSpace.from_features(ws.to_features(), spec)
        assert [w.shape for w in back.weights] == [w.shape for w in weights]


def test_empty_layers_are_rejected_but_not_empty_batches():
    """Found by the fuzzer. Before: a WeightSpace or NetworkSpec with a zero width was accepted, and failed later
    with numpy's "cannot reshape array of size 0" (`to_features`) or gave empty or NaN features."""
    with pytest.raises(ValueError, match=r"WeightSpace: weights\[0\] \(0, 2\) and biases\[0\] \(0,\) have an empty "
                                         r"neuron, kernel or channel axis"):
        WeightSpace((np.zeros((0, 2)),), (np.zeros(0),))
    with pytest.raises(ValueError, match=r"WeightSpace: weights\[0\] \(1, 2, 0, 3\) .* empty"):
        WeightSpace((np.zeros((1, 2, 0, 3)),), (np.zeros(1),))
    with pytest.raises(ValueError, match=r"NetworkSpec: widths and kernel sizes must be >= 1 .*\(2, 0, 1\)"):
        NetworkSpec.mlp((2, 0, 1))
    assert WeightSpace((np.zeros((0, 3, 2)),), (np.zeros((0, 3)),)).batch_shape == (0,)  # no networks: fine


# ---- the monomial group on raw weights --------------------------------------------------------------------------

SPECS = (NetworkSpec.mlp((2, 3, 1)), NetworkSpec.mlp((1, 1, 1, 1)), NetworkSpec((1, 2, 2), ((2, 2), ())))


@st.composite
def weight_spaces(draw, spec: NetworkSpec, channels: int | None = None):
    """A drawn `WeightSpace` of `spec` (features with `channels` channels when given): one dtype and one
    magnitude for all leaves, perhaps one non-finite entry (in a drawn leaf); returns (ws, leaves as `Drawn`)."""
    dtype, exponent = draw(st.sampled_from(DTYPES)), draw(st.integers(-30, 30))
    bad_leaf = draw(st.integers(0, 2 * spec.num_layers - 1))
    extra = () if channels is None else (channels,)
    shapes = [(spec.widths[i + 1], spec.widths[i]) + (spec.kernel_shapes[i] if channels is None else extra)
              for i in range(spec.num_layers)] + [(n,) + extra for n in spec.widths[1:]]
    leaves = [draw(arrays(s, (dtype,), NONFINITE if i == bad_leaf else (None,), (exponent, exponent)))
              for i, s in enumerate(shapes)]
    L = spec.num_layers
    ws = WeightSpace(tuple(v.value for v in leaves[:L]), tuple(v.value for v in leaves[L:]),
                     is_features=channels is not None)
    return ws, leaves


def _reference_act(g, leaves: list[Drawn], L: int):
    """The monomial action (docs/magep.md §2) in float64 numpy on the values the library sees."""
    perms = [np.asarray(p) for p in g.perms]
    scales = [np.asarray(d, np.float64) for d in g.scales]
    weights, biases = [v.seen for v in leaves[:L]], [v.seen for v in leaves[L:]]
    out = []
    for i, (w, b) in enumerate(zip(weights, biases)):
        if i < L - 1:
            d = scales[i].reshape((-1,) + (1,) * (w.ndim - 1))
            w, b = w[perms[i]] * d, b[perms[i]] * scales[i]
        if i > 0:
            w = w[:, perms[i - 1]] / scales[i - 1].reshape((1, -1) + (1,) * (w.ndim - 2))
        out += [w, b]
    return out[0::2] + out[1::2]


@given(st.sampled_from(range(len(SPECS))).flatmap(lambda i: st.tuples(st.just(SPECS[i]), weight_spaces(SPECS[i]))),
       st.integers(0, 2 ** 16))
def test_monomial_action_matches_float64_reference(spec_and_ws, seed):
    spec, (ws, leaves) = spec_and_ws
    g = groups.sample_monomial(jax.random.key(seed), spec)
    moved = groups.act(g, ws)
    given_dtype = jnp.asarray(leaves[0].value).dtype
    want_dtype = given_dtype if jnp.issubdtype(given_dtype, jnp.floating) else jnp.float32
    got = [np.asarray(v) for v in moved.weights + moved.biases]
    assert all(v.dtype == want_dtype for v in got), ([v.dtype for v in got], want_dtype)
    info = jnp.finfo(want_dtype)
    for i, (v, want) in enumerate(zip(got, _reference_act(g, leaves, spec.num_layers))):
        overflow = np.abs(want) > float(info.max)
        with np.errstate(over="ignore", invalid="ignore"):
            want = np.where(overflow, np.sign(want) * np.inf, want)
        np.testing.assert_allclose(v.astype(np.float64), want, rtol=4 * float(info.eps), atol=4 * float(info.tiny),
                                   err_msg=f"leaf {i} ({given_dtype}, scale {leaves[0].scale:g})")


# ---- MAGEP invariant layer, scale-normalised ---------------------------------------------------------------------

MAGEP_SPEC = NetworkSpec.mlp((2, 3, 2))


@functools.cache
def magep_layer():
    return jitted(PolynomialInvariant(MAGEP_SPEC, 1, 2, rngs=nnx.Rngs(0), normalize=True))


def _as_float32(ws: WeightSpace, leaves: list[Drawn]) -> WeightSpace:
    L = len(ws.weights)
    return WeightSpace(tuple(v.seen.astype(np.float32) for v in leaves[:L]),
                       tuple(v.seen.astype(np.float32) for v in leaves[L:]), is_features=True)


def _relu_rescale(ws: WeightSpace, a: float) -> WeightSpace:
    """W^(l) -> a W^(l), b^(l) -> a^l b^(l): the network's function times a^L (docs/magep.md §3)."""
    return WeightSpace(tuple(w * np.float32(a) for w in ws.weights),
                       tuple(b * np.float32(a ** l) for l, b in enumerate(ws.biases, 1)), is_features=True)


def _all_finite(ws: WeightSpace) -> bool:
    return all(np.all(np.isfinite(np.asarray(v))) for v in jax.tree.leaves(ws))


@given(weight_spaces(MAGEP_SPEC, channels=1), st.integers(0, 2 ** 16), st.integers(-8, 8))
def test_magep_normalised_invariant_layer_is_finite_and_invariant(drawn, seed, log_a):
    ws, leaves = drawn
    layer = magep_layer()
    got = np.asarray(layer(ws))
    if not all(v.finite for v in leaves):
        assert not np.all(np.isfinite(got)), f"non-finite features gave {got}"
        return
    assert got.dtype == np.float32 and np.all(np.isfinite(got)), f"finite features gave {got}"
    x32 = _as_float32(ws, leaves)
    base = np.asarray(layer(x32))
    np.testing.assert_allclose(got, base, rtol=1e-5, atol=1e-6, err_msg="input dtype changed the output")
    tol = dict(rtol=1e-3, atol=1e-3 * (1 + np.abs(base).max()))
    g = groups.sample_monomial(jax.random.key(seed), MAGEP_SPEC)
    np.testing.assert_allclose(np.asarray(layer(groups.act(g, x32))), base, **tol, err_msg="monomial action")
    rescaled = _relu_rescale(x32, 10.0 ** log_a)
    if _all_finite(rescaled) and all(np.all((np.abs(v) >= 1e-37) | (v == 0)) for v in jax.tree.leaves(rescaled)):
        np.testing.assert_allclose(np.asarray(layer(rescaled)), base, **tol, err_msg=f"ReLU rescaling by 1e{log_a}")


@pytest.mark.parametrize("dtype, scale", [("float16", 1e-5), ("bfloat16", 1e-30), ("int32", 3.0)])
def test_normalize_scale_computes_integers_and_half_precision_in_float32(dtype, scale):
    """Found by the fuzzer. Before: float16 features of size 1e-5 gave NaN (exp(-log m) of the max scaling
    overflowed float16), and integer features raised numpy's "data type int32 not inexact"."""
    rng = np.random.default_rng(0)
    L = MAGEP_SPEC.num_layers
    shapes = [(MAGEP_SPEC.widths[i + 1], MAGEP_SPEC.widths[i], 1) for i in range(L)]
    shapes += [(n, 1) for n in MAGEP_SPEC.widths[1:]]
    given_leaves = [cast(rng.normal(size=s) * scale, dtype) for s in shapes]
    normalize = jax.jit(normalize_scale)  # one compile per dtype, not one per operation
    got = normalize(tuple(given_leaves[:L]), tuple(given_leaves[L:]))
    want = normalize(*(tuple(np.asarray(v, np.float32) for v in part) for part in (given_leaves[:L], given_leaves[L:])))
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert g.dtype == jnp.float32 and np.all(np.isfinite(np.asarray(g)))
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-6)


# ---- Transformer-NFN invariant layer ---------------------------------------------------------------------------

TNFN_SPEC = TransformerSpec(num_blocks=1, num_heads=2, d_model=4, d_k=2, d_v=2, d_ffn=3)
LAYOUTS = (TNFN_SPEC, TransformerSpec(1, 1, 4, 4, 2, 3), TransformerSpec(1, 4, 4, 1, 2, 3))  # one D, three h


@functools.cache
def tnfn_layer():
    return TransformerInvariant(TNFN_SPEC, 1, 2, rngs=nnx.Rngs(0))


@st.composite
def transformer_features(draw):
    """(features of a drawn head layout with D = 4, the leaves as `Drawn`); one dtype and magnitude."""
    spec = draw(st.sampled_from(LAYOUTS))
    dtype, exponent = draw(st.sampled_from(DTYPES)), draw(st.integers(-30, 30))
    shapes = spec.field_shapes(1).values()
    bad_leaf = draw(st.integers(0, 7))
    leaves = [draw(arrays(s, (dtype,), NONFINITE if i == bad_leaf else (None,), (exponent, exponent)))
              for i, s in enumerate(shapes)]
    return spec, leaves


def _features(leaves, convert=lambda v: v.value):
    return TransformerWeights((BlockWeights(*(convert(v) for v in leaves), is_features=True),))


@given(transformer_features(), st.integers(0, 2 ** 16))
def test_transformer_invariant_layer_matches_float64_and_is_invariant(drawn, seed):
    spec, leaves = drawn
    layer = tnfn_layer()
    got = outcome(layer, _features(leaves))
    if spec != TNFN_SPEC:
        assert isinstance(got, ValueError) and "TransformerInvariant: the weights have num_heads=" in str(got), got
        return
    got = np.asarray(got)
    if not all(v.finite for v in leaves):
        assert not np.all(np.isfinite(got)), f"non-finite features gave {got}"
        return
    coeffs = {t.name: np.asarray(getattr(layer, t.name)[...], np.float64) for t in layer.plan.terms}
    with jax.enable_x64(True):
        want = np.asarray(invariant_apply(coeffs, _features(leaves, lambda v: v.seen)))
        magnitude = np.abs(np.asarray(invariant_apply(jax.tree.map(np.abs, coeffs),
                                                      _features(leaves, lambda v: np.abs(v.seen))))).max()
        g = transformer_groups.TransformerGroup(TNFN_SPEC).sample(jax.random.key(seed))
        moved = np.asarray(invariant_apply(coeffs, transformer_groups.act(g, _features(leaves, lambda v: v.seen))))
    # float64: the group invariance (rounding only). The float32 output: the float64 value to the rounding of
    # the terms' sizes in the precision the features are multiplied in (JAX's promotion: half precision stays
    # half until the coefficients), or inf / NaN only where a term may overflow that precision.
    np.testing.assert_allclose(moved, want, rtol=1e-6, atol=1e-9 * magnitude, err_msg="transformer group")
    given_dtype = jnp.asarray(leaves[0].value).dtype
    info = jnp.finfo(given_dtype if jnp.issubdtype(given_dtype, jnp.floating) else jnp.float32)
    if np.all(np.isfinite(got)):
        atol = max(1e-4, 16 * float(info.eps)) * magnitude
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=atol, err_msg=f"{given_dtype} vs float64")
    else:
        assert magnitude > 1e-3 * float(info.max), f"{got} for features whose terms reach only {magnitude}"
