"""MAGEP building blocks ("stable polynomial terms", docs/magep.md §3) in O(L) matrix products (§5).

Per channel c (the trailing axis), with W^(l) = ``weights[l-1]`` [..., n_l, n_{l-1}, c] and
b^(l) = ``biases[l-1]`` [..., n_l, c]:

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


def _mm(x: jax.Array, y: jax.Array) -> jax.Array:
    """Per-channel matrix product [..., a, b, c] x [..., b, d, c] -> [..., a, d, c]."""
    return jnp.einsum("...abc,...bdc->...adc", x, y)


def _mv(x: jax.Array, v: jax.Array) -> jax.Array:
    """Per-channel matrix-vector product [..., a, b, c] x [..., b, c] -> [..., a, c]."""
    return jnp.einsum("...abc,...bc->...ac", x, v)


def prefix_products(weights: tuple) -> list[jax.Array]:
    """[A_1, ..., A_L], A_l = W^(l,0) [..., n_l, n_0, c]."""
    out = [weights[0]]
    for w in weights[1:]:
        out.append(_mm(w, out[-1]))
    return out


def suffix_products(weights: tuple) -> list[jax.Array]:
    """[B_0, ..., B_{L-1}], B_t = W^(L,t) [..., n_L, n_t, c]."""
    out = [weights[-1]]
    for w in weights[-2::-1]:
        out.append(_mm(out[-1], w))
    return out[::-1]


def path_biases(weights: tuple, biases: tuple) -> list[jax.Array]:
    """[S^(1), ..., S^(L)], S^(l) = sum_{t<l} [Wb]^(l,t) [..., n_l, c] (S^(1) = 0)."""
    out = [jnp.zeros_like(biases[0])]
    for l in range(1, len(weights)):
        out.append(_mv(weights[l], out[-1] + biases[l - 1]))
    return out


def ww(A: list, B: list, Phi: jax.Array, s: int, t: int) -> jax.Array:
    """[WW]^(s,t) = A_s (Phi_{s,t} B_t) [..., n_s, n_t, c]."""
    return _mm(A[s - 1], jnp.einsum("cqp,...ptc->...qtc", Phi, B[t]))


def bw(biases: tuple, B: list, phi: jax.Array, s: int, t: int) -> jax.Array:
    """[bW]^(s,t) = b^(s) (phi_{s,t} B_t) [..., n_s, n_t, c] (rank one per channel)."""
    return biases[s - 1][..., :, None, :] * jnp.einsum("cp,...ptc->...tc", phi, B[t])[..., None, :, :]


def traces(A: list, B: list, biases: tuple, couplings: dict) -> jax.Array:
    """[tWW_1..tWW_{L-1}, tbW_1..tbW_{L-1}] stacked as [..., L-1, 2c] (trace features, channels concatenated)."""
    L = len(A)
    tww = [jnp.einsum("cqp,...pqc->...c", couplings["Phi"][pair_key(s, s)], A[-1]) for s in range(1, L)]
    tbw = [jnp.einsum("cp,...pc->...c", couplings["phi"][pair_key(s, s)], _mv(B[s], biases[s - 1])) for s in range(1, L)]
    return jnp.concatenate([jnp.stack(tww, axis=-2), jnp.stack(tbw, axis=-2)], axis=-1)


def _last_blocks(weights: tuple, biases: tuple, A: list, B: list, S_L: jax.Array, couplings: dict) -> dict:
    L = len(weights)
    key = pair_key(L, 0)
    return {
        "M": jnp.concatenate([A[-1], ww(A, B, couplings["Phi"][key], L, 0), bw(biases, B, couplings["phi"][key], L, 0)], -1),
        "S": jnp.concatenate([S_L, biases[-1]], -1),
        "T": traces(A, B, biases, couplings),
    }


def invariant_blocks(weights: tuple, biases: tuple, couplings: dict) -> dict[str, jax.Array]:
    """Inputs of the invariant terms (pairs `invariant_pairs`), channels concatenated per signature:

    ``"M"``: [W^(L,0), [WW]^(L,0), [bW]^(L,0)] [..., n_L, n_0, 3c];  ``"S"``: [S^(L), b^(L)] [..., n_L, 2c];
    ``"T"``: traces [..., L-1, 2c].  Cost: O(L) per-channel matrix products.
    """
    A, B = prefix_products(weights), suffix_products(weights)
    return _last_blocks(weights, biases, A, B, path_biases(weights, biases)[-1], couplings)


def equivariant_blocks(weights: tuple, biases: tuple, couplings: dict) -> dict[str, jax.Array]:
    """Every block the equivariant layer reads, channels concatenated per shared signature (l = 1..L):

    ``"P{l}"``: [W^(l), [WW]^(l,l-1), [bW]^(l,l-1)] [..., n_l, n_{l-1}, 3c];
    ``"b1"``: b^(1);  for 1 < l < L: ``"M{l}"``: [W^(l,0), [WW]^(l,0), [bW]^(l,0)] [..., n_l, n_0, 3c] and
    ``"S{l}"``: [S^(l), b^(l)] [..., n_l, 2c];  for l = L: ``"M{L}"``, ``"S{L}"``, ``"T"`` of `invariant_blocks`.
    Cost: O(L) per-channel matrix products.
    """
    L = len(weights)
    A, B = prefix_products(weights), suffix_products(weights)
    Phi, phi = couplings["Phi"], couplings["phi"]
    blocks = {"b1": biases[0]}
    for l in range(1, L + 1):
        k = pair_key(l, l - 1)
        blocks[f"P{l}"] = jnp.concatenate([weights[l - 1], ww(A, B, Phi[k], l, l - 1), bw(biases, B, phi[k], l, l - 1)], -1)
    S = path_biases(weights, biases)
    for l in range(2, L):
        k = pair_key(l, 0)
        blocks[f"M{l}"] = jnp.concatenate([A[l - 1], ww(A, B, Phi[k], l, 0), bw(biases, B, phi[k], l, 0)], -1)
        blocks[f"S{l}"] = jnp.concatenate([S[l - 1], biases[l - 1]], -1)
    last = _last_blocks(weights, biases, A, B, S[-1], couplings)
    return blocks | {f"M{L}": last["M"], f"S{L}": last["S"], "T": last["T"]}
