"""FROC analysis and the Competition Performance Metric (CPM) as LUNA16 scores nodule detection.

LUNA16's rules (Setio et al., Med Image Anal 2017, and its ``noduleCADEvaluationLUNA16.py``):

- a detection is a **hit** for a nodule when its centre lies within the nodule's radius
  (``distance(centre, nodule centre) <= diameter / 2``);
- several hits on one nodule count once, with the highest score; the others are neither true nor false;
- detections on *ignored* findings (in LUNA16: nodules < 3 mm, non-nodules, and here also masses > 30 mm)
  are dropped: neither true nor false positives; a detection hitting a counted nodule is never an FP;
- every other detection is a false positive;
- the FROC curve plots sensitivity (detected / all counted nodules) against false positives per scan as
  the score threshold falls; CPM is the mean sensitivity at 1/8, 1/4, 1/2, 1, 2, 4 and 8 FPs per scan,
  read off the curve by linear interpolation (LUNA16 interpolates the same way, without its bootstrap).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["CPM_FP_RATES", "ScanDetections", "match_scan", "froc", "FROCResult"]

CPM_FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


@dataclass
class ScanDetections:
    """Detections and reference nodules of one scan, in world millimetres (any one consistent frame).

    Attributes:
        pred_centres: ``(N, 3)`` detection centres.
        pred_scores: ``(N,)`` detection scores.
        gt_centres: ``(M, 3)`` nodule centres.
        gt_diameters: ``(M,)`` nodule diameters in mm.
        gt_ignore: ``(M,)`` True for findings whose hits are neither true nor false positives.
    """

    pred_centres: np.ndarray
    pred_scores: np.ndarray
    gt_centres: np.ndarray
    gt_diameters: np.ndarray
    gt_ignore: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.pred_centres = np.asarray(self.pred_centres, dtype=np.float64).reshape(-1, 3)
        self.pred_scores = np.asarray(self.pred_scores, dtype=np.float64).reshape(-1)
        self.gt_centres = np.asarray(self.gt_centres, dtype=np.float64).reshape(-1, 3)
        self.gt_diameters = np.asarray(self.gt_diameters, dtype=np.float64).reshape(-1)
        m = self.gt_centres.shape[0]
        self.gt_ignore = (
            np.zeros(m, bool) if self.gt_ignore is None else np.asarray(self.gt_ignore, bool).reshape(-1)
        )
        if self.pred_scores.shape[0] != self.pred_centres.shape[0]:
            raise ValueError("pred_centres and pred_scores differ in length")
        if self.gt_diameters.shape[0] != m or self.gt_ignore.shape[0] != m:
            raise ValueError("gt_centres, gt_diameters and gt_ignore differ in length")


def match_scan(scan: ScanDetections) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Score each counted nodule and list the false positives of one scan (LUNA16's rules).

    Returns:
        ``nodule_scores``: ``(M_counted,)`` highest score of a hit per counted nodule (``-inf``: missed);
        ``fp_scores``: scores of the false positives;
        ``best_detection``: ``(M_counted,)`` index of the detection giving ``nodule_scores`` (-1: missed).
    """
    counted = ~scan.gt_ignore
    n_pred = scan.pred_centres.shape[0]
    if scan.gt_centres.shape[0]:
        dist = np.linalg.norm(scan.pred_centres[:, None, :] - scan.gt_centres[None, :, :], axis=-1)
        hits = dist <= (scan.gt_diameters / 2.0)[None, :]
    else:
        hits = np.zeros((n_pred, 0), bool)
    hits_counted = hits[:, counted]
    hits_ignored = hits[:, ~counted]
    nodule_scores = np.full(int(counted.sum()), -np.inf)
    best = np.full(int(counted.sum()), -1, dtype=np.int64)
    for j in range(hits_counted.shape[1]):
        idx = np.flatnonzero(hits_counted[:, j])
        if idx.size:
            k = idx[np.argmax(scan.pred_scores[idx])]
            nodule_scores[j], best[j] = scan.pred_scores[k], k
    is_fp = ~hits_counted.any(axis=1) & ~hits_ignored.any(axis=1)
    return nodule_scores, scan.pred_scores[is_fp], best


