"""`common.sharing`: the generalised admissibility rules, ties, pooling and init rules, and the gate that the
MAGEP / Monomial-NFN / NP / HNP layers built on it are unchanged (same term names, same initial parameters,
same outputs) against values frozen from the layers before the engine moved to `common` (commit ea5499f;
tests/data/sharing_gate.npz)."""
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from common import NetworkSpec, SharingPlan
from common.sharing import channel_matmul
from magep import GeneralizationPredictor, INRClassifier, PolynomialEquivariant, PolynomialInvariant
from magep.base import TermCoefficients
from magep.baselines import HNPLinear, MonomialLinear, NPLinear, linear_plan
from magep.equivariant import equivariant_plan
from magep.invariant import invariant_plan
from tests.magep_fixtures import random_features

GATE = np.load(pathlib.Path(__file__).parent / "data" / "sharing_gate.npz")
SPEC3, SPEC2 = NetworkSpec.mlp((3, 4, 5, 2)), NetworkSpec.mlp((3, 4, 2))


def frozen(prefix: str) -> dict[str, np.ndarray]:
    return {k[len(prefix):]: GATE[k] for k in GATE.files if k.startswith(prefix)}


def flat_state(module) -> dict[str, np.ndarray]:
    """Every variable of ``module`` by path; the packed coefficients of its layers (one array per contraction)
    replaced by their per-term arrays (`TermCoefficients.term_coefficients`), the form frozen here."""
    leaves = jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(nnx.state(module)))[0]
    state = {"/".join(str(getattr(p, "key", p)) for p in path): np.asarray(v) for path, v in leaves}
    for path, layer in nnx.iter_modules(module):
        if isinstance(layer, TermCoefficients):
            prefix = "/".join(map(str, path + ("coeffs",)))
            packed = {k for k in state if k.startswith(prefix + "/")}
            assert packed == {f"{prefix}/{k}" for k in layer.plan.contractions()}
            state = {k: v for k, v in state.items() if k not in packed}
            state.update({f"{prefix}/{k}": np.asarray(v) for k, v in layer.term_coefficients().items()})
    return state


@pytest.mark.parametrize("L, spec", [(2, SPEC2), (3, SPEC3)])
def test_term_names_unchanged(L, spec):
    for group in ("monomial_positive", "monomial_sign", "hnp", "np"):
        assert [t.name for t in linear_plan(spec, group).terms] == list(GATE[f"names/{group}_L{L}"]), group
    assert [t.name for t in equivariant_plan(spec).terms] == list(GATE[f"names/poly_eq_L{L}"])
    assert [t.name for t in invariant_plan(spec).terms] == list(GATE[f"names/poly_inv_L{L}"])


LAYERS = {
    "poly_eq_L3": (lambda: PolynomialEquivariant(SPEC3, 2, 3, rngs=nnx.Rngs(0), param_dtype=jnp.float64), SPEC3),
    "poly_eq_L2": (lambda: PolynomialEquivariant(SPEC2, 2, 3, rngs=nnx.Rngs(1), param_dtype=jnp.float64), SPEC2),
    "poly_inv_L3": (lambda: PolynomialInvariant(SPEC3, 2, 4, rngs=nnx.Rngs(2), param_dtype=jnp.float64), SPEC3),
    "mono_pos_L3": (lambda: MonomialLinear(SPEC3, 2, 3, scaling="positive", rngs=nnx.Rngs(3), param_dtype=jnp.float64), SPEC3),
    "mono_sign_L2": (lambda: MonomialLinear(SPEC2, 2, 3, scaling="sign", rngs=nnx.Rngs(4), param_dtype=jnp.float64), SPEC2),
    "hnp_L3": (lambda: HNPLinear(SPEC3, 2, 3, rngs=nnx.Rngs(5), param_dtype=jnp.float64), SPEC3),
    "np_L3": (lambda: NPLinear(SPEC3, 2, 3, rngs=nnx.Rngs(6), param_dtype=jnp.float64), SPEC3),
}


def assert_same_draw(got, want, err_msg):
    """Equal up to a few ulps: the values were frozen from the old code under the default XLA flags, and the
    test session compiles at a lower optimisation level (tests/conftest.py), which may round the last bit of a
    random draw differently; a changed draw (other key, order or scale) differs by far more."""
    eps = 16 * np.finfo(np.asarray(want).dtype).eps
    np.testing.assert_allclose(got, want, rtol=eps, atol=eps * float(np.max(np.abs(want), initial=0.0)), err_msg=err_msg)


