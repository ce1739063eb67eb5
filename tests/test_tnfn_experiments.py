"""The transformer accuracy-prediction driver end to end on a miniature zoo (pipeline, not numbers)."""
import os
import shutil

import jax
import numpy as np
import pytest

from benchmarks import harness, tnfn_experiments
from common import zoo_store
from common.training import trainable_parameters
from transformer_nfn import TransformerSpec, nets, zoo

SMALL = TransformerSpec(num_blocks=1, num_heads=2, d_model=4, d_k=2, d_v=2, d_ffn=4)


def test_quick_prediction_pipeline_runs_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setattr(tnfn_experiments, "ROBUSTNESS_K", (0, 3))  # two moved test sets: two compiled moves
    # populations of 4 on 256 / 128 rows: tests/test_zoo_transformer.py's shapes, so its compiled programs serve;
    # 2 zoo epochs (checkpoint epoch 2): after 1 epoch the two test runs tied at 13 / 128 correct (tau undefined)
    argv = ["--quick", "--models", "12", "--shard-size", "4", "--zoo-epochs", "2", "--train-limit", "256",
            "--test-limit", "128", "--epochs", "1", "--methods", "tnfn", "--thresholds", "0", "--out", str(tmp_path)]
    result = tnfn_experiments.main(["prediction"] + argv)
    [cell] = result["cells"]
    assert (cell["table"], cell["threshold"], cell["method"]) == ("main", 0.0, "tnfn")
    assert -1.0 <= cell["test_tau_mean"] <= 1.0 and cell["seeds"] == 1 and cell["test_runs"] >= 2
    # threshold-0 models are also scored on test runs moved by the extended group, one tau per k
    assert len(cell["moved_tau_mean"]) == len(tnfn_experiments.ROBUSTNESS_K)
    assert all(-1.0 <= t <= 1.0 for t in cell["moved_tau_mean"])
    # the cell keeps its test predictions (the scatter figure); the zoo summary its accuracies (the histogram)
    stored = harness.read_json(tmp_path / "tnfn_runs" / "runs" / "mnist" / "main" / "t0" / "tnfn" / "seed0"
                               / "result.json")
    assert len(stored["predicted"]) == len(stored["true"]) == stored["test_runs"]
    assert all(0.0 <= p <= 1.0 for p in stored["predicted"]) and len(result["zoos"]["mnist"]["test_accuracy"]) == 12
    for name in ("tnfn_prediction_scatter.png", "tnfn_prediction_robustness.png", "tnfn_zoo_histograms.png"):
        assert (tmp_path / name).stat().st_size > 1000 and name in (tmp_path / "tnfn_prediction.md").read_text()
    # a threshold leaves out the runs below it (every cell of a threshold trains on these splits)
    zoo_dir = str(tmp_path / "tnfn_runs" / "zoos" / "mnist_transformer")
    assert {row["epoch"] for row in zoo_store.load_zoo(zoo_dir)[1]} == {2}  # the zoo stores only the study's checkpoint
    every, above = (tnfn_experiments.load_splits(zoo_dir, 2, t) for t in (0.0, 0.12))
    for split in ("train", "val", "test"):
        assert np.all(above[split][1] >= 0.12) and len(above[split][1]) <= len(every[split][1])
    assert sum(len(every[s][1]) - len(above[s][1]) for s in every) > 0  # some runs fall below 12%
    # a threshold that removed runs trains its own cells; one that removed none reuses threshold 0's record
    zero_dir = str(tmp_path / "tnfn_runs" / "runs" / "mnist" / "main" / "t0" / "tnfn" / "seed0")
    assert tnfn_experiments.unfiltered_record(above, every, zero_dir) is None
    reused = tnfn_experiments.unfiltered_record(every, every, zero_dir)
    assert reused["test_tau"] == stored["test_tau"] and reused["same_runs_as_threshold"] == 0.0
    assert "moved_test_taus" not in reused  # the robustness table keeps threshold 0 only

    # the branch ablation: each cell trains the predictor with one branch (training itself is the main cell's
    # code path, tested above, so a stand-in scores these models)
    trained = {}

    def stand_in(splits, model, seed, run_dir, args, moved=None):  # called for the cells still to run only
        trained[os.path.basename(os.path.dirname(run_dir))] = model  # .../ablation/t0/<branch>/seed0
        counts = {f"{k}_runs": len(splits[k][1]) for k in ("train", "val", "test")}
        record = {"seed": seed, "params": trainable_parameters(model), **counts, "steps": 0, "val_tau": 0.0,
                  "best_step": 0, "test_tau": 0.0, "wall_s": 0.0}
        if moved is not None:  # robustness cells: the moved test runs, as the method sees them
            record.update(moved_k=[0, 3], moved_test_taus=[0.0] * len(moved))
            canonical = tnfn_experiments.canonicalize(splits["test"][0])
            record["canonical_inputs"] = bool(np.allclose(splits["test"][0].blocks[0].w_a, canonical.blocks[0].w_a))
        harness.write_json(os.path.join(run_dir, "result.json"), record)
        return record

    monkeypatch.setattr(tnfn_experiments, "run_cell", stand_in)
    result = tnfn_experiments.main(["ablation"] + argv)  # the zoo and the main cell are read back
    assert {(c["table"], c["method"]) for c in result["cells"]} == {("main", "tnfn")} | {
        ("ablation", b) for b in ("encoder", "classifier", "embedding")}
    assert set(trained) == {"encoder", "classifier", "embedding"}
    for branch, model in trained.items():
        present = {"encoder": hasattr(model, "invariant"), "classifier": hasattr(model, "classifier_mlp"),
                   "embedding": hasattr(model, "embedding_linear")}
        assert present == {b: b == branch for b in present}, branch
    # the robustness study's extended-group predictors: canonicalised inputs; one moved copy per training run
    robust = tnfn_experiments.main(["robustness"] + argv)
    rows = {c["method"]: c for c in robust["cells"] if c["table"] == "main"}
    assert set(rows) == {"tnfn", "tnfn_canonical", "tnfn_augmented", "tnfn_sorted"}  # + the ablation's cells:
    assert {c["method"] for c in robust["cells"] if c["table"] == "ablation"} == {"encoder", "classifier", "embedding"}
    assert rows["tnfn_augmented"]["train_runs"] == 2 * rows["tnfn"]["train_runs"]
    runs = tmp_path / "tnfn_runs" / "runs" / "mnist" / "main" / "t0"
    assert harness.read_json(runs / "tnfn_canonical" / "seed0" / "result.json")["canonical_inputs"]
    assert harness.read_json(runs / "tnfn_sorted" / "seed0" / "result.json")["canonical_inputs"]
    assert not harness.read_json(runs / "tnfn_augmented" / "seed0" / "result.json")["canonical_inputs"]
    text = (tmp_path / "tnfn_prediction.md").read_text()
    assert "0.905" in text and "encoder branch alone" in text and "histogram" in text and "Robustness" in text
    # a threshold above every run: the cell is stored as "too few runs" (a rerun reads it back, trains nothing)
    high = argv[:argv.index("--thresholds")] + ["--thresholds", "0.99", "--out", str(tmp_path)]
    for _ in range(2):
        [cell] = [c for c in tnfn_experiments.main(["thresholds"] + high)["cells"] if c["threshold"] == 0.99]
        assert tnfn_experiments.format_cell(cell).startswith("too few runs") and cell["seeds"] == 1
        assert (runs.parent / "t0.99" / "tnfn" / "seed0" / "result.json").exists()
        assert "Trainable parameters (first dataset): Transformer-NFN " in (tmp_path / "tnfn_prediction.md").read_text()
    # a threshold below every run removes nothing: the threshold-0 cell, read back and not retrained
    assert min(result["zoos"]["mnist"]["test_accuracy"]) >= 0.01
    low = argv[:argv.index("--thresholds")] + ["--thresholds", "0.01", "--out", str(tmp_path)]
    [cell] = [c for c in tnfn_experiments.main(["thresholds"] + low)["cells"] if c["threshold"] == 0.01]
    assert cell["test_taus"] == [stored["test_tau"]] and "moved_tau_mean" not in cell
    assert harness.read_json(runs.parent / "t0.01" / "tnfn" / "seed0" / "result.json")["same_runs_as_threshold"] == 0
    assert "mnist at 0.01: no run falls below the threshold" in (tmp_path / "tnfn_prediction.md").read_text()
    monkeypatch.undo()
    shutil.rmtree(tmp_path / "tnfn_runs" / "zoos")  # finished cells and the zoo summary are all a rerun needs
    again = tnfn_experiments.main(["ablation"] + argv)  # every cell is done: read back, not retrained
    assert again["zoos"] == result["zoos"]
    assert sorted(c["test_taus"] for c in again["cells"]) == sorted(c["test_taus"] for c in robust["cells"])
    # --report: every finished run of every study, nothing generated or trained, even with a seed missing
    os.remove(tmp_path / "tnfn_runs" / "runs" / "mnist" / "main" / "t0" / "tnfn_canonical" / "seed0" / "result.json")
    report = tnfn_experiments.main(["--report"] + argv)
    assert {(c["table"], c["method"]) for c in report["cells"]} == {
        (c["table"], c["method"]) for c in robust["cells"] if c["method"] != "tnfn_canonical"}
    assert not (tmp_path / "tnfn_runs" / "zoos").exists() and report["zoos"] == result["zoos"]


