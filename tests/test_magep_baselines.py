"""Baselines: Monomial-NFN, HNP and NP linear layers span exactly the equivariant linear maps of their groups
(brute force over tiny groups, Burnside counts), the authors' term sets ("paper") their sizes and spans, two-sided
symmetry of layers, IO embeddings and pools, STATNN statistics."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.flatten_util import ravel_pytree

from common import NetworkSpec, WeightSpace, testing
from common.groups import MonomialGroup
from common.training import trainable_parameters
from magep.baselines import (HNPLinear, HNPPool, IOEmbedding, MonomialLinear, MonomialPool, NPLinear, NPPool, StatNN,
                             hnp_pool, linear_plan, sharing_linear, standardization_stats, standardize, statistics)
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


def _linear_maps(spec, group, terms="complete"):
    """(linear coefficient count, constant coefficient count, rank of the linear maps, rank of the constant
    outputs, one map at shifted coefficients) of the plan's layer on one-channel features, in float64."""
    plan = linear_plan(spec, group, terms)
    ones = {name: 1 for name, _ in plan.in_slots}
    with jax.enable_x64(True):
        coeffs = plan.init(jax.random.key(0), ones, ones, jnp.float64)
        linear = {t.name for t in plan.terms if t.inp is not None}
        feats = random_features(0, spec, channels=1)
        flat, unravel = ravel_pytree(feats)
        theta, unravel_theta = ravel_pytree({k: coeffs[k] for k in linear})
        consts, unravel_consts = ravel_pytree({k: v for k, v in coeffs.items() if k not in linear})

        def matrix(th):
            full = {**coeffs, **unravel_theta(th)}
            return jax.jacfwd(lambda u: ravel_pytree(sharing_linear(full, unravel(u), spec, group, terms))[0])(flat)

        def offset(c):
            full = {**coeffs, **unravel_consts(c), **jax.tree.map(jnp.zeros_like, unravel_theta(theta))}
            return ravel_pytree(sharing_linear(full, feats, spec, group, terms))[0]

        basis = jax.jit(jax.jacfwd(matrix))(theta).reshape(flat.size**2, -1)
        offsets = jax.jit(jax.jacfwd(offset))(consts)
        ranks = np.linalg.matrix_rank(np.asarray(basis)), np.linalg.matrix_rank(np.asarray(offsets))
        return theta.size, consts.size, *ranks, np.asarray(jax.jit(matrix)(theta + 0.3))


@pytest.mark.parametrize("group", ["hnp", "np", "monomial_sign"])
def test_linear_layer_is_the_whole_commutant(group):
    """#linear coefficients = dim of the equivariant linear maps (Burnside: mean of tr(rho(g))^2), the
    coefficients are linearly independent maps, and each map commutes with every group element; the
    constant terms span the invariant vectors (mean of tr(rho(g)))."""
    spec = TINY
    rhos = [_rho(spec, g) for g in _group(spec, group)]
    traces = np.array([np.trace(r) for r in rhos])
    n_linear, n_const, rank, const_rank, m = _linear_maps(spec, group)
    assert n_linear == rank == round(np.mean(traces**2))
    assert n_const == const_rank == round(np.mean(traces))
    for r in rhos:
        np.testing.assert_allclose(m @ r, r @ m, atol=1e-10)


@pytest.mark.parametrize("group", ["hnp", "np"])
def test_paper_terms_span_the_commutant_but_one_term(group):
    """The authors' term sets: more coefficients than the commutant's dimension (redundant terms and one constant
    per broadcast pattern), equivariant maps spanning all of it (NP) or all but the n_L-dimensional
    W^(L) <- b^(L-1) term (HNP), constants spanning the invariant vectors."""
    spec = TINY
    rhos = [_rho(spec, g) for g in _group(spec, group)]
    traces = np.array([np.trace(r) for r in rhos])
    n_linear, n_const, rank, const_rank, m = _linear_maps(spec, group, "paper")
    missing = spec.widths[-1] if group == "hnp" else 0
    assert rank == round(np.mean(traces**2)) - missing
    assert const_rank == round(np.mean(traces)) < n_const
    assert n_linear > rank if group == "hnp" else n_linear == rank
    for r in rhos:
        np.testing.assert_allclose(m @ r, r @ m, atol=1e-10)


