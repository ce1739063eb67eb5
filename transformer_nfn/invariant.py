"""`TransformerInvariant`: the Transformer-NFN invariant layer (transformer_nfn.md §4).

Per block and output feature e:

    I_e = sum_d { <Th1_ed, QK_d> + sum_p Th2_edp (VO_d 1)_p + th3_ed sum(A_d) + sum_q Th4_edq (1^T B_d)_q
                + th5_ed sum(a_d) + sum_q Th6_edq b_qd } + th7_e

Invariant under S_h x| (GL(Dk)^h x GL(Dv)^h) x S_D x S_DA per block. With ``ffn_scaling=True`` the terms
in sum(A), 1^T B and sum(a) (not scaling-invariant) are replaced by <Th8, 1^T A B>, <Th9, a B> and
<Th10, VO A B>, which are also invariant under positive scaling of the FFN hidden units; the paper's variant
is not. Note that the paper's variant only sees sums over the pi_O and pi_A axes, so it is also invariant to
permuting them in one field alone (e.g. the columns of o without the rows of w_a); only a preceding
equivariant layer couples them.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from transformer_nfn import terms
from transformer_nfn.terms import Term
from transformer_nfn.weights import TransformerSpec, TransformerWeights

P, BOTH, S = terms.P, terms.BOTH, terms.S

TERMS: tuple[Term, ...] = (
    Term("th1", "I", "", "qk", "...pqd,edpq->...e", 2, 2, BOTH),
    Term("th2", "I", "", "vo_rows", "...pd,edp->...e", 1, 1, BOTH),
    Term("th3", "I", "", "A_sum", "...d,ed->...e", 0, 0, P),
    Term("th4", "I", "", "B_cols", "...qd,edq->...e", 1, 1, P),
    Term("th5", "I", "", "a_sum", "...d,ed->...e", 0, 0, P),
    Term("th6", "I", "", "b", "...qd,edq->...e", 1, 1, BOTH),
    Term("th8", "I", "", "AB_cols", "...qd,edq->...e", 1, 1, S),
    Term("th9", "I", "", "aB", "...qd,edq->...e", 1, 1, S),
    Term("th10", "I", "", "voab", "...pqd,edpq->...e", 2, 2, S),
    Term("th7", "I", "", None, "e->e", 0, 0, BOTH),
)


@jax.jit
def invariant_apply(coeffs: dict[str, jax.Array], feats: TransformerWeights) -> jax.Array:
    """The layer on all blocks (pure). coeffs: {term: [num_blocks, e, (d,) D...]}; feats: features with C = d.

    Returns [..., num_blocks, e].
    """
    need_scaling = "th8" in coeffs
    table = tuple(t for t in TERMS if t.name in coeffs)

    def one_block(c: dict, block) -> jax.Array:
        parts = terms.evaluate(table, c, terms.statistics(block, need_scaling))
        return terms.combine(parts["I"], (c["th7"].shape[-1],))

    out = jax.vmap(one_block)(coeffs, terms.stack_blocks(feats))  # [num_blocks, ..., e], one trace for all blocks
    return jnp.moveaxis(out, 0, -2)


class TransformerInvariant(nnx.Module):
    """Invariant Transformer-NFN layer: features (C = in_channels) -> [..., num_blocks, out_features].

    Args:
      tw_spec: TransformerSpec of the input networks (number of blocks and D fix the coefficient shapes).
      in_channels: feature channels.
      out_features: features per block.
      ffn_scaling: the variant also invariant under FFN hidden-unit scaling (module docstring).
      rngs: nnx.Rngs with a "params" stream.
      param_dtype: dtype of the coefficients.
    """

    def __init__(self, tw_spec: TransformerSpec, in_channels: int, out_features: int, *, ffn_scaling: bool = False,
                 rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.spec, self.in_channels, self.ffn_scaling = tw_spec, in_channels, ffn_scaling
        self.table = terms.select(TERMS, ffn_scaling)
        terms.register_coefficients(self, self.table, tw_spec, in_channels, out_features, rngs, param_dtype)

    def __call__(self, feats: TransformerWeights) -> jax.Array:
        """feats: features [..., C_in] per block leaf -> [..., num_blocks, out_features]."""
        terms.check_features(feats, self.spec, self.in_channels, "TransformerInvariant")
        return invariant_apply({t.name: getattr(self, t.name)[...] for t in self.table}, feats)


def num_params_per_block(d_model: int, c_in: int, c_out: int, ffn_scaling: bool = False) -> int:
    """Coefficients per block; paper variant: c_in c_out (D^2 + 3D + 2) + c_out."""
    return terms.num_params(terms.select(TERMS, ffn_scaling), d_model, c_in, c_out)
