"""Patient-level cross-validation of the retinal OCT bundle on real B-scans (Kermany OCT2017 layout).

    # the named folds (written once, then kept in the repository; every patient in exactly one fold)
    python scripts/oct_crossval.py folds --data ../shared/data/oct2017_samples48
    # (a) a fixed checkpoint (e.g. trained on synthetic B-scans) scored on every fold, no training
    python scripts/oct_crossval.py run --out runs/oct_cv/synthetic --checkpoint runs/oct_synth/models/model_final.pt
    # (b) from scratch on the other folds' real scans
    python scripts/oct_crossval.py run --out runs/oct_cv/real --max_epochs 60
    # (c) synthetic pre-training + fine-tuning on the other folds' real scans
    python scripts/oct_crossval.py run --out runs/oct_cv/finetune --initial_ckpt runs/oct_synth/models/model_final.pt \
        --learning_rate 0.0005 --max_epochs 40
    # the same recipe on all real scans (what ``models/model.pt`` ships), then ship it
    python scripts/oct_crossval.py run --out runs/oct_cv/finetune --folds "" --train_all --initial_ckpt ...
    python scripts/oct_crossval.py compare runs/oct_cv/synthetic runs/oct_cv/real runs/oct_cv/finetune
    # float32 vs float16 storage of a checkpoint: predictions on the real scans
    python scripts/oct_crossval.py float16 --checkpoint runs/oct_cv/finetune/all/models/model_final.pt

``folds`` assigns the patients of the data folder (``<CLASS>/<CLASS>-<patient>-<n>.jpeg``) to named folds
deterministically (patients sorted by id within each class, dealt round-robin to the folds with one
counter running on across the classes, so fold sizes stay even) and writes
``bundles/retina_oct_classification/docs/oct2017_samples48_folds.json``.

``run`` writes one datalist per fold (training: the other folds; validation and testing: the fold),
trains with the bundle's own ``configs/train.yaml`` (checkpoints into ``OUT/fold_X/models``, never into
the bundle), and scores the **last epoch's** weights (``model_final.pt``: nothing is chosen on the
held-out patients; the held-out fold is only logged as "validation" during training) with
``configs/evaluate.yaml`` on the fold's scans. The 48 held-out predictions are then pooled: 4-class
accuracy, urgent referral (CNV or DME vs DRUSEN or NORMAL) sensitivity / specificity at 0.5 and AUROC,
Kermany's weighted error, confusion matrix; each with a percentile bootstrap 95% CI over images
(``common.classification.report``) and, because a patient contributes up to two scans, over patients.
Results: ``OUT/crossval.json`` and ``OUT/crossval.md``. Other options (``--max_epochs 40``,
``--learning_rate 0.0005``, ``--initial_ckpt F``, ``--freeze_backbone true``, ...) go to ``train.yaml``.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import sys
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import fire
import numpy as np

# run as a file (`python scripts/...`): make this checkout's `common` importable first
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from zoo_tools import run_bundle  # noqa: E402

BUNDLE = REPO / "bundles" / "retina_oct_classification"
FOLDS_FILE = BUNDLE / "docs" / "oct2017_samples48_folds.json"
DEFAULT_DATA = REPO.parent / "shared" / "data" / "oct2017_samples48"
CLASSES = ("CNV", "DME", "DRUSEN", "NORMAL")
FOLD_NAMES = "ABCDEFGH"
# the final checkpoint of a training: written after every validation, so after the last epoch it holds
# the last epoch's weights (index 2 of validate#handlers in train.yaml is its CheckpointSaver)
SAVE_FINAL = {"validate#handlers#2#save_final": True, "validate#handlers#2#final_filename": "model_final.pt"}


def parse_name(path: str | os.PathLike) -> tuple[str, str]:
    """Class and patient of one OCT2017 file.

    Args:
        path: ``CLASS/CLASS-PATIENT-N.jpeg`` (the class folder is authoritative for the label).

    Returns:
        ``(class_name, patient)`` as ``common.data.kermany.parse_oct_file`` reads them (``oct-PATIENT``).
    """
    from common.data.kermany import parse_oct_file

    path = Path(path)
    folder = path.parent.name.upper()
    if folder not in CLASSES:
        raise ValueError(f"{path}: not under a class folder {CLASSES}")
    return parse_oct_file(path, folder)


def assign_folds(files: Sequence[str], n_folds: int = 4) -> dict[str, dict[str, list[str]]]:
    """Deal the patients of ``files`` to ``n_folds`` named folds (A, B, ...), whole patients only.

    Each patient belongs to the class most of its scans have (ties: the first in CNV, DME, DRUSEN,
    NORMAL order). Within each class, patients sorted by id are dealt round-robin, with one counter
    running on across the classes (CNV first), so the folds get about the same number of patients.

    Args:
        files: image paths relative to the data folder, ``CLASS/CLASS-PATIENT-N.jpeg``.
        n_folds: number of folds (2 to 8).

    Returns:
        ``{fold: {"patients": [...], "files": [...]}}``, files sorted.

    Raises:
        ValueError: a fold would lack a class (fewer patients of a class than folds).
    """
    if not 2 <= n_folds <= len(FOLD_NAMES):
        raise ValueError(f"n_folds must be 2..{len(FOLD_NAMES)}, got {n_folds}")
    files_of: dict[str, list[str]] = defaultdict(list)
    classes_of: dict[str, Counter] = defaultdict(Counter)
    for f in files:
        cls, patient = parse_name(f)
        files_of[patient].append(str(Path(f).as_posix()))
        classes_of[patient][cls] += 1
    by_class: dict[str, list[str]] = defaultdict(list)
    for patient, counts in classes_of.items():
        by_class[min(counts, key=lambda c: (-counts[c], CLASSES.index(c)))].append(patient)
    names = FOLD_NAMES[:n_folds]
    folds: dict[str, dict[str, list[str]]] = {n: {"patients": [], "files": []} for n in names}
    counter = 0
    for cls in CLASSES:
        for patient in sorted(by_class.get(cls, []), key=lambda p: p.split("-")[-1]):
            fold = folds[names[counter % n_folds]]
            fold["patients"].append(patient)
            fold["files"] += sorted(files_of[patient])
            counter += 1
    for name, fold in folds.items():
        missing = [c for c in CLASSES if not any(parse_name(f)[0] == c for f in fold["files"])]
        if missing:
            raise ValueError(f"fold {name} has no patient of {', '.join(missing)}: too few patients for {n_folds} folds")
        fold["files"].sort()
    return folds


def image_files(data: str | os.PathLike) -> list[str]:
    """Images under the class folders of ``data``, as paths relative to it (sorted)."""
    from common.data.kermany import IMAGE_SUFFIXES

    data = Path(data)
    files = sorted(
        p.relative_to(data).as_posix()
        for c in CLASSES if (data / c).is_dir()
        for p in (data / c).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )
    if not files:
        raise SystemExit(f"{data}: no images under {'/, '.join(CLASSES)}/")
    return files


def folds(data: str = str(DEFAULT_DATA), n_folds: int = 4, out: str = str(FOLDS_FILE)) -> str:
    """Write the named folds of the data folder to ``out`` (the repository's folds file by default).

    Args:
        data: the OCT2017-layout folder (``CNV/ DME/ DRUSEN/ NORMAL/``).
        n_folds: number of folds.
        out: JSON file to write.

    Returns:
        the path written.
    """
    from common.io.atomic import atomic_write_json

    assignment = assign_folds(image_files(data), n_folds)
    spec = {
        "description": "Patient-level folds of the 48 OCT2017 B-scans (Kermany et al., Mendeley Data v2, "
                       "doi:10.17632/rscbjbr9sj.2, CC BY 4.0) used to cross-validate this bundle; file paths "
                       "relative to the data folder; written by `python scripts/oct_crossval.py folds`",
        "data": Path(data).name,
        "assignment": "patients sorted by id within each class (CNV, DME, DRUSEN, NORMAL), dealt round-robin "
                      "to the folds with one counter across the classes; a patient belongs to its majority class",
        "folds": assignment,
    }
    atomic_write_json(out, spec)
    return str(out)


def _entry(rel: str) -> dict[str, Any]:
    cls, patient = parse_name(rel)
    return {"image": rel, "label": CLASSES.index(cls), "class_name": cls, "patient": patient}


def write_datalists(data: str | os.PathLike, out: str | os.PathLike, folds_file: str | os.PathLike = FOLDS_FILE) -> dict[str, Path]:
    """One datalist per fold (training: the other folds; validation and testing: the fold) and ``all.json``.

    Args:
        data: the data folder the folds file's paths are relative to (passed as ``--dataset_dir``).
        out: folder the datalists are written to.
        folds_file: JSON with ``folds`` (name -> ``{"patients", "files"}``).

    Returns:
        ``{fold name or "all": datalist path}`` (image paths in them relative to ``data``).
    """
    spec = json.loads(Path(folds_file).read_text())
    data, out = Path(data), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for rel in (f for fold in spec["folds"].values() for f in fold["files"]):
        if not (data / rel).is_file():
            raise SystemExit(f"{data / rel}: missing (the folds of {Path(folds_file).name} name it)")
    paths = {}
    for name, fold in spec["folds"].items():
        held_out = [_entry(f) for f in fold["files"]]
        training = [_entry(f) for other, o in spec["folds"].items() if other != name for f in o["files"]]
        paths[name] = out / f"fold_{name}.json"
        paths[name].write_text(json.dumps({"training": training, "validation": held_out, "testing": held_out}, indent=1))
    # the shipped model: every scan in training; the validation list only feeds the training log
    everything = sorted((_entry(f) for fold in spec["folds"].values() for f in fold["files"]), key=lambda e: e["image"])
    paths["all"] = out / "all.json"
    paths["all"].write_text(json.dumps({"training": everything, "validation": everything, "testing": everything}, indent=1))
    return paths


def _bundle_run(configs: list[Path], args: dict, log: Path) -> float:
    return run_bundle(BUNDLE, configs, args, log)


def _train(data: Path, datalist: Path, work: Path, overrides: dict[str, Any]) -> float:
    args = {"dataset_dir": data, "datalist": datalist, "ckpt_dir": work / "models",
            "output_dir": work / "train", **SAVE_FINAL, **overrides}
    return _bundle_run([BUNDLE / "configs" / "train.yaml"], args, work / "train.log")


def _evaluate(data: Path, datalist: Path, work: Path, checkpoint: Path, n_boot: int,
              recipe: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    # scored with the settings the weights were trained with: --image_size or --retina_band change the input
    args = {**(recipe or {}), "dataset_dir": data, "datalist": datalist, "eval_split": "test", "ckpt_path": checkpoint,
            "initial_ckpt": "", "ckpt_dir": work / "models", "output_dir": work / "eval", "n_boot": n_boot,
            "num_workers": 0}
    _bundle_run([BUNDLE / "configs" / "train.yaml", BUNDLE / "configs" / "evaluate.yaml"], args, work / "evaluate.log")
    with open(work / "eval" / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return [{"file": Path(r["file"]).name, "label": r["label"], **{f"p_{c}": float(r[f"p_{c}"]) for c in CLASSES}}
            for r in rows]


def _resample_patients(statistic, patients: Sequence[str], n_boot: int, seed: int) -> dict[str, dict[str, float]]:
    """Percentile 95% CIs of ``statistic(scan indices) -> {figure: value}``, resampling whole patients.

    Args:
        statistic: figures of a set of scans, given by their indices (repeats allowed).
        patients: patient of each scan.
        n_boot: resamples.
        seed: random seed.

    Returns:
        ``{figure: {"value", "ci_low", "ci_high", "n_patients"}}`` (value: on all scans once).
    """
    ids = sorted(set(patients))
    index = {p: np.flatnonzero(np.asarray(patients) == p) for p in ids}
    point = statistic(np.arange(len(patients)))
    rng = np.random.default_rng(seed)
    stats: dict[str, list[float]] = defaultdict(list)
    for _ in range(n_boot):
        idx = np.concatenate([index[ids[k]] for k in rng.integers(0, len(ids), len(ids))])
        for k, v in statistic(idx).items():
            if np.isfinite(v):
                stats[k].append(v)
    out = {}
    for k, v in point.items():
        low, high = np.percentile(stats[k], [2.5, 97.5]) if stats[k] else (float("nan"), float("nan"))
        out[k] = {"value": float(v), "ci_low": float(low), "ci_high": float(high), "n_patients": len(ids)}
    return out


def patient_bootstrap(probs: np.ndarray, labels: np.ndarray, patients: Sequence[str], n_boot: int = 2000,
                      seed: int = 0) -> dict[str, dict[str, float]]:
    """Percentile 95% CIs of the headline figures, resampling **patients** (all their scans together).

    Args:
        probs: (N, 4) class probabilities.
        labels: (N,) true class indices.
        patients: (N,) patient of each scan.
        n_boot: resamples.
        seed: random seed.

    Returns:
        ``{figure: {"value", "ci_low", "ci_high", "n_patients"}}`` for accuracy, urgent-referral AUROC,
        sensitivity and specificity at 0.5, and Kermany's weighted error.
    """
    from common.metrics.classification import roc_auc, sensitivity_specificity
    from common.metrics.kermany import weighted_error

    probs, labels = np.asarray(probs, float), np.asarray(labels, int)

    def figures(idx: np.ndarray) -> dict[str, float]:
        y, p = labels[idx], probs[idx]
        urgent = np.isin(y, (0, 1)).astype(int)
        score = p[:, :2].sum(axis=1)
        sens, spec = sensitivity_specificity(urgent, (score >= 0.5).astype(int))
        return {"accuracy": float((p.argmax(1) == y).mean()), "urgent_auroc": roc_auc(urgent, score),
                "urgent_sensitivity": sens, "urgent_specificity": spec,
                "kermany_weighted_error": weighted_error(y, p.argmax(1))}

    return _resample_patients(figures, patients, n_boot, seed)


def pooled_report(rows: list[dict[str, Any]], n_boot: int = 2000) -> dict[str, Any]:
    """Evaluation figures of the pooled held-out predictions (one row per scan).

    Args:
        rows: ``{"file", "label", "p_CNV", ..., "patient"}`` per held-out scan.
        n_boot: bootstrap resamples.

    Returns:
        ``common.classification.report.evaluate_probabilities``'s report (image-level CIs) with
        ``patient_bootstrap`` added.
    """
    from common.classification.report import evaluate_probabilities
    from common.classification.tasks import oct_task

    probs = np.array([[r[f"p_{c}"] for c in CLASSES] for r in rows])
    labels = np.array([CLASSES.index(r["label"]) for r in rows])
    report = evaluate_probabilities(probs, labels, oct_task(), n_boot=n_boot)
    report["patient_bootstrap"] = patient_bootstrap(probs, labels, [r["patient"] for r in rows], n_boot)
    report["n_patients"] = len({r["patient"] for r in rows})
    return report


def _ci(fig: dict[str, Any], digits: int = 2) -> str:
    return f"{fig['value']:.{digits}f} ({fig['ci_low']:.{digits}f}-{fig['ci_high']:.{digits}f})"


def headline(report: dict[str, Any]) -> dict[str, str]:
    """The model card's cells of one pooled report: value (image-level CI) [patient-level CI]."""
    pb = report["patient_bootstrap"]
    urgent = report["binary"]["urgent_referral"]

    def both(img: dict[str, Any], key: str) -> str:
        return f"{_ci(img)} [{pb[key]['ci_low']:.2f}-{pb[key]['ci_high']:.2f}]"

    return {
        "accuracy": both(report["accuracy"], "accuracy"),
        "urgent AUROC": both(urgent["auroc"], "urgent_auroc"),
        "urgent sensitivity": both(urgent["sensitivity"], "urgent_sensitivity"),
        "urgent specificity": both(urgent["specificity"], "urgent_specificity"),
        "weighted error": both(report["kermany_weighted_error"], "kermany_weighted_error"),
        "confusion matrix": str(report["confusion_matrix"]["matrix"]),
    }


def markdown_table(results: dict[str, Any]) -> str:
    """Per-fold accuracy, then the pooled figures of one cross-validation."""
    lines = ["| fold | patients | scans | correct | training s |", "|---|---|---|---|---|"]
    for name, fold in results["folds"].items():
        correct = sum(r["label"] == max(CLASSES, key=lambda c: r[f"p_{c}"]) for r in fold["predictions"])
        lines.append(f"| {name} | {fold['n_patients']} | {len(fold['predictions'])} | {correct} | {fold['train_seconds']} |")
    lines += ["", "Pooled held-out predictions: value (95% CI over scans) [95% CI over patients]", "",
              "| figure | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in headline(results["pooled"]).items()]
    return "\n".join(lines) + "\n"


def run(
    data: str = str(DEFAULT_DATA),
    out: str = "runs/oct_cv",
    folds: str | Sequence[str] = "A,B,C,D",
    checkpoint: str = "",
    train_all: bool = False,
    eval_only: bool = False,
    folds_file: str = str(FOLDS_FILE),
    n_boot: int = 2000,
    **overrides: Any,
) -> str:
    """Cross-validate one recipe over the named folds (and optionally train it on every scan).

    Args:
        data: the OCT2017-layout folder the folds file's paths are relative to.
        out: output folder (datalists, one sub-folder per fold with checkpoints, logs and evaluation).
        folds: comma-separated fold names to run ("" for none).
        checkpoint: score this checkpoint on every fold instead of training (recipe (a)); ``overrides`` then
            name the settings it was trained with (``--image_size``, ``--retina_band``), which scoring uses.
        train_all: also train the recipe on every scan (``OUT/all/models/model_final.pt``).
        eval_only: score the folds' existing ``model_final.pt`` again instead of training.
        folds_file: the named folds.
        n_boot: bootstrap resamples of the pooled CIs.
        overrides: passed on to ``train.yaml`` (``--max_epochs 40``, ``--initial_ckpt F``, ...).

    Returns:
        the path of ``crossval.json``.
    """
    data_dir, out_dir = Path(data).resolve(), Path(out).resolve()
    paths = write_datalists(data_dir, out_dir, folds_file)
    report_path = out_dir / "crossval.json"
    results = json.loads(report_path.read_text()) if report_path.is_file() else {"folds": {}}
    results.update({
        "data": str(data_dir.name),
        "folds_file": str(Path(folds_file).relative_to(REPO)) if Path(folds_file).is_relative_to(REPO) else str(folds_file),
        "recipe": {**({"checkpoint": checkpoint} if checkpoint else {}), **{k: str(v) for k, v in overrides.items()}},
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()}",
        "torch_threads": os.environ.get("OMP_NUM_THREADS", ""),
    })
    names = folds if isinstance(folds, (list, tuple)) else str(folds or "").split(",")
    selected = [str(f).strip() for f in names if str(f).strip()]
    spec = json.loads(Path(folds_file).read_text())
    for fold in selected:
        if fold not in spec["folds"]:
            raise SystemExit(f"unknown fold {fold!r}; {folds_file} has {', '.join(spec['folds'])}")
        work = out_dir / f"fold_{fold}"
        if checkpoint:
            seconds, weights = 0.0, Path(checkpoint).resolve()
        elif eval_only:
            seconds, weights = results["folds"].get(fold, {}).get("train_seconds", float("nan")), work / "models" / "model_final.pt"
        else:
            seconds, weights = _train(data_dir, paths[fold], work, overrides), work / "models" / "model_final.pt"
        rows = _evaluate(data_dir, paths[fold], work, weights, n_boot=0, recipe=overrides)
        patients = {Path(f).name: parse_name(f)[1] for f in spec["folds"][fold]["files"]}
        for r in rows:
            r["patient"] = patients[r["file"]]
        results["folds"][fold] = {"train_seconds": round(seconds, 1), "checkpoint": str(weights),
                                  "n_patients": len(spec["folds"][fold]["patients"]), "predictions": rows}
        correct = sum(r["label"] == max(CLASSES, key=lambda c: r[f"p_{c}"]) for r in rows)
        print(f"fold {fold}: trained in {seconds:.0f} s; {correct} of {len(rows)} held-out scans right", flush=True)
        report_path.write_text(json.dumps(results, indent=1))
    pooled = [r for fold in results["folds"].values() for r in fold["predictions"]]
    if pooled:
        results["pooled"] = pooled_report(pooled, n_boot)
        results["pooled"]["folds"] = sorted(results["folds"])
        print("pooled: " + ", ".join(f"{k} {v}" for k, v in headline(results["pooled"]).items()), flush=True)
    if train_all:
        seconds = _train(data_dir, paths["all"], out_dir / "all", overrides)
        results["all"] = {"train_seconds": round(seconds, 1), "checkpoint": str(out_dir / "all" / "models" / "model_final.pt")}
        print(f"all scans: trained in {seconds:.0f} s -> {results['all']['checkpoint']}", flush=True)
    report_path.write_text(json.dumps(results, indent=1))
    if pooled:
        (out_dir / "crossval.md").write_text(markdown_table(results))
    return str(report_path)


def _pooled_arrays(out: str | os.PathLike) -> tuple[list[str], np.ndarray, np.ndarray, list[str]]:
    results = json.loads((Path(out) / "crossval.json").read_text())
    rows = sorted((r for fold in results["folds"].values() for r in fold["predictions"]), key=lambda r: r["file"])
    probs = np.array([[r[f"p_{c}"] for c in CLASSES] for r in rows])
    labels = np.array([CLASSES.index(r["label"]) for r in rows])
    return [r["file"] for r in rows], probs, labels, [r["patient"] for r in rows]


def paired_difference(baseline: str | os.PathLike, other: str | os.PathLike, n_boot: int = 2000,
                      seed: int = 0) -> dict[str, dict[str, float]]:
    """``other`` minus ``baseline`` on the same held-out scans, with a paired 95% CI over patients.

    Args:
        baseline: output folder of ``run`` (e.g. the synthetic-only model).
        other: output folder of another ``run`` over the same scans.
        n_boot: resamples of patients (the same resample for both recipes).
        seed: random seed.

    Returns:
        ``{"accuracy" | "kermany_weighted_error" | "urgent_auroc": {"value", "ci_low", "ci_high"}}``.
    """
    from common.metrics.classification import roc_auc
    from common.metrics.kermany import weighted_error

    files_a, probs_a, labels, patients = _pooled_arrays(baseline)
    files_b, probs_b, labels_b, _ = _pooled_arrays(other)
    if files_a != files_b or not np.array_equal(labels, labels_b):
        raise SystemExit(f"{baseline} and {other} did not score the same scans")
    def figures(idx: np.ndarray, probs: np.ndarray) -> dict[str, float]:
        y, p = labels[idx], probs[idx]
        urgent = np.isin(y, (0, 1)).astype(int)
        return {"accuracy": float((p.argmax(1) == y).mean()),
                "kermany_weighted_error": weighted_error(y, p.argmax(1)),
                "urgent_auroc": roc_auc(urgent, p[:, :2].sum(axis=1))}

    def diff(idx: np.ndarray) -> dict[str, float]:
        a, b = figures(idx, probs_a), figures(idx, probs_b)
        return {k: b[k] - a[k] for k in a}

    return {k: {key: v[key] for key in ("value", "ci_low", "ci_high")}
            for k, v in _resample_patients(diff, patients, n_boot, seed).items()}


def compare(*outs: str, labels: str | Sequence[str] = "", n_boot: int = 2000) -> str:
    """One markdown table of several cross-validations (columns: the recipes), with each recipe's paired
    difference to the first one (95% CI over patients).

    Args:
        outs: output folders of ``run``; the first is the baseline of the differences.
        labels: comma-separated column names (default: the folder names).
        n_boot: resamples of the paired differences.

    Returns:
        the markdown table.
    """
    names = labels if isinstance(labels, (list, tuple)) else [s for s in str(labels or "").split(",") if s]
    names = list(names) or [Path(o).name for o in outs]
    cells = [headline(json.loads((Path(o) / "crossval.json").read_text())["pooled"]) for o in outs]
    diffs = [None] + [paired_difference(outs[0], o, n_boot) for o in outs[1:]]
    lines = ["| figure | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    lines += [f"| {k} | " + " | ".join(c[k] for c in cells) + " |" for k in cells[0]]
    for key, title in (("accuracy", "accuracy"), ("urgent_auroc", "urgent AUROC"),
                       ("kermany_weighted_error", "weighted error")):
        row = ["(baseline)"] + [f"{d[key]['value']:+.2f} ({d[key]['ci_low']:+.2f} to {d[key]['ci_high']:+.2f})"
                                for d in diffs[1:]]
        lines.append(f"| {title} minus {names[0]}, paired, CI over patients | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def float16(checkpoint: str, data: str = str(DEFAULT_DATA)) -> dict[str, Any]:
    """Predictions of ``checkpoint`` on every scan of ``data`` with float32 and with float16-stored weights.

    Args:
        checkpoint: the trained weights (any container ``common.bundle_utils.read_state_dict`` reads).
        data: folder of B-scans (class folders).

    Returns:
        ``{"n_images", "argmax_changed", "max_abs_prob_diff"}`` (inference.yaml's preprocessing and network).
    """
    import torch
    from monai.bundle import ConfigParser

    from common.bundle_utils import read_state_dict

    torch.set_num_threads(1)
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference.yaml"))
    parser["bundle_root"] = str(BUNDLE)
    preprocessing = parser.get_parsed_content("preprocessing")
    files = [str(Path(data) / f) for f in image_files(data)]
    images = torch.stack([preprocessing({"image": f})["image"].as_tensor() for f in files])
    state = read_state_dict(checkpoint)
    probs = {}
    for name, cast in (("float32", lambda v: v.float()), ("float16", lambda v: v.half().float())):
        network = parser.get_parsed_content("network_def", instantiate=True, lazy=False)
        network.load_state_dict({k: (cast(v) if v.is_floating_point() else v) for k, v in state.items()})
        with torch.no_grad():
            probs[name] = torch.softmax(network.eval()(images), dim=1).numpy()
    result = {
        "n_images": len(files),
        "argmax_changed": int((probs["float32"].argmax(1) != probs["float16"].argmax(1)).sum()),
        "max_abs_prob_diff": float(np.abs(probs["float32"] - probs["float16"]).max()),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    fire.Fire({"folds": folds, "run": run, "compare": compare, "float16": float16})
