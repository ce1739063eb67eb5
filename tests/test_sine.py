"""common.sine: the vectorisable float32 sine used by SIREN layers."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common.sine import sin, sin_cos


@pytest.mark.parametrize("scale", [1.0, 100.0, 8192.0])
def test_sin_cos_are_within_two_ulp_of_one_of_the_exact_values(scale):
    x = np.random.default_rng(0).uniform(-scale, scale, 20_000).astype(np.float32)
    s, c = jax.jit(sin_cos)(x)
    assert s.dtype == c.dtype == jnp.float32
    np.testing.assert_allclose(s, np.sin(x.astype(np.float64)), rtol=0, atol=1.2e-7)
    np.testing.assert_allclose(c, np.cos(x.astype(np.float64)), rtol=0, atol=1.2e-7)


def test_octant_boundaries_and_special_values():
    x = np.float32(np.pi / 4) * np.arange(-16, 17, dtype=np.float32)
    np.testing.assert_allclose(sin(x), np.sin(x.astype(np.float64)), rtol=0, atol=1.2e-7)
    out = np.asarray(sin(jnp.array([np.nan, np.inf, -np.inf, 0.0], jnp.float32)))
    assert np.isnan(out[:3]).all() and out[3] == 0.0


def test_derivative_is_the_cosine_and_other_dtypes_use_jnp_sin():
    x = np.linspace(-40, 40, 101, dtype=np.float32)
    np.testing.assert_allclose(jax.vmap(jax.grad(sin))(x), np.cos(x.astype(np.float64)), rtol=0, atol=1.2e-7)
    with jax.enable_x64(True):
        x64 = jnp.linspace(-40, 40, 101, dtype=jnp.float64)
        assert sin(x64).dtype == jnp.float64
        np.testing.assert_array_equal(sin(x64), jnp.sin(x64))


def test_the_sin_activation_is_the_vectorised_sine():
    from common.nets import get_activation

    x = np.random.default_rng(1).uniform(-50, 50, 1000).astype(np.float32)
    y = jax.jit(get_activation("sin"))(x)
    np.testing.assert_array_equal(y, jax.jit(sin)(x))
    assert not np.array_equal(y, jax.jit(jnp.sin)(x))  # not jnp.sin (a scalar library call per entry on CPU)
    np.testing.assert_allclose(y, np.sin(x.astype(np.float64)), rtol=0, atol=1.2e-7)
