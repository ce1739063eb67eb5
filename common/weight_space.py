"""Weight spaces of MLPs and CNNs as pytrees, and their static network structure.

A `WeightSpace` holds the parameters of one network (or a batch of networks: any leading
axes) in PyTorch orientation (out, in):

    raw dense   weights[i]: [..., n_{i+1}, n_i]            biases[i]: [..., n_{i+1}]
    raw conv    weights[i]: [..., n_{i+1}, n_i, kh, kw]    biases[i]: [..., n_{i+1}]
    features    weights[i]: [..., n_{i+1}, n_i, C_i]       biases[i]: [..., n_{i+1}, C'_i]

Features (``is_features=True``, a static flag) carry a trailing channel axis; `to_features`
folds conv kernel positions into it (position (u, v) -> channel u * kw + v).
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import numpy as np


def _shape(x) -> tuple[int, ...] | None:
    return tuple(x.shape) if hasattr(x, "shape") else None


@dataclasses.dataclass(frozen=True)
class NetworkSpec:
    """Static structure of an MLP/CNN: widths ``n_0..n_L`` and a kernel shape per layer.

    ``kernel_shapes[i]`` is ``()`` for a dense layer and ``(kh, kw)`` for a conv layer.
    Hashable, so it can be a static argument or static pytree metadata.
    """

    widths: tuple[int, ...]
    kernel_shapes: tuple[tuple[int, ...], ...]

    def __post_init__(self):
        object.__setattr__(self, "widths", tuple(int(n) for n in self.widths))
        object.__setattr__(self, "kernel_shapes", tuple(tuple(int(k) for k in ks) for ks in self.kernel_shapes))
        if len(self.widths) < 2:
            raise ValueError(f"NetworkSpec: widths must list at least n_0 and n_1, got {self.widths}")
        if len(self.kernel_shapes) != len(self.widths) - 1:
            raise ValueError(
                f"NetworkSpec: {len(self.widths) - 1} layers from widths {self.widths} but "
                f"{len(self.kernel_shapes)} kernel shapes {self.kernel_shapes}"
            )
        if min(self.widths) < 1 or any(min(k, default=1) < 1 for k in self.kernel_shapes):
            raise ValueError(f"NetworkSpec: widths and kernel sizes must be >= 1 (an empty layer is not a network); "
                             f"got widths {self.widths}, kernel shapes {self.kernel_shapes}")

    @classmethod
    def mlp(cls, widths: Sequence[int]) -> "NetworkSpec":
        """Spec of a dense MLP with widths ``n_0..n_L``."""
        return cls(tuple(widths), ((),) * (len(widths) - 1))

    @classmethod
    def from_weights(cls, ws: "WeightSpace") -> "NetworkSpec":
        """Spec read off a `WeightSpace` (raw or features; features fold kernels, giving ``()``)."""
        widths = [ws.weights[0].shape[ws.out_axis(0) + 1]]
        kernels = []
        for i, w in enumerate(ws.weights):
            out_axis = ws.out_axis(i)
            widths.append(w.shape[out_axis])
            kernels.append(() if ws.is_features else tuple(w.shape[out_axis + 2:]))
        return cls(tuple(widths), tuple(kernels))

    @property
    def num_layers(self) -> int:
        """L, the number of weight layers."""
        return len(self.kernel_shapes)

    @property
    def feature_channels(self) -> tuple[int, ...]:
        """Channels per layer after `WeightSpace.to_features` (kh*kw for conv, 1 for dense)."""
        return tuple(int(np.prod(k)) if k else 1 for k in self.kernel_shapes)

    @property
    def num_params(self) -> int:
        """Number of scalars in one network's weights and biases."""
        return sum(
            self.widths[i + 1] * self.widths[i] * int(np.prod(k)) + self.widths[i + 1]
            for i, k in enumerate(self.kernel_shapes)
        )


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class WeightSpace:
    """Parameters (or NFN features) of MLPs/CNNs: ``weights`` and ``biases`` tuples, one entry per layer.

    Construction validates shapes whenever the leaves are arrays and raises ValueError naming the
    layer index and the shapes. Leading batch axes are allowed and must agree across leaves.
    """

    weights: tuple
    biases: tuple
    is_features: bool = dataclasses.field(default=False, metadata=dict(static=True))

    def __post_init__(self):
        object.__setattr__(self, "weights", tuple(self.weights))
        object.__setattr__(self, "biases", tuple(self.biases))
        if all(_shape(x) is not None for x in self.weights + self.biases):
            self._validate()

    # -- structure ---------------------------------------------------------------------------
    def out_axis(self, i: int) -> int:
        """Axis index (from the front) of layer ``i``'s output-neuron axis: the number of batch axes (weights:
        ``weights[i]`` is ``[*batch, n_{i+1}, n_i, ...]``; features: the same with a trailing channel axis)."""
        return len(self.biases[i].shape) - (2 if self.is_features else 1)

    @property
    def num_layers(self) -> int:
        return len(self.weights)

    @property
    def batch_shape(self) -> tuple[int, ...]:
        """Leading batch axes shared by every leaf."""
        return tuple(self.biases[0].shape[: self.out_axis(0)])

    def _validate(self) -> None:
        kind = "features" if self.is_features else "weights"
        if len(self.weights) != len(self.biases):
            raise ValueError(
                f"WeightSpace: {len(self.weights)} weights but {len(self.biases)} biases; "
                "they must have one entry per layer"
            )
        if not self.weights:
            raise ValueError("WeightSpace: needs at least one layer, got empty weights and biases")
        min_bias_rank = 2 if self.is_features else 1
        batch = None
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            if len(b.shape) < min_bias_rank:
                raise ValueError(
                    f"WeightSpace: biases[{i}] has shape {tuple(b.shape)}; {kind} biases need rank >= "
                    f"{min_bias_rank} ([..., n_out{', C' if self.is_features else ''}])"
                )
            out_axis = len(b.shape) - min_bias_rank
            extra = len(w.shape) - out_axis - 2
            allowed = (1,) if self.is_features else (0, 2)
            if extra not in allowed:
                expect = (
                    "[..., n_out, n_in, C]" if self.is_features else "[..., n_out, n_in] or [..., n_out, n_in, kh, kw]"
                )
                raise ValueError(
                    f"WeightSpace: weights[{i}] has shape {tuple(w.shape)} and biases[{i}] shape "
                    f"{tuple(b.shape)}: wrong rank, expected weights {expect} with the bias's batch axes"
                )
            if 0 in w.shape[out_axis:] or 0 in b.shape[out_axis:]:
                raise ValueError(
                    f"WeightSpace: weights[{i}] {tuple(w.shape)} and biases[{i}] {tuple(b.shape)} have an empty "
                    "neuron, kernel or channel axis; every layer needs at least one of each (batch axes may be empty)"
                )
            if w.shape[:out_axis] != b.shape[:out_axis]:
                raise ValueError(
                    f"WeightSpace: weights[{i}] {tuple(w.shape)} and biases[{i}] {tuple(b.shape)} "
                    "have different leading batch axes"
                )
            if batch is not None and tuple(b.shape[:out_axis]) != batch:
                raise ValueError(
                    f"WeightSpace: layer {i} has batch axes {tuple(b.shape[:out_axis])} but layer 0 has {batch}"
                )
            batch = tuple(b.shape[:out_axis])
            if w.shape[out_axis] != b.shape[out_axis]:
                raise ValueError(
                    f"WeightSpace: biases[{i}] has length {b.shape[out_axis]} (shape {tuple(b.shape)}) but "
                    f"weights[{i}] {tuple(w.shape)} has {w.shape[out_axis]} output neurons"
                )
            if i > 0:
                prev = self.weights[i - 1]
                if w.shape[out_axis + 1] != prev.shape[out_axis]:
                    raise ValueError(
                        f"WeightSpace: weights[{i}] {tuple(w.shape)} takes {w.shape[out_axis + 1]} inputs but "
                        f"weights[{i - 1}] {tuple(prev.shape)} gives {prev.shape[out_axis]} outputs"
                    )

    # -- conversions -------------------------------------------------------------------------
    def to_features(self) -> "WeightSpace":
        """Raw weights -> features: dense [.., o, i] -> [.., o, i, 1]; conv [.., o, i, kh, kw] -> [.., o, i, kh*kw];
        biases [.., o] -> [.., o, 1]."""
        if self.is_features:
            raise ValueError("WeightSpace.to_features: this WeightSpace already holds features")
        weights = tuple(
            w.reshape(*w.shape[: self.out_axis(i) + 2], -1) for i, w in enumerate(self.weights)
        )
        return WeightSpace(weights, tuple(b[..., None] for b in self.biases), is_features=True)

    @classmethod
    def from_features(cls, feats: "WeightSpace", spec: NetworkSpec) -> "WeightSpace":
        """Features with C_i = kh*kw (1 for dense) and C'_i = 1 -> raw weights of `spec`."""
        if not feats.is_features:
            raise ValueError("WeightSpace.from_features: `feats` holds raw weights, not features")
        if feats.num_layers != spec.num_layers:
            raise ValueError(
                f"WeightSpace.from_features: feats has {feats.num_layers} layers, spec {spec.num_layers}"
            )
        weights, biases = [], []
        for i, (w, b, kernel, c) in enumerate(zip(feats.weights, feats.biases, spec.kernel_shapes, spec.feature_channels)):
            if w.shape[-1] != c or b.shape[-1] != 1:
                raise ValueError(
                    f"WeightSpace.from_features: layer {i} features weights {tuple(w.shape)}, biases "
                    f"{tuple(b.shape)}; need {c} weight channel(s) (kernel {kernel}) and 1 bias channel"
                )
            weights.append(w.reshape(*w.shape[:-1], *kernel))
            biases.append(b[..., 0])
        return cls(tuple(weights), tuple(biases))

    def check_spec(self, spec: NetworkSpec, name: str = "ws") -> None:
        """Raise ValueError naming `name`, the layer and the shapes if this does not fit `spec`."""
        if self.num_layers != spec.num_layers:
            raise ValueError(f"{name}: has {self.num_layers} layers but spec has {spec.num_layers} (widths {spec.widths})")
        for i, w in enumerate(self.weights):
            a = self.out_axis(i)
            got = (w.shape[a], w.shape[a + 1])
            want = (spec.widths[i + 1], spec.widths[i])
            if got != want:
                raise ValueError(
                    f"{name}: weights[{i}] has shape {tuple(w.shape)} with (n_out, n_in) = {got}; "
                    f"spec widths {spec.widths} need {want}"
                )
