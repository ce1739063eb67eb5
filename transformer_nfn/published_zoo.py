"""The authors' published Small Transformer Zoo: checkpoint naming to `TransformerWeights` and back, and the
zoo's metadata CSV (docs/transformer_nfn.md §7).

A checkpoint is the state dict of the authors' model (PyTorch orientation [out, in]); read a ``.pt`` file with
torch and make its tensors numpy arrays (``{k: v.numpy() for k, v in torch.load(f).items()}``). Keys, with
h heads, D, Dk = Dv = D / h, DA and i = 0 .. B-1:

    embedding.conv1.weight [D, C, p, p], embedding.conv1.bias [D]   (MNIST zoo only: patch embedding)
    embedding.pos_embedding [T, D]                                  (fixed sinusoidal encoding; checked, not kept)
    encoder.i.attention.{queries,keys,values}.weight [h Dk, D]      (no biases)
    encoder.i.attention.out_projection.weight [D, h Dv]
    encoder.i.fc1.weight [DA, D], encoder.i.fc1.bias [DA], encoder.i.fc2.weight [D, DA], encoder.i.fc2.bias [D]
    classifier.fc1.weight [D, D], classifier.fc1.bias [D], classifier.fc2.weight [n_classes, D], .bias

The AG-News checkpoints hold no ``embedding.*`` keys: their frozen token table is the zoo's shared
``embedding.pt`` (pass its ``embedding.embedding.weight`` [V, D] as ``token_embedding`` to
`transformer_nfn.nets.classifier_apply`). Head i of q is rows i Dk .. (i+1) Dk - 1 of ``queries.weight``,
transposed (k, v alike); o[i] is column block i of ``out_projection.weight``, transposed.
"""
from __future__ import annotations

import csv
import re
from collections.abc import Mapping

import numpy as np

from common.weight_space import WeightSpace
from transformer_nfn.nets import sinusoidal_positions
from transformer_nfn.weights import BlockWeights, TransformerWeights

_BLOCK_KEYS = {"q": "attention.queries.weight", "k": "attention.keys.weight", "v": "attention.values.weight",
               "o": "attention.out_projection.weight", "w_a": "fc1.weight", "b_a": "fc1.bias",
               "w_b": "fc2.weight", "b_b": "fc2.bias"}
_PARTS = {"embedding": ("embedding.conv1",), "classifier": ("classifier.fc1", "classifier.fc2")}
_POSITIONS = "embedding.pos_embedding"


def _block_count(state: Mapping) -> int:
    indices = {int(m.group(1)) for key in state if (m := re.match(r"encoder\.(\d+)\.", key))}
    if not indices or indices != set(range(len(indices))):
        raise ValueError(f"state_dict: expected blocks encoder.0 .. encoder.B-1, found block indices {sorted(indices)}")
    return len(indices)


