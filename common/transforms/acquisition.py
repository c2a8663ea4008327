"""Acquisition shift for radiographs: how the same chest looks on another device or processing chain.

A film's grey values pass through the detector, the vendor's processing (tone curve, edge enhancement,
equalisation), collimation and a lossy export before a model sees them. Models trained on one
hospital's films learn that chain; these transforms vary it, on ``(1, H, W)`` images in [0, 1] as
:class:`~common.transforms.LoadRadiographd` gives them.

RandJPEGd
    Training augmentation: re-encode as 8-bit JPEG at a random quality (lossy PACS exports, the
    public ChestXRay2017 copies). MONAI has no JPEG transform.
AcquisitionShiftd / acquisition_shift
    One named, deterministic perturbation at a fixed strength, for the *shifted validation*: the
    validation split is scored again under each of :data:`SHIFTS` to see how a model and its threshold
    hold up when the films change. Deterministic so that the report is reproducible; noise is seeded
    from the image itself.

A per-image z-score (``NormalizeIntensityd``) follows in the bundles, so only *non-linear* changes of the
grey values matter: a linear contrast or brightness change is removed by it and is not listed.
"""

from __future__ import annotations

import io
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, RandomizableTransform
from PIL import Image
from scipy import ndimage

__all__ = ["SHIFTS", "AcquisitionShiftd", "RandJPEGd", "acquisition_shift", "jpeg_roundtrip"]

#: name -> (what it models, whether the bundles' training augmentation draws this kind of change).
#: "unseen" kinds test robustness to a change the model was never shown.
SHIFTS: dict[str, tuple[str, bool]] = {
    "clean": ("the validation films as they are", True),
    "gamma_0.6": ("brighter tone curve (grey ** 0.6): another exposure / look-up table", True),
    "gamma_1.6": ("darker tone curve (grey ** 1.6)", True),
    "s_curve": ("strong sigmoid contrast curve (vendor 'high contrast' processing)", False),
    "overexposed": ("grey * 1.4, clipped at white: burnt-out lung fields", False),
    "equalized": ("histogram equalisation (some CR/DR processing chains)", False),
    "unsharp": ("edge enhancement (unsharp mask, radius 2 px, amount 1.5), as CR processing applies", False),
    "blur": ("Gaussian blur, sigma 1.5 px at 224 px (a softer detector or a down-sampled export)", True),
    "noise": ("Gaussian noise, sigma 0.04 (quantum noise of a low-dose film)", True),
    "jpeg_q15": ("JPEG re-encoding at quality 15", True),
    "zoom_in": ("centre crop to 85% (tighter collimation)", True),
    # training zooms out too, but pads with the film's edge, never with a black frame
    "zoom_out": ("shrunk to 85% inside a black border (wider field of view)", False),
    "rotate_10": ("rotated 10 degrees (patient positioning)", True),
}


def jpeg_roundtrip(image: np.ndarray, quality: int) -> np.ndarray:
    """Encode a 2D image in [0, 1] as an 8-bit JPEG at ``quality`` and decode it again.

    Args:
        image: ``(H, W)`` float array in [0, 1].
        quality: JPEG quality 1-95 (PIL's scale).

    Returns:
        The decoded ``(H, W)`` float32 array in [0, 1].
    """
    grey = Image.fromarray(np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8), mode="L")
    buffer = io.BytesIO()
    grey.save(buffer, format="JPEG", quality=int(quality))
    buffer.seek(0)
    return np.asarray(Image.open(buffer), dtype=np.float32) / 255.0


def _equalize(x: np.ndarray) -> np.ndarray:
    values, inverse, counts = np.unique(
        np.round(x * 4095).astype(np.int32), return_inverse=True, return_counts=True
    )
    cdf = np.cumsum(counts).astype(np.float64)
    cdf = (cdf - cdf[0]) / max(cdf[-1] - cdf[0], 1.0)
    return cdf[inverse].reshape(x.shape)


def _zoom_out(x: np.ndarray, factor: float) -> np.ndarray:
    h, w = x.shape
    small = ndimage.zoom(x, factor, order=1, grid_mode=True, mode="nearest")
    out = np.zeros_like(x)
    top, left = (h - small.shape[0]) // 2, (w - small.shape[1]) // 2
    out[top : top + small.shape[0], left : left + small.shape[1]] = small[: h - top, : w - left]
    return out


def _zoom_in(x: np.ndarray, keep: float) -> np.ndarray:
    h, w = x.shape
    ch, cw = round(h * keep), round(w * keep)
    top, left = (h - ch) // 2, (w - cw) // 2
    crop = x[top : top + ch, left : left + cw]
    return ndimage.zoom(crop, (h / ch, w / cw), order=1, grid_mode=True, mode="nearest")


