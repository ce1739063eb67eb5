"""Exact symmetries of the zoo transformer beyond the paper's group, and canonicalisations
(docs/transformer_nfn.md §10).

Raw weights only (any leading batch axes); conventions of `transformer_nfn.weights`. Three factors:

1. FFN ReLU scaling (already `groups.TransformerGroup(ffn_scaling=True)`); canonicalisation `normalize_ffn`:
   every FFN hidden unit rescaled so that (w_a[:, j], b_a[j]) has unit norm, w_b[j] compensating.
2. Inter-block channel permutations (`ChannelPermutationGroup`): pi_l permutes block l's output channels
   (columns of w_b, entries of b_b) and the input channels of what reads them, the rows of block l+1's q, k,
   v, or after the last block the columns of fc1. Exact: no residuals and LN(X P) = LN(X) P. Not before the
   first block: the fixed positional encoding is added to the embedding's output channels.
3. LayerNorm shifts (`LayerNormShiftGroup`), an additive group: LN(X + c 1^T) = LN(X) and LN(X) 1 = 0, so
   a map reading an LN output (q, k, v, w_a: rows; fc1: columns) may gain 1 u^T, and a map feeding an LN
   (o per head, w_b: columns; b_b; the patch embedding's weight and bias along D) may gain c 1^T. The
   canonicalisation `center` removes the mean along D of all of them (the orthogonal projection onto the
   complement of the shifts).

`sort_channels` orders the channels at every boundary by a key that moves with them, so `canonicalize_all`
= `sort_channels` after `canonicalize` is invariant under all three factors (without ties in the keys).

`ExtendedTransformerGroup` is the whole group (paper group with FFN scaling) x channel permutations, acting
linearly, with the LN shifts as a normal subgroup: an element (h, t) acts as x -> h.x + t, so
(h1, t1)(h2, t2) = (h1 h2, h1.t2 + t1). `canonicalize` = `normalize_ffn` after `center`: invariant under
factors 1 and 3 and equivariant under the rest, so any predictor applied after it gains those invariances.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from common.groups import BrokenAction
from common.weight_space import WeightSpace
from transformer_nfn import groups
from transformer_nfn.weights import TransformerSpec, TransformerWeights

# the model axis D of every map reading an LN output ("rows") and feeding an LN ("cols"), as a negative axis
_READS_LN = dict(q=-2, k=-2, v=-2, w_a=-2)
_FEEDS_LN = dict(o=-1, w_b=-1, b_b=-1)


def _raw(tw: TransformerWeights, fn: str) -> None:
    if not isinstance(tw, TransformerWeights) or tw.is_features:
        raise ValueError(f"{fn}: tw must be raw TransformerWeights (any leading batch axes), got "
                         f"{'features' if isinstance(tw, TransformerWeights) else type(tw).__name__}")


def _map_classifier_fc1(tw: TransformerWeights, fn) -> WeightSpace | None:
    c = tw.classifier
    return None if c is None else WeightSpace((fn(c.weights[0]),) + c.weights[1:], c.biases)


def center(tw: TransformerWeights) -> TransformerWeights:
    """Subtract the mean along the model axis D from every map next to a LayerNorm (module docstring, 3):
    q, k, v, w_a, o, w_b, b_b of every block, fc1's columns, the patch embedding's weight and bias. Same shapes;
    the network's function is unchanged."""
    _raw(tw, "center")
    sub = lambda x, axis: x - x.mean(axis, keepdims=True)
    axes = _READS_LN | _FEEDS_LN
    blocks = tuple(b.replace(**{f: sub(getattr(b, f), a) for f, a in axes.items()}) for b in tw.blocks)
    e = tw.embedding
    embedding = None if e is None else WeightSpace((sub(e.weights[0], -4),), (sub(e.biases[0], -1),))
    return TransformerWeights(blocks, embedding, _map_classifier_fc1(tw, lambda w: sub(w, -1)))


def normalize_ffn(tw: TransformerWeights, eps: float = 1e-30) -> TransformerWeights:
    """Rescale every FFN hidden unit j by 1 / ||(w_a[:, j], b_a[j])|| (w_b[j] times that norm): a
    representative of the FFN-scaling orbit; units with norm <= eps are left as they are."""
    _raw(tw, "normalize_ffn")
    blocks = []
    for b in tw.blocks:
        norm = jnp.sqrt(jnp.square(b.w_a).sum(-2) + jnp.square(b.b_a))  # [..., DA]
        s = jnp.where(norm > eps, norm, 1.0)
        blocks.append(b.replace(w_a=b.w_a / s[..., None, :], b_a=b.b_a / s, w_b=b.w_b * s[..., :, None]))
    return tw.replace(blocks=tuple(blocks))


