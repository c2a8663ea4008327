"""Helpers shared by the loading transforms: MetaTensors with MONAI's meta keys, file sniffing."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.utils import MetaKeys, SpaceKeys

from common.errors import InputDataError

#: First bytes of formats a user may hand to the wrong reader.
_MAGIC = {
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"\xff\xd8\xff": "JPEG",
    b"GIF8": "GIF",
    b"BM": "BMP",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
    b"%PDF": "PDF",
    b"PK\x03\x04": "ZIP",
}


def sniff_format(path: str | os.PathLike) -> str | None:
    """The format of a file from its first bytes: "PNG", "JPEG", "DICOM", "GZIP", ... or None."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return None
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "DICOM"
    if head[:2] == b"\x1f\x8b":
        return "GZIP"
    for magic, name in _MAGIC.items():
        if head.startswith(magic):
            return name
    if head[:4] in (b"\x5c\x01\x00\x00", b"\x00\x00\x01\x5c", b"\x1c\x02\x00\x00", b"\x00\x00\x02\x1c"):
        return "NIFTI"
    return None


def lower_name(path: str | os.PathLike) -> str:
    return Path(path).name.lower()


def check_file(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.exists():
        raise InputDataError(path, "no such file or folder")
    if path.is_file() and path.stat().st_size == 0:
        raise InputDataError(path, "the file is empty (0 bytes)")
    return path


def make_meta_tensor(
    array: np.ndarray | torch.Tensor,
    affine: np.ndarray,
    filename: str | os.PathLike,
    extra: dict[str, Any] | None = None,
    dtype: torch.dtype = torch.float32,
) -> MetaTensor:
    """A channel-first MetaTensor carrying the meta data MONAI's ``LoadImage`` would set.

    ``affine``/``original_affine`` are in RAS for volumes (as NibabelReader gives them); spatial-shape,
    space and channel keys let ``Orientationd``, ``Spacingd``, ``Invertd`` and ``SaveImaged`` work.
    """
    data = torch.as_tensor(np.ascontiguousarray(array) if isinstance(array, np.ndarray) else array)
    affine = np.asarray(affine, dtype=np.float64)
    meta: dict[str, Any] = {
        MetaKeys.AFFINE: torch.as_tensor(affine, dtype=torch.float64),
        MetaKeys.ORIGINAL_AFFINE: affine.copy(),
        MetaKeys.SPATIAL_SHAPE: np.asarray(data.shape, dtype=np.int64),
        MetaKeys.SPACE: SpaceKeys.RAS,
        MetaKeys.ORIGINAL_CHANNEL_DIM: float("nan"),
        "filename_or_obj": os.fspath(filename),
    }
    if extra:
        meta.update(extra)
    return MetaTensor(data.unsqueeze(0).to(dtype), meta=meta)
