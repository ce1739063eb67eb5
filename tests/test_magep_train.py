"""magep.train and common.accuracy_prediction: accuracy predictors trained on weight-space features."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.stats
from flax import nnx

from common import NetworkSpec, groups, training, zoo_store
from common.accuracy_prediction import bce_loss, kendall_tau, random_batches
from magep import GeneralizationPredictor
from magep.train import divide_by_scales, tensor_scales, train_generalization_predictor, zoo_features
from tests.common_fixtures import leaves_close, random_weights

SPEC = NetworkSpec.mlp((2, 4, 4, 1))
CNN_SPEC = NetworkSpec((1, 4, 4, 3), ((3, 3), (3, 3), ()))  # a small CNN: conv, conv, dense
ROWS = 16


@pytest.fixture(scope="module")
def data():
    ws = random_weights(jax.random.key(0), SPEC, batch=(ROWS,))
    accuracy = np.linspace(0.1, 0.9, ROWS).astype(np.float32)
    return ws.to_features(), accuracy


def _predictor(nfn="magep"):
    return GeneralizationPredictor(SPEC, nfn=nfn, scaling="positive", channels=4 if nfn == "magep" else None,
                                   head=8, rngs=nnx.Rngs(0))


def test_training_matches_the_inline_recipe_it_replaces(data):
    """Gate: the demo's former inline BCE + batches + fit code gives the same parameters bit for bit (the recipe
    does not depend on the body; STATNN compiles fastest)."""
    feats, accuracy = data
    trained, history = train_generalization_predictor(_predictor("statnn"), feats, accuracy, key=jax.random.key(0),
                                                      num_steps=3, batch_size=8)
    graphdef, params = nnx.split(_predictor("statnn"), nnx.Param)

    def loss(model, batch, key):
        return optax.sigmoid_binary_cross_entropy(model.logits(batch["x"]), batch["y"]).mean(), {}

    def batches(step):
        idx = np.random.default_rng(step).choice(ROWS, 8, replace=False)
        return {"x": jax.tree.map(lambda a: a[idx], feats), "y": accuracy[idx]}

    run = lambda optimizer: training.fit(training.nnx_loss_fn(graphdef, loss), params, optimizer, batches,
                                         key=jax.random.key(0), num_steps=3, progress=False)[0].params
    flat, per_array = run(optax.flatten(optax.adam(1e-3))), run(optax.adam(1e-3))  # the default; Adam per array
    for new, old, adam in zip(*map(jax.tree.leaves, (nnx.state(trained, nnx.Param), flat, per_array))):
        np.testing.assert_array_equal(np.asarray(new), np.asarray(old))
        np.testing.assert_allclose(np.asarray(old), np.asarray(adam), rtol=1e-6, atol=1e-7)  # the same updates
    assert len(history) == 3 and all(np.isfinite(r["loss"]) for r in history)


def test_training_lowers_the_loss_and_returns_a_copy(data):
    feats, accuracy = data
    model = _predictor("statnn")
    before = jax.tree.map(np.asarray, nnx.state(model, nnx.Param))
    full = {"x": feats, "y": accuracy}
    start = float(bce_loss(model, full, None)[0])
    trained, _ = train_generalization_predictor(model, feats, accuracy, key=jax.random.key(1), num_steps=60,
                                                batch_size=8, optimizer=optax.adam(1e-2))
    assert float(bce_loss(trained, full, None)[0]) < start
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(nnx.state(model, nnx.Param))):
        np.testing.assert_array_equal(a, np.asarray(b))  # the input model is left as it was


def test_bad_inputs_are_named(data):
    feats, accuracy = data
    raw = random_weights(jax.random.key(0), SPEC, batch=(ROWS,))
    with pytest.raises(ValueError, match="must be NFN features"):
        train_generalization_predictor(_predictor(), raw, accuracy, key=jax.random.key(0), num_steps=1)
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 1\]"):
        train_generalization_predictor(_predictor(), feats, 100 * accuracy, key=jax.random.key(0), num_steps=1)
    with pytest.raises(ValueError, match="same leading row axis"):
        random_batches(feats, accuracy[:-1], 4)
    with pytest.raises(ValueError, match="batch_size must be in 1..16"):
        random_batches(feats, accuracy, 17)


def test_random_batches_are_deterministic_and_without_replacement(data):
    feats, accuracy = data
    batches = random_batches(feats, accuracy, 8)
    first, again = batches(3), batches(3)
    np.testing.assert_array_equal(first["y"], again["y"])
    assert len(set(first["y"].tolist())) == 8  # distinct rows (the accuracies are distinct)
    assert first["x"].weights[0].shape == (8,) + feats.weights[0].shape[1:]
    assert not np.array_equal(batches(4)["y"], first["y"])


def test_kendall_tau_matches_scipy():
    assert kendall_tau([1, 2, 3, 4], [1, 2, 4, 3]) == pytest.approx(4 / 6)  # 5 concordant, 1 discordant pair
    rng = np.random.default_rng(0)
    predicted, target = rng.normal(size=50), rng.integers(0, 5, 50)  # ties in the targets: tau-b
    assert kendall_tau(predicted, target) == scipy.stats.kendalltau(predicted, target).statistic
    with pytest.raises(ValueError, match=r"both be \[R\] with R >= 2"):
        kendall_tau([1.0, 2.0], [1.0, 2.0, 3.0])


def test_zoo_features_reads_a_stored_zoo(tmp_path):
    ws = random_weights(jax.random.key(2), CNN_SPEC, batch=(6,))
    template = jax.tree.map(lambda a: a[0], ws)
    layout = {"kind": "weight_space", "leaves": zoo_store.leaf_layout(template)}
    configs = [{"model_id": m} for m in range(6)]

    def train_shard(shard):
        ids = [c["model_id"] for c in shard]
        flat = zoo_store.flatten_params(jax.tree.map(lambda a: a[np.asarray(ids)], ws))
        return flat, [{**c, "epoch": 1, "test_accuracy": 0.1 * c["model_id"]} for c in shard]

    zoo_store.generate_zoo(str(tmp_path), layout, configs, 3, train_shard, progress=False)
    feats, targets, spec = zoo_features(str(tmp_path))
    assert spec == CNN_SPEC and feats.is_features
    np.testing.assert_allclose(np.asarray(targets), 0.1 * np.arange(6), rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(feats.weights[1]), np.asarray(ws.to_features().weights[1]))
    train_feats, train_targets, _ = zoo_features(str(tmp_path), "train", fractions=(0.5, 0.0, 0.5))
    assert train_feats.batch_shape == (3,) and train_targets.shape == (3,)


def test_tensor_scales_give_unit_tensors_and_commute_with_the_group(data):
    """Dividing by the per-tensor scales of a set leaves every tensor at unit std, and commutes with the sign
    group's action (a scalar per tensor); a per-entry rescaling, the broken alternative, does not."""
    feats, _ = data
    skewed = dataclasses.replace(feats, weights=tuple(w * 10.0 ** -i for i, w in enumerate(feats.weights)),
                                 biases=tuple(3.0 * b for b in feats.biases))  # tensors of very different sizes
    scales = tensor_scales(skewed)
    unit = divide_by_scales(skewed, scales)
    assert all(abs(float(np.std(a)) - 1.0) < 1e-5 for a in jax.tree.leaves(unit))
    g = groups.sample_monomial(jax.random.key(3), SPEC, scaling="sign")
    act = jax.vmap(lambda w: groups.act(g, w))
    assert leaves_close(divide_by_scales(act(skewed), scales), act(unit), rtol=1e-5, atol=1e-6)
    entrywise = jax.tree.map(lambda a: 1.0 + jnp.abs(a[0]), skewed)  # one divisor per entry, shared by rows
    broken = lambda w: jax.tree.map(lambda a, d: a / d, w, entrywise)
    assert not leaves_close(broken(act(skewed)), act(broken(skewed)), rtol=1e-3, atol=1e-3)


def test_tensor_scales_name_bad_inputs(data):
    feats, _ = data
    with pytest.raises(ValueError, match="tensor_scales: feats must be NFN features"):
        tensor_scales(random_weights(jax.random.key(0), SPEC, batch=(ROWS,)))
    with pytest.raises(ValueError, match="at least 2 rows"):
        tensor_scales(jax.tree.map(lambda a: a[:1], feats))
    constant = jax.tree.map(jnp.zeros_like, feats)
    assert all(c.size == 1 and float(c.ravel()[0]) == 1.0 for c in jax.tree.leaves(tensor_scales(constant)))
