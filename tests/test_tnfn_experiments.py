"""The transformer accuracy-prediction driver end to end on a miniature zoo (pipeline, not numbers)."""
from benchmarks import tnfn_experiments


def test_quick_prediction_pipeline_runs_and_resumes(tmp_path):
    # populations of 4 on 256 / 128 rows: tests/test_zoo_transformer.py's shapes, so its compiled programs serve
    argv = ["--quick", "--models", "12", "--shard-size", "4", "--zoo-epochs", "1", "--train-limit", "256",
            "--test-limit", "128",
            "--methods", "tnfn", "--thresholds", "0", "0.05", "--out", str(tmp_path)]
    result = tnfn_experiments.main(argv)
    cells = {(c["table"], c["threshold"], c["method"]) for c in result["cells"]}
    assert cells == {("main", t, "tnfn") for t in (0.0, 0.05)} | {
        ("ablation", 0.0, b) for b in ("encoder", "classifier", "embedding")}
    for cell in result["cells"]:
        assert -1.0 <= cell["test_tau_mean"] <= 1.0 and cell["seeds"] == 1 and cell["test_runs"] >= 2
    by_threshold = {c["threshold"]: c for c in result["cells"] if c["table"] == "main"}
    assert by_threshold[0.05]["test_runs"] <= by_threshold[0.0]["test_runs"]  # runs below 5% left out
    text = (tmp_path / "tnfn_prediction.md").read_text()
    assert "0.905" in text and "encoder branch alone" in text and "histogram" in text
    again = tnfn_experiments.main(argv)  # every cell is done: read back, not retrained
    assert sorted(c["test_taus"] for c in again["cells"]) == sorted(c["test_taus"] for c in result["cells"])
