"""INR editing: the image edits against scipy / numpy, the rendered edit against a per-network SIREN loop, and an
editor that learns (pixel MSE falls, the best validation editor is returned, bad targets are named)."""
import jax
import numpy as np
import optax
import pytest
import scipy.ndimage
from flax import nnx

from common import NetworkSpec, WeightSpace
from common.nets import siren_apply
from magep import INREditor
from magep.editing import RenderedEdit, contrast, dilate
from magep.train import edited_mse, train_inr_editor
from magep.zoo_recipes import init_siren, siren_grid

H = W = 6


def test_dilate_matches_scipy_grey_dilation():
    images = np.random.default_rng(0).uniform(-1, 1, (3, H, W + 1, 2)).astype(np.float32)
    for size in (1, 3, 5):
        want = np.stack([scipy.ndimage.grey_dilation(img, size=(size, size, 1), mode="nearest") for img in images])
        np.testing.assert_array_equal(np.asarray(dilate(images, size)), want)
    with pytest.raises(ValueError, match="dilate: size must be an odd positive int, got 2"):
        dilate(images, 2)
    with pytest.raises(ValueError, match=r"dilate: images must be \[..., H, W, c\], got shape \(6, 7\)"):
        dilate(images[0, :, :, 0])


def test_contrast_scales_about_each_images_mean_and_clips():
    images = np.random.default_rng(1).uniform(-1, 1, (4, H, W, 3)).astype(np.float32)
    mean = images.mean(axis=(1, 2, 3), keepdims=True)
    np.testing.assert_allclose(np.asarray(contrast(images, 1.5)), np.clip((images - mean) * 1.5 + mean, -1, 1),
                               rtol=1e-6, atol=1e-6)
    out = np.asarray(contrast(images, 3.0))
    assert out.min() == -1.0 and out.max() == 1.0  # a strong contrast saturates


def _sirens(n: int, seed: int) -> WeightSpace:
    return jax.vmap(lambda k: init_siren(k, {}, 1))(jax.random.split(jax.random.key(seed), n))


def test_rendered_edit_is_the_edited_sirens_on_the_grid():
    ws, coords = _sirens(3, 0), siren_grid(H, W)
    spec = NetworkSpec.from_weights(jax.tree.map(lambda a: a[0], ws))
    editor = INREditor(spec, nfn="monomial", channels=2, rngs=nnx.Rngs(1), gamma_init=0.5)
    got = RenderedEdit(editor, coords).logits(ws.to_features())
    edited = WeightSpace.from_features(editor(ws.to_features()), spec)
    want = [siren_apply(jax.tree.map(lambda a: a[i], edited), coords)[:, 0] for i in range(3)]
    np.testing.assert_allclose(np.asarray(got), np.stack(want), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"RenderedEdit: coords must be \[P, 2\], got \(36, 3\)"):
        RenderedEdit(editor, np.zeros((H * W, 3)))


@pytest.mark.parametrize("nfn", ["monomial", "mlp"])  # MAGEP editors: equivariance in test_magep_models
def test_editor_learns_to_dilate(nfn, tmp_path):
    """A few Adam steps on 12 SIRENs: the training MSE against the dilated renderings falls; the returned editor is
    the best on validation and `edited_mse` scores it."""
    coords = siren_grid(H, W)
    ws = _sirens(16, 2)
    spec = NetworkSpec.from_weights(jax.tree.map(lambda a: a[0], ws))
    feats = ws.to_features()
    images = jax.vmap(lambda one: siren_apply(one, coords))(ws).reshape(16, H, W, 1)
    targets = np.asarray(dilate(images)).reshape(16, -1)
    train, val = (jax.tree.map(lambda a: a[:12], feats), targets[:12]), (jax.tree.map(lambda a: a[12:], feats), targets[12:])
    editor = INREditor(spec, nfn=nfn, channels=4, head=32, rngs=nnx.Rngs(3))
    before = edited_mse(editor, *train, coords)
    trained, history = train_inr_editor(editor, *train, coords, key=jax.random.key(4), num_steps=40, batch_size=4,
                                        optimizer=optax.adam(3e-3), validation=val, eval_every=10,
                                        run_dir=str(tmp_path / nfn))
    assert edited_mse(trained, *train, coords) < 0.9 * before
    assert history[-1]["best/neg_mse"] == pytest.approx(-edited_mse(trained, *val, coords), rel=1e-4)
    with pytest.raises(ValueError, match=r"train_inr_editor: targets must be \[R, 36\]"):
        train_inr_editor(editor, train[0], train[1][:, :5], coords, key=jax.random.key(0), num_steps=1)
