"""Zoo writers as real processes (docs/input_policy.md, docs/common.md §7): two concurrent writers, a writer
SIGKILLed in the middle of a shard write, a full disk (a file-size limit); after the fault, the resumed zoo
equals an uninterrupted one."""
import os
import signal
import subprocess
import sys
import time

import numpy as np

from common import zoo_store

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WRITER = r'''
import os, signal, sys, time
import numpy as np
from common import zoo_store

zoo_dir, mode = sys.argv[1], sys.argv[2]
LAYOUT = {"kind": "test", "leaves": [{"name": "w", "shape": [2], "offset": 0, "size": 2}]}
CONFIGS = [{"model_id": i} for i in range(5)]

def train_shard(shard):
    if mode == "gated":  # hold the lock until the test removes the gate file
        open(os.path.join(zoo_dir, "started"), "w").close()
        while os.path.exists(os.path.join(zoo_dir, "gate")):
            time.sleep(0.02)
    weights = np.asarray([[c["model_id"], c["model_id"] ** 2] for c in shard], np.float32)
    return weights, [{**c, "epoch": 0, "test_accuracy": 0.1 * c["model_id"]} for c in shard]

if mode == "killed":  # SIGKILL half-way through writing the second shard
    savez, calls = np.savez, []
    def half_then_kill(f, **arrays):
        calls.append(1)
        if len(calls) == 2:
            f.write(b"PK\x03\x04" + b"\0" * 64)
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        savez(f, **arrays)
    np.savez = half_then_kill

if mode == "small_disk":  # a file-size limit that layout.json fits but no shard does
    import resource
    resource.setrlimit(resource.RLIMIT_FSIZE, (300, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

zoo_store.generate_zoo(zoo_dir, LAYOUT, CONFIGS, 2, train_shard, progress=False)
'''


def _writer(zoo_dir, mode, **popen):
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), "JAX_PLATFORMS": "cpu"}
    return subprocess.Popen([sys.executable, "-c", WRITER, str(zoo_dir), mode], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def _run(zoo_dir, mode):
    proc = _writer(zoo_dir, mode)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, err


def _wait_for(path, proc, timeout=60.0):
    stop = time.monotonic() + timeout
    while not os.path.exists(path):
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < stop, f"{path} never appeared"
        time.sleep(0.02)


def test_second_concurrent_writer_is_refused_and_first_completes(tmp_path):
    reference = tmp_path / "reference"
    assert _run(reference, "plain")[0] == 0
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    (zoo / "gate").touch()
    first = _writer(zoo, "gated")
    try:
        _wait_for(zoo / "started", first)  # the first writer holds the lock and is training
        code, err = _run(zoo, "plain")
        assert code != 0 and "ZooLockedError" in err and f"zoo_dir {zoo} is being written by another process " \
            f"(pid {first.pid})" in err, err
    finally:
        (zoo / "gate").unlink()
    _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    _assert_same_zoo(zoo, reference)


def test_sigkill_during_a_shard_write_then_resume_equals_uninterrupted(tmp_path):
    reference, zoo = tmp_path / "reference", tmp_path / "zoo"
    assert _run(reference, "plain")[0] == 0
    code, _ = _run(zoo, "killed")
    assert code == -signal.SIGKILL
    shards = sorted(os.listdir(zoo / "shards"))
    assert len(shards) == 2 and shards[0].startswith(".tmp_") and shards[1] == "shard_00000.npz", shards
    code, err = _run(zoo, "plain")  # resume
    assert code == 0, err
    _assert_same_zoo(zoo, reference)
    assert not (zoo / "shards_corrupt").exists()


def test_full_disk_names_the_file_then_resume_equals_uninterrupted(tmp_path):
    reference, zoo = tmp_path / "reference", tmp_path / "zoo"
    assert _run(reference, "plain")[0] == 0
    code, err = _run(zoo, "small_disk")
    assert code == 1 and f"could not write {zoo}/shards/shard_00000.npz: File too large" in err, err
    assert os.listdir(zoo / "shards") == []  # no partial shard, no temp file
    code, err = _run(zoo, "plain")  # the limit lifted: resume
    assert code == 0, err
    _assert_same_zoo(zoo, reference)


def _assert_same_zoo(zoo, reference):
    weights, rows, layout = zoo_store.load_zoo(str(zoo))
    ref_weights, ref_rows, ref_layout = zoo_store.load_zoo(str(reference))
    np.testing.assert_array_equal(weights, ref_weights)
    assert rows == ref_rows and layout == ref_layout and len(rows) == 5
    assert (zoo / "metadata.csv").read_text() == (reference / "metadata.csv").read_text()
    assert sorted(os.listdir(zoo / "shards")) == sorted(os.listdir(reference / "shards"))
