"""common.testing's two-sided checks pass on equivariant/invariant functions and fail, with a message naming
the element or broken action, the field and the max abs difference, on non-equivariant and vacuous ones."""
import jax
import jax.numpy as jnp
import pytest

from common import NetworkSpec, WeightSpace, nets, testing
from common.groups import BrokenAction, MonomialGroup, io_permutation
from tests.common_fixtures import random_weights

SPEC = NetworkSpec.mlp((3, 6, 5, 2))
KEY = jax.random.PRNGKey(0)
SIGN_COMMUTED = (r"broken action \(coupled action of the monomial group \(sign scalings\), "
                 r"largest change over 3 sampled elements\) commuted with fn")


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
    testing.assert_equivariant(_bias_paths, MonomialGroup(SPEC, scaling), KEY, _feats())


def test_non_equivariant_function_fails_naming_element_field_and_difference():
    def add_first_row(f):  # treats neurons by position: not permutation equivariant (layer 3's rows are fixed)
        return WeightSpace(tuple(w + w[:1] for w in f.weights), f.biases, is_features=True)

    message = (r"coupled action of the monomial group \(none scalings\), sampled element 0 of 3 .*: "
               r"field \.weights\[0\] differs by max abs \d\.\d+e[-+]\d+")
    with pytest.raises(AssertionError, match=message):
        testing.assert_equivariant(add_first_row, MonomialGroup(SPEC, "none"), KEY, _feats())


def test_functions_that_ignore_their_input_fail_the_broken_side():
    zero = lambda f: jax.tree.map(jnp.zeros_like, f)  # equivariant for every group, and blind
    with pytest.raises(AssertionError, match=r"broken action \(uncoupled permutation of hidden layer 1\) commuted "
                                             r"with fn: max abs change 0\.000e\+00 \(field \.weights\[0\]\)"):
        testing.assert_equivariant(zero, MonomialGroup(SPEC), KEY, _feats())
    with pytest.raises(AssertionError, match=r"broken action \(uncoupled permutation of hidden layer 1\) commuted"):
        testing.assert_invariant(lambda f: jnp.ones(3), MonomialGroup(SPEC, "sign"), KEY, _feats())


def test_functions_that_miss_a_coupling_fail_the_broken_side():
    with pytest.raises(AssertionError, match=r"broken action \(uncoupled permutation of hidden layer 1\) commuted"):
        testing.assert_equivariant(lambda f: f, MonomialGroup(SPEC), KEY, _feats())
    with pytest.raises(AssertionError, match=r"uncoupled permutation of hidden layer 1\) commuted"):
        testing.assert_invariant(lambda f: jnp.sum(f.weights[0] ** 2), MonomialGroup(SPEC, "sign"), KEY, _feats())


def test_invariant_network_function_and_wrong_groups():
    positive, sign = MonomialGroup(SPEC, "positive"), MonomialGroup(SPEC, "sign")
    testing.assert_invariant(_network_output, positive, jax.random.PRNGKey(2), _feats(), broken=(sign,))
    with pytest.raises(AssertionError, match=r"coupled action of the monomial group \(sign scalings\).*field output"):
        testing.assert_invariant(_network_output, sign, jax.random.PRNGKey(3), _feats())
    testing.assert_invariant(_end_to_end_abs_sum, sign, jax.random.PRNGKey(4), _feats())
    with pytest.raises(AssertionError, match=SIGN_COMMUTED):
        testing.assert_invariant(_end_to_end_abs_sum, positive, jax.random.PRNGKey(4), _feats(), broken=(sign,))


def test_uncoupled_check_can_be_turned_off_but_another_broken_action_is_required():
    # the identity commutes with every action: turning the uncoupled check off does not let it pass
    identity = lambda f: f
    with pytest.raises(AssertionError, match=SIGN_COMMUTED):
        testing.assert_equivariant(identity, MonomialGroup(SPEC), KEY, _feats(), check_uncoupled=False,
                                   broken=(MonomialGroup(SPEC, "sign"),))
    with pytest.raises(AssertionError, match=r"broken action \(io\) commuted"):
        testing.assert_equivariant(identity, MonomialGroup(SPEC), KEY, _feats(), check_uncoupled=False,
                                   broken=(BrokenAction("io", io_permutation),))
    with pytest.raises(ValueError, match=r"no broken action for the monomial group \(positive scalings\)"):
        testing.assert_equivariant(identity, MonomialGroup(SPEC), KEY, _feats(), check_uncoupled=False)


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"broken\[0\] must be a Group or a BrokenAction, got str"):
        testing.assert_equivariant(_bias_paths, MonomialGroup(SPEC), KEY, _feats(), broken=("sign",))
    with pytest.raises(ValueError, match="n_trials must be >= 1, got 0"):
        testing.assert_equivariant(_bias_paths, MonomialGroup(SPEC), KEY, _feats(), n_trials=0)
    with pytest.raises(ValueError, match="MonomialGroup: scaling must be one of"):
        MonomialGroup(SPEC, "negative")
