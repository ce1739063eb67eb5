"""The authors' initialisation of the Transformer-NFN coefficients, ``init="authors"`` (docs/transformer_nfn.md §3).

The authors' code draws every coefficient normal with a xavier standard deviation shared by a *group* of the
terms feeding one output,

    std = (2 / (sum of fan_in + sum of fan_out over the group)) ** (degree / 2)

so a "degree 2" group (the QK / VO product terms and the FFN-to-FFN terms) gets the square of the xavier std.
A term's fans are read off the input tensor it is applied to: fan_in is the channel count c_in times the
input axes the authors mark as "in", fan_out the product of the other input axes (a batch axis counts 1);
QK and VO enter per head, [h, D, D], so their terms count h. Constant (bias) terms have fan_in 0 and fan_out
c_out times their fixed output axes, and are drawn like the rest (non-zero). `FANS` lists every term's
fans, `GROUPS` the groups in the authors' order. Three quirks of the authors' code are kept on purpose:
phi12 counts DA where b_b has D entries; th6's input shape is written [batch, 1, 1], so its fans are (1, 1);
omg4 is listed twice in the last b_b group (its fans count twice), and omg5, listed in two b_b groups, keeps
the std of the later one (the earlier group's fans still count it).

With ``ffn_scaling=True`` the layers keep a subset of these terms (each with the std it has in the paper's
layer) and add terms the authors do not have; those take the std of their output's QK/VO product group
(omg_ab, omg_ab2, omg_voab that of omg1; th8, th9, th10 that of th1): a library choice.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from common import SharingPlan
from common.draws import normal_arrays
from transformer_nfn.weights import TransformerSpec

INITS = ("default", "authors")

GROUPS = {  # layer -> ((degree, terms), ...) in the authors' order
    "equivariant": (
        (1, ("phi_q",)), (1, ("phi_k",)), (1, ("phi_v",)), (1, ("phi_o1", "phi_o2")),
        (1, ("phi11", "phi12", "beta")), (2, ("phi1", "phi2", "phi3")),
        (2, ("phi10", "phi8", "phi9", "phi4", "phi5", "phi6", "phi7")),
        (1, ("psi8", "psi9", "gamma")), (2, ("psi1", "psi2")), (2, ("psi5", "psi6", "psi3", "psi4", "psi7")),
        (1, ("lam8", "lam9", "lam10")), (2, ("lam1", "lam2")), (2, ("lam5", "lam7", "lam3", "lam4", "lam6")),
        (1, ("omg5", "omg6", "omg7")), (2, ("omg1", "omg2")), (2, ("omg4", "omg5", "omg4", "omg3")),
    ),
    "invariant": ((1, ("th5", "th6", "th7")), (2, ("th1", "th2")), (2, ("th3", "th4"))),
}
SAME_STD_AS = {"omg_ab": "omg1", "omg_ab2": "omg1", "omg_voab": "omg1", "th8": "th1", "th9": "th1", "th10": "th1"}


def fans(spec: TransformerSpec, c_in: int, c_out: int) -> dict[str, tuple[int, int]]:
    """``{term: (fan_in, fan_out)}`` of every term of the paper's equivariant and invariant layers, as the
    authors count them (module docstring); c_in = d, c_out = e."""
    h, D, dk, dv, da, d, e = spec.num_heads, spec.d_model, spec.d_k, spec.d_v, spec.d_ffn, c_in, c_out
    qk = (d * h * D * D, 1)  # a QK or VO term summing over everything
    return {
        # attention: the in axes are the channel and the GL axis (o: the channel and its D axis)
        "phi_q": (d * dk, h * D), "phi_k": (d * dk, h * D), "phi_v": (d * dv, h * D),
        "phi_o1": (d * D, h * dv), "phi_o2": (d, h * dv * D),
        # A' [O, A]
        "phi1": qk, "phi2": qk, "phi3": (d * h * D, D), "phi4": (d * D * da, 1), "phi5": (d * da, D),
        "phi6": (d * D, da), "phi7": (d, D * da), "phi8": (d * da * D, 1), "phi9": (d * D, da), "phi10": (d * da, 1),
        "phi11": (d, da), "phi12": (d * da, 1), "beta": (0, e),
        # a' [A]
        "psi1": qk, "psi2": qk, "psi3": (d * D * da, 1), "psi4": (d * D, da), "psi5": (d * da * D, 1),
        "psi6": (d * D, da), "psi7": (d * da, 1), "psi8": (d, da), "psi9": (d * D, 1), "gamma": (0, e),
        # B' [A, D]
        "lam1": qk, "lam2": qk, "lam3": (d * D * da, 1), "lam4": (d * D, da), "lam5": (d * da * D, 1),
        "lam6": (d * D, da), "lam7": (d * da, 1), "lam8": (d, da), "lam9": (d * D, 1), "lam10": (0, e * D),
        # b' [D]
        "omg1": qk, "omg2": qk, "omg3": (d * D * da, 1), "omg4": (d * da * D, 1), "omg5": (d * da, 1),
        "omg6": (d * D, 1), "omg7": (0, e * D),
        # invariant I
        "th1": qk, "th2": qk, "th3": (d * D * da, 1), "th4": (d * da * D, 1), "th5": (d * da, 1), "th6": (1, 1),
        "th7": (0, e),
    }


def stds(spec: TransformerSpec, c_in: int, c_out: int, layer: str) -> dict[str, float]:
    """``{term: std}`` of the authors' scheme for `layer` ("equivariant" or "invariant"), the paper's terms
    plus the `ffn_scaling` ones (`SAME_STD_AS`)."""
    if layer not in GROUPS:
        raise ValueError(f"authors_init.stds: layer must be one of {tuple(GROUPS)}, got {layer!r}")
    fan = fans(spec, c_in, c_out)
    out: dict[str, float] = {}
    for degree, group in GROUPS[layer]:
        total = sum(fan[t][0] + fan[t][1] for t in group)
        out |= {t: (2.0 / total) ** (degree / 2) for t in group}  # a term in two groups keeps the later std
    return out | {t: out[ref] for t, ref in SAME_STD_AS.items() if ref in out}


def init(key: jax.Array, plan: SharingPlan, spec: TransformerSpec, c_in: int, c_out: int, layer: str,
         dtype=jnp.float32) -> dict[str, jax.Array]:
    """Coefficients ``{name: [num_blocks, *shape]}`` of `plan` drawn with the authors' stds (every block alike,
    independent draws; constants included).

    Args:
      key: PRNG key.
      plan: `terms.block_plan(spec, ffn_scaling, layer)`.
      spec: the zoo networks' spec (D, h, Dk, Dv, DA enter the fans).
      c_in, c_out: channels of the layer.
      layer: "equivariant" or "invariant".
      dtype: coefficient dtype.
    """
    std = stds(spec, c_in, c_out, layer)
    c_in_slots, c_out_slots = plan.input_channels(c_in), {o: c_out for o, _ in plan.out_slots}
    shapes = [(spec.num_blocks,) + plan.coef_shape(t, c_in_slots, c_out_slots) for t in plan.terms]
    return {t.name: x for t, x in zip(plan.terms, normal_arrays(key, shapes, [std[t.name] for t in plan.terms], dtype))}
