"""The zoo transformer's exact symmetries beyond the paper's group (docs/transformer_nfn.md §10): every factor
leaves `nets.classifier_apply` unchanged (float64, FFN scalings up to 1e3) while its uncoupled actions change
it; group laws; the canonicalisations are invariant under their factors and see the uncoupled actions; the
paper's predictor is not invariant to FFN scaling, and is after `canonicalize`."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from common.groups import Group
from common.testing import assert_equivariant, assert_invariant
from tests.common_fixtures import leaves_close
from transformer_nfn import AccuracyPredictor, TransformerSpec, groups, nets
from transformer_nfn.extended_group import (ChannelPermutationGroup, ExtendedTransformerGroup, LayerNormShiftGroup,
                                            canonicalize, canonicalize_all, center, move_each, normalize_ffn,
                                            sort_channels)
from transformer_nfn.groups import TransformerGroup

SPEC = TransformerSpec(num_blocks=2, num_heads=2, d_model=4, d_k=3, d_v=2, d_ffn=5)
TOL = dict(rtol=1e-8, atol=1e-10)


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def _net(key=0, batch=None):
    """One network (or `batch` of them), float64, patch embedding 2x2, classifier 4 -> 4 -> 3, non-zero biases."""
    def one(k):
        tw = nets.init_weights(k, SPEC, 3, w_init_std=0.5, patch_size=2, dtype=jnp.float64)
        noise = lambda i, x: 0.3 * jax.random.normal(jax.random.fold_in(k, i), x.shape, x.dtype)
        return tw.replace(blocks=tuple(b.replace(b_a=noise(2 * i, b.b_a), b_b=noise(2 * i + 1, b.b_b))
                                       for i, b in enumerate(tw.blocks)))
    return one(jax.random.key(key)) if batch is None else jax.vmap(one)(jax.random.split(jax.random.key(key), batch))


@jax.jit
def logits(tw):
    """The networks' logits on 5 fixed random 6 x 6 images (float64)."""
    return nets.classifier_apply(tw, jax.random.normal(jax.random.key(99), (5, 6, 6, 1), tw.blocks[0].q.dtype))


@dataclasses.dataclass(frozen=True)
class FFNScaling:
    """FFN hidden-unit scalings alone (log-uniform on `scale_range`), as a Group, from `groups`."""

    spec: TransformerSpec
    scale_range: tuple = (1.0, 1e3)

    name = "FFN scaling"

    def sample(self, key):
        g = groups.sample(key, self.spec, ffn_scaling=True, scale_range=self.scale_range)
        ident = groups.identity(self.spec, g.blocks[0].m.dtype)
        return groups.TransformerElement(tuple(dataclasses.replace(i, scale_a=b.scale_a)
                                               for i, b in zip(ident.blocks, g.blocks)))

    def act(self, g, x):
        return groups.act(g, x)

    def inverse(self, g):
        return groups.inverse(g)

    def compose(self, g, h):
        return groups.compose(g, h)

    def uncoupled_actions(self, key):
        return tuple(a for a in TransformerGroup(self.spec, ffn_scaling=True).uncoupled_actions(key)
                     if a.name.startswith("FFN scaling"))


GROUPS = ("ffn-scaling-1e3", "paper-group-with-ffn-scaling", "channel-permutations", "layernorm-shifts", "extended")


def _groups():
    like = _net()
    return {
        "ffn-scaling-1e3": FFNScaling(SPEC),
        "paper-group-with-ffn-scaling": TransformerGroup(SPEC, ffn_scaling=True, scale_range=(1e-3, 1e3)),
        "channel-permutations": ChannelPermutationGroup(SPEC),
        "layernorm-shifts": LayerNormShiftGroup(like, scale=10.0),
        "extended": ExtendedTransformerGroup(like, scale_range=(1e-3, 1e3), shift_scale=10.0),
    }


