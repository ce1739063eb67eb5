"""`transformer_nfn.readout`: the last equivariant layer and the invariant layer as one map equal the two layers
apart (values and gradients), and the predictor takes that path where it is cheaper."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from transformer_nfn import AccuracyPredictor, TransformerEquivariant, TransformerInvariant, TransformerSpec, nets
from transformer_nfn import equivariant_apply, invariant_apply, readout, relu_ffn, terms
from transformer_nfn.testing import random_features

SPEC = TransformerSpec(num_blocks=2, num_heads=2, d_model=4, d_k=3, d_v=2, d_ffn=5)


def _layers(c_in: int, key: int):
    eq = TransformerEquivariant(SPEC, c_in, 3, rngs=nnx.Rngs(key), param_dtype=jnp.float64)
    inv = TransformerInvariant(SPEC, 3, 4, rngs=nnx.Rngs(key + 1), param_dtype=jnp.float64)
    # the "unit" rule starts constants at zero: move every coefficient off its initial value
    shift = lambda c: jax.tree.map(lambda x: x + 0.3, c)
    return shift(eq.coefficients()), shift(inv.coefficients())


@pytest.mark.parametrize("c_in", [1, 2])
def test_readout_equals_the_two_layers(c_in):
    """Values and the gradients of both layers' coefficients, float64; the attention statistics' share of the
    output is far above the tolerance, so leaving them out (or getting G1 / G2 wrong) would fail."""
    with jax.enable_x64(True):
        feats = random_features(jax.random.key(c_in), SPEC, c_in, batch=(3,), dtype=jnp.float64)
        eq_c, inv_c = _layers(c_in, 10 * c_in)
        invariant_of = lambda e, i: invariant_apply(i, relu_ffn(equivariant_apply(e, feats)))
        apart = lambda e, i: jnp.sum(jnp.sin(invariant_of(e, i)))
        fused = lambda e, i: jnp.sum(jnp.sin(readout.readout_apply(e, i, feats)))
        want = invariant_of(eq_c, inv_c)
        got = readout.readout_apply(eq_c, inv_c, feats)
        assert got.shape == (3, SPEC.num_blocks, 4)
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
        attention = jax.vmap(readout.attention_invariant)(eq_c, inv_c, terms.stack_blocks(feats))
        assert np.max(np.abs(attention)) > 1e-2 * np.max(np.abs(want))  # far above the tolerance
        for g_fused, g_apart in zip(jax.tree.leaves(jax.grad(fused, argnums=(0, 1))(eq_c, inv_c)),
                                    jax.tree.leaves(jax.grad(apart, argnums=(0, 1))(eq_c, inv_c))):
            np.testing.assert_allclose(g_fused, g_apart, rtol=1e-9, atol=1e-9)


def test_predictor_reads_out_where_cheaper(monkeypatch):
    """The authors' configuration (one equivariant layer 1 -> 10) takes the one-map path and predicts what the
    two layers apart predict; a 10 -> 10 last layer and the FFN-scaling variant keep the layers apart."""
    zoo = TransformerSpec(num_blocks=2, num_heads=2, d_model=8, d_k=4, d_v=4, d_ffn=6)
    tw = jax.vmap(lambda k: nets.init_weights(k, zoo, 10))(jax.random.split(jax.random.key(0), 4))
    build = lambda **kw: AccuracyPredictor(zoo, classifier_widths=(8, 8, 10), embedding_size=None,
                                           classifier_branch="mlp", rngs=nnx.Rngs(0), **kw)
    models = {hc: build(hidden_channels=hc) for hc in [(10,), (2, 10), (10, 10)]}
    assert [m._reads_out(m.equivariant[-1]) for m in models.values()] == [True, True, False]
    scaled = build(ffn_scaling=True)
    assert not scaled._reads_out(scaled.equivariant[-1])
    one_map = {hc: m.logits(tw) for hc, m in models.items()}
    monkeypatch.setattr(AccuracyPredictor, "_reads_out", lambda self, layer: False)
    for hc, m in models.items():
        np.testing.assert_allclose(one_map[hc], m.logits(tw), rtol=1e-5, atol=1e-6)
    assert readout.cheaper(1, 10) and readout.cheaper(5, 10) and not readout.cheaper(10, 10)


def test_ffn_only_invariant_plan_is_the_paper_variant_only():
    names = [t.name for t in terms.block_plan(SPEC, False, "invariant_ffn").terms]
    assert names == ["th3", "th4", "th5", "th6", "th7"]
    with pytest.raises(ValueError, match="block_plan: layer='invariant_ffn' is the paper's variant only"):
        terms.block_plan(SPEC, True, "invariant_ffn")
