"""Zoo generation and population training under bad input and concurrent use (docs/input_policy.md):
one writer per zoo folder, damaged shards named and retrained, umask-respecting file modes, per-model
settings validated, diverged models flagged."""
import json
import os
import re

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from common import zoo_store
from common.data import CorruptDataError
from common.file_lock import try_exclusive_lock
from common.population import PopulationTask, train_population

LAYOUT = {"kind": "test", "leaves": [{"name": "w", "shape": [2], "offset": 0, "size": 2}]}
CONFIGS = [{"model_id": i} for i in range(5)]


def _train_shard(shard):
    """Deterministic stand-in for training: a model's weights are its id and its square."""
    weights = np.asarray([[c["model_id"], c["model_id"] ** 2] for c in shard], np.float32)
    return weights, [{**c, "epoch": 0, "test_accuracy": 0.5} for c in shard]


def _generate(zoo_dir, train_shard=_train_shard):
    return zoo_store.generate_zoo(str(zoo_dir), LAYOUT, CONFIGS, 2, train_shard, progress=False)


def test_second_writer_is_refused_and_first_finishes(tmp_path):
    refusals = []

    def train_shard(shard):  # while the first writer trains, a second one tries the same folder
        with pytest.raises(zoo_store.ZooLockedError, match=f"{re.escape(str(tmp_path))}.*another process.*pid {os.getpid()}") as err:
            _generate(tmp_path)
        refusals.append(str(err.value))
        return _train_shard(shard)

    rows = _generate(tmp_path, train_shard)
    assert len(refusals) == 3 and [r["model_id"] for r in rows] == list(range(5))
    assert not [n for n in os.listdir(tmp_path / "shards") if n.startswith(".tmp_")]


def test_complete_zoo_is_read_while_another_process_holds_the_lock(tmp_path):
    rows = _generate(tmp_path)
    trained = []
    with try_exclusive_lock(str(tmp_path / ".lock")):  # a second worker opening the same complete set
        assert _generate(tmp_path, lambda shard: trained.append(shard)) == rows
    assert not trained
    (tmp_path / "shards" / "shard_00002.npz").unlink()  # incomplete again: only a writer may go on
    with try_exclusive_lock(str(tmp_path / ".lock")), pytest.raises(zoo_store.ZooLockedError):
        _generate(tmp_path)


def test_stale_lock_file_of_a_dead_writer_does_not_block(tmp_path):
    tmp_path.joinpath(".lock").write_text("999999999")  # left by a killed writer: flock died with it
    assert len(_generate(tmp_path)) == 5


def test_truncated_shard_is_named_on_load_and_retrained_on_resume(tmp_path):
    _generate(tmp_path)
    weights, rows, _ = zoo_store.load_zoo(str(tmp_path))
    shard = tmp_path / "shards" / "shard_00001.npz"
    shard.write_bytes(shard.read_bytes()[:40])  # truncated
    with pytest.raises(CorruptDataError, match="shard_00001.npz.*truncated or damaged"):
        zoo_store.load_zoo(str(tmp_path))
    with pytest.warns(UserWarning, match="shard_00001.npz.*shards_corrupt"):
        resumed = _generate(tmp_path)
    assert resumed == rows
    np.testing.assert_array_equal(zoo_store.load_zoo(str(tmp_path))[0], weights)
    assert os.listdir(tmp_path / "shards_corrupt") == ["shard_00001.npz"]


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_files_get_umask_modes(tmp_path, umask):
    old = os.umask(umask)
    try:
        _generate(tmp_path)
    finally:
        os.umask(old)
    for path in [tmp_path / "layout.json", tmp_path / "metadata.csv", *(tmp_path / "shards").iterdir()]:
        assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask, path


