"""MetaImage (.mhd header + .raw data), the format LUNA16 ships, read and written without ITK.

MetaImage stores voxels x-fastest with a physical space in **LPS** (ITK's convention): ``Offset`` is the
LPS position of voxel (0, 0, 0), ``TransformMatrix`` holds one direction cosine triple per voxel axis and
``ElementSpacing`` the voxel size in mm. :func:`read_mhd` returns the array indexed ``(i, j, k)`` with a
4 x 4 affine to world **RAS** millimetres (MONAI's convention), and the LPS geometry in the meta data so
that LUNA16 world coordinates can be converted exactly.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import InputDataError
from common.io.atomic import atomic_path

_MET_TYPES = {
    "MET_CHAR": np.int8,
    "MET_UCHAR": np.uint8,
    "MET_SHORT": np.int16,
    "MET_USHORT": np.uint16,
    "MET_INT": np.int32,
    "MET_UINT": np.uint32,
    "MET_LONG_LONG": np.int64,
    "MET_ULONG_LONG": np.uint64,
    "MET_FLOAT": np.float32,
    "MET_DOUBLE": np.float64,
}
_NP_TO_MET = {np.dtype(v): k for k, v in _MET_TYPES.items()}

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def lps_affine(spacing: np.ndarray, origin: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """Voxel index -> LPS world affine from MetaImage/ITK geometry.

    Args:
        spacing: (3,) voxel size in mm.
        origin: (3,) LPS position of voxel (0, 0, 0).
        direction: (3, 3) matrix whose column k is the direction of voxel axis k.

    Returns:
        4 x 4 affine.
    """
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(direction, float) @ np.diag(np.asarray(spacing, float))
    affine[:3, 3] = np.asarray(origin, float)
    return affine


def _parse_header(path: Path) -> tuple[dict[str, str], int]:
    """Key/value pairs of the header and the byte offset where LOCAL data would start."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise InputDataError(path, f"cannot read the MetaImage header ({e.strerror})") from None
    header: dict[str, str] = {}
    offset = 0
    for line in raw.splitlines(keepends=True):
        offset += len(line)
        try:
            text = line.decode("ascii").strip()
        except UnicodeDecodeError:
            raise InputDataError(path, "not a MetaImage header (binary content)") from None
        if not text:
            continue
        if "=" not in text:
            raise InputDataError(path, f"not a MetaImage header (line without '=': {text[:40]!r})")
        key, value = (s.strip() for s in text.split("=", 1))
        header[key] = value
        if key == "ElementDataFile":
            break
    return header, offset


