"""`AccuracyPredictor`: predict a zoo transformer's test accuracy from its weights (docs/transformer_nfn.md §6).

Branches (authors' README configuration by default; any number of blocks):

1. encoder: TransformerEquivariant layers (ReLU on w_a, b_a, w_b, b_b between them) -> TransformerInvariant
   -> LayerNorm per block -> concat [B * F] -> LN -> Linear(-> m) -> LN -> ReLU -> Linear(m, m) -> LN -> ReLU
   -> Linear(m, m).
2. classifier: "mlp" = flatten fc1, fc2 -> Linear(-> m) -> ReLU -> Linear(m, m) -> ReLU -> Linear(m, m) -> ReLU;
   "hnp" = HNPLinear(1 -> c) -> ReLU -> HNPPool -> Linear(-> m) -> ReLU (from `magep.baselines`, invariant to
   permutations of the classifier's hidden units); None = no classifier branch.
3. embedding (if `embedding_size`): flatten -> Linear(-> m), no activation.
4. head: concat -> Linear(-> 1); `__call__` applies the sigmoid, `logits` does not (use it with a BCE loss).

``encoder_branch=False`` drops branch 1 (the paper's branch ablation: the classifier and/or embedding alone).

Invariant under the transformer group of `transformer_nfn.groups` (and, with ``ffn_scaling=True``, under
FFN hidden-unit scaling too, since every encoder layer then respects it).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from common.weight_space import NetworkSpec, WeightSpace
from transformer_nfn import nets, readout
from transformer_nfn.equivariant import TransformerEquivariant, relu_ffn
from transformer_nfn.invariant import TransformerInvariant
from transformer_nfn.weights import TransformerSpec, TransformerWeights

LN_EPS = nets.LN_EPS  # PyTorch's LayerNorm default, as in the authors' model


def _flatten(ws: WeightSpace, batch: tuple[int, ...]) -> jax.Array:
    """All weights then all biases of `ws`, flattened per network: [*batch, n_params]."""
    return jnp.concatenate([x.reshape(*batch, -1) for x in ws.weights + ws.biases], -1)


def _mlp(sizes: tuple[int, ...], rngs: nnx.Rngs, norm: bool) -> nnx.List:
    """Linear layers sizes[0] -> ... -> sizes[-1], each followed (if `norm`) by LayerNorm."""
    layers = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        layers.append(nnx.Linear(n_in, n_out, rngs=rngs))
        if norm:
            layers.append(nnx.LayerNorm(n_out, epsilon=LN_EPS, rngs=rngs))
    return nnx.List(layers)


class AccuracyPredictor(nnx.Module):
    """Transformer-NFN accuracy predictor.

    Args:
      tw_spec: TransformerSpec of the zoo networks.
      classifier_widths: widths (D, D_hidden, n_classes) of the zoo classifier, or None without it.
      embedding_size: number of scalars in the stored embedding (MNIST: 544), or None (text zoo).
      hidden_channels: output channels of the equivariant layers, in order ((10,) in the authors' README).
      invariant_features: features per block of the invariant layer (10).
      width: width m of the branch MLPs (10).
      classifier_branch: "mlp", "hnp" or None.
      hnp_channels: channels of the HNP layer of the "hnp" branch.
      ffn_scaling: use the layers that also respect FFN hidden-unit scaling.
      init: initialisation of the Transformer-NFN layers' coefficients, "default" or "authors"
        (`TransformerEquivariant`); the branch MLPs keep Flax's default initialisation under both.
      encoder_branch: False drops the encoder branch (for the branch ablation: the classifier and/or embedding
        branches alone); at least one branch must remain.
      rngs: nnx.Rngs with a "params" stream.
    """

    def __init__(
        self,
        tw_spec: TransformerSpec,
        *,
        classifier_widths: tuple[int, ...] | None,
        embedding_size: int | None = None,
        hidden_channels: tuple[int, ...] = (10,),
        invariant_features: int = 10,
        width: int = 10,
        classifier_branch: str | None = "mlp",
        hnp_channels: int = 8,
        ffn_scaling: bool = False,
        init: str = "default",
        encoder_branch: bool = True,
        rngs: nnx.Rngs,
    ):
        if classifier_branch not in ("mlp", "hnp", None):
            raise ValueError(f"AccuracyPredictor: classifier_branch must be 'mlp', 'hnp' or None, got {classifier_branch!r}")
        if classifier_branch is not None and classifier_widths is None:
            raise ValueError(f"AccuracyPredictor: classifier_branch={classifier_branch!r} needs classifier_widths")
        if not (encoder_branch or classifier_branch or embedding_size):
            raise ValueError("AccuracyPredictor: no branch left (encoder_branch=False, classifier_branch=None and "
                             "no embedding_size)")
        self.spec, self.embedding_size, self.encoder_branch = tw_spec, embedding_size, encoder_branch
        if encoder_branch:
            channels = (1,) + tuple(hidden_channels)
            self.equivariant = nnx.List([
                TransformerEquivariant(tw_spec, c_in, c_out, ffn_scaling=ffn_scaling, rngs=rngs, init=init)
                for c_in, c_out in zip(channels[:-1], channels[1:])
            ])
            self.invariant = TransformerInvariant(tw_spec, channels[-1], invariant_features, ffn_scaling=ffn_scaling,
                                                  rngs=rngs, init=init)
            shape = (tw_spec.num_blocks, invariant_features)
            self.block_norm_scale = nnx.Param(jnp.ones(shape))
            self.block_norm_bias = nnx.Param(jnp.zeros(shape))
            concat = tw_spec.num_blocks * invariant_features
            self.encoder_norm = nnx.LayerNorm(concat, epsilon=LN_EPS, rngs=rngs)
            self.encoder_mlp = _mlp((concat, width, width), rngs, norm=True)
            self.encoder_out = nnx.Linear(width, width, rngs=rngs)
        self.classifier_branch = classifier_branch
        self.classifier_spec = None if classifier_widths is None else NetworkSpec.mlp(classifier_widths)
        head_in = width if encoder_branch else 0
        if classifier_branch == "mlp":
            n = NetworkSpec.mlp(classifier_widths).num_params
            self.classifier_mlp = _mlp((n, width, width, width), rngs, norm=False)
            head_in += width
        elif classifier_branch == "hnp":
            from magep.baselines import HNPLinear, HNPPool  # imported only when this optional branch is used

            spec = NetworkSpec.mlp(classifier_widths)
            self.classifier_hnp = HNPLinear(spec, 1, hnp_channels, rngs=rngs)
            self.classifier_pool = HNPPool(spec, hnp_channels)
            self.classifier_mlp = _mlp((self.classifier_pool.out_features, width), rngs, norm=False)
            head_in += width
        if embedding_size is not None:
            self.embedding_linear = nnx.Linear(embedding_size, width, rngs=rngs)
            head_in += width
        self.head = nnx.Linear(head_in, 1, rngs=rngs)

    def _check(self, tw: TransformerWeights) -> None:
        if not isinstance(tw, TransformerWeights) or tw.is_features:
            raise ValueError(f"AccuracyPredictor: tw must be raw TransformerWeights, got {type(tw).__name__}")
        self.spec.check(tw, "AccuracyPredictor")
        if self.classifier_branch is not None:
            if tw.classifier is None:
                raise ValueError("AccuracyPredictor: tw.classifier is None but the model has a classifier branch")
            tw.classifier.check_spec(self.classifier_spec, "AccuracyPredictor: tw.classifier")
        if self.embedding_size is not None:
            n_nets = math.prod(tw.batch_shape)
            got = None if tw.embedding is None else sum(x.size for x in tw.embedding.weights + tw.embedding.biases) // n_nets
            if got != self.embedding_size:
                raise ValueError(f"AccuracyPredictor: tw.embedding has {got} parameters per network but embedding_size "
                                 f"is {self.embedding_size}")

    def _reads_out(self, layer: TransformerEquivariant) -> bool:
        """Whether `encode` evaluates the last equivariant layer with the invariant layer (`readout`): the paper's
        variant, where that moves fewer bytes."""
        return not layer.ffn_scaling and readout.cheaper(layer.in_channels, self.invariant.in_channels)

    def encode(self, tw: TransformerWeights) -> jax.Array:
        """Encoder branch: [*batch] networks -> [*batch, width]."""
        feats = TransformerWeights(tw.to_features().blocks)
        layers = list(self.equivariant)
        last = layers.pop() if layers and self._reads_out(layers[-1]) else None
        for layer in layers:
            feats = relu_ffn(layer(feats))
        if last is None:
            y = self.invariant(feats)  # [..., B, F]
        else:  # the last equivariant layer and the invariant layer as one map: same values, fewer bytes
            y = readout.readout_apply(last.coefficients(), self.invariant.coefficients(), feats)
        y = nets.layer_norm(y) * self.block_norm_scale[...] + self.block_norm_bias[...]
        y = self.encoder_norm(y.reshape(*y.shape[:-2], -1))
        for i in range(0, len(self.encoder_mlp), 2):
            y = jax.nn.relu(self.encoder_mlp[i + 1](self.encoder_mlp[i](y)))
        return self.encoder_out(y)

    def logits(self, tw: TransformerWeights) -> jax.Array:
        """Pre-sigmoid score. tw: raw weights with leading batch axes [*batch] -> [*batch]."""
        self._check(tw)
        batch = tw.batch_shape
        parts = [self.encode(tw)] if self.encoder_branch else []
        if self.classifier_branch == "mlp":
            y = _flatten(tw.classifier, batch)
        elif self.classifier_branch == "hnp":
            y = self.classifier_pool(jax.tree.map(jax.nn.relu, self.classifier_hnp(tw.classifier.to_features())))
        if self.classifier_branch is not None:
            for layer in self.classifier_mlp:
                y = jax.nn.relu(layer(y))
            parts.append(y)
        if self.embedding_size is not None:
            parts.append(self.embedding_linear(_flatten(tw.embedding, batch)))
        return self.head(jnp.concatenate(parts, -1))[..., 0]

    def __call__(self, tw: TransformerWeights) -> jax.Array:
        """Predicted accuracy in (0, 1): sigmoid(logits(tw)), shape [*batch]."""
        return jax.nn.sigmoid(self.logits(tw))
