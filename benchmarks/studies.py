"""Resumable studies that several processes can share: a study is a set of cells, each a training run in its own
folder that ends by writing ``result.json``.

``study_inputs`` builds a data set's expensive inputs (a zoo, a SIREN set) only while one of its cells is missing;
``run_cells`` runs the missing cells. Any number of processes (on one machine, or on hosts sharing the folders
through a file system with ``flock``) may run the same study command at once: each cell is run by the one process
holding the exclusive ``flock`` on its ``.lock`` file, the others go on to the next cell and finally wait for the
cells held elsewhere. The operating system releases the lock of a process that dies (even on SIGKILL), so a cell
whose runner was killed is picked up by a waiting process, resuming from the checkpoints in its folder.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from benchmarks.harness import read_json, write_json
from common.file_lock import try_exclusive_lock

RESULT, LOCK = "result.json", ".lock"
POLL_S = 10.0  # how often a process waiting for cells held elsewhere looks at them again


def study_inputs(summary_path: str | os.PathLike, run_dirs: Iterable[str], build: Callable[[], tuple[Any, Any]]
                 ) -> tuple[Any, Any]:
    """``(summary, inputs)`` of one data set of a resumable study, building its expensive inputs only while a cell
    is missing.

    When ``summary_path`` exists and every folder of ``run_dirs`` holds its ``result.json``, returns the stored
    summary and ``None``: a later session reports finished cells without regenerating the zoo or refitting the
    INRs they were trained on. Else ``build() -> (summary, inputs)``; the summary (small JSON, kept in git beside
    the cells' results) is stored at ``summary_path``.
    """
    summary = read_json(summary_path)
    if summary is not None and all(os.path.exists(os.path.join(d, RESULT)) for d in run_dirs):
        return summary, None
    summary, inputs = build()
    write_json(summary_path, summary)
    return summary, inputs


@contextlib.contextmanager
def cell_lock(run_dir: str) -> Iterator[bool]:
    """Try to take the exclusive ``flock`` on ``run_dir/.lock`` for the block (creating the folder); yields
    whether this process holds it. Never waits."""
    os.makedirs(run_dir, exist_ok=True)
    with try_exclusive_lock(os.path.join(run_dir, LOCK)) as holder:
        yield holder is None


def run_cells(run_dirs: Mapping[Hashable, str], run: Callable[[Hashable, str], dict], *,
              poll_s: float | None = None) -> dict[Hashable, dict]:
    """Every cell's record: ``result.json`` of the finished cells, ``run(key, run_dir)`` (which writes it) for the
    others, taken in order under `cell_lock`. Cells another process holds are skipped, then waited for (every
    ``poll_s`` seconds, default `POLL_S`) until their result appears or their lock is released (then run here).

    Returns: {key: record} in the order of ``run_dirs``.
    Raises: RuntimeError when ``run`` returns without writing its ``result.json``.
    """
    records, waiting = {}, list(run_dirs)
    while True:
        held = []
        for key in waiting:
            run_dir = run_dirs[key]
            record = read_json(os.path.join(run_dir, RESULT))
            if record is None:
                with cell_lock(run_dir) as mine:
                    if not mine:
                        held.append(key)
                        continue
                    record = read_json(os.path.join(run_dir, RESULT))  # finished just before the lock was taken
                    if record is None:
                        record = run(key, run_dir)
                        if not os.path.exists(os.path.join(run_dir, RESULT)):
                            raise RuntimeError(f"run_cells: the run of cell {key} did not write {RESULT} in "
                                               f"{run_dir}")
            records[key] = record
        if not held:
            return {key: records[key] for key in run_dirs}
        waiting = held
        time.sleep(POLL_S if poll_s is None else poll_s)


def per_dataset_entry(datasets: Sequence[str], value: Callable[[str], Any]) -> Callable[[str], tuple[str | None, Any]]:
    """argparse type of one entry of a per-dataset option: ``"V"`` (every dataset) or ``"DATASET=V"`` ->
    (dataset or None, ``value(V)``); an unknown dataset is an argparse error naming it."""
    def entry(text: str) -> tuple[str | None, Any]:
        dataset, _, v = text.rpartition("=")
        if dataset and dataset not in datasets:
            raise argparse.ArgumentTypeError(f"unknown dataset {dataset!r} in {text!r}; choose from {tuple(datasets)}")
        return dataset or None, value(v)
    return entry


def resolve_per_dataset(option: str, entries, datasets: Sequence[str], defaults: Mapping[str, Any]) -> dict:
    """``{dataset: value}`` from the entries of `per_dataset_entry` over ``defaults`` (a bare V sets every
    dataset, later entries win); raises ValueError naming `option` and the datasets left without a value."""
    values = dict(defaults)
    for dataset, v in entries or ():
        values.update({dataset: v} if dataset else dict.fromkeys(datasets, v))
    missing = [d for d in datasets if d not in values]
    if missing:
        raise ValueError(f"{option}: no value for {missing}; give DATASET=V or a bare V")
    return values
