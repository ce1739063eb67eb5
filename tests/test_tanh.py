"""common.tanh: the vectorisable float32 tanh used by tanh networks."""
import jax
import jax.numpy as jnp
import numpy as np

from common.tanh import tanh


def _grid() -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.concatenate([rng.uniform(-12, 12, 20_000), rng.uniform(-1, 1, 20_000),
                           np.geomspace(1e-8, 1, 2_000), -np.geomspace(1e-8, 1, 2_000)]).astype(np.float32)


def test_tanh_is_within_3e7_of_the_exact_value_and_odd():
    x = _grid()
    y = np.asarray(jax.jit(tanh)(x))
    exact = np.tanh(x.astype(np.float64))
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, exact, rtol=0, atol=3e-7)
    big = np.abs(x) > 1e-3
    np.testing.assert_allclose(y[big], exact[big], rtol=4e-7, atol=0)
    np.testing.assert_array_equal(np.asarray(jax.jit(tanh)(-x)), -y)


def test_special_values():
    out = np.asarray(tanh(jnp.array([np.nan, np.inf, -np.inf, 0.0, 30.0], jnp.float32)))
    assert np.isnan(out[0]) and list(out[1:]) == [1.0, -1.0, 0.0, 1.0]


def test_derivative_is_one_minus_tanh_squared_and_other_dtypes_use_jnp_tanh():
    x = np.linspace(-9, 9, 181, dtype=np.float32)
    np.testing.assert_allclose(jax.vmap(jax.grad(tanh))(x), 1 / np.cosh(x.astype(np.float64)) ** 2,
                               rtol=0, atol=1e-6)
    with jax.enable_x64(True):
        x64 = jnp.linspace(-9, 9, 181, dtype=jnp.float64)
        assert tanh(x64).dtype == jnp.float64
        np.testing.assert_array_equal(tanh(x64), jnp.tanh(x64))
        np.testing.assert_allclose(jax.vmap(jax.grad(tanh))(x64), jax.vmap(jax.grad(jnp.tanh))(x64),
                                   rtol=1e-12, atol=1e-15)  # 1 - y^2 cancels near |y| = 1
