"""Data loaders (common.data) against the shipped folder ../shared/data (never skipped: CI has it)."""
import gzip
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common import data
from common.data import files

SHARED_DATA = Path(os.environ.get("NFN_DATA_DIR") or Path(__file__).parents[2] / "shared" / "data")
MNIST_TEST_CLASS_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(autouse=True)
def data_dir_from_env(monkeypatch):
    """Every test starts with NFN_DATA_DIR pointing at the shipped data."""
    monkeypatch.setenv(data.DATA_DIR_ENV, str(SHARED_DATA))


def copy_into(root: Path, relative_path: str) -> Path:
    """Copy one shipped file into ``root`` at the same relative path."""
    target = root / relative_path
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(SHARED_DATA / relative_path, target)
    return target


# ---- MNIST / Fashion-MNIST -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "loader, split, class_counts",
    [
        (data.load_mnist, "test", MNIST_TEST_CLASS_COUNTS),
        (data.load_mnist, "train", None),
        (data.load_fashion_mnist, "test", [1000] * 10),
        (data.load_fashion_mnist, "train", [6000] * 10),
    ],
)
def test_idx_loaders_shapes_dtypes_and_class_counts(loader, split, class_counts):
    images, labels = loader(split)
    n = 60_000 if split == "train" else 10_000
    assert images.shape == (n, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (n,) and labels.dtype == np.int64
    assert images.min() == 0 and images.max() == 255
    assert (images[:, 0, 0] == 0).mean() > 0.999  # corners are background
    counts = np.bincount(labels, minlength=10)
    assert len(counts) == 10 and counts.min() > 0
    if class_counts is not None:
        assert counts.tolist() == class_counts


def test_read_idx_rejects_a_non_uint8_file(tmp_path):
    path = tmp_path / "floats-idx1.gz"
    with gzip.open(path, "wb") as f:
        f.write(bytes([0, 0, 0x0D, 1]) + (2).to_bytes(4, "big") + np.zeros(2, ">f4").tobytes())
    with pytest.raises(ValueError, match="not a uint8 IDX file"):
        data.read_idx(path)


@pytest.mark.parametrize("loader", [data.load_mnist, data.load_fashion_mnist, data.load_ag_news])
def test_unknown_split_is_rejected(loader):
    with pytest.raises(ValueError, match="split must be"):
        loader("validation")


# ---- CIFAR-10 --------------------------------------------------------------------------------------------


def test_cifar10_test_shapes_and_class_balance():
    images, labels = data.load_cifar10_test()
    assert images.shape == (10_000, 32, 32, 3) and images.dtype == np.uint8
    assert labels.dtype == np.int64
    assert np.bincount(labels).tolist() == [1000] * 10
    assert np.all(np.diff(labels) >= 0)  # ordered by class


def test_cifar10_order_and_labels_match_the_exact_pngs():
    """cifar10_<i>_<label>.png is test image i: the JPEG at (label, rank of i within its class) must match it."""
    images, labels = data.load_cifar10_test()
    seen_per_class = np.zeros(10, int)
    for png in sorted((SHARED_DATA / "cifar10" / "exact_png").glob("cifar10_*.png")):
        label = int(png.stem.split("_")[2])
        exact = np.asarray(Image.open(png).convert("RGB"), np.float64)
        jpeg = images[1000 * label + seen_per_class[label]].astype(np.float64)
        seen_per_class[label] += 1
        assert labels[1000 * label] == label
        psnr = 10 * np.log10(255**2 / np.mean((exact - jpeg) ** 2))
        assert psnr > 25, (png.name, psnr)


def test_cifar_grayscale_is_the_rgb_mean_scaled_to_plus_minus_one():
    pixels = np.array([[[0, 0, 0], [255, 255, 255], [30, 60, 90]]], np.uint8)
    np.testing.assert_allclose(data.cifar_grayscale(pixels), [[-1.0, 1.0, 60 / 127.5 - 1]], rtol=1e-6)
    images, _ = data.load_cifar10_test()
    gray, _ = data.load_cifar10_test(grayscale=True)
    assert gray.shape == (10_000, 32, 32) and gray.dtype == np.float32
    assert gray.min() >= -1 and gray.max() <= 1
    np.testing.assert_array_equal(gray, data.cifar_grayscale(images))


def test_cifar10_returns_arrays_the_cache_does_not_share():
    images, labels = data.load_cifar10_test()
    images[:] = 0
    labels[:] = -1
    images_again, labels_again = data.load_cifar10_test()
    assert images_again.max() > 0 and labels_again.min() == 0


# ---- AG News ---------------------------------------------------------------------------------------------


def test_ag_news_test_split():
    labels, texts = data.load_ag_news("test")
    assert labels.dtype == np.int64 and len(labels) == len(texts) == 7600
    assert np.bincount(labels).tolist() == [1900] * 4
    assert texts[1].startswith("SPACE.com - TORONTO, Canada -- A second team of rocketeers competing for the $10 ")
    assert all(isinstance(text, str) and text for text in texts)


def test_ag_news_train_sample_and_test_overlap():
    labels, texts = data.load_ag_news("train", drop_test_overlap=False)
    assert len(texts) == 8000 and np.bincount(labels).tolist() == [2000] * 4
    assert texts[0].startswith("Reuters - Saboteurs blew up an internal oil pipeline on the edge of Baghdad")
    raw_labels, raw_texts = data.load_ag_news("train", normalize=False)
    assert len(raw_texts) == len(raw_labels) == 8000 - 16
    labels, texts = data.load_ag_news("train")
    assert len(texts) == len(labels) == 8000 - 17  # plus one that differs only in quirks
    assert not set(texts) & set(data.load_ag_news("test")[1])


@pytest.mark.parametrize(
    "raw, normalized",
    [
        ("Eriksson doesn #39;t feel", "Eriksson doesn't feel"),
        ("competing for the  #36;10 million", "competing for the $10 million"),
        ("UPDATE 1-J amp;J in talks", "UPDATE 1-J&J in talks"),
        ("Johnson  amp; Johnson", "Johnson & Johnson"),
        ('In  quot;helping themselves, quot; Rick', 'In "helping themselves," Rick'),
        ("internal oil\\pipeline on", "internal oil pipeline on"),
        ("a second\\team", "a second team"),
        ("social\\network and", "social network and"),
        ("the Elys eacute;e", "the Elysée"),
        ("sites.\\\\The 18-year-old", "sites. The 18-year-old"),
        ("dollars #151;prostate", "dollars\u2014prostate"),
        ("Texas Instruments Inc. &lt;TXN.N&gt;, on", "Texas Instruments Inc. <TXN.N>, on"),
        ('bills. &lt;FONT face="verdana" size="-2"&gt;&lt;B&gt;-The Post&lt;/B&gt;&lt;/FONT&gt;', "bills. -The Post"),
        ("  padded \t text  ", "padded text"),
        ("race; Heras", "race; Heras"),
    ],
)
def test_normalize_ag_news_text(raw, normalized):
    assert data.normalize_ag_news_text(raw) == normalized


# ---- data root, missing files, checksums -----------------------------------------------------------------


def test_no_data_folder_set_names_the_env_var_and_argument(monkeypatch):
    monkeypatch.delenv(data.DATA_DIR_ENV)
    with pytest.raises(data.DataNotFoundError, match="NFN_DATA_DIR.*data_dir="):
        data.load_mnist("test")
    assert issubclass(data.DataNotFoundError, FileNotFoundError)


def test_missing_data_folder_is_named(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(data.DataNotFoundError, match=re.escape(str(missing)) + ".*NFN_DATA_DIR.*data_dir="):
        data.load_image("pot/ocean_day.jpg", data_dir=missing)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="mnist/t10k-images-idx3-ubyte.gz.*NFN_DATA_DIR.*data_dir="):
        data.load_mnist("test", data_dir=tmp_path)


def test_data_dir_argument_wins_over_the_env_var(tmp_path, monkeypatch):
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path))  # empty folder
    assert data.data_root() == tmp_path
    assert data.data_root(SHARED_DATA) == SHARED_DATA
    assert data.load_mesh_vertices("pyvista/ant.ply", data_dir=SHARED_DATA).shape == (486, 3)
    with pytest.raises(data.DataNotFoundError, match=re.escape(str(tmp_path))):
        data.load_mesh_vertices("pyvista/ant.ply")
    monkeypatch.setenv(data.DATA_DIR_ENV, str(SHARED_DATA))
    with pytest.raises(data.DataNotFoundError, match=re.escape(str(tmp_path))):
        data.load_mesh_vertices("pyvista/ant.ply", data_dir=tmp_path)


