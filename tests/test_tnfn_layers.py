"""Transformer-NFN layers: two-sided equivariance/invariance (with and without FFN scaling), parameter counts,
jit/vmap/grad, bad inputs."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from common.testing import assert_symmetry
from transformer_nfn import equivariant, invariant
from transformer_nfn import TransformerEquivariant, TransformerInvariant, TransformerSpec, groups, relu_ffn
from transformer_nfn.testing import broken_actions, random_features

SPEC = TransformerSpec(num_blocks=2, num_heads=2, d_model=4, d_k=3, d_v=2, d_ffn=5)
call = nnx.jit(lambda module, x: module(x))
TOL = dict(rtol=1e-9, atol=1e-9)


def _moves(feats, ffn_scaling, names=None):
    """Broken moves; for the paper's layers also the coupled FFN scaling, which they do not respect."""
    moves = [m for m in broken_actions(jax.random.key(11), feats) if names is None or m[0] in names]
    if not ffn_scaling:
        g = groups.sample(jax.random.key(12), feats, ffn_scaling=True)
        moves.append(("coupled FFN scaling (the paper's layers are not scale-equivariant)", lambda f: groups.act(g, f)))
    return moves


@pytest.mark.parametrize("ffn_scaling", [False, True])
def test_equivariant_two_sided(ffn_scaling):
    with jax.enable_x64(True):
        feats = random_features(jax.random.key(0), SPEC, 2, batch=(2,), dtype=jnp.float64)
        layer = TransformerEquivariant(SPEC, 2, 3, ffn_scaling=ffn_scaling, rngs=nnx.Rngs(0), param_dtype=jnp.float64)
        out = call(layer, feats)
        assert out.blocks[1].q.shape == (2, 2, 4, 3, 3) and out.blocks[0].w_b.shape == (2, 5, 4, 3)
        assert_symmetry(
            lambda f: call(layer, f), jax.random.key(1), feats,
            lambda k: groups.sample(k, feats, ffn_scaling=ffn_scaling), groups.act, groups.act,
            [(name, move, move) for name, move in _moves(feats, ffn_scaling)], **TOL,
        )


@pytest.mark.parametrize("ffn_scaling", [False, True])
def test_invariant_two_sided(ffn_scaling):
    """The paper's invariant layer pools pi_O and pi_A axes field by field, so it cannot see those couplings
    (the encoder-branch test below does); the scaling variant couples them through VO w_a w_b."""
    with jax.enable_x64(True):
        feats = random_features(jax.random.key(2), SPEC, 3, batch=(2,), dtype=jnp.float64)
        layer = TransformerInvariant(SPEC, 3, 4, ffn_scaling=ffn_scaling, rngs=nnx.Rngs(1), param_dtype=jnp.float64)
        assert call(layer, feats).shape == (2, SPEC.num_blocks, 4)
        attention_only = ("head permutation of q only", "GL(Dk) on q without its inverse on k",
                          "GL(Dv) on v without its inverse on o")
        assert_symmetry(
            lambda f: call(layer, f), jax.random.key(3), feats,
            lambda k: groups.sample(k, feats, ffn_scaling=ffn_scaling), groups.act, None,
            [(name, move, None) for name, move in _moves(feats, ffn_scaling, None if ffn_scaling else attention_only)],
            **TOL,
        )


def test_encoder_branch_couples_every_factor():
    """Equivariant -> ReLU on the FFN fields -> invariant: invariant, and every uncoupled move changes it."""
    with jax.enable_x64(True):
        feats = random_features(jax.random.key(4), SPEC, 1, batch=(2,), dtype=jnp.float64)
        eq = TransformerEquivariant(SPEC, 1, 3, rngs=nnx.Rngs(2), param_dtype=jnp.float64)
        inv = TransformerInvariant(SPEC, 3, 4, rngs=nnx.Rngs(3), param_dtype=jnp.float64)
        branch = nnx.jit(lambda e, i, f: i(relu_ffn(e(f))))
        assert_symmetry(
            lambda f: branch(eq, inv, f), jax.random.key(5), feats,
            lambda k: groups.sample(k, feats), groups.act, None,
            [(name, move, None) for name, move in _moves(feats, False)], **TOL,
        )


