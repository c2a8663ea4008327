"""Binary and multi-class classification metrics with bootstrap confidence intervals.

Used by the classification bundles (OCT, pediatric CXR) and the oxygen-risk bundle. AUROC is computed
with the rank (Mann-Whitney) formula, ties counted as one half, which equals the trapezoidal area under
the empirical ROC curve.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from scipy.stats import rankdata


def roc_auc(y_true: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve of ``score`` for the binary labels ``y_true``.

    Args:
        y_true: 0/1 labels, shape (N,).
        score: higher means more likely positive, shape (N,).

    Returns:
        AUROC in [0, 1], or NaN when only one class is present.
    """
    y = np.asarray(y_true).astype(bool).ravel()
    s = np.asarray(score, dtype=np.float64).ravel()
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def roc_curve(y_true: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Empirical ROC curve.

    Returns:
        false-positive rates, true-positive rates and the thresholds (score >= threshold is positive),
        from (0, 0) to (1, 1).
    """
    y = np.asarray(y_true).astype(bool).ravel()
    s = np.asarray(score, dtype=np.float64).ravel()
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    distinct = np.r_[np.where(np.diff(s))[0], y.size - 1]
    tps = np.cumsum(y)[distinct]
    fps = (distinct + 1) - tps
    tpr = np.r_[0.0, tps / max(y.sum(), 1)]
    fpr = np.r_[0.0, fps / max((~y).sum(), 1)]
    thresholds = np.r_[np.inf, s[distinct]]
    return fpr, tpr, thresholds


def sensitivity_specificity(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[float, float]:
    """Sensitivity (recall of positives) and specificity (recall of negatives) of binary predictions."""
    y = np.asarray(y_true).astype(bool).ravel()
    p = np.asarray(y_pred).astype(bool).ravel()
    sens = float((p & y).sum() / y.sum()) if y.any() else float("nan")
    spec = float((~p & ~y).sum() / (~y).sum()) if (~y).any() else float("nan")
    return sens, spec


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Confusion matrix, rows = true class, columns = predicted class."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, dtype=int).ravel(), np.asarray(y_pred, dtype=int).ravel()), 1)
    return cm


def bootstrap_ci(
    metric: Callable[..., float],
    *arrays: np.ndarray,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, Any]:
    """Point estimate and percentile bootstrap confidence interval of ``metric(*arrays)``.

    Cases are resampled with replacement (the same indices for every array); resamples where the metric
    is undefined (NaN, e.g. one class only) are dropped.

    Args:
        metric: function of the arrays returning a float.
        arrays: per-case arrays of equal length (labels, scores, ...).
        n_boot: number of bootstrap resamples.
        alpha: 1 - confidence level.
        seed: random seed of the resampling.

    Returns:
        ``{"value", "ci_low", "ci_high", "n", "n_boot"}``.
    """
    arrays = tuple(np.asarray(a) for a in arrays)
    n = len(arrays[0])
    value = float(metric(*arrays))
    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        v = metric(*(a[idx] for a in arrays))
        if np.isfinite(v):
            stats.append(v)
    if stats:
        low, high = np.percentile(stats, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    else:
        low = high = float("nan")
    return {"value": value, "ci_low": float(low), "ci_high": float(high), "n": int(n), "n_boot": len(stats)}
