"""The transformer accuracy-prediction baselines (MLP, STATNN): the authors' parameter counts, the statistics
against numpy, STATNN's invariance to the group's permutations (and not to its GL factors), and training."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from common.training import trainable_parameters
from transformer_nfn import TransformerSpec, groups, nets
from transformer_nfn.baselines import BaselinePredictor, tensor_statistics
from transformer_nfn.train import train_accuracy_predictor
from transformer_nfn.zoo import ZOO_SPEC

SPEC = TransformerSpec(num_blocks=2, num_heads=2, d_model=4, d_k=3, d_v=2, d_ffn=5)


def _count(**options) -> int:
    model = nnx.eval_shape(lambda: BaselinePredictor(ZOO_SPEC, rngs=nnx.Rngs(0), **options))
    return trainable_parameters(model)


@pytest.mark.parametrize("kind,mnist,ag_news", [("mlp", 933_251, 905_951), ("statnn", 203_393, 168_449)])
def test_parameter_counts_are_the_authors(kind, mnist, ag_news):
    assert _count(kind=kind, classifier_widths=(32, 32, 10), embedding_size=544) == mnist
    assert _count(kind=kind, classifier_widths=(32, 32, 10)) == ag_news


def test_statistics_match_numpy():
    x = np.random.default_rng(0).standard_normal((3, 2, 4, 5))
    got = np.asarray(tensor_statistics(jnp.asarray(x), 1))
    flat = x.reshape(3, -1)
    want = np.concatenate([flat.mean(1, keepdims=True), flat.var(1, ddof=1, keepdims=True),
                           np.quantile(flat, [0, 0.25, 0.5, 0.75, 1], axis=1).T], 1)
    np.testing.assert_allclose(got, want, rtol=1e-6)


def _zoo(n, key=0):
    keys = jax.random.split(jax.random.key(key), n)
    return jax.jit(jax.vmap(lambda k: nets.init_weights(k, SPEC, 3, w_init_std=0.5, patch_size=2)))(keys)


def _permutations_only(key, tw):
    """A group element with random head, channel and FFN permutations and identity GL factors and scales."""
    g = groups.sample(key, tw)
    one = groups.identity(SPEC)
    blocks = tuple(dataclasses.replace(e, heads=s.heads, perm_o=s.perm_o, perm_a=s.perm_a)
                   for e, s in zip(one.blocks, g.blocks))
    return dataclasses.replace(one, blocks=blocks)


def test_statnn_sees_no_permutation_but_the_gl_factors_and_the_mlp_sees_both():
    tw = _zoo(4)
    one = jax.tree.map(lambda a: a[0], tw)
    statnn = BaselinePredictor(SPEC, kind="statnn", classifier_widths=(4, 4, 3), embedding_size=20, rngs=nnx.Rngs(1))
    mlp = BaselinePredictor(SPEC, kind="mlp", classifier_widths=(4, 4, 3), embedding_size=20, rngs=nnx.Rngs(2))
    act = jax.jit(groups.act)  # one program, not one per operation
    permuted = act(jax.jit(_permutations_only)(jax.random.key(3), one), one)
    full = act(jax.jit(groups.sample)(jax.random.key(4), one), one)
    logits = nnx.jit(lambda model, tw: model.logits(tw))  # one program per model, not one per operation
    change = lambda model, moved: float(jnp.abs(logits(model, moved) - logits(model, one)))
    assert change(statnn, permuted) < 1e-5
    assert change(statnn, full) > 1e-3 and change(mlp, permuted) > 1e-3
    predicted = nnx.jit(lambda model, tw: model(tw))(statnn, tw)
    assert predicted.shape == (4,) and bool(jnp.all((predicted > 0) & (predicted < 1)))


def test_baselines_train_and_check_their_input():
    tw, acc = _zoo(8, key=5), jnp.linspace(0.1, 0.9, 8)
    model = BaselinePredictor(SPEC, kind="statnn", classifier_widths=(4, 4, 3), rngs=nnx.Rngs(6))
    _, history = train_accuracy_predictor(model, tw, acc, key=jax.random.key(7), num_steps=30, batch_size=8)
    assert history[-1]["loss"] < history[0]["loss"]
    with pytest.raises(ValueError, match="kind must be one of"):
        BaselinePredictor(SPEC, kind="xgboost", classifier_widths=None, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="classifier branch but tw.classifier is None"):
        model.logits(dataclasses.replace(tw, classifier=None))
