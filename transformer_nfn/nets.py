"""The zoo transformer's pure forward pass and initialisation (docs/transformer_nfn.md §1, §7).

One block (pre-LN, no residual connections, LayerNorm without affine parameters):

    Z = LN(X);  Y = sum_i softmax(Z q_i (Z k_i)^T / sqrt(Dk)) Z v_i o_i;  out = ReLU(LN(Y) w_a + b_a) w_b + b_b

Classifier: tokens = embed(inputs) + sinusoidal PE -> blocks -> LN -> mean over tokens -> fc1 -> ReLU -> fc2.
Every function takes ONE network (unbatched `TransformerWeights`) and any leading batch axes on the inputs;
vmap over a batch of networks (``jax.vmap(classifier_apply, in_axes=(0, None))``). Differentiable in the
weights, so the zoo generator can train with ``jax.grad`` of a loss built on `classifier_apply`.
"""
from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from common import nets as common_nets
from common.weight_space import WeightSpace
from transformer_nfn.weights import BlockWeights, TransformerSpec, TransformerWeights

LN_EPS = 1e-5


def layer_norm(x: jax.Array, eps: float = LN_EPS) -> jax.Array:
    """Non-affine LayerNorm over the last axis: (x - mean) / sqrt(var + eps), biased variance. [..., D] -> [..., D]."""
    mean = x.mean(-1, keepdims=True)
    var = jnp.square(x - mean).mean(-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps)


