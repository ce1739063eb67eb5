"""benchmarks.harness (timing, memory, load, calibration, result files, figures) and the four benchmarks that
use it, each run end to end on a tiny configuration into a temporary folder. No assertion on a measured time."""
import json
import os
import subprocess
import sys
import time
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import harness, magep_layers, tnfn_layers, tnfn_zoo_throughput, tsw_speed, zoo_throughput
from common import NetworkSpec, WeightSpace
from transformer_nfn import TransformerSpec, nets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def small_calibration(monkeypatch):
    """A 32 x 32 matmul calibration instead of the 2048 x 2048 one (seconds on a shared CPU)."""
    monkeypatch.setattr(harness, "MATMUL_SIZE", 32)


# ------------------------------------------------------------------------------------------------ timing


def test_time_calls_separates_the_first_call_and_counts_samples():
    calls = []
    timing = harness.time_calls(lambda: calls.append(1) or jnp.ones(3), repeats=4)
    assert len(calls) == 5 and len(timing.samples_s) == 4 and timing.first_s is not None
    assert timing.min_s <= timing.median_s and timing.cpu.process_cpu_s >= 0
    calls.clear()
    timing = harness.time_calls(lambda: calls.append(1), repeats=2, warmup=False)
    assert len(calls) == 2 and len(timing.samples_s) == 2 and timing.first_s is None
    with pytest.raises(ValueError, match="repeats"):
        harness.time_calls(lambda: None, repeats=0)


def test_measure_jitted_compiles_once_apart_from_the_timed_calls():
    traces = []

    def fn(x):
        traces.append(1)
        return (x @ x.T).sum()

    x = jnp.ones((16, 8), jnp.float32)
    m = harness.measure_jitted(fn, x, repeats=3)
    assert len(traces) == 1  # traced for the compile only: the warm-up and timed calls run the executable
    assert len(m["samples_s"]) == 3 and m["compile_s"] > 0 and m["first_s"] is not None
    assert m["memory"]["argument_bytes"] == x.nbytes and m["memory"]["output_bytes"] == 4
    assert m["flops"] > 0 and m["gflops"] > 0
    assert m["bytes_accessed"] >= x.nbytes  # XLA's traffic count reads the argument at least once
    assert m["gbytes_per_s"] == pytest.approx(m["bytes_accessed"] / m["median_s"] / 1e9)
    assert set(m["cpu"]) == {"wall_s", "process_cpu_s", "process_cores", "other_cores", "load_start", "load_end"}


def test_measure_cpu_resolves_other_cores_only_over_long_blocks():
    value, cpu = harness.measure_cpu(lambda: 7)
    assert value == 7 and cpu.other_cores is None  # far shorter than MIN_CPU_WINDOW_S

    def busy():
        start = time.perf_counter()
        while time.perf_counter() - start < harness.MIN_CPU_WINDOW_S:
            pass

    _, cpu = harness.measure_cpu(busy)
    assert cpu.wall_s >= harness.MIN_CPU_WINDOW_S and cpu.process_cpu_s > 0
    assert (cpu.other_cores is not None) == os.path.exists("/proc/stat")


# ------------------------------------------------------------------------------------------------ memory


def test_memory_is_positive_for_functions_that_allocate():
    m = harness.measure_call(lambda n: np.ones(n), 10**6, repeats=1)  # a host (numpy) allocation of 8 MB
    assert m["memory"]["host_peak_bytes"] >= 8 * 10**6 and m["compile_s"] is None
    assert m["memory"]["peak_bytes"] == sum(v for k, v in m["memory"].items() if k != "peak_bytes")
    x = jnp.arange(256, dtype=jnp.float32)
    mem = harness.measure_jitted(lambda v: jnp.outer(v, v) + 1.0, x, repeats=1)["memory"]
    assert mem["output_bytes"] == 256 * 256 * 4 and mem["peak_bytes"] >= mem["output_bytes"] + x.nbytes


def test_registered_pytrees_lower_as_they_are():
    """The flat-leaves workaround for WeightSpace / TransformerWeights under jit(...).lower is not needed."""
    ws = WeightSpace((jnp.ones((2, 3, 2, 1)), jnp.ones((2, 1, 3, 1))), (jnp.ones((2, 3, 1)), jnp.ones((2, 1, 1))),
                     is_features=True)
    total = lambda t: sum(jnp.sum(leaf) for leaf in jax.tree.leaves(t))
    m = harness.measure_jitted(lambda w: total(w.to_features() if not w.is_features else w), ws, repeats=1)
    assert m["memory"]["argument_bytes"] == harness.array_bytes(ws)
    zoo = TransformerSpec(num_blocks=1, num_heads=1, d_model=4, d_k=2, d_v=2, d_ffn=4)
    tw = jax.vmap(lambda k: nets.init_weights(k, zoo, 10))(jax.random.split(jax.random.key(0), 2))
    compiled, _ = harness.compile_jitted(total, tw)
    np.testing.assert_allclose(compiled(tw), total(tw), rtol=1e-6)


