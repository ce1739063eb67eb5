"""MAGEP-NFN: monomial-group equivariant polynomial layers (O(L) evaluation), baselines and models.

The math: docs/magep.md. Public API: `PolynomialEquivariant`, `PolynomialInvariant` (nnx) and
their pure functions, the models, and `magep.baselines`.
"""
from magep import baselines, editing
from magep.base import FrozenCoupling
from magep.equivariant import PolynomialEquivariant, equivariant_plan, polynomial_equivariant
from magep.invariant import PolynomialInvariant, invariant_plan, polynomial_invariant
from magep.mlp import MLP
from magep.models import (FourierFeatures, GeneralizationPredictor, INRClassifier, INREditor, MagepBody,
                          check_activation)
from magep.preprocess import normalize_scale
from magep.terms import coupling_pairs, equivariant_blocks, invariant_blocks, invariant_pairs

__all__ = [
    "FourierFeatures", "FrozenCoupling", "GeneralizationPredictor", "INRClassifier", "INREditor", "MLP", "MagepBody",
    "PolynomialEquivariant", "PolynomialInvariant", "baselines", "check_activation", "coupling_pairs", "editing",
    "equivariant_blocks", "equivariant_plan", "invariant_blocks", "invariant_pairs", "invariant_plan",
    "normalize_scale", "polynomial_equivariant", "polynomial_invariant",
]
