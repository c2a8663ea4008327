"""Writes small, valid DICOM files for the reader tests (CT series, radiographs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

DIGITAL_XRAY_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"


def base_dataset(sop_class: str, modality: str) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "SECRET-ID-123"
    ds.StudyInstanceUID = generate_uid()
    return ds


def write_ct_series(
    folder: Path,
    hu: np.ndarray,
    spacing=(0.7, 0.8, 2.5),
    origin_lps=(-120.0, -110.0, 30.0),
    row_cosine=(1.0, 0.0, 0.0),
    col_cosine=(0.0, 1.0, 0.0),
    slope: float = 1.0,
    intercept: float = -1024.0,
    names: list[str] | None = None,
    series_description: str = "CHEST 2.5mm",
    series_number: int = 3,
    modality: str = "CT",
    skip_positions: bool = False,
    shift_per_slice=(0.0, 0.0, 0.0),
) -> tuple[list[Path], np.ndarray]:
    """Write ``hu`` (X=columns, Y=rows, Z=slices) as one file per slice; returns files and the RAS affine.

    Slice k lies at ``origin + k * (spacing[2] * normal + shift_per_slice)`` (a shift: gantry tilt); file names come from ``names`` (shuffle them to
    check that the reader does not order by name).
    """
    folder.mkdir(parents=True, exist_ok=True)
    rc, cc = np.asarray(row_cosine, float), np.asarray(col_cosine, float)
    normal = np.cross(rc, cc)
    series_uid, frame_uid = generate_uid(), generate_uid()
    stored = np.round((hu - intercept) / slope).astype(np.int16)
    files = []
    for k in range(hu.shape[2]):
        ds = base_dataset(CTImageStorage, modality)
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.SeriesDescription = series_description
        ds.SeriesNumber = series_number
        ds.InstanceNumber = k + 1
        position = np.asarray(origin_lps, float) + k * (
            spacing[2] * normal + np.asarray(shift_per_slice, float)
        )
        if not skip_positions:
            ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*rc, *cc)]
        ds.PixelSpacing = [f"{spacing[1]:g}", f"{spacing[0]:g}"]  # (between rows, between columns)
        ds.SliceThickness = f"{spacing[2]:g}"
        ds.RescaleSlope = f"{slope:g}"
        ds.RescaleIntercept = f"{intercept:g}"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = hu.shape[1], hu.shape[0]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()
        name = names[k] if names else f"slice{k:03d}.dcm"
        path = folder / name
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    affine_lps = np.eye(4)
    affine_lps[:3, 0] = rc * spacing[0]
    affine_lps[:3, 1] = cc * spacing[1]
    affine_lps[:3, 2] = normal * spacing[2] + np.asarray(shift_per_slice, float)
    affine_lps[:3, 3] = origin_lps
    return files, np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine_lps


def write_radiograph(
    path: Path,
    pixels: np.ndarray,
    modality: str = "DX",
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    window: tuple[float, float] | None = None,
    slope: float | None = None,
    intercept: float | None = None,
    frames: int = 1,
    voi_lut: np.ndarray | None = None,
) -> Path:
    """Write a radiograph (``pixels`` rows x columns, unsigned) as a DICOM file."""
    ds = base_dataset(DIGITAL_XRAY_STORAGE, modality)
    ds.SeriesInstanceUID = generate_uid()
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits_stored, bits_stored - 1, 0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = f"{window[0]:g}", f"{window[1]:g}"
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = f"{slope:g}", f"{intercept or 0:g}", "US"
    if voi_lut is not None:  # a VOI LUT for stored values 0..len-1, 16-bit entries
        item = Dataset()
        item.add_new(0x00283002, "US", [len(voi_lut), 0, 16])  # LUT Descriptor
        item.add_new(0x00283006, "US", [int(v) for v in voi_lut])  # LUT Data
        ds.VOILUTSequence = [item]
    data = np.asarray(pixels, dtype=np.uint16)
    if frames > 1:
        ds.NumberOfFrames = frames
        data = np.stack([data] * frames)
    ds.PixelData = data.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def read_back(path: Path) -> Dataset:
    return pydicom.dcmread(path)
