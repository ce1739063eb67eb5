"""A `WeightSpace` from another framework's parameters, and back (docs/common.md §9).

Three namings, one network per call (stack networks afterwards, e.g. ``jax.tree.map(np.stack, *spaces)``):

    PyTorch      flat {"<layer>.weight", "<layer>.bias"}: dense [out, in], conv [out, in, kh, kw]
                 (the `WeightSpace` orientation itself: no transpose)
    Flax         nested {<layer>: {"kernel", "bias"}} (linen ``variables["params"]``, or an ``nnx.State`` /
                 ``nnx.to_pure_dict`` of it): dense kernel [in, out], conv kernel [kh, kw, in, out]
    safetensors  a file of named arrays in either naming (Flax paths joined with "."), read and written
                 through the ``safetensors`` package's numpy API (no torch needed)

Layer order is the natural sort of the layer names ("2" < "10", "Conv_1" < "Dense_0", "layers.2" < "layers.10"),
unless ``layer_names`` lists it. A layer without a bias gets a zero bias. The networks `common.nets` runs are
the Small CNN Zoo kind (conv layers, global average pool, dense layers) and plain MLPs: a model with other
parameters (normalisation layers, embeddings) is refused with a ValueError naming the keys.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np

from common.weight_space import WeightSpace

LAYOUTS = ("torch", "flax")
_PARAM_NAMES = {"torch": ("weight", "bias"), "flax": ("kernel", "bias")}


def natural_key(name: str) -> tuple:
    """Sort key that orders digit runs by value: "layers.2" < "layers.10"."""
    return tuple(int(part) if i % 2 else part for i, part in enumerate(re.split(r"(\d+)", name)))


def _flatten(tree: Mapping, prefix: str = "") -> dict[str, object]:
    """Nested mapping -> {"a.b.c": leaf}; int keys (nnx lists) become their digits."""
    flat = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, path + "."))
        else:
            flat[path] = value
    return flat


def _unflatten(flat: Mapping[str, np.ndarray]) -> dict:
    """{"a.0.b": leaf} -> {"a": {0: {"b": leaf}}}: digit parts become int keys, as in ``nnx.to_pure_dict``."""
    tree: dict = {}
    for path, leaf in flat.items():
        node = tree
        *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = leaf
    return tree


def _layers(flat: Mapping[str, object], layout: str, layer_names: Sequence[str] | None) -> list[tuple[str, np.ndarray, np.ndarray | None]]:
    """(name, weight or kernel, bias or None) per layer, in order; ValueError on keys of another kind."""
    weight_key, bias_key = _PARAM_NAMES[layout]
    params: dict[str, dict[str, np.ndarray]] = {}
    unknown = []
    for path, value in flat.items():
        layer, _, param = path.rpartition(".")
        if param in (weight_key, bias_key) and layer:
            params.setdefault(layer, {})[param] = np.asarray(value)
        else:
            unknown.append(path)
    if unknown:
        raise ValueError(f"params: keys {unknown} are not '<layer>.{weight_key}' or '<layer>.{bias_key}'; only dense and "
                         "conv layers map to a WeightSpace (drop other entries, e.g. normalisation statistics, first)")
    orphans = sorted(name for name, p in params.items() if weight_key not in p)
    if orphans:
        raise ValueError(f"params: layers {orphans} have a {bias_key} but no {weight_key}")
    if not params:
        raise ValueError("params: no layers found (an empty mapping)")
    if layer_names is None:
        order = sorted(params, key=natural_key)
    else:
        order = list(layer_names)
        if sorted(order) != sorted(params):
            raise ValueError(f"layer_names {order} must list each layer of the params once; the params have "
                             f"layers {sorted(params, key=natural_key)}")
    return [(name, params[name][weight_key], params[name].get(bias_key)) for name in order]


def _weight_space(layers, to_torch_orientation) -> WeightSpace:
    weights, biases = [], []
    for name, w, b in layers:
        if w.ndim not in (2, 4):
            raise ValueError(f"params: layer {name!r} has a weight of shape {w.shape}; expected a dense (2-d) or "
                             "conv (4-d) layer")
        w = to_torch_orientation(w)
        weights.append(w)
        biases.append(np.zeros(w.shape[0], w.dtype) if b is None else b)
    try:
        return WeightSpace(tuple(weights), tuple(biases))
    except ValueError as err:
        raise ValueError(f"{err} (layers taken in the order {[name for name, _, _ in layers]}; pass layer_names= "
                         "if the network's order differs)") from err


def from_torch(state_dict: Mapping[str, object], layer_names: Sequence[str] | None = None) -> WeightSpace:
    """A network from a PyTorch-style state dict (``model.state_dict()`` with tensors made numpy arrays).

    Args:
      state_dict: {"<layer>.weight": [out, in] or [out, in, kh, kw], "<layer>.bias": [out]}, e.g. the keys
        "0.weight", "0.bias", "2.weight", ... of an ``nn.Sequential``.
      layer_names: the layers in network order (default: natural sort of the names).
    Returns:
      WeightSpace, weights[i] [n_{i+1}, n_i(, kh, kw)], biases[i] [n_{i+1}] (numpy, dtypes kept).
    """
    return _weight_space(_layers(state_dict, "torch", layer_names), lambda w: w)


def from_flax(params: Mapping, layer_names: Sequence[str] | None = None) -> WeightSpace:
    """A network from Flax parameters: linen ``variables`` or ``variables["params"]``, an ``nnx.State``, or the
    nested dict of ``nnx.to_pure_dict``.

    Args:
      params: {<layer>: {"kernel": [in, out] or [kh, kw, in, out], "bias": [out]}}, nested to any depth
        (layer names are the joined paths, e.g. "Dense_0" or "layers.0").
      layer_names: the layers in network order (default: natural sort of the names).
    Returns:
      WeightSpace in PyTorch orientation (dense kernels transposed, conv kernels HWIO -> OIHW).
    """
    if hasattr(params, "to_pure_dict"):  # an nnx.State
        from flax import nnx

        params = nnx.to_pure_dict(params)
    if not isinstance(params, Mapping):
        raise ValueError(f"params must be a mapping (Flax parameter tree), got {type(params).__name__}")
    if set(params) == {"params"}:
        params = params["params"]
    to_oihw = lambda w: w.T if w.ndim == 2 else w.transpose(3, 2, 0, 1)
    return _weight_space(_layers(_flatten(params), "flax", layer_names), to_oihw)


def _names(ws: WeightSpace, layer_names: Sequence[str] | None, default: list[str]) -> list[str]:
    if ws.is_features:
        raise ValueError("ws holds NFN features; export raw weights (WeightSpace.from_features)")
    names = default if layer_names is None else list(layer_names)
    if len(names) != ws.num_layers or len(set(names)) != len(names):
        raise ValueError(f"layer_names {names} must give {ws.num_layers} distinct names, one per layer")
    return names


def to_torch(ws: WeightSpace, layer_names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """The state dict of one network: {"<name>.weight": [out, in(, kh, kw)], "<name>.bias": [out]}.

    Args:
      layer_names: one name per layer (default "0", "1", ...; an ``nn.Sequential`` with activations between
        its layers names them "0", "2", ...).
    """
    names = _names(ws, layer_names, [str(i) for i in range(ws.num_layers)])
    state = {}
    for name, w, b in zip(names, ws.weights, ws.biases):
        state[f"{name}.weight"], state[f"{name}.bias"] = np.asarray(w), np.asarray(b)
    return state


def to_flax(ws: WeightSpace, layer_names: Sequence[str] | None = None) -> dict:
    """Flax parameters of one network: {<name>: {"kernel": [in, out] or [kh, kw, in, out], "bias": [out]}}.

    Args:
      layer_names: one name per layer, paths joined with "." ("layers.0" nests as {"layers": {0: ...}}, the
        form ``nnx.replace_by_pure_dict`` takes); default linen's "Conv_0", ..., "Dense_0", ... (use
        ``{"params": to_flax(ws)}`` as linen variables).
    """
    kinds = ["Conv" if w.ndim == 4 else "Dense" for w in ws.weights]
    default = [f"{kind}_{kinds[:i].count(kind)}" for i, kind in enumerate(kinds)]
    names = _names(ws, layer_names, default)
    flat = {}
    for name, w, b in zip(names, ws.weights, ws.biases):
        w = np.asarray(w)
        flat[f"{name}.kernel"] = w.T if w.ndim == 2 else w.transpose(2, 3, 1, 0)
        flat[f"{name}.bias"] = np.asarray(b)
    return _unflatten(flat)


def _check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")


def load_safetensors(path, layout: str = "torch", layer_names: Sequence[str] | None = None) -> WeightSpace:
    """A network from a safetensors file in PyTorch ("torch") or Flax ("flax", "."-joined paths) naming.

    Needs the ``safetensors`` package (``pip install nfn_tsw[formats]``)."""
    _check_layout(layout)
    from safetensors.numpy import load_file

    flat = load_file(str(path))
    return from_torch(flat, layer_names) if layout == "torch" else from_flax(_unflatten(flat), layer_names)


def save_safetensors(ws: WeightSpace, path, layout: str = "torch", layer_names: Sequence[str] | None = None) -> None:
    """Write one network to a safetensors file in PyTorch or Flax naming (see `to_torch`, `to_flax`)."""
    _check_layout(layout)
    from safetensors.numpy import save_file

    flat = to_torch(ws, layer_names) if layout == "torch" else _flatten(to_flax(ws, layer_names))
    save_file({k: np.ascontiguousarray(v) for k, v in flat.items()}, str(path))
