"""Distances with their trees / directions split over 4 simulated CPU devices (docs/tsw_sl.md §16.1): the value,
the per-tree costs and the gradient equal the one-device result, and the compiled program reduces costs without
gathering the point clouds."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

import tsw_sl
from common.distributed import make_mesh


@pytest.fixture(scope="module")
def mesh():
    assert jax.device_count() == 4  # tests/conftest.py
    return make_mesh()


def clouds(dim=3, sphere=False, batch=()):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=batch + (12, dim)), rng.normal(size=batch + (9, dim)) + 0.5
    if sphere:
        x, y = (v / np.linalg.norm(v, axis=-1, keepdims=True) for v in (x, y))
    b = rng.uniform(0.5, 1.0, batch + (9,))
    return jnp.asarray(x), jnp.asarray(y), None, jnp.asarray(b / b.sum(-1, keepdims=True))


KEY = jax.random.key(3)
DISTANCES = {
    "tree_wasserstein_chain_distance": lambda x, y, a, b, **kw: tsw_sl.tree_wasserstein(
        x, y, a, b, trees=tsw_sl.sample_trees(KEY, 8, 3, x.shape[-1], dtype=x.dtype), splitting="distance", p=2,
        **kw),
    "tsw_sl": functools.partial(tsw_sl.tsw_sl, key=KEY, n_trees=8, n_lines=3),
    "db_tsw": functools.partial(tsw_sl.db_tsw, key=KEY, n_trees=8, n_lines=3, p=2),
    "sliced_wasserstein": functools.partial(tsw_sl.sliced_wasserstein, key=KEY, n_projections=8),
    "max_sliced_wasserstein": functools.partial(tsw_sl.max_sliced_wasserstein, key=KEY, n_projections=4,
                                                n_steps=3),
    "max_tsw_sl": functools.partial(tsw_sl.max_tsw_sl, key=KEY, n_trees=4, n_lines=3, n_steps=3,
                                    splitting="distance"),
    "spherical_tsw": functools.partial(tsw_sl.spherical_tsw, key=KEY, n_trees=8, n_lines=3, delta=2.0, p=2),
    "spherical_sliced_wasserstein": functools.partial(tsw_sl.spherical_sliced_wasserstein, key=KEY, n_projections=8),
}


@pytest.mark.parametrize("name", sorted(DISTANCES))
def test_value_costs_and_gradient_equal_one_device(name, mesh):
    fn = DISTANCES[name]
    with jax.enable_x64(True):
        x, y, a, b = clouds(sphere=name.startswith("spherical"))
        one, costs_one = fn(x, y, a, b, return_costs=True)
        split, costs_split = fn(x, y, a, b, return_costs=True, mesh=mesh)
        np.testing.assert_allclose(split, one, rtol=1e-6)
        np.testing.assert_allclose(costs_split, costs_one, rtol=1e-6)
        assert costs_split.sharding.spec == jax.sharding.PartitionSpec("data")
        grad_one = jax.grad(lambda x, y: fn(x, y, a, b), argnums=(0, 1))(x, y)
        grad_split = jax.grad(lambda x, y: fn(x, y, a, b, mesh=mesh), argnums=(0, 1))(x, y)
        for g1, g4 in zip(grad_one, grad_split):
            np.testing.assert_allclose(g4, g1, rtol=1e-6, atol=1e-12)


def test_batched_measures_and_batched_trees(mesh):
    with jax.enable_x64(True):
        x, y, a, b = clouds(batch=(2,))
        trees = jax.vmap(lambda k: tsw_sl.sample_trees(k, 8, 3, 3, "concurrent", dtype=jnp.float64))(
            jax.random.split(KEY, 2))
        args = dict(trees=trees, splitting="distance", return_costs=True)
        one = tsw_sl.tree_wasserstein(x, y, a, b, **args)
        split = tsw_sl.tree_wasserstein(x, y, a, b, mesh=mesh, **args)
        assert split[1].shape == (2, 8)
        for o, s in zip(one, split):
            np.testing.assert_allclose(s, o, rtol=1e-6)


def test_large_p_scales_agree_across_devices(mesh):
    """Per-device power-of-two scales (`one_dim.power_scale`) are brought to one common scale."""
    x, y, a, b = clouds()
    x = x * 1e6
    fn = functools.partial(tsw_sl.db_tsw, x.astype(jnp.float32), y.astype(jnp.float32), key=KEY, n_trees=8,
                           n_lines=3, p=12, root_std=1e6)
    np.testing.assert_allclose(fn(mesh=mesh), fn(), rtol=1e-5)


@pytest.mark.parametrize("name", ["tsw_sl", "sliced_wasserstein", "spherical_tsw", "spherical_sliced_wasserstein"])
def test_compiled_program_reduces_costs_without_gathering_points(name, mesh):
    fn = DISTANCES[name]
    x, y, a, b = (v if v is None else v.astype(jnp.float32) for v in clouds(sphere=name.startswith("spherical")))
    value = jax.jit(lambda x, y: fn(x, y, a, b, mesh=mesh))
    grad = jax.jit(jax.grad(lambda x, y: fn(x, y, a, b, mesh=mesh)))
    for program in (value, grad):
        text = program.lower(x, y).compile().as_text()
        assert "all-reduce" in text
        assert "all-gather" not in text and "all-to-all" not in text


def test_one_device_mesh_changes_nothing():
    x, y, a, b = clouds()
    one = make_mesh(jax.devices()[:1])
    kw = dict(key=KEY, n_trees=8, n_lines=3, splitting="distance")
    assert float(tsw_sl.tsw_sl(x, y, a, b, mesh=one, **kw)) == float(tsw_sl.tsw_sl(x, y, a, b, **kw))


def test_bad_meshes_raise(mesh):
    x, y, a, b = clouds()
    with pytest.raises(ValueError, match=r"number of trees \(6\) must be a multiple of the 4 devices"):
        tsw_sl.tsw_sl(x, y, key=KEY, n_trees=6, n_lines=2, mesh=mesh)
    with pytest.raises(ValueError, match=r"number of projections \(10\)"):
        tsw_sl.sliced_wasserstein(x, y, key=KEY, n_projections=10, mesh=mesh)
    with pytest.raises(ValueError, match="axis 'data'"):
        tsw_sl.tsw_sl(x, y, key=KEY, n_trees=8, n_lines=2, mesh=Mesh(np.array(jax.devices()), ("model",)))
    with pytest.raises(ValueError, match="jax.sharding.Mesh"):
        tsw_sl.sliced_wasserstein(x, y, key=KEY, mesh="data")


def test_speed_benchmark_sharded_rows_and_report(monkeypatch):
    from benchmarks import harness, tsw_speed

    every = tsw_speed.sharded_methods
    monkeypatch.setattr(tsw_speed, "sharded_methods", lambda mesh: {"sw_ours": every(mesh)["sw_ours"]})
    monkeypatch.setattr(tsw_speed, "SHARDED_N", (32,))
    monkeypatch.setattr(tsw_speed, "repeats_for", lambda n_dirs, n: 1)
    record = harness.start_run(calibrate=False)
    rows = tsw_speed.run_sharded()
    assert [(r["method"], r["devices"]) for r in rows] == [("sw_ours", 1), ("sw_ours", 4)]
    text = "\n".join(tsw_speed.sharded_markdown(dict(rows=rows, run=record.finish())))
    assert "trees split over 4 simulated CPU devices" in text and "| 32 | sw_ours |" in text