def test_checksum_mismatch_raises_unless_verify_is_off(tmp_path):
    shutil.copyfile(SHARED_DATA / "MANIFEST.tsv", tmp_path / "MANIFEST.tsv")
    copy = copy_into(tmp_path, "pointclouds/pyvista/ant.ply")
    assert data.load_mesh_vertices("pyvista/ant.ply", data_dir=tmp_path).shape == (486, 3)
    corrupted = bytearray(copy.read_bytes())
    corrupted[-1] ^= 0xFF  # a face index: the vertices still parse
    copy.write_bytes(bytes(corrupted))
    os.utime(copy, ns=(0, 123_456_789))  # a new mtime even on coarse-clock file systems
    with pytest.raises(data.ChecksumMismatchError, match=r"ant\.ply.*md5.*verify=False"):
        data.load_mesh_vertices("pyvista/ant.ply", data_dir=tmp_path)
    assert data.load_mesh_vertices("pyvista/ant.ply", data_dir=tmp_path, verify=False).shape == (486, 3)


def test_checksum_is_computed_once_per_file_version(tmp_path):
    shutil.copyfile(SHARED_DATA / "MANIFEST.tsv", tmp_path / "MANIFEST.tsv")
    copy_into(tmp_path, "pointclouds/geomloss/density_a.png")
    data.load_density("geomloss/density_a.png", data_dir=tmp_path)
    misses = files._md5.cache_info().misses
    for _ in range(3):
        data.load_density("geomloss/density_a.png", data_dir=tmp_path)
    assert files._md5.cache_info().misses == misses


