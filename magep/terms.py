"""MAGEP building blocks ("stable polynomial terms", docs/magep.md §3) in O(L) matrix products (§5).

Per channel c (the trailing axis of the inputs and blocks), with W^(l) = ``weights[l-1]`` [..., n_l, n_{l-1}, c]
and b^(l) = ``biases[l-1]`` [..., n_l, c]; the products are computed channels leading ([c, ..., n_l, n_{l-1}]):

    A_l = W^(l) A_{l-1} = W^(l,0)   (prefix)        B_t = B_{t+1} W^(t+1) = W^(L,t)   (suffix, B_0 = A_L)
    S^(1) = 0, S^(l) = W^(l) (S^(l-1) + b^(l-1))  = sum_{t<l} W^(l,t) b^(t)
    [WW]^(s,t) = A_s (Phi_{s,t} B_t)                 [bW]^(s,t) = b^(s) (phi_{s,t} B_t)   (outer product)
    tWW_s = sum_{p,q} (Phi_{s,s})_{qp} A_L[p, q]     tbW_s = phi_{s,s} B_s b^(s)

Coupling matrices: ``couplings["Phi"][key(s, t)]`` [c, n_0, n_L] and ``couplings["phi"][key(s, t)]`` [c, n_L]
for the 3L-2 pairs of `coupling_pairs` (the invariant layer uses `invariant_pairs`). All products
telescope, so with g^(0) = g^(L) = I every block transforms like a weight/bias of its layer pair.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from common.sharing import LAYOUTS


def pair_key(s: int, t: int) -> str:
    """Name of the (s, t) coupling pair."""
    return f"{s}_{t}"


def coupling_pairs(L: int) -> tuple[tuple[int, int], ...]:
    """Pairs used by the equivariant layer: (l, l-1) for l = 1..L, (l, 0) for l = 2..L, (s, s) for s = 1..L-1."""
    return (tuple((l, l - 1) for l in range(1, L + 1)) + tuple((l, 0) for l in range(2, L + 1))
            + tuple((s, s) for s in range(1, L)))


def invariant_pairs(L: int) -> tuple[tuple[int, int], ...]:
    """Pairs used by the invariant layer: (L, 0) and (s, s) for s = 1..L-1."""
    return ((L, 0),) + tuple((s, s) for s in range(1, L))


def channels_leading(x: jax.Array) -> jax.Array:
    """[..., *index, c] -> [c, ..., *index]: the layout of the products below and of the layers' contractions
    (`SharingPlan.apply` ``layout="channels_leading"``), where channels are the first batch axis of every
    per-channel product and the rows of every contraction, so neither needs a transpose."""
    return jnp.moveaxis(x, -1, 0)


def channels_trailing(x: jax.Array) -> jax.Array:
    """Inverse of `channels_leading`: [c, ...] -> [..., c]."""
    return jnp.moveaxis(x, 0, -1)


def leading_tensors(tensors, layout: str) -> tuple:
    """``tensors`` given in ``layout`` ("channels_last" or "channels_leading", `common.sharing.LAYOUTS`) as a
    tuple in the channels-leading layout."""
    if layout not in LAYOUTS:
        raise ValueError(f"magep: layout must be one of {LAYOUTS}, got {layout!r}")
    return tuple(tensors) if layout == "channels_leading" else tuple(map(channels_leading, tensors))


def _per_channel(coupling: jax.Array, like: jax.Array, index_axes: int) -> jax.Array:
    """A coupling [c, *k] with size-1 batch axes inserted after c to broadcast against ``like`` [c, ..., *index]."""
    n_batch = like.ndim - 1 - index_axes
    return coupling.reshape(coupling.shape[:1] + (1,) * n_batch + coupling.shape[1:])


def _mv(x: jax.Array, v: jax.Array) -> jax.Array:
    """Per-channel matrix-vector product [..., a, b] x [..., b] -> [..., a]."""
    return jnp.einsum("...ab,...b->...a", x, v)


@jax.custom_jvp
def _product(x: jax.Array, y: jax.Array) -> jax.Array:
    return x @ y


@_product.defjvp
def _product_jvp(primals: tuple, tangents: tuple) -> tuple[jax.Array, jax.Array]:
    """d(x y) = dx y + x dy, with x in the second term read from a transposed copy (the barrier keeps XLA from
    folding the transpose back): reverse mode transposes that term into x^T g, which sums over the rows of both
    operands, a form XLA CPU's YNNPACK kernels refuse (Eigen then runs it one matrix at a time); from the copy
    YNNPACK runs it."""
    (x, y), (dx, dy) = primals, tangents
    x_copy = jnp.swapaxes(jax.lax.optimization_barrier(jnp.swapaxes(x, -1, -2)), -1, -2)
    return x @ y, dx @ y + x_copy @ dy


def matmul(x: jax.Array, y: jax.Array) -> jax.Array:
    """Per-channel matrix product [..., m, k] x [..., k, n] -> [..., m, n] (x @ y). Where both have the same batch
    axes and m, k, n > 1, its gradient takes x's transpose as a copy (`_product_jvp`): at 20 x 64 products of 16 x 16
    matrices 3.7 against 4.2 ms forward and backward (docs/magep.md §9.4). Matrix-vector products stay with
    XLA's own kernels, the fastest for them."""
    if x.shape[:-2] != y.shape[:-2] or 1 in (*x.shape[-2:], y.shape[-1]):
        return x @ y
    return _product(x, y)


