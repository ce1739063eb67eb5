"""common.data.fetch: downloads served from a temporary folder over http.server on localhost (no internet):
good files, a corrupted file, interrupted transfers (resumed with Range requests), a missing URL; and the
CIFAR-10 python release loader and the CNN zoo's use of it."""
import dataclasses
import hashlib
import http.server
import io
import pickle
import shutil
import tarfile
import threading

import numpy as np
import pytest

from common import data
from common.data import fetch as fetching
from common.data.__main__ import main
from common.data.sources import SOURCES, Download
from magep import zoo_recipes


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves `root`; honours "Range: bytes=N-"; the first response for a path in `cut` sends half its body."""

    root, cut, requests = None, set(), []

    def do_GET(self):
        path = self.root / self.path.lstrip("/")
        self.requests.append((self.path, self.headers.get("Range")))
        if not path.is_file():
            self.send_error(404)
            return
        body, start = path.read_bytes(), 0
        if self.headers.get("Range"):
            start = int(self.headers["Range"].removeprefix("bytes=").split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        body = body[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.path in self.cut:
            self.cut.discard(self.path)
            body = body[: len(body) // 2]
            self.close_connection = True
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    """(served folder, base URL, handler class)."""
    served = tmp_path / "served"
    served.mkdir()
    handler = type("Handler", (RangeHandler,), {"root": served, "cut": set(), "requests": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{httpd.server_address[1]}/", handler
    httpd.shutdown()
    httpd.server_close()


def toy_sources(served, base, names=("a.bin", "b.bin"), size=50_000):
    rng = np.random.default_rng(0)
    downloads = []
    for name in names:
        payload = rng.integers(0, 256, size, np.uint8).tobytes()
        (served / name).write_bytes(payload)
        downloads.append(Download(f"toy/{name}", base + name, hashlib.md5(payload).hexdigest(),
                                  hashlib.sha256(payload).hexdigest()))
    return {"toy": tuple(downloads)}


def test_good_files_are_verified_recorded_and_not_fetched_twice(server, tmp_path):
    served, base, handler = server
    sources, root = toy_sources(served, base), tmp_path / "data"
    paths = fetching.fetch(["toy"], root, sources=sources, log=lambda _: None)
    assert paths == [root / "toy/a.bin", root / "toy/b.bin"]
    for path in paths:
        assert path.read_bytes() == (served / path.name).read_bytes()
    assert sorted(p.name for p in (root / "toy").iterdir()) == ["a.bin", "b.bin"]  # no .part left
    manifest = (root / "MANIFEST.tsv").read_text().splitlines()
    assert manifest[0] == "path\tsize_bytes\tmd5\tprovenance\tverified"
    assert manifest[1].split("\t")[:4] == ["toy/a.bin", "50000", sources["toy"][0].md5, base + "a.bin"]
    assert data.data_file("toy/b.bin", root) == root / "toy/b.bin"  # the loaders' md5 check passes
    count = len(handler.requests)
    fetching.fetch(["toy"], root, sources=sources, log=lambda _: None)
    assert len(handler.requests) == count


def test_corrupted_file_raises_naming_it_and_leaves_nothing(server, tmp_path):
    served, base, _ = server
    sources = toy_sources(served, base, names=("a.bin",))
    (served / "a.bin").write_bytes(b"not the file the manifest describes")
    with pytest.raises(data.ChecksumMismatchError, match=r"toy/a\.bin.*md5 .*expected"):
        fetching.fetch(["toy"], tmp_path, sources=sources, log=lambda _: None)
    assert list((tmp_path / "toy").iterdir()) == []


def test_interrupted_transfer_is_resumed_with_a_range_request(server, tmp_path):
    served, base, handler = server
    sources = toy_sources(served, base, names=("a.bin",))
    handler.cut.add("/a.bin")
    fetching.fetch(["toy"], tmp_path, sources=sources, log=lambda _: None)
    assert (tmp_path / "toy/a.bin").read_bytes() == (served / "a.bin").read_bytes()
    assert handler.requests == [("/a.bin", None), ("/a.bin", "bytes=25000-")]


def test_a_partial_file_from_an_earlier_run_is_resumed(server, tmp_path):
    served, base, handler = server
    (source,) = toy_sources(served, base, names=("a.bin",))["toy"]
    dest = tmp_path / "a.bin"
    (tmp_path / "a.bin.part").write_bytes((served / "a.bin").read_bytes()[:1234])
    digests = fetching.download(source, dest)
    assert dest.read_bytes() == (served / "a.bin").read_bytes() and digests["md5"] == source.md5
    assert handler.requests == [("/a.bin", "bytes=1234-")]
    assert not (tmp_path / "a.bin.part").exists()


def test_a_transfer_that_keeps_breaking_keeps_its_part_for_a_later_run(server, tmp_path):
    served, base, handler = server
    (source,) = toy_sources(served, base, names=("a.bin",))["toy"]
    handler.cut.add("/a.bin")
    with pytest.raises(fetching.DownloadError, match="broke 1 times.*run again to resume"):
        fetching.download(source, tmp_path / "a.bin", retries=0)
    assert not (tmp_path / "a.bin").exists() and (tmp_path / "a.bin.part").stat().st_size == 25_000
    fetching.download(source, tmp_path / "a.bin", retries=0)
    assert (tmp_path / "a.bin").read_bytes() == (served / "a.bin").read_bytes()


def test_missing_url_is_a_clear_error(server, tmp_path):
    _, base, _ = server
    source = Download("toy/gone.bin", base + "gone.bin", md5="0" * 32)
    with pytest.raises(fetching.DownloadError, match=r"gone\.bin.*HTTP 404"):
        fetching.download(source, tmp_path / "gone.bin")
    assert not (tmp_path / "gone.bin").exists() and not (tmp_path / "gone.bin.part").exists()


def test_unknown_names_and_no_folder_are_refused(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match="unknown names \\['svhn'\\]"):
        fetching.fetch(["svhn"], tmp_path)
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    with pytest.raises(ValueError, match="--dir"):
        fetching.fetch(["mnist"])
    with pytest.raises(SystemExit):
        main(["fetch", "svhn", "--dir", str(tmp_path)])


def test_command_line_reports_a_missing_url(server, tmp_path, monkeypatch, capsys):
    _, base, _ = server
    monkeypatch.setattr(fetching, "SOURCES", {"mnist": (Download("mnist/x.gz", base + "x.gz", md5="0" * 32),)})
    with pytest.raises(SystemExit) as exit_info:
        main(["fetch", "mnist", "--dir", str(tmp_path)])
    assert exit_info.value.code == 1 and "HTTP 404" in capsys.readouterr().err


@pytest.mark.parametrize("name, files, load", [
    ("mnist", ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"), lambda d: data.load_mnist("test", d)),
    ("fashion_mnist", ("t10k-labels-idx1-ubyte.gz",), None),
    ("ag_news", ("test.csv", "classes.txt", "readme.txt", "train_sample_8000.csv"), lambda d: data.load_ag_news("train", d)),
])
def test_package_manifest_matches_the_shipped_copies_and_the_loaders_paths(server, tmp_path, name, files, load):
    """The package's checksums and paths, with the URLs pointed at a local copy of the project's data files."""
    served, base, _ = server
    shared = data.data_root()
    chosen = []
    for source in SOURCES[name]:
        if source.path.rsplit("/", 1)[1] in files:
            shutil.copy(shared / source.path, served / source.path.replace("/", "_"))
            chosen.append(dataclasses.replace(source, url=base + source.path.replace("/", "_")))
    assert len(chosen) == len(files)
    root = tmp_path / "data"
    fetching.fetch([name], root, sources={name: tuple(chosen)}, log=lambda _: None)
    if load is not None:
        expected = load(shared)
        got = load(root)
        np.testing.assert_array_equal(got[0], expected[0])


def write_cifar_release(path, per_batch=6, drop=None, evil=False):
    """A small tar.gz with the official layout: cifar-10-batches-py/data_batch_1..5 and test_batch, each a
    protocol-2 pickle of {"data": uint8 [n, 3072] (R, G, B planes), "labels": [n ints]}."""
    rng = np.random.default_rng(0)
    truth = {"train": ([], []), "test": ([], [])}
    with tarfile.open(path, "w:gz") as archive:
        for split, name in [("train", f"data_batch_{i}") for i in range(1, 6)] + [("test", "test_batch")]:
            if name == drop:
                continue
            images = rng.integers(0, 256, (per_batch, 32, 32, 3), np.uint8)
            labels = rng.integers(0, 10, per_batch).tolist()
            truth[split][0].append(images)
            truth[split][1].extend(labels)
            batch = {"data": images.transpose(0, 3, 1, 2).reshape(per_batch, 3072), "labels": labels,
                     "batch_label": name}
            if evil:
                batch["payload"] = shutil.rmtree  # a pickle that would import (and could call) a function
            raw = pickle.dumps(batch, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(raw)
            archive.addfile(info, io.BytesIO(raw))
    return {split: (np.concatenate(images), np.array(labels)) for split, (images, labels) in truth.items()}


def test_cifar10_python_release_loader(tmp_path):
    (tmp_path / "cifar10").mkdir()
    truth = write_cifar_release(tmp_path / "cifar10/cifar-10-python.tar.gz")
    assert data.cifar10_python_available(tmp_path)
    for split in ("train", "test"):
        images, labels = data.load_cifar10(split, tmp_path)
        np.testing.assert_array_equal(images, truth[split][0])
        np.testing.assert_array_equal(labels, truth[split][1])
        assert images.dtype == np.uint8 and labels.dtype == np.int64
    assert len(labels) == 6 and len(data.load_cifar10("train", tmp_path)[1]) == 30
    gray, _ = data.load_cifar10("test", tmp_path, grayscale=True)
    np.testing.assert_array_equal(gray, data.cifar_grayscale(truth["test"][0]))
    with pytest.raises(ValueError, match="split"):
        data.load_cifar10("valid", tmp_path)


@pytest.mark.parametrize("kwargs, match", [(dict(evil=True), "not allowed"), (dict(drop="data_batch_3"), "data_batch_3")])
def test_cifar10_release_refuses_foreign_pickles_and_missing_batches(tmp_path, kwargs, match):
    (tmp_path / "cifar10").mkdir()
    write_cifar_release(tmp_path / "cifar10/cifar-10-python.tar.gz", **kwargs)
    with pytest.raises(data.CorruptDataError, match=match):
        data.load_cifar10("train", tmp_path)


def test_cnn_zoo_uses_the_official_train_split_when_present(tmp_path):
    assert not data.cifar10_python_available(tmp_path)
    (tmp_path / "cifar10").mkdir()
    truth = write_cifar_release(tmp_path / "cifar10/cifar-10-python.tar.gz")
    train, test, note = zoo_recipes.cnn_dataset("cifar10_gs", tmp_path)
    assert note == "official CIFAR-10 python release: 30 train / 6 test"
    assert train["x"].shape == (30, 32, 32, 1) and test["x"].shape == (6, 32, 32, 1)
    np.testing.assert_array_equal(train["x"][..., 0], data.cifar_grayscale(truth["train"][0]))
    np.testing.assert_array_equal(test["y"], truth["test"][1])


def test_ag_news_full_train_split_reads_train_csv_and_drops_test_overlap(tmp_path):
    (tmp_path / "ag_news").mkdir()
    (tmp_path / "ag_news/test.csv").write_text('"3","T","shared text"\n"1","T","only in test"\n')
    (tmp_path / "ag_news/train.csv").write_text('"2","A","shared  text"\n"4","B","doesn #39;t"\n"1","C","x"\n')
    labels, texts = data.load_ag_news("train_full", tmp_path)
    assert texts == ["doesn't", "x"] and labels.tolist() == [3, 0]
    assert len(data.load_ag_news("train_full", tmp_path, drop_test_overlap=False)[1]) == 3
