"""Random initial values drawn from a jax key as one vector, split into arrays of the requested shapes.

One normal draw per call (its length rounded up to a power of two, so few draw kernels are compiled) and one
jitted split per distinct list of shapes keeps module construction cheap on CPU. Everything stays in jax, so
modules that use it build under ``nnx.eval_shape`` (abstract initialisation, checkpoint restore).
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp


@functools.partial(jax.jit, static_argnames="shapes")
def _split(flat: jax.Array, scales: jax.Array, shapes: tuple[tuple[int, ...], ...]) -> list[jax.Array]:
    """Consecutive slices of `flat` reshaped to `shapes`, slice i multiplied by ``scales[i]``."""
    out, offset = [], 0
    for i, s in enumerate(shapes):
        size = math.prod(s)
        out.append(scales[i] * flat[offset : offset + size].reshape(s))
        offset += size
    return out


def normal_arrays(key: jax.Array, shapes, scales=None, dtype=jnp.float32) -> list[jax.Array]:
    """Independent N(0, scale^2) arrays of the given shapes (scales default 1; scale 0 gives zeros).

    Args:
      key: PRNG key.
      shapes: list of shapes.
      scales: one standard deviation per shape.
      dtype: floating dtype of the draw and of the arrays.
    Returns:
      list of arrays, consecutive slices of one normal vector of length ``2**ceil(log2(sum of sizes))``.
    """
    shapes = tuple(tuple(int(n) for n in s) for s in shapes)
    scales = [1.0] * len(shapes) if scales is None else list(scales)
    if len(scales) != len(shapes):
        raise ValueError(f"normal_arrays: scales has {len(scales)} entries for {len(shapes)} shapes")
    if not shapes:
        return []
    total = 1 << max(sum(math.prod(s) for s in shapes) - 1, 0).bit_length()  # power-of-two draw
    flat = jax.random.normal(key, (total,), dtype)
    return _split(flat, jnp.asarray(scales, dtype), shapes)