@pytest.mark.parametrize("name", list(LAYERS))
def test_weight_space_layers_unchanged(name):
    """Same initial parameters (up to the last bits: the draws moved from host numpy to jax) and same outputs
    (1e-12)."""
    make, spec = LAYERS[name]
    with jax.enable_x64(True):
        layer = make()
        state, want = flat_state(layer), frozen(f"{name}/param/")
        assert state.keys() == want.keys()
        for k in want:
            assert_same_draw(state[k], want[k], err_msg=k)
        out = jax.tree.leaves(layer(random_features(10, spec, channels=2)))
        want_out = frozen(f"{name}/out/")
        assert len(out) == len(want_out)
        for i, y in enumerate(out):
            np.testing.assert_allclose(y, want_out[str(i)], rtol=1e-12, atol=1e-12)


def test_model_initial_parameters_unchanged():
    """MLP heads, IO-encoding, Fourier bases and the shared terms draw the same float32 values as before."""
    models = {"pred_np": lambda: GeneralizationPredictor(SPEC3, nfn="np", channels=(2, 2, 2), head=4, variant="compact",
                                                         rngs=nnx.Rngs(7)),
              "inr_fourier": lambda: INRClassifier(SPEC3, 3, channels=2, num_equivariant=1, head=4,
                                                   fourier_features="odd", n_frequencies=2, rngs=nnx.Rngs(8))}
    for name, make in models.items():
        state, want = flat_state(make()), frozen(f"{name}/param/")
        assert state.keys() == want.keys()
        for k in want:
            assert_same_draw(state[k], want[k], err_msg=f"{name}: {k}")


PERM = ("A", "B", "C", "D")


def keys(plan: SharingPlan) -> list[str]:
    return [t.key for t in plan.terms]


def test_power_zero_labels_are_free_and_nonzero_are_identified():
    # A: power 0 (free); B: power 1 (must be identified with equal power); "k": fixed
    out = {"y": (("A", 3, 0), ("B", 4, 1), ("k", 2, 0))}
    ins = {"x": (("A", 3, 0), ("B", 4, 1)), "wrong_power": (("B", 4, -1),), "only_A": (("A", 3, 0),), "fixed": (("k", 2, 0),)}
    plan = SharingPlan.build(out, ins, PERM, "positive")
    assert keys(plan) == ["y<-x|B", "y<-x|A,B"]  # B forced, A pooled or identified; no constant (B has power 1)
    sign = SharingPlan.build(out, ins, PERM, "sign")
    assert keys(sign) == ["y<-x|B", "y<-x|A,B", "y<-wrong_power|B"]  # -1 and +1 agree mod 2
    full = SharingPlan.build(out, ins, PERM, "full")  # powers ignored: every subset of the shared labels
    assert keys(full) == ["y<-x|", "y<-x|A", "y<-x|B", "y<-x|A,B", "y<-wrong_power|", "y<-wrong_power|B",
                          "y<-only_A|", "y<-only_A|A", "y<-fixed|", "y<-const"]
    free_out = SharingPlan.build({"z": (("A", 3, 0),)}, ins, PERM, "positive")  # B of x may not be pooled
    assert keys(free_out) == ["z<-only_A|", "z<-only_A|A", "z<-fixed|", "z<-const"]
    assert SharingPlan.build(out, ins, PERM, "positive").coef_shape(plan.terms[0], {"x": 5}, {"y": 6}) == (6, 5, 2)


def test_ties_pooling_and_unit_init():
    out = {"y": (("k", 2, 0),)}
    ins = {"x": (("A", 3, 0), ("p", 4, 0), ("k", 2, 0))}
    tied = SharingPlan.build(out, ins, PERM, "positive", ties={("y", "x"): ("k",)}, pooling="sum", init_rule="unit")
    dense = SharingPlan.build(out, ins, PERM, "positive", pooling="sum", init_rule="unit")
    t, d = tied.terms[0], dense.terms[0]
    assert t.key == "y<-x||k" and tied.coef_shape(t, {"x": 5}, {"y": 1}) == (1, 5, 2, 4)
    assert dense.coef_shape(d, {"x": 5}, {"y": 1}) == (1, 5, 2, 4, 2)
    assert tied.summed_axes(t) == (("A", 3), ("p", 4)) and dense.summed_axes(d) == (("A", 3), ("p", 4), ("k", 2))
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        x, coef = jnp.asarray(rng.normal(size=(7, 3, 4, 2, 5))), jnp.asarray(rng.normal(size=(1, 5, 2, 4)))
        want = jnp.einsum("...apkd,edkp->...ke", x, coef)
        coeffs = {t.name: coef, "y<-const": jnp.ones((1, 2), jnp.float64)}
        np.testing.assert_allclose(tied.apply(coeffs, {"x": x})["y"], want + 1, rtol=1e-12)
        mean = SharingPlan.build(out, ins, PERM, "positive", ties={("y", "x"): ("k",)})
        np.testing.assert_allclose(mean.apply(coeffs, {"x": x})["y"], want / 3 + 1, rtol=1e-12)
        # unit init: variance 1 / (c_in * summed sizes * terms per output)
        c = dense.init(jax.random.key(2), {"x": 5}, {"y": 100}, jnp.float64, stack=(3,))[d.name]
        assert c.shape == (3, 100, 5, 2, 4, 2)
        assert abs(float(c.std()) * np.sqrt(5 * 24) - 1) < 0.05
    with pytest.raises(ValueError, match="ties"):
        SharingPlan.build(out, ins, PERM, "positive", ties={("y", "x"): ("A",)})
    with pytest.raises(ValueError, match=r"in_slots\['x'\] repeats a label: \['A', 'A'\]"):
        SharingPlan.build(out, {"x": (("A", 3, 0), ("A", 3, 0))}, PERM, "positive")
    with pytest.raises(ValueError, match="pooling must be one of"):
        SharingPlan.build(out, ins, PERM, "positive", pooling="max")
    with pytest.raises(ValueError, match=r"names has no entry for the enumerated terms \['y<-const'\]"):
        SharingPlan.build(out, ins, PERM, "positive", names={"y<-x|": "theta"})
    named = SharingPlan.build(out, ins, PERM, "positive", names={"y<-x|": "theta", "y<-const": "beta", "unused": "u"})
    assert [t.name for t in named.terms] == ["theta", "beta"]


