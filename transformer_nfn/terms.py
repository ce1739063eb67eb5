"""Shared machinery of the Transformer-NFN layers: group-invariant statistics of a block and term tables.

A layer is a table of `Term`s. Each term contracts one statistic of the input block (channel axis d last)
with a coefficient [e, d, D, ...] (or is a bias [e, D, ...]) and contributes to one output field along some
of its axes; `evaluate` returns the per-output contributions, which the layer broadcasts and sums.

Statistics of a features block (d = input channel; A, a, B, b are w_a, b_a, w_b, b_b):

    qk      [..., D, D, d]   sum_i q_i k_i^T           (GL(Dk)- and head-invariant; both axes fixed)
    vo      [..., D, D, d]   sum_i v_i o_i             (GL(Dv)- and head-invariant; columns permuted by pi_O)
    vo_rows [..., D, d]      sum_q vo_pq               (invariant)
    A       [..., D, DA, d]  A_sum [..., d], A_rows [..., D, d] (sum over DA), A_cols [..., DA, d] (sum over D)
    B       [..., DA, D, d]  B_sum [..., d], B_cols [..., D, d] (sum over DA)
    a       [..., DA, d]     a_sum [..., d];      b [..., D, d]
    AB_cols [..., D, d]      sum_jk A_jk B_kq      (invariant also under FFN hidden-unit scaling)
    aB      [..., D, d]      sum_k a_k B_kq        (invariant also under FFN hidden-unit scaling)
    voab    [..., D, D, d]   VO w_a w_b            (invariant also under FFN hidden-unit scaling; couples pi_O)
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from transformer_nfn.weights import BlockWeights, TransformerSpec, TransformerWeights

# Term modes: "paper" = only in the paper's layer (breaks FFN scaling); "both" = in both variants;
# "scaling" = only in the FFN-scaling-respecting variant.
P, BOTH, S = "paper", "both", "scaling"


class Term(NamedTuple):
    """One term: coefficient ``name`` [e, (d,) D^n_axes] contracts ``stat`` by ``eq`` into ``output`` along ``part``.

    ``stat`` None marks a bias (coefficient [e, D^n_axes], no input channel). ``n_contracted`` D axes are
    summed over (used for the init scale); ``part`` names the output axes the contribution spans
    ("" scalar per channel, "0" first axis, "1" second axis, "01" both).
    """

    name: str
    output: str
    part: str
    stat: str | None
    eq: str
    n_axes: int
    n_contracted: int
    mode: str


def statistics(f: BlockWeights, need_scaling: bool) -> dict[str, jax.Array]:
    """The statistics listed in the module docstring for a features block (any leading batch axes)."""
    A, B, a = f.w_a, f.w_b, f.b_a
    st = dict(
        qk=jnp.einsum("...hprd,...hqrd->...pqd", f.q, f.k),
        vo=jnp.einsum("...hprd,...hrqd->...pqd", f.v, f.o),
        A=A, A_sum=A.sum((-3, -2)), A_rows=A.sum(-2), A_cols=A.sum(-3),
        B=B, B_cols=B.sum(-3), a=a, a_sum=a.sum(-2), b=f.b_b,
    )
    st["vo_rows"] = st["vo"].sum(-2)
    if need_scaling:
        ab = jnp.einsum("...jkd,...kqd->...jqd", A, B)
        st["AB_cols"] = ab.sum(-3)
        st["voab"] = jnp.einsum("...pjd,...jqd->...pqd", st["vo"], ab)
        st["aB"] = jnp.einsum("...kd,...kqd->...qd", a, B)
    return st


def select(table: tuple[Term, ...], ffn_scaling: bool) -> tuple[Term, ...]:
    """The terms of the paper's variant (ffn_scaling False) or of the FFN-scaling-respecting variant."""
    keep = (BOTH, S) if ffn_scaling else (P, BOTH)
    return tuple(t for t in table if t.mode in keep)


def coefficient_shape(t: Term, d_model: int, c_in: int, c_out: int) -> tuple[int, ...]:
    return (c_out,) + (() if t.stat is None else (c_in,)) + (d_model,) * t.n_axes


def num_params(table: tuple[Term, ...], d_model: int, c_in: int, c_out: int) -> int:
    """Number of scalars in one block's coefficients."""
    return sum(math.prod(coefficient_shape(t, d_model, c_in, c_out)) for t in table)


