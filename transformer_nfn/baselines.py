"""Baselines of the transformer accuracy-prediction benchmark, built as the authors' code builds them
(docs/transformer_nfn.md §8): an MLP on the flattened weights and STATNN (seven statistics per tensor).

Both have up to three branches, concatenated as [encoder, classifier, embedding] and read by ``Linear(total, 1)``:

    kind="mlp"     encoder  flattened blocks (per block k, q, v, o, w_a, w_b, b_a, b_b) -> 50 -> 50 (ReLU each)
                   classifier  flattened fc1 W, fc1 b, fc2 W, fc2 b -> 50 -> 50 -> 50 (ReLU each)
    kind="statnn"  encoder  7 statistics of every block tensor (q, k, v, o, w_a, w_b, b_a, b_b) -> 256 -> 256
                   classifier  7 statistics of fc1 W, fc1 b, fc2 W, fc2 b -> 256 -> 256
    both           embedding (MNIST zoo only)  the raw patch-embedding weights then biases -> Linear(-> 50 / 64)

Statistics (`tensor_statistics`): mean, unbiased variance, quantiles 0, 0.25, 0.5, 0.75, 1 of the whole tensor.
Parameter counts on the zoo transformer: MLP 933,251 (with the MNIST embedding) / 905,951 (without), STATNN
203,393 / 168,449, as the authors'. The dense layers use Flax's default initialisation (the authors': PyTorch's).
STATNN is invariant to every permutation in the transformer group (a statistic of a whole tensor ignores the order
of its entries) but not to the GL factors; the MLP is invariant to nothing.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from common.weight_space import WeightSpace
from transformer_nfn.weights import TransformerSpec, TransformerWeights

__all__ = ["KINDS", "QUANTILES", "tensor_statistics", "layer_tensors", "BaselinePredictor"]

KINDS = {  # kind -> (block field order, encoder widths, classifier widths, embedding width)
    "mlp": (("k", "q", "v", "o", "w_a", "w_b", "b_a", "b_b"), (50, 50), (50, 50, 50), 50),
    "statnn": (("q", "k", "v", "o", "w_a", "w_b", "b_a", "b_b"), (256, 256), (256, 256), 64),
}
QUANTILES = (0.0, 0.25, 0.5, 0.75, 1.0)


def tensor_statistics(x: jax.Array, batch_ndim: int) -> jax.Array:
    """[*batch, ...] -> [*batch, 7]: mean, unbiased variance and the `QUANTILES` (linear interpolation) of the
    entries after the first ``batch_ndim`` axes."""
    flat = x.reshape(x.shape[:batch_ndim] + (-1,))
    quantiles = jnp.quantile(flat, jnp.asarray(QUANTILES, flat.dtype), axis=-1)  # [5, *batch]
    return jnp.concatenate([flat.mean(-1, keepdims=True), flat.var(-1, ddof=1, keepdims=True),
                            jnp.moveaxis(quantiles, 0, -1)], -1)


def layer_tensors(ws: WeightSpace) -> list[jax.Array]:
    """W^(1), b^(1), W^(2), b^(2), ... of a classifier or embedding `WeightSpace`."""
    return [t for w, b in zip(ws.weights, ws.biases) for t in (w, b)]


def _mlp(sizes: tuple[int, ...], rngs: nnx.Rngs) -> nnx.List:
    return nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])


class BaselinePredictor(nnx.Module):
    """The MLP (``kind="mlp"``) or STATNN (``kind="statnn"``) accuracy predictor on raw `TransformerWeights`.

    Args:
      tw_spec: spec of the zoo transformers' blocks.
      kind: "mlp" or "statnn" (module docstring).
      classifier_widths: (D, D_hidden, n_classes) of the zoo classifier, or None (no classifier branch).
      embedding_size: numbers in the stored patch embedding (MNIST zoo: 544), or None (AG-News: none stored).
      rngs: nnx.Rngs with a "params" stream.
    Call: raw weights with leading batch axes [*batch] -> predicted accuracy in (0, 1) [*batch]; `logits` before
    the sigmoid (for `transformer_nfn.train.train_accuracy_predictor`).
    """

    def __init__(self, tw_spec: TransformerSpec, *, kind: str, classifier_widths: tuple[int, ...] | None,
                 embedding_size: int | None = None, rngs: nnx.Rngs):
        if kind not in KINDS:
            raise ValueError(f"BaselinePredictor: kind must be one of {tuple(KINDS)}, got {kind!r}")
        self.spec, self.kind, self.embedding_size = tw_spec, kind, embedding_size
        self.classifier_widths = None if classifier_widths is None else tuple(classifier_widths)
        self.order, encoder, classifier, embedding = KINDS[kind]
        statnn = kind == "statnn"
        encoder_in = 7 * 8 * tw_spec.num_blocks if statnn else tw_spec.num_blocks * tw_spec.params_per_block
        self.encoder = _mlp((encoder_in,) + encoder, rngs)
        width = encoder[-1]
        if classifier_widths is None:
            self.classifier = None
        else:
            pairs = list(zip(classifier_widths[:-1], classifier_widths[1:]))  # (in, out) of fc1, fc2, ...
            classifier_in = 7 * 2 * len(pairs) if statnn else sum(o * i + o for i, o in pairs)
            self.classifier = _mlp((classifier_in,) + classifier, rngs)
            width += classifier[-1]
        self.embedding = None if embedding_size is None else nnx.Linear(embedding_size, embedding, rngs=rngs)
        width += 0 if embedding_size is None else embedding
        self.head = nnx.Linear(width, 1, rngs=rngs)

    def _features(self, tensors: list[jax.Array], batch_ndim: int) -> jax.Array:
        if self.kind == "statnn":
            return jnp.concatenate([tensor_statistics(t, batch_ndim) for t in tensors], -1)
        return jnp.concatenate([t.reshape(t.shape[:batch_ndim] + (-1,)) for t in tensors], -1)

    def logits(self, tw: TransformerWeights) -> jax.Array:
        """Raw weights [*batch] -> [*batch] pre-sigmoid scores."""
        if not isinstance(tw, TransformerWeights) or tw.is_features:
            raise ValueError(f"BaselinePredictor: tw must be raw TransformerWeights, got {type(tw).__name__}")
        self.spec.check(tw, "BaselinePredictor")
        for name, branch, part in (("classifier", self.classifier, tw.classifier),
                                   ("embedding", self.embedding, tw.embedding)):
            if branch is not None and part is None:
                raise ValueError(f"BaselinePredictor: the model has a {name} branch but tw.{name} is None")
        nb = len(tw.batch_shape)
        blocks = [getattr(b, f) for b in tw.blocks for f in self.order]
        parts = [self._relu_mlp(self.encoder, self._features(blocks, nb))]
        if self.classifier is not None:
            parts.append(self._relu_mlp(self.classifier, self._features(layer_tensors(tw.classifier), nb)))
        if self.embedding is not None:
            emb = tw.embedding
            flat = [t.reshape(t.shape[:nb] + (-1,)) for t in list(emb.weights) + list(emb.biases)]
            parts.append(self.embedding(jnp.concatenate(flat, -1)))
        return self.head(jnp.concatenate(parts, -1))[..., 0]

    @staticmethod
    def _relu_mlp(layers: nnx.List, y: jax.Array) -> jax.Array:
        for layer in layers:
            y = jax.nn.relu(layer(y))
        return y

    def __call__(self, tw: TransformerWeights) -> jax.Array:
        """Predicted accuracy in (0, 1): sigmoid(logits(tw)), shape [*batch]."""
        return jax.nn.sigmoid(self.logits(tw))
