"""Forward passes of the networks whose weights the NFNs read: MLPs, Small-CNN-Zoo CNNs and SIRENs.

All take one network's `WeightSpace` (raw weights, PyTorch orientation) and are vmappable over a
leading batch of networks (``jax.vmap(mlp_apply, in_axes=(0, None))``).
"""
from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

from common.sine import sin
from common.tanh import tanh
from common.weight_space import WeightSpace

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "leaky_relu": jax.nn.leaky_relu,
    "tanh": tanh,  # float32: a vectorisable rational function (common/tanh.py), ~4x faster on CPU
    "sin": sin,  # float32: vectorisable (common/sine.py); XLA's CPU jnp.sin is a scalar call per entry
    "identity": lambda z: z,
}


def get_activation(activation: str | Callable) -> Callable[[jax.Array], jax.Array]:
    """Activation by name ("relu", "leaky_relu", "tanh", "sin", "identity") or a callable."""
    if callable(activation):
        return activation
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)} or a callable, got {activation!r}")
    return ACTIVATIONS[activation]


def _require_raw(ws: WeightSpace, fn: str) -> None:
    if ws.is_features:
        raise ValueError(f"{fn}: `ws` holds NFN features; pass raw weights (WeightSpace.from_features)")


def mlp_apply(ws: WeightSpace, x: jax.Array, activation: str | Callable = "relu") -> jax.Array:
    """f(x) = W^(L) s(... s(W^(1) x + b^(1)) ...) + b^(L), no activation after the last layer.

    Args:
      ws: one MLP, weights[i] [n_{i+1}, n_i], biases[i] [n_{i+1}].
      x: inputs [..., n_0].
      activation: hidden activation s.
    Returns:
      outputs [..., n_L].
    """
    return _dense_apply(ws, x, get_activation(activation), "mlp_apply", "x")


def _dense_apply(ws: WeightSpace, x: jax.Array, s: Callable[[jax.Array], jax.Array], fn: str, x_name: str,
                 features_major: bool = False) -> jax.Array:
    """`mlp_apply` with activation function s; errors name the public function `fn` and its input `x_name`.

    ``features_major``: compute with activations laid out [n_i, rows] (``W @ h``) instead of [rows, n_i]: the
    same function up to float rounding; for narrow layers over many rows (a SIREN's 32 units over a pixel grid)
    the weight gradients then contract over the contiguous axis, which ran about 3x faster on CPU."""
    _require_raw(ws, fn)
    if ws.weights[0].ndim != 2:
        raise ValueError(f"{fn}: weights[0] has shape {tuple(ws.weights[0].shape)}; expected one dense network [n_1, n_0]")
    if x.shape[-1] != ws.weights[0].shape[1]:
        raise ValueError(f"{fn}: {x_name} has shape {tuple(x.shape)} but the network takes n_0 = {ws.weights[0].shape[1]} inputs")
    if features_major:
        h, layer = x.reshape(-1, x.shape[-1]).T, lambda h, w, b: w @ h + b[:, None]
    else:
        h, layer = x, lambda h, w, b: h @ w.T + b
    for i, (w, b) in enumerate(zip(ws.weights, ws.biases)):
        h = layer(h, w, b)
        if i < ws.num_layers - 1:
            h = s(h)
    return h.T.reshape(x.shape[:-1] + h.shape[:1]) if features_major else h


def _mix32(h: jax.Array) -> jax.Array:
    """A bijective 32-bit integer mixer (xorshift-multiply, "lowbias32"): uint32 [...] -> uint32 [...]."""
    h = (h ^ (h >> 16)) * jnp.uint32(0x7FEB352D)
    h = (h ^ (h >> 15)) * jnp.uint32(0x846CA68B)
    return h ^ (h >> 16)


