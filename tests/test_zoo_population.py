"""The population trainer (common.population) with the Small-CNN-Zoo recipe on the embedded digits."""
import jax
import numpy as np
import pytest

from common.distributed import make_mesh
from common.nets import cnn_apply
from common import population
from common.population import CPU_CHUNK, resolve_chunk_size, train_population
from magep import zoo_recipes as recipes
from tests.magep_fixtures import DIGITS_ZOO_BATCH_SIZE as BATCH

EPOCHS = 2


@pytest.fixture(scope="module")
def digits():
    train, test, _ = recipes.cnn_dataset("digits")
    return train, test


def _configs():
    """Four relu networks covering every optimizer, init scheme family, train fraction and dropout."""
    configs = recipes.sample_cnn_configs(4, seed=1, dataset="digits", epochs=EPOCHS)
    overrides = [("adam", 1.0, 0.3, "he_normal", 3e-3), ("rmsprop", 0.5, 0.0, "orthogonal", 1e-3),
                 ("sgd", 0.25, 0.5, "glorot_uniform", 3e-2), ("adam", 0.1, 0.1, "truncated_normal", 1e-2)]
    for c, (opt, frac, drop, w_init, lr) in zip(configs, overrides):
        c.update(activation="relu", optimizer=opt, train_fraction=frac, dropout=drop, w_init=w_init,
                 learning_rate=lr, init_std=0.2)
    return configs


def _train(configs, digits, mesh):
    train, test = digits
    return train_population(recipes.cnn_task("relu"), recipes.cnn_hparams(configs), train, test, epochs=EPOCHS,
                            batch_size=BATCH, checkpoint_epochs=[0, 1], mesh=mesh, progress=False)


def test_population_equals_members_trained_alone(digits):
    configs = _configs()
    population = _train(configs, digits, make_mesh())  # 4 simulated devices: the population is sharded
    assert [c.epoch for c in population] == [0, 1, EPOCHS]
    one_device = make_mesh(jax.devices()[:1])
    for m, config in enumerate(configs):
        alone = _train([config], digits, one_device)
        for ck_pop, ck_alone in zip(population, alone):
            for a, b in zip(jax.tree.leaves(ck_pop.params), jax.tree.leaves(ck_alone.params)):
                # float rounding of the two batched layouts, amplified by Adam (seen: 4e-6 on one weight of
                # 2304); another member's update or other dropout draws differ by orders of magnitude more
                np.testing.assert_allclose(a[m], b[0], rtol=1e-4, atol=2e-5)
            for k in ck_pop.metrics:
                np.testing.assert_allclose(ck_pop.metrics[k][m], ck_alone.metrics[k][0], rtol=1e-4, atol=1e-6)
    # training changed the weights, and differently per member (the hyperparameters are really per model)
    first, last = population[0].params.weights[0], population[-1].params.weights[0]
    assert np.all(np.abs(last - first).reshape(4, -1).max(axis=1) > 1e-3)


def test_chunked_population_equals_fully_vmapped(digits):
    """chunk_size = 3 over 4 members (one full chunk and a remainder) and chunk_size = 1 (each member stepped
    unbatched) give the fully vmapped results."""
    configs, one_device = _configs(), make_mesh(jax.devices()[:1])
    run = lambda chunk: train_population(recipes.cnn_task("relu"), recipes.cnn_hparams(configs), *digits, epochs=1,
                                         batch_size=BATCH, mesh=one_device, chunk_size=chunk, progress=False)[-1]
    whole = run(None)
    for chunked in (run(3), run(1)):
        for a, b in zip(jax.tree.leaves(chunked.params), jax.tree.leaves(whole.params)):
            # float rounding only: one epoch of Adam steps amplifies last-bit differences of the batched layouts
            # (seen: 1.8e-5 on one weight of 9216); a wrong chunking differs by far more (distinct members' updates)
            np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
        assert chunked.metrics.keys() == whole.metrics.keys()
    assert resolve_chunk_size("auto", one_device) == CPU_CHUNK and resolve_chunk_size("auto", make_mesh()) is None
    with pytest.raises(ValueError, match="chunk_size must be"):
        run(0)


