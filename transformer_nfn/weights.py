"""Weight space of the zoo transformer: `BlockWeights`, `TransformerWeights` and the static `TransformerSpec`.

Right-multiplying convention (tokens are rows, X @ W). Per encoder block:

    q, k: [..., h, D, Dk]   v: [..., h, D, Dv]   o: [..., h, Dv, D]
    w_a:  [..., D, DA]      b_a: [..., DA]       w_b: [..., DA, D]   b_b: [..., D]

NFN features (static ``is_features=True``) add a trailing channel axis C to every block leaf, the same C on
all eight fields. The embedding (patch embedding conv [D, c_in, p, p]) and the classifier (fc1 [D_hidden, D],
fc2 [n_classes, D_hidden]) are optional `common.WeightSpace`s in PyTorch orientation (out, in); the
transformer group leaves them untouched.
"""
from __future__ import annotations

import dataclasses
import math

import jax

from common.weight_space import WeightSpace

FIELDS = ("q", "k", "v", "o", "w_a", "b_a", "w_b", "b_b")


def _shape(x) -> tuple[int, ...] | None:
    """Shape of an array-like leaf; None for the placeholders JAX puts in pytrees (None, object(), ArgInfo, ...)."""
    return tuple(x.shape) if hasattr(x, "shape") and hasattr(x, "ndim") else None