def hash_uniform(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Uniform [0, 1) float32 [shape] from a keyed hash of each entry's index: cheap dropout masks on CPU.

    Two Threefry words are drawn from ``key``; entry i gets ``mix(mix(i ^ k0) ^ k1)`` (`_mix32`), whose top 24
    bits make the float. A dozen integer operations per entry that fuse into the consumer, against Threefry's
    ~20 rounds (which took about a third of a Small-CNN-Zoo training step on CPU). Good enough for Bernoulli
    masks, not a general-purpose generator.
    """
    k = jax.random.bits(key, (2,), jnp.uint32)
    index = jax.lax.iota(jnp.uint32, math.prod(shape)).reshape(shape)
    return (_mix32(_mix32(index ^ k[0]) ^ k[1]) >> 8).astype(jnp.float32) * (1.0 / 2**24)


def inverted_dropout(x: jax.Array, rate: float | jax.Array, key: jax.Array,
                     uniform: Callable[[jax.Array, tuple[int, ...]], jax.Array] = jax.random.uniform) -> jax.Array:
    """Training dropout: zeroes each entry of x [...] with probability `rate`, scales the rest by 1 / (1 - rate).

    ``uniform(key, shape)`` draws the mask's uniforms (`jax.random.uniform`, or the cheaper `hash_uniform`).
    Computed as x times a factor (0 or 1 / (1 - rate)): a select of x itself after a matmul kept XLA's CPU
    fusions from vectorising: a Small-CNN-Zoo forward pass at batch 512 took 9.5 ms with it, 5.3 ms without, and
    its gradient 14.4 ms against 13.0 ms (docs/magep.md §10.1).
    So a dropped non-finite entry stays non-finite, and kept entries may differ from x / (1 - rate) by one ulp."""
    keep = uniform(key, x.shape) >= rate
    factor = jnp.where(keep, 1.0 / (1.0 - jnp.asarray(rate, x.dtype)), jnp.zeros((), x.dtype))
    return x * factor


CONV_METHODS = ("lax", "patches")


def _conv_patches(h: jax.Array, w: jax.Array, stride: int) -> jax.Array:
    """VALID convolution as patch extraction + one matmul, batch-minor: h [C, H, W, B], w [O, C, kh, kw] ->
    [O, H', W', B].

    The views are unit-stride slices of the input's stride x stride phases (space-to-depth: h split by row and
    column parity for stride 2), the same patches as strided slices of h, but their gradient is a few plain pads
    instead of interior (strided) pads. With the batch as the minor axis every view is a copy of runs of B
    contiguous entries, the phases need no transpose, and the weight gradient contracts the contiguous axis of
    both operands: one Small-CNN-Zoo gradient (batch 128, one core) ran 20-25% faster than in the channels-last
    layout, whose views copy runs of C = 16 entries out of a transposed phase array (docs/common.md §3)."""
    kh, kw = w.shape[2:]
    c, height, width, b = h.shape
    ho, wo = (height - kh) // stride + 1, (width - kw) // stride + 1
    hp, wp = -(-height // stride) * stride, -(-width // stride) * stride
    h = jnp.pad(h, ((0, 0), (0, hp - height), (0, wp - width), (0, 0)))
    phases = h.reshape(c, hp // stride, stride, wp // stride, stride, b)
    views = [phases[:, u // stride:u // stride + ho, u % stride, v // stride:v // stride + wo, v % stride, :]
             for u in range(kh) for v in range(kw)]
    patches = jnp.concatenate(views, axis=0).reshape(kh * kw * c, ho * wo * b)  # rows (u, v, c)
    out = w.transpose(0, 2, 3, 1).reshape(w.shape[0], kh * kw * c) @ patches  # 2-D: a cheaper weight gradient
    return out.reshape(w.shape[0], ho, wo, b)  # on CPU than the 4-D product's (docs/magep.md §10.1)


def _batch_minor_uniform(uniform: Callable[[jax.Array, tuple[int, ...]], jax.Array]):
    """``uniform`` for a batch-minor [C, H, W, B] tensor that draws what it draws for [B, H, W, C] (transposed):
    dropout masks independent of the layout."""
    return lambda key, shape: uniform(key, (shape[3], shape[1], shape[2], shape[0])).transpose(3, 1, 2, 0)


def cnn_apply(
    ws: WeightSpace,
    x: jax.Array,
    activation: str | Callable = "relu",
    stride: int = 2,
    padding: str = "VALID",
    *,
    conv: str = "lax",
    dropout: float | jax.Array = 0.0,
    dropout_key: jax.Array | None = None,
    dropout_uniform: Callable[[jax.Array, tuple[int, ...]], jax.Array] | None = None,
) -> jax.Array:
    """Small CNN Zoo network: conv layers (stride 2, VALID), global average pool, dense layers.

    Every conv layer is followed by the activation (and, when training, dropout); dense layers after the
    pool by the activation except the last.

    Args:
      ws: one CNN; conv weights [c_out, c_in, kh, kw] first, then dense weights [n_out, n_in].
      x: images [..., H, W, n_0] (channels last).
      conv: "lax" (`lax.conv_general_dilated`) or "patches" (patch extraction + one matmul, VALID only): the
        same function, but under `jax.vmap` over networks lax.conv becomes a grouped convolution that runs
        several times slower on CPU, while the matmul form batches cleanly (used to train populations; it
        runs batch-minor inside, see `_conv_patches`).
      dropout: rate of inverted dropout after each conv layer, applied only when `dropout_key` is given.
      dropout_key: PRNG key for dropout (None: no dropout, the inference network); layer i's mask is
        drawn from ``fold_in(dropout_key, i)`` over the layer's whole output [B, H', W', C'] (the same masks
        with either ``conv``).
      dropout_uniform: ``uniform(key, shape)`` of the masks (default `hash_uniform`; `jax.random.uniform`
        is the Threefry draw).
    Returns:
      logits [..., n_L].
    Raises:
      ValueError: wrong channel count or layer order, or an image too small for a layer's kernel with VALID
        padding (its output would be empty and the pooled mean NaN).
    """
    _require_raw(ws, "cnn_apply")
    if x.shape[-1] != ws.weights[0].shape[1]:
        raise ValueError(f"cnn_apply: x has shape {tuple(x.shape)} but weights[0] {tuple(ws.weights[0].shape)} takes {ws.weights[0].shape[1]} channels")
    if x.ndim < 3:
        raise ValueError(f"cnn_apply: x must be [..., H, W, C], got shape {tuple(x.shape)}")
    if conv not in CONV_METHODS or (conv == "patches" and padding != "VALID"):
        raise ValueError(f"cnn_apply: conv must be one of {CONV_METHODS} ('patches' with VALID padding only); "
                         f"got conv={conv!r}, padding={padding!r}")
    s = get_activation(activation)
    batch = x.shape[:-3]
    h = x.reshape((-1,) + x.shape[-3:])
    uniform = dropout_uniform or hash_uniform
    if conv == "patches":  # batch-minor [C, H, W, B] through the conv layers (see _conv_patches)
        h, uniform = h.transpose(3, 1, 2, 0), _batch_minor_uniform(uniform)
    n_conv = sum(w.ndim == 4 for w in ws.weights)
    size = tuple(x.shape[-3:-1])  # spatial size of layer i's input
    for i in range(n_conv):
        w, b = ws.weights[i], ws.biases[i]
        if w.ndim != 4:
            raise ValueError(f"cnn_apply: weights[{i}] {tuple(w.shape)}: conv layers must come before dense layers")
        if padding == "VALID":
            if size[0] < w.shape[2] or size[1] < w.shape[3]:
                raise ValueError(f"cnn_apply: images of {x.shape[-3]}x{x.shape[-2]} pixels are too small: conv layer "
                                 f"{i} gets {size[0]}x{size[1]} inputs but has a {w.shape[2]}x{w.shape[3]} kernel "
                                 f"(VALID padding, stride {stride})")
            size = tuple((n - k) // stride + 1 for n, k in zip(size, w.shape[2:]))
        else:
            size = tuple(-(-n // stride) for n in size)
        if conv == "patches":
            h = _conv_patches(h, w, stride) + b[:, None, None, None]
        else:
            h = jax.lax.conv_general_dilated(
                h, w, (stride, stride), padding, dimension_numbers=("NHWC", "OIHW", "NHWC")
            ) + b
        h = s(h)
        if dropout_key is not None:
            h = inverted_dropout(h, dropout, jax.random.fold_in(dropout_key, i), uniform)
    h = h.mean(axis=(1, 2))
    if conv == "patches":
        h = h.T  # [C, B] -> [B, C]
    for i in range(n_conv, ws.num_layers):
        h = h @ ws.weights[i].T + ws.biases[i]
        if i < ws.num_layers - 1:
            h = s(h)
    return h.reshape(batch + h.shape[-1:])


def siren_apply(ws: WeightSpace, coords: jax.Array, w0: float = 30.0) -> jax.Array:
    """SIREN: h <- sin(w0 (W h + b)) on every layer but the last, which is linear.

    The sine is `common.sine.sin` (float32: vectorised polynomial, within two ulp of 1 of ``jnp.sin`` and
    about 14x faster on CPU; other dtypes: ``jnp.sin``); activations are laid out [units, points] (`W @ h`),
    whose weight gradients ran about 3x faster on CPU than the [points, units] layout's.

    Args:
      ws: one SIREN, e.g. widths 2 -> 32 -> 32 -> c.
      coords: [..., n_0] coordinates (in [-1, 1]^2 for images).
      w0: frequency factor (30 in the SIREN/NFN data sets).
    Returns:
      [..., n_L] predicted values.
    """
    return _dense_apply(ws, coords, lambda z: sin(w0 * z), "siren_apply", "coords",
                        features_major=True)
