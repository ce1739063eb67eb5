"""IO-encodings for NP layers (Zhou et al.): break the too-strong permutation symmetry of the input and
output neurons by adding an embedding of each neuron's index to the columns of W^(1) and to the rows of
W^(L) and b^(L): a learned projection of a sinusoidal embedding (`IOEncoding`) or a learned table
(`IOEmbedding`, the authors' "NP-PosEmb" layers)."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from common import NetworkSpec, WeightSpace
from common.draws import normal_arrays
from magep.validation import check_features, check_spec, resolve_channels


def sinusoidal_embedding(n: int, max_freq: float = 10.0, num_bands: int = 6) -> jax.Array:
    """Positions p = linspace(-1, 1, n) -> [p, sin(pi f p), cos(pi f p)] for f = linspace(1, max_freq, num_bands):
    [n, 1 + 2 num_bands] (13 by default)."""
    p = jnp.linspace(-1.0, 1.0, n)[:, None]
    f = jnp.linspace(1.0, max_freq, num_bands)[None, :]
    return jnp.concatenate([p, jnp.sin(jnp.pi * f * p), jnp.cos(jnp.pi * f * p)], -1)


class IOEncoding(nnx.Module):
    """Add E_in [n_0, C_1] to every row of W^(1), E_out [n_L, C_L] to every column of W^(L), and
    E_b [n_L, C'_L] to b^(L); each E is a learned linear map of `sinusoidal_embedding` (not group-equivariant
    for input/output permutations, by design; hidden-neuron equivariance is kept)."""

    def __init__(self, spec: NetworkSpec, in_channels, *, rngs: nnx.Rngs, max_freq: float = 10.0, num_bands: int = 6):
        check_spec(spec, "IOEncoding", 2)
        self.spec, self.in_channels = spec, resolve_channels(in_channels, spec, "IOEncoding", "in_channels")
        self.max_freq, self.num_bands = max_freq, num_bands
        dim = 1 + 2 * num_bands
        shapes = [(dim, self.in_channels.weights[0]), (dim, self.in_channels.weights[-1]), (dim, self.in_channels.biases[-1])]
        p_in, p_out, p_bias = normal_arrays(rngs.params(), shapes, [math.sqrt(2.0 / (a + b)) for a, b in shapes])
        self.proj_in, self.proj_out, self.proj_bias = nnx.Param(p_in), nnx.Param(p_out), nnx.Param(p_bias)

    def __call__(self, feats: WeightSpace) -> WeightSpace:
        check_features(feats, self.spec, self.in_channels, "IOEncoding")
        e_in = sinusoidal_embedding(self.spec.widths[0], self.max_freq, self.num_bands)
        e_out = sinusoidal_embedding(self.spec.widths[-1], self.max_freq, self.num_bands)
        return add_io_embedding(feats, e_in @ self.proj_in[...], e_out @ self.proj_out[...],
                                e_out @ self.proj_bias[...])


def add_io_embedding(feats: WeightSpace, e_in: jax.Array, e_out: jax.Array, e_bias: jax.Array) -> WeightSpace:
    """W^(1) += e_in [n_0, C_1] on every row, W^(L) += e_out [n_L, C_L] on every column, b^(L) += e_bias
    [n_L, C'_L]; other tensors unchanged."""
    weights, biases = list(feats.weights), list(feats.biases)
    weights[0] = weights[0] + e_in
    weights[-1] = weights[-1] + e_out[:, None, :]
    biases[-1] = biases[-1] + e_bias
    return WeightSpace(tuple(weights), tuple(biases), is_features=True)


class IOEmbedding(nnx.Module):
    """Learned tables E_in [n_0, C_1], E_out [n_L, C_L], E_b [n_L, C'_L] added as in `add_io_embedding`,
    initialised N(0, 1) (the authors' NPLinear(io_embed=True), one per NP layer): n_0 C_1 + n_L (C_L + C'_L)
    parameters. Hidden-neuron equivariant, not input/output-permutation equivariant."""

    def __init__(self, spec: NetworkSpec, in_channels, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        check_spec(spec, "IOEmbedding", 2)
        self.spec, self.in_channels = spec, resolve_channels(in_channels, spec, "IOEmbedding", "in_channels")
        n0, nL, c = spec.widths[0], spec.widths[-1], self.in_channels
        shapes = [(n0, c.weights[0]), (nL, c.weights[-1]), (nL, c.biases[-1])]
        e_in, e_out, e_bias = normal_arrays(rngs.params(), shapes, dtype=param_dtype)
        self.e_in, self.e_out, self.e_bias = nnx.Param(e_in), nnx.Param(e_out), nnx.Param(e_bias)

    def __call__(self, feats: WeightSpace) -> WeightSpace:
        check_features(feats, self.spec, self.in_channels, "IOEmbedding")
        return add_io_embedding(feats, self.e_in[...], self.e_out[...], self.e_bias[...])
