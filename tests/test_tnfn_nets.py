"""Zoo transformer forward pass and the group action: function preservation, broken actions, inverse,
attention's function-equality condition, Flax conversion, jit/vmap/grad, bad inputs."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.test_util import check_grads

from common.testing import assert_invariant
from transformer_nfn import TransformerSpec, TransformerWeights, ZooTransformer, from_flax_params, groups, nets, to_flax_params
from transformer_nfn.groups import TransformerGroup

SPEC = TransformerSpec(num_blocks=2, num_heads=2, d_model=4, d_k=3, d_v=2, d_ffn=5)
attention = jax.jit(nets.attention)
call = nnx.jit(lambda model, *args: model(*args))


def _setup(dtype, key=0, std=0.5):
    """Random network (non-zero biases, unlike the zoo's init), tokens [2, 3, 5, D] and images [3, 8, 8, 1]."""
    k_w, k_x, k_i, k_b = jax.random.split(jax.random.key(key), 4)
    tw = nets.init_weights(k_w, SPEC, n_classes=3, w_init_std=std, dtype=dtype)
    tw = tw.replace(blocks=tuple(
        b.replace(b_a=jax.random.normal(jax.random.fold_in(k_b, i), b.b_a.shape, dtype),
                  b_b=jax.random.normal(jax.random.fold_in(k_b, 100 + i), b.b_b.shape, dtype))
        for i, b in enumerate(tw.blocks)))
    x = jax.random.normal(k_x, (2, 3, 5, SPEC.d_model), dtype)  # batch axes (2, 3), T = 5
    images = jax.random.uniform(k_i, (3, 8, 8, 1), dtype)  # patch 4 -> 4 tokens
    return tw, x, images


def _assert_tree_close(a, b, **tol):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), **tol)


