"""Every bad input raises a ValueError naming the layer, the argument, the layer index and the shapes."""
import re

import jax.numpy as jnp
import pytest
from flax import nnx

from common import NetworkSpec, WeightSpace
from magep import GeneralizationPredictor, INRClassifier, INREditor, PolynomialEquivariant, PolynomialInvariant
from magep.baselines import HNPLinear, MonomialLinear, MonomialPool, NPLinear, StatNN
from tests.magep_fixtures import SPECS, random_features

SPEC = SPECS["mlp"]  # widths (3, 4, 5, 2)


@pytest.fixture(scope="module")
def layers():
    rngs = nnx.Rngs(0)
    return {
        "PolynomialEquivariant": PolynomialEquivariant(SPEC, 2, 3, rngs=rngs),
        "PolynomialInvariant": PolynomialInvariant(SPEC, 2, 3, rngs=rngs),
        "MonomialLinear": MonomialLinear(SPEC, 2, 3, rngs=rngs),
        "HNPLinear": HNPLinear(SPEC, 2, 3, rngs=rngs),
        "NPLinear": NPLinear(SPEC, 2, 3, rngs=rngs),
        "MonomialPool": MonomialPool(SPEC, 2),
        "StatNN": StatNN(SPEC, 2, 1, hidden=(4,), rngs=rngs),
    }


def _replace(feats, which, i, new):
    parts = {"weights": list(feats.weights), "biases": list(feats.biases)}
    parts[which][i] = new
    return WeightSpace(tuple(parts["weights"]), tuple(parts["biases"]), is_features=True)


NAMES = ["PolynomialEquivariant", "PolynomialInvariant", "MonomialLinear", "HNPLinear", "NPLinear", "MonomialPool", "StatNN"]


@pytest.mark.parametrize("name", NAMES)
def test_wrong_channel_count(layers, name):
    feats = random_features(0, SPEC, channels=2, dtype=jnp.float32)
    bad = _replace(feats, "weights", 1, jnp.zeros((5, 4, 3)))
    with pytest.raises(ValueError, match=re.escape(f"{name}: feats.weights[1] has shape (5, 4, 3)")):
        layers[name](bad)
    bad = _replace(feats, "biases", 2, jnp.zeros((2, 1)))
    with pytest.raises(ValueError, match=re.escape(f"{name}: feats.biases[2] has shape (2, 1)")):
        layers[name](bad)


@pytest.mark.parametrize("name", NAMES)
def test_spec_feature_mismatch(layers, name):
    other = random_features(1, NetworkSpec.mlp((3, 6, 5, 2)), channels=2, dtype=jnp.float32)
    with pytest.raises(ValueError, match=re.escape(f"{name}: feats.weights[0] has shape (6, 3, 2); expected [..., 4, 3, 2]")):
        layers[name](other)
    short = random_features(2, NetworkSpec.mlp((3, 4, 2)), channels=2, dtype=jnp.float32)
    with pytest.raises(ValueError, match=rf"{name}: feats has 2 weight layers .* L = 3"):
        layers[name](short)


def test_raw_weights_and_batch_mismatch(layers):
    feats = random_features(3, SPEC, channels=1, dtype=jnp.float32)
    raw = WeightSpace.from_features(feats, SPEC)
    with pytest.raises(ValueError, match="PolynomialEquivariant: feats must be a features WeightSpace"):
        layers["PolynomialEquivariant"](raw)
    two = random_features(4, SPEC, channels=2, dtype=jnp.float32)
    batched_bias = jnp.zeros((7, 2, 2))
    bad = WeightSpace.__new__(WeightSpace)  # bypass WeightSpace's own validation to reach the layer's check
    object.__setattr__(bad, "weights", two.weights)
    object.__setattr__(bad, "biases", two.biases[:2] + (batched_bias,))
    object.__setattr__(bad, "is_features", True)
    with pytest.raises(ValueError, match=re.escape("PolynomialInvariant: feats.biases[2] has shape (7, 2, 2) with batch axes (7,)")):
        layers["PolynomialInvariant"](bad)


