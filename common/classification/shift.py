"""Shifted validation, temperature scaling and the rule that sets a classifier's shipped threshold.

A validation split drawn from the training hospital's films says how a model ranks films like those, not
how its *decision* holds when the films change. The shifted validation scores the same validation images
again under each acquisition shift of :data:`common.transforms.SHIFTS` (tone curves, edge enhancement,
equalisation, blur, noise, JPEG, collimation, rotation) and reports, per condition, AUROC, the calls at
the configured threshold and the calibration error (ECE) of each binary question.

From the same logits it derives what ships with the weights, by rules written down before any test
figure is seen:

* **temperature** (:func:`fit_temperature`): the single ``T`` that minimises the negative log-likelihood
  of ``softmax(logits / T)`` on the clean validation images (Guo et al., ICML 2017). It changes the
  probabilities, not the 3-class ranking.
* **threshold** (:func:`choose_threshold`): the threshold of a binary question that maximises Youden's
  J (sensitivity + specificity - 1) **averaged over the clean and every shifted condition**; where
  several thresholds tie, the middle one. A threshold that is only right for the clean films gets no
  credit over one that still separates the classes when the tone curve or the sharpness changes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.special
import torch
from monai.data import DataLoader, Dataset
from monai.transforms import Compose

from common.classification.report import evaluate_probabilities
from common.classification.tasks import ClassificationTask
from common.io.atomic import atomic_write_json
from common.metrics.calibration import plot_reliability_diagram
from common.transforms.acquisition import SHIFTS, AcquisitionShiftd

logger = logging.getLogger(__name__)

__all__ = ["choose_threshold", "fit_temperature", "shifted_logits", "shifted_validation", "softmax"]

#: thresholds the rule searches
THRESHOLD_GRID = np.round(np.arange(0.005, 1.0, 0.005), 3)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature``."""
    return scipy.special.softmax(np.asarray(logits, dtype=np.float64) / float(temperature), axis=1)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature ``T`` minimising the mean negative log-likelihood of ``softmax(logits / T)``.

    Args:
        logits: ``(N, C)`` network outputs before softmax.
        labels: ``(N,)`` true class indices.

    Returns:
        ``T`` > 0 (1: the network is calibrated as it is; > 1: over-confident).
    """
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.exp().item())


def choose_threshold(truths: Sequence[np.ndarray], scores: Sequence[np.ndarray]) -> dict[str, Any]:
    """The threshold maximising Youden's J averaged over conditions (ties: the middle one).

    Args:
        truths: per condition, the 0/1 truth of the question's cases.
        scores: per condition, the question's score of the same cases.

    Returns:
        ``{"threshold", "mean_youden", "rule"}``.
    """
    if not truths or len(truths) != len(scores):
        raise ValueError("choose_threshold needs one truth and one score array per condition")
    mean_j = np.zeros(len(THRESHOLD_GRID))
    for y, s in zip(truths, scores):
        y = np.asarray(y).astype(bool)
        s = np.asarray(s, dtype=np.float64)
        calls = s[None, :] >= THRESHOLD_GRID[:, None]
        sens = (calls & y).sum(axis=1) / max(int(y.sum()), 1)
        spec = (~calls & ~y).sum(axis=1) / max(int((~y).sum()), 1)
        mean_j += (sens + spec - 1.0) / len(truths)
    best = np.flatnonzero(mean_j >= mean_j.max() - 1e-12)
    pick = int(best[len(best) // 2])
    return {
        "threshold": float(THRESHOLD_GRID[pick]),
        "mean_youden": float(mean_j[pick]),
        "rule": "maximise Youden's J averaged over the clean and every shifted validation condition; "
        f"ties: the middle one; grid {THRESHOLD_GRID[0]}-{THRESHOLD_GRID[-1]} step 0.005",
    }


def shifted_logits(
    network: torch.nn.Module,
    preprocessing: Compose,
    data: Sequence[dict[str, Any]],
    shift: str,
    device: torch.device | str = "cpu",
    batch_size: int = 32,
    num_workers: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels of ``data`` with the acquisition shift ``shift`` applied right after loading.

    Args:
        network: the classifier (put in eval mode here).
        preprocessing: the validation preprocessing; its first transform must be the image loader.
        data: datalist items with ``image`` and ``label``.
        shift: a key of :data:`common.transforms.SHIFTS`.
        device: where the network runs.
        batch_size: images per forward pass.
        num_workers: data loader workers.

    Returns:
        ``(logits (N, C), labels (N,))``.
    """
    steps = list(preprocessing.transforms)
    transform = Compose([steps[0], AcquisitionShiftd(keys="image", shift=shift), *steps[1:]])
    loader = DataLoader(Dataset(list(data), transform), batch_size=batch_size, num_workers=num_workers)
    network.eval()
    logits, labels = [], []
    with torch.no_grad():
        for batch in loader:
            logits.append(network(batch["image"].to(device)).float().cpu().numpy())
            labels.append(np.asarray(batch["label"]).reshape(-1))
    return np.concatenate(logits), np.concatenate(labels).astype(int)


def _condition_figures(probs: np.ndarray, labels: np.ndarray, task: ClassificationTask) -> dict[str, Any]:
    """The evaluation report's figures for one condition, without bootstrap CIs, flattened."""
    report = evaluate_probabilities(probs, labels, task, n_boot=0)
    figures: dict[str, Any] = {"accuracy": report["accuracy"]["value"], "top_label_ece": report["top_label_ece"]}
    for name, question in report["binary"].items():
        figures[name] = {k: question[k]["value"] for k in ("auroc", "accuracy", "sensitivity", "specificity")}
        figures[name]["ece"] = question["ece"]
    return figures


