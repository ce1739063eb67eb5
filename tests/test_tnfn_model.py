"""Accuracy predictor: parameter count at the authors' configuration, two-sided invariance, any number of
blocks, the HNP classifier branch, training with common.training (one compilation), bad inputs."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from common.groups import FieldGroup, MonomialGroup
from common.testing import assert_invariant
from common.distributed import replicate
from common.training import init_train_state, make_mesh, make_train_step, nnx_loss_fn, shard_batch, trainable_parameters
from common.weight_space import NetworkSpec
from transformer_nfn import AccuracyPredictor, TransformerSpec, nets
from transformer_nfn.groups import TransformerGroup

SPEC = TransformerSpec(num_blocks=3, num_heads=2, d_model=4, d_k=3, d_v=2, d_ffn=5)
logits = nnx.jit(lambda model, tw: model.logits(tw))
predict = nnx.jit(lambda model, tw: model(tw))


def _zoo(n, spec=SPEC, key=0, dtype=jnp.float32):
    """n random networks; biases made non-zero (trained networks have them; the zoo init sets them to 0)."""
    keys = jax.random.split(jax.random.key(key), n)
    tw = jax.vmap(lambda k: nets.init_weights(k, spec, 3, w_init_std=0.5, patch_size=2, dtype=dtype))(keys)
    noise = lambda i, x: 0.3 * jax.random.normal(jax.random.fold_in(jax.random.key(key), i), x.shape, dtype)
    return tw.replace(blocks=tuple(b.replace(b_a=noise(2 * i, b.b_a), b_b=noise(2 * i + 1, b.b_b))
                                   for i, b in enumerate(tw.blocks)))


def _model(ffn_scaling=False, branch="mlp", dtype=jnp.float32, seed=0, hidden_channels=(2,)):
    model = AccuracyPredictor(SPEC, classifier_widths=(4, 4, 3), embedding_size=4 * 4 + 4, hidden_channels=hidden_channels,
                              invariant_features=4, width=5, classifier_branch=branch, hnp_channels=2,
                              ffn_scaling=ffn_scaling, rngs=nnx.Rngs(seed))
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, model)


def test_parameter_count_authors_configuration():
    """README configuration, MNIST zoo: 1,812,181; AG-News zoo (no embedding branch): 1,806,721 (docs/transformer_nfn.md §5)."""
    d, b, c, f, m = 32, 2, 10, 10, 10
    equivariant = b * (1 * c * (2 * d**3 + 12 * d**2 + 15 * d + 12) + c * (2 * d + 2))
    invariant = b * (c * f * (d**2 + 3 * d + 2) + f + 2 * f)  # + LayerNorm(f) per block
    encoder_mlp = 2 * b * f + (b * f * m + m) + 2 * m + (m * m + m) + 2 * m + (m * m + m)
    classifier = NetworkSpec.mlp((d, d, 10)).num_params
    classifier_mlp = (classifier * m + m) + 2 * (m * m + m)
    embedding = (d * 16 + d) * m + m
    count = trainable_parameters
    zoo = TransformerSpec(b, 2, d, 16, 16, 64)
    mnist = nnx.eval_shape(lambda: AccuracyPredictor(zoo, classifier_widths=(d, d, 10), embedding_size=d * 16 + d,
                                                     rngs=nnx.Rngs(0)))  # shapes only, nothing allocated
    ag_news = nnx.eval_shape(lambda: AccuracyPredictor(zoo, classifier_widths=(d, d, 10), rngs=nnx.Rngs(0)))
    assert count(mnist) == equivariant + invariant + encoder_mlp + classifier_mlp + embedding + (3 * m + 1)
    assert count(ag_news) == equivariant + invariant + encoder_mlp + classifier_mlp + (2 * m + 1)
    assert equivariant == 1_567_640 and invariant == 224_460


def test_model_two_sided_invariance():
    """The paper's model: invariant to the transformer group, not to FFN scaling or any uncoupled move."""
    with jax.enable_x64(True):
        tw = _zoo(2, dtype=jnp.float64)
        model = _model(dtype=jnp.float64)
        assert logits(model, tw).shape == (2,)
        assert_invariant(lambda t: logits(model, t), TransformerGroup(SPEC), jax.random.key(3), tw,
                         broken=(TransformerGroup(SPEC, ffn_scaling=True),), rtol=1e-9, atol=1e-9, min_change=1e-4)


