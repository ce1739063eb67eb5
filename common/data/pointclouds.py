"""2-D point clouds sampled from the density images in ``pointclouds/`` (grey PNGs, black shape on white)."""
import numpy as np
from PIL import Image

from .files import data_file, decoding


def load_density(name: str, data_dir=None, verify: bool = True) -> np.ndarray:
    """The density image ``pointclouds/<name>``, e.g. ``"geomloss/moon_a.png"`` or ``"pot_shapes/heart.png"``.

    Returns:
        float32 [H, W], 1 - gray / 255 (1 = black shape, 0 = white background), row 0 at the top, unnormalised.
    """
    path = data_file(f"pointclouds/{name}", data_dir, verify)
    with decoding(path), Image.open(path) as image:
        gray = np.asarray(image.convert("L"), np.float32)
    return 1.0 - gray / 255.0


def sample_density_points(density: np.ndarray, n_points: int, seed) -> np.ndarray:
    """Points drawn from a pixel density: a pixel with probability proportional to its value, then a uniform
    position inside it; x = column / W, y = 1 - row / H (y axis up).

    Args:
        density: non-negative [H, W], row 0 at the top, not all zero.
        n_points: number of points.
        seed: anything ``np.random.default_rng`` accepts: an int, a ``np.random.Generator``, or a raw uint32
            JAX key array (same seed, same points).

    Returns:
        float32 [n_points, 2] in [0, 1]^2.
    """
    height, width = density.shape
    rng = np.random.default_rng(seed)
    weights = np.asarray(density, np.float64).ravel()
    pixels = rng.choice(weights.size, size=n_points, p=weights / weights.sum())
    rows, cols = np.divmod(pixels, width)
    jitter = rng.random((n_points, 2))
    x = (cols + jitter[:, 0]) / width
    y = 1.0 - (rows + jitter[:, 1]) / height
    return np.stack([x, y], axis=1).astype(np.float32)


def load_density_points(name: str, n_points: int, seed, data_dir=None, verify: bool = True) -> np.ndarray:
    """``n_points`` points sampled from the density image ``pointclouds/<name>`` (see ``sample_density_points``).

    Returns:
        float32 [n_points, 2] in [0, 1]^2, y axis up.
    """
    return sample_density_points(load_density(name, data_dir, verify), n_points, seed)