def test_bad_constructor_arguments():
    rngs = nnx.Rngs(0)
    with pytest.raises(ValueError, match=r"PolynomialEquivariant: needs L >= 2 layers, spec has widths \(3, 2\)"):
        PolynomialEquivariant(NetworkSpec.mlp((3, 2)), 1, 1, rngs=rngs)
    with pytest.raises(ValueError, match=r"PolynomialInvariant: in_channels must be an int or a tuple with one entry per layer \(3\), got \(1, 1\)"):
        PolynomialInvariant(SPEC, (1, 1), 2, rngs=rngs)
    with pytest.raises(ValueError, match=r"PolynomialEquivariant: in_channels\[0\] = 4 is not a multiple of layer 0's kernel size 9"):
        PolynomialEquivariant(SPECS["cnn"], (4, 9, 9, 1), 2, rngs=rngs)
    with pytest.raises(ValueError, match="PolynomialEquivariant: out_channels must be a positive int, got 0"):
        PolynomialEquivariant(SPEC, 1, 0, rngs=rngs)
    with pytest.raises(ValueError, match="MonomialLinear: scaling must be 'positive' or 'sign', got 'none'"):
        MonomialLinear(SPEC, 1, 1, scaling="none", rngs=rngs)
    with pytest.raises(ValueError, match="HNPLinear: spec must be a common.NetworkSpec, got tuple"):
        HNPLinear((3, 4, 2), 1, 1, rngs=rngs)


def test_models_reject_activation_that_breaks_the_group():
    rngs = nnx.Rngs(0)
    with pytest.raises(ValueError, match=r"GeneralizationPredictor: activation 'tanh' breaks the 'positive' group"):
        GeneralizationPredictor(SPEC, scaling="positive", activation="tanh", channels=2, head=2, rngs=rngs)
    with pytest.raises(ValueError, match=r"INRClassifier: activation 'relu' breaks the 'sign' group"):
        INRClassifier(SPEC, 2, scaling="sign", activation="relu", channels=2, head=2, rngs=rngs)
    with pytest.raises(ValueError, match=r"GeneralizationPredictor: nfn must be one of .* got 'gnn'"):
        GeneralizationPredictor(SPEC, nfn="gnn", rngs=rngs)
    with pytest.raises(ValueError, match=r"INREditor: variant must be 'library' \(or 'paper' with nfn='magep'\), got 'x'"):
        INREditor(SPEC, variant="x", rngs=rngs)
    with pytest.raises(ValueError, match=r"got 'paper' with nfn='hnp'"):
        INREditor(SPEC, nfn="hnp", variant="paper", rngs=rngs)
    with pytest.raises(ValueError, match=r"INREditor: nfn must be one of .* got 'gnn'"):
        INREditor(SPEC, nfn="gnn", rngs=rngs)


def test_default_activation_is_the_groups_for_monomial_bodies_and_relu_for_the_others():
    """The authors' NP / HNP networks use ReLU whatever the input networks' activation; the monomial bodies need a
    sigma that commutes with the group (tanh for a tanh zoo, sin for SIRENs)."""
    rngs = nnx.Rngs(0)
    for nfn, tanh_zoo, siren in (("magep", "tanh", "sin"), ("monomial", "tanh", "sin"), ("hnp", "relu", "relu"),
                                 ("np", "relu", "relu")):
        channels = 2 if nfn == "magep" else (2, 2, 2)
        predictor = GeneralizationPredictor(SPEC, nfn=nfn, scaling="sign", channels=channels, head=2, rngs=rngs)
        classifier = INRClassifier(SPEC, 2, nfn=nfn, scaling="sign", channels=channels, head=2, rngs=rngs)
        editor = INREditor(SPEC, nfn=nfn, scaling="sign", channels=2, rngs=rngs)
        assert (predictor.body.activation, classifier.body.activation, editor.activation) == (tanh_zoo, siren, siren)
    with pytest.raises(ValueError, match=r"INRClassifier: scaling must be 'positive', 'sign' or 'none', got 'x'"):
        INRClassifier(SPEC, 2, nfn="np", scaling="x", rngs=rngs)
