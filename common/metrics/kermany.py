"""Kermany et al.'s penalty-weighted error for OCT referral (Cell 2018, Figure 3 and its supplement).

Accuracy counts every mistake the same, but calling a choroidal neovascularisation "normal" delays an
anti-VEGF injection while calling drusen "CNV" costs an unnecessary urgent visit. Kermany et al. scored
the model and six experts with a penalty per (true, predicted) pair that grows with the clinical cost of
the mistake, and reported the weighted error = total penalty / number of images (model 6.6%, experts
0.4% to 10.5%).

Default penalty matrix (rows: true class, columns: predicted class; order CNV, DME, DRUSEN, NORMAL):

============  ====  ====  ======  ======
true \\ pred   CNV   DME   DRUSEN  NORMAL
============  ====  ====  ======  ======
CNV           0     1     4       4
DME           1     0     4       4
DRUSEN        2     2     0       1
NORMAL        2     2     1       0
============  ====  ====  ======  ======

The principle follows the paper: missing an urgent case (CNV or DME called DRUSEN or NORMAL) costs most
(4), over-referring a routine/observation case as urgent costs 2, and a mistake within the same referral
group costs 1. The exact numbers are our reading of the paper's supplementary penalty figure, which we
could not re-check offline: pass ``penalty=`` to use another matrix and report the one used (the
evaluation report stores it next to the figure).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from common.metrics.classification import confusion_matrix

OCT_CLASS_ORDER: tuple[str, ...] = ("CNV", "DME", "DRUSEN", "NORMAL")

KERMANY_PENALTY: np.ndarray = np.array(
    [
        [0, 1, 4, 4],
        [1, 0, 4, 4],
        [2, 2, 0, 1],
        [2, 2, 1, 0],
    ],
    dtype=np.float64,
)


def weighted_error(
    y_true: Sequence[int] | np.ndarray,
    y_pred: Sequence[int] | np.ndarray,
    penalty: np.ndarray | Sequence[Sequence[float]] | None = None,
) -> float:
    """Kermany's weighted error: sum of the penalties of all mistakes divided by the number of images.

    Args:
        y_true: true class indices in ``OCT_CLASS_ORDER`` (or the order of ``penalty``), shape (N,).
        y_pred: predicted class indices, shape (N,).
        penalty: square matrix, rows true class, columns predicted class, zero diagonal;
            defaults to ``KERMANY_PENALTY``.

    Returns:
        the weighted error (0 = perfect; same scale as an error rate when every penalty is 1), NaN for no
        images.
    """
    w = KERMANY_PENALTY if penalty is None else np.asarray(penalty, dtype=np.float64)
    if w.ndim != 2 or w.shape[0] != w.shape[1]:
        raise ValueError(f"penalty must be a square matrix, got shape {w.shape}")
    y_true = np.asarray(y_true, dtype=int).ravel()
    if y_true.size == 0:
        return float("nan")
    cm = confusion_matrix(y_true, np.asarray(y_pred, dtype=int).ravel(), w.shape[0])
    return float((cm * w).sum() / cm.sum())
