"""Dictionary transforms for nodule detection: lung cropping, datalist boxes, world-space detections.

Coordinate conventions (see the bundle's model card):

- Images are ``(1, X, Y, Z)`` MetaTensors with a RAS ``affine`` (voxel index -> world mm), as
  ``common.transforms.LoadCTd`` returns them.
- Boxes in a datalist and in every output are world millimetres in **LPS** (the physical space of
  MHD/DICOM and of LUNA16's ``annotations.csv``), mode ``cccwhd`` (centre x, y, z, size x, y, z).
- Boxes the network sees are voxel indices of the preprocessed image, MONAI's standard mode ``xyzxyz``
  (corners). MONAI's ``AffineBoxToImageCoordinated`` / ``AffineBoxToWorldCoordinated`` with
  ``affine_lps_to_ras=True`` convert between the two through the image's current affine, so any crop,
  resampling or padding recorded in that affine is accounted for.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, SpatialCrop
from scipy import ndimage

from common.detection.network import MALIGNANCY_KEY

logger = logging.getLogger(__name__)

__all__ = ["lung_bounding_box", "CropToLungsd", "DatalistBoxesd", "DetectionsToWorldd"]


def _spacing(affine: np.ndarray) -> np.ndarray:
    return np.sqrt((np.asarray(affine, dtype=np.float64)[:3, :3] ** 2).sum(axis=0))


def lung_bounding_box(
    hu: np.ndarray,
    spacing: Sequence[float],
    air_hu: float = -400.0,
    margin_mm: float = 10.0,
    step_mm: float = 4.0,
    min_lung_ml: float = 20.0,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Voxel bounding box of the lungs from a HU threshold and connected components (no network).

    Air below ``air_hu`` that is not connected to the in-plane border of the volume (the air around the
    patient; axial slices that are almost all air, past the ends of the patient, are left out) and forms
    components of at least ``min_lung_ml`` is taken as lung; the box is widened by ``margin_mm`` so
    nodules on the pleura stay inside. Runs on a grid subsampled to about ``step_mm``.

    Args:
        hu: ``(X, Y, Z)`` volume in HU.
        spacing: voxel size in mm along X, Y, Z.
        air_hu: threshold below which a voxel counts as air.
        margin_mm: margin added on each side.
        step_mm: sampling step for the search.
        min_lung_ml: smallest air component kept (smaller ones: bowel gas, noise).

    Returns:
        ``(start, end)`` voxel indices (end exclusive), or None when no lung-like air is found.
    """
    spacing = np.asarray(spacing, dtype=np.float64)
    step = np.maximum(1, np.round(step_mm / spacing)).astype(int)
    small = np.asarray(hu[:: step[0], :: step[1], :: step[2]])
    air = small < air_hu
    # axial slices without the patient in them (air past the ends of the scan, e.g. padding) would join the
    # trachea, and through it a lung, to the air around the patient: they are left out of the search
    no_patient = air.mean(axis=(0, 1)) > 0.98
    air[:, :, no_patient] = False
    labels, num = ndimage.label(air)
    if num == 0:
        return None
    # components touching the X or Y faces are the air around the patient (or outside the field of view)
    border = np.unique(
        np.concatenate([labels[0].ravel(), labels[-1].ravel(), labels[:, 0].ravel(), labels[:, -1].ravel()])
    )
    sizes = np.bincount(labels.ravel(), minlength=num + 1).astype(np.float64)
    sizes[0] = 0
    sizes[border] = 0
    voxel_ml = float(np.prod(spacing * step)) / 1000.0
    keep = np.flatnonzero(sizes * voxel_ml >= min_lung_ml)
    if keep.size == 0:
        return None
    lungs = np.isin(labels, keep)
    idx = np.argwhere(lungs)
    margin = np.ceil(margin_mm / spacing).astype(int)
    start = np.maximum(idx.min(axis=0) * step - margin, 0)
    end = np.minimum((idx.max(axis=0) + 1) * step + margin, np.asarray(hu.shape))
    return start, end