@pytest.mark.parametrize("ffn_scaling", [False, True])
def test_group_preserves_function_float64(ffn_scaling):
    with jax.enable_x64(True):
        tw, x, images = _setup(jnp.float64)
        g = groups.sample(jax.random.key(1), tw, ffn_scaling=ffn_scaling)
        moved = groups.act(g, tw)
        for i, (b, m) in enumerate(zip(tw.blocks, moved.blocks)):  # the action is far from trivial
            for f in ("q", "k", "v", "o", "w_a", "b_a", "w_b"):
                assert float(jnp.abs(getattr(m, f) - getattr(b, f)).max()) > 1e-2, (i, f)
            np.testing.assert_array_equal(m.b_b, b.b_b)
        _assert_tree_close((moved.embedding, moved.classifier), (tw.embedding, tw.classifier), rtol=0, atol=0)
        np.testing.assert_allclose(nets.encoder_apply(moved, x), nets.encoder_apply(tw, x), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(nets.classifier_apply(moved, images), nets.classifier_apply(tw, images), rtol=1e-10, atol=1e-12)
        _assert_tree_close(groups.act(groups.inverse(g), moved), tw, rtol=1e-10, atol=1e-12)
        _assert_tree_close(groups.act(groups.identity(SPEC, jnp.float64), tw), tw, rtol=0, atol=0)


def test_group_two_sided_float32():
    """Coupled action preserves the function (float32 tolerance); every uncoupled action changes it."""
    tw, x, _ = _setup(jnp.float32)
    group = TransformerGroup(SPEC, ffn_scaling=True)
    assert_invariant(lambda t: nets.encoder_apply(t, x), group, jax.random.key(2), tw,
                     rtol=1e-4, atol=1e-4, min_change=1e-2)


def test_group_on_features_acts_channel_by_channel():
    tw, _, _ = _setup(jnp.float32)
    other = nets.init_weights(jax.random.key(7), SPEC, n_classes=3)
    feats = jax.tree.map(lambda a, b: jnp.concatenate([a, b], -1), tw.to_features(), other.to_features())
    g = groups.sample(jax.random.key(4), tw, ffn_scaling=True)
    moved = groups.act(g, feats)
    for c, raw in enumerate((tw, other)):
        channel = [a[..., c] for a in jax.tree.leaves(moved.blocks)]
        _assert_tree_close(channel, groups.act(g, raw).blocks, rtol=1e-5, atol=1e-6)
    # leading batch axes: one element acts on every network
    batched = jax.tree.map(lambda a, b: jnp.stack([a, b]), tw, other)
    _assert_tree_close(groups.act(g, batched).blocks[1].o[1], groups.act(g, other).blocks[1].o, rtol=1e-6, atol=1e-7)


def test_attention_depends_only_on_head_pairs():
    """MHA depends only on the multiset {(q_i k_i^T, v_i o_i)}: heads with equal A merge, heads with B = 0 drop."""
    with jax.enable_x64(True):
        spec3 = TransformerSpec(1, 3, 4, 3, 2, 5)
        block = nets.init_weights(jax.random.key(5), spec3, 3, w_init_std=0.7, dtype=jnp.float64).blocks[0]
        z = jax.random.normal(jax.random.key(6), (6, 4), jnp.float64)
        m = groups.sample(jax.random.key(8), spec3).blocks[0].m[0]
        shared = block.replace(q=block.q.at[2].set(block.q[0] @ m), k=block.k.at[2].set(block.k[0] @ jnp.linalg.inv(m).T))
        zeros_v, zeros_o = jnp.zeros_like(block.v[1]), jnp.zeros_like(block.o[1])
        merged = shared.replace(  # 2 heads of Dv = 4: head 0 carries B_0 + B_2
            q=shared.q[:2], k=shared.k[:2],
            v=jnp.stack([jnp.concatenate([shared.v[0], shared.v[2]], -1), jnp.concatenate([shared.v[1], zeros_v], -1)]),
            o=jnp.stack([jnp.concatenate([shared.o[0], shared.o[2]], 0), jnp.concatenate([shared.o[1], zeros_o], 0)]),
        )
        np.testing.assert_allclose(attention(merged, z), attention(shared, z), rtol=1e-10, atol=1e-12)
        unshared = merged.replace(q=merged.q.at[0].set(block.q[1]))  # A_0 differs from A_2: merging is wrong
        assert float(jnp.abs(attention(unshared, z) - attention(shared, z)).max()) > 1e-3
        silent = block.replace(o=block.o.at[1].set(0.0))
        dropped = silent.replace(**{f: getattr(silent, f)[jnp.array([0, 2])] for f in ("q", "k", "v", "o")})
        np.testing.assert_allclose(attention(dropped, z), attention(silent, z), rtol=1e-10, atol=1e-12)


def test_flax_model_matches_pure_forward_and_round_trips():
    model = ZooTransformer(SPEC, 3, patch_size=4, in_channels=1, rngs=nnx.Rngs(0))
    _, _, images = _setup(jnp.float32)
    np.testing.assert_allclose(call(model, images), nets.classifier_apply(model.weights(), images), rtol=1e-5, atol=1e-5)
    tw = nets.init_weights(jax.random.key(9), SPEC, 3, w_init_std=0.4)
    model.load_weights(tw)
    np.testing.assert_allclose(call(model, images), nets.classifier_apply(tw, images), rtol=1e-5, atol=1e-5)
    batched = jax.vmap(lambda k: nets.init_weights(k, SPEC, 3))(jax.random.split(jax.random.key(3), 2))
    _assert_tree_close(from_flax_params(to_flax_params(batched), SPEC.num_heads), batched, rtol=0, atol=0)


def test_text_model_token_embedding_and_mask():
    model = ZooTransformer(SPEC, 3, in_channels=None, rngs=nnx.Rngs(1))
    tw = model.weights()
    assert tw.embedding is None
    table = jax.random.normal(jax.random.key(0), (11, SPEC.d_model))
    tokens = jax.random.randint(jax.random.key(1), (2, 6), 1, 11)
    mask = jnp.array([[True] * 6, [True] * 4 + [False] * 2])
    for m in (None, mask):
        np.testing.assert_allclose(call(model, tokens, table, m), nets.classifier_apply(tw, tokens, table, m), rtol=1e-5, atol=1e-5)
    padded = tokens.at[1, 4:].set(0)  # masked positions do not matter with the mask, do without it
    np.testing.assert_allclose(nets.classifier_apply(tw, padded, table, mask), nets.classifier_apply(tw, tokens, table, mask), rtol=1e-6)
    assert float(jnp.abs(nets.classifier_apply(tw, padded, table) - nets.classifier_apply(tw, tokens, table))[1].max()) > 1e-4


def test_init_vmap_jit_grad():
    keys = jax.random.split(jax.random.key(0), 3)
    stds = jnp.array([0.1, 0.3, 0.5])
    batched = jax.vmap(lambda k, s: nets.init_weights(k, TransformerSpec(1, 2, 32, 16, 16, 64), 10, w_init_std=s))(keys, stds)
    w_a = batched.blocks[0].w_a
    np.testing.assert_allclose(w_a.reshape(3, -1).std(-1), stds, rtol=0.1)
    assert float(jnp.abs(batched.blocks[0].b_a).max()) == 0.0 and float(jnp.abs(w_a).max()) <= 2.0

    nets_batch = jax.vmap(lambda k: nets.init_weights(k, SPEC, 3, w_init_std=0.5))(keys)
    _, _, images = _setup(jnp.float32)
    logits = jax.jit(jax.vmap(nets.classifier_apply, in_axes=(0, None)))(nets_batch, images)
    one = jax.tree.map(lambda a: a[2], nets_batch)
    np.testing.assert_allclose(logits[2], nets.classifier_apply(one, images), rtol=1e-5, atol=1e-6)

    labels = jnp.array([0, 2, 1])
    loss = lambda t: -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(nets.classifier_apply(t, images)), labels[:, None], -1))
    grads = jax.jit(jax.grad(loss))(one)
    for path, leaf in jax.tree_util.tree_leaves_with_path(grads):
        assert bool(jnp.all(jnp.isfinite(leaf))) and float(jnp.abs(leaf).max()) > 0, path


