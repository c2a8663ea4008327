"""Ignite handlers of the oxygen-risk bundle: the evaluation report and the per-encounter risk writer.

Outputs are ordered as the network's: ``[24 h >= 1, >= 2, >= 3, >= 4, 72 h >= 1, ..., >= 4]`` with
levels 1 any oxygen, 2 high flow or more, 3 mechanical ventilation or death, 4 death.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.data.skip_bad import skipped_cases
from common.io.atomic import atomic_write_json, atomic_write_text
from common.io.dicom_results import image_header, image_uids
from common.io.naming import UniqueNames
from common.metrics.calibration import calibration_summary, plot_reliability_diagram
from common.metrics.classification import bootstrap_ci, roc_auc, sensitivity_specificity

logger = logging.getLogger(__name__)

HORIZONS = ("24h", "72h")
LEVEL_NAMES = ("any_oxygen", "high_flow_or_more", "ventilation_or_death", "death")
OUTPUT_NAMES = tuple(f"{lvl}_{h}" for h in HORIZONS for lvl in LEVEL_NAMES)


def output_names(n_levels: int = 4) -> list[str]:
    """Names of the network outputs in order (``any_oxygen_24h``, ..., ``death_72h``)."""
    return [f"{lvl}_{h}" for h in HORIZONS for lvl in LEVEL_NAMES[:n_levels]]


def column_output_transform(columns: Sequence[int] = (0, 4)) -> Callable:
    """``output_transform`` for MONAI metric handlers that keeps only some outputs (e.g. the key metric
    on "any oxygen at 24 h and 72 h", which every validation split has both classes of)."""
    cols = list(columns)

    def transform(output: Any) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        items = output if isinstance(output, list) else [output]
        return [i["pred"][cols] for i in items], [i["label"][cols] for i in items]

    return transform


def choose_threshold(y: np.ndarray, p: np.ndarray, target_sensitivity: float) -> float:
    """Highest threshold whose sensitivity (``p >= t`` positive) reaches ``target_sensitivity``.

    A rule-out operating point: at most ``1 - target_sensitivity`` of the patients who will need the
    resource are missed, and specificity is as high as that allows.
    """
    y = np.asarray(y).astype(bool)
    p = np.asarray(p, dtype=np.float64)
    if not y.any():
        return float("nan")
    pos = np.sort(p[y])[::-1]
    k = int(np.ceil(target_sensitivity * len(pos))) - 1
    return float(pos[max(k, 0)])


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _as_str(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return "" if value is None else str(value)


class _Collector:
    """Gathers per-encounter predictions (and labels, splits, ids) from the engine's decollated output."""

    def __init__(self, id_key: str = "encounter_id", split_key: str = "split", imputed_key: str = "ehr_imputed"):
        self.id_key, self.split_key, self.imputed_key = id_key, split_key, imputed_key
        self.reset()

    def reset(self) -> None:
        self.preds: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []
        self.ids: list[str] = []
        self.splits: list[str] = []
        self.imputed: list[str] = []
        self.image_present: list[bool] = []

    def collect(self, engine) -> None:
        output = engine.state.output
        items = output if isinstance(output, list) else [output]
        batch = engine.state.batch
        batch_items = batch if isinstance(batch, list) else None
        for n, item in enumerate(items):
            meta = batch_items[n] if batch_items is not None else item
            self.preds.append(_to_numpy(item["pred"]).ravel())
            if item.get("label") is not None:
                self.labels.append(_to_numpy(item["label"]).ravel())
            self.ids.append(_as_str(meta.get(self.id_key, item.get(self.id_key, ""))))
            self.splits.append(_as_str(meta.get(self.split_key, item.get(self.split_key, ""))))
            self.imputed.append(_as_str(meta.get(self.imputed_key, item.get(self.imputed_key, ""))))
            image = meta.get("image")
            self.image_present.append(bool(isinstance(image, torch.Tensor) and image.abs().amax() > 0))


