"""Mesh vertices as 3-D point clouds: PLY (ASCII or binary little-endian) and Wavefront OBJ (optionally gzipped)."""
import gzip

import numpy as np

from .files import CorruptDataError, data_file, decoding

_PLY_SCALAR_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
    "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}  # fmt: skip


def load_mesh_vertices(name: str, data_dir=None, verify: bool = True) -> np.ndarray:
    """Vertices of the mesh ``pointclouds/<name>``: ``pyvista/{airplane,ant,nut,sphere}.ply`` (1,335 / 486 / 523 /
    422 vertices) or ``3d_models/{spot,stanford-bunny}.obj.gz`` (2,930 / 35,947).

    Returns:
        float32 [n_vertices, 3], x y z in the file's units.
    """
    path = data_file(f"pointclouds/{name}", data_dir, verify)
    if name.endswith(".ply"):
        return read_ply_vertices(path)
    if name.endswith((".obj", ".obj.gz")):
        return read_obj_vertices(path)
    raise ValueError(f"Unknown mesh format for {name!r}: expected .ply, .obj or .obj.gz")


def read_ply_vertices(path) -> np.ndarray:
    """x, y, z of the ``vertex`` element of a PLY file (``format ascii`` or ``binary_little_endian``).

    The vertex element must come first and have scalar properties only (true of the files shipped).

    Returns:
        float32 [n_vertices, 3].
    """
    with decoding(path), open(path, "rb") as f:
        header = _read_ply_header(f)
        n_vertices, properties = header["n_vertices"], header["vertex_properties"]
        if header["format"] == "ascii":
            rows = [f.readline().split()[: len(properties)] for _ in range(n_vertices)]
            table = np.array(rows, np.float64).reshape(n_vertices, len(properties))
            columns = {name: table[:, i] for i, (name, _) in enumerate(properties)}
        elif header["format"] == "binary_little_endian":
            record = np.dtype([(name, "<" + kind) for name, kind in properties])
            data = f.read(n_vertices * record.itemsize)
            if len(data) < n_vertices * record.itemsize:
                raise CorruptDataError(f"Data file {path} is truncated: {len(data)} bytes of vertex data, the "
                                       f"header announces {n_vertices} vertices of {record.itemsize} bytes")
            columns = np.frombuffer(data, record, count=n_vertices)
        else:
            raise ValueError(f"{path}: unsupported PLY format {header['format']!r}")
    return np.stack([columns["x"], columns["y"], columns["z"]], axis=1).astype(np.float32)


def _read_ply_header(f) -> dict:
    """Format, vertex count and [(name, numpy type code)] of the vertex properties; leaves ``f`` at the data."""
    if f.readline().strip() != b"ply":
        raise ValueError(f"{f.name} is not a PLY file")
    header = {"format": None, "n_vertices": None, "vertex_properties": []}
    element = None
    for line in iter(f.readline, b""):
        words = line.decode("ascii").split()
        if words == ["end_header"]:
            return header
        if words[0] == "format":
            header["format"] = words[1]
        elif words[0] == "element":
            element = words[1]
            if element == "vertex":
                if header["vertex_properties"] or header["n_vertices"] is not None:
                    raise ValueError(f"{f.name}: more than one vertex element")
                header["n_vertices"] = int(words[2])
            elif header["n_vertices"] is None:
                raise ValueError(f"{f.name}: the vertex element must come first")
        elif words[0] == "property" and element == "vertex":
            if words[1] not in _PLY_SCALAR_TYPES:
                raise ValueError(f"{f.name}: unsupported vertex property {' '.join(words[1:])!r}")
            header["vertex_properties"].append((words[2], _PLY_SCALAR_TYPES[words[1]]))
    raise ValueError(f"{f.name}: no end_header line")


def read_obj_vertices(path) -> np.ndarray:
    """The ``v x y z`` lines of a Wavefront OBJ file, gzipped if the name ends in ``.gz``.

    Returns:
        float32 [n_vertices, 3] (a fourth weight column, if present, is dropped).
    """
    opener = gzip.open if str(path).endswith(".gz") else open
    with decoding(path), opener(path, "rt", encoding="ascii") as f:
        rows = [line.split()[1:4] for line in f if line.startswith("v ")]
    return np.array(rows, np.float32).reshape(-1, 3)
