"""Argument checks shared across the packages: the ValueError rules of docs/input_policy.md in one place."""
from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp


def count(name: str, value: object, minimum: int = 1, allow_none: bool = False) -> None:
    """ValueError naming `name` and `value` unless it is a Python/numpy int >= `minimum` (bools rejected);
    None passes when `allow_none`."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        expected = f"an int >= {minimum}" + (" or None" if allow_none else "")
        raise ValueError(f"{name} must be {expected}; got {value!r}")


def at_least_float32(x: object, integer_dtype: object = None) -> jax.Array:
    """x [...] as a floating array of at least 32 bits, same shape (docs/input_policy.md): float16 and bfloat16
    become float32 (half precision loses most digits in sums and products), integers and bools
    ``integer_dtype`` (default JAX's default float dtype), float32 and float64 are kept."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        return x.astype(jnp.zeros(()).dtype if integer_dtype is None else integer_dtype)
    return x.astype(jnp.float32) if jnp.finfo(x.dtype).bits < 32 else x
