"""Models: official parameter counts, end-to-end invariance/equivariance (two-sided) for both groups on the
MLP, CNN-zoo and SIREN specs, jit/vmap/grad, and no retracing in the data-parallel training step."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from common import groups, testing, training
from common.groups import MonomialGroup
from common.distributed import replicate
from common.training import trainable_parameters
from magep import GeneralizationPredictor, INRClassifier, INREditor
from tests.magep_fixtures import CHECK_X64, IO_PERMUTATION, SPECS, jitted, random_features

ACTIVATION = {"positive": "relu", "sign": "tanh"}
WRONG = {"positive": "sign", "sign": "positive"}


def predictor_params(spec, **options) -> int:
    """Parameter count of a GeneralizationPredictor built with `options` (shapes only: nothing initialised)."""
    return trainable_parameters(nnx.eval_shape(lambda: GeneralizationPredictor(spec, rngs=nnx.Rngs(0), **options)))


def test_official_cnn_zoo_parameter_counts():
    """Instantiated counts vs the authors' reference configurations (docs/magep.md §9.1) (MAGEP: 998,121 with the authors' frozen
    Phi; learned Phi add (3L-2) pairs x d (n_0 n_L + n_L) per equivariant layer; Monomial-NFN: 254,619)."""
    spec = SPECS["cnn"]
    assert predictor_params(spec, nfn="magep", freeze_phi=True) == 998_121
    L, d, n0, nL = spec.num_layers, 20, spec.widths[0], spec.widths[-1]
    assert predictor_params(spec, nfn="magep") == 998_121 + 2 * (3 * L - 2) * d * (n0 * nL + nL)
    assert predictor_params(spec, nfn="monomial") == 254_619


def test_baseline_parameter_counts():
    """NP / HNP at Zhou et al.'s np_inv / hnp_inv size (their InvariantNFN instantiated on this spec; breakdown in
    docs/magep.md §8), the compact variants, and the MLP on flattened weights (P -> 1000 -> 1000 -> 1)."""
    spec = SPECS["cnn"]
    counts = {(nfn, variant): predictor_params(spec, nfn=nfn, variant=variant)
              for nfn in ("np", "hnp") for variant in ("paper", "compact")}
    assert counts == {("np", "paper"): 2_031_390, ("hnp", "paper"): 2_811_743,
                      ("np", "compact"): 1_084_144, ("hnp", "compact"): 1_457_955}
    P = spec.num_params
    assert P == 4970
    assert predictor_params(spec, nfn="mlp") == (P + 1) * 1000 + 1001 * 1000 + 1001


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("scaling", ["positive", "sign"])
@pytest.mark.parametrize("name", ["mlp", "cnn", "siren"])
def test_magep_predictor_invariant(name, scaling, normalize):
    spec = SPECS[name]
    with jax.enable_x64(True):
        feats = random_features(0, spec)
        # 4 channels: with 2, a draw can hide a layer's coupling behind ReLU channels that are dead on a whole
        # layer (Rngs(1), normalize=True: an uncoupled permutation of mlp hidden layer 2 changed the logit by 1e-4;
        # with the affine-map normalisation, Rngs(1) leaves the 4-unit ReLU head dead on these inputs: no change)
        model = GeneralizationPredictor(spec, nfn="magep", scaling=scaling, channels=4, head=4, num_equivariant=1,
                                        rngs=nnx.Rngs(2), normalize=normalize)
        testing.assert_invariant(jitted(model, "logits"), MonomialGroup(spec, scaling), jax.random.key(2), feats,
                                 broken=(MonomialGroup(spec, WRONG[scaling]),), **CHECK_X64)


@pytest.mark.parametrize("scaling", ["positive", "sign"])
def test_monomial_predictor_invariant(scaling):
    spec = SPECS["cnn"]
    with jax.enable_x64(True):
        feats = random_features(3, spec)
        model = GeneralizationPredictor(spec, nfn="monomial", scaling=scaling, channels=(2, 2), head=4, rngs=nnx.Rngs(4))
        # Monomial-NFN never couples neighbouring layers' hidden indices, so uncoupled permutations are
        # invisible to it (the expressivity gap MAGEP closes, see test_only_magep_sees_cross_layer_coupling).
        testing.assert_invariant(jitted(model, "logits"), MonomialGroup(spec, scaling), jax.random.key(5), feats,
                                 check_uncoupled=False, broken=(IO_PERMUTATION, MonomialGroup(spec, WRONG[scaling])),
                                 **CHECK_X64)


@pytest.mark.parametrize("nfn,variant", [("hnp", "paper"), ("np", "paper"), ("hnp", "compact"), ("np", "compact"),
                                         ("statnn", "paper")])
def test_permutation_baseline_predictors_invariant(nfn, variant):
    spec = SPECS["cnn"]
    with jax.enable_x64(True):
        feats = random_features(6, spec)
        model = GeneralizationPredictor(spec, nfn=nfn, channels=(2, 2), head=16, variant=variant, rngs=nnx.Rngs(7))
        io = () if nfn == "statnn" else (IO_PERMUTATION,)  # NP: broken by its IO-encoding
        testing.assert_invariant(jitted(model, "logits"), MonomialGroup(spec, "none"), jax.random.key(8), feats,
                                 check_uncoupled=nfn != "statnn", broken=io + (MonomialGroup(spec, "positive"),),
                                 **CHECK_X64, min_change=1e-6)  # mean-pooled cross-layer terms: weak but exact-zero-free sensitivity


def test_mlp_baseline_sees_permutations_and_trains():
    """nfn="mlp": no symmetry (a hidden-neuron permutation changes the prediction), and Adam steps on a tiny batch
    lower the loss."""
    spec = SPECS["cnn"]
    model = GeneralizationPredictor(spec, nfn="mlp", head=32, rngs=nnx.Rngs(0))
    feats = random_features(40, spec, batch=(4,), dtype=jnp.float32)
    group = MonomialGroup(spec, "none")
    logits = jitted(model, "logits")
    moved = group.act(group.sample(jax.random.key(1)), feats)
    assert float(jnp.max(jnp.abs(logits(moved) - logits(feats)))) > 1e-3
    target = jnp.asarray([0.1, 0.4, 0.6, 0.9])
    graphdef, params = nnx.split(model, nnx.Param)
    loss = lambda p: jnp.mean(optax.sigmoid_binary_cross_entropy(nnx.merge(graphdef, p).logits(feats), target))
    opt = optax.adam(1e-3)

    @jax.jit
    def step(p, opt_state):
        value, grads = jax.value_and_grad(loss)(p)
        updates, opt_state = opt.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), opt_state, value

    opt_state, losses = opt.init(params), []
    for _ in range(5):
        params, opt_state, value = step(params, opt_state)
        losses.append(float(value))
    assert losses[-1] < losses[0]


def test_only_magep_sees_cross_layer_coupling():
    spec = SPECS["mlp"]
    with jax.enable_x64(True):
        feats = random_features(9, spec)
        moved = groups.uncoupled_permutation(jax.random.key(0), feats, 1)
        outputs = {}
        for nfn in ("magep", "monomial"):
            model = GeneralizationPredictor(spec, nfn=nfn, channels=2 if nfn == "magep" else (2, 2), head=4,
                                            rngs=nnx.Rngs(10))
            logits = jitted(model, "logits")
            outputs[nfn] = (float(logits(feats)), float(logits(moved)))
    assert abs(outputs["magep"][0] - outputs["magep"][1]) > 1e-6
    assert outputs["monomial"][0] == pytest.approx(outputs["monomial"][1], abs=1e-12)


@pytest.mark.parametrize("scaling", ["positive", "sign"])
@pytest.mark.parametrize("name", ["mlp", "cnn", "siren"])
def test_inr_classifier_invariant_and_editor_equivariant(name, scaling):
    spec = SPECS[name]
    act = "relu" if scaling == "positive" else "sin"
    with jax.enable_x64(True):
        feats = random_features(11, spec)
        clf = INRClassifier(spec, 3, scaling=scaling, activation=act, channels=2, num_equivariant=1, head=4,
                            rngs=nnx.Rngs(12))
        group, wrong = MonomialGroup(spec, scaling), (MonomialGroup(spec, WRONG[scaling]),)
        testing.assert_invariant(jitted(clf), group, jax.random.key(13), feats, broken=wrong, **CHECK_X64)
        editor = INREditor(spec, scaling=scaling, activation=act, channels=2, rngs=nnx.Rngs(14), gamma_init=0.5)
        testing.assert_equivariant(jitted(editor), group, jax.random.key(15), feats, broken=wrong, **CHECK_X64)


@pytest.mark.parametrize("nfn,group,broken", [("monomial", "sign", "positive"), ("hnp", "none", "sign"),
                                               ("np", "none", "sign"), ("statnn", "none", "sign")])
def test_inr_classifier_baselines_invariant_to_their_group(nfn, group, broken):
    """The baseline bodies of `INRClassifier` (the INR classification table): Monomial-NFN under the SIRENs' group,
    the NP family and STATNN under hidden-unit permutations only (uncoupled permutations: see the predictor tests)."""
    spec = SPECS["siren"]
    with jax.enable_x64(True):
        feats = random_features(25, spec)
        clf = INRClassifier(spec, 3, nfn=nfn, channels=(2, 2), head=4, rngs=nnx.Rngs(26))
        assert clf.logits(feats).shape == feats.weights[0].shape[:-3] + (3,)
        io = (IO_PERMUTATION,) if nfn in ("monomial", "np") else ()
        testing.assert_invariant(jitted(clf), MonomialGroup(spec, group), jax.random.key(27), feats,
                                 check_uncoupled=nfn in ("hnp", "np"), broken=io + (MonomialGroup(spec, broken),),
                                 **CHECK_X64, min_change=1e-6)


def test_group_breaking_options_are_explicit():
    """Fourier features: "odd" keeps sign flips, "full" (authors) only permutations; the authors' editor
    (NP tail) is permutation-equivariant only."""
    spec = SPECS["siren"]
    with jax.enable_x64(True):
        feats = random_features(16, spec)
        odd = INRClassifier(spec, 2, channels=2, num_equivariant=1, head=4, fourier_features="odd", n_frequencies=3,
                            rngs=nnx.Rngs(17))
        testing.assert_invariant(jitted(odd), MonomialGroup(spec, "sign"), jax.random.key(18), feats,
                                 broken=(MonomialGroup(spec, "positive"),), **CHECK_X64)
        full = INRClassifier(spec, 2, channels=2, num_equivariant=1, head=4, fourier_features="full", n_frequencies=3,
                             rngs=nnx.Rngs(19))
        testing.assert_invariant(jitted(full), MonomialGroup(spec, "none"), jax.random.key(20), feats,
                                 broken=(MonomialGroup(spec, "sign"),), **CHECK_X64)
        paper = INREditor(spec, channels=2, variant="paper", n_frequencies=2, rngs=nnx.Rngs(21), gamma_init=0.5)
        testing.assert_equivariant(jitted(paper), MonomialGroup(spec, "none"), jax.random.key(22), feats,
                                   broken=(MonomialGroup(spec, "sign"),), **CHECK_X64)


@pytest.mark.parametrize("nfn,group,broken", [("monomial", "sign", "positive"), ("hnp", "none", "sign"),
                                               ("np", "none", "sign")])
def test_editor_baselines_equivariant_to_their_group(nfn, group, broken):
    """The baseline editors of the INR editing table: Monomial-NFN equivariant under the SIRENs' group, HNP and NP
    under hidden-unit permutations only (NP's IO-encoding breaks input/output permutations)."""
    spec = SPECS["siren"]
    with jax.enable_x64(True):
        feats = random_features(28, spec)
        editor = INREditor(spec, nfn=nfn, channels=2, rngs=nnx.Rngs(29), gamma_init=0.5)
        io = (IO_PERMUTATION,) if nfn in ("monomial", "np") else ()
        testing.assert_equivariant(jitted(editor), MonomialGroup(spec, group), jax.random.key(30), feats,
                                   check_uncoupled=nfn == "hnp", broken=io + (MonomialGroup(spec, broken),),
                                   **CHECK_X64, min_change=1e-6)


def test_mlp_editor_round_trips_the_flattened_weights():
    """The MLP editor's output has the input's shapes; `unflatten_features` inverts `FlattenBody` exactly; and the
    MLP sees no symmetry: a hidden-unit permutation of the input does not permute its edit."""
    from magep.models import FlattenBody, unflatten_features
    spec = SPECS["siren"]
    feats = random_features(31, spec, dtype=jnp.float32)
    flat = FlattenBody(spec, spec.feature_channels)(feats)
    back = unflatten_features(flat, spec, spec.feature_channels)
    jax.tree.map(np.testing.assert_array_equal, back, feats)
    with pytest.raises(ValueError, match=r"unflatten_features: x has 5 features .* need"):
        unflatten_features(flat[..., :5], spec, spec.feature_channels)
    editor = INREditor(spec, nfn="mlp", head=8, rngs=nnx.Rngs(32), gamma_init=0.5)
    out = jitted(editor)(feats)
    jax.tree.map(lambda a, b: np.testing.assert_equal(a.shape, b.shape), out, feats)
    group = MonomialGroup(spec, "none")
    g = group.sample(jax.random.key(33))
    moved_then_edited = jitted(editor)(group.act(g, feats))
    edited_then_moved = group.act(g, out)
    gap = max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(moved_then_edited),
                                                           jax.tree.leaves(edited_then_moved)))
    assert gap > 1e-4


