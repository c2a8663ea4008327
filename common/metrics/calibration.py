"""Calibration of predicted probabilities: Brier score, expected calibration error, reliability diagram.

A model whose AUROC is high can still be badly calibrated (its 30% risks come true 60% of the time), and
for triage the probability itself is what a clinician reads, so the oxygen-risk bundle reports both.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from common.io.atomic import atomic_path


def _as_arrays(y_true: np.ndarray, prob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true, dtype=np.float64).ravel()
    p = np.asarray(prob, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"labels and probabilities differ in length: {y.size} vs {p.size}")
    if p.size and (p.min() < 0 or p.max() > 1):
        raise ValueError("probabilities must lie in [0, 1]")
    return y, p


def brier_score(y_true: np.ndarray, prob: np.ndarray) -> float:
    """Mean squared difference between the predicted probability and the 0/1 outcome (lower is better).

    Args:
        y_true: 0/1 outcomes, shape (N,).
        prob: predicted probabilities of the outcome, shape (N,).

    Returns:
        Brier score in [0, 1]; NaN for no cases.
    """
    y, p = _as_arrays(y_true, prob)
    return float(np.mean((p - y) ** 2)) if y.size else float("nan")


def reliability_curve(y_true: np.ndarray, prob: np.ndarray, n_bins: int = 10,
                      strategy: str = "uniform") -> dict[str, np.ndarray]:
    """Observed frequency against mean predicted probability per bin.

    Args:
        y_true: 0/1 outcomes.
        prob: predicted probabilities.
        n_bins: number of bins.
        strategy: ``"uniform"`` (equal-width bins on [0, 1]) or ``"quantile"`` (equal-count bins).

    Returns:
        ``{"edges", "mean_predicted", "observed", "count"}``; empty bins have NaN means and count 0.
    """
    y, p = _as_arrays(y_true, prob)
    if strategy == "uniform":
        edges = np.linspace(0.0, 1.0, n_bins + 1)
    elif strategy == "quantile":
        edges = np.unique(np.quantile(p, np.linspace(0.0, 1.0, n_bins + 1))) if p.size else np.array([0.0, 1.0])
        edges[0], edges[-1] = 0.0, 1.0
    else:
        raise ValueError(f"strategy must be 'uniform' or 'quantile', got {strategy!r}")
    idx = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, len(edges) - 2)
    nb = len(edges) - 1
    count = np.bincount(idx, minlength=nb).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.bincount(idx, weights=p, minlength=nb) / count
        obs = np.bincount(idx, weights=y, minlength=nb) / count
    return {"edges": edges, "mean_predicted": mean_p, "observed": obs, "count": count}


def expected_calibration_error(y_true: np.ndarray, prob: np.ndarray, n_bins: int = 10,
                               strategy: str = "uniform") -> float:
    """ECE: count-weighted mean absolute gap between observed frequency and mean probability per bin.

    Returns:
        ECE in [0, 1]; NaN for no cases.
    """
    curve = reliability_curve(y_true, prob, n_bins, strategy)
    n = curve["count"].sum()
    if n == 0:
        return float("nan")
    ok = curve["count"] > 0
    gaps = np.abs(curve["observed"][ok] - curve["mean_predicted"][ok])
    return float(np.sum(curve["count"][ok] * gaps) / n)


def calibration_summary(y_true: np.ndarray, prob: np.ndarray, n_bins: int = 10) -> dict[str, Any]:
    """Brier score, ECE, mean predicted risk and observed rate, and the reliability bins (JSON-ready)."""
    y, p = _as_arrays(y_true, prob)
    curve = reliability_curve(y, p, n_bins)
    return {
        "brier": brier_score(y, p),
        "ece": expected_calibration_error(y, p, n_bins),
        "mean_predicted": float(p.mean()) if p.size else float("nan"),
        "observed_rate": float(y.mean()) if y.size else float("nan"),
        "bins": {
            "edges": curve["edges"].round(4).tolist(),
            "mean_predicted": [None if not np.isfinite(v) else round(float(v), 4) for v in curve["mean_predicted"]],
            "observed": [None if not np.isfinite(v) else round(float(v), 4) for v in curve["observed"]],
            "count": curve["count"].tolist(),
        },
    }


def plot_reliability_diagram(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
    path: str | os.PathLike,
    n_bins: int = 10,
    title: str = "Reliability diagram",
) -> Path:
    """Write a reliability diagram PNG (one line per outcome, a histogram of predictions beneath).

    Args:
        curves: ``{label: (y_true, prob)}``; the legend shows each label with its Brier score and ECE.
        path: PNG to write (atomically).
        n_bins: bins per curve.
        title: figure title.

    Returns:
        the PNG path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, axh) = plt.subplots(2, 1, figsize=(5.5, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="perfectly calibrated")
    for label, (y, p) in curves.items():
        c = reliability_curve(y, p, n_bins)
        ok = c["count"] > 0
        brier, ece = brier_score(y, p), expected_calibration_error(y, p, n_bins)
        line = ax.plot(c["mean_predicted"][ok], c["observed"][ok], marker="o", markersize=3,
                       label=f"{label} (Brier {brier:.3f}, ECE {ece:.3f})")[0]
        axh.hist(np.asarray(p).ravel(), bins=c["edges"], histtype="step", color=line.get_color())
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("observed frequency")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper left")
    axh.set_xlabel("predicted probability")
    axh.set_ylabel("cases")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return Path(path)