# ------------------------------------------------------------------------------------ calibration, runs


def test_matmul_calibration_and_run_record(small_calibration):
    cal = harness.matmul_calibration(size=16, repeats=2)
    assert cal["size"] == 16 and cal["jax_gflops"] > 0 and cal["numpy_gflops"] > 0
    assert cal["copy_bytes"] == harness.COPY_BYTES and cal["copy_gbps_best"] >= cal["copy_gbps"] > 0
    with pytest.raises(ValueError, match="size"):
        harness.matmul_calibration(size=0)
    record = harness.start_run().finish()
    assert record["calibration"]["size"] == 32
    assert len(record["load_average_start"]) == len(record["load_average_end"]) == 3 and record["wall_s"] >= 0
    text = "\n".join(harness.run_markdown(record))
    assert "Load average" in text and "Matmul calibration (32x32" in text and harness.MEMORY_DEFINITION in text
    assert "memory bandwidth (numpy copy of 256 MiB" in text
    assert record["environment"]["cpu_model"] and f"({record['environment']['cpu_model']})" in text  # which host
    simd = record["environment"]["numpy_simd"]  # which of numpy's kernels ran (its sorts differ by target)
    assert simd is None or f"numpy {np.__version__}, its SIMD targets {', '.join(simd)}" in text
    older = dict(record, environment={k: v for k, v in record["environment"].items() if k != "numpy_simd"})
    assert "SIMD" not in "\n".join(harness.run_markdown(older))  # a record from before: rendered without
    assert harness.percent_of_matmul(record["calibration"]["jax_gflops"] / 2, record) == "50%"


def test_numpy_simd_names_the_targets_numpy_dispatches_to():
    found = harness.numpy_simd()
    assert found is not None and found == [t for t in found if t.isupper()]  # numpy 2.x names them
    if found:  # turned off at start-up by NPY_DISABLE_CPU_FEATURES, a target is no longer dispatched to
        code = "from benchmarks import harness; print(harness.numpy_simd())"
        env = os.environ | {"NPY_DISABLE_CPU_FEATURES": found[-1]}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                             cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        left = out.stdout.splitlines()[-1]
        assert found[-1] not in left and all(t in left for t in found[:-1])


# ------------------------------------------------------------------------------------------ result files


def test_roofline_bound_is_the_slower_of_flops_at_the_matmul_rate_and_bytes_at_the_copy_rate():
    calibration = dict(jax_gflops=200.0, copy_gbps=20.0)
    assert harness.roofline_bound_s(4e9, 1e8, calibration) == pytest.approx(0.02)  # FLOP-bound: 20 ms against 5
    assert harness.roofline_bound_s(4e9, 1e9, calibration) == pytest.approx(0.05)  # byte-bound: 50 ms against 20
    assert harness.roofline_bound_s(None, 1e9, calibration) == pytest.approx(0.05)


def test_write_results_writes_json_and_markdown(tmp_path):
    json_path, md_path = harness.write_results(tmp_path / "new", "bench", {"a": [1, 2.5]}, "# title\n")
    assert json.loads(open(json_path).read()) == {"a": [1, 2.5]} == harness.read_results(tmp_path / "new", "bench")
    assert open(md_path).read() == "# title\n"
    assert harness.markdown_table(("x", "y"), [(1, 2)]) == ["| x | y |", "|---|---|", "| 1 | 2 |"]


def test_write_results_leaves_no_partial_file_on_failure(tmp_path):
    harness.write_results(tmp_path, "bench", {"old": 1}, "old\n")
    with pytest.raises(TypeError):
        harness.write_results(tmp_path, "bench", {"new": object()}, "new\n")  # does not serialise
    with pytest.raises(ValueError, match="markdown"):
        harness.write_results(tmp_path, "bench", {"new": 2}, None)
    assert sorted(os.listdir(tmp_path)) == ["bench.json", "bench.md"]  # no temporary file left behind
    assert harness.read_results(tmp_path, "bench") == {"old": 1} and (tmp_path / "bench.md").read_text() == "old\n"