def canonicalize(tw: TransformerWeights) -> TransformerWeights:
    """`normalize_ffn(center(tw))`: invariant under LN shifts and FFN scalings, equivariant under the paper's
    group and the channel permutations; the function is unchanged."""
    return normalize_ffn(center(tw))


def sort_channels(tw: TransformerWeights) -> TransformerWeights:
    """Order the model channels at every boundary of `ChannelPermutationGroup` (between blocks, and before fc1
    when there is a classifier) by the key ||w_b[:, j]||^2 + b_b[j]^2 of block l's output channel j, ascending
    (per network: any leading batch axes). The key moves with the channel and is unchanged by the paper's group
    (which never acts on w_b's columns or b_b) and by FFN scalings once `normalize_ffn` has fixed them, so after
    `canonicalize` the result is invariant to the channel permutations whenever no two keys tie (measure zero);
    the network's function is unchanged."""
    _raw(tw, "sort_channels")
    boundaries = tw.num_blocks - (tw.classifier is None)

    def one_network(net: TransformerWeights) -> TransformerWeights:
        keys = (jnp.square(b.w_b).sum(-2) + jnp.square(b.b_b) for b in net.blocks[:boundaries])
        return _permute_channels(ChannelElement(tuple(jnp.argsort(k) for k in keys)), net)

    for _ in tw.batch_shape:
        one_network = jax.vmap(one_network)
    return one_network(tw)


def canonicalize_all(tw: TransformerWeights) -> TransformerWeights:
    """`sort_channels(canonicalize(tw))`: invariant under LN shifts, FFN scalings and (without ties) the channel
    permutations, equivariant under the paper's group; the function is unchanged."""
    return sort_channels(canonicalize(tw))


# ---------------------------------------------------------------------------------------------------------------
# Inter-block channel permutations
@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ChannelElement:
    """perms[l]: gather index [D] of block l's output channels (the last one also acts on fc1's columns)."""

    perms: tuple


def _permute_channels(g: ChannelElement, tw: TransformerWeights, outputs: bool = True, inputs: bool = True
                      ) -> TransformerWeights:
    """Apply g to the output side (w_b, b_b) and/or the input side (next q, k, v; fc1) of every boundary."""
    blocks = list(tw.blocks)
    for l, perm in enumerate(g.perms):
        if outputs:
            b = blocks[l]
            blocks[l] = b.replace(w_b=jnp.take(b.w_b, perm, axis=-1), b_b=jnp.take(b.b_b, perm, axis=-1))
        if inputs and l + 1 < len(blocks):
            b = blocks[l + 1]
            blocks[l + 1] = b.replace(**{f: jnp.take(getattr(b, f), perm, axis=-2) for f in ("q", "k", "v")})
    classifier = tw.classifier
    if inputs and len(g.perms) == len(blocks):
        classifier = _map_classifier_fc1(tw, lambda w: jnp.take(w, g.perms[-1], axis=-1))
    return TransformerWeights(tuple(blocks), tw.embedding, classifier)


@dataclasses.dataclass(frozen=True)
class ChannelPermutationGroup:
    """Permutations of the model channels between blocks (and before fc1 if `classifier`), as a
    `common.groups.Group` on raw weights (module docstring, 2). ``classifier=False`` (no fc1): the channels
    after the last block stay fixed."""

    spec: TransformerSpec
    classifier: bool = True

    @property
    def name(self) -> str:
        return "inter-block channel permutations"

    @property
    def _boundaries(self) -> int:
        return self.spec.num_blocks - (0 if self.classifier else 1)

    def sample(self, key: jax.Array) -> ChannelElement:
        keys = jax.random.split(key, max(self._boundaries, 1))[: self._boundaries]
        return ChannelElement(tuple(jax.random.permutation(k, self.spec.d_model).astype(jnp.int32) for k in keys))

    def act(self, g: ChannelElement, x: TransformerWeights) -> TransformerWeights:
        _raw(x, "ChannelPermutationGroup.act")
        if self.classifier and x.classifier is None:
            raise ValueError("ChannelPermutationGroup.act: x.classifier is None; build the group with classifier=False")
        return _permute_channels(g, x)

    def inverse(self, g: ChannelElement) -> ChannelElement:
        return ChannelElement(tuple(jnp.argsort(p).astype(jnp.int32) for p in g.perms))

    def compose(self, g: ChannelElement, h: ChannelElement) -> ChannelElement:
        return ChannelElement(tuple(ph[pg] for pg, ph in zip(g.perms, h.perms)))

    def uncoupled_actions(self, key: jax.Array) -> tuple[BrokenAction, ...]:
        """At every boundary: a cyclic shift of block l's output channels without the reader's inputs."""
        shift = jnp.roll(jnp.arange(self.spec.d_model, dtype=jnp.int32), 1)
        moves = []
        for l in range(self._boundaries):
            perms = [jnp.arange(self.spec.d_model, dtype=jnp.int32)] * self._boundaries
            perms[l] = shift
            moves.append(BrokenAction(f"block {l} output channels permuted without the next inputs",
                                      lambda x, g=ChannelElement(tuple(perms)): _permute_channels(g, x, inputs=False)))
        return tuple(moves)


