"""The generalisation-prediction study: group augmentation, best-validation model selection, and the
`benchmarks.magep_experiments generalization --quick` pipeline end to end (pipeline, not numbers)."""
import functools
import shutil

import jax
import numpy as np
import optax
import pytest
from flax import nnx
from scipy import stats

from benchmarks import magep_experiments, magep_inr_editing
from common import NetworkSpec, WeightSpace, checkpointing
from common.accuracy_prediction import fit_predictor, kendall_tau, predict_logits
from common.nets import mlp_apply
from magep import GeneralizationPredictor
from magep.train import augment_with_group
from magep.zoo import generate_cnn_zoo
from tests.common_fixtures import random_weights
from tests.magep_fixtures import DIGITS_ZOO_BATCH_SIZE

SPEC = NetworkSpec.mlp((3, 5, 4, 2))
ROWS = 6


@pytest.mark.parametrize("scaling, activation, top", [("positive", "relu", 1e3), ("sign", "tanh", 1.0)])
def test_augmented_copies_compute_the_same_function(scaling, activation, top):
    ws = random_weights(jax.random.key(0), SPEC, batch=(ROWS,))
    targets = np.linspace(0.1, 0.6, ROWS)
    feats, tiled = augment_with_group(ws.to_features(), targets, SPEC, jax.random.key(1), scaling=scaling,
                                      max_scale=top, copies=2)
    assert feats.batch_shape == (3 * ROWS,)
    np.testing.assert_allclose(np.asarray(tiled), np.tile(targets, 3), rtol=1e-6)
    raw = WeightSpace.from_features(feats, SPEC)
    x = jax.random.normal(jax.random.key(2), (7, 3))
    outputs = jax.vmap(lambda w: mlp_apply(w, x, activation))(raw)  # [3R, 7, 2]
    for copy in (1, 2):
        np.testing.assert_allclose(outputs[copy * ROWS:(copy + 1) * ROWS], outputs[:ROWS], rtol=1e-4, atol=1e-5)
        moved = jax.tree.map(lambda a: a[copy * ROWS:(copy + 1) * ROWS], feats.weights[0])
        assert not np.allclose(moved, ws.to_features().weights[0])  # the copies are transformed, not repeated
    if scaling == "positive":  # scales drawn in [1, top]: the first layer's rows grow, never shrink
        ratio = np.abs(np.asarray(feats.biases[0][ROWS:2 * ROWS])).max() / np.abs(np.asarray(ws.biases[0])).max()
        assert 1.0 <= ratio <= top


def test_augment_rejects_bad_arguments():
    feats = random_weights(jax.random.key(0), SPEC, batch=(ROWS,)).to_features()
    with pytest.raises(ValueError, match="scaling must be"):
        augment_with_group(feats, np.zeros(ROWS), SPEC, jax.random.key(0), scaling="none")
    with pytest.raises(ValueError, match="max_scale must be >= 1"):
        augment_with_group(feats, np.zeros(ROWS), SPEC, jax.random.key(0), scaling="positive", max_scale=0.5)
    with pytest.raises(ValueError, match="copies must be >= 1"):
        augment_with_group(feats, np.zeros(ROWS), SPEC, jax.random.key(0), scaling="positive", copies=0)


def test_fit_predictor_returns_the_best_validation_model_and_keeps_it_on_resume(tmp_path):
    ws = random_weights(jax.random.key(0), SPEC, batch=(24,))
    feats, acc = ws.to_features(), np.linspace(0.1, 0.9, 24).astype(np.float32)
    train, val = jax.tree.map(lambda a: a[:16], feats), jax.tree.map(lambda a: a[16:], feats)
    model = GeneralizationPredictor(SPEC, nfn="statnn", head=8, rngs=nnx.Rngs(0))
    options = dict(key=jax.random.key(0), batch_size=8, validation=(val, acc[16:]), eval_every=3,
                   run_dir=str(tmp_path), optimizer=optax.adam(1e-2))
    best, history = fit_predictor(model, train, acc[:16], num_steps=10, **options)
    scores = {r["step"]: r["eval/tau"] for r in history if "eval/tau" in r}
    assert sorted(scores) == [3, 6, 9, 10]  # every eval_every steps, and the last step
    summary = history[-1]
    assert summary["best/tau"] == max(scores.values()) and scores[summary["best/step"]] == summary["best/tau"]
    assert kendall_tau(predict_logits(best, val), acc[16:]) == pytest.approx(summary["best/tau"], abs=1e-6)
    resumed, history = fit_predictor(model, train, acc[:16], num_steps=16, **options)
    assert history[-1]["best/tau"] >= summary["best/tau"] - 1e-6  # the earlier best survived the restart
    assert kendall_tau(predict_logits(resumed, val), acc[16:]) == pytest.approx(history[-1]["best/tau"], abs=1e-6)


