"""CIFAR-10: the official python release ``cifar10/cifar-10-python.tar.gz`` (50k train + 10k test, exact; what
``python -m common.data fetch cifar10`` downloads) and the test split as ``cifar10/test_jpg.zip`` (lossy JPEG,
``test/<class>/NNNN.jpg``)."""
import functools
import io
import pickle
import tarfile
import zipfile

import numpy as np
from PIL import Image

from .files import CorruptDataError, data_file, data_root, decoding

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_PYTHON = "cifar10/cifar-10-python.tar.gz"
_BATCHES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
# The globals a pickled numpy array needs (numpy 1.x and 2.x module names; _codecs.encode rebuilds bytes in a
# protocol-2 pickle written by Python 3); nothing else may be loaded.
_NUMPY_GLOBALS = {(module, name) for module in ("numpy.core.multiarray", "numpy._core.multiarray")
                  for name in ("_reconstruct", "scalar")} | {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


def cifar10_python_available(data_dir=None) -> bool:
    """Whether the data root holds the official python release (``cifar10/cifar-10-python.tar.gz``)."""
    return (data_root(data_dir) / CIFAR10_PYTHON).is_file()


def load_cifar10(split: str = "train", data_dir=None, grayscale: bool = False,
                 verify: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 from the official python release, exact pixels, in the official order (train: data_batch_1
    .. data_batch_5).

    Args:
        split: "train" (50,000 images) or "test" (10,000).
        grayscale: return ``cifar_grayscale(images)`` instead of the RGB bytes (the CNN-zoo input).

    Returns:
        images: uint8 [N, 32, 32, 3] RGB, or float32 [N, 32, 32] in [-1, 1] if ``grayscale``.
        labels: int64 [N], 0-9 in the order of ``CIFAR10_CLASSES``.
    """
    if split not in _BATCHES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    path = data_file(CIFAR10_PYTHON, data_dir, verify)
    with decoding(path):
        images, labels = _decode_release(str(path.resolve()), path.stat().st_mtime_ns)[split]
    return (cifar_grayscale(images) if grayscale else images.copy()), labels.copy()


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in _NUMPY_GLOBALS:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR-10 batch")
        return super().find_class(module, name)


@functools.lru_cache(maxsize=1)
def _decode_release(path: str, mtime_ns: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{split: (uint8 [N, 32, 32, 3], int64 [N])}; a batch is a pickled dict with "data" uint8 [n, 3072] (the
    R, G, B planes of 32 x 32, row-major) and "labels" (n ints)."""
    out = {}
    with tarfile.open(path, "r:gz") as archive:
        for split, names in _BATCHES.items():
            images, labels = [], []
            for name in names:
                try:
                    batch = _NumpyOnlyUnpickler(archive.extractfile(f"cifar-10-batches-py/{name}"), encoding="latin1").load()
                    images.append(np.asarray(batch["data"], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
                    labels.append(np.asarray(batch["labels"], np.int64))
                except (pickle.UnpicklingError, KeyError, AttributeError, ValueError, TypeError) as err:
                    raise CorruptDataError(f"{path}: {name} is missing or not a CIFAR-10 batch ({err})") from err
            out[split] = (np.concatenate(images), np.concatenate(labels))
    return out


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
