"""Radiograph transforms: load a chest X-ray as one grey channel in [0, 1]; letterbox to a square.

LoadRadiographd
    Reads PNG/JPEG/TIFF/BMP and single-frame DICOM radiographs (Modality CR, DX and the other
    projection modalities; OT/SC secondary captures too) into a ``MetaTensor`` ``(1, H, W)`` float32
    in [0, 1], rows first as the image is displayed.

    - 8-bit files are divided by 255 and 16-bit files by 65535: a 16-bit PNG keeps its full range.
    - RGB/RGBA/palette/grey+alpha become one grey channel (ITU-R 601 luma; alpha ignored; a grey image
      saved as RGB is taken exactly).
    - DICOM: the Modality LUT or RescaleSlope/Intercept (``pydicom.pixels.apply_modality_lut``), then the
      first VOI LUT or window (``apply_voi_lut``) as a viewer would show it, its output range scaled to
      [0, 1]; without a VOI LUT/window the image's own min..max. MONOCHROME1 (bright = low values) is
      inverted so that bone is bright in every output.
    - Refused with :class:`~common.errors.InputDataError` naming the file: unreadable/truncated files,
      multi-frame DICOM, CT/MR/other non-radiograph DICOM modalities, volumes (NIfTI), blank images.

LetterboxResized
    Resizes so that the longer side is ``size`` (aspect ratio kept, anti-aliased when shrinking) and pads
    the shorter side symmetrically to ``size x size``. Built from MONAI's ``Resize(size_mode="longest")``
    and ``SpatialPad(method="symmetric")`` so ``Invertd`` undoes it; the geometry is also written to the
    meta data (``letterbox_scale``, ``letterbox_pad`` = top, bottom, left, right,
    ``letterbox_original_size`` = H, W) and :func:`letterbox_to_original` maps a saliency map or mask
    on the square back onto the original image.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import InvertibleTransform, MapTransform, Resize, SpatialPad

from common.errors import InputDataError
from common.io.dicom import RADIOGRAPH_MODALITIES
from common.transforms._image2d import read_2d
from common.transforms._meta import make_meta_tensor

__all__ = ["LoadRadiographd", "LetterboxResized", "load_radiograph", "letterbox_to_original"]

#: DICOM modalities accepted as a radiograph: projection X-ray, plus OT/SC (digitised films, exports).
RADIOGRAPH_DICOM_MODALITIES = (*RADIOGRAPH_MODALITIES, "OT", "SC")


def load_radiograph(
    path: str, modalities: Sequence[str] = RADIOGRAPH_DICOM_MODALITIES, min_contrast: float = 1e-3
) -> MetaTensor:
    """Read one radiograph to a ``(1, H, W)`` float32 MetaTensor in [0, 1] (see the module docstring)."""
    grey, info = read_2d(path, "a radiograph", dicom_modalities=modalities)
    if float(grey.max() - grey.min()) < min_contrast:
        raise InputDataError(path, f"a blank image (all pixels {float(grey.mean()):.3f}): nothing to read")
    affine = np.eye(4)
    if "pixel_spacing" in info:
        affine[0, 0], affine[1, 1] = info["pixel_spacing"]
    extra = {f"image_{k}": v for k, v in info.items() if k != "pixel_spacing"}
    return make_meta_tensor(grey, affine, path, extra)


class LoadRadiographd(MapTransform):
    """Load radiographs (PNG/JPEG 8/16-bit, DICOM CR/DX) as ``(1, H, W)`` float32 in [0, 1].

    Args:
        keys: keys whose values are image paths.
        modalities: DICOM Modality values accepted (others, e.g. CT, raise InputDataError).
        allow_missing_keys: don't raise if a key is missing.
    """

    # the reader of one file; subclasses for other 2D modalities (OCT) swap it
    reader = staticmethod(load_radiograph)

    def __init__(
        self,
        keys: KeysCollection,
        modalities: Sequence[str] = RADIOGRAPH_DICOM_MODALITIES,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.modalities = tuple(m.upper() for m in modalities)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.reader(d[key], self.modalities)
        return d


class LetterboxResized(MapTransform, InvertibleTransform):
    """Aspect-preserving resize of the longer side to ``size`` and a centred pad to ``size x size``.

    Args:
        keys: keys of ``(C, H, W)`` images.
        size: side of the output square.
        mode: interpolation (``"bilinear"``, ``"area"``, ``"nearest"`` for masks, ...), one or one per key.
        pad_value: value of the padding (0: black, like the background of a radiograph).
        anti_aliasing: Gaussian pre-filter when shrinking (as MONAI's ``Resize``).
        allow_missing_keys: don't raise if a key is missing.
    """

    def __init__(
        self,
        keys: KeysCollection,
        size: int,
        mode: str | Sequence[str] = "bilinear",
        pad_value: float = 0.0,
        anti_aliasing: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if int(size) < 1:
            raise ValueError(f"LetterboxResized needs a positive size, got {size}")
        self.size = int(size)
        modes = [mode] * len(self.keys) if isinstance(mode, str) else list(mode)
        if len(modes) != len(self.keys):
            raise ValueError(f"one mode or one per key expected, got {len(modes)} for {len(self.keys)} keys")
        self.resizers = {
            key: Resize(
                self.size,
                size_mode="longest",
                mode=m,
                align_corners=None if m in ("nearest", "nearest-exact", "area") else False,
                anti_aliasing=anti_aliasing and m not in ("nearest", "nearest-exact"),
            )
            for key, m in zip(self.keys, modes)
        }
        self.padder = SpatialPad((self.size, self.size), method="symmetric", value=pad_value)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            if not isinstance(image, MetaTensor):
                image = MetaTensor(torch.as_tensor(image))
            if image.ndim != 3:
                raise ValueError(
                    f"LetterboxResized expects (C, H, W) for key {key!r}, got shape {tuple(image.shape)}"
                )
            h, w = (int(s) for s in image.shape[1:])
            resized = self.resizers[key](image)
            rh, rw = (int(s) for s in resized.shape[1:])
            out = self.padder(resized)
            top, left = (self.size - rh) // 2, (self.size - rw) // 2
            out.meta["letterbox_scale"] = self.size / max(h, w)
            out.meta["letterbox_pad"] = np.array([top, self.size - rh - top, left, self.size - rw - left])
            out.meta["letterbox_original_size"] = np.array([h, w])
            d[key] = out
        return d

    def inverse(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = self.padder.inverse(d[key])
            d[key] = self.resizers[key].inverse(image)
        return d


def letterbox_to_original(
    image: torch.Tensor | np.ndarray,
    pad: Sequence[int],
    original_size: Sequence[int],
    mode: str = "bilinear",
) -> torch.Tensor:
    """Map a ``(..., S, S)`` map on the letterboxed square (a saliency map, a mask) onto the original image.

    Args:
        image: tensor whose last two axes are the letterboxed square.
        pad: ``letterbox_pad`` from the meta data: top, bottom, left, right.
        original_size: ``letterbox_original_size``: H, W of the original image.
        mode: interpolation, ``"bilinear"`` for maps, ``"nearest"`` for masks.

    Returns:
        the map cropped to the image area and resized to ``original_size`` (leading axes kept).
    """
    t = torch.as_tensor(image)
    top, bottom, left, right = (int(p) for p in np.asarray(pad).reshape(-1)[:4])
    h, w = (int(s) for s in np.asarray(original_size).reshape(-1)[:2])
    cropped = t[..., top : t.shape[-2] - bottom, left : t.shape[-1] - right]
    lead = cropped.shape[:-2]
    flat = cropped.reshape(-1, 1, *cropped.shape[-2:]).float()
    kwargs = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    out = F.interpolate(flat, size=(h, w), mode=mode, **kwargs)
    return out.reshape(*lead, h, w)