def test_micro_batches_give_the_whole_batch_update(digits):
    """Gradients accumulated over micro-batches of 48 rows (128 = 48 + 48 + 32 valid + 16 padding rows) give the
    whole-batch update; without dropout only float rounding differs."""
    configs, one_device = _configs(), make_mesh(jax.devices()[:1])
    for c in configs:
        c["dropout"] = 0.0
    task = recipes.cnn_task("relu")
    # the recipe's task takes a batch of BATCH rows in one gradient pass, the whole-batch update (and, with the
    # chunking of the test above, the program it compiled)
    assert task.micro_batch is None or task.micro_batch >= BATCH
    run = lambda t: train_population(t, recipes.cnn_hparams(configs), *digits, epochs=1, batch_size=BATCH,
                                     checkpoint_epochs=[0, 1], mesh=one_device, chunk_size=None, progress=False)
    parts, (first, whole) = run(task._replace(micro_batch=48))[-1], run(task)
    for a, b in zip(jax.tree.leaves(parts.params), jax.tree.leaves(whole.params)):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
    moved = [np.abs(a - b).max() for a, b in zip(jax.tree.leaves(parts.params), jax.tree.leaves(first.params))]
    assert max(moved) > 1e-3  # the comparison above is between trained networks


def test_recorded_metrics_match_the_reference_forward_pass(digits):
    train, test = digits
    ckpt = _train(_configs()[:2], digits, make_mesh())[-1]
    for m in range(2):
        ws = jax.tree.map(lambda a: a[m], ckpt.params)
        logits = cnn_apply(ws, test["x"], "relu")  # common.nets reference (lax.conv), not the training forward
        accuracy = float(np.mean(np.argmax(np.asarray(logits), -1) == test["y"]))
        assert accuracy == pytest.approx(ckpt.metrics["test_accuracy"][m], abs=1e-6)


def test_train_metrics_read_the_first_rows_of_each_subset(digits):
    train, test = digits
    configs = _configs()[:2]  # train fractions 1.0 and 0.5
    hp = recipes.cnn_hparams(configs)
    [ckpt] = train_population(recipes.cnn_task("relu"), hp, train, test, epochs=0, batch_size=BATCH,
                              train_eval_rows=100, progress=False)
    with jax.threefry_partitionable(False):
        member = np.asarray(population._memberships(jax.device_put(hp), len(train["y"])))
    for m in range(2):
        rows = np.flatnonzero(member[m])[:100]  # the model's subset, in data order, its first 100 rows
        logits = cnn_apply(jax.tree.map(lambda a: a[m], ckpt.params), train["x"][rows], "relu")
        accuracy = float(np.mean(np.argmax(np.asarray(logits), -1) == train["y"][rows]))
        assert accuracy == pytest.approx(ckpt.metrics["train_accuracy"][m], abs=1e-6)
    assert member[1].sum() < member[0].sum() and not np.array_equal(np.flatnonzero(member[1])[:100], np.arange(100))
    with pytest.raises(ValueError, match="train_eval_rows"):
        train_population(recipes.cnn_task("relu"), hp, train, test, epochs=0, batch_size=BATCH, train_eval_rows=0)


def test_train_fraction_freezes_members_after_their_epoch(digits):
    """A member with a 10% subset does ceil(n_m / B) = 2 updates per epoch; the full one does 12."""
    configs = _configs()
    for c in configs:
        c["optimizer"], c["dropout"], c["learning_rate"] = "sgd", 0.0, 1e-2
    ckpts = _train(configs, digits, make_mesh())
    # plain SGD at a fixed lr: the number of updates shows in how far the last layer's bias moved
    moved = np.abs(ckpts[1].params.biases[-1] - ckpts[0].params.biases[-1]).sum(axis=1)
    assert moved[0] > 2 * moved[3]


def test_missing_hyperparameters_raise(digits):
    hp = recipes.cnn_hparams(_configs())
    del hp["train_fraction"]
    with pytest.raises(ValueError, match="train_fraction"):
        train_population(recipes.cnn_task("relu"), hp, *digits, epochs=1, batch_size=BATCH, progress=False)
