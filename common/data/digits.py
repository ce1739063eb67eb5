"""scikit-learn's 8 x 8 digits, shipped inside scikit-learn: the default data set that needs no data folder."""
import numpy as np


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 scikit-learn digits (UCI optical digits, 8 x 8, about 180 per class).

    Returns:
        images: uint8 [1797, 8, 8], ink counts 0-16 (0 = background).
        labels: int64 [1797], digits 0-9.
    """
    from sklearn.datasets import load_digits as sklearn_load_digits  # slow import: only when used

    bunch = sklearn_load_digits()
    return bunch.images.astype(np.uint8), bunch.target.astype(np.int64)
