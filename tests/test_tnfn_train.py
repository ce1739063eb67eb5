"""transformer_nfn.train: Transformer-NFN accuracy predictors trained on transformer weights."""
import jax
import numpy as np
import optax
import pytest
from flax import nnx

from common import zoo_store
from common.accuracy_prediction import bce_loss
from transformer_nfn import AccuracyPredictor, TransformerSpec, nets
from transformer_nfn.train import train_accuracy_predictor, zoo_weights
from transformer_nfn.zoo import ZOO_SPEC

SPEC = TransformerSpec(num_blocks=1, num_heads=2, d_model=4, d_k=2, d_v=2, d_ffn=4)
ROWS = 8


@pytest.fixture(scope="module")
def data():
    keys = jax.random.split(jax.random.key(0), ROWS)
    tw = jax.vmap(lambda k, s: nets.init_weights(k, SPEC, 3, w_init_std=s))(keys, np.linspace(0.1, 0.5, ROWS))
    return tw, np.linspace(0.2, 0.8, ROWS).astype(np.float32)


def _predictor():
    embedding = 4 * 1 * 4 * 4 + 4  # patch embedding 1 -> 4 channels, 4 x 4 kernels, with bias
    return AccuracyPredictor(SPEC, classifier_widths=(4, 4, 3), embedding_size=embedding, hidden_channels=(2,),
                             invariant_features=2, width=4, rngs=nnx.Rngs(0))


def test_training_lowers_the_loss(data):
    tw, accuracy = data
    model = _predictor()
    full = {"x": tw, "y": accuracy}
    loss = nnx.jit(lambda m, batch: bce_loss(m, batch, None)[0])  # one program, not one per operation
    start = float(loss(model, full))
    trained, history = train_accuracy_predictor(model, tw, accuracy, key=jax.random.key(0), num_steps=40,
                                                batch_size=4, optimizer=optax.adam(1e-2))
    assert len(history) == 40 and all(np.isfinite(r["loss"]) for r in history)
    assert float(loss(trained, full)) < start
    predictions = np.asarray(nnx.jit(lambda m, x: m(x))(trained, tw))
    assert predictions.shape == (ROWS,) and np.all((predictions > 0) & (predictions < 1))


def test_bad_inputs_are_named(data):
    tw, accuracy = data
    with pytest.raises(ValueError, match="must be raw TransformerWeights"):
        train_accuracy_predictor(_predictor(), tw.to_features(), accuracy, key=jax.random.key(0), num_steps=1)
    with pytest.raises(ValueError, match="one leading row axis"):
        train_accuracy_predictor(_predictor(), jax.tree.map(lambda a: a[0], tw), accuracy[:1],
                                 key=jax.random.key(0), num_steps=1)


def test_zoo_weights_reads_a_stored_zoo(tmp_path):
    keys = jax.random.split(jax.random.key(1), 4)
    tw = jax.vmap(lambda k: nets.init_weights(k, ZOO_SPEC, 10))(keys)
    template = jax.tree.map(lambda a: a[0], tw)
    layout = {"kind": "transformer", "leaves": zoo_store.leaf_layout(template), "settings": {"dataset": "mnist"}}

    def train_shard(shard):
        ids = np.asarray([c["model_id"] for c in shard])
        rows = [{**c, "epoch": 1, "test_accuracy": 0.25 * c["model_id"]} for c in shard]
        return zoo_store.flatten_params(jax.tree.map(lambda a: a[ids], tw)), rows

    zoo_store.generate_zoo(str(tmp_path), layout, [{"model_id": m} for m in range(4)], 2, train_shard, progress=False)
    loaded, targets = zoo_weights(str(tmp_path))
    np.testing.assert_allclose(np.asarray(targets), [0.0, 0.25, 0.5, 0.75])
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(tw)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert loaded.batch_shape == (4,)