def test_files_absent_from_the_manifest_are_not_checked(tmp_path):
    copy = copy_into(tmp_path, "pointclouds/geomloss/density_a.png")
    copy.write_bytes(copy.read_bytes() + b"trailing bytes")  # no MANIFEST.tsv in tmp_path
    assert data.load_density("geomloss/density_a.png", data_dir=tmp_path).shape == (100, 100)


# ---- images, point clouds, meshes, digits ----------------------------------------------------------------


def test_load_image_uint8_and_float():
    day = data.load_image("pot/ocean_day.jpg")
    assert day.shape == (669, 1000, 3) and day.dtype == np.uint8
    assert data.load_image("pot/ocean_sunset.jpg").shape == (750, 1000, 3)
    day_float = data.load_image("pot/ocean_day.jpg", as_float=True)
    assert day_float.dtype == np.float32 and 0 <= day_float.min() and day_float.max() <= 1
    np.testing.assert_allclose(day_float, day / 255, atol=1e-6)
    assert data.load_image("skimage/astronaut.png").shape == (512, 512, 3)


def test_density_points_are_in_the_unit_square_and_reproducible():
    points = data.load_density_points("geomloss/moon_a.png", 2000, seed=0)
    assert points.shape == (2000, 2) and points.dtype == np.float32
    assert points.min() >= 0 and points.max() <= 1
    np.testing.assert_array_equal(points, data.load_density_points("geomloss/moon_a.png", 2000, seed=0))
    assert not np.allclose(points, data.load_density_points("geomloss/moon_a.png", 2000, seed=1))
    jax_style_key = np.array([0, 7], np.uint32)
    np.testing.assert_array_equal(
        data.load_density_points("geomloss/moon_a.png", 10, jax_style_key),
        data.load_density_points("geomloss/moon_a.png", 10, jax_style_key),
    )


def test_density_points_fall_on_the_dark_shape():
    density = data.load_density("geomloss/moon_a.png")
    height, width = density.shape
    assert density.max() == 1 and density.min() == 0 and (density > 0.5).mean() < 0.1
    points = data.load_density_points("geomloss/moon_a.png", 2000, seed=3)
    cols = np.minimum((points[:, 0] * width).astype(int), width - 1)
    rows = np.minimum(((1 - points[:, 1]) * height).astype(int), height - 1)
    assert (density[rows, cols] > 0.5).mean() > 0.95


def test_sampling_weights_pixels_by_density_with_y_up():
    density = np.zeros((4, 4))
    density[0, :] = 3.0  # top row
    density[3, :2] = 1.0  # bottom-left
    points = data.sample_density_points(density, 20_000, seed=0)
    top = points[:, 1] >= 0.75
    assert np.all(top | ((points[:, 1] < 0.25) & (points[:, 0] < 0.5)))
    assert abs(top.mean() - 12 / 14) < 0.01


