"""`common.training.fit` checkpointing under faults, in real processes (docs/input_policy.md, docs/common.md §5):
a SIGKILL while orbax writes a checkpoint (at two points of the write) and a full disk (a file-size limit) while
it writes one. Each run then resumes, once the fault is gone, and ends with exactly the parameters of an
uninterrupted run, metrics log included. (A kill between two checkpoints is the easy case of the first test: the
finished checkpoints are intact there too. A corrupt latest checkpoint is covered in-process by
tests/test_training.py.)"""
import os
import signal
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_STEPS, EVERY, FAULT_STEP = 6, 2, 4  # checkpoints 2, 4, 6; the fault hits the write of checkpoint 4

TRAINER = r'''
import os, resource, signal, sys, time
import jax, jax.numpy as jnp, numpy as np, optax
from common import training

mode, run_dirs = sys.argv[1], sys.argv[2:]
NUM_STEPS, EVERY, FAULT_STEP = %d, %d, %d

def init_params(key):
    k1, k2 = jax.random.split(key)
    return {"w1": jax.random.normal(k1, (3, 8)) / 3, "b1": jnp.zeros(8), "w2": jax.random.normal(k2, (8, 1)) / 4}

def loss_fn(params, batch, key):
    h = jax.nn.relu(batch["x"] @ params["w1"] + params["b1"])
    h = h * jax.random.bernoulli(key, 0.7, h.shape) / 0.7  # dropout: the per-step keys matter
    return jnp.mean((h @ params["w2"] - batch["y"]) ** 2), {}

def batches(step):
    if mode == "full_disk" and step == FAULT_STEP - 1:  # checkpoint FAULT_STEP - EVERY is finished: fill the disk
        while not os.path.isdir(os.path.join(run_dirs[0], "checkpoints", str(FAULT_STEP - EVERY))):
            time.sleep(0.01)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1000, resource.RLIM_INFINITY))  # metrics.jsonl fits
    requested.append(step)
    x = np.random.default_rng(step).normal(size=(8, 3)).astype(np.float32)
    return {"x": x, "y": np.sin(x.sum(1, keepdims=True))}

if mode.startswith("kill_"):  # SIGKILL inside orbax's write of checkpoint FAULT_STEP
    from orbax.checkpoint._src.path import atomicity
    cls = atomicity.AtomicRenameTemporaryPath
    hook = {"kill_created": "create", "kill_before_commit": "finalize"}[mode]
    original = getattr(cls, hook)
    async def killing(self, *args, **kwargs):
        result = await original(self, *args, **kwargs) if hook == "create" else None
        if self.get_final().name == str(FAULT_STEP):  # create: the step's temporary folder exists, empty;
            os.kill(os.getpid(), signal.SIGKILL)      # finalize: every file written, not yet committed
        return result if hook == "create" else await original(self, *args, **kwargs)
    setattr(cls, hook, killing)

for run_dir in run_dirs:
    requested = []
    try:
        state, _ = training.fit(loss_fn, init_params(jax.random.key(0)), optax.adam(1e-2), batches,
                                key=jax.random.key(1), num_steps=NUM_STEPS, run_dir=run_dir,
                                checkpoint_every=EVERY, progress=False)
    except Exception as err:  # named on stdout: orbax's threads log their own tracebacks to stderr meanwhile
        print(f"{type(err).__module__}.{type(err).__qualname__}: {err}", flush=True)
        sys.exit(1)
    np.savez(os.path.join(run_dir, "final.npz"), **jax.device_get(state.params))
    print(requested[0], flush=True)  # the step it started from
''' % (NUM_STEPS, EVERY, FAULT_STEP)


def _start(mode, *run_dirs):
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), "JAX_PLATFORMS": "cpu"}
    return subprocess.Popen([sys.executable, "-c", TRAINER, mode, *map(str, run_dirs)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc):
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


def _resume_and_compare(runs, reference):
    """Resume every run in `runs`, then train `reference` from scratch, in one process; each run restarts
    from checkpoint FAULT_STEP - EVERY and ends with the reference's parameters, bit for bit."""
    code, out, err = _finish(_start("plain", *runs, reference))
    assert code == 0, err
    *resumed_from, reference_from = map(int, out.split())
    assert resumed_from == [FAULT_STEP - EVERY] * len(runs) and reference_from == 0
    with np.load(reference / "final.npz") as want:
        for run in runs:
            with np.load(run / "final.npz") as got:
                assert set(got) == set(want) == {"w1", "b1", "w2"}
                for name in want:
                    np.testing.assert_array_equal(got[name], want[name], err_msg=f"{run.name}: {name}")
            assert sorted(os.listdir(run / "checkpoints")) == sorted(os.listdir(reference / "checkpoints"))
            assert (run / "metrics.jsonl").read_text() == (reference / "metrics.jsonl").read_text()


def test_sigkill_during_a_checkpoint_write_then_resume_equals_uninterrupted(tmp_path):
    runs = [tmp_path / "kill_created", tmp_path / "kill_before_commit"]
    victims = [_start(run.name, run) for run in runs]
    for run, victim in zip(runs, victims):
        code, _, err = _finish(victim)
        assert code == -signal.SIGKILL, err
        left = sorted(os.listdir(run / "checkpoints"))
        assert left == [str(FAULT_STEP - EVERY), f"{FAULT_STEP}.orbax-checkpoint-tmp"], (run.name, left)
    assert os.listdir(runs[1] / "checkpoints" / f"{FAULT_STEP}.orbax-checkpoint-tmp")  # killed after writing
    _resume_and_compare(runs, tmp_path / "reference")


def test_full_disk_during_a_checkpoint_write_names_it_then_resume_equals_uninterrupted(tmp_path):
    run = tmp_path / "run"
    code, out, err = _finish(_start("full_disk", run))
    message = (f"common.checkpointing.CheckpointWriteError: could not write a checkpoint in {run}/checkpoints (File "
               f"too large); the finished checkpoints are intact: once the cause is fixed, run again with the same "
               f"run_dir to resume from step {FAULT_STEP - EVERY}")
    assert code == 1 and out.splitlines() == [message], (out, err[-3000:])
    assert sorted(os.listdir(run / "checkpoints"))[0] == str(FAULT_STEP - EVERY)
    assert not (run / "final.npz").exists()
    _resume_and_compare([run], tmp_path / "reference")
