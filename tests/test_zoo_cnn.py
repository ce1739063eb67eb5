"""CNN zoo generation on digits, storage, resume after SIGKILL, splits, loaders and the original-format reader."""
import csv
import gzip
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from common import zoo_store
from common.nets import cnn_apply
from magep import small_cnn_zoo
from magep import zoo_recipes as recipes
from magep.zoo import generate_cnn_zoo, main
from tests.magep_fixtures import DIGITS_ZOO_BATCH_SIZE

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = dict(n_models=8, epochs=6, seed=0, batch_size=DIGITS_ZOO_BATCH_SIZE)
MARKS = recipes.cnn_checkpoint_epochs(ARGS["epochs"])


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("cnn_zoo"))
    rows = generate_cnn_zoo(folder, "digits", shard_size=4, progress=False, **ARGS)
    return folder, rows


def test_checkpoint_epochs_follow_the_original():
    assert recipes.cnn_checkpoint_epochs(86) == [0, 1, 2, 3, 20, 40, 60, 80, 86]
    assert recipes.cnn_checkpoint_epochs(6) == [0, 1, 2, 3, 4, 6]
    assert recipes.cnn_checkpoint_epochs(172) == [0, 1, 2, 3, 40, 80, 120, 160, 172]


def test_initialisers_follow_keras():
    # one uniform draw per kernel feeds every scheme, so "random_normal" at std 1 is the normal draw that
    # "orthogonal" orthonormalises: the reference is numpy's QR of it with diag(R) made positive
    schemes = {name: i for i, name in enumerate(recipes.CNN_W_INITS)}
    init = jax.jit(recipes.init_cnn)
    draw = lambda name: init(jax.random.key(4), {"w_init": schemes[name], "init_std": 1.0}).weights
    normal, orthogonal, he = draw("random_normal"), draw("orthogonal"), draw("he_normal")
    keras = lambda w: np.asarray(w).transpose(2, 3, 1, 0).reshape(-1, w.shape[0]) if w.ndim == 4 else np.asarray(w).T
    for n, q in zip(normal, orthogonal):  # Keras layout: [kh * kw * in, out]
        tall = keras(n).shape[0] >= keras(n).shape[1]
        ref, r = np.linalg.qr(keras(n) if tall else keras(n).T)
        ref = ref * np.sign(np.diag(r))
        np.testing.assert_allclose(keras(q), ref if tall else ref.T, atol=2e-5)
    w = np.asarray(he[1])  # 16 x 16 x 3 x 3: fan_in 144; Keras's 2-sigma truncated normal of std sqrt(2 / fan_in)
    std = np.sqrt(2.0 / 144)
    assert np.abs(w).max() <= 2 * std / 0.87962566103423978 * (1 + 1e-6)
    assert np.std(w) == pytest.approx(std, rel=0.06)


def test_digits_zoo_is_far_above_chance_and_diverse(zoo):
    _, rows = zoo
    final = np.array([r["test_accuracy"] for r in rows if r["epoch"] == ARGS["epochs"]])
    assert len(final) == ARGS["n_models"]
    assert final.max() > 0.7  # chance is 0.1
    assert final.max() - final.min() > 0.4
    assert len({r["activation"] for r in rows}) == 2 and len({r["optimizer"] for r in rows}) >= 2


def test_stored_weights_reproduce_the_stored_accuracy(zoo):
    folder, _ = zoo
    ws, targets, rows = zoo_store.load_weight_space_zoo(folder, epochs=[ARGS["epochs"]])
    assert ws.weights[0].shape == (ARGS["n_models"], 16, 1, 3, 3) and ws.weights[3].shape == (ARGS["n_models"], 10, 16)
    _, test, _ = recipes.cnn_dataset("digits")
    for m in (0, len(rows) - 1):
        logits = cnn_apply(jax.tree.map(lambda a: a[m], ws), test["x"], rows[m]["activation"])
        accuracy = np.mean(np.argmax(np.asarray(logits), -1) == test["y"])
        assert accuracy == pytest.approx(targets[m], abs=1e-6)


def test_metadata_csv_lists_every_checkpoint_once(zoo):
    folder, rows = zoo
    with open(os.path.join(folder, "metadata.csv")) as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(rows) == ARGS["n_models"] * len(MARKS)
    pairs = {(int(r["model_id"]), int(r["epoch"])) for r in table}
    assert pairs == {(m, e) for m in range(ARGS["n_models"]) for e in MARKS}


def test_splits_never_share_a_model(zoo):
    folder, rows = zoo
    parts = {s: zoo_store.load_weight_space_zoo(folder, s, fractions=(0.5, 0.25, 0.25))[2]
             for s in ("train", "val", "test")}
    ids = {s: {r["model_id"] for r in part} for s, part in parts.items()}
    assert not (ids["train"] & ids["val"] or ids["train"] & ids["test"] or ids["val"] & ids["test"])
    assert sum(len(p) for p in parts.values()) == len(rows)
    assert all(len(v) for v in ids.values())