@pytest.mark.parametrize("name", GROUPS)
def test_factor_preserves_the_function_and_uncoupled_moves_change_it(name):
    """classifier_apply(g.x) == classifier_apply(x) for sampled g (float64), and every uncoupled action of the
    factor changes the logits (two-sided)."""
    group = _groups()[name]
    assert isinstance(group, Group)
    assert_invariant(logits, group, jax.random.key(1), _net(), n_trials=3, **TOL)


@pytest.mark.parametrize("name", ["channel-permutations", "layernorm-shifts", "extended"])
def test_group_laws(name):
    group, x = _groups()[name], _net(3)
    g, h = group.sample(jax.random.key(10)), group.sample(jax.random.key(11))
    close = lambda a, b: leaves_close(a, b, rtol=1e-10, atol=1e-9)
    assert not close(group.act(g, x), x)
    assert close(group.act(group.compose(g, h), x), group.act(g, group.act(h, x)))
    assert close(group.act(group.inverse(g), group.act(g, x)), x)
    assert close(group.act(group.compose(group.inverse(g), g), x), x)
    batch = _net(4, batch=2)  # one element acts on every network of a batch
    assert close(group.act(g, batch), jax.vmap(lambda tw: group.act(g, tw))(batch))


def test_excluded_moves_are_not_symmetries():
    """What the extended group leaves out changes the function: permuting the embedding's output channels with
    block 0's inputs (the positional encoding is not permuted), and scaling every head's o by c > 0 (the
    LayerNorm's eps makes it approximate: a small but non-zero change)."""
    tw, perm = _net(), jnp.array([1, 2, 3, 0])
    e, b0 = tw.embedding, tw.blocks[0]
    moved = tw.replace(embedding=dataclasses.replace(e, weights=(e.weights[0][perm],), biases=(e.biases[0][perm],)),
                       blocks=(b0.replace(q=b0.q[:, perm], k=b0.k[:, perm], v=b0.v[:, perm]),) + tw.blocks[1:])
    assert np.max(np.abs(logits(moved) - logits(tw))) > 1e-3
    scaled = tw.replace(blocks=(b0.replace(o=1e-2 * b0.o),) + tw.blocks[1:])
    change = np.max(np.abs(logits(scaled) - logits(tw))) / np.max(np.abs(logits(tw)))
    assert 1e-10 < change


def test_canonicalizations_are_invariant_and_two_sided():
    """center: invariant under LN shifts; normalize_ffn and canonicalize: invariant under FFN scalings; each
    output changes under the factor's uncoupled actions; canonicalize is equivariant under the paper's group and
    the channel permutations, and keeps the function."""
    x, key = _net(5), jax.random.key(6)
    shifts = LayerNormShiftGroup(_net(), scale=10.0)
    assert_invariant(center, shifts, key, x, **TOL)
    assert_invariant(normalize_ffn, FFNScaling(SPEC), key, x, **TOL)
    assert_invariant(canonicalize, FFNScaling(SPEC), key, x, **TOL)
    assert_invariant(canonicalize, shifts, key, x, **TOL)
    # canonicalize acts on each field alone, so it commutes with the uncoupled moves of these two groups (they
    # move one field); the broken actions it must not commute with are the wrong-axis shifts.
    wrong_shifts = shifts.uncoupled_actions(jax.random.key(7))
    for group in (TransformerGroup(SPEC), ChannelPermutationGroup(SPEC)):
        assert_equivariant(canonicalize, group, key, x, check_uncoupled=False, broken=wrong_shifts, **TOL)
    np.testing.assert_allclose(logits(canonicalize(x)), logits(x), rtol=1e-9, atol=1e-10)
    for fn in (center, normalize_ffn):
        with pytest.raises(ValueError, match="raw TransformerWeights"):
            fn(x.to_features())


