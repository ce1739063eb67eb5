"""`tsw_sl.sorting`: the host (numpy) and XLA sorting permutations, against numpy's stable argsort."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tsw_sl import sorting


def _awkward_keys(rng, shape, dtype):
    """Keys with duplicates, both zeros, infinities, subnormals and magnitudes from 1e-30 to 1e30."""
    keys = rng.standard_normal(shape) * 10.0 ** rng.integers(-30, 30, shape)
    specials = np.array([0.0, -0.0, np.inf, -np.inf, 1e-45, -1e-45, 1.0, 1.0, -2.5, -2.5])
    flat = keys.reshape(-1)
    flat[rng.choice(flat.size, 3 * len(specials), replace=False)] = np.tile(specials, 3)
    return keys.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("method", ["numpy", "xla"])
def test_argsort_sorts_like_numpy(dtype, method):
    """The permutation sorts every row, stably on the host path; `sort_keys`' sorted keys (on the host path, out of
    the packed integers, not gathered) are the gathered keys bit for bit, under jit and vmap alike."""
    rng = np.random.default_rng(0)
    keys = _awkward_keys(rng, (3, 5, 97), dtype)
    with jax.enable_x64(dtype == np.float64):
        perm = np.asarray(jax.jit(lambda k: sorting.argsort(k, method))(jnp.asarray(keys)))
        for sort_keys in (jax.jit(sorting.sort_keys, static_argnums=1),
                          jax.vmap(sorting.sort_keys, in_axes=(1, None), out_axes=1)):
            sorted_keys, perm_too = (np.asarray(v) for v in sort_keys(jnp.asarray(keys), method))
            np.testing.assert_array_equal(perm_too, perm)
            assert sorted_keys.dtype == keys.dtype
            np.testing.assert_array_equal(sorted_keys.view(f"i{keys.itemsize}"),
                                          np.take_along_axis(keys, perm, -1).view(f"i{keys.itemsize}"))
    assert perm.dtype == np.int32 and perm.shape == keys.shape
    assert np.all(np.sort(perm, axis=-1) == np.arange(97))  # a permutation of every row
    np.testing.assert_array_equal(np.take_along_axis(keys, perm, -1), np.sort(keys, axis=-1))
    if method == "numpy" and dtype == np.float32:  # stable: ties (except -0.0 before 0.0) keep their order
        stable = np.argsort(np.where(keys == 0, np.copysign(1e-46, keys), keys), axis=-1, kind="stable")
        np.testing.assert_array_equal(perm, stable)


def test_argsort_under_vmap_and_nan_last():
    keys = jnp.asarray([[3.0, jnp.nan, -1.0, 2.0], [0.5, 0.5, -0.5, jnp.nan]], jnp.float32)
    perm = jax.vmap(lambda k: sorting.argsort(k, "numpy"))(keys)
    np.testing.assert_array_equal(np.asarray(perm), [[2, 3, 0, 1], [2, 0, 1, 3]])
    with pytest.raises(ValueError, match="sort_method"):
        sorting.argsort(keys, "quick")


def test_sort_with_gradients_match_xla_sort():
    keys = jax.random.normal(jax.random.key(0), (4, 300))
    mass = jax.random.uniform(jax.random.key(1), (4, 300))

    def loss(k, m, method):
        s, sm = sorting.sort_with(k, m, method=method)
        return jnp.sum(jnp.sin(s) * sorting.cumsum(sm))

    numpy_grads = jax.grad(loss, (0, 1))(keys, mass, "numpy")
    xla_grads = jax.grad(loss, (0, 1))(keys, mass, "xla")
    for a, b in zip(numpy_grads, xla_grads):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)
    # forward mode too (the host path's sorted keys carry their tangent through a custom JVP)
    tangents = (jax.random.normal(jax.random.key(2), keys.shape), jnp.ones_like(mass))
    jvp = lambda method: jax.jvp(lambda k, m: loss(k, m, method), (keys, mass), tangents)[1]
    np.testing.assert_allclose(np.asarray(jvp("numpy")), np.asarray(jvp("xla")), rtol=1e-5)
    directional = sum(float(jnp.vdot(g, t)) for g, t in zip(numpy_grads, tangents))  # <grad, tangent>
    np.testing.assert_allclose(np.asarray(jvp("numpy")), directional, rtol=1e-5)


@pytest.mark.parametrize("cores", [2, 3])
def test_threaded_host_sort_equals_one_thread(monkeypatch, cores):
    """Sorted on the thread pool (above `PARALLEL_ALWAYS_SIZE` keys), the rows go in one block per core: the same
    permutation as one block, rows not divisible by the blocks included."""
    rng = np.random.default_rng(1)
    keys = _awkward_keys(rng, (7, 3, 211), np.float32)
    one_block = sorting.host_argsort(keys)
    monkeypatch.setattr(sorting, "PARALLEL_MIN_SIZE", 64)
    monkeypatch.setattr(sorting, "PARALLEL_ALWAYS_SIZE", 64)  # no trial of one thread first
    monkeypatch.setattr(sorting, "_host_cores", lambda: cores)
    threaded = sorting.host_argsort(keys)
    assert threaded.dtype == np.int32 and threaded.shape == keys.shape
    np.testing.assert_array_equal(threaded, one_block)
    np.testing.assert_array_equal(np.take_along_axis(keys, threaded, -1), np.sort(keys, axis=-1))
    single_row = keys[0, 0]  # one row: nothing to split
    np.testing.assert_array_equal(sorting.host_argsort(single_row), one_block[0, 0])


@pytest.mark.parametrize("pool_faster", [True, False])
def test_host_sort_tries_both_ways_per_shape_then_keeps_the_faster(monkeypatch, pool_faster):
    """Between `PARALLEL_MIN_SIZE` and `PARALLEL_ALWAYS_SIZE` keys a shape's first calls alternate between one
    thread and the pool, `TRIAL_CALLS` each; then the way with the faster call stays, whatever later calls take."""
    monkeypatch.setattr(sorting, "_trials", {})
    monkeypatch.setattr(sorting, "_parallel", {})
    trial, ways = (400, 200, 2), []
    for _ in range(2 * sorting.TRIAL_CALLS):
        way = sorting._parallel_pays(trial)
        ways.append(way)
        sorting._record_trial(trial, way, 1e-3 if way == pool_faster else 2e-3)
    assert ways == [False, True] * sorting.TRIAL_CALLS
    sorting._record_trial(trial, not pool_faster, 1e-9)  # decided: later times change nothing
    assert [sorting._parallel_pays(trial) for _ in range(3)] == [pool_faster] * 3
    assert sorting._parallel_pays((400, 201, 2)) is False  # another shape starts its own trial


def test_host_sort_trials_give_the_same_permutation_either_way(monkeypatch):
    monkeypatch.setattr(sorting, "_trials", {})
    monkeypatch.setattr(sorting, "_parallel", {})
    keys = _awkward_keys(np.random.default_rng(2), (5, 211), np.float32)
    want = sorting.host_argsort(keys)  # one thread: fewer keys than PARALLEL_MIN_SIZE
    monkeypatch.setattr(sorting, "PARALLEL_MIN_SIZE", 64)
    monkeypatch.setattr(sorting, "_host_cores", lambda: 2)
    for _ in range(2 * sorting.TRIAL_CALLS + 2):  # both ways, then the one kept
        np.testing.assert_array_equal(sorting.host_argsort(keys), want)
    assert list(sorting._parallel) == [(5, 211, 2)] and not sorting._trials
    monkeypatch.setattr(sorting, "PARALLEL_ALWAYS_SIZE", 64)  # from here on always the pool, no trial
    np.testing.assert_array_equal(sorting.host_argsort(keys[:4]), want[:4])
    assert (4, 211, 2) not in sorting._trials and (4, 211, 2) not in sorting._parallel


@pytest.mark.parametrize("n", [1, 5, 32, 33, 100, 1025, 40_000])  # one block .. three levels of block totals
def test_cumsum_matches_numpy(n):
    """The blocked triangular-product prefix sum: float32 and float64 to rounding of a float64 reference,
    integers exactly (`jnp.cumsum`), leading axes kept; its gradient is the reverse prefix sum."""
    rng = np.random.default_rng(n)
    values = rng.standard_normal((2, 3, n))
    want = np.cumsum(values, axis=-1)
    got32 = np.asarray(jax.jit(sorting.cumsum)(jnp.asarray(values, jnp.float32)))
    assert got32.shape == values.shape and got32.dtype == np.float32
    np.testing.assert_allclose(got32, want, rtol=0, atol=1e-6 * np.sqrt(n) * np.abs(values).max() * 4)
    with jax.enable_x64(True):
        np.testing.assert_allclose(np.asarray(sorting.cumsum(jnp.asarray(values))), want, rtol=0,
                                   atol=1e-15 * n * np.abs(values).max())
        weights = jnp.asarray(rng.standard_normal(n))
        grad = jax.grad(lambda v: jnp.sum(weights * sorting.cumsum(v)))(jnp.asarray(values[0, 0]))
        np.testing.assert_allclose(np.asarray(grad), np.cumsum(np.asarray(weights)[::-1])[::-1], atol=1e-12)
    ints = rng.integers(-5, 5, (4, n)).astype(np.int32)
    np.testing.assert_array_equal(np.asarray(sorting.cumsum(jnp.asarray(ints))), np.cumsum(ints, axis=-1))
