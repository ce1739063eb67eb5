"""Parameter sharing over index patterns: the engine behind every linear term of the NFN layers here.

A *slot* is a tensor whose index axes are labelled: ``(label, size, power)`` per axis, then a trailing
channel axis. A label names a neuron layer (an int; W^(l) has axes ``(l, n_l, +1), (l-1, n_{l-1}, -1)``
and b^(l) ``(l, n_l, +1)``) or any other axis (e.g. ``"s"`` for a stack of traces). ``power`` is the
exponent of that layer's scaling d in the group action (x -> d_j x for rows/biases, x / d_k for columns).
Axes whose label is in ``permuted`` are acted on by a permutation group; the others are fixed.

A linear map slot -> slot commutes with the permutations iff its coefficient depends only on the orbit of
(output index, input index). Every slot here has at most one axis per label, so an orbit is: for every
label on both sides, "indices equal" or not, plus the values of all fixed indices. A `Term` picks the
*identified* labels (input and output index equal); the input's other permuted axes are averaged, the
output's other permuted axes get a broadcast, and the coefficient is a tensor
``[c_out, c_in, *out_fixed_sizes, *in_fixed_sizes]``. Rules (`plan`):

- ``"full"``: every subset of the shared permuted labels (the complete permutation-equivariant space:
  NP with all layers permuted, HNP with hidden layers only; Zhou et al. 2023).
- ``"positive"``: only the term identifying all permuted labels, and only if both sides carry the same
  permuted labels with equal powers (equivariant under every invertible diagonal scaling; Monomial-NFN
  and the MAGEP layers).
- ``"sign"``: as "positive" but powers need only agree mod 2 (d = 1/d for sign flips), which admits the
  sign-only cross terms of Monomial-NFN.

Constant terms (a bias ``[c_out, *out_fixed]``) are allowed under "full" always, under the scaling rules
only for slots with no permuted axis.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import string
from typing import Hashable, Mapping

import jax
import jax.numpy as jnp

from magep.draws import normal_arrays

Axis = tuple[Hashable, int, int]  # (label, size, power)
RULES = ("full", "positive", "sign")


@dataclasses.dataclass(frozen=True)
class Term:
    """One shared coefficient: output slot, input slot (None: constant term), identified labels."""

    out: str
    inp: str | None
    identified: tuple = ()

    @property
    def name(self) -> str:
        if self.inp is None:
            return f"{self.out}<-const"
        return f"{self.out}<-{self.inp}|{','.join(map(str, self.identified))}"


def _admissible(out_axes: tuple[Axis, ...], in_axes: tuple[Axis, ...], permuted: frozenset, rule: str) -> list[tuple]:
    """Identified-label tuples of every admissible term from `in_axes` to `out_axes` under `rule`."""
    p_out = {lab: pw for lab, _, pw in out_axes if lab in permuted}
    p_in = {lab: pw for lab, _, pw in in_axes if lab in permuted}
    if rule == "full":
        shared = [lab for lab, _, _ in out_axes if lab in p_in and lab in p_out]
        return [c for r in range(len(shared) + 1) for c in itertools.combinations(shared, r)]
    if p_out.keys() != p_in.keys():
        return []
    if rule == "positive" and any(p_out[k] != p_in[k] for k in p_out):
        return []
    if rule == "sign" and any((p_out[k] - p_in[k]) % 2 for k in p_out):
        return []
    return [tuple(lab for lab, _, _ in out_axes if lab in p_out)]


@dataclasses.dataclass(frozen=True)
class SharingPlan:
    """Static description of a parameter-shared linear map between named slots (hashable).

    Attributes:
      out_slots, in_slots: ``((name, axes), ...)``.
      permuted: labels acted on by permutations.
      terms: the admissible terms (see module docstring).
    """

    out_slots: tuple
    in_slots: tuple
    permuted: frozenset
    terms: tuple

    @classmethod
    def build(
        cls,
        out_slots: Mapping[str, tuple[Axis, ...]],
        in_slots: Mapping[str, tuple[Axis, ...]],
        permuted,
        rule: str,
        sources: Mapping[str, tuple[str, ...]] | None = None,
    ) -> "SharingPlan":
        """Enumerate the terms.

        Args:
          out_slots, in_slots: name -> axes.
          permuted: labels acted on by permutations.
          rule: "full", "positive" or "sign".
          sources: optional out name -> input names it may read (default: every input).
        Every output also gets its admissible constant term.
        """
        if rule not in RULES:
            raise ValueError(f"SharingPlan: rule must be one of {RULES}, got {rule!r}")
        permuted = frozenset(permuted)
        terms = []
        for o, o_axes in out_slots.items():
            for i in (in_slots if sources is None else sources[o]):
                terms += [Term(o, i, ident) for ident in _admissible(o_axes, in_slots[i], permuted, rule)]
            if rule == "full" or not any(lab in permuted for lab, _, _ in o_axes):
                terms.append(Term(o, None))
        return cls(tuple(out_slots.items()), tuple(in_slots.items()), permuted, tuple(terms))

    def _fixed(self, axes: tuple[Axis, ...]) -> tuple[int, ...]:
        return tuple(size for lab, size, _ in axes if lab not in self.permuted)

    def coef_shape(self, term: Term, c_in: Mapping[str, int], c_out: Mapping[str, int]) -> tuple[int, ...]:
        """``[c_out, c_in, *out_fixed, *in_fixed]`` (``[c_out, *out_fixed]`` for a constant)."""
        out_fixed = self._fixed(dict(self.out_slots)[term.out])
        if term.inp is None:
            return (c_out[term.out],) + out_fixed
        return (c_out[term.out], c_in[term.inp]) + out_fixed + self._fixed(dict(self.in_slots)[term.inp])

    def init(self, key: jax.Array, c_in: Mapping[str, int], c_out: Mapping[str, int], dtype=jnp.float32) -> dict:
        """Xavier-normal coefficients, std = sqrt(2 / (sum fan_in + sum fan_out)) over the terms feeding one
        output slot (fan_in = c_in * fixed input positions, fan_out = c_out * fixed output positions);
        constant terms start at zero.

        Returns:
          dict term name -> coefficient array.
        """
        fans: dict[str, int] = {}
        for t in self.terms:
            if t.inp is not None:
                shape = self.coef_shape(t, c_in, c_out)
                n_out_fixed = len(self._fixed(dict(self.out_slots)[t.out]))
                fan_out = shape[0] * math.prod(shape[2 : 2 + n_out_fixed])
                fan_in = shape[1] * math.prod(shape[2 + n_out_fixed :])
                fans[t.out] = fans.get(t.out, 0) + fan_in + fan_out
        shapes = [self.coef_shape(t, c_in, c_out) for t in self.terms]
        scales = [0.0 if t.inp is None else math.sqrt(2.0 / fans[t.out]) for t in self.terms]
        return {t.name: z for t, z in zip(self.terms, normal_arrays(key, shapes, scales, dtype))}

    def apply(self, coefs: Mapping[str, jax.Array], inputs: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        """Evaluate every output slot.

        Args:
          coefs: term name -> coefficient (see `coef_shape`).
          inputs: input name -> array ``[..., *sizes, c_in]`` (same leading batch axes for all).
        Returns:
          output name -> array ``[..., *sizes, c_out]``.
        """
        in_slots, out = dict(self.in_slots), {}
        first = next(iter(inputs))
        batch = inputs[first].shape[: inputs[first].ndim - len(in_slots[first]) - 1]
        for name, axes in self.out_slots:
            acc = None
            for t in (t for t in self.terms if t.out == name):
                y = self._apply_term(t, coefs[t.name], None if t.inp is None else inputs[t.inp], axes,
                                     None if t.inp is None else in_slots[t.inp])
                acc = y if acc is None else acc + y
            c_out = next(coefs[t.name].shape[0] for t in self.terms if t.out == name)
            out[name] = jnp.broadcast_to(acc, batch + tuple(s for _, s, _ in axes) + (c_out,))
        return out

    def _apply_term(self, t: Term, coef, x, out_axes, in_axes) -> jax.Array:
        """One term; permuted output axes that are not identified are left with size 1 (broadcast later)."""
        letters = iter(string.ascii_lowercase[:24])  # 'y', 'z' are the channel letters
        shared = {lab: next(letters) for lab in t.identified}
        out_fixed = [next(letters) for lab, _, _ in out_axes if lab not in self.permuted]
        out_sub, it = "", iter(out_fixed)
        broadcast = []
        for pos, (lab, _, _) in enumerate(out_axes):
            if lab in shared:
                out_sub += shared[lab]
            elif lab not in self.permuted:
                out_sub += next(it)
            else:
                broadcast.append(pos)
        if x is None:
            y = jnp.moveaxis(coef, 0, -1)  # [*out_fixed, c_out]
        else:
            n_in = len(in_axes)
            pooled = tuple(p - n_in - 1 for p, (lab, _, _) in enumerate(in_axes)
                           if lab in self.permuted and lab not in shared)
            if pooled:
                x = x.mean(axis=pooled)
            in_sub, in_fixed = "", ""
            for lab, _, _ in in_axes:
                if lab in shared:
                    in_sub += shared[lab]
                elif lab not in self.permuted:
                    c = next(letters)
                    in_sub += c
                    in_fixed += c
            y = jnp.einsum(f"...{in_sub}y,zy{''.join(out_fixed)}{in_fixed}->...{out_sub}z", x, coef)
        for pos in reversed(broadcast):
            y = jnp.expand_dims(y, pos - len(out_axes) - 1)
        return y
