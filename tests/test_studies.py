"""Studies shared by several processes (benchmarks.studies): every cell runs exactly once, finished cells are read
back, cells held elsewhere are waited for, and a killed runner's cell is taken over."""
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from benchmarks import harness, studies


def grid(tmp_path, n=6):
    return {i: str(tmp_path / f"cell{i}") for i in range(n)}


def writer(ran, pause=0.0):
    """A cell runner that records who ran what and writes the cell's result."""
    def run(key, run_dir):
        ran.append((threading.current_thread().name, key))
        time.sleep(pause)
        record = {"key": key, "by": threading.current_thread().name}
        harness.write_json(os.path.join(run_dir, "result.json"), record)
        return record
    return run


def test_two_workers_run_every_cell_once(tmp_path):
    run_dirs, ran, results = grid(tmp_path), [], {}

    def worker():
        results[threading.current_thread().name] = studies.run_cells(run_dirs, writer(ran, 0.05), poll_s=0.01)

    threads = [threading.Thread(target=worker, name=f"w{i}") for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(key for _, key in ran) == list(run_dirs)  # each cell once
    assert {name for name, _ in ran} == {"w0", "w1"}  # both took cells
    assert results["w0"] == results["w1"] and list(results["w0"]) == list(run_dirs)


def test_finished_cells_are_read_back(tmp_path):
    run_dirs, ran = grid(tmp_path, 3), []
    harness.write_json(os.path.join(run_dirs[1], "result.json"), {"key": 1, "by": "earlier"})
    records = studies.run_cells(run_dirs, writer(ran))
    assert [key for _, key in ran] == [0, 2] and records[1]["by"] == "earlier"


def test_a_held_cell_is_waited_for(tmp_path):
    """A cell another runner holds is skipped, then read back when that runner writes its result."""
    run_dirs, ran = grid(tmp_path, 3), []
    with studies.cell_lock(run_dirs[0]) as mine:
        assert mine

        def finish_elsewhere():
            time.sleep(0.3)
            harness.write_json(os.path.join(run_dirs[0], "result.json"), {"key": 0, "by": "elsewhere"})

        other = threading.Thread(target=finish_elsewhere)
        other.start()
        records = studies.run_cells(run_dirs, writer(ran), poll_s=0.05)
        other.join()
    assert [key for _, key in ran] == [1, 2] and records[0]["by"] == "elsewhere"


def test_a_killed_runner_releases_its_cell(tmp_path):
    run_dirs, ran = grid(tmp_path, 2), []
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from benchmarks import studies\n"
                               f"with studies.cell_lock({run_dirs[0]!r}):\n"
                               "    print('held', flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE, text=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        assert holder.stdout.readline().strip() == "held"
        with studies.cell_lock(run_dirs[0]) as mine:
            assert not mine
        threading.Timer(0.3, os.kill, (holder.pid, signal.SIGKILL)).start()
        records = studies.run_cells(run_dirs, writer(ran), poll_s=0.05)
    finally:
        holder.kill()
        holder.wait()
    assert sorted(key for _, key in ran) == [0, 1] and records[0]["key"] == 0


def test_a_run_that_writes_no_result_is_an_error(tmp_path):
    with pytest.raises(RuntimeError, match="did not write result.json"):
        studies.run_cells(grid(tmp_path, 1), lambda key, run_dir: {"key": key})