def test_a_killed_fit_finds_the_same_best_model(tmp_path, monkeypatch):
    """The best model is written only before training checkpoints: a run killed between two checkpoints (here just
    before the one at step 12) resumes from step 6 and ends with the best model of an uninterrupted run."""
    ws = random_weights(jax.random.key(1), SPEC, batch=(24,))
    feats, acc = ws.to_features(), np.linspace(0.1, 0.9, 24).astype(np.float32)
    train, val = jax.tree.map(lambda a: a[:16], feats), jax.tree.map(lambda a: a[16:], feats)
    model = GeneralizationPredictor(SPEC, nfn="statnn", head=8, rngs=nnx.Rngs(0))
    options = dict(key=jax.random.key(0), batch_size=4, validation=(val, acc[16:]), eval_every=2, checkpoint_every=6,
                   num_steps=18, optimizer=optax.adam(3e-2))
    save, best_writes = checkpointing.save, []

    def counted(manager, step, item):
        best_writes.extend([step] if isinstance(item, dict) else [])
        return save(manager, step, item)

    monkeypatch.setattr(checkpointing, "save", counted)
    whole, history = fit_predictor(model, train, acc[:16], run_dir=str(tmp_path / "whole"), **options)
    scores = {r["step"]: r["eval/tau"] for r in history if "eval/tau" in r}
    improved = [s for s in scores if scores[s] > max([v for t, v in scores.items() if t < s], default=-np.inf)]
    assert improved[0] % 6 and best_writes == sorted({-(-s // 6) * 6 for s in improved})  # before the checkpoints

    def killed_at_12(manager, step, item):
        if step == 12 and not isinstance(item, dict):  # the training state (the best model is a dict)
            raise KeyboardInterrupt
        return save(manager, step, item)

    monkeypatch.setattr(checkpointing, "save", killed_at_12)
    with pytest.raises(KeyboardInterrupt):
        fit_predictor(model, train, acc[:16], run_dir=str(tmp_path / "killed"), **options)
    monkeypatch.undo()
    resumed, again = fit_predictor(model, train, acc[:16], run_dir=str(tmp_path / "killed"), **options)
    assert again[-1]["best/step"] == history[-1]["best/step"] and 0 < history[-1]["best/step"] < 18
    assert again[-1]["best/tau"] == pytest.approx(history[-1]["best/tau"], abs=1e-6)
    for a, b in zip(jax.tree.leaves(nnx.state(resumed)), jax.tree.leaves(nnx.state(whole))):
        np.testing.assert_array_equal(a, b)


def test_quick_generalization_pipeline_runs_and_resumes(tmp_path, monkeypatch):
    # the body that compiles fastest: the pipeline is under test here; the NFN bodies are tested elsewhere.
    # The zoo is trained at tests/test_zoo_cnn.py's shapes (DIGITS_ZOO_BATCH_SIZE, shards of 4 networks, so every
    # population pads to 4 on the 4 test devices): its compiled programs serve, not two more compiles per activation
    monkeypatch.setattr(magep_experiments, "generate_cnn_zoo",
                        functools.partial(generate_cnn_zoo, batch_size=DIGITS_ZOO_BATCH_SIZE))
    argv = ["generalization", "--quick", "--models", "48", "--zoo-epochs", "1", "--activations", "relu",
            "--augmentations", "none", "k4", "--methods", "statnn", "--shard-size", "4", "--out", str(tmp_path)]
    result = magep_experiments.main(argv)
    cells = {(c["activation"], c["augmentation"], c["method"]) for c in result["cells"]}
    assert cells == {("relu", aug, "statnn") for aug in ("none", "k4")}
    assert result["settings"]["models"] == 48 and result["settings"]["seeds"] == 1  # explicit options win
    for cell in result["cells"]:
        assert -1.0 <= cell["test_tau_mean"] <= 1.0 and cell["seeds"] == 1 and cell["test_networks"] >= 2
    augmented = {c["augmentation"]: c["train_networks"] for c in result["cells"] if c["activation"] == "relu"}
    assert augmented["k4"] == 2 * augmented["none"]  # one transformed copy per network
    for name in ("magep_generalization.json", "magep_generalization.md", "magep_generalization_scatter.png",
                 "magep_generalization_augmentation.png"):
        assert (tmp_path / name).stat().st_size > 0
    text = (tmp_path / "magep_generalization.md").read_text()
    assert "STATNN" in text and text.index("| relu | none |") < text.index("| relu | k4 |")
    # a missing cell runs from the kept final-checkpoint zoo, without the full zoo
    work = tmp_path / "magep_runs"
    shutil.rmtree(work / "zoos" / "digits_cnn")
    (work / "runs" / "digits" / "relu" / "k4" / "statnn" / "seed0" / "result.json").unlink()
    resumed = magep_experiments.main(argv)
    assert [c["test_taus"] for c in resumed["cells"]] == [c["test_taus"] for c in result["cells"]]
    assert not (work / "zoos" / "digits_cnn").exists()
    shutil.rmtree(work / "zoos")  # finished cells and the zoo summary are all a rerun needs
    again = magep_experiments.main(argv)  # every cell is done: read back, not retrained
    assert again["zoos"] == result["zoos"]
    assert [c["test_taus"] for c in again["cells"]] == [c["test_taus"] for c in result["cells"]]


def test_quick_inr_classification_pipeline_runs_and_resumes(tmp_path):
    # the pipeline is under test (SIREN sets, training, report, resume); the bodies that compile fastest
    argv = ["inr-classification", "--quick", "--methods", "mlp", "monomial", "--steps", "4", "--evals", "1", "--out", str(tmp_path)]
    result = magep_experiments.main(argv)
    assert [(c["dataset"], c["method"]) for c in result["cells"]] == [("mnist", "monomial"), ("mnist", "mlp")]
    for cell in result["cells"]:
        assert 0.0 <= cell["test_accuracy_mean"] <= 1.0 and cell["seeds"] == 1 and cell["test_inrs"] == 20
        assert (cell["train_inrs"], cell["val_inrs"], cell["steps"]) == (36, 4, 4)
    fit = result["fits"]["mnist"]
    assert (fit["train"], fit["test"]) == (40, 20) and all(np.isfinite(v) for v in fit["psnr"].values())
    text = (tmp_path / "magep_inr_classification.md").read_text()
    assert "Monomial-NFN" in text and "92.9" in text  # our cells beside the published ones
    shutil.rmtree(tmp_path / "magep_runs" / "inrs")  # finished cells and the dataset summary are all a rerun needs
    again = magep_experiments.main(argv)  # every cell is done: read back, not retrained
    assert [c["test_accuracies"] for c in again["cells"]] == [c["test_accuracies"] for c in result["cells"]]
    assert again["fits"] == result["fits"]


def test_intensity_references_against_direct_fits():
    rng = np.random.default_rng(0)
    u_train, u_test = rng.uniform(-1, 1, (50, 30)), rng.uniform(-1, 1, (20, 30))
    affine = lambda u: 1.5 * u - 0.2
    exact = magep_inr_editing.intensity_references((u_train, affine(u_train)), (u_test, affine(u_test)))
    assert exact["affine"] < 1e-20 and exact["per_image_affine"] < 1e-20 and exact["intensity_map"] < 1e-3
    square = magep_inr_editing.intensity_references((u_train, u_train ** 2), (u_test, u_test ** 2))
    assert square["intensity_map"] < 0.01 * square["affine"]  # a function of u, but not an affine one
    fits = [(x, y, stats.linregress(x, y)) for x, y in zip(u_test, u_test ** 2)]
    per_image = np.mean([np.mean((y - fit.intercept - fit.slope * x) ** 2) for x, y, fit in fits])
    np.testing.assert_allclose(square["per_image_affine"], per_image, rtol=1e-10)
    assert square["per_image_affine"] <= square["affine"]


def test_quick_inr_editing_pipeline_runs_and_resumes(tmp_path):
    # the pipeline is under test (SIREN sets, edit targets, training, report, figure, resume); fast-compiling editors
    argv = ["inr-editing", "--quick", "--methods", "mlp", "monomial", "--out", str(tmp_path)]
    result = magep_experiments.main(argv)
    assert [(c["dataset"], c["method"], c["edit"]) for c in result["cells"]] == [("mnist", "monomial", "dilate"),
                                                                              ("mnist", "mlp", "dilate")]
    for cell in result["cells"]:
        assert 0.0 < cell["test_mse_mean"] < 4.0 and cell["seeds"] == 1
        assert (cell["train_inrs"], cell["val_inrs"], cell["test_inrs"], cell["steps"]) == (36, 4, 20, 4)
    assert 0.0 < result["fits"]["mnist"]["unedited_mse"] < 4.0
    references = result["fits"]["mnist"]["intensity_references"]
    assert 0.0 < references["per_image_affine"] <= references["affine"] and references["intensity_map"] > 0.0
    text = (tmp_path / "magep_inr_editing.md").read_text()
    assert "Monomial-NFN" in text and "0.068" in text  # our cells beside the published ones
    assert (tmp_path / "magep_inr_editing.png").stat().st_size > 0
    shutil.rmtree(tmp_path / "magep_runs" / "inrs")  # the report and figure come from the cells and the summary
    (tmp_path / "magep_inr_editing.png").unlink()
    again = magep_experiments.main(argv)  # every cell is done: read back, not retrained
    assert [c["test_mses"] for c in again["cells"]] == [c["test_mses"] for c in result["cells"]]
    assert again["fits"] == result["fits"] and (tmp_path / "magep_inr_editing.png").stat().st_size > 0
