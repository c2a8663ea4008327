"""Detection metrics for ignite engines: LUNA16 FROC/CPM, COCO-style mAP, malignancy within one grade.

All of them read the per-scan outputs of ``DetectionEvaluator`` after the postprocessing has put the
detections in world millimetres (``DetectionsToWorldd``: ``pred_box`` LPS ``cccwhd``), next to the
datalist's reference boxes (``gt_box``, ``gt_malignancy``, ``gt_ignore_box``, also LPS ``cccwhd``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.metrics import Metric

from common.io.atomic import atomic_path, atomic_write_json
from common.metrics.froc import CPM_FP_RATES, FROCResult, ScanDetections, froc, match_scan

logger = logging.getLogger(__name__)

__all__ = ["ScanRecord", "to_record", "NoduleCPM", "DetectionReport", "evaluate_records"]


def _np(value: Any, shape_tail: tuple[int, ...] = ()) -> np.ndarray:
    if value is None:
        return np.zeros((0, *shape_tail))
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    arr = np.asarray(value, dtype=np.float64)
    return arr.reshape((-1, *shape_tail)) if shape_tail else arr.reshape(-1)


class ScanRecord:
    """Detections and references of one scan, world mm, ``cccwhd`` boxes (numpy)."""

    def __init__(self, pred_box, pred_score, pred_malignancy, gt_box, gt_malignancy, gt_ignore_box) -> None:
        self.pred_box = _np(pred_box, (6,))
        self.pred_score = _np(pred_score)
        self.pred_malignancy = (
            _np(pred_malignancy, (5,)) if np.size(_np(pred_malignancy)) else np.zeros((0, 5))
        )
        self.gt_box = _np(gt_box, (6,))
        self.gt_malignancy = (
            _np(gt_malignancy) if gt_malignancy is not None else np.zeros(self.gt_box.shape[0])
        )
        self.gt_ignore_box = _np(gt_ignore_box, (6,))

    def scan(self, min_diameter_mm: float = 0.0) -> ScanDetections:
        """``ScanDetections`` for FROC; references below ``min_diameter_mm`` and masses are ignored findings."""
        diam = self.gt_box[:, 3:].mean(axis=1) if self.gt_box.size else np.zeros(0)
        ign_diam = self.gt_ignore_box[:, 3:].mean(axis=1) if self.gt_ignore_box.size else np.zeros(0)
        return ScanDetections(
            pred_centres=self.pred_box[:, :3],
            pred_scores=self.pred_score,
            gt_centres=np.concatenate([self.gt_box[:, :3], self.gt_ignore_box[:, :3]]),
            gt_diameters=np.concatenate([diam, ign_diam]),
            gt_ignore=np.concatenate([diam < min_diameter_mm, np.ones(ign_diam.shape[0], bool)]),
        )


def to_record(output: dict[str, Any]) -> ScanRecord:
    return ScanRecord(
        output.get("pred_box"),
        output.get("pred_score"),
        output.get("pred_malignancy"),
        output.get("gt_box"),
        output.get("gt_malignancy"),
        output.get("gt_ignore_box"),
    )


def _outputs(output: Any) -> list[dict[str, Any]]:
    return list(output) if isinstance(output, (list, tuple)) else [output]


class NoduleCPM(Metric):
    """CPM (LUNA16's mean sensitivity at 1/8-8 FPs per scan) as an ignite metric, for ``key_val_metric``.

    Args:
        min_diameter_mm: references smaller than this are ignored findings (hits neither TP nor FP).
        fp_rates: FP-per-scan operating points.
        output_transform: maps ``engine.state.output`` (a list of per-scan dicts) to that list.
    """

    def __init__(
        self,
        min_diameter_mm: float = 0.0,
        fp_rates: Sequence[float] = CPM_FP_RATES,
        output_transform: Callable = lambda x: x,
        device: str | torch.device = "cpu",
    ) -> None:
        self.min_diameter_mm = min_diameter_mm
        self.fp_rates = tuple(fp_rates)
        self._records: list[ScanRecord] = []
        super().__init__(output_transform=output_transform, device=device)

    def reset(self) -> None:
        self._records = []

    def update(self, output: Any) -> None:
        self._records.extend(to_record(o) for o in _outputs(output))

    def compute(self) -> float:
        if not self._records:
            return 0.0
        cpm = froc([r.scan(self.min_diameter_mm) for r in self._records], self.fp_rates).cpm
        return 0.0 if np.isnan(cpm) else cpm


def _corners(boxes: np.ndarray) -> np.ndarray:
    return np.concatenate([boxes[:, :3] - boxes[:, 3:] / 2, boxes[:, :3] + boxes[:, 3:] / 2], axis=1)


def coco_map(records: Sequence[ScanRecord], min_diameter_mm: float = 0.0) -> dict[str, float]:
    """COCO-style mAP/mAR of MONAI's ``COCOMetric`` (IoU 0.1 and 0.1:0.5:0.05, as MONAI's LUNA16 bundle)."""
    from monai.apps.detection.metrics.coco import COCOMetric
    from monai.apps.detection.metrics.matching import matching_batch
    from monai.data.box_utils import box_iou

    metric = COCOMetric(
        classes=["nodule"], iou_list=[0.1], iou_range=[0.1, 0.5, 0.05], max_detection=[100], verbose=False
    )
    gt_boxes, gt_ignore = [], []
    for r in records:
        boxes = np.concatenate([r.gt_box, r.gt_ignore_box])
        diam = boxes[:, 3:].mean(axis=1) if boxes.size else np.zeros(0)
        ignore = np.concatenate([np.zeros(r.gt_box.shape[0], bool), np.ones(r.gt_ignore_box.shape[0], bool)])
        gt_boxes.append(_corners(boxes))
        gt_ignore.append(ignore | (diam < min_diameter_mm))
    results = matching_batch(
        iou_fn=box_iou,
        iou_thresholds=metric.iou_thresholds,
        pred_boxes=[_corners(r.pred_box) for r in records],
        pred_classes=[np.zeros(r.pred_box.shape[0], dtype=int) for r in records],
        pred_scores=[r.pred_score for r in records],
        gt_boxes=gt_boxes,
        gt_classes=[np.zeros(b.shape[0], dtype=int) for b in gt_boxes],
        gt_ignore=gt_ignore,
        max_detections=100,
    )
    values = metric(results)[0]
    return {k: float(v) for k, v in values.items()}


def malignancy_agreement(records: Sequence[ScanRecord], min_diameter_mm: float = 0.0) -> dict[str, Any]:
    """Malignancy rating of the best hit per rated, detected nodule vs the reference rating.

    Returns:
        ``within_one_grade_accuracy``, ``exact_accuracy`` and ``num_rated_detected`` (None when none).
    """
    diffs = []
    for r in records:
        scan = r.scan(min_diameter_mm)
        _, _, best = match_scan(scan)
        counted = np.flatnonzero(~scan.gt_ignore)
        for j, k in zip(counted, best):
            rating = r.gt_malignancy[j] if j < r.gt_malignancy.shape[0] else 0
            if k < 0 or rating < 1 or r.pred_malignancy.shape[0] <= k:
                continue
            diffs.append(abs(int(np.argmax(r.pred_malignancy[k])) + 1 - int(rating)))
    diffs_a = np.asarray(diffs)
    return {
        "within_one_grade_accuracy": float((diffs_a <= 1).mean()) if diffs else None,
        "exact_accuracy": float((diffs_a == 0).mean()) if diffs else None,
        "num_rated_detected": len(diffs),
    }


def evaluate_records(
    records: Sequence[ScanRecord], min_diameter_mm: float = 6.0, fp_rates: Sequence[float] = CPM_FP_RATES
) -> tuple[dict[str, Any], dict[str, FROCResult]]:
    """Every metric of the report: FROC/CPM for all nodules and for those >= ``min_diameter_mm``, mAP,
    malignancy agreement."""
    curves = {
        "all": froc([r.scan(0.0) for r in records], fp_rates),
        f">={min_diameter_mm:g}mm": froc([r.scan(min_diameter_mm) for r in records], fp_rates),
    }
    report: dict[str, Any] = {
        "num_scans": len(records),
        "coordinate_system": "world mm, LPS (as LUNA16 annotations.csv)",
        "hit_rule": "detection centre within the nodule radius (LUNA16)",
        "froc": {name: c.to_dict() for name, c in curves.items()},
        "cpm": curves["all"].cpm,
        f"cpm_{min_diameter_mm:g}mm": curves[f">={min_diameter_mm:g}mm"].cpm,
        "coco": coco_map(records),
        "malignancy": malignancy_agreement(records, 0.0),
    }
    return report, curves


def _json_safe(value: Any) -> Any:
    """NaN/inf (e.g. CPM without any nodule) -> None, so the report is valid JSON."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def plot_froc(curves: dict[str, FROCResult], path: str | os.PathLike, title: str = "FROC") -> Path:
    """Write a PNG of the FROC curves (log FP axis, the seven CPM operating points marked)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=100)
    for name, c in curves.items():
        fps = np.maximum(np.asarray(c.fps_per_scan), 1e-3)
        ax.step(fps, c.sensitivity, where="post", label=f"{name}: CPM {c.cpm:.3f} ({c.num_nodules} nodules)")
        ax.plot(c.fp_rates, c.sensitivity_at, "o", ms=4, color=ax.lines[-1].get_color())
    ax.set_xscale("log")
    ax.set_xlim(0.1, 10)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("false positives per scan")
    ax.set_ylabel("sensitivity")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)


class DetectionReport:
    """Ignite handler writing the evaluation report (JSON) and the FROC curve (PNG) when an epoch completes.

    Args:
        output_dir: folder of the report.
        min_diameter_mm: the size above which the second FROC/CPM is computed (6 mm by default).
        fp_rates: FP-per-scan operating points of CPM.
        filename: report JSON name; the PNG takes the same stem.
        output_transform: maps ``engine.state.output`` to the list of per-scan dicts.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        min_diameter_mm: float = 6.0,
        fp_rates: Sequence[float] = CPM_FP_RATES,
        filename: str = "metrics.json",
        output_transform: Callable = lambda x: x,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.min_diameter_mm = min_diameter_mm
        self.fp_rates = tuple(fp_rates)
        self.filename = filename
        self.output_transform = output_transform
        self.records: list[ScanRecord] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self.records = []

    def _collect(self, engine: Engine) -> None:
        self.records.extend(to_record(o) for o in _outputs(self.output_transform(engine.state.output)))

    def _write(self, engine: Engine) -> None:
        if not self.records:
            logger.warning("no scans evaluated; no report written")
            return
        report, curves = evaluate_records(self.records, self.min_diameter_mm, self.fp_rates)
        json_path = self.output_dir / self.filename
        png_path = json_path.with_suffix(".png").with_name(json_path.stem + "_froc.png")
        report["froc_plot"] = png_path.name
        atomic_write_json(json_path, _json_safe(report))
        plot_froc(curves, png_path, title=f"FROC ({report['num_scans']} scans)")
        logger.info(
            "CPM %.3f (all), %.3f (>= %g mm), mAP@0.1 %.3f; report %s",
            report["cpm"],
            report[f"cpm_{self.min_diameter_mm:g}mm"],
            self.min_diameter_mm,
            report["coco"].get("mAP_IoU_0.10_0.50_0.05_MaxDet_100", float("nan")),
            json_path,
        )
