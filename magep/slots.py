"""Weight-space tensors as labelled slots for `common.sharing` (math layer l = 1..L is index l-1).

Slot names: ``"W{l}"`` for W^(l) with axes ``(l, n_l, +1), (l-1, n_{l-1}, -1)`` and ``"b{l}"`` for b^(l)
with axis ``(l, n_l, +1)``.
"""
from __future__ import annotations

from common import NetworkSpec, WeightSpace


def weight_axes(spec: NetworkSpec, l: int) -> tuple:
    """Axes of W^(l) (or of any tensor transforming like it, e.g. W^(l,l-1) products)."""
    return ((l, spec.widths[l], 1), (l - 1, spec.widths[l - 1], -1))


def bias_axes(spec: NetworkSpec, l: int) -> tuple:
    """Axes of b^(l) (or of any tensor transforming like it)."""
    return ((l, spec.widths[l], 1),)


def weight_space_slots(spec: NetworkSpec) -> dict[str, tuple]:
    """Slot name -> axes for every W^(l) and b^(l)."""
    L = spec.num_layers
    return {**{f"W{l}": weight_axes(spec, l) for l in range(1, L + 1)},
            **{f"b{l}": bias_axes(spec, l) for l in range(1, L + 1)}}


def slot_dict(weights: tuple, biases: tuple) -> dict:
    """Feature tensors -> ``{"W1": weights[0], ..., "b1": biases[0], ...}`` (any layout)."""
    return {**{f"W{l}": w for l, w in enumerate(weights, 1)}, **{f"b{l}": b for l, b in enumerate(biases, 1)}}


def slot_tensors(slots: dict, num_layers: int) -> tuple[tuple, tuple]:
    """Inverse of `slot_dict`: ``{"W1": ..., "b1": ...}`` -> (weights, biases) tuples (any layout)."""
    return (tuple(slots[f"W{l}"] for l in range(1, num_layers + 1)),
            tuple(slots[f"b{l}"] for l in range(1, num_layers + 1)))


def from_slots(slots: dict, num_layers: int) -> WeightSpace:
    """Slots ``{"W1": [..., n_1, n_0, C_1], ..., "b1": [..., n_1, C'_1], ...}`` -> a features WeightSpace."""
    return WeightSpace(*slot_tensors(slots, num_layers), is_features=True)


def slot_channels(weights: tuple[int, ...], biases: tuple[int, ...]) -> dict[str, int]:
    """Per-slot channel counts from per-layer weight and bias channels."""
    return {**{f"W{l}": c for l, c in enumerate(weights, 1)}, **{f"b{l}": c for l, c in enumerate(biases, 1)}}
