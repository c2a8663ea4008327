"""Writers for synthetic CT volumes: NIfTI (RAS affine), DICOM CT series (LPS headers) and MetaImage.

Every volume handed to these functions is an array indexed ``(i, j, k)`` with a 4 x 4 affine that maps
voxel indices to world millimetres in RAS (the project convention, see ``docs/architecture.md``). The
writers convert to each format's own physical space: NIfTI keeps the RAS affine as its qform/sform,
DICOM and MetaImage are LPS (x grows to the patient's left, y to posterior, z to superior).

All files are written under a temporary name and renamed, and the bytes depend only on the inputs (no
time stamps, UIDs derived from the caller's seed), so a generator run twice with one seed gives identical
files.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from common.io.atomic import atomic_path

__all__ = [
    "RAS_TO_LPS",
    "deterministic_uid",
    "lps_view",
    "write_nifti",
    "write_mhd_volume",
    "write_dicom_ct_series",
]

#: diag(-1, -1, 1, 1): maps RAS world coordinates to LPS and back.
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])

# pydicom's registered UID root: synthetic UIDs must never look like a real institution's.
_UID_ROOT = "1.2.826.0.1.3680043.8.498."


def deterministic_uid(*parts: object) -> str:
    """A DICOM UID that depends only on ``parts`` (seed, case, role), under pydicom's UID root.

    Args:
        parts: anything with a stable ``str()`` (ints, strings).

    Returns:
        a UID of at most 64 characters.
    """
    from pydicom.uid import generate_uid

    return str(generate_uid(prefix=_UID_ROOT, entropy_srcs=["synthetic-ct", *map(str, parts)]))


def _check_axis_aligned(affine: np.ndarray) -> np.ndarray:
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise ValueError(f"affine must be 4 x 4, got {affine.shape}")
    linear = affine[:3, :3]
    off_diagonal = linear - np.diag(np.diag(linear))
    if np.abs(off_diagonal).max() > 1e-6 * np.abs(linear).max() or np.any(np.diag(linear) == 0):
        raise ValueError("the synthetic writers expect an axis-aligned affine (diagonal 3 x 3 part)")
    return affine


def lps_view(array: np.ndarray, affine_ras: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Re-index an axis-aligned RAS volume so that its index axes point to +L, +P and +S.

    This is how LUNA16's MetaImage files and a standard axial DICOM series are laid out (identity
    direction cosines in LPS).

    Args:
        array: the volume ``(X, Y, Z)``.
        affine_ras: its voxel-to-RAS affine (diagonal linear part).

    Returns:
        ``(array_lps, spacing, origin_lps)``: a (possibly flipped) view of ``array``, the voxel size
        ``(sx, sy, sz)`` in mm, and the LPS position of voxel ``(0, 0, 0)`` of that view.
    """
    affine_lps = RAS_TO_LPS @ _check_axis_aligned(affine_ras)
    steps = np.diag(affine_lps[:3, :3]).copy()
    index_of_origin = np.zeros(3)
    view = array
    for axis in range(3):
        if steps[axis] < 0:
            view = np.flip(view, axis=axis)
            index_of_origin[axis] = array.shape[axis] - 1
    origin_lps = affine_lps[:3, :3] @ index_of_origin + affine_lps[:3, 3]
    return view, np.abs(steps), origin_lps


def write_nifti(
    path: str | os.PathLike, array: np.ndarray, affine_ras: np.ndarray, dtype: np.dtype | type = np.int16
) -> Path:
    """Write a NIfTI-1 file (``.nii`` or ``.nii.gz``) with ``affine_ras`` as both qform and sform.

    Args:
        path: output file name.
        array: the volume ``(X, Y, Z)``; values are cast to ``dtype`` (rounded first for integer types).
        affine_ras: voxel-to-RAS affine.
        dtype: on-disk data type (``int16`` for HU like the MSD files, ``uint8`` for labels).

    Returns:
        the written path.
    """
    import nibabel as nib

    dtype = np.dtype(dtype)
    data = np.asarray(array)
    if np.issubdtype(dtype, np.integer) and not np.issubdtype(data.dtype, np.integer):
        info = np.iinfo(dtype)
        data = np.clip(np.rint(data), info.min, info.max)
    # NIfTI stores x fastest: a Fortran-ordered array is written without a transposing copy
    data = np.asfortranarray(data.astype(dtype, copy=False))
    affine = np.asarray(affine_ras, dtype=np.float64)
    image = nib.Nifti1Image(data, affine)
    image.header.set_data_dtype(dtype)
    image.header.set_xyzt_units("mm", "sec")
    image.set_qform(affine, code=1)  # 1 = scanner-based anatomical coordinates
    image.set_sform(affine, code=1)
    image.header["descrip"] = b"synthetic chest CT phantom"
    with atomic_path(path) as tmp:
        nib.save(image, tmp)
    return Path(path)


