"""Ignite handlers and engine helpers of the classification bundles.

* ``pred_label``: output transform giving ignite metrics ``(probabilities (B, C), labels (B,))``.
* ``class_weights``: inverse-frequency loss weights from a training datalist.
* ``ClassificationReportWriter``: collects an evaluator's predictions, writes the evaluation report.
* ``PredictionCSVWriter``: collects an inference run's predictions, writes one CSV row per image.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.classification.tasks import ClassificationTask
from common.data.skip_bad import skipped_cases
from common.io.atomic import atomic_write_text
from common.io.naming import UniqueNames

logger = logging.getLogger(__name__)


def _items(output: Any) -> list[dict[str, Any]]:
    """Per-image dicts of an engine output (decollated list, or one batched dict)."""
    if isinstance(output, dict):
        batch = len(output["pred"])
        return [{k: (v[i] if isinstance(v, (torch.Tensor, list, tuple)) else v) for k, v in output.items()} for i in range(batch)]
    return list(output or [])


def _filename(item: dict[str, Any], key: str = "image") -> str:
    image = item.get(key)
    meta = getattr(image, "meta", None) or item.get(f"{key}_meta_dict") or {}
    name = meta.get("filename_or_obj", "") if isinstance(meta, dict) else ""
    if isinstance(name, (list, tuple)):
        name = name[0] if name else ""
    return str(name)


def pred_label(output: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Ignite output transform: stacked ``pred`` (B, C) and integer ``label`` (B,) of an engine output."""
    items = _items(output)
    pred = torch.stack([torch.as_tensor(i["pred"]).float().reshape(-1) for i in items])
    label = torch.stack([torch.as_tensor(i["label"]).long().reshape(()) for i in items])
    return pred, label


def class_weights(data: Sequence[dict[str, Any]], num_classes: int, power: float = 1.0) -> torch.Tensor:
    """Inverse-frequency class weights for ``torch.nn.CrossEntropyLoss(weight=...)``.

    ``w_c = (N / (C * n_c)) ** power``: a balanced training set gives 1 for every class; the pneumonia
    set (about 1 normal : 2 bacterial : 1 viral) gives NORMAL and VIRAL about twice BACTERIAL's weight,
    so each class contributes equally to the loss. Weighting the loss (rather than oversampling with a
    weighted sampler) keeps every image once per epoch and works unchanged with ``DistributedSampler``.

    Args:
        data: training datalist entries with an integer ``label``.
        num_classes: number of classes.
        power: 1 = full inverse frequency, 0.5 = square-root (gentler), 0 = unweighted.

    Returns:
        float32 tensor (num_classes,); a class absent from ``data`` gets weight 0 with a warning.
    """
    counts = Counter(int(e["label"]) for e in data)
    n = sum(counts.values())
    weights = []
    for c in range(num_classes):
        if counts.get(c, 0) == 0:
            logger.warning("class %d has no training images; its loss weight is 0", c)
            weights.append(0.0)
        else:
            weights.append((n / (num_classes * counts[c])) ** power)
    logger.info("class counts %s -> loss weights %s", dict(sorted(counts.items())), [round(w, 3) for w in weights])
    return torch.tensor(weights, dtype=torch.float32)


class _Collector:
    """Collects probabilities, labels and file names of every image an engine run sees."""

    def __init__(self) -> None:
        self.probs: list[np.ndarray] = []
        self.labels: list[int] = []
        self.files: list[str] = []

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _reset(self, engine) -> None:
        self.probs, self.labels, self.files = [], [], []

    def _collect(self, engine) -> None:
        for item in _items(engine.state.output):
            self.probs.append(torch.as_tensor(item["pred"]).detach().float().cpu().reshape(-1).numpy())
            label = item.get("label")
            self.labels.append(int(torch.as_tensor(label).reshape(-1)[0]) if label is not None else -1)
            self.files.append(_filename(item))

    def _write(self, engine) -> None:
        raise NotImplementedError


class ClassificationReportWriter(_Collector):
    """Writes the evaluation report (``report.json`` + ROC and confusion-matrix PNGs) after an evaluator run.

    Args:
        task: the bundle's ``ClassificationTask``.
        output_dir: folder for the report files.
        n_boot: bootstrap resamples for the 95% CIs.
        seed: bootstrap seed.
        predictions_csv: also write the per-image predictions (file, label, probabilities) here
            (relative to ``output_dir``); "" to skip.
    """

    def __init__(
        self,
        task: ClassificationTask,
        output_dir: str | os.PathLike,
        n_boot: int = 1000,
        seed: int = 0,
        predictions_csv: str = "predictions.csv",
    ) -> None:
        super().__init__()
        self.task = task
        self.output_dir = Path(output_dir)
        self.n_boot = n_boot
        self.seed = seed
        self.predictions_csv = predictions_csv
        self.report: dict[str, Any] | None = None

    def _write(self, engine) -> None:
        from common.classification.report import write_report

        if not self.probs:
            logger.error("no images were evaluated; no report written")
            return
        probs = np.stack(self.probs)
        labels = np.asarray(self.labels)
        if (labels < 0).any():
            logger.error("%d evaluated images have no label; they are left out of the report", int((labels < 0).sum()))
            keep = labels >= 0
            probs, labels, files = probs[keep], labels[keep], [f for f, k in zip(self.files, keep) if k]
        else:
            files = self.files
        self.report = write_report(probs, labels, self.task, self.output_dir, self.n_boot, self.seed)
        if self.predictions_csv:
            rows = [
                {"file": f, "label": self.task.class_names[y], **_prob_columns(p, self.task)}
                for f, y, p in zip(files, labels, probs)
            ]
            _write_csv(self.output_dir / self.predictions_csv, rows, list(rows[0]))


