"""Transformer-NFN layers: two-sided equivariance/invariance (with and without FFN scaling), parameter counts,
jit/vmap/grad, bad inputs."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from common.testing import assert_equivariant, assert_invariant
from common.training import trainable_parameters
from transformer_nfn import equivariant, invariant
from transformer_nfn import TransformerEquivariant, TransformerInvariant, TransformerSpec, relu_ffn
from transformer_nfn.groups import TransformerGroup
from transformer_nfn.testing import random_features

SPEC = TransformerSpec(num_blocks=2, num_heads=2, d_model=4, d_k=3, d_v=2, d_ffn=5)
call = nnx.jit(lambda module, x: module(x))
TOL = dict(rtol=1e-9, atol=1e-9)


def _not_respected(ffn_scaling):
    """The paper's layers do not respect the coupled FFN scaling: for them it is a broken action."""
    return () if ffn_scaling else (TransformerGroup(SPEC, ffn_scaling=True),)


@pytest.mark.parametrize("ffn_scaling", [False, True])
def test_equivariant_two_sided(ffn_scaling):
    with jax.enable_x64(True):
        feats = random_features(jax.random.key(0), SPEC, 2, batch=(2,), dtype=jnp.float64)
        layer = TransformerEquivariant(SPEC, 2, 3, ffn_scaling=ffn_scaling, rngs=nnx.Rngs(0), param_dtype=jnp.float64)
        out = call(layer, feats)
        assert out.blocks[1].q.shape == (2, 2, 4, 3, 3) and out.blocks[0].w_b.shape == (2, 5, 4, 3)
        group = TransformerGroup(SPEC, ffn_scaling=ffn_scaling)
        assert_equivariant(lambda f: call(layer, f), group, jax.random.key(1), feats,
                           broken=_not_respected(ffn_scaling), **TOL)


@pytest.mark.parametrize("ffn_scaling", [False, True])
def test_invariant_two_sided(ffn_scaling):
    """The paper's invariant layer pools pi_O and pi_A axes field by field, so it cannot see those couplings
    (the encoder-branch test below does); the scaling variant couples them through VO w_a w_b."""
    with jax.enable_x64(True):
        feats = random_features(jax.random.key(2), SPEC, 3, batch=(2,), dtype=jnp.float64)
        layer = TransformerInvariant(SPEC, 3, 4, ffn_scaling=ffn_scaling, rngs=nnx.Rngs(1), param_dtype=jnp.float64)
        assert call(layer, feats).shape == (2, SPEC.num_blocks, 4)
        group = TransformerGroup(SPEC, ffn_scaling=ffn_scaling)
        attention_only = ("head permutation of q only", "GL(Dk) on q without its inverse on k",
                          "GL(Dv) on v without its inverse on o")
        uncoupled = tuple(a for a in group.uncoupled_actions(jax.random.key(11))
                          if ffn_scaling or a.name in attention_only)
        assert_invariant(lambda f: call(layer, f), group, jax.random.key(3), feats, check_uncoupled=False,
                         broken=uncoupled + _not_respected(ffn_scaling), **TOL)


def test_encoder_branch_couples_every_factor():
    """Equivariant -> ReLU on the FFN fields -> invariant: invariant, and every uncoupled move changes it."""
    with jax.enable_x64(True):
        feats = random_features(jax.random.key(4), SPEC, 1, batch=(2,), dtype=jnp.float64)
        eq = TransformerEquivariant(SPEC, 1, 3, rngs=nnx.Rngs(2), param_dtype=jnp.float64)
        inv = TransformerInvariant(SPEC, 3, 4, rngs=nnx.Rngs(3), param_dtype=jnp.float64)
        branch = nnx.jit(lambda e, i, f: i(relu_ffn(e(f))))
        assert_invariant(lambda f: branch(eq, inv, f), TransformerGroup(SPEC), jax.random.key(5), feats,
                         broken=_not_respected(False), **TOL)


def test_parameter_counts_match_spec_formula():
    d, c_in, c_out = 32, 2, 3
    zoo = TransformerSpec(2, 2, d, 16, 16, 64)
    count = trainable_parameters
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
    with pytest.raises(ValueError, match=r"TransformerEquivariant: the weights have num_blocks=1 \(expected 2\)"):
        eq(feats.replace(blocks=feats.blocks[:1]))
    wide = random_features(jax.random.key(8), TransformerSpec(2, 2, 6, 3, 2, 5), 2)
    with pytest.raises(ValueError, match=r"TransformerInvariant: the weights have d_model=6 \(expected 4\)"):
        inv(wide)


def test_layers_reject_another_head_layout():
    """Issue 15: weights with h=4, Dk=4 were accepted by layers built for h=2, Dk=8 (same D)."""
    spec = TransformerSpec(1, 2, 8, 8, 8, 4)
    other = TransformerSpec(1, 4, 8, 4, 8, 4)
    feats = random_features(jax.random.key(9), other, 1)
    for layer, name in ((TransformerEquivariant(spec, 1, 2, rngs=nnx.Rngs(0)), "TransformerEquivariant"),
                        (TransformerInvariant(spec, 1, 2, rngs=nnx.Rngs(0)), "TransformerInvariant")):
        with pytest.raises(ValueError, match=rf"{name}: the weights have num_heads=4 \(expected 2\), d_k=4 \(expected 8\)"):
            layer(feats)
    assert TransformerInvariant(other, 1, 2, rngs=nnx.Rngs(0))(feats).shape == (1, 2)
