"""Where each data set's files come from: the manifest `common.data.fetch` downloads and verifies
(docs/common.md §8).

Every file lands at the path its loader reads under the data root. Checksums are the canonical ones: the md5s
the data sets' maintainers and torchvision / torchtext publish, equal to those of the same files in the
project's data folder except MNIST's ``train-images-idx3-ubyte.gz`` (there rebuilt from another copy: same
pixels, different gzip bytes).
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Download:
    """One file: ``path`` under the data root (forward slashes), its ``url``, and its md5 and/or sha256."""

    path: str
    url: str
    md5: str | None = None
    sha256: str | None = None

    def __post_init__(self):
        if not (self.md5 or self.sha256):
            raise ValueError(f"Download {self.path}: give md5 or sha256")


_MNIST = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_FASHION = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_AG_NEWS = "https://raw.githubusercontent.com/mhjabreel/CharCnn_Keras/master/data/ag_news_csv/"
_AG_NEWS_SAMPLE = ("https://raw.githubusercontent.com/HenryPengZou/JointMatch/"
                   "e976613f55776ce597a2fa06c30ef02512bef82d/data/ag_news/dev.csv")


def _idx_files(folder: str, base: str, md5s: dict[str, str]) -> tuple[Download, ...]:
    return tuple(Download(f"{folder}/{name}", base + name, md5) for name, md5 in md5s.items())


SOURCES: dict[str, tuple[Download, ...]] = {
    "mnist": _idx_files("mnist", _MNIST, {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    }),
    "fashion_mnist": _idx_files("fashion_mnist", _FASHION, {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    }),
    "cifar10": (Download("cifar10/cifar-10-python.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                         "c58f30108f718f92721af3b95e74349a"),),
    "ag_news": (
        Download("ag_news/train.csv", _AG_NEWS + "train.csv", "b1a00f826fdfbd249f79597b59e1dc12"),
        Download("ag_news/test.csv", _AG_NEWS + "test.csv", "d52ea96a97a2d943681189a97654912d"),
        Download("ag_news/classes.txt", _AG_NEWS + "classes.txt", "eb57fd781a350c341c55d4dcfc46782a"),
        Download("ag_news/readme.txt", _AG_NEWS + "readme.txt", "3912d050577ebbb91edbbaa12edfbdae"),
        Download("ag_news/train_sample_8000.csv", _AG_NEWS_SAMPLE, "6dbf92929690aeeb0220445f981a5d3a"),
    ),
}
