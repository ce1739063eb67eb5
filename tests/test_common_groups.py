"""The monomial group acting on MLP/CNN/SIREN weights preserves the networks' functions (float64)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common import NetworkSpec, groups, nets
from tests.common_fixtures import CNN_ZOO_SPEC, SIREN_SPEC, leaves_close, random_weights

MLP_SPEC = NetworkSpec.mlp((5, 8, 7, 6, 3))
CASES = [("relu", "positive", "sign"), ("tanh", "sign", "positive"), ("sin", "sign", "positive")]


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def _mlp(ws, x, activation):
    return nets.mlp_apply(ws, x, activation)


@pytest.mark.parametrize("activation,scaling,wrong", CASES)
def test_mlp_function_preserved_by_group_and_broken_by_others(activation, scaling, wrong):
    k = jax.random.split(jax.random.PRNGKey(0), 5)
    ws = random_weights(k[0], MLP_SPEC, dtype=jnp.float64)
    x = jax.random.normal(k[1], (16, 5), jnp.float64)
    y = _mlp(ws, x, activation)
    for t in range(3):
        g = groups.sample_monomial(jax.random.fold_in(k[2], t), MLP_SPEC, scaling, dtype=jnp.float64)
        moved = groups.act(g, ws)
        assert not leaves_close(moved, ws, atol=1e-3)  # the action is non-trivial
        np.testing.assert_allclose(_mlp(moved, x, activation), y, rtol=1e-5, atol=1e-10)
    g_wrong = groups.sample_monomial(k[3], MLP_SPEC, wrong, dtype=jnp.float64)
    assert not np.allclose(_mlp(groups.act(g_wrong, ws), x, activation), y, rtol=1e-3)
    for layer in (1, 2, 3):
        broken = groups.uncoupled_permutation(jax.random.fold_in(k[4], layer), ws, layer)
        assert not np.allclose(_mlp(broken, x, activation), y, rtol=1e-3)


def test_permutations_only_preserve_any_activation():
    ws = random_weights(jax.random.PRNGKey(1), MLP_SPEC, dtype=jnp.float64)
    x = jax.random.normal(jax.random.PRNGKey(2), (4, 5), jnp.float64)
    g = groups.sample_monomial(jax.random.PRNGKey(3), MLP_SPEC, "none", dtype=jnp.float64)
    np.testing.assert_allclose(_mlp(groups.act(g, ws), x, jax.nn.gelu), _mlp(ws, x, jax.nn.gelu), rtol=1e-5)


@pytest.mark.parametrize("activation,scaling", [("relu", "positive"), ("tanh", "sign")])
def test_cnn_zoo_function_preserved(activation, scaling):
    ws = random_weights(jax.random.PRNGKey(4), CNN_ZOO_SPEC, dtype=jnp.float64)
    x = jax.random.uniform(jax.random.PRNGKey(5), (3, 28, 28, 1), jnp.float64, -1, 1)
    y = nets.cnn_apply(ws, x, activation)
    assert y.shape == (3, 10)
    g = groups.sample_monomial(jax.random.PRNGKey(6), CNN_ZOO_SPEC, scaling, dtype=jnp.float64)
    moved = groups.act(g, ws)
    assert not leaves_close(moved, ws, atol=1e-3)
    np.testing.assert_allclose(nets.cnn_apply(moved, x, activation), y, rtol=1e-5, atol=1e-10)
    # kernel positions are untouched: each moved kernel is a scaled copy of an original one
    w1 = np.asarray(moved.weights[1])
    j = 0
    src = np.asarray(ws.weights[1])[g.perms[1][j], g.perms[0][0]]
    np.testing.assert_allclose(w1[j, 0], src * g.scales[1][j] / g.scales[0][0], rtol=1e-12)
    broken = groups.uncoupled_permutation(jax.random.PRNGKey(7), ws, 2)
    assert not np.allclose(nets.cnn_apply(broken, x, activation), y, rtol=1e-3)


def test_cnn_patch_convolution_equals_lax_conv_with_the_same_dropout_masks():
    keys = jax.random.split(jax.random.PRNGKey(8), 3)
    ws = jax.vmap(lambda k: random_weights(k, CNN_ZOO_SPEC, dtype=jnp.float64))(keys)   # 3 networks
    x = jax.random.uniform(jax.random.PRNGKey(9), (2, 4, 28, 28, 1), jnp.float64, -1, 1)
    apply = lambda conv, **kw: jax.vmap(lambda w: nets.cnn_apply(w, x, "tanh", conv=conv, **kw))(ws)
    reference = apply("lax")
    assert reference.shape == (3, 2, 4, 10)
    np.testing.assert_allclose(apply("patches"), reference, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(apply("patches", dropout=0.5), reference, rtol=1e-10, atol=1e-12)  # no key
    dropped = apply("patches", dropout=0.5, dropout_key=jax.random.PRNGKey(10))
    assert np.all(np.isfinite(dropped)) and not np.allclose(dropped, reference, rtol=1e-2)
    # the same masks in either layout (patches run batch-minor inside)
    np.testing.assert_allclose(dropped, apply("lax", dropout=0.5, dropout_key=jax.random.PRNGKey(10)),
                               rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="conv must be one of"):
        nets.cnn_apply(jax.tree.map(lambda a: a[0], ws), x, conv="patches", padding="SAME")


def test_siren_function_preserved_by_sign_flips_only():
    ws = random_weights(jax.random.PRNGKey(8), SIREN_SPEC, scale=0.05, dtype=jnp.float64)
    coords = jax.random.uniform(jax.random.PRNGKey(9), (50, 2), jnp.float64, -1, 1)
    y = nets.siren_apply(ws, coords, w0=30.0)
    g = groups.sample_monomial(jax.random.PRNGKey(10), SIREN_SPEC, "sign", dtype=jnp.float64)
    np.testing.assert_allclose(nets.siren_apply(groups.act(g, ws), coords), y, rtol=1e-5, atol=1e-10)
    g_pos = groups.sample_monomial(jax.random.PRNGKey(11), SIREN_SPEC, "positive", dtype=jnp.float64)
    assert not np.allclose(nets.siren_apply(groups.act(g_pos, ws), coords), y, rtol=1e-3)


@pytest.mark.parametrize("spec", [MLP_SPEC, CNN_ZOO_SPEC], ids=["mlp", "cnn"])
def test_inverse_compose_and_features_agree(spec):
    ws = random_weights(jax.random.PRNGKey(12), spec, batch=(2,), dtype=jnp.float64)
    g = groups.sample_monomial(jax.random.PRNGKey(13), spec, "positive", dtype=jnp.float64)
    h = groups.sample_monomial(jax.random.PRNGKey(14), spec, "sign", dtype=jnp.float64)
    assert leaves_close(groups.act(groups.inverse(g), groups.act(g, ws)), ws, rtol=1e-12, atol=1e-12)
    assert leaves_close(groups.act(groups.compose(g, h), ws), groups.act(g, groups.act(h, ws)), rtol=1e-12, atol=1e-12)
    assert leaves_close(groups.act(groups.compose(g, groups.inverse(g)), ws), ws, rtol=1e-12, atol=1e-12)
    # acting on features == acting on weights, then folding
    assert leaves_close(groups.act(g, ws.to_features()), groups.act(g, ws).to_features(), rtol=1e-12, atol=1e-12)
    # batch axes: acting on a batch == acting on each member
    single = jax.tree.map(lambda a: a[1], ws)
    assert leaves_close(jax.tree.map(lambda a: a[1], groups.act(g, ws)), groups.act(g, single), rtol=1e-12, atol=1e-12)


def test_sampling_ranges_and_vmap():
    spec = NetworkSpec.mlp((3, 50, 40, 2))
    g = groups.sample_monomial(jax.random.PRNGKey(0), spec, "positive", scale_range=(0.5, 2.0))
    for p, d in zip(g.perms, g.scales):
        assert sorted(np.asarray(p).tolist()) == list(range(p.shape[0]))
        assert float(d.min()) >= 0.5 and float(d.max()) <= 2.0
    g = groups.sample_monomial(jax.random.PRNGKey(1), spec, "positive", scale_range=(1.0, 100.0), scale_distribution="uniform")
    assert float(g.scales[0].max()) > 10.0
    s = groups.sample_monomial(jax.random.PRNGKey(2), spec, "sign")
    assert set(np.unique(np.concatenate([np.asarray(d) for d in s.scales]))) == {-1.0, 1.0}
    gs = jax.vmap(lambda k: groups.sample_monomial(k, spec, "sign"))(jax.random.split(jax.random.PRNGKey(3), 4))
    ws = random_weights(jax.random.PRNGKey(4), spec, batch=(4,))
    moved = jax.jit(jax.vmap(groups.act))(gs, ws)
    assert moved.weights[1].shape == (4, 40, 50)
    assert not leaves_close(moved, ws, atol=1e-3)


def test_sample_and_act_errors():
    spec = NetworkSpec.mlp((3, 4, 2))
    with pytest.raises(ValueError, match="scaling must be one of"):
        groups.sample_monomial(jax.random.PRNGKey(0), spec, "negative")
    with pytest.raises(ValueError, match="scale_range"):
        groups.sample_monomial(jax.random.PRNGKey(0), spec, "positive", scale_range=(-1.0, 2.0))
    g = groups.sample_monomial(jax.random.PRNGKey(0), spec)
    other = random_weights(jax.random.PRNGKey(1), NetworkSpec.mlp((3, 5, 2)))
    with pytest.raises(ValueError, match="hidden layer 1 of g has 4 neurons but ws has 5"):
        groups.act(g, other)
    deeper = random_weights(jax.random.PRNGKey(1), NetworkSpec.mlp((3, 4, 4, 2)))
    with pytest.raises(ValueError, match="g has 1 hidden layers but ws has 3 layers"):
        groups.act(g, deeper)


def test_io_permutation_and_uncoupled_permutation_break_the_function_on_weights_and_features():
    ws = random_weights(jax.random.PRNGKey(15), MLP_SPEC, batch=(2,), dtype=jnp.float64)
    x = jax.random.normal(jax.random.PRNGKey(16), (4, 5), jnp.float64)
    single = lambda t: jax.tree.map(lambda a: a[0], t)
    moved = groups.io_permutation(ws)
    assert leaves_close(groups.io_permutation(ws.to_features()), moved.to_features(), rtol=0, atol=0)
    assert leaves_close(moved.weights[1:-1] + moved.biases[:-1], ws.weights[1:-1] + ws.biases[:-1], rtol=0, atol=0)
    np.testing.assert_array_equal(moved.weights[0], ws.weights[0][..., ::-1])
    assert not np.allclose(_mlp(single(moved), x, "relu"), _mlp(single(ws), x, "relu"), rtol=1e-3)
    key = jax.random.PRNGKey(17)
    assert leaves_close(groups.uncoupled_permutation(key, ws.to_features(), 2),
                        groups.uncoupled_permutation(key, ws, 2).to_features(), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"layer must be in 1..3, got 4"):
        groups.uncoupled_permutation(key, ws, 4)


def test_act_promotes_integer_weights_to_the_scales_dtype():
    """Issue 15: integer weights were scaled by int-cast scales (first layer zeroed, the next one inf)."""
    spec = NetworkSpec.mlp((3, 4, 5, 2))
    g = groups.sample_monomial(jax.random.PRNGKey(0), spec, scale_range=(0.25, 0.75))  # all scales cast to 0
    ws = random_weights(jax.random.PRNGKey(1), spec)
    ints = jax.tree.map(lambda a: jnp.round(4 * a).astype(jnp.int32), ws)
    moved = groups.act(g, ints)
    want = groups.act(g, jax.tree.map(lambda a: a.astype(g.scales[0].dtype), ints))
    for got, ref in zip(jax.tree.leaves(moved), jax.tree.leaves(want)):
        assert got.dtype == g.scales[0].dtype and np.all(np.isfinite(got))
        np.testing.assert_array_equal(got, ref)
    assert np.abs(np.asarray(moved.weights[0])).max() > 0
    # floating weights keep their dtype
    assert groups.act(g, jax.tree.map(lambda a: a.astype(jnp.float32), ws)).weights[1].dtype == jnp.float32


@pytest.mark.parametrize("size, message", [(2, "images of 2x2 pixels are too small: conv layer 0 gets 2x2 inputs but has "
                                                "a 3x3 kernel"),
                                           (8, "images of 8x8 pixels are too small: conv layer 2 gets 1x1 inputs")])
def test_cnn_rejects_images_smaller_than_a_kernel(size, message):
    ws = random_weights(jax.random.PRNGKey(4), CNN_ZOO_SPEC, dtype=jnp.float32)
    x = jnp.ones((2, size, size, 1), jnp.float32)
    with pytest.raises(ValueError, match=message):  # was NaN: the pooled mean of an empty feature map
        nets.cnn_apply(ws, x)
    with pytest.raises(ValueError, match=message):  # shapes are static: checked while tracing too
        jax.jit(nets.cnn_apply)(ws, x)
    assert np.isfinite(nets.cnn_apply(ws, jnp.ones((2, 15, 15, 1), jnp.float32))).all()  # 15 -> 7 -> 3 -> 1: the smallest
    assert nets.cnn_apply(ws, x, padding="SAME").shape == (2, 10)