def prefix_products(weights: tuple) -> list[jax.Array]:
    """[A_1, ..., A_L], A_l = W^(l,0) [..., n_l, n_0], from weights [..., n_l, n_{l-1}] (channels among the
    leading batch axes)."""
    out = [weights[0]]
    for w in weights[1:]:
        out.append(matmul(w, out[-1]))
    return out


def suffix_products(weights: tuple) -> list[jax.Array]:
    """[B_0, ..., B_{L-1}], B_t = W^(L,t) [..., n_L, n_t], from weights [..., n_l, n_{l-1}] (channels among the
    leading batch axes)."""
    out = [weights[-1]]
    for w in weights[-2::-1]:
        out.append(matmul(out[-1], w))
    return out[::-1]


def path_biases(weights: tuple, biases: tuple) -> list[jax.Array]:
    """[S^(1), ..., S^(L)], S^(l) = sum_{t<l} [Wb]^(l,t) [..., n_l] (S^(1) = 0)."""
    out = [jnp.zeros_like(biases[0])]
    for l in range(1, len(weights)):
        out.append(_mv(weights[l], out[-1] + biases[l - 1]))
    return out


def coupling_products(B: list, couplings: dict, wanted) -> dict:
    """Coupling rows times suffix products: ``{("Phi", s, t): Phi_{s,t} B_t [c, ..., n_0, n_t], ("phi", s, t):
    phi_{s,t} B_t [c, ..., n_t]}`` for every (name, s, t) in ``wanted``. The rows applied to B_0 = W^(L,0) (2L of
    the equivariant layer's, each a product with the tiny [n_L, n_0] matrix) are stacked into one per-channel
    matrix product: XLA compiles each matrix-vector product as a module of its own, and one product in place of
    2L took 32 of the 151 such dots out of MAGEP-NFN's training step (docs/magep.md §9.4); the three rows applied
    to each larger B_t (t > 0) stay apart, where the stacked product ran 10% slower at batch 8."""
    groups = {}
    for name, s, t in wanted:
        groups.setdefault(0 if t == 0 else (name, s, t), []).append((name, s, t))
    out = {}
    for rows in groups.values():
        t = rows[0][2]
        mats = [couplings[name][pair_key(s, t)] if name == "Phi" else couplings[name][pair_key(s, t)][:, None, :]
                for name, s, _ in rows]  # [c, k, n_L] each
        R = _per_channel(jnp.concatenate(mats, axis=1), B[t], 2) @ B[t]  # [c, ..., sum k, n_t]
        start = 0
        for row, m in zip(rows, mats):
            piece = R[..., start: start + m.shape[1], :]
            out[row] = piece if row[0] == "Phi" else piece[..., 0, :]
            start += m.shape[1]
    return out


def ww(A: list, rows: dict, s: int, t: int) -> jax.Array:
    """[WW]^(s,t) = A_s (Phi_{s,t} B_t) [c, ..., n_s, n_t] (channels leading; ``rows`` of `coupling_products`)."""
    return matmul(A[s - 1], rows[("Phi", s, t)])


def bw(biases: tuple, rows: dict, s: int, t: int) -> jax.Array:
    """[bW]^(s,t) = b^(s) (phi_{s,t} B_t) [c, ..., n_s, n_t] (rank one per channel; ``rows`` of
    `coupling_products`)."""
    return biases[s - 1][..., :, None] * rows[("phi", s, t)][..., None, :]


def _rows_wanted(pairs) -> list:
    """The coupling rows the blocks read: Phi and phi of every (s, t) pair with s != t, phi of the (s, s) pairs
    (tWW reads Phi_{s,s} with A_L, not with a suffix product)."""
    return [(name, s, t) for s, t in pairs for name in (("phi",) if s == t else ("Phi", "phi"))]


