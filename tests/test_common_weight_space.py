"""WeightSpace / NetworkSpec: pytree behaviour, feature folding, and every validation error."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common import NetworkSpec, WeightSpace
from tests.common_fixtures import CNN_ZOO_SPEC, leaves_close, random_weights


def test_spec_from_weights_and_counts():
    ws = random_weights(jax.random.PRNGKey(0), CNN_ZOO_SPEC)
    assert NetworkSpec.from_weights(ws) == CNN_ZOO_SPEC
    assert CNN_ZOO_SPEC.num_params == 4970  # 160 + 2320 + 2320 + 170 (docs/magep.md §1)
    assert CNN_ZOO_SPEC.feature_channels == (9, 9, 9, 1)
    assert NetworkSpec.mlp((2, 32, 32, 1)).num_params == 1185
    assert NetworkSpec.mlp((2, 32, 32, 3)).num_params == 1251
    batched = random_weights(jax.random.PRNGKey(0), CNN_ZOO_SPEC, batch=(3, 2))
    assert batched.batch_shape == (3, 2)
    assert NetworkSpec.from_weights(batched) == CNN_ZOO_SPEC
    assert hash(CNN_ZOO_SPEC) == hash(NetworkSpec((1, 16, 16, 16, 10), ((3, 3), (3, 3), (3, 3), ())))


def test_features_fold_kernels_and_round_trip():
    ws = random_weights(jax.random.PRNGKey(1), CNN_ZOO_SPEC, batch=(2,))
    feats = ws.to_features()
    assert feats.is_features
    assert [w.shape for w in feats.weights] == [(2, 16, 1, 9), (2, 16, 16, 9), (2, 16, 16, 9), (2, 10, 16, 1)]
    assert [b.shape for b in feats.biases] == [(2, 16, 1), (2, 16, 1), (2, 16, 1), (2, 10, 1)]
    # kernel position (u, v) -> channel u * kw + v
    np.testing.assert_array_equal(feats.weights[1][0, 3, 4, 1 * 3 + 2], ws.weights[1][0, 3, 4, 1, 2])
    assert NetworkSpec.from_weights(feats).widths == CNN_ZOO_SPEC.widths
    for i in range(CNN_ZOO_SPEC.num_layers):  # the output-neuron axis follows the batch axes in both forms
        assert ws.out_axis(i) == feats.out_axis(i) == 1
        assert ws.weights[i].shape[ws.out_axis(i)] == feats.biases[i].shape[feats.out_axis(i)] == CNN_ZOO_SPEC.widths[i + 1]
    assert leaves_close(WeightSpace.from_features(feats, CNN_ZOO_SPEC), ws, rtol=0, atol=0)
    with pytest.raises(ValueError, match="already holds features"):
        feats.to_features()
    with pytest.raises(ValueError, match=r"layer 0 features weights \(2, 16, 1, 9\).*need 4 weight channel"):
        WeightSpace.from_features(feats, NetworkSpec((1, 16, 16, 16, 10), ((2, 2), (3, 3), (3, 3), ())))


def test_pytree_jit_vmap_and_tree_map():
    ws = random_weights(jax.random.PRNGKey(2), NetworkSpec.mlp((3, 4, 2)), batch=(5,))
    leaves, treedef = jax.tree.flatten(ws)
    assert len(leaves) == 4
    doubled = jax.jit(lambda w: jax.tree.map(lambda a: 2 * a, w))(ws)
    assert isinstance(doubled, WeightSpace)
    np.testing.assert_allclose(doubled.weights[0], 2 * ws.weights[0])
    norms = jax.vmap(lambda w: sum(jnp.sum(a**2) for a in jax.tree.leaves(w)))(ws)
    assert norms.shape == (5,)
    feats = ws.to_features()
    assert jax.tree.structure(feats) != treedef  # is_features is static metadata


def _dense(shapes_w, shapes_b):
    return [jnp.zeros(s) for s in shapes_w], [jnp.zeros(s) for s in shapes_b]


@pytest.mark.parametrize(
    "weights,biases,message",
    [
        ([(4, 3), (2, 4)], [(4,)], r"2 weights but 1 biases"),
        ([(4, 3), (2, 5)], [(4,), (2,)], r"weights\[1\] \(2, 5\) takes 5 inputs but weights\[0\] \(4, 3\) gives 4 outputs"),
        ([(4, 3), (2, 4)], [(4,), (3,)], r"biases\[1\] has length 3 \(shape \(3,\)\) but weights\[1\] \(2, 4\) has 2 output"),
        ([(4, 3, 3), (2, 4)], [(4,), (2,)], r"weights\[0\] has shape \(4, 3, 3\) and biases\[0\] shape \(4,\): wrong rank"),
        ([(4, 3), (2, 4)], [(4,), ()], r"biases\[1\] has shape \(\)"),
        ([(5, 4, 3), (6, 2, 4)], [(5, 4), (6, 2)], r"layer 1 has batch axes \(6,\) but layer 0 has \(5,\)"),
        ([(5, 4, 3), (2, 4)], [(6, 4), (2,)], r"weights\[0\] \(5, 4, 3\) and biases\[0\] \(6, 4\) have different leading batch"),
        ([], [], r"needs at least one layer"),
    ],
)
def test_validation_errors(weights, biases, message):
    w, b = _dense(weights, biases)
    with pytest.raises(ValueError, match=message):
        WeightSpace(tuple(w), tuple(b))


def test_feature_validation_and_check_spec():
    with pytest.raises(ValueError, match=r"weights\[0\] has shape \(4, 3\) and biases\[0\] shape \(4, 1\): wrong rank"):
        WeightSpace((jnp.zeros((4, 3)),), (jnp.zeros((4, 1)),), is_features=True)
    ws = random_weights(jax.random.PRNGKey(3), NetworkSpec.mlp((3, 4, 2)))
    with pytest.raises(ValueError, match=r"feats: weights\[1\] has shape \(2, 4, 1\) with \(n_out, n_in\) = \(2, 4\); spec widths \(3, 4, 5\)"):
        ws.to_features().check_spec(NetworkSpec.mlp((3, 4, 5)), "feats")
    with pytest.raises(ValueError, match="has 2 layers but spec has 3"):
        ws.check_spec(NetworkSpec.mlp((3, 4, 4, 2)))
    with pytest.raises(ValueError, match="1 layers from widths"):
        NetworkSpec((3, 4), ((), ()))
