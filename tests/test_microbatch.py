"""Micro-batched gradients (common.microbatch) and the train step that uses them, on 4 simulated CPU devices."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from common import microbatch, training
from common.distributed import replicate
from common.microbatch import (AUTO, CPU_MICRO_BATCH, CPU_WHOLE_ROWS, chunk_count, resolve_micro_batch,
                               split_rows, value_and_grad_in_chunks)


def init_params(key):
    k1, k2 = jax.random.split(key)
    return {"w1": jax.random.normal(k1, (3, 8)) / 3, "w2": jax.random.normal(k2, (8,)) / 4}


def row_mean_loss(params, batch, key):
    """A mean over rows with dropout drawn from ``key`` (rate 0 by default: deterministic)."""
    h = jnp.tanh(batch["x"] @ params["w1"])
    err = h @ params["w2"] - batch["y"]
    return jnp.mean(err ** 2), {"mean_abs": jnp.mean(jnp.abs(err))}


def coupled_loss(params, batch, key):
    """Couples the rows (a variance over the batch): chunking must change it."""
    pred = jnp.tanh(batch["x"] @ params["w1"]) @ params["w2"]
    return jnp.var(pred - batch["y"]), {}


def data(rows, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 3)).astype(np.float32)
    return {"x": x, "y": np.sin(x.sum(1)).astype(np.float32)}


def test_split_rows_takes_strided_chunks():
    x = np.arange(24).reshape(12, 2)
    chunks = np.asarray(split_rows({"x": x}, 3)["x"])
    assert chunks.shape == (3, 4, 2)
    for j in range(3):
        np.testing.assert_array_equal(chunks[j], x[j::3])


@pytest.mark.parametrize("chunks", [2, 4, 8])
def test_chunked_value_and_grad_equals_whole_batch(chunks):
    params, batch, key = init_params(jax.random.key(0)), data(32), jax.random.key(1)
    whole = jax.value_and_grad(row_mean_loss, has_aux=True)(params, batch, key)
    parts = jax.jit(value_and_grad_in_chunks(row_mean_loss, chunks))(params, batch, key)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-7), whole, parts)


def test_the_chunked_step_traces_the_loss_once():
    traces = []

    def loss_fn(params, batch, key):
        traces.append(1)  # Python runs at trace time only
        return jnp.mean((batch @ params) ** 2), {}

    step = jax.jit(value_and_grad_in_chunks(loss_fn, 4))
    params, batch = jnp.ones(3), jnp.arange(24.0).reshape(8, 3)
    (loss, _), grads = step(params, batch, jax.random.key(0))
    assert len(traces) == 1  # the loop's start and its body share one trace of the chunk's gradient
    whole, whole_grads = jax.value_and_grad(lambda p: loss_fn(p, batch, None)[0])(params)
    np.testing.assert_allclose(loss, whole, rtol=1e-6)
    np.testing.assert_allclose(grads, whole_grads, rtol=1e-6)


def test_integer_metrics_become_float_means_of_the_chunks():
    """A count among the metrics (int32) comes back as the float mean of the chunks' counts."""
    def counting_loss(params, batch, key):
        loss, _ = row_mean_loss(params, batch, key)
        return loss, {"positive": jnp.sum(batch["y"] > 0)}

    params, batch, key = init_params(jax.random.key(0)), data(32), jax.random.key(1)
    (_, metrics), _ = jax.jit(value_and_grad_in_chunks(counting_loss, 4))(params, batch, key)
    assert metrics["positive"].dtype == jnp.result_type(float)
    np.testing.assert_allclose(metrics["positive"], np.sum(batch["y"] > 0) / 4, rtol=1e-6)
    with jax.enable_x64(True):  # the default float dtype, as a division of the summed counts gives
        (_, metrics), _ = value_and_grad_in_chunks(counting_loss, 4)(params, batch, key)
        assert metrics["positive"].dtype == jnp.float64


def test_chunking_changes_a_loss_that_couples_rows():
    params, batch, key = init_params(jax.random.key(0)), data(32), jax.random.key(1)
    (whole, _), _ = jax.value_and_grad(coupled_loss, has_aux=True)(params, batch, key)
    (parts, _), _ = value_and_grad_in_chunks(coupled_loss, 4)(params, batch, key)
    assert abs(float(whole) - float(parts)) > 1e-4  # why fit's micro_batch is for row-mean losses only


