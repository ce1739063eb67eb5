"""The last equivariant layer and the invariant layer evaluated as one map (docs/transformer_nfn.md §6).

The invariant layer reads the attention fields only through two statistics, QK = sum_i q_i k_i^T (th1, a full
contraction) and the row sums of VO = sum_i v_i o_i (th2), and q, k, v, o pass the ReLU between the layers
unchanged. The equivariant layer maps them linearly, q'_e = sum_d PhiQ_ed q_d on the D axis (k, v alike) and
o'_e = sum_d (phi_o1_ed (o_d 1) 1^T + phi_o2_ed o_d), so with the input's cross-channel statistics
QK_dd' = sum_i q_i,d k_i,d'^T and VS_dd' = sum_i v_i,d (o_i,d' 1):

    sum_e <Th1_fe, QK'_e>         = sum_{d,d'} <G1_fdd', QK_dd'>,   G1_fdd' = sum_e PhiQ_ed^T Th1_fe PhiK_ed'
    sum_e Th2_fe . (VO'_e 1)      = sum_{d,d'} <G2_fdd', VS_dd'>,   G2_fdd' = sum_e kappa_ed' PhiV_ed^T Th2_fe

with kappa = D phi_o1 + phi_o2. G1 and G2 depend on the coefficients alone, so the last equivariant layer's
attention outputs (6 D^2 numbers per output channel, block and network, and their statistics) are never formed:
XLA drops them, and the step moves far fewer bytes. The paper's variant only: with ``ffn_scaling=True`` the
invariant layer also reads VO A B, which couples the attention outputs with the FFN ones.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from transformer_nfn import terms
from transformer_nfn.weights import BlockWeights, TransformerSpec, TransformerWeights


def attention_invariant(eq_coeffs: dict[str, jax.Array], inv_coeffs: dict[str, jax.Array], block: BlockWeights
                        ) -> jax.Array:
    """The invariant layer's th1 and th2 terms on the attention outputs of the equivariant layer, from one block of
    that layer's input features (q [..., h, D, Dk, d], ...). eq_coeffs, inv_coeffs: one block's coefficients of
    the two layers (phi_q [e, d, D, D], ..., th1 [f, e, D, D], th2 [f, e, D]). Returns [..., f]."""
    n_out = block.o.shape[-2]
    g1 = jnp.einsum("fepq,edpa,ecqb->fdcab", inv_coeffs["th1"], eq_coeffs["phi_q"], eq_coeffs["phi_k"])
    kappa = n_out * eq_coeffs["phi_o1"] + eq_coeffs["phi_o2"]
    g2 = jnp.einsum("fep,edpa,ec->fdca", inv_coeffs["th2"], eq_coeffs["phi_v"], kappa)
    qk = jnp.einsum("...hard,...hbrc->...abdc", block.q, block.k)
    vs = jnp.einsum("...hard,...hrc->...adc", block.v, jnp.sum(block.o, axis=-2))
    return jnp.einsum("fdcab,...abdc->...f", g1, qk) + jnp.einsum("fdca,...adc->...f", g2, vs)


def readout_block(eq_coeffs: dict[str, jax.Array], inv_coeffs: dict[str, jax.Array], block: BlockWeights
                  ) -> jax.Array:
    """invariant(relu_ffn(equivariant(block))) for one block (paper variant): [..., d] features -> [..., f]."""
    spec = TransformerSpec.from_weights(TransformerWeights((block,)))
    ffn = terms.apply_block(terms.block_plan(spec, False, "equivariant"), eq_coeffs, block)  # q..o unused: dropped
    plan = terms.block_plan(spec, False, "invariant_ffn")
    inputs = {slot: jax.nn.relu(ffn[slot]) for slot in ("A", "B", "a", "b")}
    rest = plan.apply({t.name: inv_coeffs[t.name] for t in plan.terms}, inputs)["I"]
    return rest + attention_invariant(eq_coeffs, inv_coeffs, block)


@jax.jit
def readout_apply(eq_coeffs: dict[str, jax.Array], inv_coeffs: dict[str, jax.Array], feats: TransformerWeights
                  ) -> jax.Array:
    """`invariant_apply(inv_coeffs, relu_ffn(equivariant_apply(eq_coeffs, feats)))` of the paper's variant without
    forming the equivariant layer's attention outputs (module docstring). coeffs: {term: [num_blocks, ...]};
    feats: features with C = d. Returns [..., num_blocks, f]."""
    out = jax.vmap(readout_block)(eq_coeffs, inv_coeffs, terms.stack_blocks(feats))
    return jnp.moveaxis(out, 0, -2)


def cheaper(c_in: int, c_out: int) -> bool:
    """Whether `readout_apply` moves fewer numbers than the two layers apart: its cross-channel statistics take
    about 2 D^2 c_in^2 numbers per block and network, the attention outputs and statistics it skips about
    6 D^2 c_out."""
    return c_in * c_in <= 3 * c_out
