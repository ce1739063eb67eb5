"""Tree systems of lines: the `TreeSystem` pytree, its parametrisation and its samplers.

A line is a pair (source x_l, unit direction theta_l); its points are x_l + t theta_l. A tree system is a set
of k lines joined into a tree:

* "chain": line i+1's source lies on line i (x_{i+1} = x_i + t_{i+1} theta_i); the root is line 1's source.
* "concurrent": every line starts at one root point r (the trees of Db-TSW).

`SphericalTrees` are the trees of the spherical TSW (docs/tsw_sl.md §11): a root on the unit sphere and k unit
tangent directions at it, each spanning a half great circle from the root.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike, DTypeLike

KINDS = ("chain", "concurrent")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TreeSystem:
    """L tree systems of k lines each in R^d (any leading batch axes allowed).

    Attributes:
      sources: [..., L, k, d] source point of every line.
      directions: [..., L, k, d] unit direction of every line.
      kind: static, "chain" or "concurrent".
    """

    sources: jax.Array
    directions: jax.Array
    kind: str = dataclasses.field(default="chain", metadata=dict(static=True))

    @property
    def n_trees(self) -> int:
        return self.sources.shape[-3]

    @property
    def n_lines(self) -> int:
        return self.sources.shape[-2]

    @property
    def dim(self) -> int:
        return self.sources.shape[-1]

    @classmethod
    def from_params(cls, root: jax.Array, t: jax.Array | None, directions: jax.Array,
                    kind: str = "chain") -> TreeSystem:
        """Builds canonical trees from free parameters (directions are normalised here).

        Args:
          root: [..., L, d] root point (chain: line 1's source; concurrent: the common source).
          t: [..., L, k-1] coordinate of line i+1's source on line i (chain); ignored (may be None) for
            "concurrent".
          directions: [..., L, k, d] directions, any non-zero norm.
          kind: "chain" or "concurrent".
        Returns:
          TreeSystem with sources [..., L, k, d] and unit directions [..., L, k, d].
        """
        _check_kind(kind)
        theta = normalize(directions)
        if kind == "concurrent":
            return cls(jnp.broadcast_to(root[..., None, :], theta.shape), theta, kind)
        steps = t[..., None] * theta[..., :-1, :]
        offsets = jnp.concatenate([jnp.zeros_like(theta[..., :1, :]), jnp.cumsum(steps, axis=-2)], axis=-2)
        return cls(root[..., None, :] + offsets, theta, kind)

    def params(self) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Inverse of `from_params`: (root [..., L, d], t [..., L, k-1], directions [..., L, k, d]).

        For "concurrent" trees t is all zeros.
        """
        theta = self.directions
        t = jnp.einsum("...d,...d->...", self.sources[..., 1:, :] - self.sources[..., :-1, :], theta[..., :-1, :])
        if self.kind == "concurrent":
            t = jnp.zeros_like(t)
        return self.sources[..., 0, :], t, theta


def normalize(v: jax.Array, axis: int = -1) -> jax.Array:
    """Unit vectors along `axis` (zero vectors stay finite). v: [..., d] -> [..., d]."""
    norm = jnp.sqrt(jnp.sum(v * v, axis=axis, keepdims=True))
    return v / jnp.maximum(norm, jnp.finfo(v.dtype).tiny)


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}; got {kind!r}")


