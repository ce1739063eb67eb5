"""tsw_sl.sample_trees / TreeSystem: geometry of chain and concurrent trees, sampling laws, parametrisation."""
import jax
import numpy as np
import pytest

import tsw_sl


def test_chain_sources_lie_on_the_previous_line():
    trees = tsw_sl.sample_trees(jax.random.key(0), 50, 5, 3, "chain", t_range=(-0.1, 0.1))
    src, th = np.asarray(trees.sources, np.float64), np.asarray(trees.directions, np.float64)
    assert src.shape == th.shape == (50, 5, 3) and trees.kind == "chain"
    np.testing.assert_allclose(np.linalg.norm(th, axis=-1), 1.0, rtol=1e-6)
    step = src[:, 1:] - src[:, :-1]
    t = np.einsum("lkd,lkd->lk", step, th[:, :-1])
    np.testing.assert_allclose(step, t[..., None] * th[:, :-1], atol=1e-6)   # on line i, at coordinate t
    assert np.all(np.abs(t) <= 0.1 + 1e-6) and np.std(t) > 0.03
    assert np.all(np.abs(src[:, 0]) <= 1.0) and np.abs(src[:, 0]).max() > 0.8  # paper's U([-1, 1]^d) root


def test_concurrent_trees_share_one_gaussian_root():
    mean = np.array([3.0, -1.0, 0.5, 2.0])
    trees = tsw_sl.sample_trees(jax.random.key(1), 4000, 3, 4, "concurrent", root_mean=mean, root_std=0.5)
    src = np.asarray(trees.sources)
    np.testing.assert_allclose(src, np.broadcast_to(src[:, :1], src.shape))
    np.testing.assert_allclose(src[:, 0].mean(0), mean, atol=0.05)
    np.testing.assert_allclose(src[:, 0].std(0), 0.5, rtol=0.05)
    default = tsw_sl.sample_trees(jax.random.key(1), 4000, 3, 4, "concurrent")
    np.testing.assert_allclose(np.asarray(default.sources)[:, 0].std(0), 0.1, rtol=0.05)   # Db-TSW default


def test_directions_uniform_and_orthogonal_frames():
    th = np.asarray(tsw_sl.sample_trees(jax.random.key(2), 5000, 2, 3).directions).reshape(-1, 3)
    np.testing.assert_allclose(th.mean(0), 0.0, atol=0.03)                   # isotropic
    np.testing.assert_allclose(th.T @ th / len(th), np.eye(3) / 3, atol=0.02)
    orth = np.asarray(tsw_sl.sample_trees(jax.random.key(3), 20, 4, 6, "concurrent", orthogonal=True).directions)
    np.testing.assert_allclose(np.einsum("lid,ljd->lij", orth, orth), np.broadcast_to(np.eye(4), (20, 4, 4)),
                               atol=1e-5)


@pytest.mark.parametrize("kind", ["chain", "concurrent"])
def test_params_round_trip(kind):
    trees = tsw_sl.sample_trees(jax.random.key(4), 3, 4, 5, kind, root_box=2.0)
    root, t, theta = trees.params()
    again = tsw_sl.TreeSystem.from_params(root, t, 3.0 * theta, kind)       # directions are re-normalised
    np.testing.assert_allclose(again.sources, trees.sources, atol=1e-5)
    np.testing.assert_allclose(again.directions, trees.directions, atol=1e-6)
    assert jax.tree.structure(again) == jax.tree.structure(trees)           # kind is static metadata
    assert len(jax.tree.leaves(trees)) == 2


def test_sample_trees_under_jit_and_vmap():
    f = jax.jit(lambda key: tsw_sl.sample_trees(key, 2, 3, 4, "chain"))
    batch = jax.vmap(f)(jax.random.split(jax.random.key(0), 5))
    assert batch.sources.shape == (5, 2, 3, 4) and batch.kind == "chain"
    np.testing.assert_allclose(batch.sources[1], f(jax.random.split(jax.random.key(0), 5)[1]).sources)


@pytest.mark.parametrize("kwargs, match", [
    (dict(kind="star"), r"kind must be one of"),
    (dict(n_lines=0), r"n_lines must be a positive Python int"),
    (dict(root_std=1.0, root_box=1.0), r"at most one of root_std and root_box"),
    (dict(t_range=(1.0, -1.0)), r"t_range must be"),
    (dict(root_mean=np.zeros(5)), r"root_mean must have shape"),
    (dict(n_lines=4, dim=3, orthogonal=True), r"orthogonal directions need n_lines <= dim"),
])
def test_sample_trees_bad_inputs_raise(kwargs, match):
    args = dict(n_trees=2, n_lines=3, dim=3, kind="chain")
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        tsw_sl.sample_trees(jax.random.key(0), **args)
