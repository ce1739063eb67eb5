"""Colour transfer by a (tree-)sliced gradient flow of a palette (TSW-SL paper, sec. 6.2).

The source palette [K, 3] follows plain Euler steps x <- x - eta grad_x D(x, target palette)
(``tsw_sl.flows.run_flow`` with the "sgd" optimiser), and every source pixel then takes the moved colour of
its palette entry (``recolour``). Colours are RGB in [0, 1]. Paper settings: palettes of K = 1,000 colours,
2,000 steps, step 16 for TSW-SL and 1 for SW, TSW-SL with L = 25 trees of k = 4 lines against SW with L = 100
directions (``PAPER_STEP``). The experiment (k-means palettes of two images, recoloured images, W_2^2 curves)
is ``python -m benchmarks.tsw_colour_transfer``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from tsw_sl import flows

PAPER_STEP = {"sw": 1.0, "tsw_sl": 16.0}


def transfer_palette(key: jax.Array, source: ArrayLike, target: ArrayLike, method: str, n_steps: int,
                     step_size: float, n_snapshots: int = 10,
                     settings: flows.Settings = flows.Settings()) -> jax.Array:
    """Euler flow of the palette `source` [K, 3] towards `target` [K', 3] with METHODS[method].

    Returns:
      snapshots [n_snapshots + 1, K, 3]: the palette at steps 0, n_steps / n_snapshots, ..., n_steps
      (n_steps must be a multiple of n_snapshots).
    """
    snaps, _ = flows.run_flow(key, jnp.asarray(source), jnp.asarray(target), method, n_steps, step_size,
                              n_steps // n_snapshots, settings, optimizer="sgd")
    return snaps


def recolour(image: ArrayLike, labels: ArrayLike, colours: ArrayLike) -> np.ndarray:
    """The image [H, W, 3] with pixel p replaced by colours[labels[p]] (clipped to [0, 1]): [H, W, 3].

    labels: int [H W], each pixel's palette entry (e.g. its nearest k-means centre); colours: [K, 3].
    """
    return np.clip(np.asarray(colours)[np.asarray(labels)].reshape(np.shape(image)), 0.0, 1.0)
