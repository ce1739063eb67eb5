"""Small Transformer Zoo recipe (transformer_nfn.zoo) on tiny MNIST slices; AG News embedding on a slice."""
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common import data as zoo_data
from common import zoo_store
from transformer_nfn import nets
from transformer_nfn import zoo
from transformer_nfn.weights import TransformerWeights

LIMITS = dict(train_limit=256, test_limit=128)


@pytest.fixture(scope="module")
def mnist_zoo(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("transformer_zoo"))
    rows = zoo.generate_transformer_zoo(folder, "mnist", 3, epochs=2, shard_size=4, progress=False, **LIMITS)
    return folder, rows


def test_grid_sampling_is_distinct_and_on_the_grid():
    configs = zoo.sample_transformer_configs(200, seed=0, dataset="mnist")
    keys = {tuple(c[k] for k in ("optimizer", "learning_rate", "w_init_std", "weight_decay", "train_fraction",
                                 "dropout")) for c in configs}
    assert len(keys) == 200
    for c in configs:
        optimizers, lrs, stds = zoo.FAMILIES[c["family"]]
        assert c["optimizer"] in optimizers and c["learning_rate"] in lrs and c["w_init_std"] in stds
        assert c["seed"] == 3 and c["n_classes"] == 10
    assert {c["family"] for c in configs} == {"adaptive", "sgd"}


def test_checkpoints_and_schedule():
    assert zoo.transformer_checkpoint_epochs(100) == [1, 50, 75, 100]
    assert zoo.transformer_checkpoint_epochs(4) == [1, 2, 3, 4]
    assert zoo.transformer_checkpoint_epochs(4, (0.75,)) == [3]
    assert zoo.transformer_checkpoint_epochs(2, (0.01, 0.2)) == [1]
    for bad in ((), (0.0,), (1.5,)):
        with pytest.raises(ValueError, match="fractions"):
            zoo.transformer_checkpoint_epochs(4, bad)
    hp = {"learning_rate": jnp.float32(1e-2), "epochs": jnp.float32(100)}
    schedule = zoo.transformer_task("mnist").learning_rate
    lr = lambda e: float(schedule(hp, jnp.float32(e)))
    assert lr(0) == pytest.approx(1e-3) and lr(10) == pytest.approx(1e-2, rel=1e-5)
    assert lr(100) == pytest.approx(zoo.FINAL_LR, rel=1e-4) and lr(5) < lr(9) and lr(60) > lr(90)


def test_zoo_rows_weights_and_loader(mnist_zoo):
    folder, rows = mnist_zoo
    marks = zoo.transformer_checkpoint_epochs(2)
    assert sorted((r["model_id"], r["epoch"]) for r in rows) == [(m, e) for m in range(3) for e in marks]
    tw, acc, kept = zoo.load_transformer_zoo(folder, epochs=[2])
    assert isinstance(tw, TransformerWeights) and tw.blocks[0].q.shape == (3, 2, 32, 16)
    assert tw.embedding.weights[0].shape == (3, 32, 1, 4, 4) and tw.classifier.weights[1].shape == (3, 10, 32)
    # the stored weights reproduce the stored accuracy through the reference forward pass
    _, test, _ = zoo.transformer_dataset("mnist", **LIMITS)
    for m in range(3):
        logits = nets.classifier_apply(jax.tree.map(lambda a: a[m], tw), jnp.asarray(test["x"]))
        assert np.mean(np.argmax(np.asarray(logits), -1) == test["y"]) == pytest.approx(acc[m], abs=1e-6)
    parts = [zoo.load_transformer_zoo(folder, s, fractions=(0.34, 0.33, 0.33))[2] for s in ("train", "val", "test")]
    ids = [{r["model_id"] for r in p} for p in parts]
    assert sum(map(len, parts)) == len(rows) and not any(a & b for a, b in itertools.combinations(ids, 2))


def test_classifier_dropout_applies_only_with_a_key():
    tw = nets.init_weights(jax.random.key(0), zoo.ZOO_SPEC, 4, w_init_std=0.3, in_channels=None)
    table = jax.random.normal(jax.random.key(1), (50, 32))
    ids = jax.random.randint(jax.random.key(2), (3, 16), 0, 50)
    apply = functools.partial(nets.classifier_apply, inputs=ids, token_embedding=table)
    both = jax.jit(lambda tw: (apply(tw, dropout=0.5), apply(tw),
                               apply(tw, dropout=0.5, dropout_key=jax.random.key(3))))
    ours, reference, dropped = both(tw)
    np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-6)
    assert not np.allclose(dropped, ours)


def test_token_embedding_is_deterministic_and_informative():
    _, texts = zoo_data.load_ag_news("train")
    vocab, table = zoo.build_token_embedding(texts[:1500])
    vocab2, table2 = zoo.build_token_embedding(texts[:1500])
    assert vocab == vocab2 and np.array_equal(table, table2)
    assert table.shape == (len(vocab) + 1, 32) and not table[0].any()
    np.testing.assert_allclose(np.linalg.norm(table[1:], axis=1), np.sqrt(32), rtol=1e-4)
    counts = {w: sum(t.split().count(w) for t in texts[:1500]) for w in vocab[:3] + vocab[-3:]}
    assert all(c >= 2 for c in counts.values()) and counts[vocab[0]] >= counts[vocab[-1]]


def test_zoo_stores_only_the_chosen_checkpoints(tmp_path, mnist_zoo):
    """checkpoint_fractions=(0.5,) on 2 epochs: the epoch-1 checkpoint only (not also the last epoch, which the
    trainer always records), with the same weights and metrics as the full zoo's epoch-1 rows."""
    rows = zoo.generate_transformer_zoo(str(tmp_path), "mnist", 3, epochs=2, shard_size=4, progress=False,
                                        checkpoint_fractions=(0.5,), **LIMITS)
    assert sorted((r["model_id"], r["epoch"]) for r in rows) == [(m, 1) for m in range(3)]
    tw, acc, _ = zoo.load_transformer_zoo(str(tmp_path))
    full_tw, full_acc, _ = zoo.load_transformer_zoo(mnist_zoo[0], epochs=[1])
    np.testing.assert_array_equal(acc, full_acc)
    np.testing.assert_array_equal(np.asarray(tw.blocks[0].q), np.asarray(full_tw.blocks[0].q))


def test_a_resumed_zoo_keeps_its_stored_token_table(tmp_path):
    """The token table's SVD differs in its last bits with the BLAS thread count: a zoo resumed in a process
    that recomputes it bit-differently trains on the stored table (same settings hash, same bits); a table that
    differs beyond rounding, or a folder without a started zoo, gets the recomputed one."""
    table = np.random.default_rng(0).standard_normal((50, 32)).astype(np.float32)
    recomputed = table + np.float32(5e-10) * np.sign(table)
    folder = str(tmp_path)
    assert zoo.resumed_token_embedding(folder, recomputed) is recomputed  # nothing stored: a new zoo
    np.save(tmp_path / zoo.TOKEN_EMBEDDING_FILE, table)
    assert zoo.resumed_token_embedding(folder, recomputed) is recomputed  # a table but no started zoo
    (tmp_path / zoo_store.LAYOUT_FILE).write_text("{}")
    resumed = zoo.resumed_token_embedding(folder, recomputed)
    assert np.array_equal(resumed, table) and not np.array_equal(recomputed, table)
    assert zoo.resumed_token_embedding(folder, table + 0.01) is not resumed  # another table: refused later
    assert not np.allclose(zoo.resumed_token_embedding(folder, table + 0.01), table)