def write_mhd_volume(
    path: str | os.PathLike, array: np.ndarray, affine_ras: np.ndarray, dtype: np.dtype | type = np.int16
) -> Path:
    """Write a MetaImage (``.mhd`` + ``.raw``) in LPS like LUNA16 (identity direction, LPS origin).

    Args:
        path: the ``.mhd`` file name (the ``.raw`` goes beside it).
        array: the volume ``(X, Y, Z)`` in the RAS index order of ``affine_ras``.
        affine_ras: its voxel-to-RAS affine (axis-aligned).
        dtype: element type on disk.

    Returns:
        the ``.mhd`` path.
    """
    from common.io.mhd import write_mhd

    dtype = np.dtype(dtype)
    data = np.asarray(array)
    if np.issubdtype(dtype, np.integer) and not np.issubdtype(data.dtype, np.integer):
        info = np.iinfo(dtype)
        data = np.clip(np.rint(data), info.min, info.max)
    view, spacing, origin_lps = lps_view(data.astype(dtype, copy=False), affine_ras)
    return Path(write_mhd(path, view, tuple(spacing), tuple(origin_lps)))


def write_dicom_ct_series(
    folder: str | os.PathLike,
    hu: np.ndarray,
    affine_ras: np.ndarray,
    uid_parts: Sequence[object],
    patient_number: int = 1,
    series_uid: str | None = None,
    study_uid: str | None = None,
    series_description: str = "Synthetic chest CT",
    rescale_intercept: float = -1024.0,
    kvp: float = 120.0,
) -> Path:
    """Write ``hu`` as a DICOM CT series (CT Image Storage, one file per axial slice).

    Pixels are stored as signed 16-bit integers ``(HU - RescaleIntercept) / RescaleSlope`` with
    ``RescaleSlope`` 1. The slices are axial, ``ImageOrientationPatient`` ``[1,0,0,0,1,0]`` (columns to
    the patient's left, rows to posterior) and ``ImagePositionPatient`` in LPS; instance 1 is the most
    superior slice (the order a head-first acquisition writes them), so a reader has to sort by position.
    Patient identifiers are synthetic (``SYNTH^0001``) and the dates are empty.

    Args:
        folder: output folder (replaced as a whole: written to a temporary folder, then renamed).
        hu: the volume ``(X, Y, Z)`` in HU, RAS index order.
        affine_ras: its voxel-to-RAS affine (axis-aligned, slices along the third axis).
        uid_parts: seed, case id, ...: every UID is derived from these, so equal inputs give equal bytes.
        patient_number: number in the synthetic patient name and id.
        series_uid: SeriesInstanceUID to use (default: derived from ``uid_parts``).
        study_uid: StudyInstanceUID to use (default: derived from ``uid_parts``).
        series_description: SeriesDescription.
        rescale_intercept: RescaleIntercept (-1024 like most scanners).
        kvp: tube voltage written to KVP.

    Returns:
        the series folder.
    """
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

    folder = Path(folder)
    view, spacing, origin_lps = lps_view(np.asarray(hu), affine_ras)
    n_cols, n_rows, n_slices = view.shape  # column index -> +L (x), row index -> +P (y)
    stored = np.rint(np.asarray(view, dtype=np.float32) - np.float32(rescale_intercept))
    stored = np.clip(stored, -32768, 32767).astype("<i2")

    study_uid = study_uid or deterministic_uid(*uid_parts, "study")
    series_uid = series_uid or deterministic_uid(*uid_parts, "series")
    frame_uid = deterministic_uid(*uid_parts, "frame-of-reference")
    patient_name = f"SYNTH^{patient_number:04d}"
    patient_id = f"SYNTH{patient_number:04d}"

    # one dataset holds the attributes every slice shares; per slice only identity, position and pixels change
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.StudyDate = ""
    ds.StudyTime = ""
    ds.AccessionNumber = ""
    ds.Modality = "CT"
    ds.Manufacturer = "SYNTHETIC"
    ds.InstitutionName = "Synthetic data engine"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "Synthetic chest CT phantom"
    ds.SeriesDescription = series_description
    ds.ManufacturerModelName = "common.synthetic"
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "synthetic phantom: no patient data"
    ds.BodyPartExamined = "CHEST"
    ds.SliceThickness = f"{spacing[2]:.6g}"
    ds.SpacingBetweenSlices = f"{spacing[2]:.6g}"
    ds.KVP = f"{kvp:g}"
    ds.ConvolutionKernel = "STANDARD"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = 1
    ds.ImagePositionPatient = [f"{v:.6f}" for v in origin_lps]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.SliceLocation = f"{origin_lps[2]:.6f}"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = n_rows
    ds.Columns = n_cols
    ds.PixelSpacing = [f"{spacing[1]:.6g}", f"{spacing[0]:.6g}"]  # row spacing (y), column spacing (x)
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.WindowCenter = "-600"
    ds.WindowWidth = "1500"
    ds.RescaleIntercept = f"{rescale_intercept:g}"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.PixelData = b""

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        for order, k in enumerate(range(n_slices - 1, -1, -1)):  # most superior slice first
            instance = order + 1
            sop_uid = deterministic_uid(*uid_parts, "slice", k)
            meta.MediaStorageSOPInstanceUID = sop_uid
            ds.SOPInstanceUID = sop_uid
            ds.InstanceNumber = instance
            position = origin_lps + np.array([0.0, 0.0, spacing[2] * k])
            ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
            ds.SliceLocation = f"{position[2]:.6f}"
            # DICOM pixel (row r, column c) is voxel (c, r) of the LPS view
            ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()
            ds.save_as(tmp_dir / f"CT{instance:06d}.dcm", enforce_file_format=True)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp_dir, folder)
        folder.chmod(0o755)  # mkdtemp made it private
    finally:
        if tmp_dir.exists():
            shutil.rmtree(tmp_dir)
    return folder