@pytest.mark.parametrize("batch", [None, 3])
def test_sorted_channels_remove_the_channel_permutations(batch):
    """canonicalize_all (channels sorted at every boundary after canonicalize): invariant under the channel
    permutations (two-sided: a boundary's outputs permuted without its readers change it), FFN scalings and LN
    shifts, equivariant under the paper's group; the function is unchanged, per network of a batch too."""
    x, key = _net(11, batch), jax.random.key(12)
    assert_invariant(canonicalize_all, ChannelPermutationGroup(SPEC), key, x, **TOL)
    assert_invariant(canonicalize_all, FFNScaling(SPEC), key, x, **TOL)
    assert_invariant(canonicalize_all, LayerNormShiftGroup(_net(), scale=10.0), key, x, **TOL)
    if batch is None:  # the paper's group acts on one network at a time here; as for canonicalize, the moves it
        # must not commute with are the wrong-axis shifts (the paper's uncoupled moves act on fields it leaves be)
        wrong_shifts = LayerNormShiftGroup(_net(), scale=10.0).uncoupled_actions(jax.random.key(13))
        assert_equivariant(canonicalize_all, TransformerGroup(SPEC), key, x, check_uncoupled=False,
                           broken=wrong_shifts, **TOL)
    apply = logits if batch is None else jax.vmap(logits)
    np.testing.assert_allclose(apply(canonicalize_all(x)), apply(x), rtol=1e-9, atol=1e-10)
    first = sort_channels(x).blocks[0]
    keys = jnp.square(first.w_b).sum(-2) + jnp.square(first.b_b)
    assert np.all(np.diff(np.asarray(keys), axis=-1) >= 0)  # ascending keys at the first boundary
    no_classifier = x.replace(classifier=None)  # the channels after the last block stay where they are
    np.testing.assert_array_equal(sort_channels(no_classifier).blocks[-1].w_b, no_classifier.blocks[-1].w_b)
    with pytest.raises(ValueError, match="raw TransformerWeights"):
        sort_channels(x.to_features())


def test_paper_predictor_sees_ffn_scaling_until_canonicalized():
    """The paper's predictor (ffn_scaling=False) changes its prediction under FFN scaling while the networks'
    function does not; applied after `canonicalize` it is invariant to FFN scalings and LN shifts (and still
    sees the uncoupled moves)."""
    model = AccuracyPredictor(SPEC, classifier_widths=(4, 4, 3), embedding_size=4 * 4 + 4, hidden_channels=(2,),
                              invariant_features=3, width=5, rngs=nnx.Rngs(0))
    model = jax.tree.map(lambda a: a.astype(jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a, model)
    score = nnx.jit(lambda m, tw: m.logits(tw))
    x = _net(7, batch=3)
    scaling = FFNScaling(SPEC)
    moved = scaling.act(scaling.sample(jax.random.key(8)), x)
    apply = jax.vmap(logits)
    np.testing.assert_allclose(apply(moved), apply(x), rtol=1e-9, atol=1e-10)
    assert np.max(np.abs(score(model, moved) - score(model, x))) > 1e-2
    canonical = lambda tw: score(model, canonicalize(tw))
    assert_invariant(canonical, scaling, jax.random.key(9), x, **TOL)
    assert_invariant(canonical, LayerNormShiftGroup(_net(), scale=10.0), jax.random.key(10), x, **TOL)


def test_move_each_keeps_every_network_function_with_its_own_element():
    batch = _net(7, batch=3)
    moved = move_each(batch, jax.random.key(1), scale_range=(1.0, 1e3))
    assert jax.tree.map(lambda a: (a.shape, a.dtype), moved) == jax.tree.map(lambda a: (a.shape, a.dtype), batch)
    np.testing.assert_allclose(jax.vmap(logits)(moved), jax.vmap(logits)(batch), **TOL)
    assert not np.allclose(moved.blocks[0].w_a, batch.blocks[0].w_a)  # moved
    twins = jax.tree.map(lambda a: jnp.stack([a[0]] * 3), batch)  # the batch's shapes: the same compiled move
    moved_twins = move_each(twins, jax.random.key(1), scale_range=(1.0, 1e3)).blocks[0].q
    assert not np.allclose(moved_twins[0], moved_twins[1])  # each network by its own element
    with pytest.raises(ValueError, match="one batch axis"):
        move_each(_net(7), jax.random.key(1))
