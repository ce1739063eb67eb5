"""Shared nnx plumbing of the polynomial layers: channels, channel maps, couplings and coefficients."""
from __future__ import annotations

import jax
from flax import nnx

from common import NetworkSpec, SharingPlan, WeightSpace
from common.sharing import LAYOUTS
from magep.init import init_channel_maps, init_couplings
from magep.preprocess import map_channels, normalize_with_suffix
from magep.terms import leading_tensors
from magep.validation import check_features, check_spec, resolve_channels


class FrozenCoupling(nnx.Variable):
    """A coupling matrix held fixed (``freeze_phi=True``, as in the authors' code): not an ``nnx.Param``."""


def values(d) -> dict:
    """Plain arrays of a (nested) ``nnx.Dict`` of Variables."""
    return {k: values(v) if isinstance(v, nnx.Dict) else v[...] for k, v in d.items()}


def prepare(params: dict, feats, normalize: bool, layout: str) -> tuple[tuple, tuple, list | None]:
    """Channel maps (when present) then optional scale normalisation of features in ``layout`` (a features
    WeightSpace, or for "channels_leading" a (weights, biases) pair: a WeightSpace holds channels last); returns
    (weights, biases, suffix products) channels leading ([c, ..., *index]); the suffix products
    (`preprocess.normalize_with_suffix`) only when normalising, else None."""
    weights, biases = (feats.weights, feats.biases) if isinstance(feats, WeightSpace) else feats
    weights, biases = leading_tensors(weights, layout), leading_tensors(biases, layout)
    if "channel_map" in params:
        weights, biases = map_channels(params["channel_map"], weights, biases, "channels_leading")
    if normalize:
        return normalize_with_suffix(weights, biases)
    return weights, biases, None


class TermCoefficients:
    """Mixin of the layers that hold the coefficients of their `SharingPlan` (``self.plan``) packed per
    contraction (``self.coeffs``, `SharingPlan.pack`: no concatenation forward and no slicing backward); the
    subclass gives ``_input_channels()`` (input slot -> channels), ``spec`` and ``in_channels``."""

    def _register_coefficients(self, key: jax.Array, c_out: dict[str, int], dtype) -> None:
        """``self.coeffs``: the plan's initial coefficients (`SharingPlan.init` drawn with ``key``), packed per
        contraction, one ``nnx.Param`` each (``c_out``: output slot -> channels)."""
        packed = self.plan.pack(self.plan.init(key, self._input_channels(), c_out, dtype))
        self.coeffs = nnx.Dict({k: nnx.Param(v) for k, v in packed.items()})

    def term_coefficients(self) -> dict:
        """The parameters per term: term name -> ``[c_out, c_in, *out_fixed, *in_fixed]`` (constants ``[c_out,
        *out_fixed]``), `SharingPlan.unpack` of the packed ones."""
        return self.plan.unpack(values(self.coeffs), self._input_channels())

    def check(self, feats, layout: str = "channels_last") -> None:
        """`validation.check_features` on ``feats`` given in ``layout`` (channels leading: checked as the
        channels-last shapes they stand for)."""
        if layout not in LAYOUTS:
            raise ValueError(f"{type(self).__name__}: layout must be one of {LAYOUTS}, got {layout!r}")
        if layout == "channels_leading":
            if not (isinstance(feats, tuple) and len(feats) == 2):
                raise ValueError(f"{type(self).__name__}: channels-leading feats must be a (weights, biases) pair, "
                                 f"got {type(feats).__name__}")
            trailing = lambda x: jax.ShapeDtypeStruct(tuple(x.shape[1:]) + tuple(x.shape[:1]), x.dtype)
            feats = WeightSpace(tuple(map(trailing, feats[0])), tuple(map(trailing, feats[1])), is_features=True)
        check_features(feats, self.spec, self.in_channels, type(self).__name__)


class PolynomialLayer(TermCoefficients, nnx.Module):
    """Base of `PolynomialEquivariant` / `PolynomialInvariant`: subclasses give ``pairs_fn(L)`` (coupling pairs)
    and ``plan_fn(spec)`` (SharingPlan over the blocks, carrying each block's channel multiple as its
    ``channel_factors``)."""

    def __init__(self, spec: NetworkSpec, in_channels, out_channels: int, pairs_fn, plan_fn,
                 *, rngs: nnx.Rngs, freeze_phi: bool, normalize: bool, param_dtype):
        name = type(self).__name__
        check_spec(spec, name, min_layers=2)
        if not isinstance(out_channels, int) or out_channels < 1:
            raise ValueError(f"{name}: out_channels must be a positive int, got {out_channels!r}")
        self.spec, self.normalize = spec, normalize
        self.in_channels = resolve_channels(in_channels, spec, name, "in_channels")
        distinct = set(self.in_channels.weights + self.in_channels.biases)
        if len(distinct) == 1:  # one channel count: products run on the input channels directly
            c = distinct.pop()
            self.channel_map = None
        else:  # conv kernels folded into channels: map every layer to c = out_channels first
            c = out_channels
            self.channel_map = nnx.Dict({k: nnx.Param(v) for k, v in init_channel_maps(
                rngs.params(), self.in_channels.weights, self.in_channels.biases, c, param_dtype).items()})
        var = FrozenCoupling if freeze_phi else nnx.Param
        couplings = init_couplings(rngs.params(), pairs_fn(spec.num_layers), c, spec.widths[0], spec.widths[-1], param_dtype)
        self.couplings = nnx.Dict({g: nnx.Dict({k: var(v) for k, v in m.items()}) for g, m in couplings.items()})
        self.plan: SharingPlan = plan_fn(spec)
        self.product_channels = c
        self._register_coefficients(rngs.params(), {o: out_channels for o, _ in self.plan.out_slots}, param_dtype)

    def _input_channels(self) -> dict[str, int]:
        return self.plan.input_channels(self.product_channels)

    def params_tree(self) -> dict:
        """The pure-function parameters: ``{"coeffs", "couplings"[, "channel_map"]}`` as plain arrays."""
        tree = {"coeffs": values(self.coeffs), "couplings": values(self.couplings)}
        if self.channel_map is not None:
            tree["channel_map"] = values(self.channel_map)
        return tree
