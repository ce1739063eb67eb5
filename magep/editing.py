"""INR editing (docs/magep.md §9.3): the image edits that make the targets, and an editor's SIRENs rendered on
their pixel grid, the output the editing loss compares with the edited image.

    target = dilate(images)                                   # [N, H, W, c] in [-1, 1]
    model = RenderedEdit(INREditor(spec, rngs=nnx.Rngs(0)), siren_grid(H, W))
    pixels = model.logits(feats)                              # [N, H * W * c]: the edited SIRENs rendered
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from common import WeightSpace
from common.nets import siren_apply

__all__ = ["dilate", "contrast", "EDITS", "RenderedEdit", "render_sirens"]


def _check_images(images: jax.Array, fn: str) -> jax.Array:
    images = jnp.asarray(images)
    if images.ndim < 3:
        raise ValueError(f"{fn}: images must be [..., H, W, c], got shape {tuple(images.shape)}")
    return images


def dilate(images: jax.Array, size: int = 3) -> jax.Array:
    """Grey dilation: each pixel becomes the maximum over the ``size`` x ``size`` window centred on it (clipped at
    the borders), per channel (the "Dilate" edit of the MNIST INRs; as ``scipy.ndimage.grey_dilation`` with
    ``mode="nearest"``). images [..., H, W, c] -> same shape."""
    images = _check_images(images, "dilate")
    if not isinstance(size, int) or size < 1 or size % 2 == 0:
        raise ValueError(f"dilate: size must be an odd positive int, got {size!r}")
    lead, pad = images.ndim - 3, size // 2
    return jax.lax.reduce_window(images, -jnp.inf, jax.lax.max, (1,) * lead + (size, size, 1), (1,) * images.ndim,
                                 [(0, 0)] * lead + [(pad, pad), (pad, pad), (0, 0)])


def contrast(images: jax.Array, factor: float = 1.5, low: float = -1.0, high: float = 1.0) -> jax.Array:
    """(x - m) * factor + m clipped to [low, high], m the mean of each image over pixels and channels (the
    "Contrast" edit of the CIFAR-10 INRs). images [..., H, W, c] -> same shape."""
    images = _check_images(images, "contrast")
    mean = images.mean(axis=(-3, -2, -1), keepdims=True)
    return jnp.clip((images - mean) * factor + mean, low, high)


EDITS = {"dilate": dilate, "contrast": contrast}


def render_sirens(ws: WeightSpace, coords: jax.Array, w0: float = 30.0) -> jax.Array:
    """SIRENs with leading batch axes (raw weights, leaves [..., n_l, n_{l-1}]) on coords [P, 2] ->
    [..., P, n_L]."""
    if not ws.batch_shape:
        return siren_apply(ws, coords, w0)
    return jax.vmap(lambda one: render_sirens(one, coords, w0))(ws)


class PixelGrid(nnx.Variable):
    """Fixed pixel coordinates (not an ``nnx.Param``: never trained)."""


class RenderedEdit(nnx.Module):
    """An editor (e.g. `magep.INREditor`, on SIREN features) followed by rendering: ``logits(feats)`` ->
    [..., P * n_L], the edited SIRENs on the grid ``coords`` [P, 2] (pixel-major, channels last: an image
    [H, W, c] flattened), so `common.accuracy_prediction.fit_predictor` trains the editor on pixels."""

    def __init__(self, editor: nnx.Module, coords: jax.Array, w0: float = 30.0):
        coords = jnp.asarray(coords, jnp.float32)
        if coords.ndim != 2 or coords.shape[1] != editor.spec.widths[0]:
            raise ValueError(f"RenderedEdit: coords must be [P, {editor.spec.widths[0]}], got {tuple(coords.shape)}")
        self.editor, self.coords, self.w0 = editor, PixelGrid(coords), w0

    def logits(self, feats: WeightSpace) -> jax.Array:
        edited = WeightSpace.from_features(self.editor(feats), self.editor.spec)
        pixels = render_sirens(edited, self.coords[...], self.w0)
        return pixels.reshape(pixels.shape[:-2] + (-1,))
