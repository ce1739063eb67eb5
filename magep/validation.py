"""Checks of layer arguments and inputs; every failure is a ValueError naming layer, argument, layer index
and shapes."""
from __future__ import annotations

import dataclasses

import numpy as np

from common import NetworkSpec, WeightSpace


@dataclasses.dataclass(frozen=True)
class Channels:
    """Channel counts per layer: ``weights[i]`` for W^(i+1) features, ``biases[i]`` for b^(i+1)."""

    weights: tuple[int, ...]
    biases: tuple[int, ...]


def check_spec(spec, layer: str, min_layers: int = 1) -> None:
    """`spec` must be a NetworkSpec with at least `min_layers` layers."""
    if not isinstance(spec, NetworkSpec):
        raise ValueError(f"{layer}: spec must be a common.NetworkSpec, got {type(spec).__name__}")
    if spec.num_layers < min_layers:
        raise ValueError(f"{layer}: needs L >= {min_layers} layers, spec has widths {spec.widths} (L = {spec.num_layers})")


def resolve_channels(channels, spec: NetworkSpec, layer: str, arg: str) -> Channels:
    """Normalise a channel argument.

    Args:
      channels: an int c (c on every weight and bias), a tuple of L ints C_l (weights; biases get
        C_l / (kernel size of layer l in `spec`), i.e. conv kernel positions folded into C_l), or a tuple of L
        pairs (C_l, C'_l).
      spec: the network spec.
      layer, arg: names for error messages.
    """
    L = spec.num_layers
    if isinstance(channels, (int, np.integer)) and not isinstance(channels, bool):
        result = Channels((int(channels),) * L, (int(channels),) * L)
    elif isinstance(channels, (tuple, list)) and len(channels) == L:
        if all(isinstance(c, (tuple, list)) and len(c) == 2 for c in channels):
            result = Channels(tuple(int(c[0]) for c in channels), tuple(int(c[1]) for c in channels))
        elif all(isinstance(c, (int, np.integer)) for c in channels):
            kernels = spec.feature_channels
            for i, (c, k) in enumerate(zip(channels, kernels)):
                if c % k:
                    raise ValueError(
                        f"{layer}: {arg}[{i}] = {c} is not a multiple of layer {i}'s kernel size {k} "
                        f"(kernel {spec.kernel_shapes[i]}); pass (weight, bias) channel pairs instead"
                    )
            result = Channels(tuple(int(c) for c in channels), tuple(int(c) // k for c, k in zip(channels, kernels)))
        else:
            raise ValueError(f"{layer}: {arg} must hold {L} ints or {L} (weight, bias) pairs, got {channels!r}")
    else:
        raise ValueError(f"{layer}: {arg} must be an int or a tuple with one entry per layer ({L}), got {channels!r}")
    for i, (cw, cb) in enumerate(zip(result.weights, result.biases)):
        if cw < 1 or cb < 1:
            raise ValueError(f"{layer}: {arg} gives layer {i} weight/bias channels ({cw}, {cb}); need >= 1")
    return result


def check_features(feats, spec: NetworkSpec, channels: Channels, layer: str) -> None:
    """Check that `feats` are features of `spec` with the expected channels and common batch axes."""
    if not isinstance(feats, WeightSpace) or not feats.is_features:
        kind = type(feats).__name__ if not isinstance(feats, WeightSpace) else "raw weights"
        raise ValueError(f"{layer}: feats must be a features WeightSpace (ws.to_features()), got {kind}")
    if feats.num_layers != spec.num_layers or len(feats.biases) != spec.num_layers:
        raise ValueError(
            f"{layer}: feats has {feats.num_layers} weight layers and {len(feats.biases)} bias layers; "
            f"spec widths {spec.widths} have L = {spec.num_layers}"
        )
    batch = None
    for i, (w, b) in enumerate(zip(feats.weights, feats.biases)):
        want_w = (spec.widths[i + 1], spec.widths[i], channels.weights[i])
        want_b = (spec.widths[i + 1], channels.biases[i])
        if w.ndim < 3 or tuple(w.shape[-3:]) != want_w:
            raise ValueError(
                f"{layer}: feats.weights[{i}] has shape {tuple(w.shape)}; expected [..., {want_w[0]}, {want_w[1]}, "
                f"{want_w[2]}] ([..., n_{i + 1}, n_{i}, C]; spec widths {spec.widths}, channels {channels.weights})"
            )
        if b.ndim < 2 or tuple(b.shape[-2:]) != want_b:
            raise ValueError(
                f"{layer}: feats.biases[{i}] has shape {tuple(b.shape)}; expected [..., {want_b[0]}, {want_b[1]}] "
                f"([..., n_{i + 1}, C']; spec widths {spec.widths}, bias channels {channels.biases})"
            )
        for x, what in ((w, "weights"), (b, "biases")):
            lead = tuple(x.shape[: x.ndim - (3 if what == "weights" else 2)])
            if batch is None:
                batch = lead
            elif lead != batch:
                raise ValueError(
                    f"{layer}: feats.{what}[{i}] has shape {tuple(x.shape)} with batch axes {lead}; "
                    f"weights[0] has batch axes {batch}"
                )
