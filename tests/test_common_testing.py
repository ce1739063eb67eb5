"""common.testing's two-sided checks pass on equivariant/invariant functions and fail on broken ones."""
import jax
import jax.numpy as jnp
import pytest

from common import NetworkSpec, WeightSpace, nets, testing
from tests.common_fixtures import random_weights

SPEC = NetworkSpec.mlp((3, 6, 5, 2))


def _feats(key=0):
    return random_weights(jax.random.PRNGKey(key), SPEC).to_features()


def _bias_paths(f: WeightSpace) -> WeightSpace:
    """b'^(l) = b^(l) + W^(l) b^(l-1): equivariant for every monomial group, and couples every hidden layer."""
    biases = [f.biases[0]] + [
        b + jnp.einsum("jkc,kc->jc", w, b_prev) for w, b, b_prev in zip(f.weights[1:], f.biases[1:], f.biases[:-1])
    ]
    return WeightSpace(f.weights, tuple(biases), is_features=True)


def _network_output(f: WeightSpace):
    x = jnp.linspace(-1, 1, 12).reshape(4, 3)
    return nets.mlp_apply(WeightSpace.from_features(f, SPEC), x, "relu")


def _end_to_end_abs_sum(f: WeightSpace):
    """sum |W^(3) W^(2) W^(1)|: invariant under every monomial group, including sign flips."""
    prod = f.weights[0]
    for w in f.weights[1:]:
        prod = jnp.einsum("jqc,qkc->jkc", w, prod)
    return jnp.sum(jnp.abs(prod))


@pytest.mark.parametrize("scaling", ["positive", "sign", "none"])
def test_equivariant_function_passes(scaling):
    testing.assert_equivariant(_bias_paths, jax.random.PRNGKey(0), _feats(), SPEC, scaling)


def test_non_equivariant_function_fails():
    def add_first_row(f):  # treats neurons by position: not permutation equivariant
        return WeightSpace(tuple(w + w[:1] for w in f.weights), f.biases, is_features=True)

    with pytest.raises(AssertionError, match="coupled action"):
        testing.assert_equivariant(add_first_row, jax.random.PRNGKey(0), _feats(), SPEC, "none")


def test_vacuous_functions_fail_the_broken_side():
    with pytest.raises(AssertionError, match=r"uncoupled permutation of hidden layer 1\) commuted"):
        testing.assert_equivariant(lambda f: f, jax.random.PRNGKey(0), _feats(), SPEC)
    with pytest.raises(AssertionError, match="uncoupled permutation of hidden layer 1"):
        testing.assert_invariant(lambda f: jnp.sum(f.weights[0] ** 2), jax.random.PRNGKey(0), _feats(), SPEC, "sign")


def test_invariant_network_function_and_wrong_groups():
    testing.assert_invariant(_network_output, jax.random.PRNGKey(2), _feats(), SPEC, "positive", broken_scaling="sign")
    with pytest.raises(AssertionError, match="coupled action"):
        testing.assert_invariant(_network_output, jax.random.PRNGKey(3), _feats(), SPEC, "sign")
    testing.assert_invariant(_end_to_end_abs_sum, jax.random.PRNGKey(4), _feats(), SPEC, "sign")
    with pytest.raises(AssertionError, match=r"broken action \(sign action\)"):
        testing.assert_invariant(_end_to_end_abs_sum, jax.random.PRNGKey(4), _feats(), SPEC, "positive", broken_scaling="sign")


def test_uncoupled_permutation_layer_range():
    with pytest.raises(ValueError, match=r"layer must be in 1..2, got 3"):
        testing.uncoupled_permutation(jax.random.PRNGKey(0), _feats(), 3)


def test_uncoupled_check_can_be_turned_off_but_wrong_scalings_still_count():
    # a layer that never mixes layers passes only when the uncoupled check is off, and still fails a wrong group
    testing.assert_equivariant(lambda f: f, jax.random.PRNGKey(0), _feats(), SPEC, check_uncoupled=False)
    with pytest.raises(AssertionError, match=r"broken action \(sign action\)"):
        testing.assert_equivariant(lambda f: f, jax.random.PRNGKey(0), _feats(), SPEC, check_uncoupled=False,
                                   broken_scaling="sign")