def test_all_equivariant_model_invariances():
    """ffn_scaling=True with the HNP classifier branch: invariant to the transformer group with FFN scaling
    and to permutations of the classifier's hidden units; uncoupled moves change the prediction."""
    with jax.enable_x64(True):
        tw = _zoo(2, dtype=jnp.float64)
        model = _model(ffn_scaling=True, branch="hnp", dtype=jnp.float64)
        np.testing.assert_allclose(predict(model, tw), jax.nn.sigmoid(logits(model, tw)), rtol=1e-12)
        f = lambda t: logits(model, t)
        assert_invariant(f, TransformerGroup(SPEC, ffn_scaling=True), jax.random.key(3), tw,
                         rtol=1e-9, atol=1e-9, min_change=1e-4)
        classifier_permutations = FieldGroup(MonomialGroup(NetworkSpec.mlp((4, 4, 3)), "none"), "classifier")
        assert_invariant(f, classifier_permutations, jax.random.key(4), tw, rtol=1e-9, atol=1e-9, min_change=1e-4)


def test_training_step_compiles_once_and_learns():
    """common.training's data-parallel step: one trace over several steps; after the first Adam step every
    parameter leaf has moved (so its gradient was non-zero) and stayed finite; the loss goes down."""
    tw = _zoo(8, key=1)
    targets = jnp.linspace(0.1, 0.9, 8)
    graphdef, params = nnx.split(_model(seed=1, hidden_channels=(3, 2)), nnx.Param)
    before = [np.asarray(x) for x in jax.tree.leaves(params)]
    traces = []

    def loss(m, batch, key):
        traces.append(1)
        return optax.sigmoid_binary_cross_entropy(m.logits(batch["tw"]), batch["acc"]).mean(), {}

    mesh = make_mesh()
    step = make_train_step(nnx_loss_fn(graphdef, loss), optax.adam(1e-2), mesh)
    state = replicate(init_train_state(params, optax.adam(1e-2), jax.random.key(0)), mesh)
    batch = shard_batch({"tw": tw, "acc": targets}, mesh)
    losses = []
    for i in range(4):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
        if i == 0:
            for path, (old, new) in zip(jax.tree_util.tree_leaves_with_path(state.params), zip(before, jax.tree.leaves(state.params))):
                assert np.all(np.isfinite(new)) and np.abs(np.asarray(new) - old).max() > 0, path[0]
    assert len(traces) == 1, f"train step traced {len(traces)} times"
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]


def test_model_bad_inputs():
    tw = _zoo(2)
    model = _model()
    with pytest.raises(ValueError, match=r"AccuracyPredictor: the weights have num_blocks=2 \(expected 3\)"):
        model(_zoo(2, spec=TransformerSpec(2, 2, 4, 3, 2, 5)))
    # issue 15: another head layout with the same D and blocks was accepted
    with pytest.raises(ValueError, match=r"AccuracyPredictor: the weights have num_heads=1 \(expected 2\), d_k=6 "):
        model(_zoo(2, spec=TransformerSpec(3, 1, 4, 6, 2, 5)))
    with pytest.raises(ValueError, match=r"AccuracyPredictor: tw.classifier: weights\[0\] has shape"):
        model(tw.replace(classifier=type(tw.classifier)(
            (jnp.ones((2, 3, 4)), jnp.ones((2, 3, 3))), (jnp.ones((2, 3)), jnp.ones((2, 3))))))
    with pytest.raises(ValueError, match="tw.embedding has None parameters per network but embedding_size is 20"):
        model(tw.replace(embedding=None))
    with pytest.raises(ValueError, match="tw must be raw TransformerWeights"):
        model(tw.to_features())
    with pytest.raises(ValueError, match="classifier_branch must be 'mlp', 'hnp' or None"):
        AccuracyPredictor(SPEC, classifier_widths=(4, 4, 3), classifier_branch="deepsets", rngs=nnx.Rngs(0))


def test_branch_ablation_models_read_only_their_branches():
    """encoder_branch=False (the ablation's classifier / embedding branches alone) ignores the blocks; the encoder
    branch alone ignores the classifier and the embedding."""
    tw, other = _zoo(2), _zoo(2, key=9)
    kw = dict(classifier_widths=(4, 4, 3), width=5, rngs=nnx.Rngs(1))
    alone = {"classifier": AccuracyPredictor(SPEC, encoder_branch=False, **kw),
             "embedding": AccuracyPredictor(SPEC, encoder_branch=False, classifier_branch=None, embedding_size=20, **kw),
             "encoder": AccuracyPredictor(SPEC, classifier_branch=None, hidden_channels=(2,), invariant_features=4, **kw)}
    swapped = {"classifier": tw.replace(blocks=other.blocks, embedding=other.embedding),
               "embedding": tw.replace(blocks=other.blocks, classifier=other.classifier),
               "encoder": tw.replace(classifier=other.classifier, embedding=other.embedding)}
    for name, model in alone.items():
        np.testing.assert_array_equal(logits(model, swapped[name]), logits(model, tw), err_msg=name)
        assert float(jnp.max(jnp.abs(logits(model, other) - logits(model, tw)))) > 1e-4, name
    with pytest.raises(ValueError, match="no branch left"):
        AccuracyPredictor(SPEC, encoder_branch=False, classifier_branch=None, classifier_widths=None, rngs=nnx.Rngs(0))
