"""Reading 2D images (PNG/JPEG/TIFF/BMP files and single-frame DICOM) to one grey channel in [0, 1]."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import InputDataError
from common.io.dicom import RADIOGRAPH_MODALITIES, _int, _text, quiet_value_validation, read_dicom_file
from common.transforms._meta import check_file, lower_name, sniff_format

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
_IMAGE_FORMATS = ("PNG", "JPEG", "TIFF", "BMP", "GIF")
# ITU-R 601-2 luma, as PIL's convert("L"), computed in float so 16-bit colour keeps its precision.
_LUMA = np.array([0.299, 0.587, 0.114])
#: largest image accepted, checked from the header before any pixel is decoded: 179 million pixels (PIL's
#: own decompression-bomb limit; a 13,000 x 13,000 film), at most 1 GiB once decoded
MAX_IMAGE_PIXELS = 2 * 89_478_485
MAX_DECODED_BYTES = 1 << 30
#: images whose longer side exceeds this are decoded (JPEG) or reduced (other formats) to at most this
#: side before they become float arrays: no network here looks at more than 512 pixels, and a
#: 12,000-pixel film as float64 would take over a gigabyte
MAX_DECODED_SIDE = 4096


def image_info(
    fmt: str, modality: str = "", photometric: str = "", bits: int = 8, inverted: bool = False
) -> dict[str, Any]:
    """The same keys for every source, so that a batch mixing PNG and DICOM collates."""
    return {
        "format": fmt,
        "modality": modality,
        "photometric": photometric,
        "bits": int(bits),
        "inverted": inverted,
    }


def _grey_from_colour(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) -> (H, W): exact when the channels are equal (a grey image saved as RGB)."""
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
        return rgb[..., 0].astype(np.float64)
    return rgb[..., :3].astype(np.float64) @ _LUMA


