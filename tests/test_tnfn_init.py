"""Initialisation of the Transformer-NFN layers: the authors' scheme (init="authors") against its formula, and
the default scheme unchanged (docs/transformer_nfn.md §3)."""
import math

import jax
import numpy as np
import pytest
from flax import nnx

from transformer_nfn import AccuracyPredictor, TransformerEquivariant, TransformerInvariant, TransformerSpec, terms

SPEC = TransformerSpec(num_blocks=2, num_heads=2, d_model=6, d_k=3, d_v=4, d_ffn=5)

# The authors' fans, written as they count them: (axes of the input tensor, which of them are "in"); the channel
# d is "in" for every non-constant term. Axes: h heads, D model, k = Dk, v = Dv, A = DA; QK and VO enter per
# head as "hDD"; a constant's axes are its output's (e = c_out). phi12 reads b_b's shape as DA and th6 as
# [1, 1] with one channel: quirks of the authors' code, kept.
AUTHORS_FANS = {
    "phi_q": ("hDk", "001"), "phi_k": ("hDk", "001"), "phi_v": ("hDv", "001"), "phi_o1": ("hvD", "001"),
    "phi_o2": ("hvD", "000"),
    "phi1": ("hDD", "111"), "phi2": ("hDD", "111"), "phi3": ("hDD", "110"), "phi4": ("DA", "11"), "phi5": ("DA", "01"),
    "phi6": ("DA", "10"), "phi7": ("DA", "00"), "phi8": ("AD", "11"), "phi9": ("AD", "01"), "phi10": ("A", "1"),
    "phi11": ("A", "0"), "phi12": ("A", "1"), "beta": ("e", "c"),
    "psi1": ("hDD", "111"), "psi2": ("hDD", "111"), "psi3": ("DA", "11"), "psi4": ("DA", "10"), "psi5": ("AD", "11"),
    "psi6": ("AD", "01"), "psi7": ("A", "1"), "psi8": ("A", "0"), "psi9": ("D", "1"), "gamma": ("e", "c"),
    "lam1": ("hDD", "111"), "lam2": ("hDD", "111"), "lam3": ("DA", "11"), "lam4": ("DA", "10"), "lam5": ("AD", "11"),
    "lam6": ("AD", "01"), "lam7": ("A", "1"), "lam8": ("A", "0"), "lam9": ("D", "1"),
    "lam10": ("eD", "cc"),
    "omg1": ("hDD", "111"), "omg2": ("hDD", "111"), "omg3": ("DA", "11"), "omg4": ("AD", "11"), "omg5": ("A", "1"),
    "omg6": ("D", "1"), "omg7": ("eD", "cc"),
    "th1": ("hDD", "111"), "th2": ("hDD", "111"), "th3": ("DA", "11"), "th4": ("AD", "11"), "th5": ("A", "1"),
    "th6": None, "th7": ("e", "c"),
}
# (squared?, terms) in the authors' call order; a term called twice keeps the later std, a term listed twice in
# one call counts twice in its fans.
AUTHORS_CALLS = {
    "equivariant": [(False, ["phi_q"]), (False, ["phi_k"]), (False, ["phi_v"]), (False, ["phi_o1", "phi_o2"]),
                    (False, ["phi11", "phi12", "beta"]), (True, ["phi1", "phi2", "phi3"]),
                    (True, ["phi4", "phi5", "phi6", "phi7", "phi8", "phi9", "phi10"]),
                    (False, ["psi8", "psi9", "gamma"]), (True, ["psi1", "psi2"]),
                    (True, ["psi3", "psi4", "psi5", "psi6", "psi7"]),
                    (False, ["lam8", "lam9", "lam10"]), (True, ["lam1", "lam2"]),
                    (True, ["lam3", "lam4", "lam5", "lam6", "lam7"]),
                    (False, ["omg5", "omg6", "omg7"]), (True, ["omg1", "omg2"]),
                    (True, ["omg3", "omg4", "omg4", "omg5"])],
    "invariant": [(False, ["th5", "th6", "th7"]), (True, ["th1", "th2"]), (True, ["th3", "th4"])],
}


def _expected_stds(spec, c_in, c_out, layer):
    """{term: std} from AUTHORS_FANS and AUTHORS_CALLS: xavier std over each call's summed fans, squared if flagged."""
    size = dict(h=spec.num_heads, D=spec.d_model, k=spec.d_k, v=spec.d_v, A=spec.d_ffn, e=c_out)

    def fan(term):
        if AUTHORS_FANS[term] is None:  # th6
            return 1, 1
        axes, mask = AUTHORS_FANS[term]
        if "c" in mask:  # constant: nothing in
            return 0, math.prod(size[a] for a in axes)
        fan_in = c_in * math.prod(size[a] for a, m in zip(axes, mask) if m == "1")
        return fan_in, math.prod(size[a] for a, m in zip(axes, mask) if m == "0")

    std = {}
    for squared, names in AUTHORS_CALLS[layer]:
        xavier = math.sqrt(2.0 / sum(sum(fan(t)) for t in names))
        std |= {t: xavier**2 if squared else xavier for t in names}
    return std


def _coeffs(module):
    return {t.name: np.asarray(getattr(module, t.name)[...], np.float64) for t in module.plan.terms}


