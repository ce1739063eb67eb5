"""Transformer weight space: validation messages, spec read-off, features."""
import jax
import jax.numpy as jnp
import pytest

from common.weight_space import WeightSpace
from transformer_nfn import BlockWeights, TransformerSpec, TransformerWeights, nets

SPEC = TransformerSpec(num_blocks=2, num_heads=2, d_model=4, d_k=3, d_v=2, d_ffn=5)


def _block(batch=(), spec=SPEC, **overrides):
    leaves = {f: jnp.zeros(batch + s) for f, s in spec.field_shapes().items()}
    leaves.update(overrides)
    return BlockWeights(**leaves)


def test_spec_read_off_raw_features_and_batched():
    tw = nets.init_weights(jax.random.key(0), SPEC, n_classes=3)
    assert TransformerSpec.from_weights(tw) == SPEC
    feats = tw.to_features()
    assert TransformerSpec.from_weights(feats) == SPEC
    assert feats.is_features and feats.blocks[1].q.shape == (2, 4, 3, 1) and feats.blocks[0].b_a.shape == (5, 1)
    assert feats.classifier.is_features and feats.embedding.weights[0].shape == (4, 1, 16)
    batched = jax.vmap(lambda k: nets.init_weights(k, SPEC, 3))(jax.random.split(jax.random.key(1), 3))
    assert batched.batch_shape == (3,) and TransformerSpec.from_weights(batched.to_features()) == SPEC
    assert SPEC.params_per_block == 2 * 2 * 4 * 3 + 2 * 2 * 4 * 2 + 2 * 4 * 5 + 5 + 4


def test_zoo_parameter_counts_match_spec():
    zoo = TransformerSpec(2, 2, 32, 16, 16, 64)
    tw = nets.init_weights(jax.random.key(0), zoo, n_classes=10)
    count = lambda tree: sum(x.size for x in jax.tree.leaves(tree))
    assert count(tw.blocks[0]) == zoo.params_per_block == 4 * 32 * 32 + (32 * 64 + 64 + 64 * 32 + 32)
    assert count(tw.embedding) == 32 * 16 + 32
    assert count(tw.classifier) == (32 * 32 + 32) + (32 * 10 + 10)


@pytest.mark.parametrize(
    "field, shape, match",
    [
        ("k", (2, 4, 2), r"field k has shape \(2, 4, 2\) but expected \(2, 4, 3\)"),
        ("o", (2, 3, 4), r"field o has shape \(2, 3, 4\) but expected \(2, 2, 4\)"),
        ("w_b", (5, 3), r"field w_b has shape \(5, 3\) but expected \(5, 4\)"),
        ("b_a", (4,), r"field b_a has shape \(4,\) but expected \(5,\)"),
    ],
)
def test_block_validation_names_field_and_shapes(field, shape, match):
    with pytest.raises(ValueError, match=match):
        _block(**{field: jnp.zeros(shape)})


def test_block_batch_axes_must_agree():
    with pytest.raises(ValueError, match=r"field q has shape \(3, 2, 4, 3\) but expected \(2, 2, 4, 3\)"):
        _block(batch=(2,), q=jnp.zeros((3, 2, 4, 3)))


def test_transformer_validation_names_block():
    other = TransformerSpec(1, 2, 4, 3, 2, 6)
    with pytest.raises(ValueError, match=r"blocks\[1\] field w_a has shape \(4, 6\) but blocks\[0\] has \(4, 5\)"):
        TransformerWeights((_block(), _block(spec=other)))
    with pytest.raises(ValueError, match="blocks is empty"):
        TransformerWeights(())
    with pytest.raises(ValueError, match=r"blocks\[0\] is a dict"):
        TransformerWeights(({},))
    bad_classifier = WeightSpace((jnp.zeros((4, 5)), jnp.zeros((3, 4))), (jnp.zeros(4), jnp.zeros(3)))
    with pytest.raises(ValueError, match=r"classifier.weights\[0\] has shape \(4, 5\) but must take D inputs, D = 4"):
        TransformerWeights((_block(),), classifier=bad_classifier)
    bad_embedding = WeightSpace((jnp.zeros((6, 1, 2, 2)),), (jnp.zeros(6),))
    with pytest.raises(ValueError, match=r"embedding.weights\[0\] has shape \(6, 1, 2, 2\) but must output D channels"):
        TransformerWeights((_block(),), embedding=bad_embedding)
    with pytest.raises(ValueError, match="already holds features"):
        TransformerWeights((_block(),)).to_features().to_features()


def test_spec_rejects_non_positive_sizes():
    with pytest.raises(ValueError, match="d_k must be a positive integer"):
        TransformerSpec(1, 2, 4, 0, 2, 5)
