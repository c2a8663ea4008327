"""Chest habitus of CT scans with lung masks: how far the lungs sit inside the body's edge, and how deep they are.

    python scripts/chest_wall_thickness.py --images "../shared/data/lctsc_train9/*_ct.nii.gz" --label_from _ct --label_to _lung
    python scripts/chest_wall_thickness.py --images "runs/lung_synth/imagesTr/*.nii.gz" --label_from imagesTr --label_to labelsTr

Per scan: on every third axial slice of the lungs' middle third, along the row through the lungs' median
column, the distance (mm) from the body's edge (HU > -400, holes filled, largest component) to the lung mask
on each side; the scan's figure is the median. Lung depth: on the axial slice of largest lung area, the
lungs' antero-posterior extent over the body's. Compares real scans with phantoms (docs/synthetic_data.md).
"""

from __future__ import annotations

import glob
import sys
from pathlib import Path

import fire
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def lateral_wall_mm(hu: np.ndarray, lung: np.ndarray, spacing_x: float) -> float:
    """Median lateral distance (mm) from the body's edge to the lungs, both sides, mid-lung slices.

    Args:
        hu: ``(X, Y, Z)`` CT in HU, X the patient's left-right axis.
        lung: ``(X, Y, Z)`` lung mask (any label > 0).
        spacing_x: voxel size along X (mm).

    Returns:
        the median distance, NaN when no slice has both a body and a lung.
    """
    slices = np.where(lung.any(axis=(0, 1)))[0]
    slices = slices[len(slices) // 3 : 2 * len(slices) // 3]
    distances = []
    for z in slices[::3]:
        body = _body(hu[:, :, z])
        if not body.any():
            continue
        rows = np.where(lung[:, :, z].any(axis=0))[0]
        if len(rows) == 0:
            continue
        y = int(np.median(rows))
        body_x, lung_x = np.where(body[:, y])[0], np.where(lung[:, y, z])[0]
        if len(body_x) and len(lung_x):
            distances += [(lung_x.min() - body_x.min()) * spacing_x, (body_x.max() - lung_x.max()) * spacing_x]
    return float(np.median(distances)) if distances else float("nan")


def _body(hu_slice: np.ndarray) -> np.ndarray:
    """The body on one axial slice: HU > -400, holes filled, the largest component (not the couch)."""
    from scipy import ndimage

    body = ndimage.binary_fill_holes(hu_slice > -400)
    labels, n = ndimage.label(body)
    if n == 0:
        return body
    return labels == (np.argmax(ndimage.sum(body, labels, range(1, n + 1))) + 1)


def lung_depth_ratio(hu: np.ndarray, lung: np.ndarray) -> float:
    """Antero-posterior extent of the lungs over the body's, on the axial slice of largest lung area.

    Args:
        hu: ``(X, Y, Z)`` CT in HU, Y the antero-posterior axis.
        lung: ``(X, Y, Z)`` lung mask (any label > 0).

    Returns:
        the ratio (about 0.7-0.8 in adult chest CT), NaN without lungs.
    """
    area = lung.sum(axis=(0, 1))
    if not area.any():
        return float("nan")
    z = int(np.argmax(area))
    lung_y = np.where(lung[:, :, z].any(axis=0))[0]
    body_y = np.where(_body(hu[:, :, z]).any(axis=0))[0]
    if not len(body_y):
        return float("nan")
    return float((lung_y.max() - lung_y.min() + 1) / (body_y.max() - body_y.min() + 1))


def main(images: str, label_from: str, label_to: str) -> None:
    """Print each scan's lateral chest-wall thickness and the median over the scans.

    Args:
        images: glob of CT volumes (NIfTI).
        label_from: the part of an image path to replace to get its lung mask's path.
        label_to: what replaces it.
    """
    import nibabel as nib

    walls, depths = [], []
    for path in sorted(glob.glob(images)):
        image = nib.load(path)
        lung = np.asarray(nib.load(path.replace(label_from, label_to)).dataobj) > 0
        hu = np.asarray(image.dataobj, dtype=np.float32)
        walls.append(lateral_wall_mm(hu, lung, float(image.header.get_zooms()[0])))
        depths.append(lung_depth_ratio(hu, lung))
        print(f"{Path(path).name}: lateral wall {walls[-1]:.1f} mm, lung depth / body depth {depths[-1]:.2f}")
    print(f"median of {len(walls)} scans: lateral wall {np.nanmedian(walls):.1f} mm (range {np.nanmin(walls):.1f}-"
          f"{np.nanmax(walls):.1f}), lung depth / body depth {np.nanmedian(depths):.2f} "
          f"(range {np.nanmin(depths):.2f}-{np.nanmax(depths):.2f})")


if __name__ == "__main__":
    fire.Fire(main)