def init(key: jax.Array, table: tuple[Term, ...], num_blocks: int, d_model: int, c_in: int, c_out: int,
         dtype=jnp.float32) -> dict[str, jax.Array]:
    """Coefficients [num_blocks, *shape] per term: normal with variance 1 / (c_in * D^n_contracted * terms per
    output) (so every output starts at unit scale for unit inputs); biases zero."""
    per_output: dict[str, int] = {}
    for t in table:
        per_output[t.output] = per_output.get(t.output, 0) + (t.stat is not None)
    shapes = [(num_blocks,) + coefficient_shape(t, d_model, c_in, c_out) for t in table]
    sizes = [math.prod(s) for s in shapes]
    flat = jax.random.normal(key, (sum(sizes),), dtype)  # one draw, split per term (one compiled RNG call)
    coeffs, offset = {}, 0
    for t, shape, size in zip(table, shapes, sizes):
        if t.stat is None:
            coeffs[t.name] = jnp.zeros(shape, dtype)
        else:
            std = 1.0 / math.sqrt(c_in * d_model ** t.n_contracted * per_output[t.output])
            coeffs[t.name] = std * flat[offset : offset + size].reshape(shape)
        offset += size
    return coeffs


def register_coefficients(module: nnx.Module, table: tuple[Term, ...], tw_spec: TransformerSpec, c_in: int, c_out: int,
                          rngs: nnx.Rngs, dtype=jnp.float32) -> None:
    """Attach `init`'s coefficients of `table` to `module` as nnx.Params named after the terms."""
    for name, value in init(rngs.params(), table, tw_spec.num_blocks, tw_spec.d_model, c_in, c_out, dtype).items():
        setattr(module, name, nnx.Param(value))


def evaluate(table: tuple[Term, ...], coeffs: dict[str, jax.Array], st: dict[str, jax.Array]) -> dict[str, list]:
    """Contributions per output: {output: [(part, value)]}, value [..., (axes of part), e]."""
    out: dict[str, list] = {}
    for t in table:
        c = coeffs[t.name]
        value = jnp.einsum(t.eq, c) if t.stat is None else jnp.einsum(t.eq, st[t.stat], c)
        out.setdefault(t.output, []).append((t.part, value))
    return out


def combine(parts: list, shape: tuple[int, ...]) -> jax.Array:
    """Broadcast-sum contributions into an output of trailing shape ``shape`` = (n0, [n1,] e) after batch axes."""
    total = 0
    for part, value in parts:
        missing = [i for i, axis in enumerate("01"[: len(shape) - 1]) if axis not in part]
        total = total + jnp.expand_dims(value, tuple(i - len(shape) for i in missing))
    batch = jnp.broadcast_shapes(*(v.shape[: v.ndim - len(p) - 1] for p, v in parts))
    return jnp.broadcast_to(total, batch + shape)


def check_features(feats: TransformerWeights, spec: TransformerSpec, channels: int, layer: str) -> None:
    """ValueError naming the layer, block, field and shapes unless feats are features of `spec` with `channels`."""
    if not isinstance(feats, TransformerWeights) or not feats.is_features:
        raise ValueError(f"{layer}: feats must be TransformerWeights features (tw.to_features()), got {type(feats).__name__}"
                         f"{'' if not isinstance(feats, TransformerWeights) else ' of raw weights'}")
    if feats.num_blocks != spec.num_blocks:
        raise ValueError(f"{layer}: feats has {feats.num_blocks} blocks but the layer was built for {spec.num_blocks}")
    for i, b in enumerate(feats.blocks):
        if b.b_b.shape[-2] != spec.d_model:
            raise ValueError(f"{layer}: blocks[{i}] field b_b has shape {tuple(b.b_b.shape)}; D must be {spec.d_model}")
        if b.channels != channels:
            raise ValueError(f"{layer}: blocks[{i}] field b_b has shape {tuple(b.b_b.shape)} with {b.channels} "
                             f"channels but the layer takes in_channels = {channels}")


def stack_blocks(feats: TransformerWeights) -> BlockWeights:
    """The blocks of `feats` stacked on a new leading axis (all blocks share one spec), for vmap over blocks."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *feats.blocks)
