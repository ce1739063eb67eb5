"""The magep tests' helpers (tests/magep_fixtures.py) do what they say."""
import jax
import jax.numpy as jnp

from common import WeightSpace
from tests.common_fixtures import CNN_ZOO_SPEC
from tests.magep_fixtures import random_features


def test_random_features_shapes_and_scale():
    f = random_features(0, CNN_ZOO_SPEC)
    f.check_spec(CNN_ZOO_SPEC, "f")
    assert [w.shape[-1] for w in f.weights] == list(CNN_ZOO_SPEC.feature_channels)
    ws = WeightSpace.from_features(jax.tree.map(lambda x: x.astype(jnp.float32), f), CNN_ZOO_SPEC)
    assert ws.weights[0].shape == (16, 1, 3, 3)

