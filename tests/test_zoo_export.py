"""`common.zoo_store.export_checkpoints`: the checkpoints a study reads, copied into a small zoo folder that loads
like the source (same rows, weights and model ids, hence the same splits)."""
import numpy as np
import pytest

from common import zoo_store

LAYOUT = {"kind": "test", "leaves": [{"name": "w", "shape": [2], "offset": 0, "size": 2}], "settings": {"seed": 0}}
CONFIGS = [{"model_id": i} for i in range(5)]


def _train_shard(shard):
    """Two checkpoints (epochs 0 and 3) per model; weights (id + epoch, id * epoch)."""
    rows = [{**c, "epoch": e, "test_accuracy": 0.1 * c["model_id"] + e} for e in (0, 3) for c in shard]
    weights = np.asarray([[r["model_id"] + r["epoch"], r["model_id"] * r["epoch"]] for r in rows], np.float32)
    return weights, rows


def test_export_keeps_only_the_chosen_epochs_and_loads_like_the_source(tmp_path):
    source, out = tmp_path / "zoo", tmp_path / "zoo_final"
    zoo_store.generate_zoo(str(source), LAYOUT, CONFIGS, 2, _train_shard, progress=False)
    rows = zoo_store.export_checkpoints(str(source), str(out), [3])
    all_weights, all_rows, _ = zoo_store.load_zoo(str(source))
    weights, stored, layout = zoo_store.load_zoo(str(out))
    final = [i for i, r in enumerate(all_rows) if r["epoch"] == 3]
    assert stored == rows == [all_rows[i] for i in final] and len(rows) == len(CONFIGS)
    np.testing.assert_array_equal(weights, all_weights[final])
    assert layout == {**LAYOUT, "exported_epochs": [3]}
    split = dict(fractions=(0.6, 0.2, 0.2), seed=1)
    test_ids = lambda rs, **f: sorted(rs[i]["model_id"] for i in zoo_store.select_split(rs, "test", **split, **f))
    assert test_ids(stored) == test_ids(all_rows, epochs=[3])  # the same models on each side
    with pytest.raises(ValueError, match="exists"):
        zoo_store.export_checkpoints(str(source), str(out), [3])
    with pytest.raises(ValueError, match="no checkpoint at epochs \\[7\\]"):
        zoo_store.export_checkpoints(str(source), str(tmp_path / "none"), [7])
    assert not (tmp_path / "none").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["zoo", "zoo_final"]