def test_editor_is_a_small_residual_at_init():
    spec = SPECS["siren"]
    feats = random_features(23, spec, dtype=jnp.float32)
    editor = INREditor(spec, channels=2, rngs=nnx.Rngs(24))
    assert float(editor.gamma[...]) == pytest.approx(0.01)
    delta = jax.tree.map(lambda a, b: a - b, jitted(editor)(feats), feats)
    scale = max(float(jnp.abs(x).max()) for x in jax.tree.leaves(feats))
    biggest = max(float(jnp.abs(x).max()) for x in jax.tree.leaves(delta))
    assert 0 < biggest < 0.1 * scale


@pytest.fixture(scope="module")
def small_predictor():
    return GeneralizationPredictor(SPECS["mlp"], nfn="magep", channels=3, head=8, num_equivariant=1, rngs=nnx.Rngs(0))


def test_predictor_jit_vmap_and_gradients(small_predictor):
    spec = SPECS["mlp"]
    feats = random_features(25, spec, batch=(4,), dtype=jnp.float32)
    graphdef, params = nnx.split(small_predictor, nnx.Param)
    one = lambda p, f: nnx.merge(graphdef, p)(f)
    batched = jax.jit(one)(params, feats)
    mapped = jax.jit(jax.vmap(one, (None, 0)))(params, feats)
    assert batched.shape == (4,) and np.all((batched > 0) & (batched < 1))
    np.testing.assert_allclose(batched, mapped, rtol=1e-5)
    target = jnp.linspace(0.2, 0.8, 4)
    grads = jax.jit(jax.grad(lambda p: jnp.mean((one(p, feats) - target) ** 2)))(params)
    leaves = jax.tree.leaves(grads)
    assert all(np.all(np.isfinite(g)) for g in leaves)
    assert sum(bool(np.any(g != 0)) for g in leaves) == len(leaves)


