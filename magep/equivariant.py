"""MAGEP polynomial equivariant layer (docs/magep.md §4): pure function and nnx Module."""
from __future__ import annotations

import functools

import jax.numpy as jnp
from flax import nnx

from common import NetworkSpec, SharingPlan
from magep.base import PolynomialLayer, prepare
from magep.slots import bias_axes, from_slots, slot_tensors, weight_axes, weight_space_slots
from magep.terms import channels_trailing, coupling_pairs, equivariant_blocks


@functools.lru_cache(maxsize=None)
def equivariant_plan(spec: NetworkSpec) -> SharingPlan:
    """Terms of §4 over the blocks of `terms.equivariant_blocks` ("positive" rule: valid for every scaling).

    Layer 1 reads P1 = [W, [WW], [bW]]^(1,0) and b^(1); hidden W^(l) reads P_l; hidden b^(l) reads
    M_l = [W^(l,0), [WW]^(l,0), [bW]^(l,0)] and [S^(l), b^(l)]; W^(L) reads P_L; b^(L) reads M_L, [S^(L), b^(L)],
    the traces and a constant. Channels per block, as multiples of the product channel count c: b1 holds the
    bias (c); P and M blocks stack a tensor, its products and its bias products (3c); S and T blocks two (2c).
    """
    L, n0 = spec.num_layers, spec.widths[0]
    blocks, factors = {"b1": bias_axes(spec, 1)}, {"b1": 1}
    for l in range(1, L + 1):
        blocks[f"P{l}"], factors[f"P{l}"] = weight_axes(spec, l), 3
    for l in range(2, L + 1):
        blocks[f"M{l}"], factors[f"M{l}"] = ((l, spec.widths[l], 1), (0, n0, -1)), 3
        blocks[f"S{l}"], factors[f"S{l}"] = bias_axes(spec, l), 2
    blocks["T"], factors["T"] = (("s", L - 1, 0),), 2
    sources = {"W1": ("P1", "b1"), "b1": ("P1", "b1")}
    for l in range(2, L + 1):
        sources[f"W{l}"] = (f"P{l}",)
        sources[f"b{l}"] = (f"M{l}", f"S{l}") + (("T",) if l == L else ())
    return SharingPlan.build(weight_space_slots(spec), blocks, range(1, L), "positive", sources,
                             channel_factors=factors)


def polynomial_equivariant(params: dict, feats, spec: NetworkSpec, *, normalize: bool = False,
                           layout: str = "channels_last"):
    """MAGEP equivariant layer.

    Args:
      params: ``{"coeffs": {term: array} (or packed per contraction, `SharingPlan.pack`), "couplings": {"Phi": {pair: [c, n_0, n_L]}, "phi": {pair: [c, n_L]}}``
        plus ``"channel_map"`` ({"W{l}": [C_l, c], "b{l}": [C'_l, c]}) when input channels differ per layer.
      feats: features of `spec`, weights [..., n_l, n_{l-1}, C_l], biases [..., n_l, C'_l]; with
        ``layout="channels_leading"`` a (weights, biases) pair of [C_l, ..., n_l, n_{l-1}] and [C'_l, ..., n_l]
        (the layout every product and contraction runs in: layers passing it on move no data between them).
      spec: network spec (L >= 2).
      normalize: divide by the group-invariant scale of `preprocess.normalize_scale` first.
      layout: "channels_last" or "channels_leading", of the inputs and the outputs.
    Returns:
      features of `spec` with ``out_channels`` channels on every weight and bias, in ``layout`` (a WeightSpace,
      or a (weights, biases) pair channels leading).
    """
    weights, biases, suffix = prepare(params, feats, normalize, layout)
    blocks = equivariant_blocks(weights, biases, params["couplings"], layout="channels_leading", suffix=suffix)
    out = equivariant_plan(spec).apply(params["coeffs"], blocks, layout="channels_leading")
    if layout == "channels_leading":
        return slot_tensors(out, spec.num_layers)
    return from_slots({k: channels_trailing(v) for k, v in out.items()}, spec.num_layers)


class PolynomialEquivariant(PolynomialLayer):
    """Monomial-group equivariant polynomial layer features -> features (any leading batch axes).

    Args:
      spec: network spec, L >= 2.
      in_channels: int, tuple of per-layer weight channels (biases: divided by the kernel size of `spec`),
        or tuple of (weight, bias) channel pairs; differing counts get learned channel maps to out_channels.
      out_channels: channels of every output weight and bias.
      rngs: nnx.Rngs (``params`` stream).
      freeze_phi: hold the coupling matrices fixed (authors' code) instead of learning them.
      normalize: scale-normalise inputs (`preprocess.normalize_scale`), keeps equivariance.
    """

    def __init__(self, spec: NetworkSpec, in_channels, out_channels: int, *, rngs: nnx.Rngs,
                 freeze_phi: bool = False, normalize: bool = False, param_dtype=jnp.float32):
        super().__init__(spec, in_channels, out_channels, coupling_pairs,
                         equivariant_plan, rngs=rngs, freeze_phi=freeze_phi, normalize=normalize,
                         param_dtype=param_dtype)

    def __call__(self, feats, layout: str = "channels_last"):
        self.check(feats, layout)
        return polynomial_equivariant(self.params_tree(), feats, self.spec, normalize=self.normalize, layout=layout)
