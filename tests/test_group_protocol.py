"""The `common.groups.Group` protocol's laws for every implementation (monomial, a group on one field, the
transformer group), valid samples, non-trivial uncoupled actions, and the two-sided asserts with the
transformer group (they fail on a non-equivariant map and on maps that ignore their input)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common import NetworkSpec, testing
from common.groups import FieldGroup, Group, MonomialGroup
from tests.common_fixtures import CNN_ZOO_SPEC, leaves_close, random_weights
from transformer_nfn import TransformerSpec, groups, nets
from transformer_nfn.groups import TransformerGroup
from transformer_nfn.testing import random_features

MLP = NetworkSpec.mlp((3, 5, 4, 2))
TSPEC = TransformerSpec(num_blocks=2, num_heads=3, d_model=4, d_k=3, d_v=2, d_ffn=5)


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def _transformer(key=0):
    """Raw weights of 2 networks with a classifier MLP (4 -> 4 -> 3) and non-zero biases."""
    keys = jax.random.split(jax.random.key(key), 2)
    tw = jax.vmap(lambda k: nets.init_weights(k, TSPEC, 3, w_init_std=0.5, patch_size=2, dtype=jnp.float64))(keys)
    noise = lambda i, x: jax.random.normal(jax.random.fold_in(jax.random.key(key), i), x.shape, x.dtype)
    return tw.replace(blocks=tuple(b.replace(b_a=noise(2 * i, b.b_a), b_b=noise(2 * i + 1, b.b_b))
                                   for i, b in enumerate(tw.blocks)))


CASES = {
    "monomial-positive-raw": (MonomialGroup(MLP, "positive", dtype=jnp.float64),
                              lambda: random_weights(jax.random.key(1), MLP, batch=(2,), dtype=jnp.float64)),
    "monomial-sign-features": (MonomialGroup(MLP, "sign", dtype=jnp.float64),
                               lambda: random_weights(jax.random.key(2), MLP, dtype=jnp.float64).to_features()),
    "monomial-none-cnn": (MonomialGroup(CNN_ZOO_SPEC, "none"),
                          lambda: random_weights(jax.random.key(3), CNN_ZOO_SPEC, dtype=jnp.float64)),
    "classifier-field": (FieldGroup(MonomialGroup(NetworkSpec.mlp((4, 4, 3)), "positive", dtype=jnp.float64),
                                    "classifier"), _transformer),
    "transformer-raw": (TransformerGroup(TSPEC), _transformer),
    "transformer-ffn-scaling-features": (TransformerGroup(TSPEC, ffn_scaling=True),
                                         lambda: random_features(jax.random.key(4), TSPEC, 2, (2,), jnp.float64)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_group_laws(name):
    group, make = CASES[name]
    assert isinstance(group, Group)
    x = make()
    g, h = group.sample(jax.random.key(10)), group.sample(jax.random.key(11))
    close = lambda a, b: leaves_close(a, b, rtol=1e-10, atol=1e-10)
    assert not close(group.act(g, x), x)  # a sample is not the identity
    assert close(group.act(group.compose(g, h), x), group.act(g, group.act(h, x)))
    assert close(group.act(group.compose(h, g), x), group.act(h, group.act(g, x)))
    assert close(group.act(group.inverse(g), group.act(g, x)), x)
    assert close(group.act(group.compose(group.inverse(g), g), x), x)
    assert jax.tree.structure(group.act(g, x)) == jax.tree.structure(x)
    moves = group.uncoupled_actions(jax.random.key(12))
    assert moves and len({m.name for m in moves}) == len(moves)
    for m in moves:  # every uncoupled action moves x, keeping its shapes
        moved = m.move(x)
        assert jax.tree.map(jnp.shape, moved) == jax.tree.map(jnp.shape, x)
        assert not close(moved, x), m.name


def _is_permutation(p):
    return sorted(np.asarray(p).tolist()) == list(range(p.shape[0]))


@pytest.mark.parametrize("scaling", ["positive", "sign", "none"])
def test_monomial_samples_are_valid(scaling):
    group = MonomialGroup(MLP, scaling, scale_range=(0.5, 2.0))
    g = group.sample(jax.random.key(0))
    assert len(g.perms) == len(g.scales) == MLP.num_layers - 1
    for p, d, n in zip(g.perms, g.scales, MLP.widths[1:-1]):
        assert p.shape == d.shape == (n,) and _is_permutation(p)
        d = np.asarray(d)
        if scaling == "positive":
            assert d.min() >= 0.5 and d.max() <= 2.0
        else:
            assert set(np.unique(d)) <= ({-1.0, 1.0} if scaling == "sign" else {1.0})
    assert len(group.uncoupled_actions(jax.random.key(1))) == MLP.num_layers - 1


@pytest.mark.parametrize("ffn_scaling", [False, True])
def test_transformer_samples_are_valid(ffn_scaling):
    group = TransformerGroup(TSPEC, ffn_scaling=ffn_scaling)  # cond_range = scale_range = (0.5, 2.0)
    g = group.sample(jax.random.key(0))
    assert len(g.blocks) == TSPEC.num_blocks
    for e in g.blocks:
        assert _is_permutation(e.heads) and _is_permutation(e.perm_o) and _is_permutation(e.perm_a)
        for m, m_inv, dim in ((e.m, e.m_inv, TSPEC.d_k), (e.n, e.n_inv, TSPEC.d_v)):
            assert m.shape == (TSPEC.num_heads, dim, dim)
            np.testing.assert_allclose(m @ m_inv, np.broadcast_to(np.eye(dim), m.shape), atol=1e-12)
            s = np.linalg.svd(np.asarray(m), compute_uv=False)
            assert s.min() >= 0.5 - 1e-12 and s.max() <= 2.0 + 1e-12
        s = np.asarray(e.scale_a)
        if ffn_scaling:
            assert s.min() >= 0.5 and s.max() <= 2.0 and s.std() > 0
        else:
            np.testing.assert_array_equal(s, 1.0)
    assert len(group.uncoupled_actions(jax.random.key(1))) == (6 if ffn_scaling else 5)


def test_transformer_compose_checks_blocks():
    g = groups.identity(TSPEC)
    with pytest.raises(ValueError, match="groups.compose: g has 2 blocks but h has 1"):
        TransformerGroup(TSPEC).compose(g, groups.identity(TransformerSpec(1, 3, 4, 3, 2, 5)))


def test_asserts_with_the_transformer_group_are_two_sided():
    group = TransformerGroup(TSPEC)
    feats = random_features(jax.random.key(5), TSPEC, 2, dtype=jnp.float64)
    square_q = lambda t: t.replace(blocks=tuple(b.replace(q=b.q ** 2) for b in t.blocks))  # not GL-equivariant
    with pytest.raises(AssertionError, match=r"coupled action of the transformer group \(no FFN scaling\), sampled "
                                             r"element 0 of 3 .*field \.blocks\[0\]\.q differs by max abs"):
        testing.assert_equivariant(square_q, group, jax.random.key(6), feats)
    zero = lambda t: jax.tree.map(jnp.zeros_like, t)
    with pytest.raises(AssertionError, match=r"broken action \(head permutation of q only\) commuted with fn: "
                                             r"max abs change 0\.000e\+00"):
        testing.assert_equivariant(zero, group, jax.random.key(6), feats)
    with pytest.raises(AssertionError, match=r"broken action \(head permutation of q only\) commuted"):
        testing.assert_invariant(lambda t: jnp.ones(2), group, jax.random.key(6), feats)
    # a map that sees only the attention fields is blind to the FFN couplings
    qk_score = lambda t: sum(jnp.sum(jnp.einsum("hdkc,hekc->hdec", b.q, b.k) ** 2) for b in t.blocks)
    testing.assert_invariant(qk_score, group, jax.random.key(6), feats, check_uncoupled=False,
                             broken=group.uncoupled_actions(jax.random.key(7))[:2])
    with pytest.raises(AssertionError, match=r"broken action \(GL\(Dv\) on v without its inverse on o\) commuted"):
        testing.assert_invariant(qk_score, group, jax.random.key(6), feats)