def read_image_file(path: str | os.PathLike, what: str = "an image") -> tuple[np.ndarray, dict[str, Any]]:
    """Read PNG/JPEG/TIFF/BMP to a (H, W) float32 array in [0, 1].

    8-bit images are divided by 255 and 16-bit images by 65535, so the full 16-bit range is kept
    (nothing is squeezed through 8 bits). Colour (RGB, RGBA, CMYK, YCbCr), palette and grey+alpha images
    become one grey channel (alpha is ignored; grey stored as RGB is taken exactly). Float images keep
    values in [0, 1] and are min-max scaled otherwise.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with warnings.catch_warnings():
            # PIL warns above half its limit and raises above it; the size check below says which file
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
        with img:
            _check_decoded_size(path, img.size, len(img.getbands()), _bytes_per_band(img.mode))
            fmt = str(img.format or "image").lower()
            n_frames = getattr(img, "n_frames", 1)
            img = _decode_bounded(img)  # decode now: a truncated file fails here, not later in a worker
            mode = img.mode
            if mode == "P":
                img = img.convert("RGBA" if "transparency" in img.info else "RGB")
            elif mode in ("CMYK", "YCbCr", "HSV", "LAB", "PA", "La", "RGBa", "RGBX"):
                img = img.convert("RGB")
            array = np.asarray(img)
    except Image.DecompressionBombError as e:
        raise InputDataError(path, f"refused before decoding: {e} (a decompression bomb, not a film)") from e
    except UnidentifiedImageError as e:
        raise InputDataError(
            path, f"not a readable image file (PNG/JPEG/TIFF/BMP expected for {what})"
        ) from e
    except (OSError, ValueError, SyntaxError) as e:
        raise InputDataError(path, f"the image cannot be decoded (truncated or corrupt file): {e}") from e
    info = image_info(fmt, photometric=mode, bits=1 if array.dtype == bool else 8 * array.dtype.itemsize)
    if n_frames > 1:
        raise InputDataError(path, f"an image with {n_frames} frames; {what} must be one frame")
    if array.ndim == 3:
        if array.shape[-1] == 2:  # LA: grey + alpha
            array = array[..., 0]
        else:
            array = _grey_from_colour(array) / (255.0 if array.dtype == np.uint8 else 65535.0)
            return _finish(array, path, what), info
    if array.dtype == bool:
        grey = array.astype(np.float64)
    elif array.dtype == np.uint8:
        grey = array / 255.0
    elif array.dtype in (np.uint16, np.dtype(">u2"), np.dtype("<u2")) or mode.startswith("I;16"):
        grey = array.astype(np.float64) / 65535.0
    elif np.issubdtype(array.dtype, np.integer):  # mode "I": 32-bit container, usually 16-bit data
        top = 65535.0 if array.min() >= 0 and array.max() <= 65535 else None
        grey = _minmax(array, path) if top is None else array / top
        info["bits"] = 16 if top else 32
    else:
        finite = array[np.isfinite(array)]
        grey = array if finite.size and finite.min() >= 0 and finite.max() <= 1 else _minmax(array, path)
    return _finish(np.asarray(grey, dtype=np.float64), path, what), info


def _bytes_per_band(mode: str) -> int:
    if mode in ("I", "F", "I;32", "RGBA;16"):
        return 4
    return 2 if "16" in mode else 1


def _check_decoded_size(path: Path, size: tuple[int, int], bands: int, bytes_per_band: int) -> None:
    """Refuse, from the header alone, an image too large to decode (a decompression bomb)."""
    width, height = int(size[0]), int(size[1])
    pixels, decoded = width * height, width * height * bands * bytes_per_band
    if pixels > MAX_IMAGE_PIXELS or decoded > MAX_DECODED_BYTES:
        raise InputDataError(
            path,
            f"refused before decoding: {width} x {height} pixels ({decoded / 2**30:.1f} GiB decoded) is over "
            f"the limit of {MAX_IMAGE_PIXELS:,} pixels / {MAX_DECODED_BYTES / 2**30:.0f} GiB for one image",
        )


def _decode_bounded(img: Any) -> Any:
    """Decode ``img`` with its longer side at most ``MAX_DECODED_SIDE``: JPEG decodes at 1/2..1/8 scale
    directly (``draft``), other formats are reduced by an integer factor right after decoding."""
    longer = max(img.size)
    if longer <= MAX_DECODED_SIDE:
        img.load()
        return img
    factor = -(-longer // MAX_DECODED_SIDE)  # ceil
    if img.format == "JPEG":
        img.draft(img.mode, (img.size[0] // factor, img.size[1] // factor))
    img.load()
    if max(img.size) > MAX_DECODED_SIDE:
        if img.mode in ("P", "1"):  # reduce() averages values, which a palette index or a bit cannot be
            img = (
                img.convert("RGBA" if "transparency" in img.info else "RGB")
                if img.mode == "P"
                else img.convert("L")
            )
        img = img.reduce(-(-max(img.size) // MAX_DECODED_SIDE))
    return img


def _minmax(array: np.ndarray, path: Path) -> np.ndarray:
    array = np.asarray(array, dtype=np.float64)
    finite = np.isfinite(array)
    if not finite.any():
        raise InputDataError(path, "no finite pixel value (all NaN/inf)")
    lo, hi = array[finite].min(), array[finite].max()
    return np.where(finite, (array - lo) / (hi - lo if hi > lo else 1.0), 0.0)


def _finish(grey: np.ndarray, path: Path, what: str) -> np.ndarray:
    if grey.ndim != 2 or min(grey.shape) < 2:
        raise InputDataError(path, f"image of shape {grey.shape} is not a 2D picture, so it cannot be {what}")
    if not np.all(np.isfinite(grey)):
        raise InputDataError(path, "the image contains NaN/inf values")
    return np.clip(grey, 0.0, 1.0).astype(np.float32)


def _output_range(ds: Any, arr: np.ndarray) -> tuple[float, float]:
    """The range of pydicom's VOI output, so it maps to [0, 1] as a display would show it."""
    from pydicom.pixels import apply_voi_lut

    voi_seq = ds.get("VOILUTSequence")
    if voi_seq and voi_seq[0].get("LUTData") is not None:
        lut = np.asarray(voi_seq[0].LUTData, dtype=np.float64)
        return float(lut.min()), float(lut.max())
    if ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        # Windowing clips to [y_min, y_max]: probe it with values far outside any window.
        probe = apply_voi_lut(np.array([-1e12, 1e12]), ds)
        return float(np.min(probe)), float(np.max(probe))
    return float(arr.min()), float(arr.max())