def acquisition_shift(image: np.ndarray, name: str) -> np.ndarray:
    """Apply the perturbation ``name`` of :data:`SHIFTS` to one radiograph.

    Strengths are given for a 224-pixel film and scaled with the image's size, so a full-size film and
    its 224 x 224 copy are perturbed alike.

    Args:
        image: ``(H, W)`` array in [0, 1].
        name: a key of :data:`SHIFTS`.

    Returns:
        The perturbed ``(H, W)`` float32 image in [0, 1].

    Raises:
        ValueError: ``name`` is not a known perturbation.
    """
    if name not in SHIFTS:
        raise ValueError(f"unknown acquisition shift {name!r}; choose from {', '.join(SHIFTS)}")
    x = np.clip(np.asarray(image, dtype=np.float64), 0.0, 1.0)
    px = max(x.shape) / 224.0  # pixels per pixel of a 224 film
    if name == "clean":
        out = x
    elif name.startswith("gamma_"):
        out = x ** float(name.split("_")[1])
    elif name == "s_curve":
        lo, hi = 1 / (1 + np.exp(6.0)), 1 / (1 + np.exp(-6.0))
        out = (1 / (1 + np.exp(-12.0 * (x - 0.5))) - lo) / (hi - lo)
    elif name == "overexposed":
        out = x * 1.4
    elif name == "equalized":
        out = _equalize(x)
    elif name == "unsharp":
        out = x + 1.5 * (x - ndimage.gaussian_filter(x, 2.0 * px))
    elif name == "blur":
        out = ndimage.gaussian_filter(x, 1.5 * px)
    elif name == "noise":
        seed = int(np.round(x.sum() * 1000)) % (2**32)
        out = x + np.random.default_rng(seed).normal(0.0, 0.04, x.shape)
    elif name == "jpeg_q15":
        out = jpeg_roundtrip(x, 15)
    elif name == "zoom_in":
        out = _zoom_in(x, 0.85)
    elif name == "zoom_out":
        out = _zoom_out(x, 0.85)
    else:  # rotate_10
        out = ndimage.rotate(x, 10.0, reshape=False, order=1, mode="nearest")
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _apply_2d(img: Any, fn) -> Any:
    """Apply ``fn`` to each channel of a ``(C, H, W)`` tensor/array, keeping its type and meta data."""
    array = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
    out = np.stack([fn(channel) for channel in array]).astype(np.float32)
    if isinstance(img, MetaTensor):
        return MetaTensor(
            torch.as_tensor(out, device=img.device), meta=img.meta, applied_operations=img.applied_operations
        )
    if isinstance(img, torch.Tensor):
        return torch.as_tensor(out, device=img.device)
    return out


class AcquisitionShiftd(MapTransform):
    """Apply one named acquisition shift of :data:`SHIFTS` to ``(C, H, W)`` images in [0, 1].

    Args:
        keys: keys of the images.
        shift: a key of :data:`SHIFTS` ("clean" changes nothing).
        allow_missing_keys: don't raise if a key is missing.
    """

    def __init__(self, keys: KeysCollection, shift: str, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if shift not in SHIFTS:
            raise ValueError(f"unknown acquisition shift {shift!r}; choose from {', '.join(SHIFTS)}")
        self.shift = shift

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.shift == "clean":
            return d
        for key in self.key_iterator(d):
            d[key] = _apply_2d(d[key], lambda channel: acquisition_shift(channel, self.shift))
        return d


class RandJPEGd(RandomizableTransform, MapTransform):
    """Randomly re-encode ``(C, H, W)`` images in [0, 1] as JPEG at a quality drawn from ``quality_range``.

    Args:
        keys: keys of the images.
        prob: probability of re-encoding an image.
        quality_range: (low, high) JPEG quality, inclusive.
        allow_missing_keys: don't raise if a key is missing.
    """

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.2,
        quality_range: tuple[int, int] = (15, 90),
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        low, high = int(quality_range[0]), int(quality_range[1])
        if not 1 <= low <= high <= 95:
            raise ValueError(f"quality_range must satisfy 1 <= low <= high <= 95, got {quality_range}")
        self.quality_range = (low, high)
        self._quality = high

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        self._quality = int(self.R.randint(self.quality_range[0], self.quality_range[1] + 1))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize()
        if not self._do_transform:
            return d
        for key in self.key_iterator(d):
            d[key] = _apply_2d(d[key], lambda channel: jpeg_roundtrip(channel, self._quality))
        return d