@dataclasses.dataclass(frozen=True)
class TransformerSpec:
    """Static structure of a stack of encoder blocks: number of blocks, h, D, Dk, Dv, DA.

    Hashable: usable as a static argument or as static pytree metadata.
    """

    num_blocks: int
    num_heads: int
    d_model: int
    d_k: int
    d_v: int
    d_ffn: int

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if int(value) != value or value < 1:
                raise ValueError(f"TransformerSpec: {f.name} must be a positive integer, got {value!r}")
            object.__setattr__(self, f.name, int(value))

    @classmethod
    def from_weights(cls, tw: "TransformerWeights") -> "TransformerSpec":
        """Spec read off a `TransformerWeights` (raw weights or features, any leading batch axes)."""
        block = tw.blocks[0]
        c = 1 if block.is_features else 0
        q, v, w_a = block.q.shape, block.v.shape, block.w_a.shape
        n = len(q) - c
        return cls(len(tw.blocks), q[n - 3], q[n - 2], q[n - 1], v[n - 1], w_a[len(w_a) - c - 1])

    def check(self, tw: "TransformerWeights", name: str) -> None:
        """ValueError naming `name` and every differing size unless `tw` (raw or features) has this spec.

        Layers and models are built for one spec: their coefficients would accept another head layout of the
        same D (their shapes depend only on D and the number of blocks), and silently give the output of a
        different network family (docs/input_policy.md).
        """
        got = TransformerSpec.from_weights(tw)
        if got != self:
            diff = ", ".join(f"{f.name}={getattr(got, f.name)} (expected {getattr(self, f.name)})"
                             for f in dataclasses.fields(self) if getattr(got, f.name) != getattr(self, f.name))
            raise ValueError(f"{name}: the weights have {diff}; built for {self}, got blocks[0] q of shape "
                             f"{tuple(tw.blocks[0].q.shape)} and w_a {tuple(tw.blocks[0].w_a.shape)}")

    def field_shapes(self, channels: int | None = None) -> dict[str, tuple[int, ...]]:
        """Shapes of one block's eight leaves (no batch axes); a trailing ``channels`` axis if given."""
        h, d, dk, dv, da = self.num_heads, self.d_model, self.d_k, self.d_v, self.d_ffn
        shapes = dict(
            q=(h, d, dk), k=(h, d, dk), v=(h, d, dv), o=(h, dv, d), w_a=(d, da), b_a=(da,), w_b=(da, d), b_b=(d,)
        )
        return {n: s + ((channels,) if channels is not None else ()) for n, s in shapes.items()}

    @property
    def params_per_block(self) -> int:
        """Number of scalars in one block: 2 h D Dk + 2 h D Dv + 2 D DA + DA + D."""
        return sum(math.prod(s) for s in self.field_shapes().values())


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class BlockWeights:
    """Weights (or NFN features) of one encoder block; see the module docstring for shapes.

    Validated on construction when the leaves are arrays: ValueError naming the field and the shapes.
    """

    q: jax.Array
    k: jax.Array
    v: jax.Array
    o: jax.Array
    w_a: jax.Array
    b_a: jax.Array
    w_b: jax.Array
    b_b: jax.Array
    is_features: bool = dataclasses.field(default=False, metadata=dict(static=True))

    def __post_init__(self):
        if all(_shape(getattr(self, f)) is not None for f in FIELDS):
            self.validate()

    @property
    def batch_shape(self) -> tuple[int, ...]:
        """Leading batch axes (those of ``b_b`` before [D] or [D, C])."""
        return tuple(self.b_b.shape[: self.b_b.ndim - (2 if self.is_features else 1)])

    @property
    def channels(self) -> int | None:
        """Feature channels C, or None for raw weights."""
        return self.b_b.shape[-1] if self.is_features else None

    def validate(self, name: str = "BlockWeights") -> None:
        """Raise ValueError naming `name`, the field and the shapes if the eight leaves are inconsistent."""
        kind = "features [..., D, C]" if self.is_features else "weights [..., D]"
        if self.b_b.ndim < (2 if self.is_features else 1):
            raise ValueError(f"{name}: field b_b has shape {tuple(self.b_b.shape)}; expected {kind}")
        c = 1 if self.is_features else 0
        n = self.q.ndim - 3 - c
        if n < 0:
            raise ValueError(f"{name}: field q has shape {tuple(self.q.shape)}; expected [..., h, D, Dk{', C' if c else ''}]")
        spec = TransformerSpec(
            1, self.q.shape[n], self.q.shape[n + 1], self.q.shape[n + 2], self.v.shape[-1 - c], self.w_a.shape[-1 - c]
        )
        expected = spec.field_shapes(self.channels)
        batch = self.batch_shape
        for f in FIELDS:
            got = tuple(getattr(self, f).shape)
            want = batch + expected[f]
            if got != want:
                raise ValueError(
                    f"{name}: field {f} has shape {got} but expected {want} (batch {batch}, h={spec.num_heads}, "
                    f"D={spec.d_model}, Dk={spec.d_k}, Dv={spec.d_v}, DA={spec.d_ffn}"
                    f"{f', C={self.channels}' if c else ''}; read from q {tuple(self.q.shape)}, "
                    f"v {tuple(self.v.shape)}, w_a {tuple(self.w_a.shape)}, b_b {tuple(self.b_b.shape)})"
                )

    def to_features(self) -> "BlockWeights":
        """Add a trailing channel axis C = 1 to every leaf."""
        if self.is_features:
            raise ValueError("BlockWeights.to_features: this block already holds features")
        return BlockWeights(*(getattr(self, f)[..., None] for f in FIELDS), is_features=True)

    def replace(self, **fields) -> "BlockWeights":
        """A copy with some leaves replaced (validated)."""
        return dataclasses.replace(self, **fields)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TransformerWeights:
    """Blocks of a zoo transformer plus its optional embedding and classifier `WeightSpace`s.

    All blocks share one spec and one batch shape; the embedding must output D channels and the classifier
    take D inputs. ``is_features`` is static and read from the blocks.
    """

    blocks: tuple
    embedding: WeightSpace | None = None
    classifier: WeightSpace | None = None

    def __post_init__(self):
        object.__setattr__(self, "blocks", tuple(self.blocks))
        if not self.blocks:
            raise ValueError("TransformerWeights: blocks is empty; a transformer needs at least one block")
        for i, b in enumerate(self.blocks):
            if not isinstance(b, BlockWeights):
                raise ValueError(f"TransformerWeights: blocks[{i}] is a {type(b).__name__}, expected BlockWeights")
        leaves = [getattr(b, f) for b in self.blocks for f in FIELDS]
        if all(_shape(x) is not None for x in leaves):
            self.validate()

    @property
    def is_features(self) -> bool:
        return self.blocks[0].is_features

    @property
    def batch_shape(self) -> tuple[int, ...]:
        return self.blocks[0].batch_shape

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def validate(self) -> None:
        """Raise ValueError naming the block, field and shapes on any inconsistency between blocks and parts."""
        first = self.blocks[0]
        for i, b in enumerate(self.blocks):
            b.validate(f"TransformerWeights: blocks[{i}]")
            if b.is_features != first.is_features:
                raise ValueError(
                    f"TransformerWeights: blocks[{i}] has is_features={b.is_features} but blocks[0] has {first.is_features}"
                )
            for f in FIELDS:
                got, want = tuple(getattr(b, f).shape), tuple(getattr(first, f).shape)
                if got != want:
                    raise ValueError(
                        f"TransformerWeights: blocks[{i}] field {f} has shape {got} but blocks[0] has {want}; "
                        "all blocks must share h, D, Dk, Dv, DA, channels and batch axes"
                    )
        d = first.b_b.shape[first.b_b.ndim - (2 if first.is_features else 1)]
        for part in ("embedding", "classifier"):
            ws = getattr(self, part)
            if ws is None or any(_shape(x) is None for x in ws.weights + ws.biases):
                continue
            if not isinstance(ws, WeightSpace):
                raise ValueError(f"TransformerWeights: {part} is a {type(ws).__name__}, expected common.WeightSpace or None")
            if ws.is_features != first.is_features:
                raise ValueError(f"TransformerWeights: {part} has is_features={ws.is_features} but the blocks {first.is_features}")
            if ws.batch_shape != first.batch_shape:
                raise ValueError(
                    f"TransformerWeights: {part} has batch axes {ws.batch_shape} but the blocks {first.batch_shape}"
                )
            layer = 0 if part == "classifier" else ws.num_layers - 1
            w = ws.weights[layer]
            axis = ws.out_axis(layer) + (1 if part == "classifier" else 0)
            if w.shape[axis] != d:
                role = "take D inputs" if part == "classifier" else "output D channels"
                raise ValueError(
                    f"TransformerWeights: {part}.weights[{layer}] has shape {tuple(w.shape)} but must {role}, "
                    f"D = {d} (blocks[0] b_b {tuple(first.b_b.shape)})"
                )

    def to_features(self) -> "TransformerWeights":
        """Raw weights -> features: C = 1 on every block leaf; embedding and classifier via `WeightSpace.to_features`."""
        if self.is_features:
            raise ValueError("TransformerWeights.to_features: this TransformerWeights already holds features")
        return TransformerWeights(
            tuple(b.to_features() for b in self.blocks),
            None if self.embedding is None else self.embedding.to_features(),
            None if self.classifier is None else self.classifier.to_features(),
        )

    def replace(self, **fields) -> "TransformerWeights":
        """A copy with ``blocks``, ``embedding`` or ``classifier`` replaced (validated)."""
        return dataclasses.replace(self, **fields)