def test_tree_cell_scores_on_flat_weights(tmp_path):
    # runs whose accuracy follows one weight entry: the trees find it (the authors' settings need >= 50 rows a leaf)
    keys = jax.random.split(jax.random.key(0), 320)  # small transformers: few features, a fast fit
    tw = jax.jit(jax.vmap(lambda k: nets.init_weights(k, SMALL, 3)))(keys)
    accuracy = np.asarray(jax.nn.sigmoid(10 * tw.blocks[0].q[:, 0, 0, 0]), np.float32)
    parts = {"train": slice(0, 220), "val": slice(220, 270), "test": slice(270, 320)}
    splits = {name: (jax.tree.map(lambda a: np.asarray(a)[rows], tw), accuracy[rows]) for name, rows in parts.items()}
    record = tnfn_experiments.run_tree_cell(splits, "lightgbm", 0, str(tmp_path))
    assert (record["train_runs"], record["val_runs"], record["test_runs"]) == (220, 50, 50)
    assert record["test_tau"] > 0.5 and record["steps"] >= 1 and record["params"] is None
    assert harness.read_json(tmp_path / "result.json") == record  # what a rerun of the study reads back


def test_a_threshold_above_every_run_is_reported_not_trained():
    """A high threshold on a short zoo leaves too few runs (a tau needs two test runs): the cell records the
    counts and a NaN tau, and the report says so instead of a number."""
    runs = lambda n: (None, np.linspace(0.1, 0.5, n).astype(np.float32))
    assert tnfn_experiments.too_few_runs({"train": runs(30), "val": runs(5), "test": runs(5)}) is None
    record = tnfn_experiments.too_few_runs({"train": runs(0), "val": runs(0), "test": runs(1)})
    assert (record["train_runs"], record["val_runs"], record["test_runs"]) == (0, 0, 1) and np.isnan(record["test_tau"])
    row = tnfn_experiments.summarise([{**record, "seed": 0, "dataset": "mnist", "table": "main", "threshold": 0.8,
                                       "method": "mlp"}])[0]
    assert tnfn_experiments.format_cell(row) == "too few runs (0/0/1)"


@pytest.mark.parametrize("dataset", ["mnist", "ag_news"])
def test_every_method_reads_its_zoos_networks(dataset):
    """Each predictor of the study takes the zoo's networks of its task: fc2 with one output per class (AG News
    4, MNIST 10) and a patch embedding for MNIST only."""
    classes = zoo.DATASETS[dataset]
    keys = jax.random.split(jax.random.key(0), 2)
    tw = jax.vmap(lambda k: nets.init_weights(k, zoo.ZOO_SPEC, classes,
                                              in_channels=1 if dataset == "mnist" else None))(keys)
    for method in ("tnfn", "tnfn_authors_init", "mlp", "statnn"):
        model = tnfn_experiments.build(method, dataset, 0, quick=True)
        assert model.logits(tw).shape == (2,), method
