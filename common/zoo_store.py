"""Model-zoo folders: sharded weights + one metadata row per checkpoint, resumable generation, loaders, splits.

Folder layout (every file written atomically: temp file + ``os.replace``, with the usual ``0666 & ~umask``
permissions)::

    DIR/layout.json             kind, the flat layout of one model's parameters (leaf name, shape, offset),
                                and the generation settings (a resumed run must use the same ones)
    DIR/shards/shard_00003.npz  ``weights`` float32 [R, D] (R = checkpoints x models of the shard, one flat
                                parameter vector per row) and ``rows`` (the rows' metadata as JSON);
                                a shard file exists only once its models are completely trained
    DIR/metadata.csv            all rows of all completed shards, in shard order: model_id, epoch,
                                hyperparameters, metrics (rebuilt after every shard)

Generation (`generate_zoo`) trains the missing shards in order; killed at any moment, a rerun trains exactly
the shards whose file is absent, so no model is lost or duplicated. One writer at a time: a generation holds
an exclusive ``fcntl.flock`` on ``DIR/.lock`` (released by the OS when the process ends, even on SIGKILL), and a
second writer on the same folder stops with `ZooLockedError`; or, with ``share=True``, any number of cooperating
writers (a shared lock on ``DIR/.lock``), each training the shards no other holds (a lock per shard in
``DIR/.shard_locks/``). A complete zoo (same settings, every shard stored
and readable, its metadata.csv written) is only read, without the lock, so any number of readers can open it at
once. A shard file that cannot be read (truncated or damaged) is moved to ``DIR/shards_corrupt/`` with a warning
naming it, and trained again.

Family-specific readers live with their family (`magep.small_cnn_zoo` reads the original Small CNN Zoo
release); this module knows nothing of a model family.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import secrets
import shutil
import time
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from common.checks import count
from common.data.files import CorruptDataError
from common.file_lock import try_exclusive_lock, try_shared_lock
from common.progress import progress_bar
from common.weight_space import WeightSpace

__all__ = ["ZooLockedError", "atomic_write", "leaf_layout", "flatten_params", "unflatten_params", "checkpoint_rows", "generate_zoo",
           "export_checkpoints", "load_zoo", "split_models", "select_rows", "select_split", "select_weights", "load_weight_space_zoo",
           "describe"]

LAYOUT_FILE, METADATA_FILE, SHARD_DIR = "layout.json", "metadata.csv", "shards"
LOCK_FILE, CORRUPT_DIR, SHARD_LOCK_DIR = ".lock", "shards_corrupt", ".shard_locks"


class ZooLockedError(RuntimeError):
    """Another process is writing the same zoo folder."""


# ----------------------------------------------------------------------------------------- flat layout
def leaf_layout(template: Any) -> list[dict]:
    """``[{"name", "shape", "offset", "size"}]`` of one model's parameter pytree, in flattening order."""
    out, offset = [], 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(template)[0]:
        size = int(np.prod(leaf.shape))
        out.append({"name": jax.tree_util.keystr(path), "shape": list(leaf.shape), "offset": offset, "size": size})
        offset += size
    return out


def flatten_params(params: Any) -> np.ndarray:
    """Parameters with leaves ``[R, ...]`` -> float32 ``[R, D]`` rows in `leaf_layout` order."""
    leaves = [np.asarray(x, np.float32) for x in jax.tree.leaves(params)]
    return np.concatenate([x.reshape(x.shape[0], -1) for x in leaves], axis=1)


def unflatten_params(flat: np.ndarray, template: Any) -> Any:
    """``[R, D]`` rows -> the pytree of ``template`` (one model) with leaves ``[R, ...]``.

    Raises:
      ValueError: ``D`` differs from the template's number of parameters.
    """
    layout = leaf_layout(template)
    total = sum(leaf["size"] for leaf in layout)
    if flat.ndim != 2 or flat.shape[1] != total:
        raise ValueError(f"flat: shape {flat.shape}, expected [R, {total}] for the template's layout")
    leaves = [flat[:, e["offset"]:e["offset"] + e["size"]].reshape(flat.shape[0], *e["shape"]) for e in layout]
    return jax.tree.unflatten(jax.tree.structure(template), leaves)


