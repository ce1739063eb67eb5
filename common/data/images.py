"""Natural images for colour / style transfer (``images/`` in the data root)."""
import numpy as np
from PIL import Image

from .files import data_file, decoding


def load_image(name: str, as_float: bool = False, data_dir=None, verify: bool = True) -> np.ndarray:
    """An RGB image, e.g. ``"pot/ocean_day.jpg"`` (the colour-transfer source; target ``"pot/ocean_sunset.jpg"``).

    Args:
        name: path under ``images/``: ``sklearn/{china,flower}.jpg``, ``skimage/{astronaut,chelsea,coffee}.png``,
            ``skimage/rocket.jpg``, ``matplotlib/grace_hopper.jpg``, ``pot/ocean_{day,sunset}.jpg``.
        as_float: return float32 in [0, 1] instead of uint8.

    Returns:
        uint8 [H, W, 3] (or float32 [H, W, 3] in [0, 1]), rows top to bottom.
    """
    path = data_file(f"images/{name}", data_dir, verify)
    with decoding(path), Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"))
    return (pixels / np.float32(255)).astype(np.float32) if as_float else pixels.copy()
