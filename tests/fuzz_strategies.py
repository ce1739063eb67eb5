"""Hypothesis strategies shared by the fuzz tests (docs/input_policy.md): arrays of any dtype, magnitudes
1e-30..1e30, NaN / inf entries, sizes 0 and 1.

Every new shape or dtype reaching a jitted function compiles a new program, and compiles dominate the suite,
so shapes come from small fixed sets chosen by each test, and values are drawn as a seed for numpy rather than
element by element.
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import ml_dtypes
import numpy as np
from hypothesis import strategies as st

DTYPES = ("float16", "bfloat16", "float32", "float64", "int32")
NONFINITE = (None, np.nan, np.inf, -np.inf)  # None: all entries finite


@dataclasses.dataclass(frozen=True)
class Drawn:
    """A drawn input: the array as given to the library, and how it was made (shown on a failure)."""

    value: np.ndarray
    dtype: str
    scale: float
    bad: float | None

    @property
    def seen(self) -> np.ndarray:
        """The values the library computes with, in float64: half precision and integers are exact in
        float32; float64 is rounded to float32 unless x64 is on (JAX stores it as float32)."""
        return np.asarray(self.value, np.float64).astype(jnp.zeros(()).dtype).astype(np.float64)

    @property
    def finite(self) -> bool:
        return bool(np.all(np.isfinite(self.seen)))


def cast(values: np.ndarray, dtype: str) -> np.ndarray:
    """float64 `values` as a numpy array of `dtype` (bfloat16 through ml_dtypes; integers rounded and clipped,
    so they are the integers a user would pass)."""
    if dtype == "int32":
        return np.clip(np.round(values), -2 ** 31, 2 ** 31 - 1).astype(np.int32)
    with np.errstate(over="ignore"):  # 1e30 overflows float16 to inf: an input the library must reject
        return values.astype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype)


@st.composite
def arrays(draw, shape: tuple[int, ...], dtypes=DTYPES, nonfinite=NONFINITE, scales=(-30, 30)) -> Drawn:
    """Gaussian entries times 10^e (e drawn from `scales`), cast to a drawn dtype, one entry (if any) replaced by
    a drawn non-finite value; integers get magnitudes up to 10^3 (they cannot hold more than 2^31 anyway)."""
    dtype = draw(st.sampled_from(dtypes))
    scale = 10.0 ** draw(st.integers(*scales)) if dtype != "int32" else 10.0 ** draw(st.integers(0, 3))
    values = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1))).standard_normal(shape) * scale
    bad = draw(st.sampled_from(nonfinite)) if dtype != "int32" else None
    if bad is not None and values.size:
        values.flat[draw(st.integers(0, values.size - 1))] = bad
    return Drawn(cast(values, dtype), dtype, scale, bad)


def outcome(fn, *args, **kwargs):
    """fn's result, or the ValueError / TypeError it raised (the documented rejections); any other exception
    propagates and fails the test."""
    try:
        return fn(*args, **kwargs)
    except (ValueError, TypeError) as err:
        return err
