"""TSW-SL experiments: gradient flows, targets, colour transfer and the sliced-Wasserstein generator (library
parts in tsw_sl, drivers and reports in benchmarks.tsw_*)."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from benchmarks import tsw_authors, tsw_colour_transfer, tsw_flows, tsw_generate
from benchmarks.tsw_report import wasserstein2_squared
from common.data import DATA_DIR_ENV, load_image
from tsw_sl import colour_transfer as ct
from tsw_sl import flows, targets
from tsw_sl import generate as gen

SHARED_DATA = Path(os.environ.get(DATA_DIR_ENV) or Path(__file__).parents[2] / "shared" / "data")


@pytest.fixture(autouse=True)
def data_dir(monkeypatch):
    monkeypatch.setenv(DATA_DIR_ENV, str(SHARED_DATA))


def test_wasserstein2_squared_matches_assignment():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(30, 3)), rng.normal(size=(30, 3)) + 1.0
    cost = ((x[:, None] - y[None]) ** 2).sum(-1)
    rows, cols = linear_sum_assignment(cost)
    assert wasserstein2_squared(x, y) == pytest.approx(cost[rows, cols].mean(), rel=1e-9)
    assert wasserstein2_squared(x, x) == pytest.approx(0.0, abs=1e-12)


LIBRARY_MODULES = ("tsw_sl", "tsw_sl.flows", "tsw_sl.colour_transfer", "tsw_sl.targets", "tsw_sl.generate")
REPORT_ONLY = ("matplotlib", "ot", "sklearn", "tqdm")


@pytest.mark.parametrize("module", LIBRARY_MODULES)
def test_library_imports_no_plotting_pot_sklearn_or_tqdm(module):
    code = f"import sys, json, {module}; print(json.dumps([m for m in {REPORT_ONLY} if m in sys.modules]))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).parents[1])
    assert json.loads(out.stdout.splitlines()[-1]) == []


def test_no_tsw_sl_module_imports_benchmarks():
    importing = re.compile(r"^\s*(from|import)\s+benchmarks\b", re.MULTILINE)
    root = Path(__file__).parents[1] / "tsw_sl"
    assert [p.name for p in root.rglob("*.py") if importing.search(p.read_text())] == []


@pytest.mark.parametrize("name", sorted(targets.TARGETS))
def test_targets_shapes_and_keys(name):
    a = targets.sample_target(name, jax.random.key(0), 64)
    dim = 3 if name in targets.MESHES else int(name.split("_")[1]) if name.startswith("gaussian_") else 2
    assert a.shape == (64, dim) and a.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(a)))
    np.testing.assert_array_equal(a, targets.sample_target(name, jax.random.key(0), 64))
    assert not np.array_equal(a, targets.sample_target(name, jax.random.key(1), 64))


def test_unknown_names_raise():
    with pytest.raises(ValueError, match="unknown target"):
        targets.sample_target("moons", jax.random.key(0), 4)
    with pytest.raises(ValueError, match="unknown method"):
        flows.default_lr("tsw", 2)


def test_default_learning_rates_follow_the_paper():
    assert flows.default_lr("sw", 200) == flows.default_lr("tsw_sl", 2) == 5e-3
    assert flows.default_lr("tsw_sl", 50) == flows.default_lr("db_tsw", 10) == 5e-2


@pytest.mark.parametrize("method", ["sw", "tsw_sl", "db_tsw", "max_tsw_sl"])
def test_short_flow_reduces_w2_tenfold(method):
    settings = flows.Settings(max_steps=3, max_lr=1e-2)
    k_src, k_tgt, k_flow = jax.random.split(jax.random.key(0), 3)
    target = targets.sample_target("8_gaussians", k_tgt, 50)
    source = flows.initial_particles(k_src, 50, 2)
    snaps, losses = flows.run_flow(k_flow, source, target, method, 300, 2e-2, 100, settings)
    assert snaps.shape == (4, 50, 2) and losses.shape == (300,)
    np.testing.assert_array_equal(snaps[0], source)
    start, end = (wasserstein2_squared(s, target) for s in (snaps[0], snaps[-1]))
    assert end < start / 10, (start, end)


def test_flow_report_names_only_the_cells_not_run():
    cell = dict(iterations=[100, 200, 300, 400, 500], w2_mean=[5.0, 4.0, 3.0, 2.0, 1.0], w2_std=[0.1] * 5,
                s_per_it=0.01)
    config = dict(runs=2, steps=500)
    partial = tsw_flows.markdown({"swiss_roll": {"sw": cell, "tsw_sl": cell}}, config)
    assert "Not run yet: swiss_roll/max_sw, swiss_roll/tsw_sl_distance" in partial
    assert "| SW | 5.00e+00 / 4.00e+00" in partial
    complete = tsw_flows.markdown({"swiss_roll": dict.fromkeys(tsw_flows.ALL_METHODS, cell)}, config)
    assert "Not run yet" not in complete


def test_flow_driver_writes_its_results(tmp_path, capsys):
    tsw_flows.main(["--out", str(tmp_path), "--targets", "swiss_roll", "--methods", "sw", "tsw_sl", "--runs", "1",
                    "--steps", "25"])
    saved = json.loads((tmp_path / "tsw_flows.json").read_text())
    assert set(saved["results"]["swiss_roll"]) == {"sw", "tsw_sl"}
    assert len(saved["results"]["swiss_roll"]["sw"]["w2_mean"]) == 26
    assert (tmp_path / "tsw_flows.md").exists() and (tmp_path / "tsw_flows.png").exists()
    stored = (tmp_path / "tsw_flows.json").read_text()
    with pytest.raises(SystemExit):  # other settings would silently replace the stored cells
        tsw_flows.main(["--out", str(tmp_path), "--targets", "swiss_roll", "--methods", "sw", "--runs", "1",
                        "--steps", "50"])
    assert "steps" in capsys.readouterr().err and (tmp_path / "tsw_flows.json").read_text() == stored
    tsw_flows.main(["--out", str(tmp_path), "--targets", "swiss_roll", "--methods", "sw", "--runs", "1", "--steps", "50",
                    "--fresh"])
    saved = json.loads((tmp_path / "tsw_flows.json").read_text())
    assert saved["config"]["steps"] == 50 and set(saved["results"]["swiss_roll"]) == {"sw"}


def test_authors_profile_report_sits_beside_the_library_profile(tmp_path):
    library = dict(w2_mean=[1.0, 2.5e-3], steps=2500)
    (tmp_path / "tsw_flows.json").write_text(json.dumps({"results": {"swiss_roll": {"sw": library}}}))
    tsw_flows.main(["--settings", "authors", "--out", str(tmp_path), "--targets", "swiss_roll", "--methods", "sw",
                    "--runs", "1", "--steps", "25"])
    saved = json.loads((tmp_path / "tsw_flows_authors.json").read_text())
    cell = saved["results"]["swiss_roll"]["sw"]
    assert "p_tree=2" in saved["config"]["settings"] and cell["w2_mean"][-1] < cell["w2_mean"][0]
    report = (tmp_path / "tsw_flows_authors.md").read_text()
    median = f"{np.median(cell['w2_final']):.1e}"
    assert f"| swiss_roll | SW | {cell['w2_mean'][-1]:.2e} [{median}] (25 its) | 2.50e-03 (2500 its) | - |" in report
    assert "swiss_roll (authors)" in report and (tmp_path / "tsw_flows_authors.png").exists()


@pytest.mark.parametrize("name", ["swiss_roll", "25_gaussians", "8_gaussians", "gaussian_10", "heart"])
def test_authors_targets_are_centred_and_rescaled(name):
    points = tsw_authors.authors_target(name, jax.random.key(0), 100)
    assert points.dtype == np.float32 and points.shape[0] == 100
    np.testing.assert_allclose(points.mean(0), 0.0, atol=1e-5)
    np.testing.assert_array_equal(points, tsw_authors.authors_target(name, jax.random.key(0), 100))
    if name == "swiss_roll":  # scaled to max |coordinate| 1 before centring
        assert 0.5 < np.abs(points).max() < 2.0 and np.ptp(points, axis=0).max() <= 2.0
    if name == "25_gaussians":  # four points per centre of the grid 2 {-2..2}^2 / 2.828
        centres = np.round((points + points.mean(0)) * 2.828 / 2)
        assert len(np.unique(centres, axis=0, return_counts=True)[1]) == 25


def test_authors_tsw_sl_does_not_depend_on_the_tree_spread():
    """Uniform splitting: each line carries no net mass, so narrow and wide trees with the same directions give the
    same loss for any p (docs/tsw_sl.md §13.1); the distance splitting (Db-TSW) does depend on it."""
    k_x, k_y, k_trees = jax.random.split(jax.random.key(3), 3)
    x, y = jax.random.normal(k_x, (30, 2)), 0.5 * jax.random.normal(k_y, (30, 2)) + 0.3
    narrow, wide = tsw_authors.AuthorsSettings(), tsw_authors.AuthorsSettings(**tsw_flows.WIDE)
    values = [tsw_authors.LOSSES["tsw_sl"](x, y, k_trees, s) for s in (narrow, wide)]  # p = 2
    np.testing.assert_allclose(*values, rtol=1e-5)
    db = [tsw_authors.LOSSES["db_tsw"](x, y, k_trees, tsw_authors.AuthorsSettings(root_scale=r)) for r in (1e-3, 1.0)]
    assert abs(float(db[0]) - float(db[1])) > 1e-3 * float(db[0])
    with pytest.raises(ValueError, match="root_law"):
        tsw_authors.AuthorsSettings(root_law="sphere")


def test_authors_colour_flow_stays_non_negative_and_moves_towards_the_target():
    k_src, k_tgt, k_flow = jax.random.split(jax.random.key(0), 3)
    source, target = jax.random.uniform(k_src, (20, 3)), 0.5 * jax.random.uniform(k_tgt, (20, 3)) + 0.5
    snaps = np.asarray(tsw_authors.transfer_palette(k_flow, source, target, "db_tsw", 20, 2))
    assert snaps.shape == (3, 20, 3) and snaps.min() >= 0.0
    np.testing.assert_allclose(snaps[0], source, rtol=1e-6)
    assert wasserstein2_squared(snaps[-1], target) < wasserstein2_squared(snaps[0], target)


def test_ablation_report_lists_every_variant():
    cell = dict(w2_mean=[5.0, 4.0, 3.0, 2.0, 1.0, 0.5], w2_final=[0.4, 0.6])
    text = tsw_flows.ablation_markdown({"SW": cell}, dict(target="swiss_roll", runs=2, steps=25))
    assert "| SW | 5.00e-01 (1.0e-01) | 5.00e-01 | 4.00e+00 |" in text
    assert len({label for label, *_ in tsw_flows.ABLATION}) == len(tsw_flows.ABLATION)


def test_vmapped_runs_equal_single_runs():
    keys = jax.random.split(jax.random.key(1), 2)
    sources = jax.vmap(lambda k: flows.initial_particles(k, 20, 3))(keys)
    tgts = jnp.stack([targets.sample_target("spot", k, 20) for k in keys])
    snaps, _ = flows.run_flows(jax.random.key(2), sources, tgts, "tsw_sl", 20, 5e-3, 10)
    run_keys = jax.random.split(jax.random.key(2), 2)
    for i in range(2):
        single, _ = flows.run_flow(run_keys[i], sources[i], tgts[i], "tsw_sl", 20, 5e-3, 10)
        np.testing.assert_allclose(snaps[i], single, atol=1e-6)


@pytest.mark.parametrize("method", sorted(ct.PAPER_STEP))
def test_colour_transfer_moves_palette_to_target(method):
    image = load_image("pot/ocean_day.jpg", as_float=True)[::16, ::16]
    target = load_image("pot/ocean_sunset.jpg", as_float=True)[::16, ::16]
    k_src, k_tgt, k_flow = jax.random.split(jax.random.key(0), 3)
    source_pal, labels = tsw_colour_transfer.palette(k_src, image.reshape(-1, 3), 50, n_fit=2000)
    target_pal, _ = tsw_colour_transfer.palette(k_tgt, target.reshape(-1, 3), 50, n_fit=2000)
    assert source_pal.shape == (50, 3) and labels.shape == (image.shape[0] * image.shape[1],)
    snaps = ct.transfer_palette(k_flow, source_pal, target_pal, method, 300, ct.PAPER_STEP[method])
    start, end = (wasserstein2_squared(s, target_pal) for s in (snaps[0], snaps[-1]))
    assert end < start / 20, (start, end)
    out = ct.recolour(image, labels, snaps[-1])
    assert out.shape == image.shape and out.min() >= 0.0 and out.max() <= 1.0
    np.testing.assert_allclose(ct.recolour(image, labels, source_pal)[0, 0], source_pal[labels[0]])


def test_frechet_distance_of_gaussians():
    mean, cov = np.array([1.0, 2.0]), np.array([[2.0, 0.5], [0.5, 1.0]])
    assert tsw_generate.frechet_distance((mean, cov), (mean, cov)) == pytest.approx(0.0, abs=1e-9)
    # Commuting covariances: ||dm||^2 + sum (sqrt(a) - sqrt(b))^2.
    value = tsw_generate.frechet_distance((np.zeros(2), np.diag([4.0, 1.0])), (np.ones(2), np.diag([1.0, 9.0])))
    assert value == pytest.approx(2.0 + 1.0 + 4.0)


@pytest.fixture(scope="module")
def mnist_small():
    images, labels = tsw_generate.load_images("mnist", "test")
    return images[:4000], labels[:4000]


def test_generator_loss_and_frechet_decrease(mnist_small):
    images, labels = mnist_small
    clf = tsw_generate.train_classifier(jax.random.key(0), images, labels, 150, batch_size=64)
    ref = tsw_generate.gaussian_stats(tsw_generate.classifier_features(clf, images[2000:]))

    def evaluate(params):
        return {"cfd": tsw_generate.classifier_frechet(clf, ref, gen.samples(params, jax.random.key(5), 1000))}

    init = evaluate(gen.init_generator(jax.random.key(3)))["cfd"]
    params, history = gen.train_generator(jax.random.key(3), images[:2000], "tsw_sl", 80, batch_size=64,
                                          eval_fn=evaluate, eval_every=80)
    losses = [h["loss"] for h in history]
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:10])
    assert history[-1]["eval/cfd"] < 0.8 * init, (init, history[-1]["eval/cfd"])
    assert gen.samples(params, jax.random.key(0), 3).shape == (3, 784)


def test_generator_resumes_after_a_stop(mnist_small, tmp_path):
    images = mnist_small[0][:512]
    kwargs = dict(batch_size=32, checkpoint_every=5)
    gen.train_generator(jax.random.key(4), images, "sw", 5, run_dir=tmp_path / "a", **kwargs)  # "stopped" at 5
    resumed, history = gen.train_generator(jax.random.key(4), images, "sw", 10, run_dir=tmp_path / "a", **kwargs)
    straight, _ = gen.train_generator(jax.random.key(4), images, "sw", 10, run_dir=tmp_path / "b", **kwargs)
    assert [h["step"] for h in history] == list(range(1, 11))
    for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(straight)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