def test_generate_rejects_bad_counts(tmp_path):
    with pytest.raises(ValueError, match="shard_size must be an int >= 1; got 0"):
        zoo_store.generate_zoo(str(tmp_path), LAYOUT, CONFIGS, 0, _train_shard, progress=False)
    with pytest.raises(ValueError, match="configs: no models"):
        zoo_store.generate_zoo(str(tmp_path), LAYOUT, [], 2, _train_shard, progress=False)


# ------------------------------------------------------------------------------------------- population
def _task():
    """A one-parameter least-squares model; 'accuracy' is argmax agreement, which a NaN weight fakes."""
    def init(key, hp):
        return {"w": jnp.zeros(())}

    def loss(params, hp, batch, key):
        return (params["w"] * batch["x"] - batch["y"]) ** 2, jnp.zeros(())

    def evaluate(params, hp, batch):
        logits = jnp.stack([params["w"] * batch["x"], -params["w"] * batch["x"]], axis=-1)
        return {"accuracy": (jnp.argmax(logits, -1) == (batch["y"] < 0)).astype(jnp.float32)}

    return PopulationTask(init, loss, evaluate, lambda hp, epoch: hp["learning_rate"],
                          (optax.identity(), optax.scale_by_adam()))


DATA = {"x": np.linspace(0.5, 2.0, 8, dtype=np.float32), "y": np.linspace(-1.0, 3.0, 8, dtype=np.float32)}


def _hparams(**overrides):
    hp = {"seed": np.arange(3, dtype=np.int32), "optimizer": np.asarray([0, 1, 0], np.int32),
          "train_fraction": np.ones(3, np.float32), "learning_rate": np.full(3, 0.05, np.float32)}
    return {**hp, **{k: np.asarray(v) for k, v in overrides.items()}}


def _fit(hp, **options):
    return train_population(_task(), hp, DATA, DATA, **{"epochs": 2, "batch_size": 4, "progress": False, **options})


@pytest.mark.parametrize("name, values, expected", [
    ("optimizer", [0, 2, 0], r"hparams\['optimizer'\] of model 1 is 2; expected an integer index in 0..1"),
    ("optimizer", [-1, 0, 0], r"hparams\['optimizer'\] of model 0 is -1;"),
    ("train_fraction", [1.0, 0.5, 0.0], r"hparams\['train_fraction'\] of model 2 is 0.0; expected a fraction in \(0, 1\]"),
    ("train_fraction", [1.5, 0.5, 1.0], r"hparams\['train_fraction'\] of model 0 is 1.5"),
    ("train_fraction", [np.nan, 0.5, 1.0], r"hparams\['train_fraction'\] of model 0 is nan"),
])
def test_population_rejects_out_of_range_settings(name, values, expected):
    with pytest.raises(ValueError, match=expected):
        _fit(_hparams(**{name: values}))


@pytest.mark.parametrize("option, value", [("batch_size", 0), ("epochs", -1), ("eval_batch_size", 0)])
def test_population_rejects_bad_counts(option, value):
    with pytest.raises(ValueError, match=f"{option} must be an int >= {0 if option == 'epochs' else 1}"):
        _fit(_hparams(), **{option: value})


def test_diverged_model_is_flagged_with_nan_metrics_in_zoo_rows():
    checkpoints = _fit(_hparams(learning_rate=[0.05, 0.05, 1e20]), checkpoint_epochs=[0])
    final = checkpoints[-1]
    assert not np.isfinite(final.params["w"][2])
    np.testing.assert_array_equal(final.diverged, [False, False, True])
    np.testing.assert_array_equal(checkpoints[0].diverged, [False, False, False])
    for k, v in final.metrics.items():
        assert np.isnan(v[2]) and np.isfinite(v[:2]).all(), (k, v)
    _, rows = zoo_store.checkpoint_rows([{"model_id": m} for m in range(3)], checkpoints)
    assert [r["diverged"] for r in rows] == [False] * 4 + [False, True]
    assert np.isnan(rows[-1]["test_accuracy"]) and json.loads(json.dumps(rows))[-1]["diverged"] is True
