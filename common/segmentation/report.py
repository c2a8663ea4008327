"""Evaluation report for lung segmentation: per-case and mean metrics as JSON, overlays as PNG.

:class:`LungSegmentationReport` is an ignite handler for a MONAI evaluator whose post-processing yields
``pred`` and ``label`` label maps on the input's own grid. For every case it computes
:func:`common.segmentation.metrics.lung_metrics` (spacing taken from the label's affine), and when the
evaluation completes it writes ``metrics.json`` and ``overlays.png`` (axial and coronal slices of the
first cases: reference contour over the predicted labels) through :mod:`common.io.atomic`.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor

from common.io.atomic import atomic_path, atomic_write_json
from common.segmentation.metrics import STRUCTURES, lung_metrics, voxel_spacing

logger = logging.getLogger(__name__)

METRIC_NAMES = ("dice", "hd95_mm", "volume_diff_ml")


def case_name(path: str | os.PathLike) -> str:
    """A case name from an image path: the file name without its image suffixes, or a DICOM folder's name."""
    name = Path(str(path).rstrip("/")).name
    for suffix in (".nii.gz", ".nii", ".mhd", ".mha", ".nrrd", ".dcm"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _clean(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN; null means "not defined for this case"
    return value


def summarise(cases: Sequence[dict]) -> dict[str, dict[str, float]]:
    """Mean and standard deviation over cases of every metric of every structure (undefined values skipped)."""
    summary: dict[str, dict[str, float]] = {"mean": {}, "std": {}}
    for structure in STRUCTURES:
        for metric in METRIC_NAMES:
            values = np.array([c["metrics"][structure][metric] for c in cases], dtype=np.float64)
            values = values[np.isfinite(values)]
            key = f"{metric}_{structure}"
            summary["mean"][key] = float(values.mean()) if values.size else math.nan
            summary["std"][key] = float(values.std()) if values.size else math.nan
    per_case = [c["dice"] for c in cases if math.isfinite(c["dice"])]
    summary["mean"]["dice"] = float(np.mean(per_case)) if per_case else math.nan
    summary["std"]["dice"] = float(np.std(per_case)) if per_case else math.nan
    return summary


def _ras_views(volume: np.ndarray, affine: np.ndarray) -> np.ndarray:
    return nib.orientations.apply_orientation(volume, nib.orientations.io_orientation(affine))


def overlay_slices(
    image: np.ndarray, pred: np.ndarray, ref: np.ndarray, affine: np.ndarray
) -> dict[str, Any]:
    """Axial and coronal slices through the reference lungs' centre, in RAS display orientation.

    Returns:
        ``{"axial": (img, pred, ref), "coronal": (img, pred, ref), "aspect": {...}}`` with 2D arrays.
    """
    img_r, pred_r, ref_r = (_ras_views(v, affine) for v in (image, pred, ref))
    spacing = voxel_spacing(affine)[np.argsort(nib.orientations.io_orientation(affine)[:, 0])]
    lungs = ref_r > 0 if ref_r.any() else pred_r > 0
    centre = [int(np.mean(np.nonzero(lungs.any(axis=tuple(a for a in range(3) if a != ax)))[0])) if lungs.any()
              else s // 2 for ax, s in enumerate(lungs.shape)]
    # rows anterior->posterior / superior->inferior, columns patient right on the viewer's left (radiological)
    # RAS arrays: the first axis points to the patient's right, so both axes of the slice are flipped
    axial = [np.flip(v[:, :, centre[2]].T, axis=(0, 1)) for v in (img_r, pred_r, ref_r)]
    coronal = [np.flip(v[:, centre[1], :].T, axis=(0, 1)) for v in (img_r, pred_r, ref_r)]
    return {
        "axial": axial,
        "coronal": coronal,
        "aspect": {"axial": spacing[1] / spacing[0], "coronal": spacing[2] / spacing[0]},
    }


def plot_overlays(path: str | os.PathLike, panels: Sequence[tuple[str, dict[str, Any]]]) -> Path:
    """Write a PNG with one row per case: axial and coronal slices, predicted labels filled (right lung
    red, left lung blue), reference outlined in yellow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    cmap = ListedColormap([(0, 0, 0, 0), (0.9, 0.2, 0.2, 0.45), (0.2, 0.4, 0.95, 0.45)])
    rows = max(len(panels), 1)
    fig, axes = plt.subplots(rows, 2, figsize=(8, 4 * rows), squeeze=False)
    for row, (name, views) in enumerate(panels):
        for col, view in enumerate(("axial", "coronal")):
            img, pred, ref = views[view]
            ax = axes[row, col]
            ax.imshow(img, cmap="gray", vmin=-1000, vmax=400, aspect=views["aspect"][view], interpolation="nearest")
            ax.imshow(pred, cmap=cmap, vmin=0, vmax=2, aspect=views["aspect"][view], interpolation="nearest")
            if ref.any():
                ax.contour(ref > 0, levels=[0.5], colors="yellow", linewidths=0.8)
            ax.set_title(f"{name} {view} (R on left)", fontsize=9)
            ax.axis("off")
    fig.suptitle("prediction: red right lung, blue left lung; yellow: reference", fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
    return Path(path)


class LungSegmentationReport:
    """Ignite handler: lung metrics per case, JSON report and overlay PNG at the end of the evaluation.

    Args:
        output_dir: folder of the report (created).
        pred_key: key of the predicted label map in each output item (on the input grid).
        label_key: key of the reference label map (same grid).
        image_key: key of the image; its ``filename_or_obj`` meta names the case and is re-read with
            ``LoadCTd`` for the overlays.
        json_name: report file name.
        png_name: overlay image name ("" for none).
        n_overlays: number of cases drawn.
        hausdorff: compute the 95% Hausdorff distance.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        pred_key: str = "pred",
        label_key: str = "label",
        image_key: str = "image",
        json_name: str = "metrics.json",
        png_name: str = "overlays.png",
        n_overlays: int = 3,
        hausdorff: bool = True,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.pred_key, self.label_key, self.image_key = pred_key, label_key, image_key
        self.json_name, self.png_name = json_name, png_name
        self.n_overlays = n_overlays
        self.hausdorff = hausdorff
        self.cases: list[dict] = []
        self.panels: list[tuple[str, dict]] = []

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)

    def reset(self, engine: Any = None) -> None:
        self.cases, self.panels = [], []

    def iteration_completed(self, engine: Any) -> None:
        output = engine.state.output
        for item in output if isinstance(output, list) else [output]:
            self.add_case(item)

    def add_case(self, item: dict) -> dict:
        """Compute and keep the metrics of one case (an output item with pred, label and image)."""
        pred, ref = item[self.pred_key], item[self.label_key]
        affine = np.asarray(ref.affine if isinstance(ref, MetaTensor) else pred.affine, dtype=np.float64)
        image = item.get(self.image_key)
        meta = image.meta if isinstance(image, MetaTensor) else getattr(ref, "meta", {})
        image_path = str(meta.get("filename_or_obj", ""))
        label_path = str(ref.meta.get("filename_or_obj", "")) if isinstance(ref, MetaTensor) else ""
        metrics = lung_metrics(pred, ref, voxel_spacing(affine), hausdorff=self.hausdorff)
        lung_dice = [metrics[s]["dice"] for s in ("right_lung", "left_lung")]
        lung_dice = [v for v in lung_dice if math.isfinite(v)]
        case = {
            "case": case_name(image_path) if image_path else f"case_{len(self.cases)}",
            "image": image_path,
            "label": label_path,
            "spacing_mm": voxel_spacing(affine).round(4).tolist(),
            "label_split_from_binary": bool(ref.meta.get("lung_label_split", False))
            if isinstance(ref, MetaTensor)
            else False,
            "dice": float(np.mean(lung_dice)) if lung_dice else math.nan,
            "metrics": metrics,
        }
        self.cases.append(case)
        logger.info("%s: Dice right %.4f left %.4f both %.4f", case["case"], metrics["right_lung"]["dice"],
                    metrics["left_lung"]["dice"], metrics["both_lungs"]["dice"])
        if len(self.panels) < self.n_overlays and self.png_name and image_path:
            self.panels.append((case["case"], self._panel(image_path, pred, ref, affine)))
        return case

    def _panel(self, image_path: str, pred: Any, ref: Any, affine: np.ndarray) -> dict:
        from common.transforms import LoadCTd

        image = LoadCTd(keys="image")({"image": image_path})["image"]
        pred_np, ref_np = tensor_to_numpy(pred), tensor_to_numpy(ref)
        return overlay_slices(
            tensor_to_numpy(image)[0], pred_np.reshape(pred_np.shape[-3:]), ref_np.reshape(ref_np.shape[-3:]), affine
        )

    def epoch_completed(self, engine: Any = None) -> dict:
        return self.write()

    def write(self) -> dict:
        """Write the JSON report (and the PNG); returns the report."""
        summary = summarise(self.cases) if self.cases else {"mean": {}, "std": {}}
        report = {
            "task": "lung_ct_segmentation",
            "grid": "each input image's own grid (predictions resampled back before scoring)",
            "labels": {"0": "background", "1": "right lung", "2": "left lung"},
            "dice_definition": "per case: mean of right- and left-lung Dice; mean: average over cases",
            "n_cases": len(self.cases),
            "mean": summary["mean"],
            "std": summary["std"],
            "cases": self.cases,
        }
        self.output_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.output_dir / self.json_name, _clean(report))
        if self.png_name and self.panels:
            plot_overlays(self.output_dir / self.png_name, self.panels)
        logger.info("evaluation report of %d cases: mean Dice %.4f -> %s", len(self.cases),
                    summary["mean"].get("dice", math.nan), self.output_dir / self.json_name)
        return report


def tensor_to_numpy(x: Any) -> np.ndarray:
    """Plain NumPy copy of a (Meta)Tensor or array."""
    if isinstance(x, MetaTensor):
        x = x.as_tensor()
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
