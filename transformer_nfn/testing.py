"""Helpers for two-sided symmetry checks on transformer weight spaces (used with `common.testing.assert_symmetry`).

`broken_actions` returns moves that apply one factor of the group to only part of the fields it must act
on together (e.g. a head permutation of q alone, or GL(Dk) on q without its inverse on k): the zoo
transformer's function changes under each, so an equivariant/invariant map must not commute with them.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Callable

import jax
import jax.numpy as jnp

from transformer_nfn import groups
from transformer_nfn.weights import BlockWeights, TransformerSpec, TransformerWeights


def random_features(key: jax.Array, spec: TransformerSpec, channels: int, batch: tuple[int, ...] = (),
                    dtype=jnp.float32) -> TransformerWeights:
    """Standard-normal features of `spec` (blocks only): leaves [*batch, ..., channels]."""
    shapes = [batch + s for s in spec.field_shapes(channels).values()] * spec.num_blocks
    sizes = [math.prod(s) for s in shapes]
    flat = jax.random.normal(key, (sum(sizes),), dtype)
    leaves = iter(flat[o : o + n].reshape(s) for o, n, s in zip(itertools.accumulate([0] + sizes), sizes, shapes))
    return TransformerWeights(tuple(BlockWeights(*(next(leaves) for _ in range(8)), is_features=True)
                                    for _ in range(spec.num_blocks)))


def _partial(g: groups.TransformerElement, fields: tuple[str, ...]) -> Callable[[TransformerWeights], TransformerWeights]:
    """Move applying g but keeping only `fields` of every block from the transformed weights."""
    def move(tw: TransformerWeights) -> TransformerWeights:
        moved = groups.act(g, tw)
        return tw.replace(blocks=tuple(
            b.replace(**{f: getattr(m, f) for f in fields}) for b, m in zip(tw.blocks, moved.blocks)
        ))
    return move


def broken_actions(key: jax.Array, tw: TransformerWeights, ffn_scaling: bool = True) -> list[tuple[str, Callable]]:
    """(name, move) pairs of uncoupled actions on every block of `tw` (raw weights or features).

    Each uses a non-identity factor: a cyclic shift for permutations, a random well-conditioned GL element,
    scales log-uniform on [0.5, 2]. The FFN-scaling move is included if `ffn_scaling`.
    """
    spec = TransformerSpec.from_weights(tw)
    g = groups.sample(key, tw, ffn_scaling=True)
    ident = groups.identity(spec, tw.blocks[0].q.dtype).blocks[0]
    shift = lambda n: jnp.roll(jnp.arange(n, dtype=jnp.int32), 1)

    def element(**fields) -> groups.TransformerElement:
        return groups.TransformerElement(tuple(
            dataclasses.replace(ident, **{f: (v(e) if callable(v) else v) for f, v in fields.items()}) for e in g.blocks
        ))

    moves = [
        ("head permutation of q only", _partial(element(heads=shift(spec.num_heads)), ("q",))),
        ("GL(Dk) on q without its inverse on k", _partial(element(m=lambda e: e.m), ("q",))),
        ("GL(Dv) on v without its inverse on o", _partial(element(n=lambda e: e.n), ("v",))),
        ("pi_O on o without w_a", _partial(element(perm_o=shift(spec.d_model)), ("o",))),
        ("pi_A on w_a columns without b_a, w_b", _partial(element(perm_a=shift(spec.d_ffn)), ("w_a",))),
    ]
    if ffn_scaling:
        moves.append(("FFN scaling of w_a, b_a without w_b", _partial(element(scale_a=lambda e: e.scale_a), ("w_a", "b_a"))))
    return moves