class OxygenRiskReport:
    """Evaluation report: AUROC with bootstrap 95% CIs, operating point, calibration, reliability PNGs.

    The operating threshold of each output is the highest one that reaches ``target_sensitivity`` on the
    ``threshold_split`` cases (validation by default); sensitivity and specificity are then reported on
    the ``report_split`` cases (test). Without threshold-split cases the threshold is chosen on the report
    cases themselves and the report says so (optimistic).

    Args:
        output_dir: folder for ``evaluation_report.json``, ``reliability_<horizon>.png`` and
            ``predictions.csv``.
        report_split: split whose cases the metrics are computed on; None or "" uses every case.
        threshold_split: split the operating thresholds are chosen on.
        target_sensitivity: sensitivity the operating point must reach.
        n_boot: bootstrap resamples for the confidence intervals.
        n_bins: bins of the reliability diagram and the ECE.
        n_levels: levels per horizon.
        seed: bootstrap seed.
    """

    def __init__(self, output_dir: str | os.PathLike, report_split: str | None = "test",
                 threshold_split: str | None = "val", target_sensitivity: float = 0.9, n_boot: int = 1000,
                 n_bins: int = 10, n_levels: int = 4, seed: int = 0) -> None:
        self.output_dir = Path(output_dir)
        self.report_split = report_split or None
        self.threshold_split = threshold_split or None
        self.target_sensitivity = float(target_sensitivity)
        self.n_boot, self.n_bins, self.n_levels, self.seed = int(n_boot), int(n_bins), int(n_levels), int(seed)
        self.collector = _Collector()
        self.report: dict[str, Any] | None = None

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_STARTED, lambda e: self.collector.reset())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collector.collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write)

    def __call__(self, engine) -> None:
        self._write(engine)

    def compute(self, preds: np.ndarray, labels: np.ndarray, splits: Sequence[str]) -> dict[str, Any]:
        """The report for predictions ``(N, 2L)``, labels ``(N, 2L)`` and per-case split names."""
        splits = np.asarray(splits)
        rep_mask = np.ones(len(preds), bool) if self.report_split is None else splits == self.report_split
        thr_mask = np.zeros(len(preds), bool) if self.threshold_split is None else splits == self.threshold_split
        threshold_source = self.threshold_split
        if not thr_mask.any():
            thr_mask, threshold_source = rep_mask, f"{self.report_split or 'all'} (no {self.threshold_split} cases: optimistic)"
        names = output_names(self.n_levels)
        outputs: dict[str, Any] = {}
        for j, name in enumerate(names):
            y, p = labels[rep_mask, j], preds[rep_mask, j]
            auc = bootstrap_ci(roc_auc, y, p, n_boot=self.n_boot, seed=self.seed)
            thr = choose_threshold(labels[thr_mask, j], preds[thr_mask, j], self.target_sensitivity)
            if np.isfinite(thr):
                sens, spec = sensitivity_specificity(y, p >= thr)
            else:
                sens = spec = float("nan")
            outputs[name] = {
                "n": int(rep_mask.sum()), "positives": int(y.sum()), "prevalence": float(y.mean()) if y.size else None,
                "auroc": auc,
                "operating_point": {"threshold": thr, "sensitivity": sens, "specificity": spec},
                "calibration": calibration_summary(y, p, self.n_bins),
            }
        return {
            "cases": int(rep_mask.sum()),
            "report_split": self.report_split or "all",
            "operating_point_rule": f"highest threshold reaching sensitivity >= {self.target_sensitivity} "
                                    f"on the {threshold_source} cases",
            "threshold_cases": int(thr_mask.sum()),
            "bootstrap": {"n_boot": self.n_boot, "confidence": 0.95, "seed": self.seed},
            "outputs": outputs,
            "mean_auroc": float(np.nanmean([o["auroc"]["value"] for o in outputs.values()])),
        }

    def _write(self, engine) -> None:
        c = self.collector
        if not c.preds:
            logger.warning("no predictions collected; no report written")
            return
        preds, splits = np.stack(c.preds), np.asarray(c.splits)
        if len(c.labels) != len(c.preds):
            raise ValueError("evaluation needs the outcome columns (o2_24h, o2_72h) for every case")
        labels = np.stack(c.labels)
        self.report = self.compute(preds, labels, splits)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        rep_mask = np.ones(len(preds), bool) if self.report_split is None else splits == self.report_split
        names = output_names(self.n_levels)
        for hi, h in enumerate(HORIZONS):
            curves = {LEVEL_NAMES[k]: (labels[rep_mask, hi * self.n_levels + k], preds[rep_mask, hi * self.n_levels + k])
                      for k in range(self.n_levels) if labels[rep_mask, hi * self.n_levels + k].any()}
            png = plot_reliability_diagram(curves, self.output_dir / f"reliability_{h}.png", self.n_bins,
                                           title=f"Reliability, oxygen need at {h}")
            self.report.setdefault("figures", []).append(png.name)
        atomic_write_json(self.output_dir / "evaluation_report.json", self.report)
        _write_prediction_csv(self.output_dir / "predictions.csv", c.ids, c.splits, preds, names, labels)
        logger.info("evaluation report written to %s (mean AUROC %.3f)", self.output_dir, self.report["mean_auroc"])