def test_each_chunk_gets_its_own_key():
    """Chunk j (rows j::c) is computed with jax.random.split(key, c)[j]."""
    def noisy_loss(params, batch, key):
        noise = jax.random.uniform(key, batch["y"].shape)
        return jnp.mean((batch["x"] @ params["w1"]).sum(1) + 100 * noise), {}

    params, batch, key = init_params(jax.random.key(0)), data(16), jax.random.key(5)
    (value, _), _ = value_and_grad_in_chunks(noisy_loss, 4)(params, batch, key)
    keys = jax.random.split(key, 4)
    expected = np.mean([noisy_loss(params, jax.tree.map(lambda a: a[j::4], batch), keys[j])[0] for j in range(4)])
    np.testing.assert_allclose(value, expected, rtol=1e-6)
    assert abs(float(value) - float(noisy_loss(params, batch, key)[0])) > 1e-3  # not the whole batch's draw


def test_auto_micro_batch_on_cpu(monkeypatch):
    assert jax.default_backend() == "cpu"
    monkeypatch.setattr(microbatch, "calling_thread_dispatch", lambda: False)  # computations on a worker thread
    assert resolve_micro_batch(AUTO, 64) == CPU_MICRO_BATCH == 16
    assert resolve_micro_batch(AUTO, 64, devices=4) is None  # 16 rows per device: nothing to split
    assert resolve_micro_batch(AUTO, 128, devices=4) == 16
    assert resolve_micro_batch(AUTO, 16) is None and resolve_micro_batch(AUTO, 40) is None
    assert resolve_micro_batch(None, 64) is None and resolve_micro_batch(8, 64) == 8
    assert chunk_count(16, 64) == 4 and chunk_count(16, 128, devices=4) == 2
    assert chunk_count(None, 64) == 1 and chunk_count(64, 64) == 1 and chunk_count(100, 64) == 1
    assert chunk_count(AUTO, 64) == 4 and chunk_count(AUTO, 16) == 1  # resolved as resolve_micro_batch does


def test_auto_keeps_small_batches_whole_on_the_calling_thread(monkeypatch):
    monkeypatch.setattr(microbatch, "calling_thread_dispatch", lambda: True)
    assert resolve_micro_batch(AUTO, 32) is None and resolve_micro_batch(AUTO, CPU_WHOLE_ROWS) is None
    assert resolve_micro_batch(AUTO, 2 * CPU_WHOLE_ROWS) == CPU_MICRO_BATCH  # larger batches: chunks as before
    # several devices run on worker threads whatever the setting, so their rows are chunked as before
    assert resolve_micro_batch(AUTO, 4 * 32, devices=4) == CPU_MICRO_BATCH
    assert chunk_count(AUTO, 64) == 1 and chunk_count(AUTO, 256) == 16


def test_calling_thread_dispatch_reads_the_jax_setting_keep_freed_memory_made():
    from common.host_memory import calling_thread_dispatch

    assert calling_thread_dispatch() == (not jax.config.read("jax_cpu_enable_async_dispatch"))
    assert calling_thread_dispatch()  # tests/conftest.py called keep_freed_memory before the first computation


@pytest.mark.parametrize("value", [0, -4, 2.5, "fast", True])
def test_bad_micro_batch_is_rejected(value):
    with pytest.raises(ValueError, match="micro_batch"):
        resolve_micro_batch(value, 64)


def test_indivisible_micro_batch_names_the_rows_and_devices():
    with pytest.raises(ValueError, match=r"micro_batch=12 must divide .* 64 rows over 4 device"):
        chunk_count(12, 64, devices=4)


def test_micro_batched_sharded_step_matches_whole_batch_step():
    """The same updates with micro-batches of 4 rows per device (2 chunks of 8 rows spanning all 4 devices)."""
    mesh = training.make_mesh()
    assert mesh.size == 4
    params, optimizer = init_params(jax.random.key(0)), optax.adam(1e-2)
    states = []
    for micro_batch in (None, 4):
        state = replicate(training.init_train_state(params, optimizer, jax.random.key(1)), mesh)
        step = training.make_train_step(row_mean_loss, optimizer, mesh, micro_batch)
        for i in range(3):
            state, metrics = step(state, training.shard_batch(data(32, seed=i), mesh))
        states.append((state, metrics))
    (a, ma), (b, mb) = states
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6), (a.params, ma), (b.params, mb))
    assert not np.allclose(a.params["w1"], params["w1"])


def test_fit_rejects_a_micro_batch_that_does_not_divide_the_batch():
    with pytest.raises(ValueError, match="micro_batch=3 must divide"):
        training.fit(row_mean_loss, init_params(jax.random.key(0)), optax.sgd(0.1), lambda s: data(32),
                     key=jax.random.key(0), num_steps=1, progress=False, micro_batch=3,
                     mesh=training.make_mesh(jax.devices()[:1]))
