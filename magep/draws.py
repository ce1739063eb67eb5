"""Random initial values drawn from a jax key as one vector (one XLA kernel per layer, not one per shape,
which otherwise dominates module construction time on CPU)."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np


def normal_arrays(key: jax.Array, shapes, scales=None, dtype=jnp.float32) -> list[jax.Array]:
    """Independent N(0, scale^2) arrays of the given shapes (scales default 1; scale 0 gives zeros).

    Args:
      key: PRNG key.
      shapes: list of shapes.
      scales: one standard deviation per shape.
    Returns:
      list of arrays (host-drawn slices of one normal vector, moved to the device).
    """
    shapes = [tuple(s) for s in shapes]
    scales = [1.0] * len(shapes) if scales is None else scales
    sizes = [math.prod(s) for s in shapes]
    total = 1 << max(sum(sizes) - 1, 0).bit_length()  # power-of-two draw: few distinct kernels to compile
    flat = np.asarray(jax.random.normal(key, (total,), dtype))
    offsets = np.cumsum([0] + sizes)
    return [jnp.asarray(scale * flat[a:b].reshape(s)) for a, b, s, scale in zip(offsets[:-1], offsets[1:], shapes, scales)]
