"""Evaluation report of a classifier: the figures Kermany et al. reported, with bootstrap 95% CIs.

``evaluate_probabilities`` computes, from class probabilities and true labels:

* accuracy; per class sensitivity, specificity and one-vs-rest AUROC; the macro-average AUROC;
* each binary question of the task (OCT: urgent referral; CXR: pneumonia vs normal, bacterial vs
  viral): AUROC, and accuracy, sensitivity and specificity at the question's threshold;
* calibration: the expected calibration error (15 equal-width bins) of each binary question's score and
  of the top-label confidence;
* the confusion matrix (rows true, columns predicted);
* OCT: Kermany's penalty-weighted error (``common.metrics.kermany``), with the penalty matrix used.

Every figure carries a percentile bootstrap 95% CI over images (``common.metrics.classification``).
``write_report`` adds ``roc_curves.png`` and ``confusion_matrix.png`` next to ``report.json``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from common.classification.tasks import ClassificationTask
from common.io.atomic import atomic_path, atomic_write_json
from common.metrics.calibration import expected_calibration_error
from common.metrics.classification import (
    bootstrap_ci,
    confusion_matrix,
    roc_auc,
    roc_curve,
    sensitivity_specificity,
)
from common.metrics.kermany import KERMANY_PENALTY, weighted_error

logger = logging.getLogger(__name__)


def _accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    return float((y == pred).mean()) if y.size else float("nan")


def _sens(y: np.ndarray, pred: np.ndarray) -> float:
    return sensitivity_specificity(y, pred)[0]


def _spec(y: np.ndarray, pred: np.ndarray) -> float:
    return sensitivity_specificity(y, pred)[1]


def evaluate_probabilities(
    probs: np.ndarray,
    labels: np.ndarray,
    task: ClassificationTask,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """All evaluation figures of ``task`` for ``probs`` (N, C) against ``labels`` (N,).

    Args:
        probs: class probabilities, rows summing to 1.
        labels: true class indices.
        task: class names and binary questions.
        n_boot: bootstrap resamples for the 95% CIs (0: no CIs).
        seed: bootstrap seed.

    Returns:
        a JSON-serialisable dict; each figure is ``{"value", "ci_low", "ci_high", "n", "n_boot"}``.
    """
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=int).ravel()
    names = task.class_names
    pred = probs.argmax(axis=1)

    def ci(metric, *arrays):
        if n_boot <= 0:
            return {"value": float(metric(*arrays)), "n": int(len(arrays[0]))}
        return bootstrap_ci(metric, *arrays, n_boot=n_boot, alpha=0.05, seed=seed)

    report: dict[str, Any] = {
        "n_images": int(labels.size),
        "classes": list(names),
        "class_counts": {c: int((labels == i).sum()) for i, c in enumerate(names)},
        "accuracy": ci(_accuracy, labels, pred),
        "per_class": {},
    }
    aucs = []
    for i, c in enumerate(names):
        y = (labels == i).astype(int)
        p = (pred == i).astype(int)
        auc = ci(roc_auc, y, probs[:, i])
        aucs.append(auc["value"])
        report["per_class"][c] = {
            "sensitivity": ci(_sens, y, p),
            "specificity": ci(_spec, y, p),
            "auroc_one_vs_rest": auc,
        }
    report["macro_auroc"] = float(np.nanmean(aucs)) if np.isfinite(aucs).any() else float("nan")
    report["binary"] = {}
    for q in task.questions:
        mask, y = q.select(labels, names)
        score = q.score(probs[mask], names)
        call = (score >= q.threshold).astype(int)
        report["binary"][q.name] = {
            "positive": list(q.positive),
            "negative": list(q.negative),
            "threshold": q.threshold,
            "n_positive": int(y.sum()),
            "n_negative": int((1 - y).sum()),
            "auroc": ci(roc_auc, y, score),
            "accuracy": ci(_accuracy, y, call),
            "sensitivity": ci(_sens, y, call),
            "specificity": ci(_spec, y, call),
            "ece": expected_calibration_error(y, np.clip(score, 0.0, 1.0), 15),
        }
    report["top_label_ece"] = expected_calibration_error(
        pred == labels, np.clip(probs.max(axis=1), 0.0, 1.0), 15
    )
    report["confusion_matrix"] = {
        "rows": "true class",
        "columns": "predicted class",
        "classes": list(names),
        "matrix": confusion_matrix(labels, pred, len(names)).tolist(),
    }
    if task.name == "oct":
        report["kermany_weighted_error"] = {
            **ci(weighted_error, labels, pred),
            "penalty_matrix": KERMANY_PENALTY.tolist(),
            "penalty_rows": "true class",
            "penalty_columns": "predicted class",
            "reference": "Kermany et al., Cell 2018; total penalty / number of images (see common.metrics.kermany)",
        }
    report["bootstrap"] = {
        "n_boot": n_boot,
        "alpha": 0.05,
        "seed": seed,
        "method": "percentile, resampling images",
    }
    return report


def _save_figure(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")


def plot_roc_curves(
    probs: np.ndarray, labels: np.ndarray, task: ClassificationTask, path: str | os.PathLike
) -> Path:
    """One-vs-rest ROC per class and ROC of each binary question, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=int).ravel()
    names = task.class_names
    n_panels = 1 + len(task.questions)
    fig, axes = plt.subplots(1, n_panels, figsize=(4.2 * n_panels, 4.2), squeeze=False)
    ax = axes[0, 0]
    for i, c in enumerate(names):
        y = (labels == i).astype(int)
        if 0 < y.sum() < y.size:
            fpr, tpr, _ = roc_curve(y, probs[:, i])
            ax.plot(fpr, tpr, label=f"{c} (AUC {roc_auc(y, probs[:, i]):.3f})")
    ax.set_title("one vs rest")
    for ax_q, q in zip(axes[0, 1:], task.questions):
        mask, y = q.select(labels, names)
        score = q.score(probs[mask], names)
        if 0 < y.sum() < y.size:
            fpr, tpr, _ = roc_curve(y, score)
            ax_q.plot(fpr, tpr, color="C3", label=f"AUC {roc_auc(y, score):.3f}")
        ax_q.set_title(q.name.replace("_", " "))
    for a in axes[0]:
        a.plot([0, 1], [0, 1], ls=":", color="gray", lw=0.8)
        a.set_xlabel("1 - specificity")
        a.set_ylabel("sensitivity")
        a.set_xlim(0, 1)
        a.set_ylim(0, 1.01)
        a.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    _save_figure(fig, Path(path))
    plt.close(fig)
    return Path(path)


