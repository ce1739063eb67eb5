"""Random transformer features for tests (the symmetry checks themselves: `common.testing` with
`transformer_nfn.groups.TransformerGroup`)."""
from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp

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
