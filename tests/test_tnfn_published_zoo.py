"""transformer_nfn.published_zoo: the authors' Small Transformer Zoo checkpoint naming and metadata CSV.

The test writes a small checkpoint in that naming and checks the imported network's logits against a numpy
forward pass written from the authors' model (PyTorch conventions: Linear is x W^T + b, heads are reshaped
from the projection's output as [B, T, h, Dk], images NCHW)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from transformer_nfn import nets
from transformer_nfn.published_zoo import from_zoo_state_dict, read_zoo_metadata, to_zoo_state_dict

D, H, DA, P, CLASSES, BLOCKS = 8, 2, 16, 4, 10, 2


def zoo_state(rng, image_channels=1):
    n = lambda *shape: (0.4 * rng.standard_normal(shape)).astype(np.float64)
    state = {}
    if image_channels:
        state["embedding.conv1.weight"], state["embedding.conv1.bias"] = n(D, image_channels, P, P), n(D)
        state["embedding.pos_embedding"] = np.asarray(nets.sinusoidal_positions(16, D))
    for i in range(BLOCKS):
        for name in ("queries", "keys", "values", "out_projection"):
            state[f"encoder.{i}.attention.{name}.weight"] = n(D, D)
        state.update({f"encoder.{i}.fc1.weight": n(DA, D), f"encoder.{i}.fc1.bias": n(DA),
                      f"encoder.{i}.fc2.weight": n(D, DA), f"encoder.{i}.fc2.bias": n(D)})
    state.update({"classifier.fc1.weight": n(D, D), "classifier.fc1.bias": n(D),
                  "classifier.fc2.weight": n(CLASSES, D), "classifier.fc2.bias": n(CLASSES)})
    return state


def layer_norm(x):
    return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)


def authors_forward(state, tokens):
    """The authors' encoder stack, final LN, mean pool and classifier on embedded tokens [B, T, D]."""
    linear = lambda x, name: x @ state[f"{name}.weight"].T + (state[f"{name}.bias"] if f"{name}.bias" in state else 0)
    x = tokens
    for i in range(BLOCKS):
        z = layer_norm(x)
        b, s, e = z.shape
        heads = lambda name: linear(z, f"encoder.{i}.attention.{name}").reshape(b, s, H, e // H).transpose(0, 2, 1, 3)
        q, k, v = heads("queries"), heads("keys"), heads("values")
        logits = q @ k.transpose(0, 1, 3, 2) / np.sqrt(e // H)
        attn = np.exp(logits - logits.max(-1, keepdims=True))
        attn /= attn.sum(-1, keepdims=True)
        y = linear((attn @ v).transpose(0, 2, 1, 3).reshape(b, s, e), f"encoder.{i}.attention.out_projection")
        x = linear(np.maximum(linear(layer_norm(y), f"encoder.{i}.fc1"), 0), f"encoder.{i}.fc2")
    pooled = layer_norm(x).mean(1)
    return linear(np.maximum(linear(pooled, "classifier.fc1"), 0), "classifier.fc2")


def test_mnist_checkpoint_logits_match_the_authors_forward():
    rng = np.random.default_rng(0)
    state = zoo_state(rng)
    images = rng.standard_normal((3, 1, 16, 16))  # NCHW, 4 x 4 patches of 4 x 4 pixels
    conv = np.einsum("bciujv,dcuv->bdij", images.reshape(3, 1, 4, P, 4, P), state["embedding.conv1.weight"])
    tokens = (conv + state["embedding.conv1.bias"][:, None, None]).reshape(3, D, -1).transpose(0, 2, 1)
    tokens = tokens + state["embedding.pos_embedding"]
    with jax.enable_x64(True):
        tw = from_zoo_state_dict(state, num_heads=H)
        got = nets.classifier_apply(tw, jnp.asarray(images.transpose(0, 2, 3, 1)))
    np.testing.assert_allclose(got, authors_forward(state, tokens), rtol=1e-9, atol=1e-9)
    assert tw.blocks[0].q.shape == (H, D, D // H) and tw.blocks[0].o.shape == (H, D // H, D)
    np.testing.assert_array_equal(tw.blocks[1].q[1], state["encoder.1.attention.queries.weight"][D // H:].T)


def test_text_checkpoint_uses_the_shared_token_table_and_round_trips():
    rng = np.random.default_rng(1)
    state = zoo_state(rng, image_channels=0)
    table, ids = rng.standard_normal((20, D)), rng.integers(0, 20, (2, 7))
    with jax.enable_x64(True):
        tw = from_zoo_state_dict(state)
        got = nets.classifier_apply(tw, jnp.asarray(ids), jnp.asarray(table))
    assert tw.embedding is None
    np.testing.assert_allclose(got, authors_forward(state, table[ids] + np.asarray(nets.sinusoidal_positions(7, D))),
                               rtol=1e-9, atol=1e-9)
    back = to_zoo_state_dict(tw)
    assert set(back) == set(state)
    for key in state:
        np.testing.assert_array_equal(back[key], state[key])


@pytest.mark.parametrize("edit, match", [
    (lambda s: s.update({"encoder.0.norm1.weight": np.ones(D)}), "unexpected keys .*norm1"),
    (lambda s: s.pop("encoder.1.fc2.bias"), "missing keys .*encoder.1.fc2.bias"),
    (lambda s: s.pop("embedding.conv1.bias"), "missing keys .*embedding.conv1.bias"),
    (lambda s: s.update({"embedding.pos_embedding": np.zeros((16, D))}), "sinusoidal"),
    (lambda s: s.update({"encoder.0.attention.queries.weight": np.zeros((7, D))}), "num_heads = 2"),
    (lambda s: [s.pop(k) for k in list(s) if k.startswith("encoder.0.")], "encoder.0"),
])
def test_other_namings_are_refused(edit, match):
    state = zoo_state(np.random.default_rng(2))
    edit(state)
    with pytest.raises(ValueError, match=match):
        from_zoo_state_dict(state)


def test_metadata_reader(tmp_path):
    mnist = tmp_path / "mnist.csv"
    mnist.write_text("lr,optimizer,w_init_std,ckpt_epoch,ckpt_file,test_top1_accuracy,n_attention_heads\n"
                     "0.001,adam,0.1,75,mnist/abc_75_9712.pt,0.9712,2\n"
                     "0.05,sgd,,best1,mnist/abc_best1_9800.pt,0.98,2\n")
    rows = read_zoo_metadata(mnist)
    assert rows[0] == {"lr": 0.001, "optimizer": "adam", "w_init_std": 0.1, "ckpt_epoch": "75",
                       "ckpt_file": "mnist/abc_75_9712.pt", "test_top1_accuracy": 0.9712, "n_attention_heads": 2,
                       "test_accuracy": 0.9712}
    assert rows[1]["w_init_std"] is None and rows[1]["ckpt_epoch"] == "best1"
    ag = tmp_path / "ag_news.csv"
    ag.write_text("ckpt_epoch,ckpt_file,test_accuracy\n50,ag_news/x_50_8812.pt,0.8812\n")
    assert read_zoo_metadata(ag)[0]["test_accuracy"] == 0.8812
    bad = tmp_path / "bad.csv"
    bad.write_text("ckpt_epoch,ckpt_file\n50,x.pt\n")
    with pytest.raises(ValueError, match="row 1"):
        read_zoo_metadata(bad)
