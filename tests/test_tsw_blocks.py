"""Large distances computed a block of trees at a time (tsw_sl.sharding.blocked_costs, docs/tsw_sl.md §16.2): the
value, the per-tree costs and the gradient equal the all-at-once result, on one device and within each device's
share of a mesh, and the compiled program's temporary memory shrinks with the block."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tsw_sl
from common.distributed import make_mesh
from tsw_sl import sharding

KEY = jax.random.key(5)


def clouds(n=40, m=30, dim=3, sphere=False, batch=(), scale=1.0):
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=batch + (n, dim)), rng.normal(size=batch + (m, dim)) + 0.5
    if sphere:
        x, y = (v / np.linalg.norm(v, axis=-1, keepdims=True) for v in (x, y))
    b = rng.uniform(0.5, 1.0, batch + (m,))
    return jnp.asarray(scale * x), jnp.asarray(scale * y), None, jnp.asarray(b / b.sum(-1, keepdims=True))


DISTANCES = {
    "tsw_sl_fast": functools.partial(tsw_sl.tsw_sl, key=KEY, n_trees=6, n_lines=3),
    "tsw_sl_distance_p2": functools.partial(tsw_sl.tsw_sl, key=KEY, n_trees=6, n_lines=3, splitting="distance",
                                            p=2),
    "db_tsw": functools.partial(tsw_sl.db_tsw, key=KEY, n_trees=6, n_lines=3, p=2),
    "sliced_wasserstein": functools.partial(tsw_sl.sliced_wasserstein, key=KEY, n_projections=6),
    "spherical_tsw": functools.partial(tsw_sl.spherical_tsw, key=KEY, n_trees=6, n_lines=3, delta=2.0, p=2),
    "spherical_sliced_wasserstein": functools.partial(tsw_sl.spherical_sliced_wasserstein, key=KEY,
                                                      n_projections=6),
}


def value_costs_grad(fn, x, y, a, b, **kw):
    """(values, costs, gradient of the summed values w.r.t. x and y)."""
    def total(x, y):
        value, costs = fn(x, y, a, b, return_costs=True, **kw)
        return jnp.sum(value), (value, costs)

    (_, (value, costs)), grads = jax.value_and_grad(total, argnums=(0, 1), has_aux=True)(x, y)
    return value, costs, grads


def blocked_and_whole(monkeypatch, fn, *inputs, limit, **kw):
    jax.clear_caches()
    whole = value_costs_grad(fn, *inputs, **kw)
    monkeypatch.setattr(sharding, "CHUNK_VALUES", limit)
    jax.clear_caches()
    blocked = value_costs_grad(fn, *inputs, **kw)
    monkeypatch.undo()
    jax.clear_caches()
    return blocked, whole


def assert_same(blocked, whole, rtol):
    for got, want in zip(jax.tree.leaves(blocked), jax.tree.leaves(whole)):
        np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * float(jnp.max(jnp.abs(want))))


@pytest.mark.parametrize("name", sorted(DISTANCES))
@pytest.mark.parametrize("limit", [1, 300])  # blocks of one tree; of two or three trees
def test_blocks_equal_whole(monkeypatch, name, limit):
    with jax.enable_x64(True):
        inputs = clouds(sphere=name.startswith("spherical"), batch=(2,))
        blocked, whole = blocked_and_whole(monkeypatch, DISTANCES[name], *inputs, limit=limit)
        assert_same(blocked, whole, rtol=1e-10)


def test_blocks_with_different_power_of_two_scales(monkeypatch):
    """float32, p = 50: the cumulative masses of each tree (below 1) set a power-of-two scale that is not 1
    (one_dim.power_scale) and differs between trees, so blocks of one tree have their own scales, brought to the
    largest exactly; unscaled, |mass|^50 would underflow."""
    x, y, a, b = (v if v is None else v.astype(jnp.float32) for v in clouds())
    fn = functools.partial(tsw_sl.tsw_sl, key=KEY, n_trees=6, n_lines=3, splitting="distance", p=50)
    blocked, whole = blocked_and_whole(monkeypatch, fn, x, y, a, b, limit=1)
    assert np.isfinite(whole[0]) and whole[0] > 0
    assert_same(blocked, whole, rtol=2e-5)


def test_blocks_within_each_device_share(monkeypatch):
    assert jax.device_count() == 4  # tests/conftest.py
    with jax.enable_x64(True):
        fn = functools.partial(tsw_sl.tsw_sl, key=KEY, n_trees=8, n_lines=3, splitting="distance", p=2)
        blocked, whole = blocked_and_whole(monkeypatch, fn, *clouds(), limit=1, mesh=make_mesh())
        assert_same(blocked, whole, rtol=1e-10)


def test_block_size_divides_the_trees():
    assert sharding.block_size(25, 8_000_001, limit=2**25) == 1  # 4 trees would fit: 4 does not divide 25
    assert sharding.block_size(100, 10_000, limit=2**25) == 100
    assert sharding.block_size(100, 1_000_000, limit=2**25) == 25
    assert sharding.block_size(7, 10**12) == 1


def test_blocks_bound_the_compiled_memory(monkeypatch):
    """Value and gradient of 16 trees x 4 lines at n = m = 4,000: the temporaries of the compiled program with
    blocks of one tree are a fraction of the all-at-once program's."""
    x, y, _, _ = clouds(n=4000, m=4000, dim=2)
    x, y = x.astype(jnp.float32), y.astype(jnp.float32)

    def temp_bytes():
        jax.clear_caches()
        grad = jax.jit(jax.grad(lambda x: tsw_sl.tsw_sl(x, y, key=KEY, n_trees=16, n_lines=4,
                                                        splitting="distance", sort_method="xla")))
        return grad.lower(x).compile().memory_analysis().temp_size_in_bytes

    whole = temp_bytes()
    monkeypatch.setattr(sharding, "CHUNK_VALUES", 40_000)
    blocked = temp_bytes()
    monkeypatch.undo()
    assert blocked < whole / 4, (blocked, whole)
