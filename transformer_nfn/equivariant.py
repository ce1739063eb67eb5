"""`TransformerEquivariant`: the Transformer-NFN equivariant layer (transformer_nfn.md §3).

Per block, with input channels d and output channels e (coefficients shared across heads):

    q'_i = sum_d PhiQ_ed q_i,d   (left multiplication; k', v' alike)   o'_i = sum_d phiO1 (o_i 1) 1^T + phiO2 o_i
    A', a', B', b': the terms of the spec, built from the GL-invariant products QK = sum_i q_i k_i^T and
    VO = sum_i v_i o_i and from sums/rows/columns of w_a, b_a, w_b, b_b (table `TERMS` below).

Equivariant under S_h x| (GL(Dk)^h x GL(Dv)^h) x S_D x S_DA per block. With ``ffn_scaling=True`` the layer
keeps only the terms that are also equivariant under positive scaling of the FFN hidden units (those
positively homogeneous in the scaled columns of w_a / rows of w_b; no biases on w_a, b_a, w_b) and adds three
scaling-invariant inputs to b': sum_j (w_a w_b)_jq, (b_a w_b)_q and (VO w_a w_b)_pk, the last coupling the
attention output channels (pi_O) to the FFN. The paper's variant (the default)
is NOT equivariant under that scaling; the tests check both statements.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from transformer_nfn import terms
from transformer_nfn.terms import Term
from transformer_nfn.weights import BlockWeights, TransformerSpec, TransformerWeights

P, BOTH, S = terms.P, terms.BOTH, terms.S

TERMS: tuple[Term, ...] = (
    # attention weights: explicit formulas in `equivariant_block` (q, k, v left-multiplied; o row sums)
    Term("phi_q", "q", "", "q", "", 2, 1, BOTH),
    Term("phi_k", "k", "", "k", "", 2, 1, BOTH),
    Term("phi_v", "v", "", "v", "", 2, 1, BOTH),
    Term("phi_o1", "o", "", "o", "", 0, 1, BOTH),
    Term("phi_o2", "o", "", "o", "", 0, 0, BOTH),
    # A' [D (pi_O), DA (pi_A)]
    Term("phi1", "A", "", "qk", "...pqd,edpq->...e", 2, 2, P),
    Term("phi2", "A", "", "vo_rows", "...pd,edp->...e", 1, 1, P),
    Term("phi3", "A", "0", "vo", "...pjd,edp->...je", 1, 1, P),
    Term("phi4", "A", "", "A_sum", "...d,ed->...e", 0, 0, P),
    Term("phi5", "A", "0", "A_rows", "...jd,ed->...je", 0, 0, P),
    Term("phi6", "A", "1", "A_cols", "...kd,ed->...ke", 0, 0, BOTH),
    Term("phi7", "A", "01", "A", "...jkd,ed->...jke", 0, 0, BOTH),
    Term("phi8", "A", "", "B_cols", "...qd,edq->...e", 1, 1, P),
    Term("phi9", "A", "1", "B", "...kqd,edq->...ke", 1, 1, P),
    Term("phi10", "A", "", "a_sum", "...d,ed->...e", 0, 0, P),
    Term("phi11", "A", "1", "a", "...kd,ed->...ke", 0, 0, BOTH),
    Term("phi12", "A", "", "b", "...qd,edq->...e", 1, 1, P),
    Term("beta", "A", "", None, "e->e", 0, 0, P),
    # a' [DA]
    Term("psi1", "a", "", "qk", "...pqd,edpq->...e", 2, 2, P),
    Term("psi2", "a", "", "vo_rows", "...pd,edp->...e", 1, 1, P),
    Term("psi3", "a", "", "A_sum", "...d,ed->...e", 0, 0, P),
    Term("psi4", "a", "0", "A_cols", "...kd,ed->...ke", 0, 0, BOTH),
    Term("psi5", "a", "", "B_cols", "...qd,edq->...e", 1, 1, P),
    Term("psi6", "a", "0", "B", "...kqd,edq->...ke", 1, 1, P),
    Term("psi7", "a", "", "a_sum", "...d,ed->...e", 0, 0, P),
    Term("psi8", "a", "0", "a", "...kd,ed->...ke", 0, 0, BOTH),
    Term("psi9", "a", "", "b", "...qd,edq->...e", 1, 1, P),
    Term("gamma", "a", "", None, "e->e", 0, 0, P),
    # B' [DA (pi_A), D (fixed)]
    Term("lam1", "B", "1", "qk", "...pqd,edkpq->...ke", 3, 2, P),
    Term("lam2", "B", "1", "vo_rows", "...pd,edkp->...ke", 2, 1, P),
    Term("lam3", "B", "1", "A_sum", "...d,edk->...ke", 1, 0, P),
    Term("lam4", "B", "01", "A_cols", "...jd,edk->...jke", 1, 0, P),
    Term("lam5", "B", "1", "B_cols", "...qd,edkq->...ke", 2, 1, P),
    Term("lam6", "B", "01", "B", "...jqd,edkq->...jke", 2, 1, BOTH),
    Term("lam7", "B", "1", "a_sum", "...d,edk->...ke", 1, 0, P),
    Term("lam8", "B", "01", "a", "...jd,edk->...jke", 1, 0, P),
    Term("lam9", "B", "1", "b", "...qd,edkq->...ke", 2, 1, P),
    Term("lam10", "B", "1", None, "ek->ke", 1, 0, P),
    # b' [D (fixed)]
    Term("omg1", "b", "0", "qk", "...pqd,edkpq->...ke", 3, 2, BOTH),
    Term("omg2", "b", "0", "vo_rows", "...pd,edkp->...ke", 2, 1, BOTH),
    Term("omg3", "b", "0", "A_sum", "...d,edk->...ke", 1, 0, P),
    Term("omg4", "b", "0", "B_cols", "...qd,edkq->...ke", 2, 1, P),
    Term("omg5", "b", "0", "a_sum", "...d,edk->...ke", 1, 0, P),
    Term("omg6", "b", "0", "b", "...qd,edkq->...ke", 2, 1, BOTH),
    Term("omg_ab", "b", "0", "AB_cols", "...qd,edkq->...ke", 2, 2, S),
    Term("omg_ab2", "b", "0", "aB", "...qd,edkq->...ke", 2, 1, S),
    Term("omg_voab", "b", "0", "voab", "...pkd,edkp->...ke", 2, 1, S),
    Term("omg7", "b", "0", None, "ek->ke", 1, 0, BOTH),
)
_ATTENTION = ("q", "k", "v", "o")
_FFN_OUT = dict(w_a="A", b_a="a", w_b="B", b_b="b")


def equivariant_block(coeffs: dict[str, jax.Array], f: BlockWeights) -> BlockWeights:
    """One block of the layer (pure). coeffs: {term: [e, d, D, ...]} of one block; f: features [..., C=d].

    Returns features with C = e; same batch axes and field shapes.
    """
    table = tuple(t for t in TERMS if t.name in coeffs and t.output not in _ATTENTION)
    st = terms.statistics(f, need_scaling="omg_ab" in coeffs)
    parts = terms.evaluate(table, coeffs, st)
    left = lambda x, c: jnp.einsum("...hprd,edjp->...hjre", x, c)
    o_rows = jnp.einsum("...hrqd,ed->...hre", f.o, coeffs["phi_o1"])
    o = o_rows[..., :, None, :] + jnp.einsum("...hrqd,ed->...hrqe", f.o, coeffs["phi_o2"])
    e = coeffs["phi_o2"].shape[0]
    d, da = f.b_b.shape[-2], f.b_a.shape[-2]
    shapes = dict(A=(d, da, e), a=(da, e), B=(da, d, e), b=(d, e))
    ffn = {field: terms.combine(parts[out], shapes[out]) for field, out in _FFN_OUT.items()}
    return BlockWeights(
        q=left(f.q, coeffs["phi_q"]), k=left(f.k, coeffs["phi_k"]), v=left(f.v, coeffs["phi_v"]), o=o,
        **ffn, is_features=True,
    )


@jax.jit
def equivariant_apply(coeffs: dict[str, jax.Array], feats: TransformerWeights) -> TransformerWeights:
    """The layer on all blocks (pure). coeffs: {term: [num_blocks, e, d, ...]}; feats: features with C = d.

    Returns features with C = e (embedding and classifier dropped: the layer acts on the blocks only).
    """
    out = jax.vmap(equivariant_block)(coeffs, terms.stack_blocks(feats))  # one trace for all blocks
    return TransformerWeights(tuple(jax.tree.map(lambda x, i=i: x[i], out) for i in range(feats.num_blocks)))


def relu_ffn(feats: TransformerWeights) -> TransformerWeights:
    """The nonlinearity between equivariant layers: ReLU on w_a, b_a, w_b, b_b; q, k, v, o pass linearly."""
    return TransformerWeights(tuple(
        b.replace(**{f: jax.nn.relu(getattr(b, f)) for f in _FFN_OUT}) for b in feats.blocks
    ))


class TransformerEquivariant(nnx.Module):
    """Equivariant Transformer-NFN layer: features (C = in_channels) -> features (C = out_channels).

    One coefficient set per block (stored with a leading block axis). Coefficients do not depend on h, Dk,
    Dv or DA, so any block shapes with the spec's D and number of blocks are accepted.

    Args:
      tw_spec: TransformerSpec of the input networks.
      in_channels, out_channels: feature channels.
      ffn_scaling: use the variant that is also equivariant under FFN hidden-unit scaling (module docstring).
      rngs: nnx.Rngs with a "params" stream.
      param_dtype: dtype of the coefficients.
    """

    def __init__(self, tw_spec: TransformerSpec, in_channels: int, out_channels: int, *, ffn_scaling: bool = False,
                 rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.spec, self.in_channels, self.ffn_scaling = tw_spec, in_channels, ffn_scaling
        self.table = terms.select(TERMS, ffn_scaling)
        terms.register_coefficients(self, self.table, tw_spec, in_channels, out_channels, rngs, param_dtype)

    def __call__(self, feats: TransformerWeights) -> TransformerWeights:
        """feats: features, block leaves [..., C_in] -> features [..., C_out] (any leading batch axes)."""
        terms.check_features(feats, self.spec, self.in_channels, "TransformerEquivariant")
        return equivariant_apply({t.name: getattr(self, t.name)[...] for t in self.table}, feats)


def num_params_per_block(d_model: int, c_in: int, c_out: int, ffn_scaling: bool = False) -> int:
    """Coefficients per block; paper variant: c_in c_out (2D^3 + 12D^2 + 15D + 12) + c_out (2D + 2)."""
    return terms.num_params(terms.select(TERMS, ffn_scaling), d_model, c_in, c_out)
