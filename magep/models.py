"""Networks built from the MAGEP layers and the baselines (docs/magep.md §7).

- `GeneralizationPredictor`: features -> body -> MLP head -> sigmoid; body chosen by ``nfn``:
  "magep" (MonomialLinear -> sigma -> K x [PolynomialEquivariant -> sigma] -> PolynomialInvariant),
  "monomial" / "hnp" / "np" ([linear layer -> sigma] x K -> pool), "statnn" (statistics) or "mlp"
  (flattened weights).
- `INRClassifier`: optional Fourier features -> body (MAGEP or a baseline, as above) -> MLP head (logits).
- `INREditor`: U' = U + gamma * NFN(U), gamma learned (initialised 0.01).

sigma must match the group of the input networks (positive: ReLU-like, sign: odd), so the models are
invariant (equivariant for the editor) end to end. Options that break the group (Fourier features on raw
weights, the authors' NP editing tail) are explicit and off by default.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from common import NetworkSpec, WeightSpace
from common.nets import get_activation
from magep.baselines import (HNPLinear, HNPPool, IOEmbedding, IOEncoding, MonomialLinear, MonomialPool, NPLinear,
                             NPPool, statistics)
from magep.baselines.statnn import QUANTILES
from common.draws import normal_arrays
from magep.equivariant import PolynomialEquivariant
from magep.invariant import PolynomialInvariant
from magep.terms import channels_leading
from magep.mlp import MLP
from magep.validation import check_features, check_spec, resolve_channels

GROUP_ACTIVATIONS = {"positive": ("relu", "leaky_relu", "identity"), "sign": ("tanh", "sin", "identity")}
DEFAULT_ACTIVATION = {"positive": "relu", "sign": "tanh", "none": "relu"}
NFNS = ("magep", "monomial", "hnp", "np", "statnn", "mlp")
OFFICIAL = {  # CNN-zoo configurations (docs/magep.md §9.1): channels, head width
    "magep": (20, 500), "monomial": ((16, 16, 5), 200), "hnp": ((16, 16, 5), 1000), "np": ((16, 16, 5), 1000),
    "statnn": (None, 1000), "mlp": (None, 1000),
}
VARIANTS = ("paper", "compact")  # of "hnp" / "np" (LinearBody)


def check_scaling(scaling: str, model: str) -> None:
    """Raise ValueError naming `model` unless `scaling` is "positive", "sign" or "none"."""
    if not isinstance(scaling, str) or scaling not in ("positive", "sign", "none"):
        raise ValueError(f"{model}: scaling must be 'positive', 'sign' or 'none', got {scaling!r}")


def check_activation(scaling: str, activation: str, model: str) -> None:
    """Raise ValueError unless `scaling` is valid (checked first) and `activation` commutes with its scalings
    ("none": any name)."""
    check_scaling(scaling, model)
    get_activation(activation)
    if scaling != "none" and activation not in GROUP_ACTIVATIONS[scaling]:
        raise ValueError(
            f"{model}: activation {activation!r} breaks the {scaling!r} group; use one of {GROUP_ACTIVATIONS[scaling]}"
        )


MONOMIAL_BODIES = ("magep", "monomial")  # bodies equivariant under the scalings, so sigma must commute with them


def body_activation(nfn: str, scaling: str, activation: str | None, group_default: str, model: str) -> str:
    """The sigma between the layers of an ``nfn`` body on networks of group `scaling` (checked first).

    None picks `group_default` for the monomial bodies ("magep", "monomial"; checked against `scaling`) and ReLU
    for the others, as the authors' permutation-equivariant NFNs use whatever the input networks' activation
    (a tanh body collapsed NP to a constant prediction on a tanh CNN zoo: test tau ~0.1)."""
    check_scaling(scaling, model)
    if activation is None:
        activation = group_default if nfn in MONOMIAL_BODIES else "relu"
    check_activation(scaling if nfn in MONOMIAL_BODIES else "none", activation, model)
    return activation


def map_features(fn, feats: WeightSpace) -> WeightSpace:
    """Apply an elementwise function to every weight and bias feature."""
    return jax.tree.map(fn, feats)


class FixedBasis(nnx.Variable):
    """A random but fixed buffer (Fourier frequencies): not an ``nnx.Param``."""


class FourierFeatures(nnx.Module):
    """Gaussian Fourier features per entry: x [.., C_t] -> sin(2 pi x B_t) (mode "odd") or
    [sin, cos](2 pi x B_t) (mode "full"), B_t [C_t, F] ~ N(0, scale^2) fixed, one per tensor.

    "odd" keeps sign-flip equivariance (sin is odd) but not positive scaling; "full" (the authors' INR
    classifier) keeps only permutation symmetry.
    """

    def __init__(self, spec: NetworkSpec, in_channels, n_frequencies: int, *, scale: float, mode: str, rngs: nnx.Rngs):
        if mode not in ("odd", "full"):
            raise ValueError(f"FourierFeatures: mode must be 'odd' or 'full', got {mode!r}")
        self.spec, self.mode = spec, mode
        self.in_channels = resolve_channels(in_channels, spec, "FourierFeatures", "in_channels")
        shapes = [(c, n_frequencies) for c in self.in_channels.weights + self.in_channels.biases]
        self.basis = nnx.List([FixedBasis(b) for b in normal_arrays(rngs.params(), shapes, [scale] * len(shapes))])
        self.out_channels = n_frequencies * (1 if mode == "odd" else 2)

    def __call__(self, feats: WeightSpace) -> WeightSpace:
        check_features(feats, self.spec, self.in_channels, "FourierFeatures")
        leaves = feats.weights + feats.biases
        out = []
        for x, B in zip(leaves, self.basis):
            z = 2 * jnp.pi * (x @ B[...])
            out.append(jnp.sin(z) if self.mode == "odd" else jnp.concatenate([jnp.sin(z), jnp.cos(z)], -1))
        L = self.spec.num_layers
        return WeightSpace(tuple(out[:L]), tuple(out[L:]), is_features=True)


class MagepBody(nnx.Module):
    """MonomialLinear(in_channels -> c) -> sigma -> K x [PolynomialEquivariant(c -> c) -> sigma]
    -> PolynomialInvariant(c -> out_features): features -> [..., out_features]."""

    def __init__(self, spec: NetworkSpec, in_channels, channels: int, out_features: int, num_equivariant: int, *,
                 scaling: str, activation: str, rngs: nnx.Rngs, freeze_phi: bool = False, normalize: bool = False):
        self.activation = activation
        self.embed = MonomialLinear(spec, in_channels, channels, scaling=scaling, rngs=rngs)
        self.layers = nnx.List([PolynomialEquivariant(spec, channels, channels, rngs=rngs, freeze_phi=freeze_phi,
                                                      normalize=normalize) for _ in range(num_equivariant)])
        self.invariant = PolynomialInvariant(spec, channels, out_features, rngs=rngs, normalize=normalize)

    def __call__(self, feats: WeightSpace) -> jax.Array:
        """Every layer passes its features on channels leading (``layout``), so no data moves between layers:
        the input features are moved once, before the embedding (they have fewer channels than its output, and
        no gradient flows back into them)."""
        act = get_activation(self.activation)
        h = tuple(map(channels_leading, feats.weights)), tuple(map(channels_leading, feats.biases))
        h = jax.tree.map(act, self.embed(h, layout="channels_leading"))
        for layer in self.layers:
            h = jax.tree.map(act, layer(h, layout="channels_leading"))
        return self.invariant(h, layout="channels_leading")


class LinearBody(nnx.Module):
    """[IO-encoding] -> [linear layer -> sigma] x K -> pool, for "monomial", "hnp" and "np".

    variant "paper" (hnp/np, the authors' np_inv / hnp_inv): conv kernel positions kept as channels (c k_l
    on W^(l)), the authors' term sets (``terms="paper"``), a learned `IOEmbedding` before every NP layer,
    HNP pool without redundant means. "compact": c channels on every tensor, complete term sets, one
    sinusoidal `IOEncoding` before the first NP layer, HNP pool with means (hnp) or NP pool (np).
    """

    def __init__(self, spec: NetworkSpec, in_channels, channels: tuple, nfn: str, *, scaling: str, activation: str,
                 rngs: nnx.Rngs, io_encoding: bool, variant: str = "paper"):
        self.activation = activation
        paper = variant == "paper" and nfn in ("hnp", "np")
        self.io = IOEncoding(spec, in_channels, rngs=rngs) if io_encoding and not paper else None
        if nfn == "monomial" or paper:  # kernel positions as channels: c channels per position on conv layers
            widths = [tuple(c * k for k in spec.feature_channels) for c in channels]
        else:
            widths = list(channels)
        if nfn == "monomial":
            make = lambda a, b: MonomialLinear(spec, a, b, scaling=scaling, rngs=rngs)
        else:
            terms = "paper" if paper else "complete"
            make = lambda a, b: (HNPLinear if nfn == "hnp" else NPLinear)(spec, a, b, rngs=rngs, terms=terms)
        ins = [in_channels] + widths[:-1]
        self.layers = nnx.List([make(a, b) for a, b in zip(ins, widths)])
        embed = io_encoding and paper
        self.embeddings = nnx.List([IOEmbedding(spec, a, rngs=rngs) for a in ins]) if embed else None
        if nfn == "monomial":
            self.pool = MonomialPool(spec, widths[-1], scaling=scaling)
        elif nfn == "hnp" or paper:
            self.pool = HNPPool(spec, widths[-1], redundant_means=not paper)
        else:
            self.pool = NPPool(spec, widths[-1])
        self.out_features = self.pool.out_features

    def __call__(self, feats: WeightSpace) -> jax.Array:
        act = get_activation(self.activation)
        h = feats if self.io is None else self.io(feats)
        for i, layer in enumerate(self.layers):
            h = h if self.embeddings is None else self.embeddings[i](h)
            h = map_features(act, layer(h))
        return self.pool(h)


class FlattenBody(nnx.Module):
    """Every weight and bias feature flattened and concatenated (the MLP baseline; no parameters):
    features -> [..., sum of tensor sizes] (`NetworkSpec.num_params` for raw weights' features)."""

    def __init__(self, spec: NetworkSpec, in_channels):
        self.spec, self.in_channels = spec, resolve_channels(in_channels, spec, "FlattenBody", "in_channels")
        n, c = spec.widths, self.in_channels
        self.out_features = sum(n[l + 1] * (n[l] * c.weights[l] + c.biases[l]) for l in range(spec.num_layers))

    def __call__(self, feats: WeightSpace) -> jax.Array:
        check_features(feats, self.spec, self.in_channels, "FlattenBody")
        weights = [w.reshape(w.shape[:-3] + (-1,)) for w in feats.weights]
        return jnp.concatenate(weights + [b.reshape(b.shape[:-2] + (-1,)) for b in feats.biases], -1)


class StatBody(nnx.Module):
    """STATNN statistics (no parameters)."""

    def __init__(self, spec: NetworkSpec, in_channels):
        self.spec, self.in_channels = spec, resolve_channels(in_channels, spec, "StatBody", "in_channels")
        self.out_features = (2 + len(QUANTILES)) * (sum(self.in_channels.weights) + sum(self.in_channels.biases))

    def __call__(self, feats: WeightSpace) -> jax.Array:
        check_features(feats, self.spec, self.in_channels, "StatBody")
        return statistics(feats)


def make_body(spec: NetworkSpec, in_channels, nfn: str, channels, *, scaling: str, activation: str,
              num_equivariant: int, rngs: nnx.Rngs, freeze_phi: bool = False, normalize: bool = False,
              io_encoding: bool | None = None, variant: str = "paper") -> tuple[nnx.Module, int]:
    """``(body, output width)``: the invariant body of ``nfn`` (`NFNS`) on features with ``in_channels``.

    "magep": `MagepBody` with c = ``channels`` (an int) and K = ``num_equivariant``; "monomial" / "hnp" / "np":
    `LinearBody` with per-layer ``channels`` (IO-encoding on for "np" unless ``io_encoding`` says otherwise);
    "statnn" / "mlp": `StatBody` / `FlattenBody` (``channels`` unused). Options as in `GeneralizationPredictor`.
    """
    if nfn == "magep":
        return MagepBody(spec, in_channels, channels, channels, num_equivariant, scaling=scaling, activation=activation,
                         rngs=rngs, freeze_phi=freeze_phi, normalize=normalize), channels
    if nfn in ("statnn", "mlp"):
        body = (StatBody if nfn == "statnn" else FlattenBody)(spec, in_channels)
    else:
        body = LinearBody(spec, in_channels, tuple(channels), nfn, scaling=scaling, activation=activation, rngs=rngs,
                          io_encoding=(nfn == "np") if io_encoding is None else io_encoding, variant=variant)
    return body, body.out_features


class GeneralizationPredictor(nnx.Module):
    """Predict a CNN's test accuracy from its weights (features of ``ws.to_features()``, C_l = kh*kw).

    Args:
      spec: spec of the input networks (raw, with kernel shapes: conv kernels are folded into channels).
      nfn: "magep", "monomial", "hnp", "np", "statnn" or "mlp" (flattened weights, no symmetry).
      scaling: group of the input networks, "positive" (ReLU nets) or "sign" (tanh nets); "magep" and
        "monomial" are invariant under it, "hnp", "np" and "statnn" only under hidden-neuron permutations,
        "mlp" under none.
      activation: sigma between NFN layers (`body_activation`); default for "magep" and "monomial" ReLU for
        positive, tanh for sign (checked against `scaling`), for "hnp" and "np" ReLU whatever the zoo's activation.
      channels: "magep": an int c (default 20); "monomial"/"hnp"/"np": per-layer channels (default (16, 16, 5)).
      head: hidden width of the 3-layer MLP head (defaults 500 / 200 / 1000 / 1000 / 1000 / 1000).
      num_equivariant: K, the number of PolynomialEquivariant layers ("magep").
      freeze_phi, normalize: options of the polynomial layers ("magep"); normalize (default on) divides each
        layer's input by a group-invariant scale (`magep.normalize_scale`), which keeps the predictor finite and
        unsaturated for weights of any scale (docs/magep.md §4, §11 pitfall 2).
      io_encoding: IO-encoding of the NP layers (default on for "np"): a learned `IOEmbedding` before every
        layer (variant "paper") or one sinusoidal `IOEncoding` before the first ("compact").
      dropout: dropout in the head.
      variant: "hnp" / "np" only: "paper" (default; Zhou et al.'s np_inv / hnp_inv, 2,031,390 / 2,811,743
        parameters on the CNN zoo) or "compact" (kernel positions collapsed, complete terms; `LinearBody`).
    Call: features -> [...] probabilities; `logits` gives the pre-sigmoid values.
    """

    def __init__(self, spec: NetworkSpec, *, nfn: str = "magep", scaling: str = "positive", activation: str | None = None,
                 channels=None, head: int | None = None, num_equivariant: int = 2, rngs: nnx.Rngs,
                 freeze_phi: bool = False, normalize: bool = True, io_encoding: bool | None = None, dropout: float = 0.0,
                 variant: str = "paper"):
        if nfn not in NFNS:
            raise ValueError(f"GeneralizationPredictor: nfn must be one of {NFNS}, got {nfn!r}")
        if variant not in VARIANTS:
            raise ValueError(f"GeneralizationPredictor: variant must be one of {VARIANTS}, got {variant!r}")
        check_spec(spec, "GeneralizationPredictor", 2)
        activation = body_activation(nfn, scaling, activation, DEFAULT_ACTIVATION.get(scaling, "relu"),
                                     "GeneralizationPredictor")
        if nfn in ("magep", "monomial") and scaling == "none":
            raise ValueError(f"GeneralizationPredictor: nfn={nfn!r} needs scaling 'positive' or 'sign', got 'none'")
        default_channels, default_head = OFFICIAL[nfn]
        channels = default_channels if channels is None else channels
        head = default_head if head is None else head
        self.body, width = make_body(spec, spec.feature_channels, nfn, channels, scaling=scaling, activation=activation,
                                     num_equivariant=num_equivariant, rngs=rngs, freeze_phi=freeze_phi,
                                     normalize=normalize, io_encoding=io_encoding, variant=variant)
        self.head = MLP(width, (head, head), 1, rngs=rngs, dropout=dropout)

    def logits(self, feats: WeightSpace) -> jax.Array:
        """features -> [...] logits."""
        return self.head(self.body(feats))[..., 0]

    def __call__(self, feats: WeightSpace) -> jax.Array:
        """features -> [...] predicted accuracy in (0, 1)."""
        return jax.nn.sigmoid(self.logits(feats))


class INRClassifier(nnx.Module):
    """Classify SIREN (or other) INRs from their weights: [FourierFeatures] -> body -> MLP head.

    Args:
      spec: spec of the INRs (e.g. widths (2, 32, 32, 1)).
      num_classes: number of logits.
      nfn: the body, as in `GeneralizationPredictor` ("magep" default; "monomial", "hnp", "np", "statnn", "mlp":
        the baselines).
      scaling: group of the INRs ("sign" for SIRENs); activation: sigma between the body's layers
        (`body_activation`): default "sin" for "magep" and "monomial" (checked against `scaling`), ReLU for
        "hnp" and "np", as the authors' classifiers.
      channels: c of the MAGEP body (default 128) or per-layer channels of a linear body (default (16, 16, 5));
        num_equivariant: K; head: hidden width; dropout: head dropout.
      fourier_features: None (default, equivariant), "odd" (sin half: keeps sign flips, breaks positive
        scaling) or "full" (the authors' choice: permutation-invariant only).
      n_frequencies, fourier_scale: Gaussian Fourier feature settings (authors: 128, 3).
    Call: features -> [..., num_classes] logits (`logits` is the same).
    """

    def __init__(self, spec: NetworkSpec, num_classes: int, *, nfn: str = "magep", scaling: str = "sign",
                 activation: str | None = None, channels=None, num_equivariant: int = 3, head: int = 1000,
                 dropout: float = 0.0, fourier_features: str | None = None, n_frequencies: int = 128,
                 fourier_scale: float = 3.0, rngs: nnx.Rngs, freeze_phi: bool = False, normalize: bool = False):
        if nfn not in NFNS:
            raise ValueError(f"INRClassifier: nfn must be one of {NFNS}, got {nfn!r}")
        check_spec(spec, "INRClassifier", 2)
        activation = body_activation(nfn, scaling, activation, "sin", "INRClassifier")
        in_channels = spec.feature_channels
        self.fourier = None if fourier_features is None else FourierFeatures(
            spec, in_channels, n_frequencies, scale=fourier_scale, mode=fourier_features, rngs=rngs)
        if self.fourier is not None:
            in_channels = self.fourier.out_channels
        channels = (128 if nfn == "magep" else OFFICIAL[nfn][0]) if channels is None else channels
        self.body, width = make_body(spec, in_channels, nfn, channels, scaling=scaling, activation=activation,
                                     num_equivariant=num_equivariant, rngs=rngs, freeze_phi=freeze_phi,
                                     normalize=normalize)
        self.head = MLP(width, (head, head), num_classes, rngs=rngs, dropout=dropout)

    def __call__(self, feats: WeightSpace) -> jax.Array:
        h = feats if self.fourier is None else self.fourier(feats)
        return self.head(self.body(h))

    def logits(self, feats: WeightSpace) -> jax.Array:
        """features -> [..., num_classes] logits (for `common.accuracy_prediction.fit_predictor`)."""
        return self(feats)


EDITOR_NFNS = ("magep", "monomial", "hnp", "np", "mlp")


def unflatten_features(x: jax.Array, spec: NetworkSpec, in_channels) -> WeightSpace:
    """Inverse of `FlattenBody`: [..., sum of tensor sizes] -> features of ``spec`` with ``in_channels``."""
    c = resolve_channels(in_channels, spec, "unflatten_features", "in_channels")
    n, L = spec.widths, spec.num_layers
    w_sizes = [n[l + 1] * n[l] * c.weights[l] for l in range(L)]
    b_sizes = [n[l + 1] * c.biases[l] for l in range(L)]
    if x.shape[-1] != sum(w_sizes) + sum(b_sizes):
        raise ValueError(f"unflatten_features: x has {x.shape[-1]} features on its last axis; spec widths {n} with "
                         f"channels {c} need {sum(w_sizes) + sum(b_sizes)}")
    parts = jnp.split(x, list(np.cumsum(w_sizes + b_sizes)[:-1]), axis=-1)
    lead = x.shape[:-1]
    weights = tuple(parts[l].reshape(lead + (n[l + 1], n[l], c.weights[l])) for l in range(L))
    biases = tuple(parts[L + l].reshape(lead + (n[l + 1], c.biases[l])) for l in range(L))
    return WeightSpace(weights, biases, is_features=True)


class INREditor(nnx.Module):
    """Weight editor U' = U + gamma * NFN(U) on the features of raw weights (e.g. SIRENs), body chosen by ``nfn``:

    - "magep", variant="library" (default, fully equivariant): MonomialLinear(C -> c) -> sigma ->
      K x [PolynomialEquivariant(c) -> sigma] -> MonomialLinear(c -> C);
      variant="paper" (authors; permutation-equivariant only): MonomialLinear(C -> c) -> PolynomialEquivariant(c)
      -> MonomialLinear(c -> 2c) -> FourierFeatures("full") -> IOEncoding -> 3 x [NPLinear(-> 128) -> ReLU]
      -> NPLinear(-> C);
    - "monomial" / "hnp" / "np" (baselines): the same stack with linear layers in place of the polynomial ones:
      L(C -> c) -> sigma -> K x [L(c -> c) -> sigma] -> L(c -> C), L = MonomialLinear (equivariant under the
      monomial group), HNPLinear (hidden-neuron permutations) or NPLinear after an `IOEncoding` (all neuron
      permutations, IO-encoding breaks the input/output ones, as in Zhou et al.);
    - "mlp" (baseline, no symmetry): the flattened weights through an MLP with two hidden layers of ``head`` units
      back to the flattened weights (`FlattenBody`, `unflatten_features`).

    Args:
      spec: spec of the edited networks; scaling: their group; activation: sigma between the layers
        (`body_activation`): default "sin" for "magep" and "monomial" (checked against `scaling`), ReLU for the
        others, as the authors' editing networks.
      channels: c; num_equivariant: K; gamma_init: initial gamma; head: hidden width of "mlp".
    Call: features of raw weights (``ws.to_features()``: C_l = kernel size, bias channels 1) -> edited
    features, same shapes.
    """

    def __init__(self, spec: NetworkSpec, *, nfn: str = "magep", channels: int = 16, num_equivariant: int = 1,
                 scaling: str = "sign", activation: str | None = None, gamma_init: float = 0.01, variant: str = "library",
                 rngs: nnx.Rngs, freeze_phi: bool = False, normalize: bool = False, n_frequencies: int = 128,
                 fourier_scale: float = 3.0, head: int = 1000):
        check_spec(spec, "INREditor", 2)
        if nfn not in EDITOR_NFNS:
            raise ValueError(f"INREditor: nfn must be one of {EDITOR_NFNS}, got {nfn!r}")
        activation = body_activation(nfn, scaling, activation, "sin", "INREditor")
        if variant not in ("library", "paper") or (variant == "paper" and nfn != "magep"):
            raise ValueError(f"INREditor: variant must be 'library' (or 'paper' with nfn='magep'), got {variant!r} "
                             f"with nfn={nfn!r}")
        self.spec, self.activation, self.variant, self.nfn = spec, activation, variant, nfn
        self.in_channels = resolve_channels(spec.feature_channels, spec, "INREditor", "feats channels")
        io = spec.feature_channels  # raw weights' features: C_l = kernel size (1 for dense), bias channels 1
        self.gamma = nnx.Param(jnp.asarray(gamma_init, jnp.float32))
        if nfn == "mlp":
            self.flatten = FlattenBody(spec, io)
            self.mlp = MLP(self.flatten.out_features, (head, head), self.flatten.out_features, rngs=rngs)
            return
        poly = lambda: PolynomialEquivariant(spec, channels, channels, rngs=rngs, freeze_phi=freeze_phi, normalize=normalize)
        linear = {"monomial": lambda i, o: MonomialLinear(spec, i, o, scaling=scaling, rngs=rngs),
                  "hnp": lambda i, o: HNPLinear(spec, i, o, rngs=rngs),
                  "np": lambda i, o: NPLinear(spec, i, o, rngs=rngs)}["monomial" if nfn == "magep" else nfn]
        hidden = poly if nfn == "magep" else lambda: linear(channels, channels)
        layers = [IOEncoding(spec, io, rngs=rngs)] if nfn == "np" else []
        layers.append(linear(io, channels))
        if variant == "library":
            layers += [hidden() for _ in range(num_equivariant)]
            layers.append(linear(channels, io))
            activated = [not isinstance(layer, IOEncoding) for layer in layers[:-1]] + [False]
        else:
            fourier = FourierFeatures(spec, 2 * channels, n_frequencies, scale=fourier_scale, mode="full", rngs=rngs)
            width = fourier.out_channels
            layers += [poly(), MonomialLinear(spec, channels, 2 * channels, scaling=scaling, rngs=rngs), fourier,
                       IOEncoding(spec, width, rngs=rngs), NPLinear(spec, width, 128, rngs=rngs),
                       NPLinear(spec, 128, 128, rngs=rngs), NPLinear(spec, 128, 128, rngs=rngs),
                       NPLinear(spec, 128, io, rngs=rngs)]
            activated = [isinstance(layer, NPLinear) for layer in layers[:-1]] + [False]
        self.layers, self.activated = nnx.List(layers), tuple(activated)

    def edit(self, feats: WeightSpace) -> WeightSpace:
        """NFN(U): the edit direction, same shapes as ``feats``."""
        if self.nfn == "mlp":
            return unflatten_features(self.mlp(self.flatten(feats)), self.spec, self.spec.feature_channels)
        act = get_activation(self.activation if self.variant == "library" else "relu")
        h = feats
        for layer, activated in zip(self.layers, self.activated):
            h = layer(h)
            if activated:
                h = map_features(act, h)
        return h

    def __call__(self, feats: WeightSpace) -> WeightSpace:
        check_features(feats, self.spec, self.in_channels, "INREditor")
        return jax.tree.map(lambda u, d: u + self.gamma[...] * d, feats, self.edit(feats))
