"""common.importers: PyTorch / Flax / safetensors namings to a WeightSpace and back, and the imported networks
compute what the original framework computes."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen, nnx

from common import importers
from common.nets import cnn_apply, mlp_apply

RNG = np.random.default_rng(0)


def _normal(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def torch_cnn_state():
    """State dict of nn.Sequential(Conv2d(2, 4, 3, stride=2), ReLU, Conv2d(4, 5, 2, stride=2), ReLU,
    AdaptiveAvgPool2d(1), Flatten, Linear(5, 6), ReLU, Linear(6, 3)): keys 0, 2, 6, 8."""
    return {"0.weight": _normal(4, 2, 3, 3), "0.bias": _normal(4), "2.weight": _normal(5, 4, 2, 2), "2.bias": _normal(5),
            "6.weight": _normal(6, 5), "6.bias": _normal(6), "8.weight": _normal(3, 6), "8.bias": _normal(3)}


def torch_conv2d(x, w, b, stride):
    """PyTorch's Conv2d (cross-correlation, padding 0): x [N, C, H, W], w [O, C, kh, kw] -> [N, O, H', W']."""
    kh, kw = w.shape[2:]
    ho, wo = (x.shape[2] - kh) // stride + 1, (x.shape[3] - kw) // stride + 1
    out = np.zeros((x.shape[0], w.shape[0], ho, wo))
    for i in range(ho):
        for j in range(wo):
            patch = x[:, :, i * stride:i * stride + kh, j * stride:j * stride + kw]
            out[:, :, i, j] = np.einsum("nchw,ochw->no", patch, w) + b
    return out


def torch_cnn_forward(state, x_nchw):
    relu = lambda z: np.maximum(z, 0)
    h = relu(torch_conv2d(x_nchw, state["0.weight"], state["0.bias"], 2))
    h = relu(torch_conv2d(h, state["2.weight"], state["2.bias"], 2)).mean(axis=(2, 3))
    h = relu(h @ state["6.weight"].T + state["6.bias"])  # nn.Linear: x W^T + b
    return h @ state["8.weight"].T + state["8.bias"]


def test_torch_cnn_outputs_match_the_pytorch_forward():
    state = torch_cnn_state()
    x = _normal(3, 2, 11, 9)  # NCHW
    ws = importers.from_torch(state)
    got = cnn_apply(ws, jnp.asarray(x.transpose(0, 2, 3, 1)), "relu", stride=2)
    np.testing.assert_allclose(got, torch_cnn_forward(state, x.astype(np.float64)), rtol=1e-5, atol=1e-5)


def test_torch_mlp_outputs_match_the_pytorch_forward_and_layers_sort_naturally():
    # Eleven layers named 0..10: a plain string sort would put "10" before "2".
    widths = [3, 4, 5, 4, 6, 3, 5, 4, 2, 3, 4, 2]
    state = {}
    for i in range(11):
        state[f"{i}.weight"], state[f"{i}.bias"] = _normal(widths[i + 1], widths[i]), _normal(widths[i + 1])
    shuffled = dict(sorted(state.items()))
    x = _normal(7, 3)
    h = x.astype(np.float64)
    for i in range(11):
        h = h @ state[f"{i}.weight"].T + state[f"{i}.bias"]
        h = np.tanh(h) if i < 10 else h
    got = mlp_apply(importers.from_torch(shuffled), jnp.asarray(x), "tanh")
    np.testing.assert_allclose(got, h, rtol=1e-5, atol=1e-5)


def test_torch_round_trip_and_layer_names():
    state = torch_cnn_state()
    ws = importers.from_torch(state)
    assert [w.shape for w in ws.weights] == [(4, 2, 3, 3), (5, 4, 2, 2), (6, 5), (3, 6)]
    back = importers.to_torch(ws, layer_names=["0", "2", "6", "8"])
    assert list(back) == list(state)
    for key in state:
        np.testing.assert_array_equal(back[key], state[key])
    assert list(importers.to_torch(ws)) == ["0.weight", "0.bias", "1.weight", "1.bias", "2.weight", "2.bias",
                                            "3.weight", "3.bias"]


