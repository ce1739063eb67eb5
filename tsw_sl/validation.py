"""Input checks shared by the distances: shapes always, values (finite, non-negative, summing to one) when
the inputs are concrete (outside jit/grad tracing, where values cannot be inspected)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike, DTypeLike

from common import checks
from tsw_sl.splitting import SplittingMap
from tsw_sl.trees import KINDS, SphericalTrees, TreeSystem, check_count

SUM_TOL = 1e-5
SPLITTINGS = ("uniform", "distance")


def _concrete(v: ArrayLike) -> np.ndarray | None:
    return None if isinstance(v, jax.core.Tracer) else np.asarray(v)


def _float(name: str, v: ArrayLike) -> jax.Array:
    """v as a real floating array of at least float32: integers and bools become the default float dtype,
    float16 / bfloat16 become float32 (sorting and prefix sums of masses in half precision lose most digits;
    docs/input_policy.md)."""
    v = jnp.asarray(v)
    if jnp.issubdtype(v.dtype, jnp.complexfloating):
        raise ValueError(f"{name} must be real; got dtype {v.dtype}")
    return checks.at_least_float32(v)


def _finite(name: str, v: jax.Array) -> None:
    c = _concrete(v)
    if c is not None and not np.all(np.isfinite(c)):
        raise ValueError(f"{name} contains non-finite values (NaN or inf); shape {v.shape}")


def points(x: ArrayLike, y: ArrayLike) -> tuple[jax.Array, jax.Array]:
    """Checks supports x: [..., n, d], y: [..., m, d] (same batch shape and d); returns float arrays."""
    x, y = _float("x", x), _float("y", y)
    for name, v in (("x", x), ("y", y)):
        if v.ndim < 2:
            raise ValueError(f"{name} must have shape [..., n_points, d]; got shape {v.shape}")
        if v.shape[-2] == 0 or v.shape[-1] == 0:
            raise ValueError(f"{name} is empty: shape {v.shape}")
    if x.shape[-1] != y.shape[-1]:
        raise ValueError(f"x and y must have the same dimension d; got x {x.shape}, y {y.shape}")
    if x.shape[:-2] != y.shape[:-2]:
        raise ValueError(f"x and y must have the same leading batch shape; got x {x.shape}, y {y.shape}")
    dtype = jnp.result_type(x, y)
    x, y = x.astype(dtype), y.astype(dtype)
    _finite("x", x)
    _finite("y", y)
    return x, y


def weights(name: str, w: ArrayLike | None, pts: jax.Array, normalize: bool = False) -> jax.Array:
    """Checks weights w: [..., n] of supports pts: [..., n, d]; None -> uniform. Returns float weights.

    Raises ValueError on a shape mismatch, non-finite or negative entries, or (unless `normalize`) sums
    farther than max(1e-5, 2 eps of w's dtype) from one, and TypeError when w is a PRNG key (a key passed by
    position in the old `f(x, y, key, ...)` order). With `normalize`, w / w.sum(-1) is returned (also under jit).
    """
    if isinstance(w, jax.Array) and jax.dtypes.issubdtype(w.dtype, jax.dtypes.prng_key):
        raise TypeError(f"{name} is a PRNG key: only x, y, a, b are positional; pass the key as key=key")
    if w is None:
        n = pts.shape[-2]
        return jnp.full(pts.shape[:-1], 1.0 / n, pts.dtype)
    given = jnp.asarray(w).dtype
    eps = float(jnp.finfo(given).eps) if jnp.issubdtype(given, jnp.floating) else 0.0
    w = _float(name, w).astype(pts.dtype)
    if w.shape != pts.shape[:-1]:
        raise ValueError(f"{name} must have shape {pts.shape[:-1]} (one weight per support point); "
                         f"got {w.shape} for points of shape {pts.shape}")
    c = _concrete(w)
    if c is not None:
        if not np.all(np.isfinite(c)):
            raise ValueError(f"{name} contains non-finite values; shape {w.shape}")
        if np.any(c < 0):
            raise ValueError(f"{name} must be non-negative; min {c.min():.3g}, shape {w.shape}")
        sums = c.astype(np.float64).sum(-1)
        if normalize and np.any(sums <= 0):
            raise ValueError(f"{name} must have a positive total to be normalised; shape {w.shape}")
        tol = max(SUM_TOL, 2 * eps)  # the given dtype's: 1/n rounds to within eps/2 in float16
        if not normalize and np.any(np.abs(sums - 1.0) > tol):
            raise ValueError(f"{name} must sum to 1 (tolerance {tol:.3g}); got sums "
                             f"{np.ravel(sums)[:4]} for shape {w.shape}; pass normalize_weights=True to rescale")
    half = jnp.issubdtype(given, jnp.floating) and jnp.finfo(given).bits < 32
    if normalize or half:  # half-precision weights sum to 1 only to half precision
        w = w / jnp.sum(w, axis=-1, keepdims=True)
    return w


def measures(x: ArrayLike, y: ArrayLike, a: ArrayLike | None, b: ArrayLike | None,
             normalize: bool = False) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Checks a pair of discrete measures; returns (x, y, a, b) as float arrays (a, b default uniform)."""
    x, y = points(x, y)
    return x, y, weights("a", a, x, normalize), weights("b", b, y, normalize)