def _write_prediction_csv(path: Path, ids: Sequence[str], splits: Sequence[str] | None, preds: np.ndarray,
                          names: Sequence[str], labels: np.ndarray | None = None,
                          imputed: Sequence[str] | None = None,
                          failed: Sequence[tuple[int, str, str]] | None = None,
                          order: Mapping[str, int] | None = None) -> None:
    """Write the predictions; with ``failed`` (position, encounter_id, error) also the encounters that
    could not be scored, with empty risks and their error, every row in ``order`` (id -> position)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    header = ["encounter_id", *(["split"] if splits is not None else []), *[f"p_{n}" for n in names]]
    header += [f"y_{n}" for n in names] if labels is not None else []
    header += ["imputed_inputs"] if imputed is not None else []
    header += ["error"] if failed is not None else []
    w.writerow(header)
    rows = []
    for i, eid in enumerate(ids):
        row = [eid, *([splits[i]] if splits is not None else []), *[f"{v:.6f}" for v in preds[i]]]
        row += [str(int(v)) for v in labels[i]] if labels is not None else []
        row += [imputed[i]] if imputed is not None else []
        row += [""] if failed is not None else []
        rows.append(((order or {}).get(eid, i), row))
    for position, eid, error in failed or ():
        rows.append((position, [eid, *[""] * (len(header) - 2), error]))
    w.writerows(row for _, row in sorted(rows, key=lambda r: r[0]))
    atomic_write_text(path, buf.getvalue())


class RiskWriter:
    """Inference output: one JSON per encounter plus ``predictions.csv``, every file written atomically.

    Each JSON says the risk per horizon and level, the mode the model ran in, whether an image was used
    and which EHR inputs were imputed (missing or outside the plausible range). ``predictions.csv`` has a
    row for every input row, in the CSV's order: encounters that could not be scored (an unreadable
    image, an image path outside the data folder) have empty risks and their ``error``.

    Args:
        output_dir: output folder.
        mode: the network's mode (``both``, ``image``, ``ehr``), recorded in each output.
        n_levels: levels per horizon.
        imputed_key: batch key of the list of imputed EHR feature names.
        dataset: the inference dataset (``SkipBadCasesDataset``), whose skipped cases are listed too.
        output_format: ``json``, ``dicom`` or ``both``. An encounter whose image is DICOM gets its Study,
            Series and SOP Instance UIDs in its JSON and, unless ``json``, ``<encounter>_sr.dcm``: a DICOM SR of
            its risks referencing the image (with ``dicom``, instead of its JSON).
        bundle_root: the bundle (its name and version identify the algorithm in the SR).
    """

    def __init__(self, output_dir: str | os.PathLike, mode: str = "both", n_levels: int = 4,
                 imputed_key: str = "ehr_imputed", dataset: Any = None, output_format: str = "json",
                 bundle_root: str | os.PathLike = ".") -> None:
        from common.io.dicom_results import bundle_identity, check_output_format

        self.output_format = check_output_format(output_format, "json")
        self.bundle, self.version = bundle_identity(bundle_root)
        self.output_dir = Path(output_dir)
        self.mode = mode
        self.n_levels = int(n_levels)
        self.collector = _Collector(imputed_key=imputed_key)
        self.dataset = dataset
        self._names = UniqueNames()
        self._images: dict[str, str] | None = None

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_STARTED, lambda e: self.collector.reset())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._on_iteration)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write_csv)

    def _on_iteration(self, engine) -> None:
        start = len(self.collector.preds)
        self.collector.collect(engine)
        c = self.collector
        for i in range(start, len(c.preds)):
            risk = {h: {LEVEL_NAMES[k]: round(float(c.preds[i][hi * self.n_levels + k]), 6)
                        for k in range(self.n_levels)} for hi, h in enumerate(HORIZONS)}
            record = {
                "encounter_id": c.ids[i],
                "mode": self.mode,
                "risk": risk,
                "image_used": self.mode != "ehr" and c.image_present[i],
                "ehr_used": self.mode != "image",
                "imputed_inputs": [n for n in c.imputed[i].split(",") if n],
                "levels": {"any_oxygen": ">= low-flow oxygen", "high_flow_or_more": ">= high-flow or non-invasive",
                           "ventilation_or_death": ">= mechanical ventilation", "death": "death"},
            }
            # ids that differ only in characters a file name cannot hold ("a/b", "a_b") get _2, _3, ...
            name = self._names(_safe_name(c.ids[i]) or f"case{i}", c.ids[i])
            image = self._image_of(c.ids[i])
            header = image_header(image) if image and record["image_used"] else None
            record.update(image_uids(header))
            sr_written = header is not None and self.output_format != "json" and self._write_sr(name, image, header, risk)
            # with output_format dicom the SR replaces the JSON, unless the image made no valid SR
            if not (sr_written and self.output_format == "dicom"):
                atomic_write_json(self.output_dir / f"{name}.json", record)

    def _image_of(self, encounter_id: str) -> str:
        """The image path of an encounter, from the dataset's rows."""
        if self._images is None:
            self._images = {str(item.get("encounter_id")): str(item.get("image") or "")
                            for item in getattr(self.dataset, "data", None) or []}
        return self._images.get(str(encounter_id), "")

    def _write_sr(self, name: str, image: str, header: Any, risk: dict[str, dict[str, float]]) -> bool:
        from common.io.dicom_results import classification_report, write_result

        risks = {f"{level} within {horizon}": p for horizon, levels in risk.items() for level, p in levels.items()}
        return write_result(lambda: classification_report(header, risks, None, self.bundle, self.version),
                            self.output_dir / f"{name}_sr.dcm", image, "DICOM SR") is not None

    def _write_csv(self, engine) -> None:
        c = self.collector
        data = list(getattr(self.dataset, "data", None) or [])
        failed = [
            (case["index"], str(data[case["index"]].get("encounter_id", f"row{case['index']}")),
             f"{case['file']}: {case['problem']}" if case["file"] else case["problem"])
            for case in skipped_cases(self.dataset)
            if case["index"] is not None and case["index"] < len(data)
        ]
        if not c.preds and not failed:
            return
        names = output_names(self.n_levels)
        preds = np.stack(c.preds) if c.preds else np.zeros((0, len(names)))
        order = {str(item.get("encounter_id")): i for i, item in enumerate(data)}
        _write_prediction_csv(self.output_dir / "predictions.csv", c.ids, None, preds, names,
                              imputed=c.imputed, failed=failed, order=order)


def _safe_name(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name).strip(".")