def read_mhd(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Read a 3D MetaImage.

    Args:
        path: the ``.mhd`` header (data in the file it names, or ``LOCAL``) or a ``.mha`` file.

    Returns:
        the voxel array ``(X, Y, Z)`` in the stored type, the 4 x 4 voxel -> RAS affine, and meta data
        with ``spacing``, ``origin_lps``, ``direction_lps`` (columns = axis directions) and ``lps_affine``.

    Raises:
        InputDataError: the header is malformed, not 3D, or the data file is missing or truncated.
    """
    path = Path(path)
    header, local_offset = _parse_header(path)
    missing = [k for k in ("NDims", "DimSize", "ElementType", "ElementDataFile") if k not in header]
    if missing:
        raise InputDataError(path, f"MetaImage header lacks {', '.join(missing)}")
    ndims = int(header["NDims"])
    if ndims != 3:
        raise InputDataError(path, f"a 3D volume is needed, this MetaImage has {ndims} dimensions")
    if int(header.get("ElementNumberOfChannels", "1")) != 1:
        raise InputDataError(path, "multi-channel MetaImage (e.g. RGB) cannot be a CT volume")
    dims = [int(v) for v in header["DimSize"].split()]
    dtype_name = header["ElementType"]
    if dtype_name not in _MET_TYPES:
        raise InputDataError(path, f"unsupported ElementType {dtype_name}")
    dtype = np.dtype(_MET_TYPES[dtype_name])
    if header.get("BinaryDataByteOrderMSB", header.get("ElementByteOrderMSB", "False")).lower() == "true":
        dtype = dtype.newbyteorder(">")
    spacing = np.array([float(v) for v in header.get("ElementSpacing", header.get("ElementSize", "1 1 1")).split()])
    origin = np.array([float(v) for v in header.get("Offset", header.get("Origin", "0 0 0")).split()])
    matrix = [float(v) for v in header.get("TransformMatrix", header.get("Rotation", "1 0 0 0 1 0 0 0 1")).split()]
    direction = np.array(matrix, float).reshape(3, 3).T  # one triple per axis -> columns

    data_file = header["ElementDataFile"]
    if data_file == "LOCAL":
        data = path.read_bytes()[local_offset:]
    else:
        data_path = path.parent / data_file
        if not data_path.exists():
            raise InputDataError(path, f"the data file {data_file} named in the header does not exist")
        data = data_path.read_bytes()
    if header.get("CompressedData", "False").lower() == "true":
        try:
            data = zlib.decompress(data)
        except zlib.error:
            raise InputDataError(path, "compressed MetaImage data is corrupt or truncated") from None
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(data) < expected:
        raise InputDataError(path, f"truncated data: {len(data)} bytes, {expected} expected for {dims} {dtype_name}")
    array = np.frombuffer(data[:expected], dtype=dtype).reshape(dims, order="F")
    array = array.astype(dtype.newbyteorder("="), copy=True)
    affine_lps = lps_affine(spacing, origin, direction)
    meta = {
        "spacing": spacing,
        "origin_lps": origin,
        "direction_lps": direction,
        "lps_affine": affine_lps,
        "filename_or_obj": str(path),
    }
    return array, LPS_TO_RAS @ affine_lps, meta


def write_mhd(
    path: str | os.PathLike,
    array: np.ndarray,
    spacing: tuple[float, float, float] | np.ndarray,
    origin_lps: tuple[float, float, float] | np.ndarray = (0.0, 0.0, 0.0),
    direction_lps: np.ndarray | None = None,
) -> Path:
    """Write a 3D array as ``path`` (.mhd header) plus a ``.raw`` data file beside it, atomically.

    Args:
        path: the ``.mhd`` file to write.
        array: voxels indexed ``(i, j, k)``.
        spacing: voxel size in mm per axis.
        origin_lps: LPS position of voxel (0, 0, 0).
        direction_lps: 3 x 3 matrix whose column k is the direction of axis k (identity by default).

    Returns:
        the header path.
    """
    path = Path(path)
    array = np.asarray(array)
    if array.ndim != 3:
        raise ValueError(f"write_mhd needs a 3D array, got shape {array.shape}")
    if array.dtype not in _NP_TO_MET:
        raise ValueError(f"unsupported dtype {array.dtype} for MetaImage")
    direction = np.eye(3) if direction_lps is None else np.asarray(direction_lps, float)
    raw_name = path.with_suffix(".raw").name
    fmt = lambda values: " ".join(f"{float(v):.10g}" for v in values)  # noqa: E731
    header = "\n".join(
        [
            "ObjectType = Image",
            "NDims = 3",
            "BinaryData = True",
            "BinaryDataByteOrderMSB = False",
            "CompressedData = False",
            f"TransformMatrix = {fmt(direction.T.ravel())}",
            f"Offset = {fmt(origin_lps)}",
            "CenterOfRotation = 0 0 0",
            "AnatomicalOrientation = RAI",
            f"ElementSpacing = {fmt(spacing)}",
            f"DimSize = {' '.join(str(int(d)) for d in array.shape)}",
            f"ElementType = {_NP_TO_MET[array.dtype]}",
            f"ElementDataFile = {raw_name}",
            "",
        ]
    )
    with atomic_path(path.with_suffix(".raw")) as tmp:
        tmp.write_bytes(np.asarray(array, dtype=array.dtype.newbyteorder("<")).tobytes(order="F"))
    with atomic_path(path) as tmp:
        tmp.write_text(header)
    return path
