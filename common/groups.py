"""The monomial group of an MLP/CNN weight space: hidden-neuron permutations times diagonal scalings.

An element g = (g^(1), ..., g^(L-1)) has, per hidden layer l, a gather index ``perms[l-1]`` [n_l]
(``perm[j] = pi_l^{-1}(j)``) and a scale vector ``scales[l-1]`` [n_l]. Input and output neurons are fixed.
It acts on weights as (docs/magep.md §2)

    W^(l) -> D^(l) P^(l) W^(l) (D^(l-1) P^(l-1))^{-1},   b^(l) -> D^(l) P^(l) b^(l)
    (gW)^(l)_{jk} = d^(l)_j W^(l)_{perm_l[j], perm_{l-1}[k]} / d^(l-1)_k

on every channel and kernel position alike. "positive" scalings are symmetries of ReLU networks,
"sign" flips of tanh/sin networks, "none" (permutations only) of any network.

`Group` is the protocol the two-sided symmetry checks of `common.testing` take: sample, act, inverse,
compose, and the uncoupled actions that a map respecting the group must notice. `MonomialGroup` implements
it for this group, `FieldGroup` lifts any group onto one field of a larger pytree (e.g. a transformer's
classifier head), `transformer_nfn.groups.TransformerGroup` implements it for the transformer group.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple, Protocol, runtime_checkable

import jax
import jax.numpy as jnp

from common.weight_space import NetworkSpec, WeightSpace

SCALINGS = ("positive", "sign", "none")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class MonomialElement:
    """One monomial group element: per hidden layer a gather index [n_l] (int32) and a scale [n_l]."""

    perms: tuple
    scales: tuple


def sample_monomial(
    key: jax.Array,
    spec: NetworkSpec,
    scaling: str = "positive",
    scale_range: tuple[float, float] = (0.25, 4.0),
    scale_distribution: str = "log_uniform",
    dtype=jnp.float32,
) -> MonomialElement:
    """Draw a random monomial element for `spec`.

    Args:
      key: PRNG key.
      spec: network structure (widths n_0..n_L).
      scaling: "positive" (d > 0), "sign" (d in {-1, +1}) or "none" (d = 1).
      scale_range: (low, high) for "positive" scalings.
      scale_distribution: "log_uniform" (library default) or "uniform" (the papers' augmentation, d ~ U[low, high]).
    Returns:
      MonomialElement with L-1 permutations [n_l] and scales [n_l].
    """
    if scaling not in SCALINGS:
        raise ValueError(f"sample_monomial: scaling must be one of {SCALINGS}, got {scaling!r}")
    low, high = scale_range
    if scaling == "positive" and not 0 < low <= high:
        raise ValueError(f"sample_monomial: scale_range must satisfy 0 < low <= high, got {scale_range}")
    if scale_distribution not in ("log_uniform", "uniform"):
        raise ValueError(f"sample_monomial: scale_distribution must be 'log_uniform' or 'uniform', got {scale_distribution!r}")
    return _sample_monomial(key, spec, scaling, (float(low), float(high)), scale_distribution, jnp.dtype(dtype))


# Group operations run as one compiled program each (per structure), not as dozens of eagerly dispatched ops.
@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4, 5))
def _sample_monomial(key, spec, scaling, scale_range, scale_distribution, dtype):
    low, high = scale_range
    perms, scales = [], []
    for n, k in zip(spec.widths[1:-1], jax.random.split(key, max(spec.num_layers - 1, 1))):
        k_perm, k_scale = jax.random.split(k)
        perms.append(jax.random.permutation(k_perm, n).astype(jnp.int32))
        if scaling == "positive":
            if scale_distribution == "log_uniform":
                d = jnp.exp(jax.random.uniform(k_scale, (n,), dtype, jnp.log(low), jnp.log(high)))
            else:
                d = jax.random.uniform(k_scale, (n,), dtype, low, high)
        elif scaling == "sign":
            d = jnp.where(jax.random.bernoulli(k_scale, 0.5, (n,)), 1.0, -1.0).astype(dtype)
        else:
            d = jnp.ones((n,), dtype)
        scales.append(d)
    return MonomialElement(tuple(perms), tuple(scales))


def identity(spec: NetworkSpec, dtype=jnp.float32) -> MonomialElement:
    """The identity element for `spec`."""
    hidden = spec.widths[1:-1]
    return MonomialElement(
        tuple(jnp.arange(n, dtype=jnp.int32) for n in hidden), tuple(jnp.ones((n,), dtype) for n in hidden)
    )


@jax.jit
def inverse(g: MonomialElement) -> MonomialElement:
    """g^{-1}: from (gx)_j = d_j x_{perm[j]}, x_i = (gx)_{inv[i]} / d_{inv[i]} with inv = argsort(perm)."""
    inv = tuple(jnp.argsort(p).astype(jnp.int32) for p in g.perms)
    return MonomialElement(inv, tuple(1.0 / d[i] for d, i in zip(g.scales, inv)))


@jax.jit
def compose(g: MonomialElement, h: MonomialElement) -> MonomialElement:
    """g h (apply h first): perm = perm_h[perm_g], scale = d_g * d_h[perm_g]."""
    return MonomialElement(
        tuple(ph[pg] for pg, ph in zip(g.perms, h.perms)),
        tuple(dg * dh[pg] for pg, dg, dh in zip(g.perms, g.scales, h.scales)),
    )


def _along(v: jax.Array, axis: int, ndim: int) -> jax.Array:
    """Reshape vector v [n] to broadcast along `axis` of an ndim-array."""
    return v.reshape((v.shape[0],) + (1,) * (ndim - axis - 1))


def _check(g: MonomialElement, ws: WeightSpace) -> None:
    if len(g.perms) != ws.num_layers - 1:
        raise ValueError(
            f"groups.act: g has {len(g.perms)} hidden layers but ws has {ws.num_layers} layers "
            f"(needs {ws.num_layers - 1})"
        )
    for l, p in enumerate(g.perms, start=1):
        n = ws.weights[l - 1].shape[ws.out_axis(l - 1)]
        if p.shape[-1] != n:
            raise ValueError(f"groups.act: hidden layer {l} of g has {p.shape[-1]} neurons but ws has {n}")


def _floating(x: jax.Array, like: jax.Array) -> jax.Array:
    """x unchanged if floating, else (integers, bools) converted to the floating dtype of `like`."""
    return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(like.dtype)


def act(g: MonomialElement, ws: WeightSpace) -> WeightSpace:
    """Apply g to raw weights or to features (any leading batch axes; any trailing channels).

    Args:
      g: monomial element for the network's spec (unbatched; vmap over g and ws for batches).
      ws: WeightSpace of raw weights or features. Floating leaves keep their dtype (the scales are cast to
        it); integer and bool leaves are promoted to the scales' dtype, since scaling an integer weight is not
        an integer (docs/input_policy.md).
    Returns:
      the transformed WeightSpace, same shapes.
    """
    _check(g, ws)
    return _act(g, ws)


@jax.jit
def _act(g: MonomialElement, ws: WeightSpace) -> WeightSpace:
    L = ws.num_layers
    weights, biases = [], []
    for i in range(L):
        w, b, a = ws.weights[i], ws.biases[i], ws.out_axis(i)
        if L > 1:
            d_ref = g.scales[0]
            w, b = _floating(jnp.asarray(w), d_ref), _floating(jnp.asarray(b), d_ref)
        if i < L - 1:  # output neurons of layer i are hidden layer i+1
            p, d = g.perms[i], g.scales[i]
            w = jnp.take(w, p, axis=a) * _along(d, a, w.ndim).astype(w.dtype)
            b = jnp.take(b, p, axis=a) * _along(d, a, b.ndim).astype(b.dtype)
        if i > 0:  # input neurons of layer i are hidden layer i
            p, d = g.perms[i - 1], g.scales[i - 1]
            w = jnp.take(w, p, axis=a + 1) / _along(d, a + 1, w.ndim).astype(w.dtype)
        weights.append(w)
        biases.append(b)
    return WeightSpace(tuple(weights), tuple(biases), is_features=ws.is_features)


def uncoupled_permutation(key: jax.Array, ws: WeightSpace, layer: int) -> WeightSpace:
    """Permute the output neurons (rows and bias) of hidden layer `layer` (1..L-1) but not the inputs
    (columns) of layer `layer`+1: a broken action that changes the network's function.

    Args:
      key: PRNG key (the permutation is a cyclic shift by a random non-zero amount, never the identity).
      ws: raw weights or features (any leading batch axes).
      layer: hidden layer index l in 1..L-1.
    Returns:
      WeightSpace of the same shapes.
    """
    if not 1 <= layer < ws.num_layers:
        raise ValueError(f"uncoupled_permutation: layer must be in 1..{ws.num_layers - 1}, got {layer}")
    a = ws.out_axis(layer - 1)
    n = ws.weights[layer - 1].shape[a]
    perm = jnp.roll(jnp.arange(n), 1 + int(jax.random.randint(key, (), 0, max(n - 1, 1))))
    weights, biases = list(ws.weights), list(ws.biases)
    weights[layer - 1] = jnp.take(weights[layer - 1], perm, axis=a)
    biases[layer - 1] = jnp.take(biases[layer - 1], perm, axis=a)
    return WeightSpace(tuple(weights), tuple(biases), is_features=ws.is_features)


def io_permutation(ws: WeightSpace) -> WeightSpace:
    """Reverse the input neurons (columns of W^(1)) and the output neurons (rows of W^(L), entries of b^(L)):
    not a symmetry, as the monomial group fixes input and output neurons (the NP group does not).

    Args:
      ws: raw weights or features (any leading batch axes).
    Returns:
      WeightSpace of the same shapes.
    """
    L = ws.num_layers
    weights, biases = list(ws.weights), list(ws.biases)
    weights[0] = jnp.flip(weights[0], axis=ws.out_axis(0) + 1)
    weights[L - 1] = jnp.flip(weights[L - 1], axis=ws.out_axis(L - 1))
    biases[L - 1] = jnp.flip(biases[L - 1], axis=ws.out_axis(L - 1))
    return WeightSpace(tuple(weights), tuple(biases), is_features=ws.is_features)


class BrokenAction(NamedTuple):
    """A named move ``x -> x'`` that is not a symmetry: a map that respects the group must not commute with it
    (an invariant map must change its output under it)."""

    name: str
    move: Callable[[Any], Any]


@runtime_checkable
class Group(Protocol):
    """A symmetry group of one weight space, bound to its shapes (what `common.testing`'s checks take).

    Laws: ``act(compose(g, h), x) == act(g, act(h, x))``, ``act(inverse(g), act(g, x)) == x``.
    """

    @property
    def name(self) -> str:
        """Short description for messages, e.g. "monomial group (positive scalings)"."""
        ...

    def sample(self, key: jax.Array) -> Any:
        """A random element (a pytree)."""
        ...

    def act(self, g: Any, x: Any) -> Any:
        """g.x on raw weights or features of the space (any leading batch axes); same shapes as x."""
        ...

    def inverse(self, g: Any) -> Any:
        """g^{-1}."""
        ...

    def compose(self, g: Any, h: Any) -> Any:
        """g h (h applied first)."""
        ...

    def uncoupled_actions(self, key: jax.Array) -> tuple[BrokenAction, ...]:
        """Moves applying one factor of the group to only part of what it must act on together; each changes
        the function of a generic network of the space."""
        ...


@dataclasses.dataclass(frozen=True)
class MonomialGroup:
    """The monomial group of `spec` with `scaling` scalings, as a `Group` on its raw weights and features.

    Attributes:
      spec: network structure (widths n_0..n_L).
      scaling: "positive", "sign" or "none" (see `sample_monomial`).
      scale_range: range of the log-uniform "positive" scalings; narrower than `sample_monomial`'s default,
        so symmetry checks stay well conditioned.
      dtype: dtype of the sampled scales.
    """

    spec: NetworkSpec
    scaling: str = "positive"
    scale_range: tuple[float, float] = (0.5, 2.0)
    dtype: Any = jnp.float32

    def __post_init__(self):
        if self.scaling not in SCALINGS:
            raise ValueError(f"MonomialGroup: scaling must be one of {SCALINGS}, got {self.scaling!r}")

    @property
    def name(self) -> str:
        return f"monomial group ({self.scaling} scalings)"

    def sample(self, key: jax.Array) -> MonomialElement:
        """`sample_monomial` with this group's scaling, range and dtype."""
        return sample_monomial(key, self.spec, self.scaling, scale_range=self.scale_range, dtype=self.dtype)

    def act(self, g: MonomialElement, x: WeightSpace) -> WeightSpace:
        return act(g, x)

    def inverse(self, g: MonomialElement) -> MonomialElement:
        return inverse(g)

    def compose(self, g: MonomialElement, h: MonomialElement) -> MonomialElement:
        return compose(g, h)

    def uncoupled_actions(self, key: jax.Array) -> tuple[BrokenAction, ...]:
        """`uncoupled_permutation` of every hidden layer l = 1..L-1 (key folded with l)."""
        return tuple(
            BrokenAction(f"uncoupled permutation of hidden layer {l}",
                         functools.partial(uncoupled_permutation, jax.random.fold_in(key, l), layer=l))
            for l in range(1, self.spec.num_layers)
        )


@dataclasses.dataclass(frozen=True)
class FieldGroup:
    """`group` acting on the dataclass field `field` of a larger pytree and fixing the rest, as a `Group`
    (e.g. the monomial group of a `TransformerWeights`' classifier: ``FieldGroup(MonomialGroup(spec), "classifier")``).
    """

    group: Group
    field: str

    @property
    def name(self) -> str:
        return f"{self.group.name} on .{self.field}"

    def _lift(self, fn: Callable[[Any], Any], x: Any) -> Any:
        return dataclasses.replace(x, **{self.field: fn(getattr(x, self.field))})

    def sample(self, key: jax.Array) -> Any:
        return self.group.sample(key)

    def act(self, g: Any, x: Any) -> Any:
        return self._lift(functools.partial(self.group.act, g), x)

    def inverse(self, g: Any) -> Any:
        return self.group.inverse(g)

    def compose(self, g: Any, h: Any) -> Any:
        return self.group.compose(g, h)

    def uncoupled_actions(self, key: jax.Array) -> tuple[BrokenAction, ...]:
        return tuple(BrokenAction(f"{a.name} of .{self.field}", functools.partial(self._lift, a.move))
                     for a in self.group.uncoupled_actions(key))
