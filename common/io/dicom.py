"""DICOM readers: CT series to a HU volume with a RAS affine, and single radiograph files.

A CT series is put together the way DICOM defines it, never from file names:

- every file under the folder (sub-folders included) is opened as DICOM; files that are not DICOM, or
  DICOM objects without an image plane (DICOMDIR, structured reports, presentation states) are ignored;
- files are grouped by ``SeriesInstanceUID``; when several image series are present, the one with the
  wanted modality (CT) and the most slices is picked and the choice is logged by series number,
  description and slice count (never patient identifiers);
- slices are ordered by ``ImagePositionPatient`` projected on the slice normal, the cross product of the
  two ``ImageOrientationPatient`` direction cosines;
- ``RescaleSlope`` / ``RescaleIntercept`` are applied per slice, so the volume is in Hounsfield units;
- the affine maps voxel indices (i along a row, j along a column, k along the sorted slices) to world
  millimetres in RAS (MONAI's convention; DICOM's patient space is LPS, so x and y change sign).

Enhanced (multi-frame) CT objects are read from their per-frame functional groups the same way.
Everything a user can get wrong raises :class:`common.errors.InputDataError` naming the file or folder.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import InputDataError
from common.logging_utils import remember_identifiers

__all__ = [
    "RADIOGRAPH_MODALITIES",
    "LPS_TO_RAS",
    "read_dicom_series",
    "read_dicom_file",
    "is_dicom_file",
    "quiet_value_validation",
]

logger = logging.getLogger(__name__)

#: Modalities of projection radiographs (a CT reader names these when it is given one).
RADIOGRAPH_MODALITIES = ("CR", "DX", "DR", "RG", "MG", "RF", "XA", "PX", "IO")

#: Flips x and y: DICOM/ITK patient space (LPS) to NIfTI/MONAI world space (RAS).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

# Gaps between neighbouring slices may differ by this fraction of the median gap (scanner rounding of
# ImagePositionPatient is well below it; one missing slice doubles a gap and is far above it).
_GAP_TOLERANCE = 0.1


def is_dicom_file(path: str | os.PathLike) -> bool:
    """True if ``path`` is a file with the DICOM Part 10 preamble ("DICM" at byte 128)."""
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def _pydicom():
    import pydicom  # imported lazily: reading NIfTI or PNG does not need it

    return pydicom


@contextlib.contextmanager
def quiet_value_validation() -> Iterator[None]:
    """Don't let pydicom warn about invalid header values while we read.

    pydicom's value-validation warnings quote the value (``Invalid value for VR PN: 'DOE^JANE...'``) and
    go to both ``warnings`` and the ``pydicom`` logger, which could put patient identifiers in a log.
    Nothing we read depends on them: the tags we use are checked here with our own messages.
    """
    config = _pydicom().config
    previous = config.settings.reading_validation_mode
    config.settings.reading_validation_mode = config.IGNORE
    try:
        yield
    finally:
        config.settings.reading_validation_mode = previous


def _text(ds: Any, keyword: str, default: str = "") -> str:
    """A header value as text; a value pydicom cannot convert counts as absent."""
    try:
        value = ds.get(keyword)
    except Exception:
        return default
    return default if value is None or str(value).strip() == "" else str(value).strip()


def _int(ds: Any, keyword: str, default: int) -> int:
    try:
        value = ds.get(keyword)
        return default if value is None or str(value).strip() == "" else int(value)
    except Exception:
        return default


def _read_header(path: Path) -> Any | None:
    """The dataset without pixel data, or None when ``path`` is not a DICOM file."""
    pydicom = _pydicom()
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True)
    except (pydicom.errors.InvalidDicomError, OSError, EOFError, ValueError, KeyError, TypeError):
        return None
    remember_identifiers(header)  # whatever a later log line prints of this file is redacted
    return header


def _modality_problem(modality: str, allowed: Sequence[str]) -> str:
    if modality in RADIOGRAPH_MODALITIES:
        kind = "a projection radiograph"
    elif modality:
        kind = "not"
    else:
        kind = "of unknown modality (no Modality tag)"
    if kind == "not":
        return f"the DICOM modality is {modality}, not {'/'.join(allowed)}"
    return f"the DICOM modality is {modality or 'missing'}: {kind}, not {'/'.join(allowed)}"


def _pixels(ds: Any, path: Path) -> np.ndarray:
    """Decoded stored pixel values; a decoder problem becomes an InputDataError."""
    try:
        return ds.pixel_array
    except Exception as e:  # pydicom raises many types for missing handlers, short data, bad syntax
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", None) or str(syntax or "unknown")
        raise InputDataError(
            path, f"cannot decode the DICOM pixel data (transfer syntax {name}): {type(e).__name__}: {e}"
        ) from e


@dataclass
class _Frame:
    """One 2D slice of a series: where it is and how to get its HU values."""

    path: Path
    position: np.ndarray  # ImagePositionPatient, LPS mm
    row_cosine: np.ndarray  # direction of increasing column index (along a row)
    col_cosine: np.ndarray  # direction of increasing row index (down a column)
    spacing: tuple[float, float]  # PixelSpacing: (between rows, between columns)
    shape: tuple[int, int]  # (Rows, Columns)
    slope: float
    intercept: float
    frame_index: int | None = None  # index into a multi-frame object


def _floats(value: Any, n: int, what: str, path: Path) -> np.ndarray:
    try:
        out = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise InputDataError(path, f"{what} is not numeric: {value!r}") from e
    if out.shape != (n,) or not np.all(np.isfinite(out)):
        raise InputDataError(path, f"{what} must be {n} finite numbers, got {value!r}")
    return out


def _geometry(ds: Any, path: Path, frame: Any | None = None, shared: Any | None = None):
    """(position, orientation, pixel spacing, slope, intercept) of a classic file or one frame."""

    def from_groups(seq_name: str, attr: str):
        for group in (frame, shared):
            if (
                group is not None
                and seq_name in group
                and len(group[seq_name].value)
                and attr in group[seq_name][0]
            ):
                return group[seq_name][0].get(attr)
        return None

    if frame is None and shared is None:
        position = ds.get("ImagePositionPatient")
        orientation = ds.get("ImageOrientationPatient")
        spacing = ds.get("PixelSpacing")
        slope, intercept = ds.get("RescaleSlope", 1.0), ds.get("RescaleIntercept", 0.0)
    else:
        position = from_groups("PlanePositionSequence", "ImagePositionPatient")
        orientation = from_groups("PlaneOrientationSequence", "ImageOrientationPatient")
        spacing = from_groups("PixelMeasuresSequence", "PixelSpacing")
        slope = from_groups("PixelValueTransformationSequence", "RescaleSlope")
        intercept = from_groups("PixelValueTransformationSequence", "RescaleIntercept")
        slope = ds.get("RescaleSlope", 1.0) if slope is None else slope
        intercept = ds.get("RescaleIntercept", 0.0) if intercept is None else intercept
    if position is None:
        raise InputDataError(path, "no ImagePositionPatient: the slice cannot be placed in a volume")
    if orientation is None:
        raise InputDataError(path, "no ImageOrientationPatient: the slice orientation is unknown")
    if spacing is None:
        raise InputDataError(path, "no PixelSpacing: the voxel size is unknown")
    orientation = _floats(orientation, 6, "ImageOrientationPatient", path)
    row_cosine, col_cosine = orientation[:3], orientation[3:]
    if abs(np.linalg.norm(row_cosine) - 1) > 1e-2 or abs(np.linalg.norm(col_cosine) - 1) > 1e-2:
        raise InputDataError(path, f"ImageOrientationPatient is not two unit vectors: {orientation.tolist()}")
    spacing_arr = _floats(spacing, 2, "PixelSpacing", path)
    if np.any(spacing_arr <= 0):
        raise InputDataError(path, f"PixelSpacing must be positive, got {spacing_arr.tolist()}")
    try:
        slope_f, intercept_f = float(slope), float(intercept)
    except (TypeError, ValueError) as e:
        raise InputDataError(
            path, f"RescaleSlope/RescaleIntercept not numeric: {slope!r}, {intercept!r}"
        ) from e
    if slope_f == 0 or not np.isfinite(slope_f) or not np.isfinite(intercept_f):
        raise InputDataError(path, f"unusable RescaleSlope {slope_f} / RescaleIntercept {intercept_f}")
    return (
        _floats(position, 3, "ImagePositionPatient", path),
        row_cosine,
        col_cosine,
        (float(spacing_arr[0]), float(spacing_arr[1])),
        slope_f,
        intercept_f,
    )


def _frames_of(ds: Any, path: Path) -> list[_Frame]:
    """The slices one file contributes: one for a classic image, one per frame for enhanced CT."""
    shape = (_int(ds, "Rows", 0), _int(ds, "Columns", 0))
    n_frames = _int(ds, "NumberOfFrames", 1)
    if n_frames > 1:
        per_frame = ds.get("PerFrameFunctionalGroupsSequence")
        shared_seq = ds.get("SharedFunctionalGroupsSequence")
        shared = shared_seq[0] if shared_seq else None
        if per_frame is None or len(per_frame) != n_frames:
            raise InputDataError(
                path, f"a multi-frame object with {n_frames} frames but no per-frame positions"
            )
        frames = []
        for index, frame in enumerate(per_frame):
            pos, rc, cc, sp, slope, icpt = _geometry(ds, path, frame=frame, shared=shared)
            frames.append(_Frame(path, pos, rc, cc, sp, shape, slope, icpt, frame_index=index))
        return frames
    pos, rc, cc, sp, slope, icpt = _geometry(ds, path)
    return [_Frame(path, pos, rc, cc, sp, shape, slope, icpt)]


def _series_label(header: Any, n: int) -> str:
    # no SeriesDescription: it is free text that people type names and record numbers into
    number = _text(header, "SeriesNumber", "?")
    return f"series {number} ({_text(header, 'Modality', '?')}, {n} slice{'s' * (n != 1)})"


def _collect(folder: Path) -> dict[str, list[tuple[Path, Any]]]:
    """DICOM image files under ``folder`` grouped by SeriesInstanceUID."""
    series: dict[str, list[tuple[Path, Any]]] = {}
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            path = Path(root) / name
            header = _read_header(path)
            # Objects without an image plane (DICOMDIR, SR, presentation states, ...) are not slices.
            if header is None or "Rows" not in header or "Columns" not in header:
                continue
            uid = _text(header, "SeriesInstanceUID", "no-series-uid")
            series.setdefault(uid, []).append((path, header))
    return series


def _n_slices(files: list[tuple[Path, Any]]) -> int:
    return sum(_int(h, "NumberOfFrames", 1) for _, h in files)


def _pick_series(
    folder: Path, series: dict[str, list[tuple[Path, Any]]], series_uid: str | None, modalities: Sequence[str]
) -> tuple[str, list[tuple[Path, Any]]]:
    if not series:
        volumes = (
            sorted(
                p.name
                for p in folder.iterdir()
                if p.name.lower().endswith((".nii", ".nii.gz", ".mhd", ".mha"))
            )
            if folder.is_dir()
            else []
        )
        hint = (
            f"; it holds volume files ({', '.join(volumes[:3])}): give a file path instead" if volumes else ""
        )
        raise InputDataError(
            folder, f"no DICOM image files found (the folder has no readable DICOM slices){hint}"
        )
    if series_uid is not None:
        if series_uid not in series:
            raise InputDataError(
                folder, f"no series with SeriesInstanceUID {series_uid}; found {len(series)} series"
            )
        chosen = series_uid
    else:
        wanted = {
            uid: files
            for uid, files in series.items()
            if not modalities or _text(files[0][1], "Modality").upper() in modalities
        }
        if not wanted:
            found = sorted({_text(f[0][1], "Modality", "missing") for f in series.values()})
            only = next(iter(series.values()))[0][1]
            problem = (
                _modality_problem(_text(only, "Modality"), modalities)
                if len(found) == 1
                else f"no {'/'.join(modalities)} series; the DICOM modalities found are {', '.join(found)}"
            )
            raise InputDataError(folder, problem)
        chosen = max(wanted, key=lambda uid: (_n_slices(wanted[uid]), uid))
        if len(series) > 1:
            others = "; ".join(
                _series_label(f[0][1], _n_slices(f)) for uid, f in series.items() if uid != chosen
            )
            logger.info(
                "%s holds %d DICOM series: reading %s (the %s series with the most slices); not read: %s",
                folder,
                len(series),
                _series_label(series[chosen][0][1], _n_slices(series[chosen])),
                "/".join(modalities) or "image",
                others,
            )
    files = series[chosen]
    modality = _text(files[0][1], "Modality").upper()
    if modalities and modality not in modalities:
        raise InputDataError(folder, _modality_problem(modality, modalities))
    return chosen, files


def _quietly(function: Callable) -> Callable:
    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with quiet_value_validation():
            return function(*args, **kwargs)

    return wrapper


@_quietly
def read_dicom_series(
    folder: str | os.PathLike,
    series_uid: str | None = None,
    modalities: Sequence[str] = ("CT",),
    dtype: Any = np.float32,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Read a DICOM series into a volume in real-world values (HU for CT).

    Args:
        folder: a folder holding the series (sub-folders are searched too), or one DICOM file; a single
            file is read together with the other slices of its series in the same folder (a multi-frame
            enhanced CT file on its own is a whole volume).
        series_uid: read this SeriesInstanceUID; default: the ``modalities`` series with the most slices.
        modalities: accepted DICOM Modality values (upper case); empty accepts any modality.
        dtype: output dtype of the values.

    Returns:
        ``(array, affine, meta)``: ``array`` of shape (X, Y, Z) = (columns, rows, sorted slices) after
        RescaleSlope/Intercept; ``affine`` 4 x 4 voxel index -> RAS millimetres; ``meta`` with
        ``spacing`` (mm, along X, Y, Z), ``series_uid``, ``series_description``, ``series_number``,
        ``modality``, ``n_slices``, ``files`` (the slice files in the order of the Z axis).

    Raises:
        InputDataError: no DICOM image in the folder, wrong modality, a single slice, slices that
            disagree on size/orientation/spacing, missing position tags, duplicate positions, uneven
            slice gaps (a missing slice), undecodable pixel data.
    """
    source = Path(folder)
    modalities = tuple(m.upper() for m in modalities)
    if not source.exists():
        raise InputDataError(source, "no such file or folder")
    if source.is_file():
        header = _read_header(source)
        if header is None and is_dicom_file(source):
            raise InputDataError(source, "a truncated or corrupt DICOM file (its header cannot be parsed)")
        if header is None:
            raise InputDataError(source, "not a DICOM file (cannot be parsed as DICOM)")
        if "Rows" not in header:
            raise InputDataError(source, "a DICOM object without an image (no Rows/Columns)")
        if _int(header, "NumberOfFrames", 1) > 1:
            series = {_text(header, "SeriesInstanceUID", "no-series-uid"): [(source, header)]}
            series_uid = None
        else:
            # One slice of a series: read the series it belongs to from its folder.
            series_uid = _text(header, "SeriesInstanceUID", "no-series-uid")
            series = {series_uid: [(source, header)]}
            for path, other in _collect(source.parent).get(series_uid, []):
                if path.resolve() != source.resolve():
                    series[series_uid].append((path, other))
        folder_for_errors = source
    else:
        series = _collect(source)
        folder_for_errors = source
    uid, files = _pick_series(folder_for_errors, series, series_uid, modalities)
    first_header = files[0][1]

    frames: list[_Frame] = []
    for path, header in files:
        try:
            frames.extend(_frames_of(header, path))
        except (ValueError, TypeError, AttributeError, KeyError, IndexError) as e:
            if isinstance(e, InputDataError):
                raise
            # a geometry or rescale tag pydicom cannot convert (the message names the tag, not patient data)
            raise InputDataError(path, f"a DICOM header value cannot be read: {type(e).__name__}") from e
    if len(frames) < 2:
        raise InputDataError(
            folder_for_errors,
            "a single DICOM slice: a CT volume needs at least 2 slices of the same series "
            "(2D images are not supported by this reader)",
        )

    ref = frames[0]
    for f in frames[1:]:
        if f.shape != ref.shape:
            raise InputDataError(f.path, f"slice size {f.shape} differs from {ref.shape} of {ref.path.name}")
        if not (
            np.allclose(f.row_cosine, ref.row_cosine, atol=1e-3)
            and np.allclose(f.col_cosine, ref.col_cosine, atol=1e-3)
        ):
            raise InputDataError(f.path, "ImageOrientationPatient differs between slices of the series")
        if not np.allclose(f.spacing, ref.spacing, rtol=1e-3):
            raise InputDataError(
                f.path, f"PixelSpacing {f.spacing} differs from {ref.spacing} of {ref.path.name}"
            )

    normal = np.cross(ref.row_cosine, ref.col_cosine)
    distances = np.array([float(np.dot(f.position, normal)) for f in frames])
    order = np.argsort(distances, kind="stable")
    frames = [frames[i] for i in order]
    distances = distances[order]
    gaps = np.diff(distances)
    if np.any(gaps < 1e-3):
        k = int(np.argmin(gaps))
        raise InputDataError(
            folder_for_errors,
            f"two slices at the same position ({distances[k]:.3f} mm along the slice normal: "
            f"{frames[k].path.name}, {frames[k + 1].path.name}); the folder may hold duplicates or "
            "several acquisitions of one series",
        )
    median_gap = float(np.median(gaps))
    if np.any(np.abs(gaps - median_gap) > _GAP_TOLERANCE * median_gap):
        k = int(np.argmax(np.abs(gaps - median_gap)))
        raise InputDataError(
            folder_for_errors,
            f"uneven slice spacing: gaps from {gaps.min():.3f} to {gaps.max():.3f} mm (median {median_gap:.3f}); "
            f"between {frames[k].path.name} and {frames[k + 1].path.name} the gap is {gaps[k]:.3f} mm "
            "(a missing slice?)",
        )

    rows, cols = ref.shape
    volume = np.empty((cols, rows, len(frames)), dtype=dtype)
    decoded: dict[Path, Any] = {}
    pydicom = _pydicom()
    for k, f in enumerate(frames):
        if f.path not in decoded:
            try:
                decoded = {f.path: pydicom.dcmread(f.path)}  # keep one file's pixels in memory at a time
            except Exception as e:
                raise InputDataError(f.path, f"cannot read the DICOM file: {type(e).__name__}: {e}") from e
        ds = decoded[f.path]
        pixels = _pixels(ds, f.path)
        if f.frame_index is not None:
            pixels = pixels[f.frame_index]
        if pixels.ndim != 2:
            raise InputDataError(
                f.path,
                f"pixel data of shape {pixels.shape} is not one grayscale slice "
                f"(PhotometricInterpretation {ds.get('PhotometricInterpretation', '?')})",
            )
        if pixels.shape != (rows, cols):
            raise InputDataError(f.path, f"pixel data of shape {pixels.shape}, header says {(rows, cols)}")
        volume[:, :, k] = (pixels.astype(np.float64) * f.slope + f.intercept).T

    # Columns of the affine: step along i (a row), along j (a column), along k (sorted slices).
    step_k = (frames[-1].position - frames[0].position) / (len(frames) - 1)
    tilt = float(
        np.degrees(np.arccos(np.clip(abs(np.dot(step_k, normal)) / np.linalg.norm(step_k), 0.0, 1.0)))
    )
    if tilt > 0.5:
        # Gantry tilt: slices are stacked off the normal. The sheared affine keeps the exact geometry;
        # resampling (Spacingd) to an orthogonal grid follows it.
        logger.warning(
            "%s: slices are stacked %.1f degrees off their normal (gantry tilt)", folder_for_errors, tilt
        )
    affine_lps = np.eye(4)
    affine_lps[:3, 0] = ref.row_cosine * ref.spacing[1]
    affine_lps[:3, 1] = ref.col_cosine * ref.spacing[0]
    affine_lps[:3, 2] = step_k
    affine_lps[:3, 3] = frames[0].position
    affine = LPS_TO_RAS @ affine_lps
    meta = {
        "spacing": (ref.spacing[1], ref.spacing[0], float(np.linalg.norm(step_k))),
        "series_uid": uid,
        "series_description": _text(first_header, "SeriesDescription"),
        "series_number": _int(first_header, "SeriesNumber", -1),
        "modality": _text(first_header, "Modality"),
        "n_slices": len(frames),
        "files": [str(f.path) for f in frames],
    }
    return volume, affine, meta


def read_dicom_file(path: str | os.PathLike, force: bool = False) -> Any:
    """Open one DICOM file with its pixel data; anything unreadable becomes an InputDataError.

    Args:
        path: the file.
        force: parse files without the DICOM Part 10 preamble (old ACR-NEMA files).
    """
    pydicom = _pydicom()
    path = Path(path)
    if not path.is_file():
        raise InputDataError(path, "no such file")
    try:
        ds = pydicom.dcmread(path, force=force)
    except pydicom.errors.InvalidDicomError as e:
        raise InputDataError(path, "not a DICOM file (no DICOM preamble; is it a text or image file?)") from e
    except Exception as e:
        raise InputDataError(
            path, f"cannot read the DICOM file (truncated or corrupt?): {type(e).__name__}: {e}"
        ) from e
    remember_identifiers(ds)  # whatever a later log line prints of this file is redacted
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise InputDataError(path, "a DICOM object without pixel data (not an image)")
    return ds
