"""Transformer-NFN: the zoo transformer's weight space and forward pass, its symmetry group, the equivariant
and invariant Transformer-NFN layers and the accuracy-prediction model (math: docs/transformer_nfn.md)."""
from transformer_nfn import groups, nets
from transformer_nfn.equivariant import TransformerEquivariant, equivariant_apply, relu_ffn
from transformer_nfn.flax_model import ZooTransformer, from_flax_params, to_flax_params
from transformer_nfn.invariant import TransformerInvariant, invariant_apply
from transformer_nfn.model import AccuracyPredictor
from transformer_nfn.weights import BlockWeights, TransformerSpec, TransformerWeights

__all__ = [
    "AccuracyPredictor", "BlockWeights", "TransformerEquivariant", "TransformerInvariant", "TransformerSpec",
    "TransformerWeights", "ZooTransformer", "equivariant_apply", "from_flax_params", "groups", "invariant_apply",
    "nets", "relu_ffn", "to_flax_params",
]
