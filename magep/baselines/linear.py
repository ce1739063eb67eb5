"""Parameter-shared linear layers on MLP/CNN weight spaces: Monomial-NFN, NP and HNP (one engine,
`common.sharing`, three groups).

- ``MonomialLinear``: hidden neurons permuted and scaled; "positive" keeps the terms valid for every
  diagonal scaling (Monomial-NFN, ReLU nets), "sign" adds the cross terms valid only for d = 1/d
  (E(W)^(L) += V b^(L-1), E(b)^(L-1) += X W^(L); for L = 2 also W^(1) <-> W^(2)).
- ``HNPLinear``: hidden-neuron permutations only, complete orbit sharing (Zhou et al. Tables 8-11, DWSNet).
- ``NPLinear``: all neurons permuted (inputs and outputs too), Zhou et al. Eq. 2 with Table 7 biases.
In-layer channels may differ per tensor (conv kernel positions as channels). HNP and NP also come with the
term set of the authors' own layers (``terms="paper"``, `magep.baselines.paper_terms`).
"""
from __future__ import annotations

import functools

import jax.numpy as jnp
from flax import nnx

from common import NetworkSpec, SharingPlan
from magep.base import TermCoefficients, values
from magep.baselines.paper_terms import io_mean_channels, io_mean_slots, io_means, paper_plan
from magep.slots import from_slots, slot_channels, slot_dict, slot_tensors, weight_space_slots
from magep.validation import check_spec, resolve_channels

GROUPS = {  # name -> (permuted layers as a function of L, sharing rule)
    "monomial_positive": (lambda L: range(1, L), "positive"),
    "monomial_sign": (lambda L: range(1, L), "sign"),
    "hnp": (lambda L: range(1, L), "full"),
    "np": (lambda L: range(0, L + 1), "full"),
}
TERM_SETS = ("complete", "paper")


def _reads_io_means(group: str, terms: str) -> bool:
    return terms == "paper" and group == "hnp"


@functools.lru_cache(maxsize=None)
def linear_plan(spec: NetworkSpec, group: str, terms: str = "complete") -> SharingPlan:
    """The W/b -> W/b terms (and constants) of `group` (a key of GROUPS).

    terms: "complete" (every admissible term once: the whole equivariant space) or "paper" (Zhou et al.'s
    own layers, "hnp" and "np" only: same space, their redundant terms; `magep.baselines.paper_terms`).
    """
    if terms not in TERM_SETS:
        raise ValueError(f"linear_plan: terms must be one of {TERM_SETS}, got {terms!r}")
    if terms == "paper" and group not in ("hnp", "np"):
        raise ValueError(f"linear_plan: terms='paper' exists for groups 'hnp' and 'np' only, got {group!r}")
    permuted, rule = GROUPS[group]
    slots = weight_space_slots(spec)
    inputs = {**slots, **io_mean_slots(spec)} if _reads_io_means(group, terms) else slots
    plan = SharingPlan.build(slots, inputs, permuted(spec.num_layers), rule)
    return plan if terms == "complete" else paper_plan(plan, spec, group)


def sharing_linear(coeffs: dict, feats, spec: NetworkSpec, group: str, terms: str = "complete",
                   layout: str = "channels_last"):
    """Equivariant linear map of `group` on features.

    Args:
      coeffs: term name -> coefficient (`linear_plan(spec, group, terms).init`), or their packed form
        (`common.SharingPlan.pack`: one array per contraction, what `SharingLinear` holds).
      feats: features of `spec`, weights [..., n_l, n_{l-1}, C_l], biases [..., n_l, C'_l]; with
        ``layout="channels_leading"`` a (weights, biases) pair of [C_l, ..., n_l, n_{l-1}] and [C'_l, ..., n_l]
        (every contraction then a plain matrix product with no transpose, `SharingPlan.apply`).
      terms: "complete" or "paper" (`linear_plan`).
      layout: "channels_last" or "channels_leading", of the inputs and the outputs.
    Returns:
      features of `spec` with the layer's output channels, in ``layout`` (a WeightSpace, or a (weights, biases)
      pair channels leading).
    """
    weights, biases = (feats.weights, feats.biases) if layout == "channels_last" else feats
    inputs = slot_dict(weights, biases)
    if _reads_io_means(group, terms):
        inputs.update(io_means(weights, biases, layout))
    out = linear_plan(spec, group, terms).apply(coeffs, inputs, layout=layout)
    if layout == "channels_leading":
        return slot_tensors(out, spec.num_layers)
    return from_slots(out, spec.num_layers)


class SharingLinear(TermCoefficients, nnx.Module):
    """nnx wrapper of `sharing_linear`; ``in_channels`` / ``out_channels`` as for `PolynomialEquivariant`
    (int, per-layer tuple, or (weight, bias) pairs); ``terms`` as for `linear_plan`."""

    group: str = ""

    def __init__(self, spec: NetworkSpec, in_channels, out_channels, *, rngs: nnx.Rngs, param_dtype=jnp.float32,
                 terms: str = "complete"):
        name = type(self).__name__
        check_spec(spec, name, min_layers=2)
        self.spec, self.terms = spec, terms
        self.in_channels = resolve_channels(in_channels, spec, name, "in_channels")
        self.out_channels = resolve_channels(out_channels, spec, name, "out_channels")
        self.plan = linear_plan(spec, self.group, terms)
        self._register_coefficients(rngs.params(), slot_channels(self.out_channels.weights, self.out_channels.biases),
                                    param_dtype)

    def _input_channels(self) -> dict[str, int]:
        c_in = slot_channels(self.in_channels.weights, self.in_channels.biases)
        return io_mean_channels(c_in, self.spec.num_layers) if _reads_io_means(self.group, self.terms) else c_in

    def __call__(self, feats, layout: str = "channels_last"):
        """features -> features (``layout`` as for `sharing_linear`)."""
        self.check(feats, layout)
        return sharing_linear(values(self.coeffs), feats, self.spec, self.group, self.terms, layout)


class MonomialLinear(SharingLinear):
    """Monomial-NFN linear layer; ``scaling="positive"`` (ReLU nets) or ``"sign"`` (tanh/sin nets)."""

    def __init__(self, spec: NetworkSpec, in_channels, out_channels, *, scaling: str = "positive",
                 rngs: nnx.Rngs, param_dtype=jnp.float32):
        if scaling not in ("positive", "sign"):
            raise ValueError(f"MonomialLinear: scaling must be 'positive' or 'sign', got {scaling!r}")
        self.group = f"monomial_{scaling}"
        super().__init__(spec, in_channels, out_channels, rngs=rngs, param_dtype=param_dtype)


class HNPLinear(SharingLinear):
    """Hidden-neuron-permutation equivariant linear layer (complete parameter sharing; ``terms="paper"``:
    the authors' redundant term set, which omits W^(L) <- b^(L-1))."""

    group = "hnp"


class NPLinear(SharingLinear):
    """Neuron-permutation equivariant linear layer (all layers permuted, including inputs and outputs;
    ``terms="paper"``: one constant per broadcast pattern, as in the authors' layer)."""

    group = "np"