def _prob_columns(p: np.ndarray, task: ClassificationTask) -> dict[str, Any]:
    cols = {f"p_{c}": float(v) for c, v in zip(task.class_names, p)}
    cols.update(task.decide(p[None])[0])
    return cols


def _format(v: Any) -> Any:
    return f"{v:.6f}" if isinstance(v, float) else v


def _write_csv(path: Path, rows: list[dict[str, Any]], header: Sequence[str]) -> Path:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=header, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _format(v) for k, v in row.items()})
    return atomic_write_text(path, buf.getvalue())


UID_COLUMNS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


class PredictionCSVWriter(_Collector):
    """Writes batch-inference results, one row per image, atomically after the run.

    Columns: ``file``, ``p_<class>`` for every class, ``call`` (most probable class), the task's
    decision columns (OCT: ``p_urgent``, ``referral``; CXR: ``p_pneumonia``, ``pneumonia``), and
    ``error`` (empty, or why an image could not be used: such images are reported and skipped by
    ``common.data.SkipBadCasesDataset``, and listed here with empty probabilities).

    A DICOM image's row also carries its ``StudyInstanceUID``, ``SeriesInstanceUID`` and ``SOPInstanceUID``,
    and the image gets a DICOM SR (``<name>_sr.dcm`` beside the CSV: the finding, every class probability and
    the decisions, referencing the image) unless ``output_format`` is ``csv``.

    Args:
        task: the bundle's ``ClassificationTask``.
        output_path: the CSV file.
        dataset: optional dataset whose skipped cases are listed with their error.
        output_format: ``csv``, ``dicom`` (SRs for DICOM images; the CSV still lists every image) or ``both``.
        bundle_root: the bundle (its name and version identify the algorithm in the SR).
    """

    def __init__(
        self, task: ClassificationTask, output_path: str | os.PathLike, dataset: Any = None,
        output_format: str = "csv", bundle_root: str | os.PathLike = ".",
    ) -> None:
        from common.io.dicom_results import bundle_identity, check_output_format

        super().__init__()
        self.task = task
        self.output_path = Path(output_path)
        self.dataset = dataset
        self.output_format = check_output_format(output_format, "csv")
        self.bundle, self.version = bundle_identity(bundle_root)
        self._sr_names = UniqueNames()

    def _write(self, engine) -> None:
        uniform = np.full((1, len(self.task.class_names)), 1.0 / len(self.task.class_names))
        columns = ["file", *(f"p_{c}" for c in self.task.class_names), *self.task.decide(uniform)[0], "error",
                   *UID_COLUMNS]
        rows = [{"file": f, **_prob_columns(p, self.task), **self._dicom_result(f, p)}
                for f, p in zip(self.files, self.probs)]
        rows += [{"file": case["file"], "error": case["problem"]} for case in skipped_cases(self.dataset)]
        rows.sort(key=lambda r: r["file"])
        _write_csv(self.output_path, [{c: r.get(c, "") for c in columns} for r in rows], columns)
        logger.info(
            "predictions for %d images written to %s (%d skipped)", len(self.probs), self.output_path, len(rows) - len(self.probs)
        )

    def _dicom_result(self, file: str, probs: np.ndarray) -> dict[str, str]:
        """A DICOM image's UIDs for its row, and its SR written beside the CSV (unless ``output_format`` is csv)."""
        from common.io.dicom_results import classification_report, image_header, image_uids, write_result

        header = image_header(file)
        if header is not None and self.output_format != "csv":
            decided = _prob_columns(probs, self.task)
            decisions = {k: str(v) for k, v in decided.items() if not k.startswith("p_") and k != "call"}
            probabilities = dict(zip(self.task.class_names, map(float, probs)))
            name = self._sr_names(str(self.output_path.parent / Path(file).stem), file)
            write_result(lambda: classification_report(header, probabilities, decided["call"], self.bundle,
                                                       self.version, decisions),
                         Path(f"{name}_sr.dcm"), file, "DICOM SR")
        return image_uids(header)
