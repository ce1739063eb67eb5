"""MAGEP building blocks ("stable polynomial terms", docs/magep.md §3) in O(L) matrix products (§5).

Per channel c (the trailing axis of the inputs and blocks), with W^(l) = ``weights[l-1]`` [..., n_l, n_{l-1}, c]
and b^(l) = ``biases[l-1]`` [..., n_l, c]; the products are computed channels first ([..., c, n_l, n_{l-1}]):

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


def channels_first(x: jax.Array, index_axes: int) -> jax.Array:
    """[..., *index, c] -> [..., c, *index] (the layout of the products below: channels are a leading batch axis
    of every matrix product, so no product needs a transpose)."""
    return jnp.moveaxis(x, -1, -1 - index_axes)


def _channels_last(x: jax.Array, index_axes: int) -> jax.Array:
    return jnp.moveaxis(x, -1 - index_axes, -1)


def _mv(x: jax.Array, v: jax.Array) -> jax.Array:
    """Per-channel matrix-vector product [..., c, a, b] x [..., c, b] -> [..., c, a]."""
    return jnp.einsum("...ab,...b->...a", x, v)


def prefix_products(weights: tuple) -> list[jax.Array]:
    """[A_1, ..., A_L], A_l = W^(l,0) [..., c, n_l, n_0], from channels-first weights [..., c, n_l, n_{l-1}]."""
    out = [weights[0]]
    for w in weights[1:]:
        out.append(w @ out[-1])
    return out


def suffix_products(weights: tuple) -> list[jax.Array]:
    """[B_0, ..., B_{L-1}], B_t = W^(L,t) [..., c, n_L, n_t], from channels-first weights."""
    out = [weights[-1]]
    for w in weights[-2::-1]:
        out.append(out[-1] @ w)
    return out[::-1]


def path_biases(weights: tuple, biases: tuple) -> list[jax.Array]:
    """[S^(1), ..., S^(L)], S^(l) = sum_{t<l} [Wb]^(l,t) [..., c, n_l] (S^(1) = 0), channels first."""
    out = [jnp.zeros_like(biases[0])]
    for l in range(1, len(weights)):
        out.append(_mv(weights[l], out[-1] + biases[l - 1]))
    return out


def ww(A: list, B: list, Phi: jax.Array, s: int, t: int) -> jax.Array:
    """[WW]^(s,t) = A_s (Phi_{s,t} B_t) [..., c, n_s, n_t] (Phi [c, n_0, n_L])."""
    return A[s - 1] @ (Phi @ B[t])


def bw(biases: tuple, B: list, phi: jax.Array, s: int, t: int) -> jax.Array:
    """[bW]^(s,t) = b^(s) (phi_{s,t} B_t) [..., c, n_s, n_t] (rank one per channel; phi [c, n_L])."""
    return biases[s - 1][..., :, None] * (phi[:, None, :] @ B[t])


def traces(A: list, B: list, biases: tuple, couplings: dict) -> jax.Array:
    """[tWW_1..tWW_{L-1}, tbW_1..tbW_{L-1}] stacked as [..., L-1, 2c] (trace features, channels concatenated)."""
    L = len(A)
    tww = [jnp.sum(jnp.swapaxes(couplings["Phi"][pair_key(s, s)], -1, -2) * A[-1], (-2, -1)) for s in range(1, L)]
    tbw = [jnp.sum(couplings["phi"][pair_key(s, s)] * _mv(B[s], biases[s - 1]), -1) for s in range(1, L)]
    return jnp.concatenate([jnp.stack(tww, axis=-2), jnp.stack(tbw, axis=-2)], axis=-1)


def _product_block(parts: list, index_axes: int) -> jax.Array:
    """Channels-first parts concatenated along channels, returned channels last."""
    return _channels_last(jnp.concatenate(parts, -1 - index_axes), index_axes)


def _channels_first_inputs(weights: tuple, biases: tuple) -> tuple[tuple, tuple]:
    return tuple(channels_first(w, 2) for w in weights), tuple(channels_first(b, 1) for b in biases)


def _last_blocks(weights: tuple, biases: tuple, A: list, B: list, S_L: jax.Array, couplings: dict) -> dict:
    L = len(weights)
    key = pair_key(L, 0)
    return {
        "M": _product_block([A[-1], ww(A, B, couplings["Phi"][key], L, 0), bw(biases, B, couplings["phi"][key], L, 0)], 2),
        "S": _product_block([S_L, biases[-1]], 1),
        "T": traces(A, B, biases, couplings),
    }


def invariant_blocks(weights: tuple, biases: tuple, couplings: dict) -> dict[str, jax.Array]:
    """Inputs of the invariant terms (pairs `invariant_pairs`), channels concatenated per signature:

    ``"M"``: [W^(L,0), [WW]^(L,0), [bW]^(L,0)] [..., n_L, n_0, 3c];  ``"S"``: [S^(L), b^(L)] [..., n_L, 2c];
    ``"T"``: traces [..., L-1, 2c].  Cost: O(L) per-channel matrix products (computed channels first).
    """
    weights, biases = _channels_first_inputs(weights, biases)
    A, B = prefix_products(weights), suffix_products(weights)
    return _last_blocks(weights, biases, A, B, path_biases(weights, biases)[-1], couplings)


def equivariant_blocks(weights: tuple, biases: tuple, couplings: dict) -> dict[str, jax.Array]:
    """Every block the equivariant layer reads, channels concatenated per shared signature (l = 1..L):

    ``"P{l}"``: [W^(l), [WW]^(l,l-1), [bW]^(l,l-1)] [..., n_l, n_{l-1}, 3c];
    ``"b1"``: b^(1);  for 1 < l < L: ``"M{l}"``: [W^(l,0), [WW]^(l,0), [bW]^(l,0)] [..., n_l, n_0, 3c] and
    ``"S{l}"``: [S^(l), b^(l)] [..., n_l, 2c];  for l = L: ``"M{L}"``, ``"S{L}"``, ``"T"`` of `invariant_blocks`.
    Cost: O(L) per-channel matrix products (computed channels first).
    """
    L = len(weights)
    blocks = {"b1": biases[0]}
    weights, biases = _channels_first_inputs(weights, biases)
    A, B = prefix_products(weights), suffix_products(weights)
    Phi, phi = couplings["Phi"], couplings["phi"]
    for l in range(1, L + 1):
        k = pair_key(l, l - 1)
        blocks[f"P{l}"] = _product_block([weights[l - 1], ww(A, B, Phi[k], l, l - 1), bw(biases, B, phi[k], l, l - 1)], 2)
    S = path_biases(weights, biases)
    for l in range(2, L):
        k = pair_key(l, 0)
        blocks[f"M{l}"] = _product_block([A[l - 1], ww(A, B, Phi[k], l, 0), bw(biases, B, phi[k], l, 0)], 2)
        blocks[f"S{l}"] = _product_block([S[l - 1], biases[l - 1]], 1)
    last = _last_blocks(weights, biases, A, B, S[-1], couplings)
    return blocks | {f"M{L}": last["M"], f"S{L}": last["S"], "T": last["T"]}