def traces(A: list, biases: tuple, couplings: dict, rows: dict) -> jax.Array:
    """[tWW_1..tWW_{L-1}, tbW_1..tbW_{L-1}] as [2c, ..., L-1] (trace features, channels leading and
    concatenated); tbW_s = (phi_{s,s} B_s) . b^(s) from ``rows`` of `coupling_products`."""
    L = len(A)
    Phi = couplings["Phi"]
    tww = [jnp.sum(jnp.swapaxes(_per_channel(Phi[pair_key(s, s)], A[-1], 2), -1, -2) * A[-1], (-2, -1))
           for s in range(1, L)]
    tbw = [jnp.sum(rows[("phi", s, s)] * biases[s - 1], -1) for s in range(1, L)]
    return jnp.concatenate([jnp.stack(tww, axis=-1), jnp.stack(tbw, axis=-1)], axis=0)


def _last_blocks(weights: tuple, biases: tuple, A: list, rows: dict, S_L: jax.Array, couplings: dict) -> dict:
    L = len(weights)
    return {
        "M": jnp.concatenate([A[-1], ww(A, rows, L, 0), bw(biases, rows, L, 0)]),
        "S": jnp.concatenate([S_L, biases[-1]]),
        "T": traces(A, biases, couplings, rows),
    }


def _layout(blocks: dict, layout: str) -> dict:
    return blocks if layout == "channels_leading" else {k: channels_trailing(v) for k, v in blocks.items()}


def invariant_blocks(weights: tuple, biases: tuple, couplings: dict, layout: str = "channels_last",
                     suffix: list | None = None) -> dict[str, jax.Array]:
    """Inputs of the invariant terms (pairs `invariant_pairs`), channels concatenated per signature:

    ``"M"``: [W^(L,0), [WW]^(L,0), [bW]^(L,0)] [..., n_L, n_0, 3c];  ``"S"``: [S^(L), b^(L)] [..., n_L, 2c];
    ``"T"``: traces [..., L-1, 2c]; with ``layout="channels_leading"`` the channels come first ([3c, ..., n_L,
    n_0], ...; the layout the layers use), and then the inputs too. Cost: O(L) per-channel matrix products
    (computed channels leading). ``suffix``: `suffix_products` of the weights when already known (channels
    leading, e.g. from `preprocess.normalize_with_suffix`).
    """
    weights, biases = leading_tensors(weights, layout), leading_tensors(biases, layout)
    A, B = prefix_products(weights), suffix_products(weights) if suffix is None else suffix
    rows = coupling_products(B, couplings, _rows_wanted(invariant_pairs(len(weights))))
    return _layout(_last_blocks(weights, biases, A, rows, path_biases(weights, biases)[-1], couplings), layout)


def equivariant_blocks(weights: tuple, biases: tuple, couplings: dict, layout: str = "channels_last",
                       suffix: list | None = None) -> dict[str, jax.Array]:
    """Every block the equivariant layer reads, channels concatenated per shared signature (l = 1..L):

    ``"P{l}"``: [W^(l), [WW]^(l,l-1), [bW]^(l,l-1)] [..., n_l, n_{l-1}, 3c];
    ``"b1"``: b^(1);  for 1 < l < L: ``"M{l}"``: [W^(l,0), [WW]^(l,0), [bW]^(l,0)] [..., n_l, n_0, 3c] and
    ``"S{l}"``: [S^(l), b^(l)] [..., n_l, 2c];  for l = L: ``"M{L}"``, ``"S{L}"``, ``"T"`` of `invariant_blocks`.
    With ``layout="channels_leading"`` the channels come first ([3c, ..., n_l, n_{l-1}], ...), in the inputs
    too. Cost: O(L) per-channel matrix products (computed channels leading). ``suffix`` as in
    `invariant_blocks`.
    """
    L = len(weights)
    weights, biases = leading_tensors(weights, layout), leading_tensors(biases, layout)
    blocks = {"b1": biases[0]}
    A, B = prefix_products(weights), suffix_products(weights) if suffix is None else suffix
    rows = coupling_products(B, couplings, _rows_wanted(coupling_pairs(L)))
    for l in range(1, L + 1):
        blocks[f"P{l}"] = jnp.concatenate([weights[l - 1], ww(A, rows, l, l - 1), bw(biases, rows, l, l - 1)])
    S = path_biases(weights, biases)
    for l in range(2, L):
        blocks[f"M{l}"] = jnp.concatenate([A[l - 1], ww(A, rows, l, 0), bw(biases, rows, l, 0)])
        blocks[f"S{l}"] = jnp.concatenate([S[l - 1], biases[l - 1]])
    last = _last_blocks(weights, biases, A, rows, S[-1], couplings)
    return _layout(blocks | {f"M{L}": last["M"], f"S{L}": last["S"], "T": last["T"]}, layout)
