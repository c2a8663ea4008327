"""PNG previews of the synthetic CT data sets (for docs/synthetic_ct.md and for eyeballing a new config).

    python -c "from common.synthetic.ct_preview import write_previews; write_previews('docs/images')"
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from common.synthetic.config import make_rng

__all__ = ["ct_montage", "nodule_montage", "write_previews"]


def _window(image: np.ndarray, low: float = -1000.0, high: float = 400.0) -> np.ndarray:
    return np.clip((image - low) / (high - low), 0.0, 1.0)


def _axial(volume: np.ndarray, k: int) -> np.ndarray:
    """Axial slice as a radiologist views it: anterior up, patient's right on the left of the screen."""
    return volume[::-1, ::-1, k].T  # (X, Y) -> rows = -y (anterior first), columns = -x (right first)


def _coronal(volume: np.ndarray, j: int) -> np.ndarray:
    return volume[::-1, j, ::-1].T  # rows = superior first, columns = patient's right first


def ct_montage(path: str | os.PathLike, seed: int = 0, n_scans: int = 3, phantom: dict[str, Any] | None = None) -> Path:
    """Axial, coronal and label views of ``n_scans`` random phantoms, saved as one PNG.

    Args:
        path: output PNG.
        seed: random seed.
        n_scans: number of phantoms (rows).
        phantom: phantom config overrides (default: 256 matrix, 2 mm slices).

    Returns:
        the PNG path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from common.io.atomic import atomic_path
    from common.synthetic.ct_phantom import make_chest_phantom

    cfg = {"matrix": 256, "slice_spacing_mm": [2.0, 2.0], **(phantom or {})}
    fig, axes = plt.subplots(n_scans, 4, figsize=(16, 4.2 * n_scans), squeeze=False)
    for row in range(n_scans):
        ph = make_chest_phantom(make_rng(seed, "preview", row), {**cfg, "contrast_probability": 1.0 if row == 2 else 0.0})
        hu, lab = np.asarray(ph.hu), np.asarray(ph.lung_label)
        z_levels = np.nonzero(lab.any(axis=(0, 1)))[0]
        k_low, k_high = z_levels[int(0.3 * len(z_levels))], z_levels[int(0.75 * len(z_levels))]
        j_mid = int(np.argwhere(lab > 0)[:, 1].mean())
        sx, sy, sz = ph.spacing
        views = [
            (_window(_axial(hu, k_low)), f"axial (lower), {hu.shape[0]}x{hu.shape[1]} @ {sx:.2f} mm", sy / sx),
            (_window(_axial(hu, k_high)), f"axial (upper), {hu.shape[2]} slices @ {sz:.1f} mm", sy / sx),
            (_window(_coronal(hu, j_mid)), "coronal", sz / sx),
            (_coronal(lab, j_mid), "lung label: 1 right (teal), 2 left (yellow)", sz / sx),
        ]
        for ax, (image, title, aspect) in zip(axes[row], views):
            gray = image.dtype != np.uint8
            ax.imshow(image, cmap="gray" if gray else "viridis", vmin=0.0, vmax=1.0 if gray else 2.0, aspect=aspect, interpolation="nearest")
            ax.set_title(title, fontsize=9)
            ax.axis("off")
        p = ph.params
        axes[row, 0].text(2, 12, f"scale {p['body_scale']:.2f}, breathing {p['breathing']:.2f}, noise {p['noise_sd_hu']:.0f} HU"
                          f"{', contrast' if p['contrast'] else ''}", color="yellow", fontsize=8)
    fig.suptitle("Synthetic chest CT phantoms (radiological view: patient's right on the left)", fontsize=11)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=70, format="png")
    plt.close(fig)
    return Path(path)


def nodule_montage(path: str | os.PathLike, seed: int = 0, n_nodules: int = 12) -> Path:
    """40 mm crops around nodules of a few phantoms (0.7 mm pixels), titled with type, margin, size and rating.

    Args:
        path: output PNG.
        seed: random seed.
        n_nodules: number of crops.

    Returns:
        the PNG path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from common.io.atomic import atomic_path
    from common.synthetic.ct_phantom import add_ct_noise, make_chest_phantom
    from common.synthetic.nodules import insert_nodules

    crops = []
    scan = 0
    while len(crops) < n_nodules and scan < 20:
        rng = make_rng(seed, "nodule-preview", scan)
        ph = make_chest_phantom(rng, {"in_plane_spacing_mm": 0.7, "slice_spacing_mm": [1.0, 1.0], "vessel_generations": 8}, add_noise=False)
        nodules, _ = insert_nodules(ph, rng, {"no_nodule_probability": 0.0, "nodules_per_scan": [4, 5],
                                              "margin_probabilities": {"round": 0.3, "lobulated": 0.3, "spiculated": 0.4},
                                              "type_probabilities": {"solid": 0.5, "part_solid": 0.25, "ground_glass": 0.25}})
        add_ct_noise(ph, rng)
        hu = np.asarray(ph.hu)
        half = int(round(20.0 / ph.spacing[0]))
        for n in nodules:
            i, j, k = (int(round(v)) for v in n.center_voxel)
            crop = hu[max(0, i - half): i + half, max(0, j - half): j + half, k]
            crops.append((crop[::-1, ::-1].T, n))
        scan += 1
    cols = 6
    rows = int(np.ceil(len(crops[:n_nodules]) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 3.1 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (crop, n) in zip(axes.ravel(), crops[:n_nodules]):
        ax.imshow(_window(crop), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_title(f"{n.kind.replace('_', '-')}, {n.margin}\n{n.diameter_mm:.1f} mm, malignancy {n.malignancy}", fontsize=8)
    fig.suptitle("Synthetic nodules (40 mm crops, lung window)", fontsize=11)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=70, format="png")
    plt.close(fig)
    return Path(path)


def write_previews(out_dir: str | os.PathLike = "docs/images", seed: int = 0) -> list[Path]:
    """Write ``ct_phantoms.png`` and ``ct_nodules.png`` into ``out_dir``."""
    out = Path(out_dir)
    return [ct_montage(out / "ct_phantoms.png", seed=seed), nodule_montage(out / "ct_nodules.png", seed=seed)]
