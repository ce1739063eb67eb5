"""Property-based fuzzing of the tsw_sl distances (docs/input_policy.md): any dtype, sizes 0 and 1, magnitudes
1e-30..1e30, NaN / inf entries, weights given, missing or to be normalised, p in {1, 2, 50}.

Every call either raises ValueError / TypeError exactly when the input is invalid (empty, non-finite after the
dtype conversion, negative weights), or returns a finite distance that is right: equal to a float64 numpy
reference (sliced Wasserstein, TSW-SL with the uniform splitting), or, where no closed form exists (Db-TSW,
the max-sliced ascents), non-negative, symmetric, zero on identical measures, invariant to the order of the
support points and within the diameter bound. Under jit a non-finite input gives a non-finite distance.
"""
import jax
import numpy as np
import pytest
from hypothesis import example, given, strategies as st

import tsw_sl
from tests.fuzz_strategies import Drawn, arrays, cast, outcome

KEY = jax.random.key(0)
SHAPES = ((1, 1, 1), (1, 3, 2), (4, 4, 3), (0, 2, 2), (2, 2, 0))  # (n, m, d); few shapes: each one compiles
POWERS = (1, 2, 50)
N_TREES, N_LINES, N_PROJECTIONS = 2, 3, 4
WEIGHTS = ("uniform", "given", "given_half", "unnormalised", "negative")


@st.composite
def measures(draw):
    """(x, y, a, b, normalize_weights, valid): two drawn supports and weights of one of the WEIGHTS kinds."""
    n, m, d = draw(st.sampled_from(SHAPES))
    x, y = draw(arrays((n, d))), draw(arrays((m, d)))
    kind = draw(st.sampled_from(WEIGHTS))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 16)))
    a, b = None, None
    if kind != "uniform":
        a, b = rng.uniform(0.1, 1.0, n), rng.uniform(0.1, 1.0, m)
        if kind in ("given", "given_half"):
            dtype = "float16" if kind == "given_half" else "float32"
            a, b = cast(a / a.sum(), dtype), cast(b / b.sum(), dtype)
        elif kind == "negative" and n:
            a[0] = -a[0]
    valid = n > 0 and d > 0 and x.finite and y.finite and kind != "negative"
    return x, y, a, b, kind in ("unnormalised", "negative"), valid


def _weights(w, n):
    w = np.full(n, 1.0 / n) if w is None else np.asarray(w, np.float64)
    return w / w.sum()


def _quantile_wpp(u, v, a, b, p):
    """W_p^p of two 1-D measures in float64 from their quantile functions."""
    iu, iv = np.argsort(u), np.argsort(v)
    ca, cb = np.cumsum(a[iu]), np.cumsum(b[iv])
    levels = np.unique(np.concatenate([ca, cb, [0.0]]))
    mids, lengths = (levels[:-1] + levels[1:]) / 2, np.diff(levels)
    qu = u[iu][np.minimum(np.searchsorted(ca, mids), len(u) - 1)]
    qv = v[iv][np.minimum(np.searchsorted(cb, mids), len(v) - 1)]
    return np.sum(lengths * np.abs(qu - qv) ** p)


def _cdf_gap_p(u, v, a, b, p):
    """integral |F_u - F_v|^p dt of two 1-D measures in float64 (the cost of one line, uniform splitting)."""
    order = np.argsort(np.concatenate([u, v]))
    s = np.concatenate([u, v])[order]
    gap = np.cumsum(np.concatenate([a, -b])[order])[:-1]
    return np.sum(np.diff(s) * np.abs(gap) ** p)


def _projected(x, y, directions):
    """Projections [P, n], [P, m] divided by c = their largest magnitude (so no power overflows), and c."""
    u, v = directions @ x.T, directions @ y.T
    c = max(np.abs(u).max(), np.abs(v).max()) or 1.0
    return u / c, v / c, c


def sliced_reference(x, y, a, b, directions, p):
    u, v, c = _projected(x, y, directions)
    return c * np.mean([_quantile_wpp(ui, vi, a, b, p) for ui, vi in zip(u, v)]) ** (1 / p)


