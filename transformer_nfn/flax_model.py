"""The zoo transformer as a Flax nnx Module, and conversion of its parameters to and from `TransformerWeights`.

`ZooTransformer` is built from Flax layers (Conv, Linear, LayerNorm, dot-product attention weights), so it is
an independent implementation of `nets.classifier_apply`; the tests check that the two agree after
conversion. Flax Linear kernels are [in, out] (right-multiplying, like `BlockWeights`); Flax Conv kernels
are [kh, kw, in, out] (the embedding `WeightSpace` is PyTorch OIHW).

Parameter tree (``nnx.to_pure_dict(nnx.state(model, nnx.Param))``)::

    embedding: {kernel [p, p, C, D], bias [D]}            (absent for the text zoo)
    blocks: {i: {queries, keys: {kernel [D, h*Dk]}, values: {kernel [D, h*Dv]}, out: {kernel [h*Dv, D]},
                 ffn_a: {kernel [D, DA], bias [DA]}, ffn_b: {kernel [DA, D], bias [D]}}}
    fc1: {kernel [D, D_hidden], bias}, fc2: {kernel [D_hidden, n_classes], bias}
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn.attention import dot_product_attention_weights

from common.weight_space import WeightSpace
from transformer_nfn import nets
from transformer_nfn.weights import BlockWeights, TransformerSpec, TransformerWeights


def _merge_heads(x: jax.Array) -> jax.Array:
    """[..., h, D, d] -> [..., D, h*d] (head i = columns i*d..(i+1)*d-1)."""
    x = jnp.moveaxis(x, -3, -2)
    return x.reshape(*x.shape[:-2], -1)


def _split_heads(kernel: jax.Array, h: int) -> jax.Array:
    """[..., D, h*d] -> [..., h, D, d]."""
    return jnp.moveaxis(kernel.reshape(*kernel.shape[:-1], h, -1), -2, -3)


def to_flax_params(tw: TransformerWeights) -> dict:
    """`TransformerWeights` (raw, any leading batch axes) -> the pure parameter dict of `ZooTransformer`."""
    if tw.is_features or tw.classifier is None:
        raise ValueError("to_flax_params: tw must hold raw weights with a classifier (fc1, fc2)")
    params = {
        "blocks": {
            i: {
                "queries": {"kernel": _merge_heads(b.q)},
                "keys": {"kernel": _merge_heads(b.k)},
                "values": {"kernel": _merge_heads(b.v)},
                "out": {"kernel": b.o.reshape(*b.o.shape[:-3], -1, b.o.shape[-1])},
                "ffn_a": {"kernel": b.w_a, "bias": b.b_a},
                "ffn_b": {"kernel": b.w_b, "bias": b.b_b},
            }
            for i, b in enumerate(tw.blocks)
        }
    }
    for name, w, bias in zip(("fc1", "fc2"), tw.classifier.weights, tw.classifier.biases):
        params[name] = {"kernel": jnp.swapaxes(w, -1, -2), "bias": bias}
    if tw.embedding is not None:
        w = tw.embedding.weights[0]
        params["embedding"] = {"kernel": jnp.moveaxis(w, (-4, -3), (-1, -2)), "bias": tw.embedding.biases[0]}
    return params


def from_flax_params(params: dict, num_heads: int) -> TransformerWeights:
    """Pure parameter dict of `ZooTransformer` (any leading batch axes) -> `TransformerWeights`."""
    blocks = []
    for i in sorted(params["blocks"]):
        p = params["blocks"][i]
        out = p["out"]["kernel"]
        blocks.append(
            BlockWeights(
                q=_split_heads(p["queries"]["kernel"], num_heads),
                k=_split_heads(p["keys"]["kernel"], num_heads),
                v=_split_heads(p["values"]["kernel"], num_heads),
                o=out.reshape(*out.shape[:-2], num_heads, -1, out.shape[-1]),
                w_a=p["ffn_a"]["kernel"], b_a=p["ffn_a"]["bias"], w_b=p["ffn_b"]["kernel"], b_b=p["ffn_b"]["bias"],
            )
        )
    classifier = WeightSpace(
        tuple(jnp.swapaxes(params[n]["kernel"], -1, -2) for n in ("fc1", "fc2")),
        tuple(params[n]["bias"] for n in ("fc1", "fc2")),
    )
    embedding = None
    if "embedding" in params:
        e = params["embedding"]
        embedding = WeightSpace((jnp.moveaxis(e["kernel"], (-1, -2), (-4, -3)),), (e["bias"],))
    return TransformerWeights(tuple(blocks), embedding, classifier)


class ZooBlock(nnx.Module):
    """One pre-LN block without residuals, from Flax layers."""

    def __init__(self, spec: TransformerSpec, *, rngs: nnx.Rngs):
        d, h = spec.d_model, spec.num_heads
        self.num_heads = h
        self.queries = nnx.Linear(d, h * spec.d_k, use_bias=False, rngs=rngs)
        self.keys = nnx.Linear(d, h * spec.d_k, use_bias=False, rngs=rngs)
        self.values = nnx.Linear(d, h * spec.d_v, use_bias=False, rngs=rngs)
        self.out = nnx.Linear(h * spec.d_v, d, use_bias=False, rngs=rngs)
        self.ffn_a = nnx.Linear(d, spec.d_ffn, rngs=rngs)
        self.ffn_b = nnx.Linear(spec.d_ffn, d, rngs=rngs)
        self.norm = nnx.LayerNorm(d, epsilon=nets.LN_EPS, use_bias=False, use_scale=False, rngs=rngs)

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        """x: [B, T, D] -> [B, T, D]; mask: optional [B, T] bool."""
        z = self.norm(x)
        split = lambda y: y.reshape(*y.shape[:-1], self.num_heads, -1)  # [B, T, h, d]
        att_mask = None if mask is None else mask[:, None, None, :]
        weights = dot_product_attention_weights(split(self.queries(z)), split(self.keys(z)), mask=att_mask)
        heads = jnp.einsum("bhst,bthd->bshd", weights, split(self.values(z)))
        y = self.out(heads.reshape(*heads.shape[:-2], -1))
        return self.ffn_b(jax.nn.relu(self.ffn_a(self.norm(y))))


class ZooTransformer(nnx.Module):
    """The zoo classifier as an nnx Module (patch embedding if `in_channels`, else token ids + a shared table).

    ``__call__(inputs, token_embedding=None, mask=None)``: images [B, H, W, C] or token ids [B, T] -> logits
    [B, n_classes]. Parameters convert with `to_flax_params` / `from_flax_params` (`weights` / `load_weights`).
    """

    def __init__(
        self,
        spec: TransformerSpec,
        n_classes: int,
        *,
        patch_size: int = 4,
        in_channels: int | None = 1,
        rngs: nnx.Rngs,
    ):
        d = spec.d_model
        self.num_heads = spec.num_heads
        self.embedding = (
            None
            if in_channels is None
            else nnx.Conv(in_channels, d, (patch_size, patch_size), strides=patch_size, padding="VALID", rngs=rngs)
        )
        self.blocks = nnx.List([ZooBlock(spec, rngs=rngs) for _ in range(spec.num_blocks)])
        self.norm = nnx.LayerNorm(d, epsilon=nets.LN_EPS, use_bias=False, use_scale=False, rngs=rngs)
        self.fc1 = nnx.Linear(d, d, rngs=rngs)
        self.fc2 = nnx.Linear(d, n_classes, rngs=rngs)

    def __call__(self, inputs: jax.Array, token_embedding: jax.Array | None = None, mask: jax.Array | None = None):
        if self.embedding is not None:
            x = self.embedding(inputs)
            x = x.reshape(x.shape[0], -1, x.shape[-1])
        else:
            x = jnp.take(token_embedding, inputs, axis=0)
        x = x + nets.sinusoidal_positions(x.shape[-2], x.shape[-1], x.dtype)
        for block in self.blocks:
            x = block(x, mask)
        x = self.norm(x)
        if mask is None:
            pooled = x.mean(-2)
        else:
            m = mask[..., None].astype(x.dtype)
            pooled = (x * m).sum(-2) / jnp.maximum(m.sum(-2), 1.0)
        return self.fc2(jax.nn.relu(self.fc1(pooled)))

    def weights(self) -> TransformerWeights:
        """This module's parameters as `TransformerWeights`."""
        return from_flax_params(nnx.to_pure_dict(nnx.state(self, nnx.Param)), self.num_heads)

    def load_weights(self, tw: TransformerWeights) -> None:
        """Overwrite this module's parameters with `tw` (one network, matching shapes)."""
        state = nnx.state(self, nnx.Param)
        nnx.replace_by_pure_dict(state, to_flax_params(tw))
        nnx.update(self, state)
