"""Every nnx model class builds under `nnx.eval_shape` (nothing allocated, no host round trip), and a concrete
model's state restored into the abstract one (the orbax restore path: `nnx.split`, then `nnx.update`) gives the
same outputs."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from common import NetworkSpec, normal_arrays
from magep import (MLP, FourierFeatures, GeneralizationPredictor, INRClassifier, INREditor, PolynomialEquivariant,
                   PolynomialInvariant)
from magep.baselines import (HNPLinear, HNPPool, IOEmbedding, IOEncoding, MonomialLinear, MonomialPool, NPLinear,
                             NPPool, StatNN)
from tests.magep_fixtures import random_features
from transformer_nfn import (AccuracyPredictor, TransformerEquivariant, TransformerInvariant, TransformerSpec,
                             ZooTransformer, nets)
from transformer_nfn.testing import random_features as transformer_features

SPEC = NetworkSpec.mlp((3, 4, 5, 2))
TSPEC = TransformerSpec(num_blocks=2, num_heads=2, d_model=4, d_k=3, d_v=2, d_ffn=5)


def raw_features():
    return random_features(0, SPEC)


def features():
    return random_features(1, SPEC, channels=2)


def transformer_weights():
    keys = jax.random.split(jax.random.key(0), 2)
    return jax.vmap(lambda k: nets.init_weights(k, TSPEC, 3, w_init_std=0.5, patch_size=2))(keys)


def predictor(branch, embedding):
    return lambda: AccuracyPredictor(TSPEC, classifier_widths=(4, 4, 3), embedding_size=4 * 4 + 4 if embedding else None,
                                     hidden_channels=(2,), invariant_features=3, width=4, classifier_branch=branch,
                                     hnp_channels=2, rngs=nnx.Rngs(0))


MODELS = {  # name -> (constructor, input); MagepBody, LinearBody, StatBody inside GeneralizationPredictor
    "PolynomialEquivariant": (lambda: PolynomialEquivariant(SPEC, 2, 3, rngs=nnx.Rngs(0)), features),
    "PolynomialEquivariant_frozen": (lambda: PolynomialEquivariant(SPEC, 2, 3, freeze_phi=True, rngs=nnx.Rngs(0)), features),
    "PolynomialInvariant": (lambda: PolynomialInvariant(SPEC, 2, 3, rngs=nnx.Rngs(0)), features),
    "FourierFeatures": (lambda: FourierFeatures(SPEC, 2, 2, scale=1.0, mode="full", rngs=nnx.Rngs(0)), features),
    "MLP": (lambda: MLP(4, (3,), 2, rngs=nnx.Rngs(0)), lambda: jnp.ones((2, 4))),
    **{f"GeneralizationPredictor_{nfn}": (
        lambda nfn=nfn, c=c: GeneralizationPredictor(SPEC, nfn=nfn, channels=c, head=4, rngs=nnx.Rngs(0)), raw_features)
       for nfn, c in (("magep", 2), ("monomial", (2, 2, 2)), ("hnp", (2, 2, 2)), ("np", (2, 2, 2)), ("statnn", None),
                      ("mlp", None))},
    **{f"GeneralizationPredictor_{nfn}_compact": (
        lambda nfn=nfn: GeneralizationPredictor(SPEC, nfn=nfn, channels=(2, 2, 2), head=4, variant="compact",
                                                rngs=nnx.Rngs(0)), raw_features) for nfn in ("hnp", "np")},
    "INRClassifier": (lambda: INRClassifier(SPEC, 3, channels=2, num_equivariant=1, head=4, fourier_features="full",
                                            n_frequencies=2, rngs=nnx.Rngs(0)), raw_features),
    "INREditor_library": (lambda: INREditor(SPEC, channels=2, rngs=nnx.Rngs(0)), raw_features),
    "MonomialLinear": (lambda: MonomialLinear(SPEC, 2, 3, scaling="sign", rngs=nnx.Rngs(0)), features),
    "HNPLinear": (lambda: HNPLinear(SPEC, 2, 3, rngs=nnx.Rngs(0)), features),
    "NPLinear": (lambda: NPLinear(SPEC, 2, 3, rngs=nnx.Rngs(0)), features),
    "HNPLinear_paper": (lambda: HNPLinear(SPEC, 2, 3, terms="paper", rngs=nnx.Rngs(0)), features),
    "NPLinear_paper": (lambda: NPLinear(SPEC, 2, 3, terms="paper", rngs=nnx.Rngs(0)), features),
    "IOEncoding": (lambda: IOEncoding(SPEC, 2, rngs=nnx.Rngs(0)), features),
    "IOEmbedding": (lambda: IOEmbedding(SPEC, 2, rngs=nnx.Rngs(0)), features),
    "MonomialPool": (lambda: MonomialPool(SPEC, 2), features),
    "NPPool": (lambda: NPPool(SPEC, 2), features),
    "HNPPool": (lambda: HNPPool(SPEC, 2), features),
    "StatNN": (lambda: StatNN(SPEC, 2, 3, hidden=(4,), rngs=nnx.Rngs(0)), features),
    **{f"Transformer{kind}_{'scaling' if s else 'paper'}": (
        lambda cls=cls, s=s: cls(TSPEC, 2, 3, ffn_scaling=s, rngs=nnx.Rngs(0)),
        lambda: transformer_features(jax.random.key(1), TSPEC, 2, batch=(2,)))
       for kind, cls in (("Equivariant", TransformerEquivariant), ("Invariant", TransformerInvariant)) for s in (False, True)},
    "AccuracyPredictor_mlp_embedding": (predictor("mlp", True), transformer_weights),
    "AccuracyPredictor_hnp": (predictor("hnp", False), transformer_weights),
    "AccuracyPredictor_encoder_only": (predictor(None, False), transformer_weights),
    "ZooTransformer": (lambda: ZooTransformer(TSPEC, 3, patch_size=2, in_channels=1, rngs=nnx.Rngs(0)),
                       lambda: jax.random.normal(jax.random.key(2), (2, 4, 4, 1))),
}
call = nnx.jit(lambda model, x: model(x))


@pytest.mark.parametrize("name", list(MODELS))
def test_builds_abstractly_and_restores(name):
    make, inputs = MODELS[name]
    abstract = nnx.eval_shape(make)
    leaves = jax.tree.leaves(nnx.state(abstract))
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)
    concrete = make()
    _, state = nnx.split(concrete)
    assert jax.tree.map(lambda x: (x.shape, x.dtype), nnx.state(abstract)) == \
        jax.tree.map(lambda x: (x.shape, x.dtype), state)
    nnx.update(abstract, state)
    x = inputs()
    for got, want in zip(jax.tree.leaves(call(abstract, x)), jax.tree.leaves(call(concrete, x)), strict=True):
        np.testing.assert_array_equal(got, want)


def test_traced_draws_equal_concrete_draws():
    """`normal_arrays` slices on the host when concrete and in jax when traced: the same values."""
    shapes, scales = [(2, 3), (5,), (1, 1, 4)], [1.0, 0.3, 0.0]
    concrete = normal_arrays(jax.random.key(3), shapes, scales)
    traced = jax.jit(lambda k: normal_arrays(k, shapes, scales))(jax.random.key(3))
    for c, t in zip(concrete, traced, strict=True):
        # bit-equal with XLA's default CPU emitters; within a few ulps under the suite's faster-compiling elemental
        # emitters (tests/conftest.py), which contract the normal draw's polynomial differently inside a larger program
        np.testing.assert_array_max_ulp(c, t, maxulp=4)  # a wrong slice differs by far more
    assert not np.asarray(concrete[2]).any()
