"""OCT transforms: load one retinal OCT B-scan as grey ``(1, H, W)``; normalise its intensities.

LoadOCTd
    Reads a B-scan from JPEG/PNG/TIFF (Kermany OCT2017 ships 8-bit JPEGs, some saved as RGB) or a
    single-frame ophthalmic DICOM (Modality OPT/OP, or OT/SC exports) into a ``MetaTensor``
    ``(1, H, W)`` float32 in [0, 1], rows first (the retina's depth axis runs down the rows). Colour is
    reduced to one grey channel; 16-bit files keep their full range. A multi-frame OCT volume, a blank
    image, an unreadable file or a CT/X-ray DICOM raise :class:`~common.errors.InputDataError` naming the
    file.

OCTNormalized
    Scanners and exports differ in gain and background level, so each B-scan is normalised on its own:
    the intensities at the ``lower`` and ``upper`` percentiles (default 1 and 99.5) become 0 and 1, values
    outside are clipped. The percentiles are taken over the scan area only: pixels exactly 0 or 1 (the
    flat black or white fill some exports put around a scan) are left out when they are not the whole
    image. A scan with no contrast left between the percentiles becomes all zeros.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from common.errors import InputDataError
from common.transforms._image2d import read_2d
from common.transforms._meta import make_meta_tensor
from common.transforms.radiograph import LoadRadiographd

__all__ = ["LoadOCTd", "OCTNormalized", "load_oct", "OCT_DICOM_MODALITIES"]

#: DICOM modalities accepted as an OCT B-scan (ophthalmic tomography, ophthalmic photography, exports).
OCT_DICOM_MODALITIES = ("OPT", "OP", "OT", "SC")


def load_oct(
    path: str, modalities: Sequence[str] = OCT_DICOM_MODALITIES, min_contrast: float = 1e-3
) -> MetaTensor:
    """Read one OCT B-scan to a ``(1, H, W)`` float32 MetaTensor in [0, 1]."""
    grey, info = read_2d(path, "an OCT B-scan", dicom_modalities=modalities)
    if float(grey.max() - grey.min()) < min_contrast:
        raise InputDataError(path, f"a blank image (all pixels {float(grey.mean()):.3f}): no B-scan in it")
    extra = {f"image_{k}": v for k, v in info.items() if k != "pixel_spacing"}
    return make_meta_tensor(grey, np.eye(4), path, extra)


class LoadOCTd(LoadRadiographd):
    """Load OCT B-scans (JPEG/PNG/TIFF or single-frame DICOM) as ``(1, H, W)`` float32 in [0, 1].

    Args:
        keys: keys whose values are image paths.
        modalities: DICOM Modality values accepted.
        allow_missing_keys: don't raise if a key is missing.
    """

    reader = staticmethod(load_oct)

    def __init__(
        self,
        keys: KeysCollection,
        modalities: Sequence[str] = OCT_DICOM_MODALITIES,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, modalities, allow_missing_keys)


class OCTNormalized(MapTransform):
    """Per-scan percentile normalisation of OCT intensities to [0, 1] (see the module docstring).

    Args:
        keys: keys of ``(C, H, W)`` images in [0, 1].
        lower: percentile mapped to 0.
        upper: percentile mapped to 1.
        exclude_fill: leave pixels exactly 0 or 1 out of the percentiles (export fill).
        allow_missing_keys: don't raise if a key is missing.
    """

    def __init__(
        self,
        keys: KeysCollection,
        lower: float = 1.0,
        upper: float = 99.5,
        exclude_fill: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if not 0.0 <= lower < upper <= 100.0:
            raise ValueError(f"OCTNormalized needs 0 <= lower < upper <= 100, got {lower}, {upper}")
        self.lower, self.upper, self.exclude_fill = float(lower), float(upper), exclude_fill

    def normalise(self, image: torch.Tensor) -> torch.Tensor:
        x = image.float()
        values = x.detach().reshape(-1).cpu().numpy()
        if self.exclude_fill:
            inside = values[(values > 0.0) & (values < 1.0)]
            if inside.size >= 0.05 * values.size:
                values = inside
        lo, hi = (float(v) for v in np.percentile(values, [self.lower, self.upper]))
        if hi - lo < 1e-6:
            return x * 0.0
        return ((x - lo) / (hi - lo)).clamp(0.0, 1.0)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            if not isinstance(image, torch.Tensor):
                image = MetaTensor(torch.as_tensor(np.asarray(image)))
            d[key] = self.normalise(image)
        return d