def shifted_validation(
    network: torch.nn.Module,
    preprocessing: Compose,
    data: Sequence[dict[str, Any]],
    task: ClassificationTask,
    output_dir: str | os.PathLike,
    temperature: float = 1.0,
    device: torch.device | str = "cpu",
    batch_size: int = 32,
    shifts: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Score ``data`` clean and under every acquisition shift; write the report and reliability diagrams.

    Writes ``shifted_validation.json`` (per condition: accuracy, top-label ECE, and per binary question
    AUROC, accuracy, sensitivity, specificity at the task's threshold and ECE; plus the temperature
    fitted on the clean images and the threshold of :func:`choose_threshold` for each question, both
    computed with that fitted temperature, for the task's first question: the one whose threshold is a
    config value), ``shifted_validation.md`` (the same as a table) and
    ``reliability_<question>.png`` (clean and the worst shifted condition, at the configured
    temperature).

    Args:
        network: the classifier with the weights to score.
        preprocessing: the validation preprocessing (loader first).
        data: the validation datalist (``image``, ``label``).
        task: the bundle's task; its questions' thresholds are the configured ones.
        output_dir: folder of the report.
        temperature: the configured temperature the figures are computed at.
        device: where the network runs.
        batch_size: images per forward pass.
        shifts: conditions to run (default: every key of ``SHIFTS``, "clean" first).

    Returns:
        the report dict.
    """
    shifts = list(shifts or SHIFTS)
    if "clean" not in shifts:
        shifts.insert(0, "clean")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    raw: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for shift in shifts:
        raw[shift] = shifted_logits(network, preprocessing, data, shift, device, batch_size)
        logger.info("shifted validation: %s done (%d images)", shift, len(raw[shift][1]))

    conditions = {}
    for shift, (logits, labels) in raw.items():
        conditions[shift] = {
            "what": SHIFTS[shift][0],
            "in_training_augmentation": SHIFTS[shift][1],
            **_condition_figures(softmax(logits, temperature), labels, task),
        }

    fitted_t = fit_temperature(*raw["clean"])
    recommended: dict[str, Any] = {
        "temperature": fitted_t,
        "temperature_rule": "NLL on the clean validation images",
    }
    for q in task.questions[:1]:  # the decision question (pneumonia / urgent referral): its threshold ships
        truths, scores = [], []
        for logits, labels in raw.values():
            mask, y = q.select(labels, task.class_names)
            truths.append(y)
            scores.append(q.score(softmax(logits, fitted_t)[mask], task.class_names))
        recommended[q.name] = choose_threshold(truths, scores)

    report = {
        "n_images": int(len(raw["clean"][1])),
        "temperature": float(temperature),
        "thresholds": {q.name: q.threshold for q in task.questions},
        "conditions": conditions,
        "recommended": recommended,
    }
    atomic_write_json(out / "shifted_validation.json", report)
    (out / "shifted_validation.md").write_text(_markdown(report, task))
    for q in task.questions:
        worst = min(shifts, key=lambda s: conditions[s][q.name]["accuracy"])
        curves = {}
        for name in dict.fromkeys(["clean", worst]):
            logits, labels = raw[name]
            mask, y = q.select(labels, task.class_names)
            curves[name] = (y, q.score(softmax(logits, temperature)[mask], task.class_names))
        plot_reliability_diagram(
            curves, out / f"reliability_{q.name}.png", n_bins=15, title=f"{q.name}, T = {temperature:g}"
        )
    logger.info(
        "shifted validation written to %s; fitted temperature %.3f; rule thresholds %s",
        out / "shifted_validation.json",
        fitted_t,
        {q.name: recommended[q.name]["threshold"] for q in task.questions[:1]},
    )
    return report


def _markdown(report: dict[str, Any], task: ClassificationTask) -> str:
    names = [q.name for q in task.questions]
    head = "| condition | seen in training | 3-class acc. | " + " | ".join(
        f"{n} AUROC | acc. | sens. | spec. | ECE" for n in names
    )
    lines = [
        f"Shifted validation: {report['n_images']} images, temperature {report['temperature']:g}, "
        f"thresholds {report['thresholds']}",
        "",
        head + " |",
        "|" + "---|" * (3 + 5 * len(names)),
    ]
    for shift, c in report["conditions"].items():
        cells = [shift, "yes" if c["in_training_augmentation"] else "no", f"{c['accuracy']:.3f}"]
        for n in names:
            q = c[n]
            cells += [f"{q['auroc']:.3f}", f"{q['accuracy']:.3f}", f"{q['sensitivity']:.3f}"]
            cells += [f"{q['specificity']:.3f}", f"{q['ece']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    rec = report["recommended"]
    lines += ["", f"Fitted temperature (clean validation NLL): {rec['temperature']:.3f}"]
    for n in [n for n in names if n in rec]:
        lines.append(
            f"Rule threshold for {n}: {rec[n]['threshold']:.3f} (mean Youden J {rec[n]['mean_youden']:.3f})"
        )
    return "\n".join(lines) + "\n"


def run_if(enabled: bool, *args: Any, **kwargs: Any) -> dict[str, Any] | None:
    """:func:`shifted_validation` when ``enabled`` (the ``shifted_validation`` flag of evaluate.yaml)."""
    return shifted_validation(*args, **kwargs) if enabled else None
