"""CT transforms: load a volume in Hounsfield units, load a label volume, HU window to [0, 1].

LoadCTd
    Reads NIfTI (``.nii``, ``.nii.gz``), MetaImage (``.mhd`` + ``.raw``, LUNA16), a DICOM series folder
    or one DICOM file (the rest of its series is read from the same folder; an enhanced multi-frame CT
    object is a whole volume) into a ``MetaTensor`` of shape ``(1, X, Y, Z)`` float32 HU. The ``affine``
    maps voxel indices to RAS millimetres for every format, and the meta data carries MONAI's keys
    (``filename_or_obj``, ``spatial_shape``, ``original_affine``, ``space``), so ``Orientationd``,
    ``Spacingd``, ``Invertd`` and ``SaveImaged`` work on the result. The same scan stored as NIfTI, MHD
    or a DICOM series loads to the same array and affine.

    The loaded values are checked, because a wrong-but-readable input would otherwise give a
    confidently wrong model output. The rules (``hu_check=True``):

    - the volume must be 3D with at least 2 voxels on each axis (a 2D image, a single slice, a 4D
      series of volumes, an RGB image are refused);
    - at least one finite value (an empty or all-NaN volume is refused); isolated NaN/inf voxels
      are set to the lowest finite value of the volume (outside-of-field padding) and logged;
    - values in [0, 1] are refused (an intensity-normalised image, not HU);
    - integer values in [0, 255] are refused (an 8-bit greyscale export, not HU);
    - otherwise the minimum must be at most -500 HU: every CT of the chest contains air (about
      -1000 HU) in the lungs and around the body; a minimum above -500 means stored values without
      RescaleIntercept (air near 0 instead of -1000), or not a CT at all.

    Set ``hu_check=False`` for CT crops that truly contain no air.

LoadLabelVolumed
    Reads a label map (NIfTI or MHD) into ``(1, X, Y, Z)`` with integer values (float32 by default, as
    MONAI's spatial transforms compute in float), with the same RAS affine convention. Non-integer,
    negative or non-finite labels are refused.

HUWindowd
    Clips HU to ``[hu_min, hu_max]`` and scales that window linearly to [0, 1] (defaults -1000..500:
    lung parenchyma to soft tissue).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, ScaleIntensityRange

from common.errors import InputDataError
from common.io.dicom import read_dicom_series
from common.transforms._meta import check_file, lower_name, make_meta_tensor, sniff_format

__all__ = ["LoadCTd", "LoadLabelVolumed", "HUWindowd", "load_ct", "load_label_volume", "check_hu_values"]

logger = logging.getLogger(__name__)

_NIFTI_SUFFIXES = (".nii", ".nii.gz")
_MHD_SUFFIXES = (".mhd", ".mha")
_PHOTO_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF")


def _read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    import nibabel as nib

    try:
        img = nib.load(str(path))
    except Exception as e:  # nibabel raises ImageFileError, EOFError, zlib/gzip errors, ValueError
        raise InputDataError(
            path, f"cannot read as NIfTI (not a NIfTI file, or a corrupt header): {e}"
        ) from e
    header_dtype = img.get_data_dtype()
    if header_dtype.fields is not None or header_dtype.names is not None:
        raise InputDataError(path, f"an RGB/colour NIfTI (data type {header_dtype}), not a CT volume in HU")
    try:
        array = np.asarray(img.get_fdata(dtype=np.float32))
    except Exception as e:
        raise InputDataError(
            path, f"the NIfTI data cannot be read (truncated or corrupt file): {type(e).__name__}: {e}"
        ) from e
    return array, np.asarray(img.affine, dtype=np.float64), {"ct_format": "nifti", "ct_modality": "", "ct_series_uid": ""}


def _read_mhd(path: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    from common.io.mhd import read_mhd  # the lead's MetaImage reader (LPS header -> RAS affine)

    try:
        array, affine, meta = read_mhd(path)
    except InputDataError:
        raise
    except Exception as e:
        raise InputDataError(path, f"cannot read the MetaImage file: {type(e).__name__}: {e}") from e
    return np.asarray(array), np.asarray(affine, dtype=np.float64), {"ct_format": "mhd", "ct_modality": "", "ct_series_uid": ""}


def _read_volume(
    path: str | os.PathLike, what: str, allow_dicom: bool = True
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Dispatch on folder / extension / content. ``what`` names the expected content in errors."""
    path = check_file(path)
    if not allow_dicom and (
        path.is_dir() or lower_name(path).endswith(".dcm") or sniff_format(path) == "DICOM"
    ):
        raise InputDataError(
            path, f"DICOM is not read as {what}: convert it to NIfTI (.nii.gz) or MetaImage (.mhd)"
        )
    if path.is_dir():
        array, affine, meta = read_dicom_series(path)
        return array, affine, {"ct_format": "dicom", "ct_modality": meta["modality"], "ct_series_uid": meta["series_uid"]}
    name = lower_name(path)
    content = sniff_format(path)
    if content in _PHOTO_FORMATS:
        raise InputDataError(
            path,
            f"a {content} image (a photo or 2D picture), not {what}: give NIfTI (.nii/.nii.gz), "
            "MetaImage (.mhd) or a DICOM series folder",
        )
    if name.endswith(_NIFTI_SUFFIXES):
        return _read_nifti(path)
    if name.endswith(_MHD_SUFFIXES):
        return _read_mhd(path)
    if name.endswith(".dcm") or content == "DICOM":
        array, affine, meta = read_dicom_series(path)
        return array, affine, {"ct_format": "dicom", "ct_modality": meta["modality"], "ct_series_uid": meta["series_uid"]}
    if content == "NIFTI":
        return _read_nifti(path)
    raise InputDataError(
        path,
        f"unknown file type for {what}: give NIfTI (.nii/.nii.gz), MetaImage (.mhd) or a DICOM series folder",
    )