def uniform_equal(x: ArrayLike, y: ArrayLike, a: ArrayLike | None, b: ArrayLike | None) -> bool:
    """Static flag: True when both weights are left at their uniform default and n == m (raw inputs, before
    `measures`), the case in which 1-D transport pairs the i-th sorted points."""
    return a is None and b is None and np.shape(x)[-2:-1] == np.shape(y)[-2:-1]


def trees(t: TreeSystem, x: jax.Array) -> None:
    """Checks a TreeSystem against supports x: [..., n, d] (trees unbatched or with x's batch axes)."""
    if not isinstance(t, TreeSystem):
        raise ValueError(f"trees must be a tsw_sl.TreeSystem; got {type(t).__name__}")
    if t.kind not in KINDS:
        raise ValueError(f"trees.kind must be one of {KINDS}; got {t.kind!r}")
    s, th = t.sources, t.directions
    if s.shape != th.shape or s.ndim < 3:
        raise ValueError(f"trees.sources and trees.directions must both have shape [..., L, k, d]; "
                         f"got {s.shape} and {th.shape}")
    _against_points(x, "d", ("sources", s), ("directions", th), s.shape[:-3])


def spherical_trees(trees: SphericalTrees, x: jax.Array) -> None:
    """Checks SphericalTrees against unit points x: [..., n, D] (trees unbatched or with x's batch axes)."""
    if not isinstance(trees, SphericalTrees):
        raise ValueError(f"trees must be a tsw_sl.SphericalTrees (sample_spherical_trees); got {type(trees).__name__}")
    r, ys = trees.roots, trees.directions
    if r.ndim < 2 or ys.ndim != r.ndim + 1 or ys.shape[:-2] != r.shape[:-1] or ys.shape[-1] != r.shape[-1]:
        raise ValueError(f"trees.roots must have shape [..., L, D] and trees.directions [..., L, k, D]; got "
                         f"{r.shape} and {ys.shape}")
    _against_points(x, "D", ("roots", r), ("directions", ys), r.shape[:-2])


def _against_points(x: jax.Array, dim_name: str, first: tuple[str, jax.Array], lines: tuple[str, jax.Array],
                    lead: tuple[int, ...]) -> None:
    """Checks shared by every tree system against points x [..., n, dim]: ``first`` (name, array [..., dim]) has
    the points' dimension, ``lines`` (name, array [..., L, k, dim]) has trees and lines, the trees' leading axes
    ``lead`` are () or the points' batch shape, and both arrays are finite (when concrete)."""
    (first_name, a), (lines_name, b) = first, lines
    if a.shape[-1] != x.shape[-1]:
        raise ValueError(f"trees have dimension {a.shape[-1]} but the points have {dim_name} = {x.shape[-1]}: "
                         f"trees.{first_name} {a.shape}, x {x.shape}")
    if 0 in b.shape[-3:-1]:
        raise ValueError(f"trees are empty: {lines_name} shape {b.shape}")
    if lead not in ((), x.shape[:-2]):
        raise ValueError(f"trees' leading axes {lead} must be () or the points' batch shape {x.shape[:-2]}")
    _finite(f"trees.{first_name}", a)
    _finite(f"trees.{lines_name}", b)


def sphere_tolerance(dtype: DTypeLike) -> float:
    """How far from 1 a point's norm may be: max(1e-5, 100 eps of the dtype)."""
    return max(1e-5, 100 * float(jnp.finfo(dtype).eps))