def _heads(w: np.ndarray, num_heads: int, key: str) -> np.ndarray:
    """[h d, D] (h heads stacked on the rows) -> [h, d, D]."""
    if w.ndim != 2 or w.shape[0] % num_heads:
        raise ValueError(f"state_dict: {key} has shape {w.shape}; expected the {num_heads} heads' rows (or, for "
                         f"out_projection, columns) stacked, a multiple of num_heads = {num_heads}")
    return w.reshape(num_heads, w.shape[0] // num_heads, w.shape[1])


def from_zoo_state_dict(state_dict: Mapping[str, object], num_heads: int = 2) -> TransformerWeights:
    """One zoo checkpoint (the authors' state-dict naming, module docstring) as `TransformerWeights`.

    Args:
      state_dict: {key: array}; every key must be one of the module docstring's.
      num_heads: h (2 in the published zoo; the checkpoint's shapes do not record it).
    Returns:
      TransformerWeights with B blocks, q/k/v [h, D, Dk], o [h, Dv, D], w_a [D, DA], w_b [DA, D]; embedding
      ([D, C, p, p],) or None; classifier (fc1 [D, D], fc2 [n_classes, D]).
    """
    state = {key: np.asarray(value) for key, value in state_dict.items()}
    n_blocks = _block_count(state)
    expected = {f"encoder.{i}.{k}" for i in range(n_blocks) for k in _BLOCK_KEYS.values()}
    expected |= {f"{p}.{s}" for prefixes in _PARTS.values() for p in prefixes for s in ("weight", "bias")}
    unknown = sorted(set(state) - expected - {_POSITIONS})
    has_embedding = any(key.startswith("embedding.conv1.") for key in state)
    missing = sorted(k for k in expected - set(state) if has_embedding or not k.startswith("embedding."))
    if unknown or missing:
        raise ValueError(f"state_dict: not the Small Transformer Zoo naming; unexpected keys {unknown}, missing keys {missing}")
    blocks = []
    for i in range(n_blocks):
        key = lambda field: f"encoder.{i}.{_BLOCK_KEYS[field]}"
        rows = {f: _heads(state[key(f)], num_heads, key(f)).transpose(0, 2, 1) for f in ("q", "k", "v")}
        blocks.append(BlockWeights(**rows, o=_heads(state[key("o")].T, num_heads, key("o")),
                                   w_a=state[key("w_a")].T, b_a=state[key("b_a")],
                                   w_b=state[key("w_b")].T, b_b=state[key("b_b")]))
    parts = {name: WeightSpace(tuple(state[f"{p}.weight"] for p in prefixes), tuple(state[f"{p}.bias"] for p in prefixes))
             for name, prefixes in _PARTS.items() if f"{prefixes[0]}.weight" in state}
    if _POSITIONS in state:
        _check_positions(state[_POSITIONS])
    return TransformerWeights(tuple(blocks), parts.get("embedding"), parts.get("classifier"))


def _check_positions(pe: np.ndarray) -> None:
    """The stored positional encoding must be the fixed sinusoidal one that `nets.embed` adds."""
    want = np.asarray(sinusoidal_positions(*pe.shape)) if pe.ndim == 2 else None
    if want is None or not np.allclose(pe, want, atol=1e-5):
        raise ValueError(f"state_dict: {_POSITIONS} (shape {pe.shape}) is not the fixed sinusoidal encoding "
                         "[T, D] that transformer_nfn.nets adds; a learned encoding has no place in TransformerWeights")


def to_zoo_state_dict(tw: TransformerWeights) -> dict[str, np.ndarray]:
    """One network's `TransformerWeights` in the authors' state-dict naming (inverse of `from_zoo_state_dict`;
    no ``embedding.pos_embedding``, which is fixed)."""
    if tw.is_features or tw.batch_shape:
        raise ValueError(f"tw: expected one network's raw weights, got is_features={tw.is_features}, "
                         f"batch axes {tw.batch_shape}")
    state = {}
    for part, prefixes in _PARTS.items():
        ws = getattr(tw, part)
        for p, w, b in zip(prefixes, ws.weights, ws.biases) if ws is not None else ():
            state[f"{p}.weight"], state[f"{p}.bias"] = np.asarray(w), np.asarray(b)
    stack = lambda a: np.asarray(a).transpose(0, 2, 1).reshape(-1, a.shape[1])  # [h, D, d] -> [h d, D]
    for i, b in enumerate(tw.blocks):
        fields = dict(q=stack(b.q), k=stack(b.k), v=stack(b.v), o=np.asarray(b.o).reshape(-1, b.o.shape[-1]).T,
                      w_a=np.asarray(b.w_a).T, b_a=np.asarray(b.b_a), w_b=np.asarray(b.w_b).T, b_b=np.asarray(b.b_b))
        state.update({f"encoder.{i}.{_BLOCK_KEYS[f]}": value for f, value in fields.items()})
    return state


def read_zoo_metadata(path) -> list[dict]:
    """Rows of the zoo's ``metadata/{mnist,ag_news}.csv`` (one per checkpoint: the run's config, ckpt_epoch,
    ckpt_file and its test accuracy).

    Numbers become int or float; ``ckpt_epoch`` stays a string ("75", "best", "best1"); empty cells are None.
    Each row also gets ``test_accuracy`` (a fraction), taken from ``test_accuracy`` (AG-News) or
    ``test_top1_accuracy`` (MNIST).

    Raises:
      ValueError: a row without ckpt_file, ckpt_epoch or a test-accuracy column.
    """
    with open(path, newline="", encoding="utf-8") as f:
        rows = [{key: value if key in ("ckpt_epoch", "ckpt_file") else _number(value) for key, value in row.items()}
                for row in csv.DictReader(f)]
    for n, row in enumerate(rows):
        accuracy = row.get("test_accuracy", row.get("test_top1_accuracy"))
        if accuracy is None or not row.get("ckpt_file") or not row.get("ckpt_epoch"):
            raise ValueError(f"{path}: row {n + 1} lacks ckpt_file, ckpt_epoch or test_accuracy / test_top1_accuracy")
        row["test_accuracy"] = accuracy
    return rows


def _number(text: str | None):
    if text is None or text == "":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text
