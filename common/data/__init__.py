"""Data loaders returning numpy arrays; files are read from the data root (``data_dir=`` or ``$NFN_DATA_DIR``)
and checked against its ``MANIFEST.tsv``. ``load_digits`` needs no data folder. ``python -m common.data fetch
NAME ...`` downloads the data sets with checksums (`common.data.fetch`)."""
from .ag_news import AG_NEWS_CLASSES, load_ag_news, normalize_ag_news_text
from .cifar import CIFAR10_CLASSES, cifar10_python_available, cifar_grayscale, load_cifar10, load_cifar10_test
from .digits import load_digits
from .files import DATA_DIR_ENV, ChecksumMismatchError, CorruptDataError, DataNotFoundError, data_file, data_root
from .idx import load_fashion_mnist, load_mnist, read_idx
from .images import load_image
from .meshes import load_mesh_vertices, read_obj_vertices, read_ply_vertices
from .pointclouds import load_density, load_density_points, sample_density_points

__all__ = [
    "AG_NEWS_CLASSES",
    "CIFAR10_CLASSES",
    "DATA_DIR_ENV",
    "ChecksumMismatchError",
    "CorruptDataError",
    "DataNotFoundError",
    "cifar10_python_available",
    "cifar_grayscale",
    "data_file",
    "data_root",
    "load_ag_news",
    "load_cifar10",
    "load_cifar10_test",
    "load_density",
    "load_density_points",
    "load_digits",
    "load_fashion_mnist",
    "load_image",
    "load_mesh_vertices",
    "load_mnist",
    "normalize_ag_news_text",
    "read_idx",
    "read_obj_vertices",
    "read_ply_vertices",
    "sample_density_points",
]