def test_explicit_layer_order_and_missing_bias():
    state = {"features.0.weight": _normal(4, 1, 3, 3), "classifier.weight": _normal(2, 4)}
    with pytest.raises(ValueError, match=r"order \['classifier', 'features.0'\]; pass layer_names"):
        importers.from_torch(state)
    ws = importers.from_torch(state, layer_names=["features.0", "classifier"])
    np.testing.assert_array_equal(ws.biases[0], np.zeros(4))
    assert ws.biases[1].shape == (2,)


@pytest.mark.parametrize("state, match", [
    ({"0.weight": _normal(3, 2), "0.running_mean": _normal(3)}, "0.running_mean"),
    ({"0.bias": _normal(3)}, "no weight"),
    ({"0.weight": _normal(3)}, "dense"),
    ({"0.weight": _normal(3, 2), "1.weight": _normal(2, 4)}, "weights"),
    ({}, "no layers"),
])
def test_bad_state_dicts_are_refused_naming_the_problem(state, match):
    with pytest.raises(ValueError, match=match):
        importers.from_torch(state)


def test_layer_names_must_cover_the_layers():
    with pytest.raises(ValueError, match="layer_names"):
        importers.from_torch(torch_cnn_state(), layer_names=["0", "2", "6"])
    with pytest.raises(ValueError, match="layer_names"):
        importers.to_torch(importers.from_torch(torch_cnn_state()), layer_names=["a", "a", "b", "c"])


class LinenCNN(linen.Module):
    @linen.compact
    def __call__(self, x):
        x = linen.relu(linen.Conv(4, (3, 3), strides=2, padding="VALID")(x))
        x = linen.relu(linen.Conv(5, (2, 2), strides=2, padding="VALID")(x)).mean(axis=(1, 2))
        x = linen.relu(linen.Dense(6)(x))
        return linen.Dense(3)(x)


def test_linen_outputs_match_and_round_trip():
    x = jnp.asarray(_normal(3, 11, 9, 2))
    variables = LinenCNN().init(jax.random.key(0), x)
    ws = importers.from_flax(variables)
    assert [w.shape for w in ws.weights] == [(4, 2, 3, 3), (5, 4, 2, 2), (6, 5), (3, 6)]
    np.testing.assert_allclose(cnn_apply(ws, x, "relu", stride=2), LinenCNN().apply(variables, x),
                               rtol=1e-5, atol=1e-5)
    back = importers.to_flax(ws)
    assert jax.tree.structure(back) == jax.tree.structure(variables["params"])
    jax.tree.map(np.testing.assert_array_equal, back, jax.tree.map(np.asarray, variables["params"]))
    np.testing.assert_allclose(LinenCNN().apply({"params": back}, x), LinenCNN().apply(variables, x))


class NnxMLP(nnx.Module):
    def __init__(self, rngs):
        self.layers = nnx.List([nnx.Linear(3, 5, rngs=rngs), nnx.Linear(5, 4, rngs=rngs), nnx.Linear(4, 2, rngs=rngs)])

    def __call__(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else jnp.tanh(layer(x))
        return x


def test_nnx_outputs_match_and_export_loads_into_the_model():
    model, x = NnxMLP(nnx.Rngs(0)), jnp.asarray(_normal(6, 3))
    ws = importers.from_flax(nnx.state(model, nnx.Param))
    np.testing.assert_allclose(mlp_apply(ws, x, "tanh"), model(x), rtol=1e-5, atol=1e-5)
    doubled = jax.tree.map(lambda a: 2 * a, ws)
    state = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(state, importers.to_flax(doubled, layer_names=["layers.0", "layers.1", "layers.2"]))
    nnx.update(model, state)
    np.testing.assert_allclose(model(x), mlp_apply(doubled, x, "tanh"), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", importers.LAYOUTS)
def test_safetensors_round_trip(tmp_path, layout):
    ws = importers.from_torch(torch_cnn_state())
    path = tmp_path / f"net_{layout}.safetensors"
    importers.save_safetensors(ws, path, layout)
    back = importers.load_safetensors(path, layout)
    jax.tree.map(np.testing.assert_array_equal, back, ws)
    from safetensors.numpy import load_file
    names = set(load_file(str(path)))
    expected = {"0.weight", "3.bias"} if layout == "torch" else {"Conv_0.kernel", "Dense_1.bias"}
    assert expected <= names


def test_unknown_layout_is_refused(tmp_path):
    with pytest.raises(ValueError, match="layout"):
        importers.save_safetensors(importers.from_torch(torch_cnn_state()), tmp_path / "x", "keras")