# ---------------------------------------------------------------------------------------------------------------
# LayerNorm shifts
def _shift_like(tw: TransformerWeights, key: jax.Array, scale: float, dtype) -> TransformerWeights:
    """A random element of the LN-shift subspace for weights shaped like `tw` (no batch axes)."""
    keys = iter(jax.random.split(key, 8 * tw.num_blocks + 3))
    draw = lambda shape: scale * jax.random.normal(next(keys), shape, dtype)
    blocks = []
    for b in tw.blocks:
        h, _, dk = b.q.shape
        dv, da = b.v.shape[-1], b.w_a.shape[-1]
        blocks.append(b.replace(
            q=jnp.broadcast_to(draw((h, 1, dk)), b.q.shape), k=jnp.broadcast_to(draw((h, 1, dk)), b.k.shape),
            v=jnp.broadcast_to(draw((h, 1, dv)), b.v.shape), w_a=jnp.broadcast_to(draw((1, da)), b.w_a.shape),
            o=jnp.broadcast_to(draw((h, dv, 1)), b.o.shape), w_b=jnp.broadcast_to(draw((da, 1)), b.w_b.shape),
            b_b=jnp.broadcast_to(draw((1,)), b.b_b.shape), b_a=jnp.zeros_like(b.b_a, dtype)))
    embedding = classifier = None
    if tw.embedding is not None:
        w = tw.embedding.weights[0]
        embedding = WeightSpace((jnp.broadcast_to(draw((1,) + w.shape[1:]), w.shape),),
                                (jnp.broadcast_to(draw((1,)), tw.embedding.biases[0].shape),))
    if tw.classifier is not None:
        c = tw.classifier
        fc1 = jnp.broadcast_to(draw(c.weights[0].shape[:1] + (1,)), c.weights[0].shape)
        classifier = WeightSpace((fc1, jnp.zeros_like(c.weights[1], dtype)),
                                 tuple(jnp.zeros_like(x, dtype) for x in c.biases))
    return TransformerWeights(tuple(blocks), embedding, classifier)


def _add(x: TransformerWeights, t: TransformerWeights) -> TransformerWeights:
    """x + t leaf by leaf (t without batch axes broadcasts over x's)."""
    return jax.tree.map(lambda a, b: a + b.astype(a.dtype), x, t)


@dataclasses.dataclass(frozen=True)
class LayerNormShiftGroup:
    """The LN shifts of weights shaped like `like` (one network; module docstring, 3) as a
    `common.groups.Group` on raw weights: elements are `TransformerWeights` in the shift subspace, drawn
    normal with std `scale`; act adds them (any leading batch axes)."""

    like: TransformerWeights
    scale: float = 1.0

    def __post_init__(self):
        _raw(self.like, "LayerNormShiftGroup")
        if self.like.batch_shape:
            raise ValueError(f"LayerNormShiftGroup: like must be one network, got batch axes {self.like.batch_shape}")

    @property
    def name(self) -> str:
        return "LayerNorm shifts"

    def sample(self, key: jax.Array) -> TransformerWeights:
        return _shift_like(self.like, key, self.scale, jnp.zeros(()).dtype)

    def act(self, g: TransformerWeights, x: TransformerWeights) -> TransformerWeights:
        _raw(x, "LayerNormShiftGroup.act")
        return _add(x, g)

    def inverse(self, g: TransformerWeights) -> TransformerWeights:
        return jax.tree.map(jnp.negative, g)

    def compose(self, g: TransformerWeights, h: TransformerWeights) -> TransformerWeights:
        return _add(g, h)

    def uncoupled_actions(self, key: jax.Array) -> tuple[BrokenAction, ...]:
        """Shifts along the wrong axis (varying along D): u 1^T on q's and w_a's rows, 1 u^T on o's columns;
        and a shift of b_a, which feeds a ReLU, not a LayerNorm."""
        d = self.like.blocks[0].b_b.shape[-1]
        u = jax.random.normal(key, (d,), jnp.zeros(()).dtype) * self.scale

        def move(field, shift):
            add = lambda b: b.replace(**{field: getattr(b, field) + shift.astype(getattr(b, field).dtype)})
            return lambda x: x.replace(blocks=tuple(add(b) for b in x.blocks))

        return (BrokenAction("q rows shifted by u 1^T (varying along D)", move("q", u[:, None])),
                BrokenAction("w_a rows shifted by u 1^T (varying along D)", move("w_a", u[:, None])),
                BrokenAction("o columns shifted by 1 u^T (varying along D)", move("o", u)),
                BrokenAction("b_a shifted (it feeds a ReLU, not a LayerNorm)",
                             move("b_a", jnp.full((), self.scale, u.dtype))))


