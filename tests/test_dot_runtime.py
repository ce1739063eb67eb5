"""benchmarks.dot_runtime: YNNPACK's products against XLA's own dot runtime, per predictor cell."""
import statistics

from benchmarks import dot_runtime, harness


def test_compare_cell_gives_the_products_to_xla_and_times_both_in_alternation():
    cell = dot_runtime.compare_cell("ours_monomial", 2, "fwd", xla_dots_first=True, rounds=3, calls=2)
    fusions = cell["ynn_fusions"]
    assert fusions["xla_dots"] < fusions["ynnpack"], fusions  # the option reached XLA: fewer kernels on YNNPACK
    assert all(len(cell["burst_median_s"][v]) == 3 and min(cell["burst_median_s"][v]) > 0
               for v in dot_runtime.VARIANTS)
    expected = [x / y for x, y in zip(cell["burst_median_s"]["xla_dots"], cell["burst_median_s"]["ynnpack"])]
    assert cell["ratios"] == expected and all(t > 0 for t in cell["first_run_s"].values())


def test_dot_runtime_quick_run_writes_its_report(tmp_path, monkeypatch):
    monkeypatch.setattr(harness, "MATMUL_SIZE", 32)
    dot_runtime.main(["--quick", "--out", str(tmp_path)])
    result = harness.read_results(tmp_path, "dot_runtime")
    assert [(c["job"], c["batch"], c["mode"], c["xla_dots_first"]) for c in result["cells"]] == [
        ("ours_monomial", 8, "fwd", False), ("ours_monomial", 8, "fwd", True)]  # both compile orders
    assert all("error" not in c and len(c["ratios"]) == 2 for c in result["cells"]), result["cells"]
    text = (tmp_path / "dot_runtime.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| Monomial-NFN | 8 | fwd |")]
    medians = [f"{statistics.median(c['ratios']):.3f}" for c in result["cells"]]
    assert len(rows) == 2 and all(m in row for m, row in zip(medians, rows))
    assert f"({result['run']['environment']['cpu_model']})" in text  # the host, since the ranking depends on it
