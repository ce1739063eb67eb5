"""Colour transfer by a (tree-)sliced gradient flow of a k-means palette (TSW-SL paper, sec. 6.2).

The source and target images are reduced to palettes of K colours by k-means (scikit-learn, fitted on a
random subset of pixels); the source palette follows plain Euler steps x <- x - eta grad_x D(x, target palette)
(``tsw_sl.flows.run_flow`` with the "sgd" optimiser), and every source pixel takes the moved colour of its
cluster. Colours are RGB in [0, 1]. Paper settings: K = 1,000, 2,000 steps, step 16 for TSW-SL and 1 for SW,
TSW-SL with L = 25 trees of k = 4 lines against SW with L = 100 directions (``PAPER_STEP``).
Run as ``python -m tsw_sl.colour_transfer`` (see ``tsw_sl.experiments.colour_report``).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.cluster import KMeans

from tsw_sl import flows

PAPER_STEP = {"sw": 1.0, "tsw_sl": 16.0}


def palette(key, pixels, n_colours, n_fit=20_000):
    """K-means palette of an image.

    Args:
      key: PRNG key (pixel subset and k-means initialisation).
      pixels: [P, 3] colours in [0, 1].
      n_colours: K; n_fit: number of random pixels the k-means is fitted on (all if P is smaller).
    Returns:
      (centres float32 [K, 3], labels int [P]: each pixel's nearest centre).
    """
    pixels = np.asarray(pixels, np.float32)
    k_sub, k_init = jax.random.split(key)
    subset = np.asarray(jax.random.permutation(k_sub, len(pixels)))[:n_fit]
    seed = int(jax.random.randint(k_init, (), 0, 2**31 - 1))
    km = KMeans(n_clusters=n_colours, n_init=1, max_iter=100, random_state=seed).fit(pixels[subset])
    return km.cluster_centers_.astype(np.float32), km.predict(pixels)


def transfer_palette(key, source, target, method, n_steps, step_size, n_snapshots=10, settings=flows.Settings()):
    """Euler flow of the palette `source` [K, 3] towards `target` [K', 3] with METHODS[method].

    Returns:
      snapshots [n_snapshots + 1, K, 3]: the palette at steps 0, n_steps / n_snapshots, ..., n_steps
      (n_steps must be a multiple of n_snapshots).
    """
    snaps, _ = flows.run_flow(key, jnp.asarray(source), jnp.asarray(target), method, n_steps, step_size,
                              n_steps // n_snapshots, settings, optimizer="sgd")
    return snaps


def recolour(image, labels, colours):
    """The image [H, W, 3] with pixel p replaced by colours[labels[p]] (clipped to [0, 1]): [H, W, 3]."""
    return np.clip(np.asarray(colours)[labels].reshape(image.shape), 0.0, 1.0)


if __name__ == "__main__":
    from tsw_sl.experiments.colour_report import main

    main()