# ---------------------------------------------------------------------------------------------------------------
# The extended group
@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ExtendedElement:
    """(paper-group element with FFN scales, channel permutations, LN shift): acts as x -> h.x + shift."""

    base: groups.TransformerElement
    channels: ChannelElement
    shift: TransformerWeights


@dataclasses.dataclass(frozen=True)
class ExtendedTransformerGroup:
    """Paper group x FFN scaling x inter-block channel permutations, with the LayerNorm shifts, as a
    `common.groups.Group` on raw weights shaped like `like` (one network with its classifier; the embedding
    optional). Ranges as in `groups.sample`; `shift_scale` is the std of the sampled shifts."""

    like: TransformerWeights
    cond_range: tuple[float, float] = (0.5, 2.0)
    scale_range: tuple[float, float] = (0.5, 2.0)
    shift_scale: float = 1.0

    def __post_init__(self):
        _raw(self.like, "ExtendedTransformerGroup")
        if self.like.classifier is None or self.like.batch_shape:
            raise ValueError("ExtendedTransformerGroup: like must be one network (no batch axes) with a classifier")

    @property
    def _factors(self):
        spec = TransformerSpec.from_weights(self.like)
        return (groups.TransformerGroup(spec, True, self.cond_range, self.scale_range), ChannelPermutationGroup(spec),
                LayerNormShiftGroup(self.like, self.shift_scale))

    @property
    def name(self) -> str:
        return "extended transformer group (FFN scaling, channel permutations, LayerNorm shifts)"

    def _linear(self, g: ExtendedElement, x: TransformerWeights) -> TransformerWeights:
        base, channels, _ = self._factors
        return channels.act(g.channels, base.act(g.base, x))

    def sample(self, key: jax.Array) -> ExtendedElement:
        keys = jax.random.split(key, 3)
        return ExtendedElement(*(f.sample(k) for f, k in zip(self._factors, keys)))

    def act(self, g: ExtendedElement, x: TransformerWeights) -> TransformerWeights:
        _raw(x, "ExtendedTransformerGroup.act")
        return _add(self._linear(g, x), g.shift)

    def inverse(self, g: ExtendedElement) -> ExtendedElement:
        base, channels, _ = self._factors
        lin = ExtendedElement(base.inverse(g.base), channels.inverse(g.channels), g.shift)
        return dataclasses.replace(lin, shift=jax.tree.map(jnp.negative, self._linear(lin, g.shift)))

    def compose(self, g: ExtendedElement, h: ExtendedElement) -> ExtendedElement:
        base, channels, _ = self._factors
        return ExtendedElement(base.compose(g.base, h.base), channels.compose(g.channels, h.channels),
                               _add(self._linear(g, h.shift), g.shift))

    def uncoupled_actions(self, key: jax.Array) -> tuple[BrokenAction, ...]:
        """Every factor's uncoupled actions."""
        return tuple(a for f, k in zip(self._factors, jax.random.split(key, 3)) for a in f.uncoupled_actions(k))


def move_each(tw: TransformerWeights, key: jax.Array, *, scale_range: tuple[float, float] = (1.0, 1.0),
              cond_range: tuple[float, float] = (0.5, 2.0), shift_scale: float = 1.0) -> TransformerWeights:
    """Every network of a batch moved by its own random element of `ExtendedTransformerGroup`.

    The functions the networks compute are unchanged (exact symmetries), so their accuracies are too: the test
    sets of a robustness study (FFN scalings log-uniform on ``scale_range``, e.g. [1, 10^k]; GL elements with
    singular values log-uniform on ``cond_range``; head, FFN and channel permutations; LayerNorm shifts of std
    ``shift_scale``).

    Args:
      tw: raw weights of R networks with their classifier, leaves ``[R, ...]``; key: PRNG key (network i uses
        ``fold_in(key, i)``).
    Returns:
      the moved weights, same shapes and dtypes.
    """
    _raw(tw, "move_each")
    if len(tw.batch_shape) != 1:
        raise ValueError(f"move_each: tw must hold one batch axis [R, ...], got batch shape {tw.batch_shape}")
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(tw.batch_shape[0]))
    return _move_batch(keys, tw, tuple(cond_range), tuple(scale_range), float(shift_scale))


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _move_batch(keys, tw, cond_range, scale_range, shift_scale):
    """`move_each`'s compiled body (one program per shapes and ranges)."""
    group = ExtendedTransformerGroup(jax.tree.map(lambda a: a[0], tw), cond_range, scale_range, shift_scale)
    return jax.vmap(lambda k, x: group.act(group.sample(k), x))(keys, tw)