def read_dicom_image(
    path: str | os.PathLike,
    modalities: Sequence[str],
    what: str,
    apply_voi: bool = True,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a single-frame DICOM image to (H, W) float32 in [0, 1] as a display would show it.

    Modality LUT / rescale (``apply_modality_lut``), then the first VOI LUT or window
    (``apply_voi_lut``; without one, the image's own min..max), scaled to [0, 1]; MONOCHROME1 (and
    MONOCHROME2 with an INVERSE presentation LUT) inverted so that bright is dense tissue/bone.
    """
    with quiet_value_validation():
        try:
            return _read_dicom_image(path, modalities, what, apply_voi)
        except InputDataError:
            raise
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
            # a header value pydicom cannot convert, or a LUT/window that does not fit the pixel data
            raise InputDataError(path, f"unusable DICOM header ({type(e).__name__}: {str(e)[:200]})") from e


def _read_dicom_image(
    path: str | os.PathLike, modalities: Sequence[str], what: str, apply_voi: bool
) -> tuple[np.ndarray, dict[str, Any]]:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    path = Path(path)
    ds = read_dicom_file(path)
    modality = _text(ds, "Modality").upper()
    allowed = tuple(m.upper() for m in modalities)
    if allowed and modality not in allowed:
        if modality in ("CT", "MR", "PT", "NM"):
            problem = f"the DICOM modality is {modality} (a cross-sectional slice), not {what}"
        else:
            problem = (
                f"the DICOM modality is {modality or 'missing'}, not {what} ({'/'.join(allowed)} expected)"
            )
        raise InputDataError(path, problem)
    n_frames = _int(ds, "NumberOfFrames", 1)
    if n_frames > 1:
        raise InputDataError(path, f"a multi-frame DICOM ({n_frames} frames); {what} must be a single frame")
    bytes_per_sample = -(-_int(ds, "BitsAllocated", 16) // 8)
    _check_decoded_size(
        path, (_int(ds, "Columns", 0), _int(ds, "Rows", 0)), _int(ds, "SamplesPerPixel", 1), bytes_per_sample
    )
    try:
        pixels = ds.pixel_array
    except Exception as e:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", None) or str(syntax or "unknown")
        raise InputDataError(
            path, f"cannot decode the DICOM pixel data (transfer syntax {name}): {type(e).__name__}: {e}"
        ) from e
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    info = image_info("dicom", modality, photometric, bits=int(ds.get("BitsStored", 16) or 16))
    spacing = ds.get("ImagerPixelSpacing") or ds.get("PixelSpacing")
    if spacing is not None:
        info["pixel_spacing"] = (float(spacing[0]), float(spacing[1]))
    if int(ds.get("SamplesPerPixel", 1) or 1) > 1 or pixels.ndim == 3:
        # Colour secondary captures: pydicom already converted YBR to RGB.
        top = float(2 ** int(ds.get("BitsStored", 8)) - 1)
        return _finish(_grey_from_colour(pixels) / top, path, what), info
    if photometric.startswith("PALETTE"):
        from pydicom.pixels import apply_color_lut

        rgb = apply_color_lut(pixels, ds)
        top = 255.0 if rgb.dtype == np.uint8 else 65535.0
        return _finish(_grey_from_colour(rgb) / top, path, what), info
    # VOI LUTs are indexed by the (integer) modality output: cast to float only afterwards.
    arr = apply_modality_lut(pixels, ds)
    if apply_voi:
        arr = np.asarray(apply_voi_lut(arr, ds, index=0), dtype=np.float64)
        lo, hi = _output_range(ds, arr)
    else:
        arr = arr.astype(np.float64)
        lo, hi = float(arr.min()), float(arr.max())
    grey = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    inverse = str(ds.get("PresentationLUTShape", "") or "").upper() == "INVERSE"
    if photometric == "MONOCHROME1" or (photometric == "MONOCHROME2" and inverse):
        grey = 1.0 - grey
        info["inverted"] = True
    return _finish(grey, path, what), info


def read_2d(
    path: str | os.PathLike,
    what: str,
    dicom_modalities: Sequence[str] = RADIOGRAPH_MODALITIES,
) -> tuple[np.ndarray, dict[str, Any]]:
    """A 2D image file or single-frame DICOM to (H, W) float32 in [0, 1], chosen by content."""
    path = check_file(path)
    if path.is_dir():
        raise InputDataError(path, f"a folder, but {what} must be one image file")
    content = sniff_format(path)
    name = lower_name(path)
    if content == "DICOM" or (name.endswith(".dcm") and content is None):
        return read_dicom_image(path, dicom_modalities, what)
    if content in _IMAGE_FORMATS or name.endswith(_IMAGE_SUFFIXES):
        return read_image_file(path, what)
    if content in ("NIFTI", "GZIP") or name.endswith((".nii", ".nii.gz", ".mhd")):
        raise InputDataError(path, f"a volume file (NIfTI/MHD), not {what} (PNG/JPEG or DICOM expected)")
    raise InputDataError(path, f"unknown file type for {what}: PNG/JPEG/TIFF or DICOM expected")
