"""The symmetry group of the zoo transformer's blocks and its exact action (docs/transformer_nfn.md §2, §10.1).

Per block, G = S_h x| (GL(Dk)^h x GL(Dv)^h) x S_D x S_DA, optionally times positive scalings of the DA
FFN hidden units (ReLU). An element stores, per block,

    heads   [h]       gather index: new head i takes old head tau(i) = heads[i]
    m       [h, Dk, Dk], n [h, Dv, Dv]   GL elements indexed by OLD head
    m_inv, n_inv                      their inverses (kept exact, so the action needs no matrix inversion)
    perm_o  [D]       gather index of the channels between attention output and FFN input
    perm_a  [DA]      gather index of the FFN hidden units
    scale_a [DA]      positive scales of the FFN hidden units (ones unless ffn_scaling)

and acts (right-multiplying convention, P the gather matrix (y P)_b = y_{perm[b]}):

    q_i' = q_tau(i) M_tau(i)        k_i' = k_tau(i) M_tau(i)^{-T}
    v_i' = v_tau(i) N_tau(i)        o_i' = N_tau(i)^{-1} o_tau(i) P_O
    w_a' = P_O^T w_a P_A S          b_a' = b_a P_A S      w_b' = S^{-1} P_A^T w_b      b_b' = b_b

with S = diag(scale_a). Embedding and classifier are left untouched. Features (trailing channel axis) are
acted on channel by channel.

`TransformerGroup` is this group as a `common.groups.Group`, for `common.testing`'s two-sided checks; its
uncoupled actions apply one factor to only part of the fields it must act on together.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from common.groups import BrokenAction
from transformer_nfn.weights import FIELDS, BlockWeights, TransformerSpec, TransformerWeights


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class BlockElement:
    """Group element of one block (see the module docstring for the fields and their shapes)."""

    heads: jax.Array
    m: jax.Array
    m_inv: jax.Array
    n: jax.Array
    n_inv: jax.Array
    perm_o: jax.Array
    perm_a: jax.Array
    scale_a: jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TransformerElement:
    """Group element of a whole transformer: one independent `BlockElement` per block."""

    blocks: tuple


def _spec(tw_or_spec) -> TransformerSpec:
    if isinstance(tw_or_spec, TransformerSpec):
        return tw_or_spec
    if isinstance(tw_or_spec, TransformerWeights):
        return TransformerSpec.from_weights(tw_or_spec)
    raise ValueError(f"groups: expected TransformerWeights or TransformerSpec, got {type(tw_or_spec).__name__}")


def _float_dtype(tw_or_spec):
    if isinstance(tw_or_spec, TransformerWeights):
        return tw_or_spec.blocks[0].q.dtype
    return jnp.zeros(()).dtype  # float64 under enable_x64, else float32


def _well_conditioned(key: jax.Array, heads: int, dim: int, cond_range: tuple[float, float], dtype):
    """[heads, dim, dim] matrices M = U diag(s) V^T (U, V Haar-orthogonal, s log-uniform on cond_range)
    and their exact inverses V diag(1/s) U^T."""
    k_uv, k_s = jax.random.split(key)
    u, v = jax.random.orthogonal(k_uv, dim, (2, heads), dtype)
    lo, hi = cond_range
    s = jnp.exp(jax.random.uniform(k_s, (heads, dim), dtype, jnp.log(lo), jnp.log(hi)))
    return jnp.einsum("hij,hj,hkj->hik", u, s, v), jnp.einsum("hij,hj,hkj->hik", v, 1.0 / s, u)


def sample(
    key: jax.Array,
    tw: TransformerWeights | TransformerSpec,
    *,
    ffn_scaling: bool = False,
    cond_range: tuple[float, float] = (0.5, 2.0),
    scale_range: tuple[float, float] = (0.5, 2.0),
) -> TransformerElement:
    """Draw a random group element for the blocks of `tw`.

    Args:
      key: PRNG key.
      tw: TransformerWeights (raw or features; the dtype of the GL elements follows its leaves) or a spec.
      ffn_scaling: also draw positive scalings of the FFN hidden units, log-uniform on `scale_range`
        (a symmetry of the ReLU FFN that the paper's layers do not respect).
      cond_range: singular values of each GL element are log-uniform on this range, so the condition number
        is at most hi / lo (4 by default).
    Returns:
      TransformerElement; per block heads [h], m [h, Dk, Dk], n [h, Dv, Dv], perm_o [D], perm_a, scale_a [DA].
    """
    spec, dtype = _spec(tw), _float_dtype(tw)
    for name, (lo, hi) in (("cond_range", cond_range), ("scale_range", scale_range)):
        if not 0 < lo <= hi:
            raise ValueError(f"groups.sample: {name} must satisfy 0 < low <= high, got {(lo, hi)}")
    stacked = _sample_blocks(key, spec, jnp.dtype(dtype), ffn_scaling, tuple(cond_range), tuple(scale_range))
    return TransformerElement(tuple(jax.tree.map(lambda x, i=i: x[i], stacked) for i in range(spec.num_blocks)))


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4, 5))
def _sample_blocks(key, spec: TransformerSpec, dtype, ffn_scaling: bool, cond_range, scale_range) -> BlockElement:
    """All blocks' elements stacked on a leading axis (one compiled program per spec and options)."""

    def one_block(k: jax.Array) -> BlockElement:
        k_h, k_m, k_n, k_o, k_a, k_s = jax.random.split(k, 6)
        if ffn_scaling:
            lo, hi = scale_range
            scale = jnp.exp(jax.random.uniform(k_s, (spec.d_ffn,), dtype, jnp.log(lo), jnp.log(hi)))
        else:
            scale = jnp.ones((spec.d_ffn,), dtype)
        m, m_inv = _well_conditioned(k_m, spec.num_heads, spec.d_k, cond_range, dtype)
        n, n_inv = _well_conditioned(k_n, spec.num_heads, spec.d_v, cond_range, dtype)
        return BlockElement(
            heads=jax.random.permutation(k_h, spec.num_heads).astype(jnp.int32),
            m=m, m_inv=m_inv, n=n, n_inv=n_inv,
            perm_o=jax.random.permutation(k_o, spec.d_model).astype(jnp.int32),
            perm_a=jax.random.permutation(k_a, spec.d_ffn).astype(jnp.int32),
            scale_a=scale,
        )

    return jax.vmap(one_block)(jax.random.split(key, spec.num_blocks))


def identity(spec: TransformerSpec, dtype=jnp.float32) -> TransformerElement:
    """The identity element for `spec`."""
    h = spec.num_heads
    eye_k = jnp.broadcast_to(jnp.eye(spec.d_k, dtype=dtype), (h, spec.d_k, spec.d_k))
    eye_v = jnp.broadcast_to(jnp.eye(spec.d_v, dtype=dtype), (h, spec.d_v, spec.d_v))
    block = BlockElement(
        heads=jnp.arange(h, dtype=jnp.int32), m=eye_k, m_inv=eye_k, n=eye_v, n_inv=eye_v,
        perm_o=jnp.arange(spec.d_model, dtype=jnp.int32),
        perm_a=jnp.arange(spec.d_ffn, dtype=jnp.int32),
        scale_a=jnp.ones((spec.d_ffn,), dtype),
    )
    return TransformerElement((block,) * spec.num_blocks)


@jax.jit
def inverse(g: TransformerElement) -> TransformerElement:
    """g^{-1}: heads' = tau^{-1}, M'_j = M_tau(j)^{-1} (same for N), P_O^{-1}, and the inverse monomial of (P_A, S)."""
    blocks = []
    for b in g.blocks:
        inv_a = jnp.argsort(b.perm_a).astype(jnp.int32)
        blocks.append(
            BlockElement(
                heads=jnp.argsort(b.heads).astype(jnp.int32),
                m=b.m_inv[b.heads], m_inv=b.m[b.heads],
                n=b.n_inv[b.heads], n_inv=b.n[b.heads],
                perm_o=jnp.argsort(b.perm_o).astype(jnp.int32),
                perm_a=inv_a,
                scale_a=1.0 / b.scale_a[inv_a],
            )
        )
    return TransformerElement(tuple(blocks))


@jax.jit
def compose(g: TransformerElement, h: TransformerElement) -> TransformerElement:
    """g h (apply h first), so that act(compose(g, h), x) == act(g, act(h, x)).

    Per block: heads = tau_h[tau_g]; for old head j, M_j = M^h_j M^g_{tau_h^{-1}(j)} (same for N);
    perm_o = perm_o^h[perm_o^g]; (perm_a, scale_a) compose as monomials: perm_a^h[perm_a^g], s^g * s^h[perm_a^g].
    """
    if len(g.blocks) != len(h.blocks):
        raise ValueError(f"groups.compose: g has {len(g.blocks)} blocks but h has {len(h.blocks)}")
    blocks = []
    for a, b in zip(g.blocks, h.blocks):
        inv_h = jnp.argsort(b.heads)
        matmul = lambda x, y: jnp.einsum("hij,hjk->hik", x, y)
        blocks.append(
            BlockElement(
                heads=b.heads[a.heads],
                m=matmul(b.m, a.m[inv_h]), m_inv=matmul(a.m_inv[inv_h], b.m_inv),
                n=matmul(b.n, a.n[inv_h]), n_inv=matmul(a.n_inv[inv_h], b.n_inv),
                perm_o=b.perm_o[a.perm_o],
                perm_a=b.perm_a[a.perm_a],
                scale_a=a.scale_a * b.scale_a[a.perm_a],
            )
        )
    return TransformerElement(tuple(blocks))


def _act_block_raw(e: BlockElement, b: BlockWeights) -> dict[str, jax.Array]:
    """Action on one block's raw leaves (any leading batch axes)."""
    m, m_inv, n, n_inv = (x[e.heads] for x in (e.m, e.m_inv, e.n, e.n_inv))  # new head i uses M_tau(i)
    take = lambda x, idx, axis: jnp.take(x, idx, axis=axis)
    q, k, v, o = (take(getattr(b, f), e.heads, -3) for f in ("q", "k", "v", "o"))
    s = e.scale_a.astype(b.w_a.dtype)
    return dict(
        q=jnp.einsum("...hpr,hrs->...hps", q, m.astype(q.dtype)),
        k=jnp.einsum("...hpr,hsr->...hps", k, m_inv.astype(k.dtype)),
        v=jnp.einsum("...hpr,hrs->...hps", v, n.astype(v.dtype)),
        o=take(jnp.einsum("hrs,...hsq->...hrq", n_inv.astype(o.dtype), o), e.perm_o, -1),
        w_a=take(take(b.w_a, e.perm_o, -2), e.perm_a, -1) * s,
        b_a=take(b.b_a, e.perm_a, -1) * s,
        w_b=take(b.w_b, e.perm_a, -2) / s[:, None],
        b_b=b.b_b,
    )


def _check(g: TransformerElement, tw: TransformerWeights) -> None:
    if not isinstance(tw, TransformerWeights):
        raise ValueError(f"groups.act: tw must be TransformerWeights, got {type(tw).__name__}")
    if len(g.blocks) != tw.num_blocks:
        raise ValueError(f"groups.act: g has {len(g.blocks)} blocks but tw has {tw.num_blocks}")
    spec = TransformerSpec.from_weights(tw)
    gl_k, gl_v = (spec.num_heads, spec.d_k, spec.d_k), (spec.num_heads, spec.d_v, spec.d_v)
    want = dict(heads=(spec.num_heads,), m=gl_k, m_inv=gl_k, n=gl_v, n_inv=gl_v,
                perm_o=(spec.d_model,), perm_a=(spec.d_ffn,), scale_a=(spec.d_ffn,))
    for i, e in enumerate(g.blocks):
        for f, shape in want.items():
            got = tuple(getattr(e, f).shape)
            if got != shape:
                raise ValueError(
                    f"groups.act: g.blocks[{i}].{f} has shape {got} but tw (h={spec.num_heads}, D={spec.d_model}, "
                    f"Dk={spec.d_k}, Dv={spec.d_v}, DA={spec.d_ffn}) needs {shape}"
                )


@jax.jit
def act(g: TransformerElement, tw: TransformerWeights) -> TransformerWeights:
    """Apply g to raw weights or to features (any leading batch axes; features channel by channel).

    Args:
      g: an element for tw's spec (unbatched; vmap over g and tw for one element per network).
      tw: TransformerWeights of raw weights or features.
    Returns:
      the transformed TransformerWeights (same shapes; embedding and classifier unchanged).
    """
    _check(g, tw)
    blocks = []
    for e, b in zip(g.blocks, tw.blocks):
        if b.is_features:  # channel axis to the front = one more batch axis
            raw = BlockWeights(*(jnp.moveaxis(getattr(b, f), -1, 0) for f in FIELDS))
            new = {f: jnp.moveaxis(x, 0, -1) for f, x in _act_block_raw(e, raw).items()}
        else:
            new = _act_block_raw(e, b)
        blocks.append(BlockWeights(**new, is_features=b.is_features))
    return tw.replace(blocks=tuple(blocks))


def _partial(g: TransformerElement, fields: tuple[str, ...]):
    """Move applying g but keeping only `fields` of every block from the transformed weights."""

    def move(tw: TransformerWeights) -> TransformerWeights:
        moved = act(g, tw)
        return tw.replace(blocks=tuple(
            b.replace(**{f: getattr(m, f) for f in fields}) for b, m in zip(tw.blocks, moved.blocks)
        ))

    return move


@dataclasses.dataclass(frozen=True)
class TransformerGroup:
    """The transformer group of `spec`'s blocks (optionally with FFN scaling), as a `common.groups.Group`.

    Attributes:
      spec: the transformer's shapes.
      ffn_scaling: include positive scalings of the FFN hidden units (see `sample`).
      cond_range, scale_range: as in `sample`. Elements are drawn in the default float dtype (float64 under
        enable_x64); `act` casts them to the weights' dtype.
    """

    spec: TransformerSpec
    ffn_scaling: bool = False
    cond_range: tuple[float, float] = (0.5, 2.0)
    scale_range: tuple[float, float] = (0.5, 2.0)

    @property
    def name(self) -> str:
        return f"transformer group ({'with' if self.ffn_scaling else 'no'} FFN scaling)"

    def sample(self, key: jax.Array) -> TransformerElement:
        return sample(key, self.spec, ffn_scaling=self.ffn_scaling, cond_range=self.cond_range,
                      scale_range=self.scale_range)

    def act(self, g: TransformerElement, x: TransformerWeights) -> TransformerWeights:
        return act(g, x)

    def inverse(self, g: TransformerElement) -> TransformerElement:
        return inverse(g)

    def compose(self, g: TransformerElement, h: TransformerElement) -> TransformerElement:
        return compose(g, h)

    def uncoupled_actions(self, key: jax.Array) -> tuple[BrokenAction, ...]:
        """On every block: a head permutation of q alone, GL(Dk) on q without its inverse on k, GL(Dv) on v
        without its inverse on o, pi_O on o without w_a, pi_A on w_a's columns without b_a and w_b, and with
        `ffn_scaling` the FFN scaling of w_a, b_a without w_b. Permutations are cyclic shifts (never the
        identity), GL elements and scales are drawn as in `sample` from `key`."""
        spec = self.spec
        g = sample(key, spec, ffn_scaling=True, cond_range=self.cond_range, scale_range=self.scale_range)
        ident = identity(spec, g.blocks[0].m.dtype).blocks[0]
        shift = lambda n: jnp.roll(jnp.arange(n, dtype=jnp.int32), 1)

        def element(**fields) -> TransformerElement:
            return TransformerElement(tuple(
                dataclasses.replace(ident, **{f: (v(e) if callable(v) else v) for f, v in fields.items()})
                for e in g.blocks
            ))

        moves = [
            BrokenAction("head permutation of q only", _partial(element(heads=shift(spec.num_heads)), ("q",))),
            BrokenAction("GL(Dk) on q without its inverse on k", _partial(element(m=lambda e: e.m), ("q",))),
            BrokenAction("GL(Dv) on v without its inverse on o", _partial(element(n=lambda e: e.n), ("v",))),
            BrokenAction("pi_O on o without w_a", _partial(element(perm_o=shift(spec.d_model)), ("o",))),
            BrokenAction("pi_A on w_a columns without b_a, w_b", _partial(element(perm_a=shift(spec.d_ffn)), ("w_a",))),
        ]
        if self.ffn_scaling:
            moves.append(BrokenAction("FFN scaling of w_a, b_a without w_b",
                                      _partial(element(scale_a=lambda e: e.scale_a), ("w_a", "b_a"))))
        return tuple(moves)
