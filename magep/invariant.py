"""MAGEP polynomial invariant layer (docs/magep.md §6): pure function and nnx Module."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from common import NetworkSpec, SharingPlan
from magep.base import PolynomialLayer, prepare
from magep.slots import bias_axes
from magep.terms import channels_trailing, invariant_blocks, invariant_pairs


@functools.lru_cache(maxsize=None)
def invariant_plan(spec: NetworkSpec) -> SharingPlan:
    """I_e = H1-3 . M + H4-5 . [S^(L), b^(L)] + H6-7 . traces + h_e (no permuted axis anywhere); M stacks 3c
    channels, S and T 2c."""
    L = spec.num_layers
    blocks = {"M": ((L, spec.widths[L], 1), (0, spec.widths[0], -1)), "S": bias_axes(spec, L), "T": (("s", L - 1, 0),)}
    return SharingPlan.build({"out": ()}, blocks, range(1, L), "positive", channel_factors={"M": 3, "S": 2, "T": 2})


def polynomial_invariant(params: dict, feats, spec: NetworkSpec, *, normalize: bool = False,
                         layout: str = "channels_last") -> jax.Array:
    """MAGEP invariant layer.

    Args:
      params: as `polynomial_equivariant`, with couplings for `terms.invariant_pairs` ((L,0) and (s,s)).
      feats: features of `spec`, in ``layout`` (as `polynomial_equivariant`).
      spec: network spec (L >= 2).
      layout: "channels_last" or "channels_leading" (of the inputs; the output is [..., out_features] in both).
    Returns:
      [..., out_features], invariant under the monomial group (positive and sign scalings).
    """
    weights, biases, suffix = prepare(params, feats, normalize, layout)
    blocks = invariant_blocks(weights, biases, params["couplings"], layout="channels_leading", suffix=suffix)
    return channels_trailing(invariant_plan(spec).apply(params["coeffs"], blocks, layout="channels_leading")["out"])


class PolynomialInvariant(PolynomialLayer):
    """Monomial-group invariant polynomial layer features -> [..., out_features]; arguments as
    `PolynomialEquivariant` (Phi/phi learned by default, as in the authors' code)."""

    def __init__(self, spec: NetworkSpec, in_channels, out_features: int, *, rngs: nnx.Rngs,
                 freeze_phi: bool = False, normalize: bool = False, param_dtype=jnp.float32):
        super().__init__(spec, in_channels, out_features, invariant_pairs,
                         invariant_plan, rngs=rngs, freeze_phi=freeze_phi, normalize=normalize,
                         param_dtype=param_dtype)

    def __call__(self, feats, layout: str = "channels_last") -> jax.Array:
        self.check(feats, layout)
        return polynomial_invariant(self.params_tree(), feats, self.spec, normalize=self.normalize, layout=layout)
