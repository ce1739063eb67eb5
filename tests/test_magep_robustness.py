"""Numerical robustness of the scale-invariant predictors in float32 (docs/magep.md §4, §8, §11 pitfall 2):
MAGEP (normalize=True, the default) and Monomial-NFN on Small-CNN-Zoo networks from the zoo's initialisers,
multiplied by 1e-3, 1 and 1e4, and moved by group elements with scalings d ~ U[1, 1e4] (the robustness study
of §9.1): finite logits and gradients, predictions that differ across networks and are not saturated, and
invariance within 1e-3 relative, with the two-sided check (broken actions change the output)."""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from common import WeightSpace, groups, testing
from common.groups import MonomialGroup
from magep import GeneralizationPredictor, normalize_scale
from magep import zoo_recipes
from magep.baselines.pools import unit_channels
from magep.preprocess import invariant_log_scale, normalize_with_suffix
from magep.terms import channels_leading, suffix_products
from tests.common_fixtures import CNN_ZOO_SPEC
from tests.magep_fixtures import IO_PERMUTATION, jitted, random_features

SPEC = CNN_ZOO_SPEC
ACTIVATION = {"positive": "relu", "sign": "tanh"}
WRONG = {"positive": "sign", "sign": "positive"}
SCALES = (1e-3, 1.0, 1e4)


@dataclasses.dataclass(frozen=True)
class UniformMonomialGroup(MonomialGroup):
    """The study's augmentation: positive scalings d ~ U[1, 1e4] (uniform, as in §9.1), or random signs."""

    scale_range: tuple[float, float] = (1.0, 1e4)

    def sample(self, key):
        return groups.sample_monomial(key, self.spec, self.scaling, scale_range=self.scale_range,
                                      scale_distribution="uniform", dtype=self.dtype)


@functools.cache  # the same networks for every parametrisation: built (and compiled) once per process
def zoo_networks(n: int = 5) -> WeightSpace:
    """n raw Small-CNN-Zoo networks, one per kernel initialiser (init_std from 1e-3 up), with small biases."""
    hp = {"w_init": jnp.arange(n, dtype=jnp.int32) % len(zoo_recipes.CNN_W_INITS),
          "init_std": jnp.asarray(np.geomspace(1e-3, 0.5, n)[::-1], jnp.float32)}
    ws = jax.jit(jax.vmap(zoo_recipes.init_cnn))(jax.random.split(jax.random.key(0), n), hp)
    rng = np.random.default_rng(0)
    biases = tuple(jnp.asarray(0.05 * rng.normal(size=b.shape), jnp.float32) for b in ws.biases)
    return WeightSpace(ws.weights, biases)


def predictor(nfn: str, scaling: str) -> GeneralizationPredictor:
    small = dict(channels=4, num_equivariant=1) if nfn == "magep" else dict(channels=(3, 3, 2))
    return GeneralizationPredictor(SPEC, nfn=nfn, scaling=scaling, head=16, rngs=nnx.Rngs(0), **small)


