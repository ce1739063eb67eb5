"""Parameter sharing over labelled index patterns: the engine behind every linear term of the NFN layers.

Slots, labels, powers
---------------------
A *slot* is a tensor whose index axes are labelled: one ``(label, size, power)`` per axis, then a trailing
channel axis. Labels name the index sets of a weight space: a neuron layer of an MLP (an int; W^(l) has axes
``(l, n_l, +1), (l-1, n_{l-1}, -1)`` and b^(l) ``(l, n_l, +1)``), a transformer's model axis ``"D"``, its
FFN hidden units ``"A"``, heads ``"h"``, ... Axes whose label is in ``permuted`` are acted on by a
permutation group (the same permutation on every slot carrying the label); the others are *fixed*. A label
appears at most once per slot. ``power`` says how the label's other symmetry acts on the slot: the exponent
of a per-index scaling d (x -> d_j x for rows and biases, x / d_k for columns: power +1 / -1), or, for an
axis carrying a matrix group (GL(Dk) on attention keys), any non-zero value that differs between slots that
transform differently. Power 0 means the label is only permuted. For a fixed axis the power is unused.

Terms
-----
A linear map slot -> slot commutes with the permutations iff its coefficient depends only on the orbit of
(output index, input index); with at most one axis per label that orbit is: for every permuted label on both
sides, "indices equal" or not, plus the values of all fixed indices. A `Term` picks the *identified*
permuted labels (input and output index equal); the input's other permuted axes are *pooled* (summed or
averaged, the plan's ``pooling``), the output's other permuted axes get a broadcast, the input's fixed axes
are contracted against a coefficient ``[c_out, c_in, *out_fixed_sizes, *in_fixed_sizes]`` and constant terms
are biases ``[c_out, *out_fixed_sizes]``. A term may also *tie* fixed labels present on both sides (a
diagonal: the input's axis is not contracted but runs with the output's; it then appears once in the
coefficient, among the output's fixed sizes), which gives a sub-family of the dense term (`SharingPlan.build`
``ties``).

Rules (``rule``)
----------------
- ``"full"``: every subset of the shared permuted labels, powers ignored (the complete permutation-
  equivariant space: NP with all layers permuted, HNP with hidden layers only; Zhou et al. 2023).
- ``"positive"``: a permuted label of power 0 is *free* (identified or not, as in "full"); a permuted label
  of non-zero power on either side must be on both sides with equal power and is always identified
  (equivariant under every invertible diagonal scaling, and under any matrix group acting on that axis, since
  the map is the identity along it: Monomial-NFN, MAGEP, the Transformer-NFN layers).
- ``"sign"``: as "positive" with powers taken mod 2 (d = 1/d for sign flips): even powers are free and odd
  ones must agree in parity, which admits the sign-only cross terms of Monomial-NFN.

Constant terms are allowed under "full" always, under the scaling rules only for outputs without a permuted
axis of non-free power.

Packed coefficients
-------------------
`SharingPlan.apply` runs the terms of one output that keep the same axes as one matrix product, against the
concatenation of their coefficients (`SharingPlan.contractions`). The layers hold that concatenation itself
(`SharingPlan.pack`, one parameter per contraction; `SharingPlan.unpack` gives the terms back): with one array
per term, XLA's CPU program concatenated them on every call and sliced the gradient back into one output per
term, each slice a kernel of its own (NP: 285 of them, most of its compile time). `apply` takes either form.

Pooling and initialisation
--------------------------
``pooling="mean"`` (MAGEP, NP, HNP, Monomial-NFN) or ``"sum"`` (Transformer-NFN). ``init_rule`` picks the
initial coefficients (constants start at zero under both):

- ``"xavier"``: normal, std = sqrt(2 / (sum fan_in + sum fan_out)) over the terms feeding one output slot
  (fan_in = c_in * fixed input positions, fan_out = c_out * fixed output positions).
- ``"unit"``: normal, variance = 1 / (c_in * S * n) with S the product of the sizes of every input axis the
  term sums over (pooled permuted axes and contracted fixed axes; `SharingPlan.summed_axes`) and n the number
  of non-constant terms feeding that output, so every output starts at unit scale for unit i.i.d. inputs
  (meant for ``pooling="sum"``).
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import string
from typing import Hashable, Mapping, Sequence

import jax
import jax.numpy as jnp

from common.draws import normal_arrays

Axis = tuple[Hashable, int, int]  # (label, size, power)
RULES = ("full", "positive", "sign")
POOLINGS = ("mean", "sum")
INIT_RULES = ("xavier", "unit")
LAYOUTS = ("channels_last", "channels_leading")


@dataclasses.dataclass(frozen=True)
class Term:
    """One shared coefficient: output slot, input slot (None: constant term), identified permuted labels and
    tied fixed labels (both in output-axis order), and an optional parameter name (`SharingPlan.build`
    ``names``)."""

    out: str
    inp: str | None
    identified: tuple = ()
    tied: tuple = ()
    alias: str | None = None

    @property
    def key(self) -> str:
        """Generic name: ``"out<-const"`` or ``"out<-inp|identified[|tied]"``."""
        if self.inp is None:
            return f"{self.out}<-const"
        key = f"{self.out}<-{self.inp}|{','.join(map(str, self.identified))}"
        return key + (f"|{','.join(map(str, self.tied))}" if self.tied else "")

    @property
    def name(self) -> str:
        """Parameter name: the alias if given, else `key`."""
        return self.key if self.alias is None else self.alias


def _free(power: int, rule: str) -> bool:
    """Whether a permuted label of this power may be pooled or broadcast under `rule`."""
    return rule == "full" or power == 0 or (rule == "sign" and power % 2 == 0)


def _same_power(a: int, b: int, rule: str) -> bool:
    """Whether an input axis of power `b` may be identified with an output axis of power `a` under `rule`."""
    return (a - b) % 2 == 0 if rule == "sign" else a == b


def _admissible(out_axes: tuple[Axis, ...], in_axes: tuple[Axis, ...], permuted: frozenset, rule: str) -> list[tuple]:
    """Identified-label tuples (output-axis order) of every admissible term from `in_axes` to `out_axes`."""
    p_out = {lab: pw for lab, _, pw in out_axes if lab in permuted}
    p_in = {lab: pw for lab, _, pw in in_axes if lab in permuted}
    forced, free = set(), set()
    for lab in p_out.keys() | p_in.keys():
        if _free(p_out.get(lab, 0), rule) and _free(p_in.get(lab, 0), rule):
            if lab in p_out and lab in p_in:
                free.add(lab)
        elif lab not in p_out or lab not in p_in or not _same_power(p_out[lab], p_in[lab], rule):
            return []
        else:
            forced.add(lab)
    order = [lab for lab, _, _ in out_axes if lab in p_out]
    free_order = [lab for lab in order if lab in free]
    return [tuple(lab for lab in order if lab in forced or lab in c)
            for r in range(len(free_order) + 1) for c in itertools.combinations(free_order, r)]


def _constant_admissible(out_axes: tuple[Axis, ...], permuted: frozenset, rule: str) -> bool:
    return all(_free(pw, rule) for lab, _, pw in out_axes if lab in permuted)


@dataclasses.dataclass(frozen=True)
class SharingPlan:
    """Static description of a parameter-shared linear map between named slots (hashable).

    Attributes:
      out_slots, in_slots: ``((name, axes), ...)``.
      permuted: labels acted on by permutations.
      terms: the admissible terms (see module docstring).
      pooling: "mean" or "sum".
      init_rule: "xavier" or "unit".
      channel_factors: ``((input name, k), ...)``: input slot channels are k times a base count
        (`input_channels`); 1 where absent.
    """

    out_slots: tuple
    in_slots: tuple
    permuted: frozenset
    terms: tuple
    pooling: str = "mean"
    init_rule: str = "xavier"
    channel_factors: tuple = ()

    @classmethod
    def build(
        cls,
        out_slots: Mapping[str, tuple[Axis, ...]],
        in_slots: Mapping[str, tuple[Axis, ...]],
        permuted,
        rule: str,
        sources: Mapping[str, tuple[str, ...]] | None = None,
        *,
        ties: Mapping[tuple[str, str], tuple] | None = None,
        names: Mapping[str, str] | None = None,
        pooling: str = "mean",
        init_rule: str = "xavier",
        channel_factors: Mapping[str, int] | None = None,
    ) -> "SharingPlan":
        """Enumerate the terms.

        Args:
          out_slots, in_slots: name -> axes.
          permuted: labels acted on by permutations.
          rule: "full", "positive" or "sign".
          sources: optional out name -> input names it may read (default: every input).
          ties: optional ``{(out name, input name): fixed labels}`` tied on every term of that pair.
          names: optional term `Term.key` -> parameter name; every enumerated term must have one (keys for
            terms that are not enumerated are ignored, so one map can serve several variants).
          pooling: "mean" or "sum" over pooled permuted axes.
          init_rule: "xavier" or "unit" (module docstring).
          channel_factors: optional input name -> channel multiple (`input_channels`).
        Every output also gets its admissible constant term.
        """
        for arg, value, allowed in (("rule", rule, RULES), ("pooling", pooling, POOLINGS), ("init_rule", init_rule, INIT_RULES)):
            if value not in allowed:
                raise ValueError(f"SharingPlan.build: {arg} must be one of {allowed}, got {value!r}")
        permuted = frozenset(permuted)
        for kind, slots in (("out_slots", out_slots), ("in_slots", in_slots)):
            for name, axes in slots.items():
                labels = [lab for lab, _, _ in axes]
                if len(set(labels)) != len(labels):
                    raise ValueError(f"SharingPlan.build: {kind}[{name!r}] repeats a label: {labels}")
        ties = dict(ties or {})
        for (o, i), labels in ties.items():
            fixed = lambda axes: {lab for lab, _, _ in axes if lab not in permuted}
            if o not in out_slots or i not in in_slots or not set(labels) <= fixed(out_slots[o]) & fixed(in_slots[i]):
                raise ValueError(f"SharingPlan.build: ties[{(o, i)!r}] = {labels!r} must name fixed labels of both "
                                 f"output slot {o!r} and input slot {i!r}")
        terms = []
        for o, o_axes in out_slots.items():
            for i in (in_slots if sources is None else sources[o]):
                tied = tuple(lab for lab, _, _ in o_axes if lab in ties.get((o, i), ()))
                terms += [Term(o, i, ident, tied) for ident in _admissible(o_axes, in_slots[i], permuted, rule)]
            if _constant_admissible(o_axes, permuted, rule):
                terms.append(Term(o, None))
        if names is not None:
            missing = [t.key for t in terms if t.key not in names]
            if missing:
                raise ValueError(f"SharingPlan.build: names has no entry for the enumerated terms {missing}")
            terms = [dataclasses.replace(t, alias=names[t.key]) for t in terms]
        return cls(tuple(out_slots.items()), tuple(in_slots.items()), permuted, tuple(terms), pooling, init_rule,
                   tuple((channel_factors or {}).items()))

    def input_channels(self, channels: int) -> dict[str, int]:
        """Input slot name -> channel count, ``channel_factors`` times the base count `channels`."""
        factors = dict(self.channel_factors)
        return {name: factors.get(name, 1) * channels for name, _ in self.in_slots}

    def _fixed(self, axes: tuple[Axis, ...], skip: tuple = ()) -> tuple[int, ...]:
        return tuple(size for lab, size, _ in axes if lab not in self.permuted and lab not in skip)

    def _fixed_sizes(self, term: Term) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(output fixed sizes, contracted input fixed sizes) of a term's coefficient (no input ones for a
        constant)."""
        out_fixed = self._fixed(dict(self.out_slots)[term.out])
        return out_fixed, () if term.inp is None else self._fixed(dict(self.in_slots)[term.inp], term.tied)

    def coef_shape(self, term: Term, c_in: Mapping[str, int], c_out: Mapping[str, int]) -> tuple[int, ...]:
        """``[c_out, c_in, *out_fixed, *in_fixed]`` (tied input axes left out; ``[c_out, *out_fixed]`` for a
        constant)."""
        out_fixed, in_fixed = self._fixed_sizes(term)
        if term.inp is None:
            return (c_out[term.out],) + out_fixed
        return (c_out[term.out], c_in[term.inp]) + out_fixed + in_fixed

    def summed_axes(self, term: Term) -> tuple[tuple[Hashable, int], ...]:
        """``(label, size)`` of every input axis the term sums over: pooled permuted axes and contracted fixed
        axes (empty for a constant)."""
        if term.inp is None:
            return ()
        keep = set(term.identified) | set(term.tied)
        return tuple((lab, size) for lab, size, _ in dict(self.in_slots)[term.inp] if lab not in keep)

    def _stds(self, c_in: Mapping[str, int], c_out: Mapping[str, int]) -> list[float]:
        """Initial standard deviation of every term under the plan's `init_rule`."""
        linear = [t for t in self.terms if t.inp is not None]
        if self.init_rule == "unit":
            n_terms = {o: sum(t.out == o for t in linear) for o, _ in self.out_slots}
            return [0.0 if t.inp is None else
                    1.0 / math.sqrt(c_in[t.inp] * math.prod(s for _, s in self.summed_axes(t)) * n_terms[t.out])
                    for t in self.terms]
        fans: dict[str, int] = {}
        for t in linear:
            out_fixed, in_fixed = self._fixed_sizes(t)
            fans[t.out] = fans.get(t.out, 0) + c_in[t.inp] * math.prod(in_fixed) + c_out[t.out] * math.prod(out_fixed)
        return [0.0 if t.inp is None else math.sqrt(2.0 / fans[t.out]) for t in self.terms]

    def init(self, key: jax.Array, c_in: Mapping[str, int], c_out: Mapping[str, int], dtype=jnp.float32,
             stack: tuple[int, ...] = ()) -> dict[str, jax.Array]:
        """Initial coefficients under the plan's `init_rule` (module docstring), drawn in term order.

        Args:
          key: PRNG key.
          c_in, c_out: slot name -> channels.
          dtype: coefficient dtype.
          stack: leading axes of independent copies (e.g. ``(num_blocks,)``).
        Returns:
          dict term name -> coefficient array ``[*stack, *coef_shape]``.
        """
        shapes = [tuple(stack) + self.coef_shape(t, c_in, c_out) for t in self.terms]
        return {t.name: z for t, z in zip(self.terms, normal_arrays(key, shapes, self._stds(c_in, c_out), dtype))}

    def num_params(self, c_in: Mapping[str, int], c_out: Mapping[str, int]) -> int:
        """Number of scalars in one copy of the coefficients."""
        return sum(math.prod(self.coef_shape(t, c_in, c_out)) for t in self.terms)

    def contractions(self) -> dict[str, tuple[Term, ...]]:
        """Packed coefficient name -> the terms `apply` evaluates as one contraction (one output slot, the same
        identified and tied labels; or the output's constant terms), in term order. Names: ``"out<-[i,j]"`` (the
        identified labels), ``"out<-[i|t]"`` with tied labels, ``"out<-[const]"``."""
        groups: dict[str, list] = {}
        for t in self.terms:
            inner = "const" if t.inp is None else ",".join(map(str, t.identified)) + (
                f"|{','.join(map(str, t.tied))}" if t.tied else "")
            groups.setdefault(f"{t.out}<-[{inner}]", []).append(t)
        return {name: tuple(terms) for name, terms in groups.items()}

    def pack(self, coeffs: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        """Term coefficients -> one array per contraction (`contractions`): ``[*stack, c_out, *out_fixed, F]``
        with F the terms' ``(*in_fixed, c_in)`` axes flattened and concatenated in term order; an output's k
        constant terms stacked, ``[*stack, k, c_out, *out_fixed]`` (`apply` adds them). `apply` reads either
        form; a layer that holds the packed form runs no concatenation forward and no slicing of the gradient
        backward (every such slice was a kernel of its own in XLA's CPU program, docs/common.md §11). `unpack`
        inverts it."""
        missing = [t.name for t in self.terms if t.name not in coeffs]
        if missing:
            raise ValueError(f"SharingPlan.pack: coeffs has no entry for the terms {missing} (got {sorted(coeffs)})")
        packed = {}
        for name, terms in self.contractions().items():
            if terms[0].inp is None:
                out_fixed = self._fixed_sizes(terms[0])[0]
                packed[name] = jnp.stack([coeffs[t.name] for t in terms], axis=-(len(out_fixed) + 2))
                continue
            parts = []
            for t in terms:
                n_out, n_in = map(len, self._fixed_sizes(t))
                c = jnp.moveaxis(coeffs[t.name], -(n_out + n_in + 1), -1)  # [..., *out_fixed, *in_fixed, c_in]
                parts.append(c.reshape(c.shape[: c.ndim - n_in - 1] + (-1,)))
            packed[name] = parts[0] if len(parts) == 1 else jnp.concatenate(parts, -1)
        return packed

    def unpack(self, packed: Mapping[str, jax.Array], c_in: Mapping[str, int]) -> dict[str, jax.Array]:
        """Inverse of `pack`: term name -> ``[*stack, c_out, c_in, *out_fixed, *in_fixed]`` (``c_in``: input slot
        name -> channels)."""
        coeffs = {}
        for name, terms in self.contractions().items():
            start = 0
            for j, t in enumerate(terms):
                out_fixed, in_fixed = self._fixed_sizes(t)
                if t.inp is None:
                    coeffs[t.name] = jnp.take(packed[name], j, axis=-(len(out_fixed) + 2))
                    continue
                size = math.prod(in_fixed) * c_in[t.inp]
                c = packed[name][..., start: start + size]
                c = c.reshape(c.shape[:-1] + in_fixed + (c_in[t.inp],))
                coeffs[t.name] = jnp.moveaxis(c, -1, -(len(out_fixed) + len(in_fixed) + 1))
                start += size
        return coeffs

    def apply(self, coeffs: Mapping[str, jax.Array], inputs: Mapping[str, jax.Array],
              layout: str = "channels_last") -> dict[str, jax.Array]:
        """Evaluate every output slot.

        Terms of one output that keep the same axes (identified and tied labels) run as one contraction: each
        input is pooled (once per input and pooled axes), its contracted fixed axes and channels are flattened
        into one feature axis, and the group's inputs and coefficients are concatenated along it. So a layer
        costs one matrix product per output and axis pattern, not one per term.

        Args:
          coeffs: term name -> coefficient (see `coef_shape`).
          inputs: input name -> array ``[..., *sizes, c_in]`` (``layout="channels_last"``) or
            ``[c_in, ..., *sizes]`` (``"channels_leading"``), the same batch axes ``...`` for all; the sizes of
            permuted axes may differ from the plan's (outputs take them from the inputs).
          layout: ``"channels_leading"`` puts the channels before the batch axes, so every contraction is a
            plain [c_out, c_in] @ [c_in, batch x sizes] matrix product with no transpose around it (for layers
            whose inputs are built channels-first, e.g. MAGEP's products, docs/magep.md §9.4).
        Returns:
          output name -> array ``[..., *sizes, c_out]`` or ``[c_out, ..., *sizes]`` (as ``layout``).
        """
        if layout not in LAYOUTS:
            raise ValueError(f"SharingPlan.apply: layout must be one of {LAYOUTS}, got {layout!r}")
        contractions = self.contractions()
        if set(coeffs) != set(contractions):
            missing = [t.name for t in self.terms if t.name not in coeffs]
            if missing:
                raise ValueError(f"SharingPlan.apply: coeffs has no entry for the terms {missing} and is not the "
                                 f"packed form {sorted(contractions)} (got {sorted(coeffs)})")
            coeffs = self.pack(coeffs)
        lead = layout == "channels_leading"
        in_slots, out, pooled = dict(self.in_slots), {}, {}
        first = next(iter(inputs))
        n_idx = len(in_slots[first])
        batch = inputs[first].shape[1: inputs[first].ndim - n_idx] if lead else inputs[first].shape[: -n_idx - 1]
        end = 0 if lead else 1  # trailing channel axes after the index axes
        sizes = {lab: x.shape[pos - len(in_slots[name]) - end] for name, x in inputs.items()
                 for pos, (lab, _, _) in enumerate(in_slots[name]) if lab in self.permuted}
        for name, axes in self.out_slots:
            acc = None
            for key, terms in contractions.items():
                if terms[0].out != name:
                    continue
                c = coeffs[key]
                if terms[0].inp is None:  # the output's constant terms, [k, c_out, *out_fixed]: added
                    c = c.sum(0)
                    y = c.reshape(c.shape[:1] + (1,) * len(batch) + c.shape[1:]) if lead else jnp.moveaxis(c, 0, -1)
                    y = self._broadcast_axes(y, axes, (), end)
                else:
                    y = self._apply_group(terms, c, inputs, axes, in_slots, len(batch), pooled, lead)
                c_out = c.shape[0]
                acc = y if acc is None else acc + y
            out_sizes = tuple(sizes.get(lab, s) for lab, s, _ in axes)
            out[name] = jnp.broadcast_to(acc, (c_out,) + batch + out_sizes if lead else batch + out_sizes + (c_out,))
        return out

    def _broadcast_axes(self, y: jax.Array, out_axes: tuple[Axis, ...], identified: tuple, end: int = 1) -> jax.Array:
        """Insert size-1 axes for the permuted output axes that are not identified (broadcast by `apply`);
        ``end``: channel axes after the index axes (1 channels last, 0 channels leading)."""
        for pos, (lab, _, _) in reversed(list(enumerate(out_axes))):
            if lab in self.permuted and lab not in identified:
                y = jnp.expand_dims(y, pos - len(out_axes) - end)
        return y

    def _pooled(self, t: Term, inputs, in_slots, pooled: dict, end: int) -> tuple[jax.Array, list]:
        """The term's input summed or averaged over its pooled axes (cached per input and axes), and the labels
        of the axes left."""
        in_axes = in_slots[t.inp]
        pool = tuple(p for p, (lab, _, _) in enumerate(in_axes) if lab in self.permuted and lab not in t.identified)
        if (t.inp, pool) not in pooled:
            x = inputs[t.inp]
            if pool:
                dims = tuple(p - len(in_axes) - end for p in pool)
                x = x.mean(axis=dims) if self.pooling == "mean" else x.sum(axis=dims)
            pooled[(t.inp, pool)] = x
        return pooled[(t.inp, pool)], [lab for p, (lab, _, _) in enumerate(in_axes) if p not in pool]

    def _apply_group(self, terms: list, coef: jax.Array, inputs, out_axes, in_slots, n_batch: int, pooled: dict,
                     lead: bool) -> jax.Array:
        """Terms of one output with the same identified and tied labels as one contraction (see `apply`) with
        their packed coefficient ``coef`` [c_out, *out_fixed, F] (`pack`): channels last, [..., *kept, F]
        against it (`channel_matmul`); channels leading (``lead``), [c_out x out_fixed, F] @ [F, batch x kept],
        the inputs' fixed axes moved next to their channels and nothing else transposed."""
        identified, tied = terms[0].identified, terms[0].tied
        kept = [lab for lab, _, _ in out_axes if lab in identified or lab in tied]  # output-axis order
        fixed_labels = [lab for lab, _, _ in out_axes if lab not in self.permuted]
        n_out_fixed = len(fixed_labels)
        xs = []
        for t in terms:
            x, left = self._pooled(t, inputs, in_slots, pooled, 0 if lead else 1)
            kept_pos, fixed = [left.index(lab) for lab in kept], [i for i, lab in enumerate(left) if lab not in kept]
            if lead:  # [in_fixed * c_in, *batch, *kept]
                x = jnp.transpose(x, (*(1 + n_batch + i for i in fixed), 0, *range(1, 1 + n_batch),
                                      *(1 + n_batch + i for i in kept_pos)))
                xs.append(x.reshape((-1,) + x.shape[1 + len(fixed):]))
            else:  # [*batch, *kept, in_fixed * c_in]
                x = jnp.transpose(x, (*range(n_batch), *(n_batch + i for i in kept_pos + fixed), x.ndim - 1))
                xs.append(x.reshape(x.shape[: n_batch + len(kept)] + (-1,)))
        x = xs[0] if len(xs) == 1 else jnp.concatenate(xs, 0 if lead else -1)
        sub, kept_sub, out_sub, fixed_sub = self._letters(kept, out_axes)
        out_labels = [lab for lab, _, _ in out_axes if lab in sub]
        if set(kept) & set(tied):  # a tie: the coefficient runs along one of x's axes
            spec = f"y...{kept_sub},z{fixed_sub}y->z...{out_sub}" if lead else f"...{kept_sub}y,z{fixed_sub}y->...{out_sub}z"
            y = jnp.einsum(spec, x, coef)
        elif lead:  # [c_out, *out_fixed, *batch, *kept] -> [c_out, *batch, *out axes in output order]
            y = (coef.reshape(-1, coef.shape[-1]) @ x.reshape(x.shape[0], -1)).reshape(coef.shape[:-1] + x.shape[1:])
            at = {lab: 1 + i + (n_batch if i >= n_out_fixed else 0) for i, lab in enumerate(fixed_labels + kept)}
            perm = [0, *range(1 + n_out_fixed, 1 + n_out_fixed + n_batch), *(at[lab] for lab in out_labels)]
            y = jnp.transpose(y, perm) if perm != sorted(perm) else y
        else:
            y = channel_matmul(x, coef, [(kept + fixed_labels).index(lab) for lab in out_labels])
        return self._broadcast_axes(y, out_axes, identified, 0 if lead else 1)

    def _letters(self, kept: list, out_axes: tuple[Axis, ...]) -> tuple[dict, str, str, str]:
        """einsum letters: label -> letter (kept labels first, then the output's fixed labels), and the
        subscripts of the kept axes, of the output axes and of the output's fixed axes ('y', 'z' are left for the
        feature and channel axes)."""
        letters = iter(string.ascii_lowercase[:24])
        sub = {lab: next(letters) for lab in kept}  # tied fixed labels keep their letter from `kept`
        sub.update({lab: next(letters) for lab, _, _ in out_axes if lab not in self.permuted and lab not in sub})
        join = lambda labels: "".join(sub[lab] for lab in labels)
        return (sub, join(kept), join(lab for lab, _, _ in out_axes if lab in sub),
                join(lab for lab, _, _ in out_axes if lab not in self.permuted))


def channel_matmul(x: jax.Array, coef: jax.Array, order: Sequence[int]) -> jax.Array:
    """x [..., *k, y] contracted with coef [z, *f, y] over y as ONE 2-D matmul -> [..., *(k + f)[order], z].

    ``order`` permutes the k + f axes of the result (their positions in the wanted output). An einsum over the
    same axes computes the same numbers, but XLA CPU then takes the coefficient's gradient from a transposed
    copy of the cotangent, and a transposing fusion that carries the ReLU mask runs ~25x slower than a plain
    transpose: with the 2-D matmul a Monomial-NFN training step at batch 64 took 247 instead of 392 ms on one
    core (docs/magep.md §9.4).
    """
    n_lead = x.ndim - 1 - (len(order) - (coef.ndim - 2))  # batch axes
    w = jnp.moveaxis(coef, 0, -2).reshape(-1, coef.shape[-1])  # [prod(f) * z, y]
    y = (x.reshape(-1, x.shape[-1]) @ w.T).reshape(x.shape[:-1] + coef.shape[1:-1] + coef.shape[:1])
    if list(order) != sorted(order):
        y = jnp.transpose(y, tuple(range(n_lead)) + tuple(n_lead + i for i in order) + (y.ndim - 1,))
    return y