def sinusoidal_positions(num_tokens: int, d_model: int, dtype=jnp.float32) -> jax.Array:
    """Fixed positional encoding [T, D]: PE[t, 2i] = sin(t / 10000^(2i/D)), PE[t, 2i+1] = cos(same)."""
    t = jnp.arange(num_tokens, dtype=jnp.float32)[:, None]
    freq = jnp.exp(-jnp.log(10000.0) * jnp.arange(0, d_model, 2, dtype=jnp.float32) / d_model)
    pe = jnp.zeros((num_tokens, d_model), jnp.float32)
    pe = pe.at[:, 0::2].set(jnp.sin(t * freq)).at[:, 1::2].set(jnp.cos(t * freq[: d_model // 2]))
    return pe.astype(dtype)


def _check_one_network(tw: TransformerWeights, fn: str) -> None:
    if not isinstance(tw, TransformerWeights):
        raise ValueError(f"{fn}: tw must be TransformerWeights, got {type(tw).__name__}")
    if tw.is_features:
        raise ValueError(f"{fn}: tw holds NFN features; pass raw weights")
    if tw.batch_shape:
        raise ValueError(
            f"{fn}: tw has batch axes {tw.batch_shape} (blocks[0] q {tuple(tw.blocks[0].q.shape)}); it takes one "
            "network: use jax.vmap over a batch of networks"
        )


def _check_tokens(x: jax.Array, d_model: int, fn: str, mask: jax.Array | None) -> None:
    if x.ndim < 2 or x.shape[-1] != d_model:
        raise ValueError(f"{fn}: x has shape {tuple(x.shape)}; expected tokens [..., T, D] with D = {d_model}")
    if mask is not None and tuple(mask.shape) != tuple(x.shape[:-1]):
        raise ValueError(f"{fn}: mask has shape {tuple(mask.shape)}; expected x's [..., T] = {tuple(x.shape[:-1])}")


@jax.custom_vjp
def softmax(x: jax.Array) -> jax.Array:
    """``jax.nn.softmax`` over the last axis, with its gradient written out: dx = y (g - sum(g y)) from the saved
    output y. Differentiating ``jax.nn.softmax`` itself went through exp / sum (both saved, a division by the
    squared sum): one zoo model's training gradient took 28.8 ms against 15.8 ms with this, in one quiet run of
    ``benchmarks.tnfn_zoo_throughput`` (docs/transformer_nfn.md §7).
    [..., n] -> [..., n]."""
    return jax.nn.softmax(x, axis=-1)


def _softmax_forward(x):
    y = jax.nn.softmax(x, axis=-1)
    return y, y


def _softmax_backward(y, g):
    return (y * (g - jnp.sum(g * y, axis=-1, keepdims=True)),)


softmax.defvjp(_softmax_forward, _softmax_backward)


def attention(block: BlockWeights, z: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Multi-head attention without biases, summed over heads. z: [..., T, D] -> [..., T, D].

    mask: optional [..., T] bool, False for padding tokens (they are not attended to).
    The 1 / sqrt(Dk) scale multiplies the query weights [h, D, Dk], not the logits [..., h, T, T].
    """
    q = jnp.einsum("...td,hdk->...htk", z, block.q * (1.0 / math.sqrt(block.q.shape[-1])))
    k = jnp.einsum("...td,hdk->...htk", z, block.k)
    v = jnp.einsum("...td,hdk->...htk", z, block.v)
    logits = jnp.einsum("...hsk,...htk->...hst", q, k)
    if mask is not None:
        logits = jnp.where(mask[..., None, None, :], logits, jnp.finfo(logits.dtype).min)
    heads = jnp.einsum("...hst,...htk->...hsk", softmax(logits), v)
    return jnp.einsum("...hsk,hkd->...sd", heads, block.o)


def block_apply(block: BlockWeights, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """One pre-LN encoder block without residuals. x: [..., T, D] -> [..., T, D]."""
    y = attention(block, layer_norm(x), mask)
    return jax.nn.relu(layer_norm(y) @ block.w_a + block.b_a) @ block.w_b + block.b_b


@jax.jit
def encoder_apply(tw: TransformerWeights, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """The stack of blocks followed by the final LayerNorm (no embedding, positions, pooling or classifier).

    Args:
      tw: one network's raw weights (embedding and classifier are ignored).
      x: embedded tokens [..., T, D] (embedding and positional encoding already added).
      mask: optional [..., T] bool, False for padding tokens (the zoo itself uses no mask).
    Returns:
      final-LN token features [..., T, D].
    """
    _check_one_network(tw, "encoder_apply")
    _check_tokens(x, tw.blocks[0].b_b.shape[-1], "encoder_apply", mask)
    for block in tw.blocks:
        x = block_apply(block, x, mask)
    return layer_norm(x)


def patch_embed(embedding: WeightSpace, images: jax.Array) -> jax.Array:
    """Conv2d with kernel = stride = p (VALID) as tokens in row-major order.

    Args:
      embedding: WeightSpace with weights ([D, C, p, p],) and biases ([D],) (PyTorch OIHW).
      images: [..., H, W, C] channels last; rows/columns beyond a multiple of p are dropped, as in the conv.
    Returns:
      tokens [..., (H // p) * (W // p), D].
    """
    w, b = embedding.weights[0], embedding.biases[0]
    p, c = w.shape[-1], w.shape[1]
    if images.ndim < 3 or images.shape[-1] != c or images.shape[-3] < p or images.shape[-2] < p:
        raise ValueError(
            f"patch_embed: images have shape {tuple(images.shape)}; expected [..., H, W, C] with C = {c} and "
            f"H, W >= p = {p} (embedding.weights[0] {tuple(w.shape)})"
        )
    gh, gw = images.shape[-3] // p, images.shape[-2] // p
    x = images[..., : gh * p, : gw * p, :].reshape(*images.shape[:-3], gh, p, gw, p, c)
    tokens = jnp.einsum("...iujvc,dcuv->...ijd", x, w) + b
    return tokens.reshape(*tokens.shape[:-3], gh * gw, w.shape[0])


def embed(tw: TransformerWeights, inputs: jax.Array, token_embedding: jax.Array | None = None) -> jax.Array:
    """Input tokens plus sinusoidal positions.

    Args:
      tw: one network; images use ``tw.embedding`` (patch embedding).
      inputs: images [..., H, W, C] when ``tw.embedding`` is set, else integer token ids [..., T].
      token_embedding: frozen shared table [V, D] for token ids (AG-News zoo: not part of the checkpoints).
    Returns:
      [..., T, D].
    """
    if tw.embedding is not None:
        if token_embedding is not None:
            raise ValueError("embed: tw.embedding (patch embedding) and token_embedding are both given; pass one")
        x = patch_embed(tw.embedding, inputs)
    elif token_embedding is not None:
        if token_embedding.ndim != 2 or not jnp.issubdtype(inputs.dtype, jnp.integer):
            raise ValueError(
                f"embed: token_embedding has shape {tuple(token_embedding.shape)} and inputs dtype {inputs.dtype}; "
                "expected a table [V, D] and integer token ids [..., T]"
            )
        x = jnp.take(token_embedding, inputs, axis=0)
    else:
        raise ValueError("embed: tw.embedding is None and no token_embedding was given; one is needed")
    return x + sinusoidal_positions(x.shape[-2], x.shape[-1], x.dtype)


@functools.partial(jax.jit, static_argnames=("dropout_uniform",))
def classifier_apply(
    tw: TransformerWeights,
    inputs: jax.Array,
    token_embedding: jax.Array | None = None,
    mask: jax.Array | None = None,
    *,
    dropout: float | jax.Array = 0.0,
    dropout_key: jax.Array | None = None,
    dropout_uniform: Callable[[jax.Array, tuple[int, ...]], jax.Array] = common_nets.hash_uniform,
) -> jax.Array:
    """Logits of the zoo classifier: embed + PE -> blocks -> LN -> mean over tokens -> fc1 -> ReLU -> fc2.

    Args:
      tw: one network's raw weights with a classifier (fc1 [D_hidden, D], fc2 [n_classes, D_hidden]).
      inputs: images [..., H, W, C] (patch embedding) or token ids [..., T] with `token_embedding` [V, D].
      mask: optional [..., T] bool for token inputs; masks attention keys and the mean pool.
      dropout: rate of inverted dropout on the embedded tokens and on the pooled features, applied only when
        `dropout_key` is given (training).
      dropout_key: PRNG key for dropout (None: no dropout).
      dropout_uniform: ``uniform(key, shape)`` of the masks (default `common.nets.hash_uniform`, a dozen integer
        operations per entry; `jax.random.uniform` is the Threefry draw, about 10% of a zoo training step).
    Returns:
      logits [..., n_classes].
    """
    _check_one_network(tw, "classifier_apply")
    if tw.classifier is None:
        raise ValueError("classifier_apply: tw.classifier is None; the classifier needs fc1 and fc2")
    x = embed(tw, inputs, token_embedding)
    if dropout_key is not None:
        x = common_nets.inverted_dropout(x, dropout, jax.random.fold_in(dropout_key, 0), dropout_uniform)
    h = encoder_apply(tw, x, mask)
    if mask is None:
        pooled = h.mean(-2)
    else:
        m = mask[..., None].astype(h.dtype)
        pooled = (h * m).sum(-2) / jnp.maximum(m.sum(-2), 1.0)
    if dropout_key is not None:
        pooled = common_nets.inverted_dropout(pooled, dropout, jax.random.fold_in(dropout_key, 1), dropout_uniform)
    return common_nets.mlp_apply(tw.classifier, pooled, activation="relu")


@functools.partial(jax.jit, static_argnames=("spec", "n_classes", "patch_size", "in_channels", "truncation", "dtype"))
def init_weights(
    key: jax.Array,
    spec: TransformerSpec,
    n_classes: int,
    *,
    w_init_std: float | jax.Array = 0.1,
    patch_size: int = 4,
    in_channels: int | None = 1,
    truncation: float = 2.0,
    dtype=jnp.float32,
) -> TransformerWeights:
    """Zoo initialisation: every weight truncated normal with std `w_init_std`, every bias zero.

    Truncation is at +-`truncation` in absolute value (PyTorch ``trunc_normal_`` defaults a=-2, b=2).
    `w_init_std` may be a traced scalar (vmap over runs). ``in_channels=None`` means no stored embedding
    (text zoo: frozen shared token table).

    Returns:
      TransformerWeights with spec.num_blocks blocks, embedding [D, in_channels, p, p] (or None) and
      classifier fc1 [D, D], fc2 [n_classes, D].
    """
    d = spec.d_model
    weight_shapes = [s for _ in range(spec.num_blocks) for f, s in spec.field_shapes().items() if f.startswith(("q", "k", "v", "o", "w_"))]
    if in_channels is not None:
        weight_shapes.append((d, in_channels, patch_size, patch_size))
    weight_shapes += [(d, d), (n_classes, d)]
    std = jnp.asarray(w_init_std, dtype)
    sizes = [math.prod(s) for s in weight_shapes]
    flat = jax.random.truncated_normal(key, -truncation / std, truncation / std, (sum(sizes),), dtype) * std
    offsets = itertools.accumulate([0] + sizes)
    weights = iter(flat[o : o + n].reshape(s) for o, n, s in zip(offsets, sizes, weight_shapes))
    blocks = tuple(
        BlockWeights(**{f: next(weights) if f.startswith(("q", "k", "v", "o", "w_")) else jnp.zeros(s, dtype)
                        for f, s in spec.field_shapes().items()})
        for _ in range(spec.num_blocks)
    )
    embedding = None if in_channels is None else WeightSpace((next(weights),), (jnp.zeros((d,), dtype),))
    classifier = WeightSpace((next(weights), next(weights)), (jnp.zeros((d,), dtype), jnp.zeros((n_classes,), dtype)))
    return TransformerWeights(blocks, embedding, classifier)