def _as_volume(array: np.ndarray, path: Path | str, what: str) -> np.ndarray:
    """Squeeze trailing singleton axes to 3D; refuse 2D, 4D and colour data."""
    if array.size == 0:
        raise InputDataError(path, f"an empty image (shape {tuple(array.shape)}), not {what}")
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 4 and array.shape[-1] in (3, 4):
        raise InputDataError(path, f"a colour (RGB) image of shape {tuple(array.shape)}, not {what}")
    if array.ndim > 3:
        raise InputDataError(
            path, f"a {array.ndim}D image of shape {tuple(array.shape)} (several volumes), not one {what}"
        )
    if array.ndim < 3 or min(array.shape) < 2:
        raise InputDataError(
            path,
            f"a 2D image (shape {tuple(array.shape)}), but {what} needs at least 2 voxels along each axis",
        )
    return array


def check_hu_values(array: np.ndarray, path: str | os.PathLike) -> np.ndarray:
    """Refuse values that cannot be CT Hounsfield units (rules in the module docstring).

    Returns the array with isolated non-finite voxels replaced by the lowest finite value.
    """
    finite = np.isfinite(array)
    n_finite = int(np.count_nonzero(finite))
    if n_finite == 0:
        raise InputDataError(path, "no finite value (all NaN/inf): the volume is empty")
    if n_finite < array.size:
        values = array[finite]
        lo, hi = float(values.min()), float(values.max())
        logger.warning("%s: %d NaN/inf voxels set to the lowest value %.1f", path, array.size - n_finite, lo)
        array = np.where(finite, array, np.asarray(lo, dtype=array.dtype))
    else:
        lo, hi = float(array.min()), float(array.max())
    if lo >= 0.0 and hi <= 1.0:
        raise InputDataError(
            path,
            f"values in [{lo:g}, {hi:g}] look intensity-normalised, not Hounsfield units (air is about -1000 HU)",
        )
    if lo >= 0.0 and hi <= 255.0 and np.array_equal(array, np.round(array)):
        raise InputDataError(
            path,
            f"integer values in [{lo:g}, {hi:g}] look like an 8-bit greyscale image, not Hounsfield units "
            "(air is about -1000 HU)",
        )
    if lo > -500.0:
        raise InputDataError(
            path,
            f"values from {lo:g} to {hi:g} cannot be Hounsfield units of a chest CT: nothing is below -500 HU, "
            "but air is about -1000 HU (stored values without RescaleIntercept, or not a CT?); "
            "use hu_check=False for crops without air",
        )
    return array