def uniform_tree_cost(x, y, a, b, directions, p):
    """mean over trees of sum over lines of integral |(F_u - F_v) / k|^p: TSW-SL's cost with the uniform
    splitting (docs/tsw_sl.md §7), directions [L, k, d]."""
    L, k, d = directions.shape
    u, v, c = _projected(x, y, directions.reshape(L * k, d))
    return c * k ** -p * sum(_cdf_gap_p(ui, vi, a, b, p) for ui, vi in zip(u, v)) / L


def _magnitude(*arrays):
    return max(float(np.abs(v).max(initial=0.0)) for v in arrays)


def _diameter(x, y):
    z = np.concatenate([x, y])
    return float(np.sqrt(((z[:, None] - z[None]) ** 2).sum(-1)).max())


def _check_valid_or_rejected(got, valid, what):
    """A ValueError / TypeError exactly for invalid input; else a finite, non-negative float32 scalar."""
    if not valid:
        assert isinstance(got, ValueError), f"{what}: invalid input gave {got!r}"
        return None
    assert not isinstance(got, Exception), f"{what}: valid input raised {got!r}"
    assert got.shape == () and got.dtype == np.float32, (got.shape, got.dtype)
    value = float(got)
    assert np.isfinite(value) and value >= 0, f"{what}: {value}"
    return value


def _nan_under_jit(fn, x: Drawn, y: Drawn, a, b):
    """With a non-finite point (and otherwise valid input), the jitted call gives a non-finite distance."""
    if x.value.size and y.value.size and not (x.finite and y.finite):
        got = jax.jit(lambda x, y: fn(x, y, a, b))(x.seen.astype(np.float32), y.seen.astype(np.float32))
        assert not np.isfinite(float(got)), f"non-finite points gave {float(got)} under jit"


def _close(got, want, magnitude, what, rtol=1e-3, atol=1e-5):
    assert abs(got - want) <= rtol * want + atol * magnitude, f"{what}: got {got!r}, float64 reference {want!r}"


@given(measures(), st.sampled_from(POWERS))
@example((Drawn(np.full((4, 3), 1e30, np.float32), "float32", 1e30, None),
          Drawn(np.full((4, 3), -1e30, np.float32), "float32", 1e30, None), None, None, False, True), 2)
def test_sliced_wasserstein_matches_float64_reference(measure, p):
    x, y, a, b, normalize, valid = measure
    d = x.value.shape[-1]
    theta = np.asarray(tsw_sl.random_directions(KEY, (N_PROJECTIONS,), max(d, 1)))[:, :d]
    fn = lambda x, y, a, b: tsw_sl.sliced_wasserstein(x, y, a, b, projections=theta, p=p,
                                                      normalize_weights=normalize)
    got = _check_valid_or_rejected(outcome(fn, x.value, y.value, a, b), valid, "sliced_wasserstein")
    if got is not None:
        xs, ys = x.seen, y.seen
        want = sliced_reference(xs, ys, _weights(a, len(xs)), _weights(b, len(ys)), theta.astype(np.float64), p)
        _close(got, want, _magnitude(xs, ys), f"sliced_wasserstein p={p}")
    _nan_under_jit(fn, x, y, a, b)


@given(measures(), st.sampled_from(POWERS))
def test_tsw_sl_uniform_splitting_matches_float64_reference(measure, p):
    x, y, a, b, normalize, valid = measure
    d = x.value.shape[-1]
    fn = lambda x, y, a, b: tsw_sl.tsw_sl(x, y, a, b, key=KEY, n_trees=N_TREES, n_lines=N_LINES, p=p,
                                          normalize_weights=normalize)
    got = _check_valid_or_rejected(outcome(fn, x.value, y.value, a, b), valid, "tsw_sl")
    if got is not None:
        xs, ys = x.seen, y.seen
        trees = tsw_sl.sample_trees(KEY, N_TREES, N_LINES, d)
        want = uniform_tree_cost(xs, ys, _weights(a, len(xs)), _weights(b, len(ys)),
                                 np.asarray(trees.directions, np.float64), p)
        _close(float(got) ** p, want, _magnitude(xs, ys), f"tsw_sl cost, p={p}")
    _nan_under_jit(fn, x, y, a, b)


