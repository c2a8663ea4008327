"""Small chest phantoms with spherical nodules, in the LUNA16 layout, for tests and the speed benchmark.

The full synthetic nodule set of the zoo comes from ``scripts/make_synthetic.py nodules``; this module makes
tiny, fast volumes whose nodule positions are known exactly, so the coordinate pipeline (world LPS <->
voxel, cropping, resampling) can be checked without a trained model, and the large benchmark phantom
(512 x 512 x 300) is quick to build.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.io.atomic import atomic_path
from common.io.mhd import write_mhd

__all__ = ["NodulePhantom", "make_nodule_phantom", "write_luna16_phantoms"]


@dataclass
class NodulePhantom:
    """``hu`` (X, Y, Z) int16 with LPS geometry (identity direction) and its nodules.

    ``nodules`` holds ``(centre_lps (3,), diameter_mm, malignancy 1-5)``.
    """

    hu: np.ndarray
    spacing: tuple[float, float, float]
    origin_lps: tuple[float, float, float]
    nodules: list[tuple[np.ndarray, float, int]] = field(default_factory=list)

    def voxel_to_lps(self, ijk: Sequence[float]) -> np.ndarray:
        return np.asarray(self.origin_lps) + np.asarray(ijk, dtype=np.float64) * np.asarray(self.spacing)

    def affine_ras(self) -> np.ndarray:
        """Voxel -> world RAS affine (as MONAI readers return it)."""
        affine = np.diag([*self.spacing, 1.0])
        affine[:3, 3] = self.origin_lps
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine


def make_nodule_phantom(
    rng: np.random.Generator,
    shape: Sequence[int] = (112, 96, 64),
    spacing: Sequence[float] = (1.25, 1.25, 1.5),
    num_nodules: int = 2,
    diameter_range_mm: tuple[float, float] = (6.0, 16.0),
    origin_lps: Sequence[float] | None = None,
    noise_hu: float = 20.0,
) -> NodulePhantom:
    """A body ellipse (soft tissue) with two lung ellipsoids (-850 HU) holding solid spherical nodules.

    The malignancy rating grows with the diameter (6 mm -> 2, 20 mm and up -> 5), as in LIDC on average.

    Args:
        rng: random generator.
        shape: voxels along X (patient right -> left), Y (anterior -> posterior), Z (feet -> head).
        spacing: voxel size in mm.
        num_nodules: nodules placed inside the lungs, not overlapping.
        diameter_range_mm: nodule diameters drawn uniformly from this range.
        origin_lps: LPS position of voxel (0, 0, 0) (default: centres the volume near the origin).
        noise_hu: Gaussian noise.
    """
    shape = tuple(int(s) for s in shape)
    spacing = tuple(float(s) for s in spacing)
    mm = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing)]
    x, y, z = np.meshgrid(*mm, indexing="ij")
    half = [n * s / 2 for n, s in zip(shape, spacing)]
    hu = np.full(shape, -1000.0, dtype=np.float32)
    body = (x / (0.92 * half[0])) ** 2 + (y / (0.85 * half[1])) ** 2 <= 1
    hu[body] = 40.0
    lung_axes = np.array([0.36 * half[0], 0.62 * half[1], 0.8 * half[2]])
    lung_centres = [np.array([-0.45 * half[0], 0.0, 0.0]), np.array([0.45 * half[0], 0.0, 0.0])]
    lungs = np.zeros(shape, bool)
    for c in lung_centres:
        lungs |= ((x - c[0]) / lung_axes[0]) ** 2 + ((y - c[1]) / lung_axes[1]) ** 2 + (
            (z - c[2]) / lung_axes[2]
        ) ** 2 <= 1
    hu[lungs] = -850.0
    if origin_lps is None:
        origin_lps = tuple(-h + s / 2 for h, s in zip(half, spacing))
    phantom = NodulePhantom(hu=hu, spacing=spacing, origin_lps=tuple(float(o) for o in origin_lps))
    placed: list[tuple[np.ndarray, float]] = []
    attempts = 0
    while len(placed) < num_nodules and attempts < 500:
        attempts += 1
        d = float(rng.uniform(*diameter_range_mm))
        c = lung_centres[int(rng.integers(2))]
        # inside the lung ellipsoid, a radius away from its wall
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        scale = max(0.0, 1.0 - (d / 2 + 2) / lung_axes.min())
        centre_mm = c + direction * lung_axes * rng.uniform(0, scale)
        if any(np.linalg.norm(centre_mm - p) < (d + q) / 2 + 4 for p, q in placed):
            continue
        sphere = (x - centre_mm[0]) ** 2 + (y - centre_mm[1]) ** 2 + (z - centre_mm[2]) ** 2 <= (d / 2) ** 2
        hu[sphere] = 30.0
        placed.append((centre_mm, d))
        ijk = [(cm + h - s / 2) / s for cm, h, s in zip(centre_mm, half, spacing)]
        rating = int(np.clip(np.round(2 + (d - 6) / 14 * 3), 1, 5))
        phantom.nodules.append((phantom.voxel_to_lps(ijk), d, rating))
    hu += rng.normal(0, noise_hu, size=shape).astype(np.float32)
    phantom.hu = np.clip(np.round(hu), -1024, 3071).astype(np.int16)
    return phantom


def write_luna16_phantoms(
    out_dir: str | os.PathLike,
    num_scans: int = 4,
    seed: int = 0,
    nodules_per_scan: Sequence[int] | int = 2,
    with_malignancy: bool = True,
    **phantom_kwargs,
) -> Path:
    """Write ``num_scans`` phantoms as ``subset0/<uid>.mhd`` plus ``annotations.csv`` (LUNA16 layout).

    Args:
        out_dir: destination folder.
        num_scans: scans written (series UIDs ``1.2.826.0.1.3680043.8.498.<seed>.<i>``).
        seed: random seed.
        nodules_per_scan: nodules per scan (one value or one per scan; 0 gives a scan without nodules).
        with_malignancy: add the optional ``malignancy`` column.
        phantom_kwargs: passed to ``make_nodule_phantom``.

    Returns:
        ``out_dir``.
    """
    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    counts = [nodules_per_scan] * num_scans if isinstance(nodules_per_scan, int) else list(nodules_per_scan)
    rows = []
    for i, count in enumerate(counts):
        uid = f"1.2.826.0.1.3680043.8.498.{seed}.{i}"
        phantom = make_nodule_phantom(rng, num_nodules=count, **phantom_kwargs)
        write_mhd(out / "subset0" / f"{uid}.mhd", phantom.hu, phantom.spacing, phantom.origin_lps)
        for centre, d, rating in phantom.nodules:
            rows.append(
                [uid, *[f"{v:.4f}" for v in centre], f"{d:.4f}"] + ([str(rating)] if with_malignancy else [])
            )
    header = ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"] + (
        ["malignancy"] if with_malignancy else []
    )
    with atomic_path(out / "annotations.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return out
