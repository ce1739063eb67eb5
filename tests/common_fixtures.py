"""Random networks shared by the common/ tests."""
import jax
import jax.numpy as jnp

from common import NetworkSpec, WeightSpace

CNN_ZOO_SPEC = NetworkSpec((1, 16, 16, 16, 10), ((3, 3), (3, 3), (3, 3), ()))
SIREN_SPEC = NetworkSpec.mlp((2, 32, 32, 1))


def random_weights(key, spec: NetworkSpec, batch=(), scale=1.0, dtype=jnp.float32) -> WeightSpace:
    """He-like random raw weights for `spec` with optional leading batch axes."""
    weights, biases = [], []
    for i, kernel in enumerate(spec.kernel_shapes):
        key, kw, kb = jax.random.split(key, 3)
        fan_in = spec.widths[i] * max(1, int(jnp.prod(jnp.array(kernel))) if kernel else 1)
        shape = batch + (spec.widths[i + 1], spec.widths[i]) + kernel
        weights.append(scale * jax.random.normal(kw, shape, dtype) * (2.0 / fan_in) ** 0.5)
        biases.append(0.1 * jax.random.normal(kb, batch + (spec.widths[i + 1],), dtype))
    return WeightSpace(tuple(weights), tuple(biases))


def leaves_close(a, b, rtol=1e-6, atol=1e-6) -> bool:
    return all(
        bool(jnp.allclose(x, y, rtol=rtol, atol=atol)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
    )