def checkpoint_rows(configs: Sequence[Mapping[str, Any]], checkpoints: Iterable[Any]) -> tuple[np.ndarray, list[dict]]:
    """Rows of a trained shard: for every checkpoint (epoch order), every model (config order).

    Args:
      configs: one metadata dict per model (must hold ``model_id``).
      checkpoints: `common.population.Checkpoint`-like objects (``epoch``, ``params`` [P, ...], ``metrics``,
        ``diverged`` bool [P]).
    Returns:
      ``(weights float32 [R, D], rows)`` with ``rows[r] = {**config, "epoch": e, "diverged": bool, **metrics}``
      (a diverged model's metrics are NaN).
    """
    weights, rows = [], []
    for ckpt in checkpoints:
        weights.append(flatten_params(ckpt.params))
        for m, config in enumerate(configs):
            rows.append({**config, "epoch": int(ckpt.epoch), "diverged": bool(ckpt.diverged[m]),
                         **{k: float(v[m]) for k, v in ckpt.metrics.items()}})
    return np.concatenate(weights, axis=0), rows


# ----------------------------------------------------------------------------------- atomic writing
def atomic_write(path: str, write: Callable[[io.IOBase], None], mode: str = "wb") -> None:
    """Write ``path`` via ``write(file)`` into a temp file in the same folder, fsync, then ``os.replace``.

    The file gets the permissions of a plain ``open``: ``0666`` less the process umask.

    Raises:
      OSError: the write failed (a full disk, a file-size limit); the message names ``path``, ``path`` is
        untouched and the temp file removed.
    """
    folder = os.path.dirname(path)
    tmp = os.path.join(folder, f".tmp_{secrets.token_hex(6)}_{os.path.basename(path)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"newline": "", "encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        os.unlink(tmp)
        raise OSError(err.errno, f"could not write {path}: {err.strerror or err}") from err
    except BaseException:
        os.unlink(tmp)
        raise


def _write_csv(f, rows: Sequence[Mapping[str, Any]]) -> None:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    writer = csv.DictWriter(f, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)


def _shard_path(zoo_dir: str, index: int) -> str:
    return os.path.join(zoo_dir, SHARD_DIR, f"shard_{index:05d}.npz")


@contextlib.contextmanager
def _reading_shard(path: str):
    """The errors of a truncated or damaged shard become a `CorruptDataError` naming the file."""
    try:
        yield
    except (EOFError, OSError, zlib.error, zipfile.BadZipFile, KeyError, ValueError) as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise CorruptDataError(f"zoo shard {path} is truncated or damaged ({type(err).__name__}: {err}); "
                               "rerunning the generation moves it aside and trains it again") from err


def _read_shard(path: str) -> tuple[np.ndarray, list[dict]]:
    with _reading_shard(path), np.load(path) as z:
        return z["weights"], json.loads(str(z["rows"]))


def _read_rows(path: str) -> list[dict]:
    """A shard's metadata rows without loading its weights."""
    with _reading_shard(path), np.load(path) as z:
        return json.loads(str(z["rows"]))


@contextlib.contextmanager
def _writer_lock(zoo_dir: str, shared: bool = False):
    """Hold an exclusive ``flock`` on ``zoo_dir/.lock`` (holding the writer's pid) for the block, or a shared one
    (``shared``: cooperating writers, `generate_zoo` with ``share=True``).

    Raises:
      ZooLockedError: another process holds it exclusively, or (exclusive) cooperating writers hold it."""
    with (try_shared_lock if shared else try_exclusive_lock)(os.path.join(zoo_dir, LOCK_FILE)) as holder:
        if holder is not None:
            raise ZooLockedError(f"zoo_dir {zoo_dir} is being written by another process (pid {holder}); "
                                 "wait for it to finish, or write another folder")
        yield


def _set_aside(zoo_dir: str, path: str, err: Exception) -> None:
    """Move an unreadable shard to ``zoo_dir/shards_corrupt/`` (never overwriting) with a warning naming it."""
    target = os.path.join(zoo_dir, CORRUPT_DIR, os.path.basename(path))
    n = 0
    while os.path.exists(target + (f".{n}" if n else "")):
        n += 1
    target += f".{n}" if n else ""
    os.makedirs(os.path.dirname(target), exist_ok=True)
    shutil.move(path, target)
    warnings.warn(f"{err} Moved to {target}; its models are trained again.", stacklevel=3)


def _stored_rows(zoo_dir: str) -> dict[str, list[dict]]:
    """``{shard path: rows}`` of the readable shards; unreadable ones are set aside (`_set_aside`)."""
    stored = {}
    for path in _shard_files(zoo_dir):
        try:
            stored[path] = _read_rows(path)
        except CorruptDataError as err:
            _set_aside(zoo_dir, path, err)
    return stored


def generate_zoo(zoo_dir: str, layout: Mapping[str, Any], configs: Sequence[Mapping[str, Any]], shard_size: int,
                 train_shard: Callable[[list[dict]], tuple[np.ndarray, list[dict]]],
                 progress: bool = True, share: bool = False, poll_s: float = 10.0) -> list[dict]:
    """Train and store a zoo shard by shard, skipping the shards already stored (resume).

    Args:
      zoo_dir: the zoo folder (created if absent).
      layout: JSON-able dict for ``layout.json`` (kind, ``leaves`` from `leaf_layout`, generation settings);
        if the folder already has a different one, nothing is trained.
      configs: one metadata dict per model, each with a unique ``model_id``; shard k holds
        ``configs[k * shard_size:(k + 1) * shard_size]``.
      shard_size: models per shard (the population trained at once).
      train_shard: ``train_shard(shard_configs) -> (weights [R, D], rows)``, e.g. via `checkpoint_rows`.
      progress: a progress bar over shards (when tqdm is installed: `common.progress.progress_bar`).
      share: cooperate with other processes generating the same zoo with ``share=True`` (on this machine or on
        others sharing the folder through a file system with ``flock``): each trains the shards nobody holds,
        one at a time under a per-shard lock, then waits for the others' (every ``poll_s`` seconds; a shard
        whose holder died is trained here). All of them return the complete zoo's rows.
    Returns:
      All metadata rows of the zoo.
    Raises:
      ValueError: ``layout.json`` exists with other settings (use a fresh folder); no configs; ``shard_size`` < 1.
      ZooLockedError: another process is generating into ``zoo_dir`` (any other writer without ``share``;
        with ``share``, a writer without it).
    Warns:
      A stored shard that cannot be read is named, moved to ``zoo_dir/shards_corrupt/`` and trained again.
    """
    count("shard_size", shard_size)
    if not configs:
        raise ValueError(f"configs: no models to generate into {zoo_dir}")
    layout = json.loads(json.dumps(dict(layout)))  # as stored: JSON types (tuples become lists)
    complete = _complete_rows(zoo_dir, layout, -(-len(configs) // shard_size))
    if complete is not None:
        return complete
    os.makedirs(os.path.join(zoo_dir, SHARD_DIR), exist_ok=True)
    with _writer_lock(zoo_dir, shared=share):
        if share:
            return _generate_shared(zoo_dir, layout, configs, shard_size, train_shard, progress, poll_s)
        return _generate_locked(zoo_dir, layout, configs, shard_size, train_shard, progress)


def _complete_rows(zoo_dir: str, layout: dict, n_shards: int) -> list[dict] | None:
    """All rows of a zoo folder that already holds ``n_shards`` readable shards (and no others) generated with
    ``layout``, read without writing anything; None when anything is missing, different or unreadable (the
    writer's path then decides what to do)."""
    try:
        with open(os.path.join(zoo_dir, LAYOUT_FILE)) as f:
            if json.load(f) != layout:
                return None
        paths = _shard_files(zoo_dir)
        if paths != [_shard_path(zoo_dir, k) for k in range(n_shards)] or \
                not os.path.exists(os.path.join(zoo_dir, METADATA_FILE)):
            return None
        return [row for path in paths for row in _read_rows(path)]
    except (OSError, ValueError, CorruptDataError):
        return None


def _generate_locked(zoo_dir, layout, configs, shard_size, train_shard, progress) -> list[dict]:
    """`generate_zoo` once the writer lock is held (``layout`` already in its JSON form)."""
    _check_layout(zoo_dir, layout)
    for folder in (zoo_dir, os.path.join(zoo_dir, SHARD_DIR)):  # temp files of a killed run
        _remove_temp_files(folder)
    stored = _stored_rows(zoo_dir)  # metadata only, not the weights; unreadable shards set aside
    n_shards = -(-len(configs) // shard_size)
    todo = [k for k in range(n_shards) if not os.path.exists(_shard_path(zoo_dir, k))]
    for k in progress_bar(todo, desc="shards", enabled=progress):
        stored[_shard_path(zoo_dir, k)] = _train_and_store(zoo_dir, configs, shard_size, k, train_shard)
        all_rows = _write_metadata(zoo_dir, stored)
    if not todo:  # nothing left to train: still (re)write metadata.csv from the shards
        all_rows = _write_metadata(zoo_dir, stored)
    return all_rows


def _generate_shared(zoo_dir, layout, configs, shard_size, train_shard, progress, poll_s) -> list[dict]:
    """`generate_zoo` with ``share=True``, once the shared lock is held: each missing shard is trained under its own
    lock (``.shard_locks/shard_<k>.lock``), shards another process holds are skipped, then waited for (taken over if
    their holder dies); metadata.csv is rewritten from every stored shard after each shard and at the end."""
    _check_layout(zoo_dir, layout)
    os.makedirs(os.path.join(zoo_dir, SHARD_LOCK_DIR), exist_ok=True)
    _stored_rows(zoo_dir)  # unreadable shards set aside (trained again below)
    waiting = [k for k in range(-(-len(configs) // shard_size)) if not os.path.exists(_shard_path(zoo_dir, k))]
    with progress_bar(total=len(waiting), desc="shards", enabled=progress) as bar:
        while waiting:
            held = []
            for k in waiting:
                path = _shard_path(zoo_dir, k)
                with try_exclusive_lock(os.path.join(zoo_dir, SHARD_LOCK_DIR, f"shard_{k:05d}.lock")) as holder:
                    if holder is not None:
                        held.append(k)
                        continue
                    if not os.path.exists(path):  # not finished by another process in the meantime
                        _remove_temp_files(os.path.dirname(path), os.path.basename(path))  # of a killed holder
                        _train_and_store(zoo_dir, configs, shard_size, k, train_shard)
                        _write_metadata(zoo_dir, _stored_rows(zoo_dir))
                bar.update(1)
            if held:
                time.sleep(poll_s)
            waiting = held
    return _write_metadata(zoo_dir, _stored_rows(zoo_dir))


def _check_layout(zoo_dir: str, layout: dict) -> None:
    """Writes ``layout.json`` in a new folder; ValueError when the folder's differs from ``layout``."""
    layout_path = os.path.join(zoo_dir, LAYOUT_FILE)
    if os.path.exists(layout_path):
        with open(layout_path) as f:
            stored = json.load(f)
        if stored != layout:
            changed = sorted(k for k in set(stored) | set(layout) if stored.get(k) != layout.get(k))
            raise ValueError(f"zoo_dir {zoo_dir} holds a zoo generated with other settings ({changed}); "
                             "use a new folder or the same settings to resume")
    else:
        atomic_write(layout_path, lambda f: json.dump(layout, f, indent=1), "w")


def _remove_temp_files(folder: str, target: str = "") -> None:
    """Removes the `atomic_write` temp files in ``folder`` (only those of the file ``target`` when given)."""
    for name in os.listdir(folder):
        if name.startswith(".tmp_") and name.endswith(target):
            os.unlink(os.path.join(folder, name))


def _train_and_store(zoo_dir, configs, shard_size, k, train_shard) -> list[dict]:
    """Trains shard ``k`` and writes its file; returns its metadata rows."""
    weights, rows = train_shard([dict(c) for c in configs[k * shard_size:(k + 1) * shard_size]])
    if len(rows) != weights.shape[0]:
        raise ValueError(f"train_shard returned {weights.shape[0]} weight rows but {len(rows)} metadata rows")
    payload = {"weights": weights.astype(np.float32), "rows": np.array(json.dumps(rows))}
    atomic_write(_shard_path(zoo_dir, k), lambda f: np.savez(f, **payload))
    return json.loads(str(payload["rows"]))


def _shard_files(zoo_dir: str) -> list[str]:
    folder = os.path.join(zoo_dir, SHARD_DIR)
    return sorted(os.path.join(folder, n) for n in os.listdir(folder) if n.startswith("shard_") and n.endswith(".npz"))


def _write_metadata(zoo_dir: str, stored: Mapping[str, list[dict]]) -> list[dict]:
    """Writes metadata.csv from ``{shard path: rows}`` in shard order; returns those rows."""
    rows = [row for path in sorted(stored) for row in stored[path]]
    atomic_write(os.path.join(zoo_dir, METADATA_FILE), lambda f: _write_csv(f, rows), "w")
    return rows


def export_checkpoints(zoo_dir: str, out_dir: str, epochs: Sequence[int]) -> list[dict]:
    """Copy the checkpoints at ``epochs`` of a finished zoo into a new zoo folder (same layout plus
    ``"exported_epochs"``, one shard per source shard, its metadata.csv): the part of a zoo a study reads, small
    enough to keep beside the study's results. Loaders read it like the source (same model ids, so the same splits).

    Returns:
      the exported rows. Raises ValueError: ``out_dir`` exists, or no stored row is at ``epochs``.
    """
    if os.path.exists(out_dir):
        raise ValueError(f"out_dir {out_dir} exists; export_checkpoints writes a new folder")
    with open(os.path.join(zoo_dir, LAYOUT_FILE)) as f:
        layout = {**json.load(f), "exported_epochs": sorted(int(e) for e in epochs)}
    wanted, stored = set(layout["exported_epochs"]), {}
    tmp_dir = f"{out_dir}.tmp_{secrets.token_hex(4)}"  # renamed into place once complete
    os.makedirs(os.path.join(tmp_dir, SHARD_DIR))
    for index, path in enumerate(_shard_files(zoo_dir)):
        weights, rows = _read_shard(path)
        keep = [i for i, row in enumerate(rows) if int(row["epoch"]) in wanted]
        payload = {"weights": weights[keep], "rows": np.array(json.dumps([rows[i] for i in keep]))}
        target = _shard_path(tmp_dir, index)
        atomic_write(target, lambda f: np.savez_compressed(f, **payload))
        stored[target] = [rows[i] for i in keep]
    if not any(stored.values()):
        shutil.rmtree(tmp_dir)
        raise ValueError(f"zoo_dir {zoo_dir} holds no checkpoint at epochs {sorted(wanted)}")
    atomic_write(os.path.join(tmp_dir, LAYOUT_FILE), lambda f: json.dump(layout, f, indent=1), "w")
    rows = _write_metadata(tmp_dir, stored)
    os.replace(tmp_dir, out_dir)
    return rows


# --------------------------------------------------------------------------------------------- loading
def load_zoo(zoo_dir: str) -> tuple[np.ndarray, list[dict], dict]:
    """All stored rows of a library zoo.

    Returns:
      ``(weights float32 [R, D], rows, layout)``: rows in shard order, ``layout`` the parsed ``layout.json``.
    """
    with open(os.path.join(zoo_dir, LAYOUT_FILE)) as f:
        layout = json.load(f)
    parts = [_read_shard(path) for path in _shard_files(zoo_dir)]
    dim = sum(leaf["size"] for leaf in layout["leaves"])
    weights = np.concatenate([w for w, _ in parts]) if parts else np.zeros((0, dim), np.float32)
    return weights, [row for _, rows in parts for row in rows], layout


def split_models(model_ids: Iterable[Any], fractions: Sequence[float] = (0.7, 0.15, 0.15),
                 seed: int = 0) -> dict[str, set]:
    """Split models (not checkpoints) into ``train``/``val``/``test`` by a seeded shuffle of the unique ids.

    Returns:
      ``{"train": ids, "val": ids, "test": ids}``, disjoint, covering every id.
    """
    if len(fractions) != 3 or min(fractions) < 0 or not np.isclose(sum(fractions), 1.0):
        raise ValueError(f"fractions: need three non-negative numbers summing to 1, got {fractions}")
    ids = sorted(set(model_ids), key=str)
    order = np.random.default_rng(seed).permutation(len(ids))
    cuts = np.round(np.cumsum(fractions)[:2] * len(ids)).astype(int)
    parts = np.split(order, cuts)
    return {name: {ids[i] for i in part} for name, part in zip(("train", "val", "test"), parts)}


def select_rows(rows: Sequence[Mapping[str, Any]], *, model_ids: set | None = None,
                epochs: Iterable[int] | None = None, where: Mapping[str, Any] | None = None,
                min_accuracy: float | None = None, accuracy_key: str = "test_accuracy") -> np.ndarray:
    """Indices of the rows passing every filter.

    Args:
      model_ids: keep rows of these models (e.g. one part of `split_models`).
      epochs: keep these checkpoint epochs.
      where: ``{column: value}`` equality filters, e.g. ``{"activation": "relu"}``.
      min_accuracy: keep rows with ``row[accuracy_key] >= min_accuracy`` (NaN fails).
    Returns:
      int64 [R'] row indices, ascending.
    """
    epochs = None if epochs is None else {int(e) for e in epochs}
    keep = []
    for i, row in enumerate(rows):
        if model_ids is not None and row["model_id"] not in model_ids:
            continue
        if epochs is not None and int(row["epoch"]) not in epochs:
            continue
        if where and any(row.get(k) != v for k, v in where.items()):
            continue
        if min_accuracy is not None and not float(row[accuracy_key]) >= min_accuracy:
            continue
        keep.append(i)
    return np.asarray(keep, np.int64)


def select_split(rows: Sequence[Mapping[str, Any]], split: str | None = None, *,
                 fractions: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 0, **filters) -> np.ndarray:
    """Indices of the rows of one model split (`split_models`; None: all models) that pass `select_rows`'s
    ``filters``. Splitting comes first, so a model's checkpoints never fall on two sides."""
    ids = None if split is None else split_models((r["model_id"] for r in rows), fractions, seed)[split]
    return select_rows(rows, model_ids=ids, **filters)


def select_weights(weights: np.ndarray, rows: Sequence[Mapping[str, Any]], template: Any, split: str | None = None, *,
                   fractions: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 0, epochs: Iterable[int] | None = None,
                   where: Mapping[str, Any] | None = None, min_accuracy: float | None = None,
                   target: str = "test_accuracy") -> tuple[Any, np.ndarray, list[dict]]:
    """The rows of one split of a zoo, as parameters of ``template``'s structure, with their targets.

    Args:
      weights: float32 [R, D] flat parameters (`flatten_params` order), ``rows``: their R metadata dicts.
      template: one model's parameter pytree (arrays or `jax.ShapeDtypeStruct`) with D parameters in all.
      split: ``"train"``, ``"val"``, ``"test"`` (models split by `split_models` with ``fractions``, ``seed``;
        filters apply after splitting, so a model's checkpoints never fall on two sides) or None (all).
      epochs, where, min_accuracy: row filters, see `select_rows`.
      target: the metadata column returned as targets (e.g. ``test_accuracy``, ``label``, ``psnr``).
    Returns:
      ``(params, targets, rows)``: params with leaves ``[R', ...]``, targets [R'], the R' kept rows.
    """
    keep = select_split(rows, split, fractions=fractions, seed=seed, epochs=epochs, where=where,
                        min_accuracy=min_accuracy)
    kept = [rows[i] for i in keep]
    return unflatten_params(weights[keep], template), np.asarray([r[target] for r in kept]), kept


def _weight_space_template(leaves: Sequence[Mapping[str, Any]]) -> WeightSpace:
    shapes = [jax.ShapeDtypeStruct(tuple(leaf["shape"]), np.float32) for leaf in leaves]
    half = len(shapes) // 2
    return WeightSpace(tuple(shapes[:half]), tuple(shapes[half:]))


def load_weight_space_zoo(zoo_dir: str, split: str | None = None, **options) -> tuple[WeightSpace, np.ndarray, list[dict]]:
    """Batched `WeightSpace` and targets of a CNN/SIREN zoo folder written by `generate_zoo`.

    Args:
      zoo_dir: a zoo folder with ``layout.json`` of kind ``weight_space`` (the original Small CNN Zoo release
        is read by `magep.small_cnn_zoo.load_small_cnn_zoo`).
      split, options: ``fractions``, ``seed``, ``epochs``, ``where``, ``min_accuracy``, ``target``: see
        `select_weights`.
    Returns:
      ``(ws, targets, rows)``: ws leaves ``[R, ...]`` (PyTorch orientation), targets float32 or int [R], rows.
    Raises:
      ValueError: the folder holds no zoo, or a zoo of another kind.
    """
    if not os.path.exists(os.path.join(zoo_dir, LAYOUT_FILE)):
        raise ValueError(f"zoo_dir {zoo_dir} has no {LAYOUT_FILE}: not a zoo written by generate_zoo (an original "
                         "Small CNN Zoo release is read by magep.small_cnn_zoo.load_small_cnn_zoo)")
    weights, rows, layout = load_zoo(zoo_dir)
    if layout["kind"] != "weight_space":
        raise ValueError(f"zoo_dir {zoo_dir} holds a {layout['kind']!r} zoo, not a weight_space zoo")
    return select_weights(weights, rows, _weight_space_template(layout["leaves"]), split, **options)


# --------------------------------------------------------------------------------------------- summary
def describe(rows: Sequence[Mapping[str, Any]], metric: str, by: Sequence[str] = ()) -> str:
    """A text table of ``metric`` (count, min, quartiles, max) per group of the ``by`` columns."""
    groups: dict[tuple, list[float]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in by), []).append(float(row[metric]))
    head = f"{' / '.join(by) or 'all':<28} {'n':>6} {'min':>8} {'q25':>8} {'median':>8} {'q75':>8} {'max':>8}"
    lines = [f"{metric}", head]
    for key in sorted(groups, key=str):
        v = np.asarray(groups[key])
        q = np.nanquantile(v, [0, 0.25, 0.5, 0.75, 1]) if np.isfinite(v).any() else [np.nan] * 5
        name = " / ".join(map(str, key)) or "all"
        lines.append(f"{name:<28} {len(v):>6} " + " ".join(f"{x:>8.4g}" for x in q))
    return "\n".join(lines)