@pytest.mark.parametrize(
    "name, n_vertices",
    [
        ("pyvista/airplane.ply", 1335),  # ascii
        ("pyvista/ant.ply", 486),  # binary little-endian
        ("pyvista/nut.ply", 523),
        ("pyvista/sphere.ply", 422),
        ("3d_models/spot.obj.gz", 2930),
        ("3d_models/stanford-bunny.obj.gz", 35947),
    ],
)
def test_mesh_vertex_counts(name, n_vertices):
    vertices = data.load_mesh_vertices(name)
    assert vertices.shape == (n_vertices, 3) and vertices.dtype == np.float32
    assert np.all(np.isfinite(vertices))


def test_mesh_vertex_values():
    np.testing.assert_allclose(data.load_mesh_vertices("pyvista/airplane.ply")[0], [896.994, 48.7601, 82.2656])
    spot = data.load_mesh_vertices("3d_models/spot.obj.gz")
    np.testing.assert_allclose(spot[0], [0.348799, -0.334989, -0.0832331])
    radii = np.linalg.norm(data.load_mesh_vertices("pyvista/sphere.ply"), axis=1)  # binary: garbage if misread
    assert radii.std() < 0.02 * radii.mean()


@pytest.mark.parametrize("encoding", ["ascii", "binary_little_endian"])
def test_ply_reader_handles_mixed_vertex_properties(tmp_path, encoding):
    record = [("x", "<f8"), ("y", "<f4"), ("z", "<f4"), ("red", "u1")]
    vertices = np.array([(1.5, -2.0, 3.25, 7), (0.0, 4.0, -1.0, 255)], record)
    header = (
        f"ply\nformat {encoding} 1.0\nelement vertex 2\nproperty double x\nproperty float y\n"
        "property float z\nproperty uchar red\nelement face 0\nproperty list uchar int vertex_indices\nend_header\n"
    )
    ascii_rows = "".join(" ".join(map(str, vertex)) + "\n" for vertex in vertices.tolist())
    body = ascii_rows.encode() if encoding == "ascii" else vertices.tobytes()
    path = tmp_path / "mixed.ply"
    path.write_bytes(header.encode() + body)
    np.testing.assert_array_equal(data.read_ply_vertices(path), [[1.5, -2.0, 3.25], [0.0, 4.0, -1.0]])


def test_digits_need_no_data_folder(monkeypatch):
    monkeypatch.delenv(data.DATA_DIR_ENV)
    images, labels = data.load_digits()
    assert images.shape == (1797, 8, 8) and images.dtype == np.uint8
    assert images.max() == 16 and labels.dtype == np.int64
    assert np.bincount(labels).min() >= 170 and np.bincount(labels).size == 10


# ---- damaged files (issue 15) -----------------------------------------------------------------------------


def test_truncated_gzip_without_a_manifest_names_the_file(tmp_path):
    """Without a manifest the md5 cannot catch a truncated file; the reader used to raise a bare EOFError."""
    for name in ("mnist/t10k-images-idx3-ubyte.gz", "mnist/t10k-labels-idx1-ubyte.gz"):
        path = copy_into(tmp_path, name)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(data.CorruptDataError, match=r"t10k-images-idx3-ubyte.gz is truncated or damaged \(EOFError"):
        data.load_mnist("test", data_dir=tmp_path)
    assert issubclass(data.CorruptDataError, ValueError)


def test_truncated_files_of_other_formats_name_the_file(tmp_path):
    copy_into(tmp_path, "pointclouds/pyvista/sphere.ply")
    ply = tmp_path / "pointclouds/pyvista/sphere.ply"
    ply.write_bytes(ply.read_bytes()[:600])  # header and a few vertices
    with pytest.raises(data.CorruptDataError, match=r"sphere.ply is truncated: .* bytes of vertex data"):
        data.load_mesh_vertices("pyvista/sphere.ply", data_dir=tmp_path)
    image = copy_into(tmp_path, "images/pot/ocean_day.jpg")
    image.write_bytes(image.read_bytes()[:200])
    with pytest.raises(data.CorruptDataError, match=r"ocean_day.jpg is truncated or damaged"):
        data.load_image("pot/ocean_day.jpg", data_dir=tmp_path)
