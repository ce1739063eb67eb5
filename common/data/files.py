"""Locating data files under the data root and checking them against ``MANIFEST.tsv``.

The data root is ``data_dir=`` when given, else the environment variable ``NFN_DATA_DIR``; there is no
implicit default (``make test`` exports ``NFN_DATA_DIR=../shared/data``). Every file is checked against the
md5 listed for it in ``<root>/MANIFEST.tsv`` when that manifest exists and lists the file; a digest is computed
once per (path, mtime, size) and reused by later loads in the same process.
"""
import contextlib
import functools
import hashlib
import os
import zipfile
import zlib
from pathlib import Path

DATA_DIR_ENV = "NFN_DATA_DIR"
MANIFEST_NAME = "MANIFEST.tsv"
_HOW_TO_POINT = f"set the environment variable {DATA_DIR_ENV} to the data folder or pass data_dir=..."


class DataNotFoundError(FileNotFoundError):
    """The data root is unset or missing, or a data file is missing under it."""


class ChecksumMismatchError(ValueError):
    """A data file's md5 differs from the one recorded in ``MANIFEST.tsv``."""


class CorruptDataError(ValueError):
    """A data file cannot be decoded: truncated or damaged (without a manifest entry, the md5 cannot tell)."""


@contextlib.contextmanager
def decoding(path):
    """Context for reading data file ``path``: the errors a truncated or damaged file raises while it is decoded
    (``EOFError`` from gzip, ``zlib.error``, ``zipfile.BadZipFile``, ``OSError`` such as PIL's "image file is
    truncated", ``UnicodeDecodeError``) become a ``CorruptDataError`` naming the file."""
    try:
        yield
    except (EOFError, OSError, zlib.error, zipfile.BadZipFile, UnicodeDecodeError) as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise CorruptDataError(f"Data file {path} is truncated or damaged ({type(err).__name__}: {err}); restore it "
                               f"(its md5 is listed in {MANIFEST_NAME} when the data folder has one)") from err


def data_root(data_dir=None) -> Path:
    """The data root: ``data_dir`` if given, else ``$NFN_DATA_DIR``.

    Raises:
        DataNotFoundError: neither is set, or the folder does not exist.
    """
    if data_dir is not None:
        root, source = Path(data_dir), "data_dir="
    elif os.environ.get(DATA_DIR_ENV):
        root, source = Path(os.environ[DATA_DIR_ENV]), f"${DATA_DIR_ENV}"
    else:
        raise DataNotFoundError(f"No data folder is set: {_HOW_TO_POINT}")
    if not root.is_dir():
        raise DataNotFoundError(f"Data folder {root} (from {source}) does not exist: {_HOW_TO_POINT}")
    return root


def data_file(relative_path: str, data_dir=None, verify: bool = True) -> Path:
    """Path of ``relative_path`` (e.g. ``"mnist/t10k-labels-idx1-ubyte.gz"``) under the data root.

    Args:
        relative_path: path inside the data root, with forward slashes as in ``MANIFEST.tsv``.
        data_dir: data root; overrides ``$NFN_DATA_DIR``.
        verify: check the file's md5 against ``MANIFEST.tsv`` (skipped if the manifest or its entry is absent).

    Raises:
        DataNotFoundError: no data root, or the file is missing.
        ChecksumMismatchError: the md5 differs from the manifest's.
    """
    root = data_root(data_dir)
    path = root / relative_path
    if not path.is_file():
        raise DataNotFoundError(f"Data file {relative_path} not found under {root}: {_HOW_TO_POINT}")
    if verify:
        _check_md5(root, relative_path, path)
    return path


def _check_md5(root: Path, relative_path: str, path: Path) -> None:
    manifest = root / MANIFEST_NAME
    if not manifest.is_file():
        return
    expected = _manifest_md5s(str(manifest.resolve()), *_stamp(manifest)).get(relative_path)
    if expected is None:
        return
    actual = _md5(str(path.resolve()), *_stamp(path))
    if actual != expected:
        raise ChecksumMismatchError(
            f"Data file {path} is corrupt or a different version: md5 {actual}, {manifest} says {expected}. "
            "Restore the file, or pass verify=False to load it anyway."
        )


def _stamp(path: Path) -> tuple[int, int]:
    """(mtime in ns, size): part of the cache keys, so an edited file is read again."""
    stat = path.stat()
    return stat.st_mtime_ns, stat.st_size


@functools.lru_cache(maxsize=None)
def _manifest_md5s(manifest_path: str, mtime_ns: int, size: int) -> dict[str, str]:
    """{relative path: md5} from a ``MANIFEST.tsv`` (header ``path size_bytes md5 ...``)."""
    with open(manifest_path, encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        path_column, md5_column = header.index("path"), header.index("md5")
        rows = [line.rstrip("\n").split("\t") for line in f if line.strip()]
    return {row[path_column]: row[md5_column] for row in rows}


@functools.lru_cache(maxsize=None)
def _md5(path: str, mtime_ns: int, size: int) -> str:
    return hash_file(path, ("md5",))["md5"]


def hash_file(path, algorithms: tuple[str, ...]) -> dict[str, str]:
    """{algorithm: hex digest} of a file for hashlib names such as "md5", "sha256", read once in 1 MiB blocks."""
    digests = {name: hashlib.new(name) for name in algorithms}
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            for digest in digests.values():
                digest.update(block)
    return {name: digest.hexdigest() for name, digest in digests.items()}