def test_save_figure_writes_a_png_and_importing_the_harness_skips_matplotlib(tmp_path):
    fig, ax = harness.subplots(1, 1, figsize=(2, 2))
    ax.plot([0, 1], [1, 0])
    harness.save_figure(fig, tmp_path / "figs" / "line.png")
    assert (tmp_path / "figs" / "line.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = subprocess.run([sys.executable, "-c", "import sys, benchmarks.harness; print('matplotlib' in sys.modules)"],
                         cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ------------------------------------------------------------------------------------ the four benchmarks


def test_magep_layers_quick_run_writes_its_report(tmp_path, monkeypatch, small_calibration):
    tiny = dict(magep_layers.QUICK, cnn=NetworkSpec.mlp((2, 3, 1)), models=("monomial",), depths=())
    monkeypatch.setattr(magep_layers, "QUICK", tiny)
    magep_layers.main(["--quick", "--repeats", "1", "--out", str(tmp_path)])
    result = harness.read_results(tmp_path, "magep_layers")
    cell = result["models"]["monomial"]["2"]
    assert cell["forward_backward_peak_bytes"] == cell["forward_backward_memory"]["peak_bytes"] > 0
    assert cell["params"] > 0 and result["run"]["calibration"]["size"] == 32
    text = (tmp_path / "magep_layers.md").read_text()
    assert text.startswith("# MAGEP layers benchmark") and "| monomial |" in text and "Load average" in text


def test_tnfn_layers_quick_run_writes_its_report(tmp_path, monkeypatch, small_calibration):
    monkeypatch.setattr(tnfn_layers, "QUICK", dict(tnfn_layers.QUICK, ffn_scaling=()))  # the layers only
    tnfn_layers.main(["--quick", "--repeats", "1", "--out", str(tmp_path)])
    result = harness.read_results(tmp_path, "tnfn_layers")
    assert [r["model"] for r in result["rows"]] == ["TransformerEquivariant 1->10", "TransformerInvariant 10->10"]
    assert all(r["memory_mib"]["total"] > 0 for r in result["rows"])
    assert result["memory_method"] == harness.MEMORY_DEFINITION and result["run"]["calibration"]["size"] == 32
    assert "| TransformerInvariant 10->10 |" in (tmp_path / "tnfn_layers.md").read_text()


def test_tsw_speed_tiny_run_writes_and_renders_its_report(tmp_path, monkeypatch, small_calibration):
    every = tsw_speed.jax_methods
    monkeypatch.setattr(tsw_speed, "jax_methods",
                        lambda *cell: {k: f for k, f in every(*cell).items() if k in ("tsw_chain", "sw_ours")})
    tsw_speed.main(["--directions", "4", "--n", "32", "--d", "2", "--out", str(tmp_path)])
    data = harness.read_results(tmp_path, "tsw_speed")
    assert {(r["method"], r["mode"]) for r in data["rows"]} == {
        ("tsw_chain", "value"), ("sw_ours", "value"), ("sw_pot", "value"),
        ("tsw_chain", "value+grad"), ("sw_ours", "value+grad")}
    assert all(r["peak_bytes"] > 0 and len(r["cpu"]) == 6 for r in data["rows"])
    pot = next(r for r in data["rows"] if r["method"] == "sw_pot")
    assert pot["memory"]["argument_bytes"] == 2 * 32 * 2 * 8  # x and y as float64
    first = (tmp_path / "tsw_speed.md").read_text()
    assert "## value: time (ms)" in first and "Load average" in first
    (tmp_path / "tsw_speed.md").unlink()
    tsw_speed.main(["--render", "--out", str(tmp_path)])
    assert (tmp_path / "tsw_speed.md").read_text() == first


def test_zoo_throughput_quick_run_writes_its_report(tmp_path, monkeypatch, small_calibration):
    """The population trainer is stubbed (its compile alone takes about a minute on a shared CPU; it is tested
    in test_zoo_population.py): this checks the step-time arithmetic, the FLOP counts and the report."""
    def fake_train_population(task, hparams, train, test, **kwargs):
        return [SimpleNamespace(metrics={"test_mse": np.full(len(hparams["seed"]), 0.01, np.float32)})]

    monkeypatch.setattr(zoo_throughput, "train_population", fake_train_population)
    zoo_throughput.main(["--quick", "--out", str(tmp_path)])
    result = harness.read_results(tmp_path, "zoo_throughput")
    (row,) = result["cnn"]["population"]
    assert row["models"] == 2 and row["activation"] == "relu" and row["chunk_size"] == 1
    assert row["ms_per_model_step"] > 0 and row["gflops"] == pytest.approx(
        result["cnn"]["flops_per_model_step"] / row["step_s"] / 1e9)
    # 3 x 2 x multiply-adds of 1-16-16-16-10 on 28 x 28 inputs: 13^2, 6^2 and 2^2 output positions
    assert result["cnn"]["flops_per_model_step"] == 6 * 512 * (169 * 16 * 9 + 36 * 16 * 144 + 4 * 16 * 144 + 160)
    assert result["siren"]["flops_per_fit_step"] == 6 * 784 * (2 * 32 + 32 * 32 + 32)
    assert result["siren"]["psnr_db_after_2x_steps"]["median"] == pytest.approx(10 * np.log10(4 / 0.01), rel=1e-6)
    assert result["run"]["calibration"]["size"] == 32
    assert "## Small CNN Zoo population step (mnist, 28 x 28 x 1, batch 512)" in (tmp_path / "zoo_throughput.md").read_text()


def test_zoo_throughput_workers_combine_into_the_machine_rate():
    cpu = lambda other: {"other_cores": other}
    cell = lambda step_s, other: {"activation": "relu", "models": 8, "chunk_size": 1, "step_s": step_s,
                                  "compile_s": 2.0 * step_s, "cpu": cpu(other)}
    (row,) = zoo_throughput.combine_workers([[cell(0.010, 1.0)], [cell(0.015, 0.9)]], flops=3e8, peak=100.0)
    assert row["ms_per_model_step"] == pytest.approx(6.0)  # 100 + 66.7 model-steps per second
    assert row["worker_ms_per_model_step"] == pytest.approx([10.0, 15.0]) and row["workers"] == 2
    assert row["gflops"] == pytest.approx(50.0) and row["percent_of_peak"] == pytest.approx(50.0)
    assert row["other_cores"] == 0.9 and row["compile_s"] == 0.03
    with pytest.raises(ValueError):  # workers that measured different cells
        zoo_throughput.combine_workers([[cell(0.01, 1.0)], []], flops=3e8, peak=100.0)
    args = SimpleNamespace(dataset="mnist", batch_size=512, steps=48, activations=["tanh"], populations=[8],
                           chunks=[1, None])
    command = zoo_throughput.worker_command(args, 1, "py")
    assert command[:5] == ["py", "-m", "benchmarks.zoo_throughput", "--population-worker", "1"]
    assert command[-3:] == ["--chunks", "1", "all"]


def test_transformer_zoo_throughput_quick_run_writes_its_report(tmp_path, monkeypatch, small_calibration):
    """The population trainer is stubbed (tested in test_zoo_transformer.py and test_zoo_population.py): this
    checks the FLOP count, the step-time arithmetic and the report."""
    monkeypatch.setattr(tnfn_zoo_throughput, "train_population", lambda *args, **kwargs: [])
    tnfn_zoo_throughput.main(["--quick", "--out", str(tmp_path)])
    result = harness.read_results(tmp_path, "tnfn_zoo_throughput")
    (row,) = result["population"]
    assert (row["dataset"], row["models"], row["chunk_size"], row["micro_batch"]) == ("mnist", 2, 1, None)
    assert row["gflops"] == pytest.approx(result["flops"]["mnist"] / row["step_s"] / 1e9)
    # per token and block: q/k/v 2 x 32 x 48, o 32 x 32, FFN 2 x 32 x 64, attention 2 x 49 x (16 + 16);
    # 4 x 4 patches to 32 channels; classifier 32 x 32 + 32 x 10; 49 tokens, batch 128
    macs = 2 * 49 * (3072 + 1024 + 4096 + 2 * 49 * 32) + 49 * 16 * 32 + 32 * 32 + 32 * 10
    assert result["flops"]["mnist"] == 6 * 128 * macs
    assert tnfn_zoo_throughput.transformer_step_flops("ag_news") == 6 * 128 * (
        2 * 128 * (3072 + 1024 + 4096 + 2 * 128 * 32) + 32 * 32 + 32 * 4)
    assert "| mnist | 2 | 1 | 1 | all |" in (tmp_path / "tnfn_zoo_throughput.md").read_text()


def test_population_step_time_takes_the_fastest_of_its_repeats():
    """One compiling call, then ``repeats`` calls of one and of two epochs; the step time is the difference of the
    fastest of each (a slow outlier among the repeats does not count)."""
    durations = iter([0.3, 0.25, 0.05, 0.3, 0.35, 0.1, 0.4])  # first; three 1-epoch calls; three 2-epoch calls
    calls = []

    def run(epochs):
        calls.append(epochs)
        time.sleep(next(durations))

    timing = zoo_throughput.population_step_time(run, steps_per_epoch=2, models=1, repeats=3)
    assert calls == [1, 1, 1, 1, 2, 2, 2] and timing["repeats"] == 3
    assert 0.05 <= timing["one_epoch_s"] < 0.2 and 0.1 <= timing["two_epochs_s"] < 0.25