@pytest.mark.parametrize("layer", ["equivariant", "invariant"])
def test_authors_init_matches_formula_per_group(layer):
    """Per group of terms sharing one std, the empirical std of the drawn coefficients (both blocks) is the
    formula's, within 4 standard errors; every coefficient divided by its std pools to unit variance; the
    constants (biases) are non-zero, unlike the default scheme's."""
    c_in, c_out = (5, 6) if layer == "equivariant" else (6, 7)
    cls = TransformerEquivariant if layer == "equivariant" else TransformerInvariant
    coeffs = _coeffs(cls(SPEC, c_in, c_out, rngs=nnx.Rngs(3), init="authors"))
    want = _expected_stds(SPEC, c_in, c_out, layer)
    assert set(coeffs) == set(want)
    for std in sorted(set(want.values())):
        group = [t for t in want if want[t] == std]
        x = np.concatenate([coeffs[t].ravel() for t in group])
        se = 1 / math.sqrt(2 * x.size)
        assert abs(x.std() / std - 1) < 4 * se + 1e-6, (group, x.std(), std, x.size)
    pooled = np.concatenate([coeffs[t].ravel() / want[t] for t in want])
    assert abs(pooled.std() - 1) < 0.02 and abs(pooled.mean()) < 0.02
    constants = [t for t in want if AUTHORS_FANS[t] is not None and "c" in AUTHORS_FANS[t][1]]
    default = _coeffs(cls(SPEC, c_in, c_out, rngs=nnx.Rngs(3)))
    for t in constants:
        assert np.all(coeffs[t] != 0) and np.all(default[t] == 0), t


def test_authors_init_ffn_scaling_variant():
    """The ffn_scaling layers keep the paper terms' stds; their extra terms take those of omg1 / th1."""
    eq = _coeffs(TransformerEquivariant(SPEC, 5, 6, ffn_scaling=True, rngs=nnx.Rngs(4), init="authors"))
    inv = _coeffs(TransformerInvariant(SPEC, 6, 7, ffn_scaling=True, rngs=nnx.Rngs(4), init="authors"))
    cases = ((eq, (5, 6, "equivariant"), ("omg_ab", "omg_ab2", "omg_voab"), "omg1"),
             (inv, (6, 7, "invariant"), ("th8", "th9", "th10"), "th1"))
    for coeffs, (c_in, c_out, layer), extra, ref in cases:
        want = _expected_stds(SPEC, c_in, c_out, layer)
        want |= {t: want[ref] for t in extra}
        pooled = np.concatenate([coeffs[t].ravel() / want[t] for t in coeffs])
        assert abs(pooled.std() - 1) < 0.03, layer
        x = np.concatenate([coeffs[t].ravel() for t in extra])
        assert abs(x.std() / want[ref] - 1) < 4 / math.sqrt(2 * x.size), layer


def _predictor(seed, **kw):
    return AccuracyPredictor(TransformerSpec(2, 2, 4, 3, 2, 5), classifier_widths=(4, 4, 3), embedding_size=20,
                             hidden_channels=(2,), invariant_features=3, width=5, rngs=nnx.Rngs(seed), **kw)


@pytest.mark.parametrize("ffn_scaling", [False, True])
def test_default_init_unchanged(ffn_scaling):
    """init="default" is today's initialisation: bit for bit the predictor built without the argument and the
    engine's unit-rule draw from the layers' keys, and the fingerprint (sum, sum of squares) recorded before
    the option existed, to float rounding (the exact bits depend on XLA flags)."""
    default = _predictor(7, ffn_scaling=ffn_scaling, init="default")
    implicit = _predictor(7, ffn_scaling=ffn_scaling)
    state = nnx.to_pure_dict(nnx.state(default, nnx.Param))
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(nnx.to_pure_dict(nnx.state(implicit, nnx.Param)))):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    rngs = nnx.Rngs(7)  # the predictor draws the equivariant layer's key first, then the invariant layer's
    for layer, c_in, c_out in (default.equivariant[0], 1, 2), (default.invariant, 2, 3):
        unit = terms.init(rngs.params(), layer.plan, 2, c_in, c_out)
        for name, value in unit.items():
            assert np.array_equal(np.asarray(getattr(layer, name)[...]), np.asarray(value)), name
    recorded = {False: [(70.15770625183578, 5.085794955222809), (2.541711211050692, 2.035378938409849),
                        (129.98814043057615, 39.08484091552236)],
                True: [(82.194417985136, 3.07559174761991), (4.419027408739547, 1.3593197116060765),
                       (143.9021683615652, 36.39857848111569)]}[ffn_scaling]
    for part, (squares, total) in zip((state["equivariant"][0], state["invariant"], state), recorded):
        leaves = [np.asarray(x, np.float64) for x in jax.tree.leaves(part)]
        np.testing.assert_allclose([sum((x * x).sum() for x in leaves), sum(x.sum() for x in leaves)],
                                   [squares, total], rtol=1e-6)


def test_predictor_threads_authors_init():
    """AccuracyPredictor(init="authors") initialises its NFN layers with the authors' scheme (constants
    non-zero) and leaves the branch MLPs as under the default."""
    authors, default = _predictor(1, init="authors"), _predictor(1)
    assert np.all(np.asarray(authors.equivariant[0].beta[...]) != 0)
    assert np.all(np.asarray(authors.invariant.th7[...]) != 0)
    assert np.all(np.asarray(default.equivariant[0].beta[...]) == 0)
    assert not np.allclose(np.asarray(authors.equivariant[0].phi1[...]), np.asarray(default.equivariant[0].phi1[...]))
    assert np.array_equal(np.asarray(authors.head.kernel[...]), np.asarray(default.head.kernel[...]))


def test_bad_init_names_the_argument():
    with pytest.raises(ValueError, match="init must be one of"):
        TransformerEquivariant(SPEC, 1, 2, rngs=nnx.Rngs(0), init="xavier")
    with pytest.raises(ValueError, match="init must be one of"):
        _predictor(0, init="torch")
