"""What the two Kermany tasks do with class probabilities: decision rules and the paper's binary questions.

OCT (classes CNV, DME, DRUSEN, NORMAL), referral after Kermany et al.:

* ``p_urgent = P(CNV) + P(DME)``: the score of the "urgent referral" question (paper: AUROC 0.999).
* referral: ``urgent`` (CNV or DME: treatable with anti-VEGF, vision at risk within weeks), ``routine``
  (DRUSEN: early AMD, follow-up) or ``observation`` (NORMAL). Rule ``grouped`` (default) takes the
  group with the highest summed probability, so a scan at P(CNV)=0.3, P(DME)=0.3, P(NORMAL)=0.4 is
  referred urgently (0.6 for the urgent group): the expected-urgency reading of the paper's referral.
  Rule ``argmax`` maps the most probable class to its group. ``urgent_threshold`` (optional) refers
  urgently whenever ``p_urgent`` reaches it, to trade specificity for sensitivity at a chosen point.

Pediatric CXR (classes NORMAL, BACTERIAL, VIRAL; or NORMAL, PNEUMONIA):

* ``p_pneumonia = P(BACTERIAL) + P(VIRAL)``; ``pneumonia`` is called when it reaches ``threshold``
  (default 0.5); the 3-class call is the most probable class.
* bacterial vs viral is asked only of pneumonia cases, with score ``P(BACTERIAL) / (P(BACTERIAL) +
  P(VIRAL))`` (the paper's second question).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

OCT_CLASSES: tuple[str, ...] = ("CNV", "DME", "DRUSEN", "NORMAL")
CXR_CLASSES: tuple[str, ...] = ("NORMAL", "BACTERIAL", "VIRAL")
REFERRAL_GROUPS: dict[str, tuple[str, ...]] = {
    "urgent": ("CNV", "DME"),
    "routine": ("DRUSEN",),
    "observation": ("NORMAL",),
}


@dataclass(frozen=True)
class BinaryQuestion:
    """A binary question asked of the class probabilities (e.g. urgent referral, pneumonia vs normal).

    Args:
        name: short id used in reports.
        positive: class names counted as positive.
        negative: class names counted as negative; cases of other classes are left out.
        threshold: score at or above which the answer is positive.
    """

    name: str
    positive: tuple[str, ...]
    negative: tuple[str, ...]
    threshold: float = 0.5

    def select(self, labels: np.ndarray, class_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Mask of the cases the question applies to and their 0/1 truth."""
        pos = np.isin(labels, [class_names.index(c) for c in self.positive])
        neg = np.isin(labels, [class_names.index(c) for c in self.negative])
        return pos | neg, pos[pos | neg].astype(int)

    def score(self, probs: np.ndarray, class_names: Sequence[str]) -> np.ndarray:
        """Score of the positive answer: the positive classes' probability, renormalised over the
        classes the question is about."""
        p = probs[:, [class_names.index(c) for c in self.positive]].sum(axis=1)
        n = probs[:, [class_names.index(c) for c in self.negative]].sum(axis=1)
        return p / np.clip(p + n, 1e-12, None)


@dataclass
class ClassificationTask:
    """Class names, decision rule and binary questions of one bundle.

    Args:
        name: "oct" or "cxr".
        class_names: output classes in label order.
        questions: the binary questions reported by evaluation.
        options: rule options (see ``decide``).
    """

    name: str
    class_names: tuple[str, ...]
    questions: tuple[BinaryQuestion, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)

    def decide(self, probs: np.ndarray) -> list[dict[str, Any]]:
        """Per-image decision columns from class probabilities ``(N, C)`` (rows sum to 1)."""
        probs = np.asarray(probs, dtype=np.float64).reshape(-1, len(self.class_names))
        calls = probs.argmax(axis=1)
        rows = []
        for p, c in zip(probs, calls):
            row: dict[str, Any] = {"call": self.class_names[c]}
            if self.name == "oct":
                row.update(_oct_referral(p, self.class_names, **self.options))
            elif self.name == "cxr":
                row.update(_cxr_pneumonia(p, self.class_names, **self.options))
            rows.append(row)
        return rows


def _oct_referral(
    p: np.ndarray, class_names: Sequence[str], rule: str = "grouped", urgent_threshold: float | None = None
) -> dict[str, Any]:
    group_p = {g: float(sum(p[class_names.index(c)] for c in cs)) for g, cs in REFERRAL_GROUPS.items()}
    if rule == "grouped":
        referral = max(group_p, key=group_p.get)
    elif rule == "argmax":
        top = class_names[int(p.argmax())]
        referral = next(g for g, cs in REFERRAL_GROUPS.items() if top in cs)
    else:
        raise ValueError(f"OCT referral rule must be 'grouped' or 'argmax', got {rule!r}")
    if urgent_threshold is not None and group_p["urgent"] >= urgent_threshold:
        referral = "urgent"
    return {"p_urgent": group_p["urgent"], "referral": referral}


def _cxr_pneumonia(p: np.ndarray, class_names: Sequence[str], threshold: float = 0.5) -> dict[str, Any]:
    p_pneumonia = float(1.0 - p[class_names.index("NORMAL")])
    return {"p_pneumonia": p_pneumonia, "pneumonia": "yes" if p_pneumonia >= threshold else "no"}


def oct_task(rule: str = "grouped", urgent_threshold: float | None = None) -> ClassificationTask:
    """The OCT task: 4 classes, referral rule, the urgent-referral question."""
    urgent = BinaryQuestion("urgent_referral", ("CNV", "DME"), ("DRUSEN", "NORMAL"), urgent_threshold or 0.5)
    return ClassificationTask("oct", OCT_CLASSES, (urgent,), {"rule": rule, "urgent_threshold": urgent_threshold})


def cxr_task(classes: int = 3, threshold: float = 0.5) -> ClassificationTask:
    """The pediatric CXR task: 3 classes (or 2), pneumonia vs normal and bacterial vs viral."""
    if classes == 2:
        names = ("NORMAL", "PNEUMONIA")
        questions = (BinaryQuestion("pneumonia_vs_normal", ("PNEUMONIA",), ("NORMAL",), threshold),)
    else:
        names = CXR_CLASSES
        questions = (
            BinaryQuestion("pneumonia_vs_normal", ("BACTERIAL", "VIRAL"), ("NORMAL",), threshold),
            BinaryQuestion("bacterial_vs_viral", ("BACTERIAL",), ("VIRAL",)),
        )
    return ClassificationTask("cxr", names, questions, {"threshold": threshold})


def get_task(name: str, **options: Any) -> ClassificationTask:
    """``oct_task`` or ``cxr_task`` by name (for configs: ``$common.classification.get_task('oct')``)."""
    if name == "oct":
        return oct_task(**options)
    if name == "cxr":
        return cxr_task(**options)
    raise ValueError(f"task must be 'oct' or 'cxr', got {name!r}")