def load_ct(path: str | os.PathLike, hu_check: bool = True) -> MetaTensor:
    """Read a CT volume (NIfTI, MHD, DICOM series folder or file) to a ``(1, X, Y, Z)`` HU MetaTensor."""
    array, affine, extra = _read_volume(path, "a CT volume")
    array = _as_volume(np.asarray(array, dtype=np.float32), path, "a CT volume")
    if hu_check:
        array = check_hu_values(array, path)
    return make_meta_tensor(array, affine, path, extra)


def load_label_volume(path: str | os.PathLike, dtype: torch.dtype = torch.float32) -> MetaTensor:
    """Read a label map (NIfTI or MHD) to a ``(1, X, Y, Z)`` MetaTensor with integer values."""
    array, affine, extra = _read_volume(path, "a label volume", allow_dicom=False)
    array = _as_volume(np.asarray(array), path, "a label volume")
    values = np.asarray(array, dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise InputDataError(path, "the label volume contains NaN/inf values")
    if np.any(np.abs(values - np.round(values)) > 1e-3):
        raise InputDataError(path, "the label volume has non-integer values (a probability map or an image?)")
    if values.min() < 0:
        raise InputDataError(path, f"the label volume has negative labels (minimum {values.min():g})")
    return make_meta_tensor(np.round(values), affine, path, extra, dtype=dtype)


class LoadCTd(MapTransform):
    """Load CT volumes in HU as ``(1, X, Y, Z)`` MetaTensors with a RAS affine (see the module docstring).

    Args:
        keys: keys whose values are paths (NIfTI, MHD, DICOM series folder or DICOM file).
        hu_check: refuse values that cannot be HU (2D/empty/NaN checks always run).
        allow_missing_keys: don't raise if a key is missing.

    Raises:
        InputDataError: the file cannot be used (unreadable, truncated, 2D, RGB, wrong modality,
            not HU, all NaN); the message starts with the file.
    """

    def __init__(self, keys: KeysCollection, hu_check: bool = True, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.hu_check = hu_check

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = load_ct(d[key], hu_check=self.hu_check)
        return d


class LoadLabelVolumed(MapTransform):
    """Load label maps as ``(1, X, Y, Z)`` MetaTensors with integer values and a RAS affine.

    Args:
        keys: keys whose values are label-map paths (NIfTI or MHD).
        dtype: torch dtype of the result (float32 by default; values are whole numbers).
        allow_missing_keys: don't raise if a key is missing.
    """

    def __init__(
        self, keys: KeysCollection, dtype: torch.dtype = torch.float32, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.dtype = dtype

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = load_label_volume(d[key], dtype=self.dtype)
        return d


class HUWindowd(MapTransform):
    """Clip HU to ``[hu_min, hu_max]`` and scale the window linearly to [0, 1].

    Args:
        keys: keys of HU images.
        hu_min: HU mapped to 0 (lower values clipped).
        hu_max: HU mapped to 1 (higher values clipped).
        allow_missing_keys: don't raise if a key is missing.
    """

    def __init__(
        self,
        keys: KeysCollection,
        hu_min: float = -1000.0,
        hu_max: float = 500.0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if not hu_max > hu_min:
            raise ValueError(f"HUWindowd needs hu_max > hu_min, got {hu_min}..{hu_max}")
        self.scaler = ScaleIntensityRange(a_min=hu_min, a_max=hu_max, b_min=0.0, b_max=1.0, clip=True)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.scaler(d[key])
        return d