@dataclass
class FROCResult:
    """FROC curve and CPM.

    Attributes:
        fps_per_scan: false positives per scan at each threshold (ascending).
        sensitivity: sensitivity at each threshold.
        thresholds: the score thresholds (descending).
        sensitivity_at: sensitivity interpolated at each of ``fp_rates``.
        cpm: mean of ``sensitivity_at``.
        num_nodules: counted nodules; num_scans: scans; num_detected: nodules hit at any score.
    """

    fps_per_scan: list[float]
    sensitivity: list[float]
    thresholds: list[float]
    fp_rates: list[float]
    sensitivity_at: list[float]
    cpm: float
    num_nodules: int
    num_scans: int
    num_detected: int
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "cpm": self.cpm,
            "sensitivity_at_fp_per_scan": dict(zip([str(r) for r in self.fp_rates], self.sensitivity_at)),
            "num_nodules": self.num_nodules,
            "num_scans": self.num_scans,
            "num_detected_at_any_score": self.num_detected,
            "curve": {
                "fps_per_scan": self.fps_per_scan,
                "sensitivity": self.sensitivity,
                "thresholds": self.thresholds,
            },
        }


def froc(scans: Sequence[ScanDetections], fp_rates: Sequence[float] = CPM_FP_RATES) -> FROCResult:
    """FROC curve and CPM over a set of scans (see the module docstring for the rules).

    Args:
        scans: one ``ScanDetections`` per scan; a scan without nodules still counts for FPs per scan.
        fp_rates: false positives per scan at which sensitivity is averaged (LUNA16's seven by default).

    Returns:
        the ``FROCResult``; with no counted nodule sensitivities are NaN.
    """
    if not scans:
        raise ValueError("froc needs at least one scan")
    tp_scores, fp_scores = [], []
    for scan in scans:
        nodule_scores, fps, _ = match_scan(scan)
        tp_scores.append(nodule_scores)
        fp_scores.append(fps)
    tp = np.concatenate(tp_scores) if tp_scores else np.zeros(0)
    fp = np.concatenate(fp_scores) if fp_scores else np.zeros(0)
    num_nodules, num_scans = tp.shape[0], len(scans)
    detected = tp[np.isfinite(tp)]
    thresholds = np.unique(np.concatenate([detected, fp]))[::-1]
    # at each threshold: detections with score >= threshold are kept; the curve starts at (0, 0)
    tp_sorted, fp_sorted = np.sort(detected), np.sort(fp)
    n_tp = tp_sorted.size - np.searchsorted(tp_sorted, thresholds, side="left")
    n_fp = fp_sorted.size - np.searchsorted(fp_sorted, thresholds, side="left")
    fps = np.concatenate([[0.0], n_fp / num_scans])
    if num_nodules:
        sens = np.concatenate([[0.0], n_tp / num_nodules])
    else:
        sens = np.full(fps.shape, np.nan)
    thresholds_out = np.concatenate([[np.inf], thresholds])
    # np.interp needs increasing x; at equal FP counts keep the highest sensitivity (the last point)
    sensitivity_at = [float(_interp_froc(r, fps, sens)) for r in fp_rates]
    return FROCResult(
        fps_per_scan=fps.tolist(),
        sensitivity=sens.tolist(),
        thresholds=[float(t) for t in thresholds_out],
        fp_rates=[float(r) for r in fp_rates],
        sensitivity_at=sensitivity_at,
        cpm=float(np.mean(sensitivity_at)),
        num_nodules=int(num_nodules),
        num_scans=int(num_scans),
        num_detected=int(detected.size),
    )


def _interp_froc(rate: float, fps: np.ndarray, sens: np.ndarray) -> float:
    """Sensitivity at ``rate`` FPs per scan by linear interpolation along the curve, held flat past its end."""
    if np.isnan(sens).all():
        return float("nan")
    # the curve is a staircase with vertical steps (same FPs, rising sensitivity): for interpolation use the
    # highest sensitivity reached at each FP level
    levels, last = np.unique(fps[::-1], return_index=True)
    best = sens[::-1][last]
    best = np.maximum.accumulate(best)
    return float(np.interp(rate, levels, best))