# Parameters of the authors' own HNPLinear / NPLinear (AllanYangZhou/nfn nfn/layers/layers.py), instantiated
# in PyTorch on these specs with (in, out) channels per kernel position: (spec, in, out) -> (HNP, NP).
AUTHORS_LAYER_SIZES = {
    ((3, 4, 5, 2), ((), (), ()), 1, 3): (579, 240), ((3, 4, 5, 2), ((), (), ()), 2, 3): (1098, 426),
    ((2, 3, 2), ((), ()), 1, 3): (330, 132), ((2, 3, 2), ((), ()), 2, 3): (624, 228),
    ((2, 32, 32, 1), ((), (), ()), 2, 3): (633, 426),
    ((1, 4, 3), ((3, 3), ()), 1, 3): (1992, 1428), ((1, 4, 3), ((3, 3), ()), 2, 3): (3897, 2724),
    ((2, 4, 4, 3), ((3, 3), (2, 2), ()), 2, 3): (11457, 4410),
}


@pytest.mark.parametrize("case", sorted(AUTHORS_LAYER_SIZES))
def test_paper_terms_have_the_authors_layer_sizes(case):
    widths, kernels, c_in, c_out = case
    spec = NetworkSpec(widths, kernels)
    per_position = lambda c: tuple(c * k for k in spec.feature_channels)  # kernel positions as channels
    for cls, want in zip((HNPLinear, NPLinear), AUTHORS_LAYER_SIZES[case]):
        layer = nnx.eval_shape(lambda: cls(spec, per_position(c_in), per_position(c_out), rngs=nnx.Rngs(0),
                                           terms="paper"))  # shapes only, nothing initialised
        assert trainable_parameters(layer) == want


def test_paper_terms_only_for_permutation_groups():
    with pytest.raises(ValueError, match="terms='paper' exists for groups"):
        linear_plan(TINY, "monomial_positive", "paper")
    with pytest.raises(ValueError, match="terms must be one of"):
        HNPLinear(TINY, 1, 1, rngs=nnx.Rngs(0), terms="authors")


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


@pytest.mark.parametrize("terms", ["complete", "paper"])
@pytest.mark.parametrize("name", ["mlp", "cnn", "siren"])
def test_hnp_np_layers_and_pools_two_sided(name, terms):
    spec = SPECS[name]
    out = 2 if terms == "complete" else tuple(2 * k for k in spec.feature_channels)
    with jax.enable_x64(True):
        feats = random_features(2, spec)
        group, positive = MonomialGroup(spec, "none"), MonomialGroup(spec, "positive")
        hnp = HNPLinear(spec, spec.feature_channels, out, rngs=nnx.Rngs(0), terms=terms)
        testing.assert_equivariant(jitted(hnp), group, jax.random.key(3), feats, broken=(IO_PERMUTATION, positive),
                                   **CHECK_X64)
        np_layer = NPLinear(spec, spec.feature_channels, out, rngs=nnx.Rngs(1), terms=terms)
        testing.assert_equivariant(jitted(np_layer), group, jax.random.key(4), feats, broken=(positive,), **CHECK_X64)
        for redundant_means in (True, False):
            testing.assert_invariant(jitted(HNPPool(spec, spec.feature_channels, redundant_means=redundant_means)),
                                     group, jax.random.key(5), feats, check_uncoupled=False,
                                     broken=(IO_PERMUTATION, positive), **CHECK_X64)
        testing.assert_invariant(jitted(NPPool(spec, spec.feature_channels)), group, jax.random.key(6), feats,
                                 check_uncoupled=False, broken=(positive,), **CHECK_X64)


