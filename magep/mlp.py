"""The MLP head shared by the models and STATNN."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from common.nets import get_activation
from common.draws import normal_arrays


class MLP(nnx.Module):
    """in_features -> hidden... -> out_features, activation (+ optional dropout) after each hidden layer;
    xavier-normal kernels, zero biases.

    Args:
      in_features: input size.
      hidden: hidden sizes, e.g. (500, 500).
      out_features: output size.
      activation: name of the hidden activation.
      dropout: dropout rate after each hidden activation (active unless the module is in eval mode).
      rngs: nnx.Rngs with ``params`` (and ``dropout`` when dropout > 0) streams.
    """

    def __init__(self, in_features: int, hidden: tuple[int, ...], out_features: int, *, rngs: nnx.Rngs,
                 activation: str = "relu", dropout: float = 0.0):
        sizes = (in_features, *hidden, out_features)
        pairs = list(zip(sizes[:-1], sizes[1:]))
        kernels = normal_arrays(rngs.params(), pairs, [math.sqrt(2.0 / (a + b)) for a, b in pairs])
        self.kernels = nnx.List([nnx.Param(k) for k in kernels])
        self.biases = nnx.List([nnx.Param(jnp.asarray(np.zeros((b,), np.float32))) for _, b in pairs])
        self.activation = activation
        self.dropout = nnx.Dropout(dropout, rngs=rngs) if dropout > 0 else None

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [..., in_features] -> [..., out_features]."""
        act = get_activation(self.activation)
        for i, (k, b) in enumerate(zip(self.kernels, self.biases)):
            x = x @ k[...] + b[...]
            if i < len(self.kernels) - 1:
                x = act(x)
                if self.dropout is not None:
                    x = self.dropout(x)
        return x
