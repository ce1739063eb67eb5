"""CIFAR-10 test split from ``cifar10/test_jpg.zip`` (lossy JPEG, ``test/<class>/NNNN.jpg``)."""
import functools
import io
import zipfile

import numpy as np
from PIL import Image

from .files import data_file, decoding

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def load_cifar10_test(data_dir=None, grayscale: bool = False, verify: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The 10,000 CIFAR-10 test images (JPEG quality ~75: not bit-exact), 1,000 per class.

    Order: by class (label 0-9), then by the image's rank within its class in the official test order. The
    decoded zip is cached in-process per (path, mtime); each call returns fresh arrays.

    Args:
        grayscale: return ``cifar_grayscale(images)`` instead of the RGB bytes (the CNN-zoo input).

    Returns:
        images: uint8 [10000, 32, 32, 3] RGB, or float32 [10000, 32, 32] in [-1, 1] if ``grayscale``.
        labels: int64 [10000], 0-9 in the order of ``CIFAR10_CLASSES``.
    """
    path = data_file("cifar10/test_jpg.zip", data_dir, verify)
    with decoding(path):
        images, labels = _decode_zip(str(path.resolve()), path.stat().st_mtime_ns)
    return (cifar_grayscale(images) if grayscale else images.copy()), labels.copy()


def cifar_grayscale(images: np.ndarray) -> np.ndarray:
    """Grayscale as in the Small CNN Zoo: mean over RGB, scaled from [0, 255] to [-1, 1].

    Args:
        images: uint8 [..., 3].

    Returns:
        float32 [...] in [-1, 1].
    """
    return (np.asarray(images, np.float32).mean(axis=-1) / 127.5 - 1.0).astype(np.float32)


@functools.lru_cache(maxsize=2)
def _decode_zip(path: str, mtime_ns: int) -> tuple[np.ndarray, np.ndarray]:
    with zipfile.ZipFile(path) as archive:
        names = sorted(name for name in archive.namelist() if name.endswith(".jpg"))
        images = np.stack([np.asarray(Image.open(io.BytesIO(archive.read(name))).convert("RGB")) for name in names])
    labels = np.array([CIFAR10_CLASSES.index(name.split("/")[-2]) for name in names], np.int64)
    return images, labels