def test_channel_factors():
    plan = equivariant_plan(SPEC3)
    assert plan.input_channels(2) == {"b1": 2, "P1": 6, "P2": 6, "P3": 6, "M2": 6, "S2": 4, "M3": 6, "S3": 4, "T": 4}
    assert invariant_plan(SPEC3).input_channels(5) == {"M": 15, "S": 10, "T": 10}


@pytest.mark.parametrize("subscripts, x_shape, coef_shape, order", [
    ("...aby,zy->...abz", (2, 4, 5, 6, 7), (3, 7), [0, 1]),
    ("...ay,zby->...abz", (4, 5, 7), (3, 2, 7), [0, 1]),
    ("...ay,zby->...baz", (4, 5, 7), (3, 2, 7), [1, 0]),
    ("...y,zay->...az", (4, 7), (3, 2, 7), [0]),
    ("...y,zy->...z", (7,), (3, 7), []),
])
def test_channel_matmul_equals_the_einsum_and_its_gradient(subscripts, x_shape, coef_shape, order):
    with jax.enable_x64(True):
        check_channel_matmul(subscripts, x_shape, coef_shape, order)


def check_channel_matmul(subscripts, x_shape, coef_shape, order):
    rng = np.random.default_rng(0)
    x, coef = (jnp.asarray(rng.standard_normal(s), jnp.float64) for s in (x_shape, coef_shape))
    ours = lambda x, c: channel_matmul(x, c, order)
    reference = lambda x, c: jnp.einsum(subscripts, x, c)
    np.testing.assert_allclose(ours(x, coef), reference(x, coef), rtol=1e-12, atol=1e-12)
    weights = jnp.asarray(rng.standard_normal(reference(x, coef).shape), jnp.float64)
    grads = [jax.grad(lambda x, c, f=f: jnp.sum(weights * f(x, c)), argnums=(0, 1))(x, coef) for f in (ours, reference)]
    for a, b in zip(*grads):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    swapped = channel_matmul(x, coef, order[::-1]) if len(order) > 1 else None  # a wrong order is caught
    if swapped is not None:
        assert swapped.shape != reference(x, coef).shape or not np.allclose(swapped, reference(x, coef))


def _layout_plans():
    from transformer_nfn import TransformerSpec
    from transformer_nfn.terms import block_plan
    tspec = TransformerSpec(num_blocks=1, num_heads=2, d_model=3, d_k=2, d_v=2, d_ffn=4)
    return {"magep_eq": equivariant_plan(SPEC3), "magep_inv": invariant_plan(SPEC3), "hnp": linear_plan(SPEC3, "hnp"),
            "np": linear_plan(SPEC3, "np"), "monomial_sign": linear_plan(SPEC3, "monomial_sign"),
            "tnfn_ties": block_plan(tspec, True, "equivariant"), "tnfn_inv": block_plan(tspec, True, "invariant")}


