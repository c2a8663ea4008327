"""The patient's body in a CT volume, so that nothing outside it (air, couch, blankets, tubes) is read as lung.

:func:`body_mask` finds the body as radiotherapy and lung-segmentation pipelines do (lungmask, plastimatch's
``mask``): tissue above a HU threshold, opened so that thin objects touching the skin (couch shells,
blankets, cables, tubes) come loose, the largest connected component kept (the patient), and holes
filled slice by slice along the patient's head-feet axis (the lungs, airways and bowel gas are inside the
body). A field of view that cuts through the patient leaves the body touching the image's border: that
stretch of the border is taken as closed, so lungs cut by the border still count as inside.

:class:`BodyMaskd` runs it on a HU image and stores the mask under its own key (for cropping with
``CropForegroundd(source_key=...)`` and for post-processing), and sets everything outside the body to air,
so the network never sees the couch or the air gap between the patient's back and the couch.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform
from scipy import ndimage

__all__ = ["BodyMaskd", "body_mask"]


def _ellipsoid(radius_vox: np.ndarray) -> np.ndarray:
    r = np.maximum(np.asarray(radius_vox, dtype=np.float64), 0.5)
    half = np.floor(r).astype(int)
    grid = np.ogrid[tuple(slice(-h, h + 1) for h in half)]
    return sum((g / ri) ** 2 for g, ri in zip(grid, r)) <= 1.0


def _fill_slice(plane: np.ndarray) -> np.ndarray:
    """Fill the holes of one 2D body slice; where the body reaches an image border, the border is closed."""
    if not plane.any():
        return plane
    padded = np.zeros((plane.shape[0] + 2, plane.shape[1] + 2), dtype=bool)
    padded[1:-1, 1:-1] = plane
    # the patient goes on beyond the border between the outermost body pixels on it (a truncated field
    # of view): that stretch is closed, so lungs cut by the border are holes; elsewhere the outside air
    # reaches the border and stays outside
    for edge, closed in ((plane[0, :], padded[0, 1:-1]), (plane[-1, :], padded[-1, 1:-1]),
                         (plane[:, 0], padded[1:-1, 0]), (plane[:, -1], padded[1:-1, -1])):
        on_edge = np.flatnonzero(edge)
        if on_edge.size:
            closed[on_edge[0] : on_edge[-1] + 1] = True
    return ndimage.binary_fill_holes(padded)[1:-1, 1:-1]


def body_mask(
    hu: np.ndarray,
    affine: np.ndarray,
    threshold_hu: float = -500.0,
    opening_mm: float = 4.0,
) -> np.ndarray:
    """The patient's body (skin inwards, lungs included) in a CT volume.

    Args:
        hu: ``(X, Y, Z)`` array in Hounsfield units.
        affine: voxel-to-world affine of ``hu`` (any orientation; the slice-wise hole filling follows the
            axis closest to the patient's head-feet direction).
        threshold_hu: tissue threshold; fat (-100 HU) and skin are above it, air and lung below.
        opening_mm: radius of the morphological opening that detaches thin objects from the skin
            (structures thinner than about twice this come loose).

    Returns:
        bool ``(X, Y, Z)`` mask, True inside the body. All False when no tissue is above the threshold.
    """
    hu = np.asarray(hu)
    tissue = hu > threshold_hu
    if not tissue.any():
        return np.zeros(hu.shape, dtype=bool)
    spacing = np.sqrt((np.asarray(affine, dtype=np.float64)[:3, :3] ** 2).sum(axis=0))
    ball = _ellipsoid(opening_mm / spacing)
    core = ndimage.binary_erosion(tissue, structure=ball)
    if not core.any():  # a scan thinner than the opening (a few slices): no opening
        core = tissue
    components, n = ndimage.label(core)
    if n > 1:
        sizes = ndimage.sum_labels(core, components, index=np.arange(1, n + 1))
        core = components == (int(np.argmax(sizes)) + 1)
    # back to the skin, but only where the patient's tissue is: what the opening removed from the
    # outline comes back, objects it detached do not
    body = ndimage.binary_dilation(core, structure=ball) & tissue
    axial_axis = int(nib.orientations.io_orientation(affine)[:, 0].tolist().index(2))
    body = np.moveaxis(body, axial_axis, -1)
    filled = np.stack([_fill_slice(body[..., k]) for k in range(body.shape[-1])], axis=-1)
    return np.ascontiguousarray(np.moveaxis(filled, -1, axial_axis))


class BodyMaskd(MapTransform):
    """Find the body in HU images; store the mask and set everything outside it to air.

    Args:
        keys: HU image keys, channel-first ``(1, X, Y, Z)`` (MetaTensors carry the affine).
        body_key: key the mask is written to (``(1, X, Y, Z)``, float 0/1, same meta as the image), or
            ``None`` to keep no mask. With several keys, the mask of the last one is kept.
        threshold_hu, opening_mm: see :func:`body_mask`.
        outside_hu: value written outside the body (air).
        mask_image: set voxels outside the body to ``outside_hu``; False only stores the mask.
        allow_missing_keys: don't raise if a key is missing.
    """

    def __init__(
        self,
        keys: KeysCollection,
        body_key: str | None = "body",
        threshold_hu: float = -500.0,
        opening_mm: float = 4.0,
        outside_hu: float = -1000.0,
        mask_image: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.body_key = body_key
        self.threshold_hu = threshold_hu
        self.opening_mm = opening_mm
        self.outside_hu = outside_hu
        self.mask_image = mask_image

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            affine = np.asarray(image.affine, dtype=np.float64) if isinstance(image, MetaTensor) else np.eye(4)
            values = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
            mask = body_mask(values[0], affine, self.threshold_hu, self.opening_mm)
            mask_t = torch.from_numpy(mask[None])
            if self.mask_image:
                d[key] = image.masked_fill(~mask_t.to(image.device), self.outside_hu) if isinstance(
                    image, torch.Tensor
                ) else np.where(mask[None], values, self.outside_hu)
            if self.body_key is not None:
                body = mask_t.to(torch.float32)
                d[self.body_key] = MetaTensor(body, meta=dict(image.meta)) if isinstance(image, MetaTensor) else body
        return d
