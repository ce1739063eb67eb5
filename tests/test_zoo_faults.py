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
share = mode.startswith("shared")  # "shared", "shared_gated": cooperating writers
LAYOUT = {"kind": "test", "leaves": [{"name": "w", "shape": [2], "offset": 0, "size": 2}]}
CONFIGS = [{"model_id": i} for i in range(5)]

def train_shard(shard):
    with open(os.path.join(zoo_dir, f"trained_by_{os.getpid()}"), "a") as f:  # which writer trained which models
        f.write("".join(f"{c['model_id']}\n" for c in shard))
    if mode.endswith("gated"):  # hold the lock until the test removes the gate file
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

zoo_store.generate_zoo(zoo_dir, LAYOUT, CONFIGS, 2, train_shard, progress=False, share=share, poll_s=0.05)
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


def _reference(tmp_path):
    """An uninterrupted zoo written by one plain writer."""
    reference = tmp_path / "reference"
    assert _run(reference, "plain")[0] == 0
    return reference


def _start_gated(zoo, mode):
    """A writer of ``mode`` on a new folder ``zoo``, returned once it trains its first shard (held there until the
    test removes ``zoo/gate``)."""
    zoo.mkdir()
    (zoo / "gate").touch()
    writer = _writer(zoo, mode)
    _wait_for(zoo / "started", writer)
    return writer


def _release(zoo, *writers):
    """Removes the gate and checks that every writer then finishes."""
    (zoo / "gate").unlink(missing_ok=True)
    for proc in writers:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err


def test_second_concurrent_writer_is_refused_and_first_completes(tmp_path):
    reference, zoo = _reference(tmp_path), tmp_path / "zoo"
    first = _start_gated(zoo, "gated")  # holds the lock and is training
    try:
        code, err = _run(zoo, "plain")
        assert code != 0 and "ZooLockedError" in err and f"zoo_dir {zoo} is being written by another process " \
            f"(pid {first.pid})" in err, err
    finally:
        _release(zoo, first)
    _assert_same_zoo(zoo, reference)


def _trained_by(zoo, proc):
    path = zoo / f"trained_by_{proc.pid}"
    return sorted(int(line) for line in path.read_text().split()) if path.exists() else []


def test_shared_writers_split_the_shards_and_wait_for_each_other(tmp_path):
    reference, zoo = _reference(tmp_path), tmp_path / "zoo"
    first = _start_gated(zoo, "shared_gated")  # holds shard 0 (models 0, 1)
    second = _writer(zoo, "shared")
    try:
        _wait_for(zoo / "shards" / "shard_00002.npz", second)  # the second trains shards 1 and 2, then waits
        assert second.poll() is None and not (zoo / "shards" / "shard_00000.npz").exists()
    finally:
        _release(zoo, first, second)
    assert _trained_by(zoo, first) == [0, 1] and _trained_by(zoo, second) == [2, 3, 4]  # nothing trained twice
    _assert_same_zoo(zoo, reference)


def test_a_shared_writer_takes_over_the_shard_of_a_killed_one(tmp_path):
    reference, zoo = _reference(tmp_path), tmp_path / "zoo"
    first = _start_gated(zoo, "shared_gated")
    first.kill()  # dies holding shard 0: its lock goes with it
    first.communicate(timeout=60)
    (zoo / "gate").unlink()
    code, err = _run(zoo, "shared")
    assert code == 0, err
    _assert_same_zoo(zoo, reference)


def test_shared_and_exclusive_writers_refuse_each_other(tmp_path):
    for holder_mode, other_mode in (("gated", "shared"), ("shared_gated", "plain")):
        zoo = tmp_path / holder_mode
        holder = _start_gated(zoo, holder_mode)
        try:
            code, err = _run(zoo, other_mode)
            assert code != 0 and "ZooLockedError" in err and "is being written by another process" in err, err
        finally:
            _release(zoo, holder)


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