def nonfinite_grads(model, targets):
    """features -> names of the parameter leaves whose BCE gradient has a non-finite entry (one compile)."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(p, feats):
        z = nnx.merge(graphdef, p, rest).logits(feats)
        return jnp.mean(jnp.maximum(z, 0) - z * targets + jnp.log1p(jnp.exp(-jnp.abs(z))))

    grad = jax.jit(jax.grad(loss))
    return lambda feats: [jax.tree_util.keystr(k) for k, g in jax.tree_util.tree_flatten_with_path(grad(params, feats))[0]
                          if not np.all(np.isfinite(np.asarray(g)))]


@pytest.mark.parametrize("nfn", ["magep", "monomial"])
@pytest.mark.parametrize("scaling", ["positive", "sign"])
def test_predictor_float32_robust_across_weight_scales(nfn, scaling):
    model = predictor(nfn, scaling)
    logits = jitted(model, "logits")
    nets = zoo_networks()
    bad_grads = nonfinite_grads(model, jnp.linspace(0.2, 0.8, nets.batch_shape[0]))
    group = UniformMonomialGroup(SPEC, scaling)
    for i, scale in enumerate(SCALES):
        feats = jax.tree.map(lambda x: x * scale, nets).to_features()
        z = np.asarray(logits(feats))
        p = np.asarray(jax.nn.sigmoid(jnp.asarray(z)))
        assert np.all(np.isfinite(z)), (scale, z)
        assert np.all((p > 0) & (p < 1)), f"saturated predictions at scale {scale}: logits {z}"
        assert np.ptp(z) > 1e-4 * (1 + np.max(np.abs(z))), f"predictions do not vary at scale {scale}: {z}"
        assert bad_grads(feats) == [], f"non-finite gradients at scale {scale}"
        # Monomial-NFN never couples neighbouring layers' hidden indices, so uncoupled permutations are
        # invisible to it (tests/test_magep_models.py); the input/output permutation must change it. The wrong
        # group is checked at scale 1 (tanh saturates on 1e4-scale features, where no positive scaling shows).
        # At scale 1e-3 these networks are their biases: the end-to-end weight map (1e-12 times the unscaled one)
        # is ~1e-9 of the bias paths, and MAGEP normalises by the whole affine map (`magep.normalize_scale`), so
        # hidden couplings sit below float32 resolution there (a 1.7e-7 relative change); checked at 1 and 1e4.
        broken = (IO_PERMUTATION,) + ((MonomialGroup(SPEC, WRONG[scaling]),) if scale == 1.0 else ())
        testing.assert_invariant(logits, group, jax.random.key(i), feats, check_uncoupled=nfn == "magep" and scale >= 1,
                                 broken=broken, n_trials=2, rtol=1e-3, atol=1e-3 * float(np.max(np.abs(z))))


def test_normalize_scale_bounds_invariants_at_any_float32_scale():
    """After normalisation ||W^(L,0)||^2 + sum_t ||W^(L,t) b^(t)||^2 = 1 per channel (log r = 0), for inputs from
    1e-20 to 1e20 in float32, and an all-zero channel stays zero; outputs and gradients finite, also at the zero
    channel (double where)."""
    feats = random_features(0, SPEC, channels=3, dtype=jnp.float32)
    zero_channel = jnp.asarray([1.0, 1.0, 0.0], jnp.float32)
    feats = jax.tree.map(lambda x: x * zero_channel, feats)
    for scale in (1e-20, 1.0, 1e20):
        w = tuple(scale * x for x in feats.weights)
        b = tuple(scale * x for x in feats.biases)
        nw, nb = jax.jit(normalize_scale)(w, b)
        assert all(np.all(np.isfinite(np.asarray(x))) for x in nw + nb)
        np.testing.assert_allclose(invariant_log_scale(nw, nb), 0.0, atol=1e-5)  # zero channel: reported as r = 1
        assert all(np.all(np.asarray(x)[..., 2] == 0) for x in nw + nb)
        grads = jax.jit(jax.grad(lambda w, b: sum(jnp.sum(jnp.sin(x)) for x in jax.tree.leaves(normalize_scale(w, b))),
                                 argnums=(0, 1)))(w, b)
        assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree.leaves(grads)), scale


def test_normalize_with_suffix_gives_the_products_of_its_output():
    """The suffix products that `normalize_with_suffix` rescales from the scale's own products are those of its
    output weights, W^(L,t) / r^(L-t), for float32 networks under the ReLU rescaling W^(l) -> a W^(l), b^(l) ->
    a^l b^(l) with a from 1e-8 to 1e8 (products of the raw weights from 1e-32 to 1e32) and with an all-zero
    channel; and they are not those of the raw inputs (the rescaling matters)."""
    feats = random_features(4, SPEC, channels=3, dtype=jnp.float32)
    feats = jax.tree.map(lambda x: x * jnp.asarray([1.0, 0.0, 2.0], jnp.float32), feats)
    for a in (1e-8, 1.0, 1e8):
        w = tuple(channels_leading(a * x) for x in feats.weights)
        b = tuple(channels_leading(a ** l * x) for l, x in enumerate(feats.biases, 1))
        nw, nb, suffix = jax.jit(normalize_with_suffix)(w, b)
        want = suffix_products(nw)
        for got, ref in zip(suffix, want):
            assert float(jnp.max(jnp.abs(ref))) > 0.01
            np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6 * float(jnp.max(jnp.abs(ref))))
        assert not any(np.allclose(got, ref, rtol=1e-3) for got, ref in zip(suffix, suffix_products(w)))


def test_normalize_scale_keeps_a_vanishing_end_to_end_map_bounded():
    """A channel whose end-to-end linear map W^(L,0) nearly vanishes (here: the last layer's rows orthogonal to the
    product below, to 1e-12) while its bias paths do not: the normalised tensors stay of order one (an earlier
    normalisation by ||W^(L,0)|| alone made them ~1e3 per layer here and the predictor's logits ~1e24 on such zoo
    networks), and the normalisation is still exactly invariant to the ReLU rescaling."""
    with jax.enable_x64(True):
        feats = random_features(2, SPEC, channels=1, dtype=jnp.float64)
        w = [np.asarray(x, np.float64) for x in feats.weights]
        below = np.eye(w[0].shape[-2])
        for x in w[:-1]:
            below = x[..., 0] @ below
        last = w[-1][..., 0] - w[-1][..., 0] @ below @ np.linalg.pinv(below)  # rows orthogonal to below's columns
        w[-1] = last[..., None] + 1e-12
        end_to_end = np.linalg.norm(last @ below)
        assert end_to_end < 1e-10
        nw, nb = normalize_scale(tuple(map(jnp.asarray, w)), tuple(feats.biases))
        assert max(float(jnp.max(jnp.abs(x))) for x in nw + nb) < 10
        a = 7.0
        w2 = tuple(a * jnp.asarray(x) for x in w)
        b2 = tuple(a ** l * jnp.asarray(x) for l, x in enumerate(feats.biases, 1))
        for got, want in zip(jax.tree.leaves(normalize_scale(w2, b2)), jax.tree.leaves((nw, nb))):
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)


def test_normalisation_scale_is_group_invariant():
    """r is an invariant: float32 features moved by d ~ U[1, 1e4] keep log r within 1e-5."""
    feats = random_features(1, SPEC, channels=2, dtype=jnp.float32)
    g = UniformMonomialGroup(SPEC, "positive").sample(jax.random.key(3))
    moved = groups.act(g, feats)
    np.testing.assert_allclose(invariant_log_scale(moved.weights, moved.biases),
                               invariant_log_scale(feats.weights, feats.biases), atol=1e-5)


def test_unit_channels_scale_free_with_finite_gradient_at_zero():
    x = jnp.asarray([[3.0, 4.0], [0.0, 0.0], [1e-30, -1e-30], [1e30, 0.0]], jnp.float32)
    np.testing.assert_allclose(unit_channels(x), [[0.6, 0.8], [0, 0], [2 ** -0.5, -(2 ** -0.5)], [1, 0]], rtol=1e-6)
    for a in (1e-20, 1e20):
        np.testing.assert_allclose(unit_channels(a * x[:1]), unit_channels(x[:1]), rtol=1e-6)
    grad = jax.grad(lambda x: jnp.sum(unit_channels(x) * jnp.asarray([1.0, 2.0])))(x)
    assert np.all(np.isfinite(np.asarray(grad)))
    np.testing.assert_array_equal(grad[1], 0.0)
