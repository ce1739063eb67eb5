"""Demo section: a small Small-CNN-Zoo-style zoo on scikit-learn's digits (ReLU and tanh nets trained as
one vmapped population), then MAGEP-NFN, Monomial-NFN, STATNN and MLP accuracy predictors on its ReLU nets,
trained through the data-parallel loop and scored by Kendall tau on held-out models (split by model id)."""
from __future__ import annotations

import os

import jax
import numpy as np
from flax import nnx

from common import NetworkSpec, groups
from common.accuracy_prediction import kendall_tau
from magep import GeneralizationPredictor
from magep.train import train_generalization_predictor, zoo_features
from magep.zoo import generate_cnn_zoo


DEMO_CHANNELS = {"magep": 8, "monomial": (8, 8, 4)}  # small bodies: the demo's zoo has 64 networks


def _train_predictor(nfn: str, spec: NetworkSpec, train, test, run_dir: str, steps: int) -> tuple[float, float]:
    """Train one predictor with BCE on (features, accuracy); returns (Kendall tau on test, invariance error)."""
    (x_train, y_train), (x_test, y_test) = train, test
    model = GeneralizationPredictor(spec, nfn=nfn, scaling="positive", channels=DEMO_CHANNELS.get(nfn), head=64,
                                    rngs=nnx.Rngs(0))
    model, _ = train_generalization_predictor(model, x_train, y_train, key=jax.random.key(0), num_steps=steps,
                                              run_dir=run_dir)
    predicted = np.asarray(model(x_test))
    g = groups.sample_monomial(jax.random.key(1), spec, "positive", scale_range=(0.2, 5.0))
    moved = np.asarray(model(jax.vmap(lambda f: groups.act(g, f))(x_test)))
    return kendall_tau(predicted, y_test), float(np.max(np.abs(moved - predicted)))


def run(out_dir: str, n_models: int = 64, epochs: int = 8, steps: int = 300) -> list[tuple[str, str]]:
    """Returns rows (quantity, value) for the results table."""
    zoo_dir = os.path.join(out_dir, "digits_cnn_zoo")
    rows = generate_cnn_zoo(zoo_dir, "digits", n_models, epochs=epochs, shard_size=n_models, progress=False)
    accuracies = np.asarray([r["test_accuracy"] for r in rows if r["epoch"] == epochs])
    splits = {}
    for split in ("train", "test"):
        feats, targets, spec = zoo_features(zoo_dir, split, fractions=(0.7, 0.0, 0.3), where={"activation": "relu"})
        splits[split] = (feats, targets)
    table = [
        (f"CNN zoo on digits: {n_models} nets x {len(set(r['epoch'] for r in rows))} checkpoints, final test accuracy",
         f"{accuracies.min():.2f} .. {accuracies.max():.2f} (median {np.median(accuracies):.2f})"),
        ("ReLU-net checkpoints for the predictors (train / test models)",
         f"{len(splits['train'][1])} / {len(splits['test'][1])}"),
    ]
    for nfn in ("magep", "monomial", "statnn", "mlp"):
        tau, err = _train_predictor(nfn, spec, splits["train"], splits["test"], os.path.join(out_dir, nfn), steps)
        table.append((f"{nfn} predictor, {steps} steps: Kendall tau on held-out models", f"{tau:.3f}"))
        table.append(("  max |prediction change| under a positive monomial g (scales 0.2-5)", f"{err:.1e}"))
    return table
