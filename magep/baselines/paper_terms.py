"""The term sets of Zhou et al.'s own NPLinear and HNPLinear (docs/magep.md §8), as `common.sharing` plans.

Their layers are built from sub-maps (pointwise, row broadcast, column broadcast, global broadcast), each a
convolution or dense map with its own bias. Relative to the complete equivariant spaces (`linear_plan`,
``terms="complete"``) this gives:

- NP: the complete space plus one constant per broadcast pattern of the output (4 on a weight with both axes
  permuted, 2 on a bias), where the complete space has one.
- HNP: the same per-pattern constants (2 on W^(1), W^(L), b^(l < L); 1 on b^(L)); redundant inputs that
  are means of tensors the layer also reads whole: the means of W^(1) over its input neurons (``"W1_in"``),
  of W^(L) over its output neurons (``"W{L}_out"``) and of b^(L) (``"b{L}_out"``), pooled into every output,
  "W1_in" also into W^(2) and "W{L}_out" into W^(L-1) and b^(L-1), identified on the shared hidden neuron;
  and no W^(L) <- b^(L-1) term on the shared hidden neuron (their last-layer map does not read b^(L-1)).

The redundant terms do not enlarge the space of maps; they change the parameter count and the training
dynamics, which is why the baselines at the authors' size use them.
"""
from __future__ import annotations

import dataclasses

from common import NetworkSpec, SharingPlan
from common.sharing import Term


def io_mean_slots(spec: NetworkSpec) -> dict[str, tuple]:
    """Slot name -> axes of the three redundant HNP inputs ("W1_in", "W{L}_out", "b{L}_out")."""
    L, n = spec.num_layers, spec.widths
    return {"W1_in": ((1, n[1], 1),), f"W{L}_out": ((L - 1, n[L - 1], -1),), f"b{L}_out": ()}


def io_means(weights: tuple, biases: tuple, layout: str = "channels_last") -> dict:
    """The inputs of `io_mean_slots` from feature tensors in ``layout``: ``{"W1_in": [..., n_1, C_1],
    "W{L}_out": [..., n_{L-1}, C_L], "b{L}_out": [..., C'_L]}`` (channels leading: [C_1, ..., n_1], ...)."""
    end = 0 if layout == "channels_leading" else 1  # channel axes after the index axes
    return {"W1_in": weights[0].mean(axis=-1 - end), f"W{len(weights)}_out": weights[-1].mean(axis=-2 - end),
            f"b{len(biases)}_out": biases[-1].mean(axis=-1 - end)}


def io_mean_channels(channels: dict[str, int], num_layers: int) -> dict[str, int]:
    """Channels of the `io_mean_slots` (those of the tensors they average), added to a slot -> channels dict."""
    L = num_layers
    return {**channels, "W1_in": channels["W1"], f"W{L}_out": channels[f"W{L}"], f"b{L}_out": channels[f"b{L}"]}


def paper_plan(complete: SharingPlan, spec: NetworkSpec, group: str) -> SharingPlan:
    """Zhou et al.'s term set from the complete plan of `group` ("np" or "hnp"; for "hnp" the plan must
    read the `io_mean_slots` too).

    Args:
      complete: ``SharingPlan.build`` over the weight-space slots (+ `io_mean_slots` for "hnp"), rule "full".
      spec: the network spec.
      group: "np" or "hnp".
    Returns:
      the plan with the module docstring's terms; extra constants are named ``"out<-const|labels"``.
    """
    L = spec.num_layers
    derived = set(io_mean_slots(spec)) if group == "hnp" else set()
    identified_ok = {("W2", "W1_in"), (f"W{L - 1}", f"W{L}_out"), (f"b{L - 1}", f"W{L}_out")}
    dropped = {f"W{L}<-b{L - 1}|{L - 1}"} if group == "hnp" else set()
    terms = [t for t in complete.terms if t.key not in dropped
             and not (t.inp in derived and t.identified and (t.out, t.inp) not in identified_ok)]
    constants = []
    for out, _ in complete.out_slots:
        patterns = sorted({t.identified for t in terms if t.out == out and t.inp is not None and t.identified})
        constants += [Term(out, None, alias=f"{out}<-const|{','.join(map(str, p))}") for p in patterns]
    return dataclasses.replace(complete, terms=tuple(terms) + tuple(constants))