@pytest.mark.parametrize("name", ["magep_eq", "magep_inv", "hnp", "np", "monomial_sign", "tnfn_ties", "tnfn_inv"])
def test_channels_leading_layout_equals_channels_last(name):
    """``layout="channels_leading"`` ([c, ..., *sizes]) computes what the default layout computes, values and
    gradients, on plans with fixed axes, constants and ties (TNFN with FFN scaling); permuting the inputs'
    channels-last layout is caught."""
    plan = _layout_plans()[name]
    rng = np.random.default_rng(1)
    c_in, c_out = plan.input_channels(2), {o: 3 for o, _ in plan.out_slots}
    batch = (2, 1)
    with jax.enable_x64(True):
        coeffs = {k: v + 0.1 for k, v in plan.init(jax.random.key(0), c_in, c_out, jnp.float64).items()}
        inputs = {n: jnp.asarray(rng.standard_normal(batch + tuple(s for _, s, _ in axes) + (c_in[n],)))
                  for n, axes in plan.in_slots}
        # jitted: one compile per program instead of one dispatch (and a compile per new shape) per operation
        last = jax.jit(lambda c, x: plan.apply(c, x))
        lead = jax.jit(lambda c, x: {k: jnp.moveaxis(v, 0, -1) for k, v in plan.apply(
            c, {n: jnp.moveaxis(a, -1, 0) for n, a in x.items()}, layout="channels_leading").items()})
        want, got = last(coeffs, inputs), lead(coeffs, inputs)
        assert got.keys() == want.keys()
        for k in want:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-12, atol=1e-12, err_msg=k)
        weights = {k: jnp.asarray(rng.standard_normal(v.shape)) for k, v in want.items()}
        loss = lambda f: lambda c, x: sum(jnp.sum(weights[k] * v) for k, v in f(c, x).items())
        for a, b in zip(jax.tree.leaves(jax.jit(jax.grad(loss(lead), (0, 1)))(coeffs, inputs)),
                        jax.tree.leaves(jax.jit(jax.grad(loss(last), (0, 1)))(coeffs, inputs))):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
        swapped = {n: jnp.swapaxes(a, 0, 1) for n, a in inputs.items()}  # batch axes swapped: [1, 2, ...]
        moved = plan.apply(coeffs, {n: jnp.moveaxis(a, -1, 0) for n, a in swapped.items()}, layout="channels_leading")
        assert any(v.shape[1:3] != (2, 1) for v in moved.values())
    with pytest.raises(ValueError, match="layout"):
        plan.apply(coeffs, inputs, layout="channels_first")


@pytest.mark.parametrize("name", ["magep_eq", "hnp", "np_paper", "monomial_sign", "tnfn_ties", "tnfn_inv"])
def test_packed_coefficients(name):
    """`SharingPlan.pack` holds every term once (one array per contraction, as the layers store them), `unpack`
    returns exactly the term coefficients (with stacked copies too), and `apply` computes the same from either
    form in both layouts; every constant term counts (NP's "paper" terms have four on one output)."""
    plans = _layout_plans() | {"np_paper": linear_plan(SPEC3, "np", "paper")}
    plan = plans[name]
    c_in, c_out = plan.input_channels(2), {o: 3 for o, _ in plan.out_slots}
    groups = plan.contractions()
    assert sorted(t.name for terms in groups.values() for t in terms) == sorted(t.name for t in plan.terms)
    with jax.enable_x64(True):
        stacked = plan.init(jax.random.key(1), c_in, c_out, jnp.float64, stack=(3,))
        packed = plan.pack(stacked)
        assert packed.keys() == groups.keys()
        assert sum(v.size for v in packed.values()) == 3 * plan.num_params(c_in, c_out)
        back = plan.unpack(packed, c_in)
        assert back.keys() == stacked.keys()
        for k in stacked:
            np.testing.assert_array_equal(back[k], stacked[k], err_msg=k)
        coeffs = {k: v[1] + 0.1 for k, v in stacked.items()}
        rng = np.random.default_rng(2)
        inputs = {n: jnp.asarray(rng.standard_normal((2,) + tuple(s for _, s, _ in axes) + (c_in[n],)))
                  for n, axes in plan.in_slots}
        lead_inputs = {n: jnp.moveaxis(a, -1, 0) for n, a in inputs.items()}
        apply = jax.jit(plan.apply, static_argnames="layout")  # one compile per form, not a dispatch per operation
        for layout, x in (("channels_last", inputs), ("channels_leading", lead_inputs)):
            want, got = apply(coeffs, x, layout=layout), apply(plan.pack(coeffs), x, layout=layout)
            for k in want:
                np.testing.assert_allclose(got[k], want[k], rtol=1e-13, atol=1e-13, err_msg=f"{layout} {k}")
        base = apply(coeffs, inputs)
        for t in (t for t in plan.terms if t.inp is None):  # each constant adds to its output
            bumped = apply(coeffs | {t.name: coeffs[t.name] + 1.0}, inputs)[t.out]
            np.testing.assert_allclose(bumped - base[t.out], 1.0, rtol=1e-12, err_msg=t.name)
    with pytest.raises(ValueError, match=r"no entry for the terms .* is not the packed form"):
        plan.apply({k: v for k, v in list(coeffs.items())[1:]}, inputs)
    with pytest.raises(ValueError, match="SharingPlan.pack: coeffs has no entry for the terms"):
        plan.pack({})