def test_parameter_counts_match_spec_formula():
    d, c_in, c_out = 32, 2, 3
    zoo = TransformerSpec(2, 2, d, 16, 16, 64)
    count = lambda module: sum(x.size for x in jax.tree.leaves(nnx.state(module, nnx.Param)))
    eq_formula = c_in * c_out * (2 * d**3 + 12 * d**2 + 15 * d + 12) + c_out * (2 * d + 2)
    assert eq_formula == 78_316 * c_in * c_out + 66 * c_out
    assert count(nnx.eval_shape(lambda: TransformerEquivariant(zoo, c_in, c_out, rngs=nnx.Rngs(0)))) == zoo.num_blocks * eq_formula
    assert equivariant.num_params_per_block(d, c_in, c_out) == eq_formula
    assert invariant.num_params_per_block(d, c_in, c_out) == c_in * c_out * (d**2 + 3 * d + 2) + c_out
    inv_formula = c_in * c_out * (d**2 + 3 * d + 2) + c_out
    assert count(nnx.eval_shape(lambda: TransformerInvariant(zoo, c_in, c_out, rngs=nnx.Rngs(0)))) == zoo.num_blocks * inv_formula
    # coefficients do not depend on h, Dk, Dv, DA
    other = TransformerSpec(2, 4, d, 8, 5, 7)
    assert count(nnx.eval_shape(lambda: TransformerEquivariant(other, c_in, c_out, rngs=nnx.Rngs(0)))) == zoo.num_blocks * eq_formula
    # the FFN-scaling variant drops the non-homogeneous terms and adds three scaling-invariant ones
    dropped = c_in * c_out * (d**3 + 6 * d**2 + 15 * d + 5) + c_out * (d + 2)
    added = c_in * c_out * 3 * d**2
    n_scaling = count(nnx.eval_shape(lambda: TransformerEquivariant(zoo, c_in, c_out, ffn_scaling=True, rngs=nnx.Rngs(0))))
    assert n_scaling == zoo.num_blocks * (eq_formula - dropped + added)


def test_layers_batch_axes_vmap_jit():
    """Leading batch axes = vmap = one network at a time; jit = eager. (Gradients of every coefficient:
    test_tnfn_model's training test checks that every parameter leaf moves after one step.)"""
    feats = random_features(jax.random.key(6), SPEC, 2, batch=(3,))
    eq = TransformerEquivariant(SPEC, 2, 2, rngs=nnx.Rngs(4))
    inv = TransformerInvariant(SPEC, 2, 5, rngs=nnx.Rngs(5))
    batched = call(inv, relu_ffn(call(eq, feats)))
    assert batched.shape == (3, SPEC.num_blocks, 5)
    single = nnx.jit(lambda e, i, f: jax.vmap(lambda x: i(relu_ffn(e(x))))(f))(eq, inv, feats)
    np.testing.assert_allclose(batched, single, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(batched[1], inv(relu_ffn(eq(jax.tree.map(lambda a: a[1], feats)))), rtol=1e-5, atol=1e-5)


def test_layer_bad_inputs():
    feats = random_features(jax.random.key(7), SPEC, 2)
    eq = TransformerEquivariant(SPEC, 2, 3, rngs=nnx.Rngs(0))
    inv = TransformerInvariant(SPEC, 2, 3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"TransformerEquivariant: blocks\[0\] field b_b has shape \(4, 1\) with 1 channels but the layer takes in_channels = 2"):
        eq(random_features(jax.random.key(7), SPEC, 1))
    with pytest.raises(ValueError, match="TransformerInvariant: feats must be TransformerWeights features .*got dict"):
        inv({"q": feats.blocks[0].q})
    raw = feats.replace(blocks=tuple(b.replace(is_features=False, **{f: x[..., 0] for f, x in vars(b).items() if f != "is_features"})
                                     for b in feats.blocks))
    with pytest.raises(ValueError, match="TransformerInvariant: feats must be TransformerWeights features .* of raw weights"):
        inv(raw)
    with pytest.raises(ValueError, match="TransformerEquivariant: feats has 1 blocks but the layer was built for 2"):
        eq(feats.replace(blocks=feats.blocks[:1]))
    wide = random_features(jax.random.key(8), TransformerSpec(2, 2, 6, 3, 2, 5), 2)
    with pytest.raises(ValueError, match=r"TransformerInvariant: blocks\[0\] field b_b has shape \(6, 2\); D must be 4"):
        inv(wide)