def plot_confusion_matrix(
    matrix: np.ndarray, class_names: list[str] | tuple[str, ...], path: str | os.PathLike
) -> Path:
    """Confusion matrix PNG (counts, rows true, columns predicted, shaded by row share)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(matrix)
    share = cm / np.clip(cm.sum(axis=1, keepdims=True), 1, None)
    fig, ax = plt.subplots(figsize=(1.2 * len(class_names) + 2, 1.1 * len(class_names) + 1.5))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if share[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(class_names)), class_names, rotation=30)
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.tight_layout()
    _save_figure(fig, Path(path))
    plt.close(fig)
    return Path(path)


def write_report(
    probs: np.ndarray,
    labels: np.ndarray,
    task: ClassificationTask,
    output_dir: str | os.PathLike,
    n_boot: int = 1000,
    seed: int = 0,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate and write ``report.json``, ``roc_curves.png`` and ``confusion_matrix.png`` to ``output_dir``.

    Returns:
        the report dict.
    """
    out = Path(output_dir)
    report = evaluate_probabilities(probs, labels, task, n_boot=n_boot, seed=seed)
    if extra:
        report.update(extra)
    plot_roc_curves(probs, labels, task, out / "roc_curves.png")
    plot_confusion_matrix(
        np.array(report["confusion_matrix"]["matrix"]), task.class_names, out / "confusion_matrix.png"
    )
    atomic_write_json(out / "report.json", report)
    acc = report["accuracy"]
    logger.info(
        "evaluation on %d images: accuracy %.4f (95%% CI %s-%s), report in %s",
        report["n_images"],
        acc["value"],
        f"{acc.get('ci_low', float('nan')):.4f}",
        f"{acc.get('ci_high', float('nan')):.4f}",
        out / "report.json",
    )
    return report
