"""`tsw_sl.distance.line_costs`: its written-out gradient against autodiff of the same sort, prefix sum and costs."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tsw_sl import distance, sorting


def _autodiff_costs(coords, mass, p):
    s, m = sorting.sort_with(coords, jnp.broadcast_to(mass, coords.shape), method="xla")
    scaled, scale = distance.sorted_line_costs(s, m, p)
    return scaled * scale ** p


def _costs(coords, mass, p):
    scaled, scale = distance.line_costs(coords, mass, p, "numpy")
    return scaled * scale ** p


@pytest.mark.parametrize("p", [1.0, 2.0, 3.5])
@pytest.mark.parametrize("mass_shape", [(3, 4, 41), (1, 1, 41)])
def test_line_costs_gradient_equals_autodiff(p, mass_shape):
    rng = np.random.default_rng(int(p * 10) + len(mass_shape))
    with jax.enable_x64(True):
        coords = jnp.asarray(rng.normal(size=(3, 4, 41)) + rng.choice([-1.0, 1.0], size=(3, 4, 1)))
        mass = jnp.asarray(rng.normal(size=mass_shape) / 41)
        weights = jnp.asarray(rng.uniform(0.5, 2.0, size=(3, 4)))  # a cotangent that differs per line
        loss = lambda f: lambda c, m: jnp.sum(weights * f(c, m, p))
        np.testing.assert_allclose(_costs(coords, mass, p), _autodiff_costs(coords, mass, p), rtol=1e-12)
        ours = jax.grad(loss(_costs), (0, 1))(coords, mass)
        reference = jax.grad(loss(_autodiff_costs), (0, 1))(coords, mass)
        for a, b in zip(ours, reference):
            assert a.shape == b.shape
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-10, atol=1e-12)
        # also under vmap and jit, and the gradient is not trivially zero
        batched = jax.jit(jax.vmap(jax.grad(loss(_costs)), in_axes=(0, None)))(jnp.stack([coords, -coords]), mass)
        np.testing.assert_allclose(np.asarray(batched[0]), np.asarray(ours[0]), rtol=1e-10, atol=1e-12)
        assert min(np.abs(np.asarray(g)).max() for g in ours) > 1e-3


def test_put_last_undoes_take_last():
    perm = jax.vmap(lambda k: jax.random.permutation(k, 57))(jax.random.split(jax.random.key(0), 6))
    perm = perm.astype(jnp.int32).reshape(2, 3, 57)
    values = jnp.arange(2 * 3 * 57, dtype=jnp.float32).reshape(2, 3, 57)
    taken = sorting.take_last(values, perm)
    assert not np.array_equal(np.asarray(taken), np.asarray(values))
    np.testing.assert_array_equal(sorting.put_last(taken, perm), values)
    np.testing.assert_array_equal(np.take_along_axis(np.asarray(values), np.asarray(perm), -1), taken)
    # under jit and vmap over a leading axis too
    batched = jax.jit(jax.vmap(sorting.put_last))(taken, perm)
    np.testing.assert_array_equal(batched, values)
    with pytest.raises(ValueError, match=r"put_last: values \(2, 3, 56\) and perm \(2, 3, 57\)"):
        sorting.put_last(taken[..., :56], perm)