def check_count(name: str, value: int) -> None:
    """ValueError unless `value` is a positive Python int (a static count)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive Python int (static under jit); got {value!r}")


def random_directions(key: jax.Array, shape: tuple[int, ...], dim: int, dtype: DTypeLike = jnp.float32,
                      orthogonal: bool = False) -> jax.Array:
    """Directions uniform on S^{d-1} (normalised Gaussians).

    Args:
      key: PRNG key.
      shape: leading shape, e.g. (L, k) or (n_projections,).
      dim: d.
      orthogonal: if True, the last axis of `shape` (k <= d) holds orthonormal directions (a Haar-random
        k-frame per leading index, by QR with sign correction).
    Returns:
      [*shape, d] unit vectors.
    """
    shape = tuple(shape)
    if not orthogonal:
        return normalize(jax.random.normal(key, shape + (dim,), dtype))
    k = shape[-1]
    if k > dim:
        raise ValueError(f"orthogonal directions need n_lines <= dim; got n_lines={k}, dim={dim}")
    g = jax.random.normal(key, shape[:-1] + (dim, k), dtype)
    q, r = jnp.linalg.qr(g)
    signs = jnp.sign(jnp.diagonal(r, axis1=-2, axis2=-1))
    q = q * jnp.where(signs == 0, 1, signs)[..., None, :]
    return jnp.swapaxes(q, -1, -2)


def sample_trees(key: jax.Array, n_trees: int, n_lines: int, dim: int, kind: str = "chain", *,
                 root_mean: ArrayLike = 0.0, root_std: float | None = None, root_box: float | None = None,
                 t_range: tuple[float, float] = (-1.0, 1.0), orthogonal: bool = False,
                 dtype: DTypeLike = jnp.float32) -> TreeSystem:
    """Samples L i.i.d. tree systems of k lines in R^d.

    Root law: x_root = root_mean + noise, noise ~ N(0, root_std^2 I) if `root_std` is given, or
    U([-root_box, root_box]^d) if `root_box` is given. Defaults (both None): "chain" uses the TSW-SL paper's
    U([-1, 1]^d) (Alg. 1; the authors' code too); "concurrent" uses Db-TSW's N(root_mean, 0.1^2 I). The
    experiments place the root near the data mean (pass `root_mean`); a root far from the data makes the
    "distance" splitting almost uniform, and only then is the tree structure informative (with a uniform
    splitting TSW-SL equals sliced W1 whatever the sources).

    Chain trees: x_{i+1} = x_i + t_{i+1} theta_i with t ~ U(t_range); the paper uses t_range = (-1, 1) (the
    default), the authors' code (-0.1, 0.1). Directions are normalised Gaussians (uniform on S^{d-1}), or an
    orthonormal k-frame per tree when `orthogonal` (k <= d, "Db-TSW-orth").

    Args:
      key: PRNG key.
      n_trees: L (static int).  n_lines: k (static int).  dim: d (static int).
      kind: "chain" or "concurrent".
      root_mean: scalar, [d] or [L, d].
    Returns:
      TreeSystem with sources and directions [L, k, d].
    """
    _check_kind(kind)
    for name, value in (("n_trees", n_trees), ("n_lines", n_lines), ("dim", dim)):
        check_count(name, value)
    if root_std is not None and root_box is not None:
        raise ValueError(f"give at most one of root_std and root_box; got root_std={root_std}, "
                         f"root_box={root_box}")
    lo, hi = t_range
    if all(isinstance(v, (int, float)) for v in t_range) and not lo <= hi:
        raise ValueError(f"t_range must be (low, high) with low <= high; got {t_range}")
    root_mean = jnp.asarray(root_mean, dtype)
    if root_mean.shape not in ((), (dim,), (n_trees, dim)):
        raise ValueError(f"root_mean must have shape (), ({dim},) or ({n_trees}, {dim}); got {root_mean.shape}")
    if root_std is None and root_box is None:
        root_box, root_std = (1.0, None) if kind == "chain" else (None, 0.1)
    law, scale = ("normal", root_std) if root_std is not None else ("uniform", root_box)
    return _sample(key, root_mean, scale, lo, hi, n_trees=n_trees, n_lines=n_lines, dim=dim, kind=kind, law=law,
                   orthogonal=orthogonal, dtype=dtype)


@functools.partial(jax.jit, static_argnames=("n_trees", "n_lines", "dim", "kind", "law", "orthogonal", "dtype"))
def _sample(key, root_mean, scale, lo, hi, *, n_trees, n_lines, dim, kind, law, orthogonal, dtype):
    k_root, k_dir, k_t = jax.random.split(key, 3)
    if law == "normal":
        noise = scale * jax.random.normal(k_root, (n_trees, dim), dtype)
    else:
        noise = jax.random.uniform(k_root, (n_trees, dim), dtype, -scale, scale)
    theta = random_directions(k_dir, (n_trees, n_lines), dim, dtype, orthogonal)
    t = jax.random.uniform(k_t, (n_trees, n_lines - 1), dtype, lo, hi)
    return TreeSystem.from_params(root_mean + noise, t, theta, kind)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SphericalTrees:
    """L spherical trees of k edges on the unit sphere of R^D (any leading batch axes allowed).

    Attributes:
      roots: [..., L, D] unit roots r.
      directions: [..., L, k, D] unit tangent directions y_l at the roots (<y_l, r> = 0).
    """

    roots: jax.Array
    directions: jax.Array

    @property
    def n_trees(self) -> int:
        return self.roots.shape[-2]


def sample_spherical_trees(key: jax.Array, n_trees: int, n_lines: int, dim: int,
                           dtype: DTypeLike = jnp.float32) -> SphericalTrees:
    """Samples L spherical trees: roots uniform on S^{D-1}, and k directions uniform on the unit sphere of the
    tangent space at each root (normalised Gaussians with their component along the root removed).

    Args:
      key: PRNG key; n_trees: L; n_lines: k; dim: D, the dimension of the points (static ints, D >= 2).
      dtype: floating dtype of the trees.
    Returns:
      SphericalTrees with roots [L, D] and directions [L, k, D].
    """
    for name, value in (("n_trees", n_trees), ("n_lines", n_lines), ("dim", dim)):
        check_count(name, value)
    if dim < 2:
        raise ValueError(f"dim must be >= 2 (points on the sphere S^(dim-1) of R^dim); got {dim}")
    return _sample_spherical(key, n_trees=n_trees, n_lines=n_lines, dim=dim, dtype=dtype)


@functools.partial(jax.jit, static_argnames=("n_trees", "n_lines", "dim", "dtype"))
def _sample_spherical(key, *, n_trees, n_lines, dim, dtype):
    k_root, k_dir = jax.random.split(key)
    roots = normalize(jax.random.normal(k_root, (n_trees, dim), dtype))
    g = jax.random.normal(k_dir, (n_trees, n_lines, dim), dtype)
    tangent = g - jnp.einsum("lkd,ld->lk", g, roots)[..., None] * roots[:, None, :]
    return SphericalTrees(roots, normalize(tangent))
