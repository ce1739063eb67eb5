"""Baselines: Monomial-NFN, HNP and NP linear layers span exactly the equivariant linear maps of their groups
(brute force over tiny groups, Burnside counts), two-sided symmetry of layers and pools, STATNN statistics."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.flatten_util import ravel_pytree

from common import NetworkSpec, testing
from common.groups import MonomialGroup
from magep.baselines import (HNPLinear, HNPPool, MonomialLinear, MonomialPool, NPLinear, NPPool, StatNN, hnp_pool,
                             linear_plan, sharing_linear, statistics)
from tests.magep_fixtures import CHECK_X64, IO_PERMUTATION, SPECS, jitted, random_features

TINY = NetworkSpec.mlp((2, 3, 2, 2))


def _group(spec, group):
    """All elements (perms per layer 0..L, signs per layer) of the finite group of `group` on `spec`."""
    L, n = spec.num_layers, spec.widths
    permuted = range(0, L + 1) if group == "np" else range(1, L)
    per_layer = []
    for l in range(L + 1):
        perms = list(itertools.permutations(range(n[l]))) if l in permuted else [tuple(range(n[l]))]
        signs = list(itertools.product((1, -1), repeat=n[l])) if group == "monomial_sign" and 0 < l < L else [(1,) * n[l]]
        per_layer.append([(np.array(p), np.array(s)) for p in perms for s in signs])
    return list(itertools.product(*per_layer))


def _rho(spec, g):
    """Matrix of g on the flattened features (order of ravel_pytree: W^(1..L) row-major, then b^(1..L))."""
    L, n = spec.num_layers, spec.widths
    sizes = [n[l] * n[l - 1] for l in range(1, L + 1)] + [n[l] for l in range(1, L + 1)]
    off = np.cumsum([0] + sizes)
    rho = np.zeros((off[-1], off[-1]))
    for l in range(1, L + 1):
        (pj, sj), (pk, sk) = g[l], g[l - 1]
        for j in range(n[l]):
            rho[off[L + l - 1] + j, off[L + l - 1] + pj[j]] = sj[j]
            for k in range(n[l - 1]):
                rho[off[l - 1] + j * n[l - 1] + k, off[l - 1] + pj[j] * n[l - 1] + pk[k]] = sj[j] * sk[k]
    return rho


@pytest.mark.parametrize("group", ["hnp", "np", "monomial_sign"])
def test_linear_layer_is_the_whole_commutant(group):
    """#linear coefficients = dim of the equivariant linear maps (Burnside: mean of tr(rho(g))^2), the
    coefficients are linearly independent maps, and each map commutes with every group element; the
    constant terms span the invariant vectors (mean of tr(rho(g)))."""
    spec, plan = TINY, linear_plan(TINY, group)
    elements = _group(spec, group)
    rhos = [_rho(spec, g) for g in elements]
    traces = np.array([np.trace(r) for r in rhos])
    ones = {name: 1 for name, _ in plan.in_slots}
    with jax.enable_x64(True):
        coeffs = plan.init(jax.random.key(0), ones, ones, jnp.float64)
        linear = {t.name for t in plan.terms if t.inp is not None}
        n_linear = sum(coeffs[k].size for k in linear)
        n_const = sum(v.size for k, v in coeffs.items() if k not in linear)
        assert n_linear == round(np.mean(traces**2))
        assert n_const == round(np.mean(traces))
        feats = random_features(0, spec, channels=1)
        flat, unravel = ravel_pytree(feats)
        theta, unravel_theta = ravel_pytree({k: coeffs[k] for k in linear})

        def matrix(th):
            full = {**coeffs, **unravel_theta(th)}
            return jax.jacfwd(lambda u: ravel_pytree(sharing_linear(full, unravel(u), spec, group))[0])(flat)

        basis = jax.jit(jax.jacfwd(matrix))(theta).reshape(flat.size**2, -1)
        assert np.linalg.matrix_rank(np.asarray(basis)) == n_linear
        m = np.asarray(jax.jit(matrix)(theta + 0.3))
    for r in rhos:
        np.testing.assert_allclose(m @ r, r @ m, atol=1e-10)


def test_sign_variant_adds_exactly_the_two_cross_terms():
    spec = SPECS["mlp"]  # L = 3
    pos = {t.name for t in linear_plan(spec, "monomial_positive").terms}
    sign = {t.name for t in linear_plan(spec, "monomial_sign").terms}
    assert pos <= sign
    assert sign - pos == {"W3<-b2|2", "b2<-W3|2"}


@pytest.mark.parametrize("name", ["mlp", "cnn", "siren"])
@pytest.mark.parametrize("scaling", ["positive", "sign"])
def test_monomial_linear_and_pool_two_sided(name, scaling):
    spec = SPECS[name]
    group = MonomialGroup(spec, scaling)
    layer_wrong = (MonomialGroup(spec, "positive"),) if scaling == "sign" else ()
    pool_wrong = (MonomialGroup(spec, "sign"),) if scaling == "positive" else ()
    with jax.enable_x64(True):
        feats = random_features(1, spec)
        layer = MonomialLinear(spec, spec.feature_channels, 2, scaling=scaling, rngs=nnx.Rngs(0))
        testing.assert_equivariant(jitted(layer), group, jax.random.key(1), feats, check_uncoupled=False,
                                   broken=(IO_PERMUTATION, *layer_wrong), **CHECK_X64)
        # the pool sees channel directions only (x / ||x||), so feed it several channels, as after a layer
        feats = random_features(2, spec, channels=3)
        pool = MonomialPool(spec, 3, scaling=scaling)
        testing.assert_invariant(jitted(pool), group, jax.random.key(2), feats, check_uncoupled=False,
                                 broken=(IO_PERMUTATION, *pool_wrong), **CHECK_X64)
        assert pool(feats).shape == (pool.out_features,)


@pytest.mark.parametrize("name", ["mlp", "cnn", "siren"])
def test_hnp_np_layers_and_pools_two_sided(name):
    spec = SPECS[name]
    with jax.enable_x64(True):
        feats = random_features(2, spec)
        group, positive = MonomialGroup(spec, "none"), MonomialGroup(spec, "positive")
        hnp = HNPLinear(spec, spec.feature_channels, 2, rngs=nnx.Rngs(0))
        testing.assert_equivariant(jitted(hnp), group, jax.random.key(3), feats, broken=(IO_PERMUTATION, positive),
                                   **CHECK_X64)
        np_layer = NPLinear(spec, spec.feature_channels, 2, rngs=nnx.Rngs(1))
        testing.assert_equivariant(jitted(np_layer), group, jax.random.key(4), feats, broken=(positive,), **CHECK_X64)
        testing.assert_invariant(jitted(HNPPool(spec, spec.feature_channels)), group, jax.random.key(5), feats,
                                 check_uncoupled=False, broken=(IO_PERMUTATION, positive), **CHECK_X64)
        testing.assert_invariant(jitted(NPPool(spec, spec.feature_channels)), group, jax.random.key(6), feats,
                                 check_uncoupled=False, broken=(positive,), **CHECK_X64)


def test_hnp_pool_layout():
    spec = SPECS["mlp"]
    feats = random_features(3, spec, channels=2)
    v = np.asarray(hnp_pool(feats))
    L, n0, nL = spec.num_layers, spec.widths[0], spec.widths[-1]
    assert v.shape == ((2 * L + n0 + 2 * nL) * 2,)
    np.testing.assert_allclose(v[:2], np.asarray(feats.weights[0]).mean((0, 1)), rtol=1e-6, atol=1e-7)  # float32 means
    np.testing.assert_allclose(v[-2 * nL:], np.asarray(feats.biases[-1]).reshape(-1), rtol=1e-6)
    assert HNPPool(spec, 2).out_features == v.size


def test_statnn_statistics_and_symmetry():
    spec = SPECS["mlp"]
    with jax.enable_x64(True):
        feats = random_features(4, spec)
        s = np.asarray(statistics(feats))
        assert s.shape == (14 * spec.num_layers,)
        w = np.asarray(feats.weights[1][..., 0]).ravel()
        np.testing.assert_allclose(s[7:14], [w.mean(), w.var(), *np.quantile(w, [0, 0.25, 0.5, 0.75, 1])], rtol=1e-10)
        model = StatNN(spec, spec.feature_channels, 3, hidden=(8,), rngs=nnx.Rngs(0))
        testing.assert_invariant(jitted(model), MonomialGroup(spec, "none"), jax.random.key(7), feats,
                                 check_uncoupled=False, broken=(MonomialGroup(spec, "positive"),), **CHECK_X64)