def _check_metric_properties(fn, x: Drawn, y: Drawn, a, b, power, got, bound, what, reach=0.0):
    """0 <= got^power <= bound, symmetric, 0 on identical measures, invariant to the order of the points
    (compared as got^power, to absolute tolerance 1e-5 of the largest coordinate or of `reach`, the distance
    of the trees from the data)."""
    xs, ys = x.seen, y.seen
    magnitude = max(_magnitude(xs, ys), reach)
    cost = got ** power
    assert cost <= bound * (1 + 1e-4) + 1e-5 * magnitude, f"{what}: {cost} above the bound {bound}"
    x32, y32 = xs.astype(np.float32), ys.astype(np.float32)
    _close(float(fn(y32, x32, b, a)) ** power, cost, magnitude, f"{what} not symmetric")
    same = float(fn(x32, x32, a, a)) ** power
    assert same <= 1e-5 * max(_magnitude(xs), reach), f"{what}: {same} between identical measures"
    order = np.random.default_rng(0).permutation(len(xs))
    permuted = float(fn(x32[order], y32, None if a is None else a[order], b)) ** power
    _close(permuted, cost, magnitude, f"{what} depends on the order of the points")


@given(measures(), st.sampled_from(POWERS))
def test_db_tsw_is_a_bounded_symmetric_discrepancy(measure, p):
    x, y, a, b, normalize, valid = measure
    fn = lambda x, y, a, b: tsw_sl.db_tsw(x, y, a, b, key=KEY, n_trees=N_TREES, n_lines=N_LINES, p=p,
                                          normalize_weights=normalize)
    got = _check_valid_or_rejected(outcome(fn, x.value, y.value, a, b), valid, "db_tsw")
    if got is not None:
        xs, ys = x.seen, y.seen
        mean = 0.5 * (_weights(a, len(xs)) @ xs + _weights(b, len(ys)) @ ys)
        roots = 0.1 * 6 * np.sqrt(xs.shape[1])  # root_std 0.1 is absolute: float32 rounds at eps * 0.1
        reach = np.sqrt(((np.concatenate([xs, ys]) - mean) ** 2).sum(-1)).max() + roots
        # |mass beyond an edge| <= 1, so a tree costs at most the total length of its k lines' spans
        _check_metric_properties(fn, x, y, a, b, p, got, 2 * N_LINES * reach, f"db_tsw p={p}", roots)
    _nan_under_jit(fn, x, y, a, b)


@given(measures(), st.sampled_from(POWERS), st.sampled_from(["max_sliced_wasserstein", "max_tsw_sl"]))
def test_max_sliced_distances_are_bounded_symmetric_discrepancies(measure, p, name):
    x, y, a, b, normalize, valid = measure
    options = dict(key=KEY, n_steps=2, p=p, normalize_weights=normalize)
    fn = lambda x, y, a, b: getattr(tsw_sl, name)(x, y, a, b, **options)
    got = _check_valid_or_rejected(outcome(fn, x.value, y.value, a, b), valid, name)
    if got is not None:
        # W_p along a direction is at most the diameter; with the uniform splitting so is a tree's cost
        power = p if name == "max_tsw_sl" else 1
        _check_metric_properties(fn, x, y, a, b, power, got, _diameter(x.seen, y.seen), f"{name} p={p}")
    _nan_under_jit(fn, x, y, a, b)


@pytest.mark.parametrize("p", POWERS)
def test_uniform_splitting_keeps_the_precision_of_tiny_data(p):
    """Found by the fuzzer. Before: line coordinates were measured from the tree sources, drawn in [-1, 1]^d
    whatever the data's size, so float32 rounded data of size 1e-10 to one point per line (tsw_sl gave 0, and
    was 0.6 % off at 1e-5). With the uniform splitting no line carries net mass, so the sources do not matter
    and the coordinates are now taken from the data's mean."""
    rng = np.random.default_rng(1)
    x, y = (rng.normal(size=shape).astype(np.float32) * np.float32(1e-10) for shape in ((1, 2), (3, 2)))
    got = float(tsw_sl.tsw_sl(x, y, key=KEY, n_trees=N_TREES, n_lines=N_LINES, p=p)) ** p
    trees = tsw_sl.sample_trees(KEY, N_TREES, N_LINES, 2)
    want = uniform_tree_cost(x.astype(np.float64), y.astype(np.float64), np.ones(1), np.full(3, 1 / 3),
                             np.asarray(trees.directions, np.float64), p)
    assert want > 0 and abs(got - want) <= 1e-4 * want, (got, want)
