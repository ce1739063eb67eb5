"""Downloading the data sets with checksums (docs/common.md §8): ``python -m common.data fetch NAME ...``.

Each file is written to ``<final name>.part``, resumed with an HTTP Range request when a transfer breaks (or
a ``.part`` is left from an earlier run), verified against the md5 / sha256 of `common.data.sources`, and
only then renamed to its final name: a file under its final name is always complete and verified. Fetched
files are recorded in the data root's ``MANIFEST.tsv`` (created if absent), which the loaders check.
Standard library only (urllib).
"""
from __future__ import annotations

import http.client
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from .files import DATA_DIR_ENV, MANIFEST_NAME, ChecksumMismatchError, hash_file
from .sources import SOURCES, Download

PART_SUFFIX = ".part"
_MANIFEST_HEADER = ("path", "size_bytes", "md5", "provenance", "verified")
_RETRYABLE = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError)


class DownloadError(OSError):
    """A file could not be downloaded: a missing URL, a refused request, or a transfer that kept breaking."""


class _ShortTransfer(ConnectionError):
    """The server closed the connection before sending the announced Content-Length."""


def file_digests(path: Path) -> dict[str, str]:
    """{"md5": hex, "sha256": hex} of a file, read once."""
    return hash_file(path, ("md5", "sha256"))


def _mismatches(digests: Mapping[str, str], source: Download) -> list[str]:
    return [f"{name} {digests[name]} (expected {want})"
            for name, want in (("md5", source.md5), ("sha256", source.sha256)) if want and digests[name] != want.lower()]


def _transfer(url: str, part: Path, timeout: float, chunk_size: int) -> None:
    """Append the rest of ``url`` to ``part`` (a Range request from its current size; a server that answers
    200 instead of 206 sends the whole file, which then replaces the part)."""
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        resumed = offset > 0 and response.status == 206
        announced = response.headers.get("Content-Length")
        received = 0
        with open(part, "ab" if resumed else "wb") as f:
            while chunk := response.read(chunk_size):
                f.write(chunk)
                received += len(chunk)
    if announced is not None and received < int(announced):
        raise _ShortTransfer(f"received {received} of {announced} bytes")


def download(source: Download, dest: Path, *, retries: int = 3, timeout: float = 60.0,
             chunk_size: int = 1 << 20) -> dict[str, str]:
    """Download ``source.url`` to ``dest`` through ``dest.part`` (resumed, verified, then renamed).

    Args:
      retries: further attempts after a broken transfer, each resuming where the last one stopped.
    Returns:
      the file's {"md5", "sha256"}.
    Raises:
      DownloadError: HTTP error (e.g. 404), or still broken after ``retries`` retries (the ``.part`` stays,
        so a later call resumes).
      ChecksumMismatchError: the complete file's checksum differs (the ``.part`` is deleted).
    """
    part = dest.with_name(dest.name + PART_SUFFIX)
    for attempt in range(retries + 1):
        try:
            _transfer(source.url, part, timeout, chunk_size)
            break
        except urllib.error.HTTPError as err:
            if err.code == 416 and part.exists():  # the part already holds the whole file
                break
            if err.code < 500 or attempt == retries:
                raise DownloadError(f"Cannot download {source.url} (for {source.path}): HTTP {err.code} {err.reason}") from err
        except _RETRYABLE as err:
            if attempt == retries:
                raise DownloadError(f"Download of {source.url} (for {source.path}) broke {retries + 1} times, last: "
                                    f"{type(err).__name__}: {err}; {part} keeps what arrived: run again to resume") from err
    digests = file_digests(part)
    wrong = _mismatches(digests, source)
    if wrong:
        part.unlink()
        raise ChecksumMismatchError(f"Downloaded file {source.path} from {source.url} is corrupt or a different "
                                    f"version: {'; '.join(wrong)}. It was deleted; nothing was written to {dest}")
    os.replace(part, dest)
    return digests


def _record_in_manifest(root: Path, rows: Mapping[str, tuple[int, str, str]]) -> None:
    """Add or replace the rows {path: (size, md5, url)} of ``<root>/MANIFEST.tsv``, written atomically."""
    manifest = root / MANIFEST_NAME
    header, entries = list(_MANIFEST_HEADER), {}
    if manifest.is_file():
        lines = manifest.read_text(encoding="utf-8").splitlines()
        header = lines[0].split("\t")
        entries = {line.split("\t")[header.index("path")]: line for line in lines[1:] if line.strip()}
    for path, (size, md5, url) in rows.items():
        values = {"path": path, "size_bytes": str(size), "md5": md5, "provenance": url,
                  "verified": "fetched by common.data.fetch; checksum == common.data.sources"}
        entries[path] = "\t".join(values.get(column, "-") for column in header)
    tmp = manifest.with_name(MANIFEST_NAME + PART_SUFFIX)
    tmp.write_text("\n".join(["\t".join(header), *entries.values()]) + "\n", encoding="utf-8")
    os.replace(tmp, manifest)


def fetch(datasets: Iterable[str], data_dir=None, *, sources: Mapping[str, tuple[Download, ...]] | None = None,
          retries: int = 3, timeout: float = 60.0, log: Callable[[str], None] = print) -> list[Path]:
    """Download the named data sets into the data root, skipping files already there with the right checksum.

    Args:
      datasets: names in ``sources`` (default `common.data.sources.SOURCES`: mnist, fashion_mnist, cifar10,
        ag_news).
      data_dir: the data root (created if absent); default ``$NFN_DATA_DIR``.
    Returns:
      the paths of all the data sets' files.
    Raises:
      ValueError: an unknown data set name, or no data_dir and no ``$NFN_DATA_DIR``.
      DownloadError, ChecksumMismatchError: see `download`.
    """
    sources = SOURCES if sources is None else sources
    datasets = list(datasets)
    unknown = [name for name in datasets if name not in sources]
    if unknown or not datasets:
        raise ValueError(f"datasets: unknown names {unknown}; choose from {sorted(sources)}")
    if data_dir is None and not os.environ.get(DATA_DIR_ENV):
        raise ValueError(f"data_dir: no folder given and ${DATA_DIR_ENV} is not set; pass --dir DIR (data_dir=...)")
    root = Path(data_dir if data_dir is not None else os.environ[DATA_DIR_ENV])
    paths = []
    for source in (s for name in datasets for s in sources[name]):
        dest = root / source.path
        paths.append(dest)
        if dest.is_file() and not _mismatches(file_digests(dest), source):
            log(f"{source.path}: present, checksum ok")
            continue
        log(f"{source.path}: {'replacing a file with another checksum' if dest.exists() else 'downloading'} "
            f"from {source.url}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        digests = download(source, dest, retries=retries, timeout=timeout)
        _record_in_manifest(root, {source.path: (dest.stat().st_size, digests["md5"], source.url)})
    return paths