def test_bad_inputs_raise():
    tw, x, images = _setup(jnp.float32)
    batched = jax.tree.map(lambda a: jnp.stack([a, a]), tw)
    with pytest.raises(ValueError, match=r"encoder_apply: tw has batch axes \(2,\).*use jax.vmap"):
        nets.encoder_apply(batched, x)
    with pytest.raises(ValueError, match=r"encoder_apply: x has shape \(5, 3\); expected tokens \[..., T, D\] with D = 4"):
        nets.encoder_apply(tw, jnp.zeros((5, 3)))
    with pytest.raises(ValueError, match=r"mask has shape \(4,\); expected x's \[..., T\] = \(5,\)"):
        nets.encoder_apply(tw, jnp.zeros((5, 4)), jnp.ones(4, bool))
    with pytest.raises(ValueError, match="tw.classifier is None"):
        nets.classifier_apply(TransformerWeights(tw.blocks, tw.embedding), images)
    with pytest.raises(ValueError, match="tw.embedding is None and no token_embedding"):
        nets.classifier_apply(tw.replace(embedding=None), images)
    with pytest.raises(ValueError, match=r"patch_embed: images have shape \(3, 8, 8, 2\); expected \[..., H, W, C\] with C = 1"):
        nets.classifier_apply(tw, jnp.zeros((3, 8, 8, 2)))
    with pytest.raises(ValueError, match="holds NFN features"):
        nets.encoder_apply(tw.to_features(), x)
    other = groups.identity(TransformerSpec(2, 2, 4, 2, 2, 5))
    with pytest.raises(ValueError, match=r"g.blocks\[0\].m has shape \(2, 2, 2\) but tw .* needs \(2, 3, 3\)"):
        groups.act(other, tw)
    with pytest.raises(ValueError, match="g has 1 blocks but tw has 2"):
        groups.act(groups.identity(TransformerSpec(1, 2, 4, 3, 2, 5)), tw)
    with pytest.raises(ValueError, match=r"cond_range must satisfy 0 < low <= high, got \(2.0, 1.0\)"):
        groups.sample(jax.random.key(0), tw, cond_range=(2.0, 1.0))


def test_softmax_gradient_equals_autodiff_of_jax_softmax():
    """`nets.softmax` writes its gradient out; it must equal autodiff through ``jax.nn.softmax`` (float64) and
    a finite-difference check, on logits with a masked (very negative) entry."""
    with jax.enable_x64():
        x = jax.random.normal(jax.random.key(3), (2, 3, 5), jnp.float64).at[0, 0, 1].set(-1e30)
        w = jax.random.normal(jax.random.key(4), (2, 3, 5), jnp.float64)
        ours = jax.grad(lambda x: jnp.sum(jnp.sin(nets.softmax(x)) * w))(x)
        reference = jax.grad(lambda x: jnp.sum(jnp.sin(jax.nn.softmax(x, axis=-1)) * w))(x)
        np.testing.assert_allclose(ours, reference, rtol=1e-12, atol=1e-14)
        assert float(jnp.max(jnp.abs(ours - jnp.roll(ours, 1, -1)))) > 1e-3  # not a trivial gradient
        check_grads(nets.softmax, (x[1],), order=1, modes=("rev",))
