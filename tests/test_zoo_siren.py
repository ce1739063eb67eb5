"""SIREN zoo (magep.zoo siren) on a few MNIST test images, with a short fit."""
import jax
import numpy as np
import pytest

from common import zoo_store
from common.nets import siren_apply
from magep import zoo_recipes as recipes
from magep.zoo import generate_siren_zoo, summary


@pytest.fixture(scope="module")
def siren_zoo(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("siren_zoo"))
    rows = generate_siren_zoo(folder, "mnist", 4, split="test", offset=10, steps=300, learning_rate=1e-3,
                              shard_size=4, progress=False)
    return folder, rows


def test_init_follows_the_siren_scheme():
    ws = recipes.init_siren(jax.random.key(0), {}, 3)
    assert [w.shape for w in ws.weights] == [(32, 2), (32, 32), (3, 32)]
    assert np.abs(ws.weights[0]).max() <= 0.5 and np.abs(ws.weights[1]).max() <= np.sqrt(6 / 32) / 30
    assert np.abs(ws.weights[0]).max() > 0.4  # first layer really spans U(-1/2, 1/2)


def test_rows_hold_label_index_and_psnr(siren_zoo):
    _, rows = siren_zoo
    _, labels = recipes.siren_images("mnist", "test", 4, offset=10)
    assert [r["image_index"] for r in rows] == [10, 11, 12, 13] and [r["label"] for r in rows] == labels.tolist()
    assert all(r["psnr"] > 20 for r in rows)  # a 300-step fit at lr 1e-3 already reconstructs the digit
    assert "psnr" in summary(rows, "siren")


def test_class_interleaved_order_stratifies_every_range():
    labels = np.repeat(np.arange(3), [4, 2, 3])  # grouped by class, unequal counts
    order = recipes.class_interleaved_order(labels)
    assert sorted(order.tolist()) == list(range(9))
    assert labels[order].tolist() == [0, 1, 2, 0, 1, 2, 0, 2, 0]
    assert order.tolist()[:3] == [0, 4, 6]  # the first image of each class, in its stored order


def test_cifar10_sirens_fit_every_class_in_any_range():
    """The CIFAR-10 test files are grouped by class: the first 3,000 and the last 1,000 images of the SIREN
    order (the INR sets' train and test ranges) each hold every class equally often."""
    _, first = recipes.siren_images("cifar10", "test", 3000)
    _, last = recipes.siren_images("cifar10", "test", 1000, offset=9000)
    assert np.bincount(first, minlength=10).tolist() == [300] * 10
    assert np.bincount(last, minlength=10).tolist() == [100] * 10


def test_stored_weights_render_the_image_at_the_stored_psnr(siren_zoo):
    folder, rows = siren_zoo
    ws, labels, kept = zoo_store.load_weight_space_zoo(folder, target="label")
    images, _ = recipes.siren_images("mnist", "test", 4, offset=10)
    coords = recipes.siren_grid(28, 28)
    init = recipes.init_siren(jax.random.key(0), {}, 1)
    for m, row in enumerate(kept):
        image = images[m].reshape(-1, 1)
        pred = siren_apply(jax.tree.map(lambda a: a[m], ws), coords)
        mse = float(np.mean((np.asarray(pred) - image) ** 2))
        assert recipes.psnr(mse) == pytest.approx(row["psnr"], abs=1e-3)
        init_mse = float(np.mean((np.asarray(siren_apply(init, coords)) - image) ** 2))
        assert recipes.psnr(mse) > recipes.psnr(init_mse) + 5
    assert labels.tolist() == [r["label"] for r in rows]


def test_siren_apply_errors_name_siren_apply_and_coords():
    """Issue 15: the messages used to say `mlp_apply: x ...`."""
    ws = recipes.init_siren(jax.random.key(0), {}, 3)
    with pytest.raises(ValueError, match=r"siren_apply: coords has shape \(5, 3\) but the network takes n_0 = 2"):
        siren_apply(ws, np.zeros((5, 3), np.float32))
    with pytest.raises(ValueError, match=r"siren_apply: `ws` holds NFN features"):
        siren_apply(ws.to_features(), np.zeros((5, 2), np.float32))


def test_fits_in_data_order_equal_shuffled_fits_to_rounding():
    """siren_task visits the grid in data order (shuffle=False): full-batch steps of a pixel mean, so the
    engine's per-epoch shuffle would change only float rounding."""
    from common.population import train_population
    grid = {"coords": recipes.siren_grid(6, 6), "pixel": np.arange(36, dtype=np.int32)}
    hp = {"seed": np.arange(2, dtype=np.int32), "optimizer": np.zeros(2, np.int32),
          "train_fraction": np.ones(2, np.float32), "learning_rate": np.full(2, 1e-3, np.float32),
          "image": np.random.default_rng(0).uniform(-1, 1, (2, 36, 1)).astype(np.float32)}
    task = recipes.siren_task(1)
    assert not task.shuffle
    fit = lambda t: train_population(t, hp, grid, grid, epochs=10, batch_size=36, progress=False)[-1]
    ordered, shuffled = fit(task), fit(task._replace(shuffle=True))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), ordered.params, shuffled.params)
    assert ordered.metrics["test_mse"] == pytest.approx(shuffled.metrics["test_mse"], rel=1e-4)