class CropToLungsd(MapTransform):
    """Crop images to the bounding box of the lungs (``lung_bounding_box``) to restrict the search.

    The crop goes through MONAI's ``SpatialCrop``, so the MetaTensor affine follows and world-space boxes
    stay valid. When no lungs are found the image is kept whole (and a warning names the file). The crop
    (start, end in the input voxels) is stored in the image meta as ``lung_crop``.

    Args:
        keys: images to crop (all the same grid).
        source_key: the HU image the lungs are searched in.
        air_hu, margin_mm, step_mm, min_lung_ml: see ``lung_bounding_box``.
        allow_missing_keys: don't raise if a key is missing.
    """

    def __init__(
        self,
        keys: KeysCollection,
        source_key: str = "image",
        air_hu: float = -400.0,
        margin_mm: float = 10.0,
        step_mm: float = 4.0,
        min_lung_ml: float = 20.0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.source_key = source_key
        self.kwargs = {
            "air_hu": air_hu,
            "margin_mm": margin_mm,
            "step_mm": step_mm,
            "min_lung_ml": min_lung_ml,
        }

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        image = d[self.source_key]
        affine = image.affine.numpy() if isinstance(image, MetaTensor) else np.eye(4)
        hu = image[0].numpy() if isinstance(image, torch.Tensor) else np.asarray(image[0])
        box = lung_bounding_box(hu, _spacing(affine), **self.kwargs)
        if box is None:
            name = image.meta.get("filename_or_obj", "image") if isinstance(image, MetaTensor) else "image"
            logger.warning("%s: no lung-like air found; searching the whole volume", name)
            start, end = np.zeros(3, dtype=int), np.asarray(hu.shape)
        else:
            start, end = box
        cropper = SpatialCrop(roi_start=start.tolist(), roi_end=end.tolist())
        for key in self.key_iterator(d):
            d[key] = cropper(d[key])
            if isinstance(d[key], MetaTensor):
                d[key].meta["lung_crop"] = np.stack([start, end]).tolist()
        return d


class DatalistBoxesd(MapTransform):
    """Turn a datalist entry's boxes, labels and malignancy ratings into arrays of fixed shape.

    ``box`` becomes float32 ``(N, 6)`` (also for a scan without nodules: ``(0, 6)``), ``label`` int64
    ``(N,)`` (0 when absent) and ``malignancy`` int64 ``(N,)`` (0 = no rating, when absent).

    Args:
        box_key, label_key, malignancy_key: datalist keys.
    """

    def __init__(
        self, box_key: str = "box", label_key: str = "label", malignancy_key: str = MALIGNANCY_KEY
    ) -> None:
        super().__init__([box_key], allow_missing_keys=True)
        self.box_key, self.label_key, self.malignancy_key = box_key, label_key, malignancy_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        boxes = np.asarray(d.get(self.box_key, []), dtype=np.float32).reshape(-1, 6)
        n = boxes.shape[0]
        labels = np.asarray(d.get(self.label_key, np.zeros(n)), dtype=np.int64).reshape(-1)
        ratings = np.asarray(d.get(self.malignancy_key, np.zeros(n)), dtype=np.float64).reshape(-1)
        if labels.shape[0] != n or ratings.shape[0] != n:
            raise ValueError(
                f"{n} boxes but {labels.shape[0]} labels and {ratings.shape[0]} malignancy ratings"
            )
        ratings = np.nan_to_num(ratings, nan=0.0).round().astype(np.int64)
        d[self.box_key] = boxes
        d[self.label_key] = labels
        d[self.malignancy_key] = np.where((ratings >= 1) & (ratings <= 5), ratings, 0)
        return d


class DetectionsToWorldd(MapTransform):
    """Convert detected boxes from the preprocessed image's voxels to world mm (LPS, ``cccwhd``).

    Wraps MONAI's ``AffineBoxToWorldCoordinated`` (through the image's current affine, so cropping,
    resampling and padding are undone) and ``ConvertBoxModed``.

    Args:
        keys: keys of the detected boxes (``xyzxyz`` voxel corners).
        box_ref_image_key: the preprocessed image the boxes were detected in.
        world_lps: True (default) for LPS world coordinates like LUNA16's annotations; False for RAS.
        allow_missing_keys: don't raise if a key is missing.
    """

    def __init__(
        self,
        keys: KeysCollection,
        box_ref_image_key: str = "image",
        world_lps: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        from monai.apps.detection.transforms.dictionary import AffineBoxToWorldCoordinated, ConvertBoxModed

        super().__init__(keys, allow_missing_keys)
        self.to_world = AffineBoxToWorldCoordinated(
            keys,
            box_ref_image_keys=box_ref_image_key,
            affine_lps_to_ras=world_lps,
            allow_missing_keys=allow_missing_keys,
        )
        self.to_centre_size = ConvertBoxModed(
            keys, src_mode="xyzxyz", dst_mode="cccwhd", allow_missing_keys=allow_missing_keys
        )

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = self.to_centre_size(self.to_world(data))
        for key in self.key_iterator(d):
            # the inverse bookkeeping of the MONAI transforms is not wanted on an output
            d.pop(f"{key}_transforms", None)
        return d
