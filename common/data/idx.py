"""MNIST and Fashion-MNIST from their gzipped IDX files (``mnist/``, ``fashion_mnist/`` in the data root)."""
import gzip

import numpy as np

from .files import data_file, decoding

_FILE_PREFIX = {"train": "train", "test": "t10k"}
_UINT8_TYPE_CODE = 0x08


def read_idx(path) -> np.ndarray:
    """The uint8 array stored in a gzipped IDX file (big-endian header: 0, 0, type, ndim, then ndim uint32 sizes).

    Raises:
        ValueError: not a uint8 IDX file, or the payload size does not match the header;
            `CorruptDataError` (a ValueError) for a truncated or damaged gzip stream.
    """
    with decoding(path), gzip.open(path, "rb") as f:
        raw = f.read()
    if raw[:2] != b"\x00\x00" or raw[2] != _UINT8_TYPE_CODE:
        raise ValueError(f"{path} is not a uint8 IDX file (header bytes {raw[:4].hex()})")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    payload = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if payload.size != np.prod(shape):
        raise ValueError(f"{path}: header shape {shape} but {payload.size} values")
    return payload.reshape(shape).copy()


def _load_idx_split(folder: str, split: str, data_dir, verify: bool) -> tuple[np.ndarray, np.ndarray]:
    if split not in _FILE_PREFIX:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    prefix = f"{folder}/{_FILE_PREFIX[split]}"
    images = read_idx(data_file(f"{prefix}-images-idx3-ubyte.gz", data_dir, verify))
    labels = read_idx(data_file(f"{prefix}-labels-idx1-ubyte.gz", data_dir, verify)).astype(np.int64)
    return images, labels


def load_mnist(split: str = "train", data_dir=None, verify: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """MNIST digits.

    Returns:
        images: uint8 [N, 28, 28], 0 = background, 255 = ink; N = 60,000 (train) or 10,000 (test).
        labels: int64 [N], digits 0-9.
    """
    return _load_idx_split("mnist", split, data_dir, verify)


def load_fashion_mnist(split: str = "train", data_dir=None, verify: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST (labels 0 T-shirt/top, 1 Trouser, 2 Pullover, 3 Dress, 4 Coat, 5 Sandal, 6 Shirt,
    7 Sneaker, 8 Bag, 9 Ankle boot).

    Returns:
        images: uint8 [N, 28, 28], 0 = background; N = 60,000 (train) or 10,000 (test).
        labels: int64 [N], 0-9.
    """
    return _load_idx_split("fashion_mnist", split, data_dir, verify)