def test_filters(zoo):
    folder, rows = zoo
    _, acc, kept = zoo_store.load_weight_space_zoo(folder, epochs=[0, ARGS["epochs"]], where={"activation": "tanh"},
                                                   min_accuracy=0.2)
    assert kept and all(r["activation"] == "tanh" and r["epoch"] in (0, ARGS["epochs"]) for r in kept)
    assert np.all(acc >= 0.2)
    expected = [r for r in rows if r["activation"] == "tanh" and r["epoch"] in (0, ARGS["epochs"])
                and r["test_accuracy"] >= 0.2]
    assert len(kept) == len(expected)


def test_other_settings_in_the_same_folder_are_refused(zoo):
    folder, _ = zoo
    with pytest.raises(ValueError, match="other settings"):
        generate_cnn_zoo(folder, "digits", shard_size=4, progress=False, **{**ARGS, "epochs": 5})


def test_resume_after_sigkill_loses_and_duplicates_nothing(zoo, tmp_path):
    folder = str(tmp_path / "killed")
    # the fixture's models and shards of 4: a kill after the first shard leaves one population to train again
    argv = ["cnn", "--dataset", "digits", "--models", str(ARGS["n_models"]), "--epochs", str(ARGS["epochs"]),
            "--batch-size", str(ARGS["batch_size"]), "--shard-size", "4", "--out", folder]
    cmd = [sys.executable, "-m", "magep.zoo", *argv]
    env = {**os.environ, "JAX_NUM_CPU_DEVICES": "4", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = os.path.join(folder, "shards", "shard_00000.npz")
    deadline = time.time() + 300
    while not os.path.exists(first) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and os.path.exists(first)
    stored = [n for n in os.listdir(os.path.join(folder, "shards")) if n.startswith("shard_")]
    assert len(stored) == 1  # killed mid-generation, not after it

    main(argv)
    weights, rows, _ = zoo_store.load_zoo(folder)
    assert sorted((r["model_id"], r["epoch"]) for r in rows) == sorted(
        (m, e) for m in range(ARGS["n_models"]) for e in MARKS)
    # resumed or not, each model ends where the uninterrupted fixture's did
    ref_weights, ref_rows, _ = zoo_store.load_zoo(zoo[0])
    ref = {(r["model_id"], r["epoch"]): i for i, r in enumerate(ref_rows)}
    for i, r in enumerate(rows):
        np.testing.assert_allclose(weights[i], ref_weights[ref[(r["model_id"], r["epoch"])]], rtol=1e-4, atol=1e-5)


def _write_original_release(folder, ws, rows):
    """The Small CNN Zoo release format: Keras-oriented flat weights, metrics.csv.gz, layout.csv."""
    os.makedirs(folder)
    tensors, names = [], []
    for i, (w, b) in enumerate(zip(ws.weights, ws.biases)):
        keras = w.transpose(0, 3, 4, 2, 1) if w.ndim == 5 else w.transpose(0, 2, 1)
        layer = f"conv2d_{i}" if w.ndim == 5 else "dense"
        tensors += [keras, b]
        names += [f"sequential/{layer}/kernel:0", f"sequential/{layer}/bias:0"]
    flat = np.concatenate([t.reshape(t.shape[0], -1) for t in tensors], axis=1)
    np.save(os.path.join(folder, "weights.npy"), flat)
    with open(os.path.join(folder, "layout.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["varname", "start_idx", "end_idx", "size", "shape"])
        start = 0
        for name, t in zip(names, tensors):
            size = int(np.prod(t.shape[1:]))
            writer.writerow([name, start, start + size, size, str(tuple(t.shape[1:]))])
            start += size
    with gzip.open(os.path.join(folder, "metrics.csv.gz"), "wt", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["config.activation", "config.learning_rate", "config.random_seed", "step", "test_accuracy"])
        for r in rows:
            writer.writerow([r["activation"], r["learning_rate"], r["seed"], r["epoch"] * 10, r["test_accuracy"]])


def test_original_release_reader(zoo, tmp_path):
    folder, _ = zoo
    ws, _, rows = zoo_store.load_weight_space_zoo(folder, where={"activation": "tanh"}, epochs=[0, ARGS["epochs"]])
    release = str(tmp_path / "release")
    _write_original_release(release, ws, rows)
    back, back_rows = small_cnn_zoo.read_small_cnn_zoo(release)
    for a, b in zip(jax.tree.leaves(ws), jax.tree.leaves(back)):
        np.testing.assert_array_equal(a, b)
    assert len({r["model_id"] for r in back_rows}) == len({r["model_id"] for r in rows})
    assert [r["activation"] for r in back_rows] == [r["activation"] for r in rows]
    with pytest.raises(ValueError, match="magep.small_cnn_zoo"):  # the family-agnostic loader points there
        zoo_store.load_weight_space_zoo(release)
    # splits of the release by the recovered model ids
    parts = [small_cnn_zoo.load_small_cnn_zoo(release, s, fractions=(0.5, 0.25, 0.25))[2]
             for s in ("train", "val", "test")]
    assert sum(map(len, parts)) == len(rows)
    groups = [{(r["activation"], r["random_seed"]) for r in p} for p in parts]
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])
