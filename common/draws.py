"""Random initial values drawn from a jax key as one vector, split into arrays of the requested shapes.

One normal draw per call, its length rounded up to a power of two so that few draw kernels are compiled. A
concrete draw is sliced on the host (one XLA compile per distinct list of shapes would dominate module
construction on CPU); a traced one (``nnx.eval_shape``, ``jit``) is sliced by the same expression in jax, with
the same values, so modules built on it can be initialised abstractly and have a checkpoint restored into
them.
"""
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
      dtype: floating dtype of the draw and of the arrays.
    Returns:
      list of arrays, scaled consecutive slices of one normal vector of length ``2**ceil(log2(sum of sizes))``.
    """
    shapes = tuple(tuple(int(n) for n in s) for s in shapes)
    scales = [1.0] * len(shapes) if scales is None else list(scales)
    if len(scales) != len(shapes):
        raise ValueError(f"normal_arrays: scales has {len(scales)} entries for {len(shapes)} shapes")
    if not shapes:
        return []
    sizes = [math.prod(s) for s in shapes]
    total = 1 << max(sum(sizes) - 1, 0).bit_length()  # power-of-two draw
    flat = jax.random.normal(key, (total,), dtype)
    if not isinstance(flat, jax.core.Tracer):
        flat = np.asarray(flat)  # concrete: slice on the host (an XLA compile per list of shapes costs more)
    offsets = np.cumsum([0] + sizes)
    return [jnp.asarray(scale * flat[a:b].reshape(s)) for a, b, s, scale in zip(offsets[:-1], offsets[1:], shapes, scales)]
