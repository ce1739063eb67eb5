"""Demo section: the maximal symmetry group of the zoo transformer, the Transformer-NFN accuracy predictor's
invariance on zoo-shaped weights (MNIST patch transformer, 2 blocks, D = 32), and a miniature of the accuracy
prediction study (`benchmarks.tnfn_experiments --quick`: a tiny zoo, Transformer-NFN and the MLP baseline)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from benchmarks import tnfn_experiments
from common import data
from common.training import trainable_parameters
from transformer_nfn import AccuracyPredictor, TransformerSpec, groups, nets


def _rel(a: jax.Array, b: jax.Array) -> float:
    return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


def run(out_dir: str) -> list[tuple[str, str]]:
    """Returns rows (quantity, value) for the results table."""
    spec = TransformerSpec(num_blocks=2, num_heads=2, d_model=32, d_k=16, d_v=16, d_ffn=64)
    keys = jax.random.split(jax.random.key(0), 4)
    tws = jax.vmap(lambda k: nets.init_weights(k, spec, 10, w_init_std=0.3))(jax.random.split(keys[0], 4))
    images, _ = data.load_mnist("test")
    x = jnp.asarray(images[:64, :, :, None], jnp.float32) / 255.0
    one = jax.tree.map(lambda a: a[0], tws)
    logits = nets.classifier_apply(one, x)
    g = groups.sample(keys[1], one, ffn_scaling=True)
    moved = groups.act(g, one)
    predictor = AccuracyPredictor(spec, classifier_widths=(32, 32, 10), embedding_size=544, rngs=nnx.Rngs(0))
    n_params = trainable_parameters(predictor)
    g_batch = jax.vmap(lambda k, tw: groups.sample(k, tw))(jax.random.split(keys[2], 4), tws)
    scores = predictor(tws)
    moved_scores = predictor(jax.vmap(groups.act)(g_batch, tws))
    return [
        ("zoo transformer, 64 MNIST images: relative logit change under g (all factors)", f"{_rel(nets.classifier_apply(moved, x), logits):.1e}"),
        ("  weights moved by g (max |g.W - W|)", f"{max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(moved), jax.tree.leaves(one))):.2f}"),
        ("AccuracyPredictor (authors' README configuration): parameters", f"{n_params:,}"),
        ("  predictions of 4 networks: max |change| under random group elements", f"{float(jnp.max(jnp.abs(moved_scores - scores))):.1e}"),
        ("  spread of predictions across the 4 networks", f"{float(jnp.max(scores) - jnp.min(scores)):.1e}"),
    ] + prediction_rows(out_dir)


def prediction_rows(out_dir: str) -> list[tuple[str, str]]:
    """The miniature study (24 zoo runs of 2 epochs on 512 MNIST rows; predictors 3 epochs, tiny Transformer-NFN
    layers): the zoo's accuracy range and each method's test Kendall tau (a handful of test runs: a pipeline
    check, not a result)."""
    result = tnfn_experiments.main(["prediction", "--quick", "--models", "24", "--shard-size", "24", "--epochs", "3",
                                    "--methods", "tnfn", "mlp", "--thresholds", "0", "--out", out_dir])
    zoo = result["zoos"]["mnist"]["test_accuracy"]
    rows = [(f"tiny transformer zoo: {len(zoo)} runs, test accuracy", f"{min(zoo):.2f} .. {max(zoo):.2f}")]
    for cell in result["cells"]:
        rows.append((f"  test Kendall tau, {tnfn_experiments.LABELS[cell['method']]} "
                     f"({cell['train_runs']}/{cell['val_runs']}/{cell['test_runs']} runs)",
                     f"{cell['test_tau_mean']:.2f}"))
    return rows