@pytest.mark.parametrize("layer, terms", [(MonomialLinear, "complete"), (HNPLinear, "paper"), (NPLinear, "complete")])
def test_linear_layers_channels_leading_equal_channels_last(layer, terms):
    """``layout="channels_leading"`` (channels before the batch axes, in and out; what MAGEP-NFN's embedding
    runs in) gives the channels-last layer's numbers moved, including HNP's redundant input means; a wrong
    layout name or a WeightSpace passed as channels leading is a ValueError."""
    spec = SPECS["cnn"]
    kwargs = {} if terms == "complete" else {"terms": terms}
    with jax.enable_x64(True):
        feats = random_features(8, spec, batch=(3,))
        lin = layer(spec, spec.feature_channels, 4, rngs=nnx.Rngs(5), **kwargs)
        lead = lambda xs: tuple(jnp.moveaxis(x, -1, 0) for x in xs)
        want = lin(feats)
        got_w, got_b = jax.jit(lambda w, b: lin((w, b), layout="channels_leading"))(lead(feats.weights),
                                                                                      lead(feats.biases))
        for got, ref in zip(got_w + got_b, want.weights + want.biases):
            np.testing.assert_allclose(jnp.moveaxis(got, 0, -1), ref, rtol=1e-12, atol=1e-12)
        with pytest.raises(ValueError, match="layout must be one of"):
            lin(feats, layout="channels_first")
        with pytest.raises(ValueError, match="channels-leading feats must be a"):
            lin(feats, layout="channels_leading")


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_io_embedding_breaks_only_io_permutations(name):
    """The authors' NP layer with io_embed: IOEmbedding -> NPLinear is hidden-neuron equivariant, and input/output
    permutations (a symmetry of NPLinear alone) change it."""
    spec = SPECS[name]
    with jax.enable_x64(True):
        feats = random_features(7, spec)
        embed = IOEmbedding(spec, spec.feature_channels, rngs=nnx.Rngs(2))
        layer = NPLinear(spec, spec.feature_channels, 2, rngs=nnx.Rngs(3), terms="paper")
        np_layer, io = jitted(layer), IO_PERMUTATION.move
        flat = lambda ws: ravel_pytree(ws)[0]
        np.testing.assert_allclose(flat(np_layer(io(feats))), flat(io(np_layer(feats))), rtol=1e-10, atol=1e-12)
        embedded, group = jitted(embed), MonomialGroup(spec, "none")
        testing.assert_equivariant(lambda x: np_layer(embedded(x)), group, jax.random.key(9), feats,
                                   broken=(IO_PERMUTATION,), **CHECK_X64)
        n0, nL, size = spec.widths[0], spec.widths[-1], trainable_parameters(embed)
        assert size == n0 * spec.feature_channels[0] + 2 * nL


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


def test_standardization_per_entry_and_per_tensor():
    """np_inv's input standardisation: per entry (authors) the training features get mean 0 and std 1 entry by
    entry (a constant entry: std counted as 1) but hidden permutations no longer commute with it; per tensor it
    commutes with them (and not with scalings)."""
    spec = SPECS["cnn"]
    with jax.enable_x64(True):
        feats = random_features(8, spec, batch=(6,))
        constant = feats.weights[-1].at[:, 0, 0, 0].set(0.25)  # one entry equal in every network
        feats = WeightSpace(feats.weights[:-1] + (constant,), feats.biases, is_features=True)
        stats = standardization_stats(feats)
        z = standardize(feats, stats)
        for x in jax.tree.leaves(z):
            np.testing.assert_allclose(np.asarray(x).mean(0), 0.0, atol=1e-12)
        np.testing.assert_allclose(np.asarray(z.weights[1]).std(0), 1.0, rtol=1e-10)
        assert float(stats[1].weights[-1][0, 0, 0]) == 1.0 and np.all(np.asarray(z.weights[-1][:, 0, 0, 0]) == 0.0)
        group = MonomialGroup(spec, "none")
        one = jax.tree.map(lambda x: x[0], feats)
        g = group.sample(jax.random.key(10))
        flat = lambda ws: ravel_pytree(ws)[0]
        gap = flat(standardize(group.act(g, one), stats)) - flat(group.act(g, standardize(one, stats)))
        assert float(jnp.max(jnp.abs(gap))) > 1e-3
        per_tensor = standardization_stats(feats, per="tensor")
        assert per_tensor[0].weights[0].shape == (1, 1, spec.feature_channels[0])
        testing.assert_equivariant(lambda x: standardize(x, per_tensor), group, jax.random.key(11), one,
                                   check_uncoupled=False, broken=(MonomialGroup(spec, "positive"),), **CHECK_X64)
    with pytest.raises(ValueError, match="per must be one of"):
        standardization_stats(feats, per="layer")
