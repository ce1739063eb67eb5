"""Demo section: train a small ReLU MLP on scikit-learn's digits through the data-parallel loop, then
check the monomial group on the trained network (outputs unchanged by coupled actions, changed by broken ones).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from common import NetworkSpec, WeightSpace, data, groups, nets, training


def _init_mlp(key: jax.Array, spec: NetworkSpec) -> WeightSpace:
    keys = jax.random.split(key, spec.num_layers)
    weights = tuple(
        jax.random.normal(k, (n_out, n_in)) * jnp.sqrt(2.0 / n_in)
        for k, n_in, n_out in zip(keys, spec.widths[:-1], spec.widths[1:])
    )
    return WeightSpace(weights, tuple(jnp.zeros(n) for n in spec.widths[1:]))


def _digits_split():
    images, labels = data.load_digits()
    x = images.reshape(len(images), -1).astype(np.float32) / 16.0
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], labels[order]
    return (x[:1400], y[:1400]), (x[1400:], y[1400:])


def run(run_dir: str, num_steps: int = 300, batch_size: int = 64) -> list[tuple[str, str]]:
    """Returns rows (quantity, value) for the results table."""
    (x_train, y_train), (x_test, y_test) = _digits_split()
    spec = NetworkSpec.mlp((64, 32, 32, 10))

    def loss_fn(ws, batch, key):
        logits = nets.mlp_apply(ws, batch["x"], "relu")
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()
        return loss, {"accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["y"])}

    def batches(step):
        idx = np.random.default_rng(step).choice(len(x_train), batch_size, replace=False)
        return {"x": x_train[idx], "y": y_train[idx]}

    def test_accuracy(ws):
        return float(jnp.mean(jnp.argmax(nets.mlp_apply(ws, x_test, "relu"), -1) == y_test))

    mesh = training.make_mesh()
    state, history = training.fit(
        loss_fn, _init_mlp(jax.random.key(0), spec), optax.adam(3e-3), batches, key=jax.random.key(1),
        num_steps=num_steps, run_dir=run_dir, checkpoint_every=100, mesh=mesh, progress=False,
        eval_fn=lambda ws: {"test_accuracy": test_accuracy(ws)}, eval_every=100,
    )
    ws = state.params
    logits = nets.mlp_apply(ws, x_test, "relu")
    g = groups.sample_monomial(jax.random.key(2), spec, "positive", scale_range=(0.1, 10.0))
    g_sign = groups.sample_monomial(jax.random.key(3), spec, "sign")
    moved = nets.mlp_apply(groups.act(g, ws), x_test, "relu")
    flipped = nets.mlp_apply(groups.act(g_sign, ws), x_test, "relu")
    broken = nets.mlp_apply(groups.uncoupled_permutation(jax.random.key(4), ws, 1), x_test, "relu")
    agree = lambda out: float(jnp.mean(jnp.argmax(out, -1) == jnp.argmax(logits, -1)))
    return [
        ("devices in the data-parallel mesh", str(mesh.devices.size)),
        (f"MLP {spec.widths} on digits: test accuracy after {num_steps} steps", f"{test_accuracy(ws):.3f}"),
        ("final training loss", f"{history[-1]['loss']:.4f}"),
        ("positive monomial g (scales 0.1-10): max |f(gU) - f(U)| / max |f(U)|",
         f"{float(jnp.max(jnp.abs(moved - logits)) / jnp.max(jnp.abs(logits))):.1e}"),
        ("  weights moved by g (max |gU - U|)",
         f"{max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(groups.act(g, ws)), jax.tree.leaves(ws))):.2f}"),
        ("sign flips on a ReLU net: predictions kept", f"{agree(flipped):.3f}"),
        ("uncoupled permutation: predictions kept", f"{agree(broken):.3f}"),
    ]