def on_sphere(name: str, v: jax.Array) -> None:
    """Checks points v: [..., n, D] on the unit sphere: D >= 2 and, when concrete, every norm within
    `sphere_tolerance` of 1."""
    if v.shape[-1] < 2:
        raise ValueError(f"{name} must have D >= 2 coordinates (points on the sphere of R^D); got shape {v.shape}")
    c = _concrete(v)
    if c is None:
        return
    err = np.abs(np.linalg.norm(c.astype(np.float64), axis=-1) - 1.0)
    tol = sphere_tolerance(v.dtype)
    if np.any(err > tol):
        raise ValueError(f"{name} must lie on the unit sphere (| |x| - 1 | <= {tol:.1e}); the largest deviation is "
                         f"{err.max():.3g} for shape {v.shape}")


def count(name: str, value: int) -> int:
    """Checks a static count (n_projections, ...): a positive Python int. Returns it."""
    check_count(name, value)
    return value


def flag(name: str, value: bool) -> bool:
    """Checks a static boolean option (a Python or numpy bool, not a traced value); returns it as a bool."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be a Python bool (static under jit); got {value!r}")
    return bool(value)


def power(p: float) -> float:
    """Checks the exponent: a static, finite Python number p >= 1; returns it as a float."""
    if isinstance(p, jax.core.Tracer) or not np.isscalar(p) or not 1 <= p < np.inf:
        raise ValueError(f"p must be a finite Python number >= 1 (static under jit); got {p!r}")
    return float(p)


def scalar(name: str, value: ArrayLike, positive: bool = False) -> ArrayLike:
    """Checks a real scalar option that may be traced (delta, lr): when concrete, finite (and > 0 if
    `positive`). Returns it unchanged."""
    c = _concrete(value)
    if c is None:
        return value
    if c.ndim != 0 or not np.issubdtype(c.dtype, np.number) or np.iscomplexobj(c):
        raise ValueError(f"{name} must be a real scalar; got {value!r}")
    if not np.isfinite(c) or (positive and not c > 0):
        raise ValueError(f"{name} must be a finite{' positive' if positive else ''} number; got {value!r}")
    return value


def projections(v: ArrayLike, x: jax.Array, per_slice: tuple[int, ...] = ()) -> jax.Array:
    """Checks given slices v: [P, *per_slice, d] (P >= 1, finite when concrete) for supports x: [..., n, d]:
    directions [P, d] (per_slice = ()), or great circles' planes [P, 2, d] (per_slice = (2,))."""
    v = _float("projections", v).astype(x.dtype)
    shape = tuple(per_slice) + (x.shape[-1],)
    if v.shape[1:] != shape or v.shape[0] == 0:
        raise ValueError(f"projections must have shape [P, {', '.join(map(str, shape))}] with P >= 1; got {v.shape} "
                         f"for x {x.shape}")
    _finite("projections", v)
    return v


def splitting(s: SplittingMap) -> SplittingMap:
    """Checks a splitting map: "uniform", "distance" or a callable (z [N, d], trees) -> [L or 1, k, N]."""
    if not (callable(s) or (isinstance(s, str) and s in SPLITTINGS)):
        raise ValueError(f"splitting must be one of {SPLITTINGS} or a callable; got {s!r}")
    return s


def nonfinite_to_nan(out: Any, *inputs: Any) -> Any:
    """`out` (a pytree) made NaN, value and gradient, when a leaf of `inputs` holds NaN or inf; exactly `out`
    otherwise (multiplied by 1 + sum(0 * inputs) = 1).

    For traced inputs, whose values cannot be checked: sorting, min/max and selects would otherwise turn a NaN
    point into a plausible finite distance with a zero gradient (docs/input_policy.md).
    """
    zero = sum(jnp.sum(leaf * 0) for leaf in jax.tree.leaves(inputs))
    return jax.tree.map(lambda o: o * (1 + zero).astype(o.dtype), out)


def vmap_leading(fn: Callable, n_batch: int, in_axes: Any) -> Callable:
    """Applies `fn` (written for one instance) over `n_batch` leading axes of its arguments."""
    for _ in range(n_batch):
        fn = jax.vmap(fn, in_axes=in_axes)
    return fn
