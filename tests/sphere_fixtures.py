"""Random measures on the unit sphere shared by the spherical distances' tests."""
import numpy as np


def sphere_points(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    """n points uniform on the unit sphere of R^dim: [n, dim]."""
    v = rng.normal(size=(n, dim))
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def weights(rng: np.random.Generator, n: int) -> np.ndarray:
    """n positive weights in [0.2, 1] normalised to sum to one: [n]."""
    w = rng.uniform(0.2, 1.0, n)
    return w / w.sum()