def test_training_step_does_not_retrace(small_predictor):
    spec = SPECS["mlp"]
    graphdef, params = nnx.split(small_predictor, nnx.Param)

    @chex.assert_max_traces(n=1)
    def loss_fn(p, batch, key):
        pred = nnx.merge(graphdef, p).logits(batch["feats"])
        loss = jnp.mean(optax.sigmoid_binary_cross_entropy(pred, batch["acc"]))
        return loss, {"mean_pred": jnp.mean(jax.nn.sigmoid(pred))}

    mesh = training.make_mesh()
    step = training.make_train_step(loss_fn, optax.adam(1e-3), mesh)
    state = replicate(training.init_train_state(params, optax.adam(1e-3), jax.random.key(0)), mesh)
    losses = []
    for i in range(3):
        batch = {"feats": random_features(30 + i, spec, batch=(8,), dtype=jnp.float32),
                 "acc": jnp.full((8,), 0.1 * (i + 1))}
        state, metrics = step(state, training.shard_batch(batch, mesh))
        losses.append(float(metrics["loss"]))
    assert int(state.step) == 3 and all(np.isfinite(losses))


@pytest.mark.parametrize("build", [
    lambda: GeneralizationPredictor(SPECS["cnn"], scaling="bogus", rngs=nnx.Rngs(0)),  # was: "activation ... got None"
    lambda: GeneralizationPredictor(SPECS["cnn"], nfn="monomial", scaling="bogus", rngs=nnx.Rngs(0)),
    lambda: GeneralizationPredictor(SPECS["cnn"], nfn="hnp", scaling="bogus", rngs=nnx.Rngs(0)),
    lambda: INRClassifier(SPECS["siren"], 10, scaling="bogus", activation="bogus", rngs=nnx.Rngs(0)),
])
def test_invalid_scaling_is_reported_as_a_scaling_error(build):
    with pytest.raises(ValueError, match="scaling must be 'positive', 'sign' or 'none', got 'bogus'"):
        build()
