"""Train on synthetic data only, score on real data: the SyntheX transfer experiment (issue #20).

    # retinal OCT: synthetic-only, real-only and synthetic pre-training + real, on the 48 real B-scans
    python scripts/synthex.py oct --out runs/synthex/oct [--arms synthetic,real,finetune]
    # pediatric pneumonia: synthetic-only films, scored on the real ChestXRay2017 training split
    python scripts/synthex.py pneumonia --out runs/synthex/pneumonia
    # lung CT: synthetic-only phantoms, scored on the nine real LCTSC CTs (real arms: scripts/lung_crossval.py)
    python scripts/synthex.py lung --out runs/synthex/lung
    # pneumonia: several synthetic-only models' probabilities averaged, on the same real films
    python scripts/synthex.py ensemble runs/synthex/pneumonia runs/synthex/pneumonia_seed1 [--split real_all]
    # every task's table, as docs/synthetic_data.md carries it
    python scripts/synthex.py table runs/synthex

Each task makes its synthetic set with the project's generator (``--synthetic_config`` defaults to the
task's file in ``docs/experiments/``, ``--seed``), trains the bundle's own ``configs/train.yaml`` on it
(the last epoch's weights, ``model_final.pt``: nothing is chosen on real data), and scores those weights on
the real folder (``--real``, default ``../shared/data/...``) with the bundle's ``configs/evaluate.yaml``.
The synthetic set and weights are reused when there (``OUT/synthetic_data/dataset.yaml``,
``OUT/synthetic/models/model_final.pt``; ``--force true`` redoes them); scoring and the real-data arms run on
every call. What each task writes:

- ``oct``: the real arms are ``scripts/oct_crossval.py``'s patient-level folds of the 48 scans (the
  synthetic-only weights are scored on every fold untrained); ``OUT/{synthetic_only,real,finetune}/crossval.json`` and
  ``OUT/synthex.md`` (accuracy, urgent-referral AUROC, Kermany's weighted error, each with bootstrap CIs
  over scans and over patients, and every arm's paired difference to the synthetic-only one).
- ``pneumonia``: the synthetic-only weights on every real film (``OUT/real_all/report.json``) and, with the
  shipped real-data weights beside them, on the patient-level validation split those were chosen on
  (``OUT/real_validation``); pneumonia-vs-normal AUROC with bootstrap CIs.
- ``lung``: both-lung Dice per real CT (``OUT/real_all/metrics.json``), mean with a bootstrap CI over
  patients. Real-only and synthetic + real are ``scripts/lung_crossval.py`` (3 folds, about 35 min of CPU
  each); ``--reference`` takes their ``crossval.json`` files to put them in the same table, with paired
  differences on the same patients.

Every ``OUT/synthex.json`` records the commands' settings, wall times and the machine. Tests run each task
on tiny generated stand-ins for the real folders (``tests/test_synthex.py``).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import fire
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "scripts")]  # run as a file: this checkout's packages and scripts first

import make_synthetic  # noqa: E402
import oct_crossval  # noqa: E402

from common.bundle_utils import flag  # noqa: E402
from zoo_tools import run_bundle  # noqa: E402

REAL = REPO.parent / "shared" / "data"
EXPERIMENTS = REPO / "docs" / "experiments"
BUNDLES = REPO / "bundles"
N_BOOT = 2000


def _arms(arms: str | Sequence[str]) -> list[str]:
    names = arms if isinstance(arms, (list, tuple)) else str(arms or "").split(",")
    return [str(a).strip() for a in names if str(a).strip()]


def _machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()}"


def _reusable(folder: Path, done: Path, settings: dict[str, Any], force: bool) -> bool:
    """Whether the step that made ``done`` in ``folder`` can be reused for ``settings``.

    ``folder/synthex_settings.json`` records what a step was run with; a finished step made with other
    settings (or with none recorded) is refused unless ``force``, so a table never quotes weights trained
    with other settings than it says. With ``force`` (or nothing there yet) the folder is emptied.
    """
    stamp = folder / "synthex_settings.json"
    if done.exists() and not flag(force):
        recorded = json.loads(stamp.read_text()) if stamp.is_file() else None
        if recorded == settings:
            return True
        raise SystemExit(f"{folder}: made with other settings ({recorded} instead of {settings}); "
                         "--force true makes it again, or choose another --out")
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    stamp.write_text(json.dumps(settings, indent=1))
    return False


def make_synthetic_set(task: str, out: Path, config: str | None, seed: int, force: bool = False) -> Path:
    """Generate the synthetic training set of ``task`` into ``out`` (reused when made with the same settings).

    Args:
        task: generator name of ``scripts/make_synthetic.py`` (``oct``, ``pneumonia_cxr``, ``lung_ct``).
        out: output folder.
        config: generator YAML (``None``: the generator's defaults).
        seed: generator seed.
        force: regenerate even if ``out/dataset.yaml`` exists.

    Returns:
        ``out``.
    """
    settings = {"task": task, "config": Path(config).read_text() if config else None, "seed": int(seed)}
    if not _reusable(out, out / "dataset.yaml", settings, force):
        make_synthetic.main(task, str(out), config, seed)
    return out


def train_synthetic(bundle: str, data: Path, work: Path, overrides: dict[str, Any], force: bool = False) -> dict[str, Any]:
    """Train ``bundle``'s ``train.yaml`` on the synthetic set; reuse ``work/models/model_final.pt`` when it was
    trained on the same set with the same overrides.

    Returns:
        ``{"checkpoint", "train_seconds"}`` (seconds 0 when reused).
    """
    checkpoint = work / "models" / "model_final.pt"
    data_settings = json.loads((data / "synthex_settings.json").read_text())
    settings = {"bundle": bundle, "data": data_settings, "overrides": {k: str(v) for k, v in overrides.items()}}
    if _reusable(work, checkpoint, settings, force):
        return {"checkpoint": str(checkpoint), "train_seconds": 0.0, "reused": True}
    args = {"dataset_dir": data, "ckpt_dir": work / "models", "output_dir": work / "train", **overrides}
    if bundle != "lung_ct_segmentation":  # the lung recipe writes model_final.pt itself
        args.update(oct_crossval.SAVE_FINAL)  # the classifiers' train.yaml share the saver layout
    else:
        args["log_dir"] = work / "logs"
    seconds = run_bundle(BUNDLES / bundle, [BUNDLES / bundle / "configs" / "train.yaml"], args, work / "train.log")
    if not checkpoint.is_file():
        raise SystemExit(f"{work / 'train.log'}: training ended without {checkpoint}")
    return {"checkpoint": str(checkpoint), "train_seconds": round(seconds, 1)}


def evaluate(bundle: str, checkpoint: str | Path, work: Path, args: dict[str, Any]) -> float:
    """Score ``checkpoint`` with ``bundle``'s ``evaluate.yaml`` (merged over ``train.yaml``) into ``work/eval``."""
    merged = {"ckpt_path": checkpoint, "output_dir": work / "eval", "ckpt_dir": work / "models", **args}
    configs = [BUNDLES / bundle / "configs" / "train.yaml", BUNDLES / bundle / "configs" / "evaluate.yaml"]
    return run_bundle(BUNDLES / bundle, configs, merged, work / "evaluate.log")


def _write(out: Path, summary: dict[str, Any], table: str) -> str:
    summary["machine"] = _machine()
    (out / "synthex.json").write_text(json.dumps(summary, indent=1))
    (out / "synthex.md").write_text(table)
    print(table, flush=True)
    return str(out / "synthex.md")


def _ci_text(fig: dict[str, Any], digits: int = 3) -> str:
    return f"{fig['value']:.{digits}f} ({fig['ci_low']:.{digits}f}-{fig['ci_high']:.{digits}f})"


# ---------------------------------------------------------------------------------------------------------
# OCT
# ---------------------------------------------------------------------------------------------------------

#: real-data recipes of the OCT arms (the model card's (b) and (c))
OCT_REAL_RECIPES: dict[str, dict[str, Any]] = {
    "real": {"max_epochs": 60},
    "finetune": {"learning_rate": 0.0005, "max_epochs": 40},
}


def oct_transfer(
    out: str = "runs/synthex/oct",
    real: str = str(REAL / "oct2017_samples48"),
    synthetic_config: str = str(EXPERIMENTS / "oct_synthex.yaml"),
    seed: int = 0,
    arms: str | Sequence[str] = "synthetic",
    folds_file: str = str(oct_crossval.FOLDS_FILE),
    force: bool = False,
    **train_overrides: Any,
) -> str:
    """OCT: synthetic-only weights on the real B-scans' folds, optionally the real-data arms beside them.

    Args:
        out: output folder.
        real: real OCT2017-layout folder (``CNV/ DME/ DRUSEN/ NORMAL/``).
        synthetic_config: generator YAML of the synthetic set.
        seed: generator seed.
        arms: comma-separated, from ``synthetic`` (always run), ``real`` (from scratch on the other folds),
            ``finetune`` (the synthetic weights fine-tuned on the other folds).
        folds_file: the real scans' named folds.
        force: regenerate the data and retrain.
        train_overrides: ``train.yaml`` settings of the synthetic training (``--max_epochs 30``, ...).

    Returns:
        the path of ``OUT/synthex.md``.
    """
    out_dir = Path(out).resolve()
    selected = ["synthetic"] + [a for a in _arms(arms) if a != "synthetic"]
    for arm in selected:
        if arm != "synthetic" and arm not in OCT_REAL_RECIPES:
            raise SystemExit(f"unknown arm {arm!r}; choose from synthetic, {', '.join(OCT_REAL_RECIPES)}")
    data = make_synthetic_set("oct", out_dir / "synthetic_data", synthetic_config, seed, force)
    trained = train_synthetic("retina_oct_classification", data, out_dir / "synthetic", train_overrides, force)
    n_folds = len(json.loads(Path(folds_file).read_text())["folds"])
    fold_names = ",".join(oct_crossval.FOLD_NAMES[:n_folds])
    runs = {"synthetic": oct_crossval.run(real, str(out_dir / "synthetic_only"), fold_names, checkpoint=trained["checkpoint"],
                                          folds_file=folds_file, n_boot=N_BOOT, **train_overrides)}
    for arm in selected[1:]:
        recipe = dict(OCT_REAL_RECIPES[arm])
        if arm == "finetune":
            recipe["initial_ckpt"] = trained["checkpoint"]
        runs[arm] = oct_crossval.run(real, str(out_dir / arm), fold_names, folds_file=folds_file, n_boot=N_BOOT, **recipe)
    labels = {"synthetic": "synthetic only", "real": "real only", "finetune": "synthetic + real (fine-tuned)"}
    table = oct_crossval.compare(*(str(Path(p).parent) for p in runs.values()),
                                 labels=[labels[a] for a in runs], n_boot=N_BOOT)
    summary = {"task": "oct", "real": str(Path(real).name), "synthetic_config": str(synthetic_config), "seed": seed,
               "synthetic_training": {**trained, "overrides": {k: str(v) for k, v in train_overrides.items()}},
               "arms": {a: {"crossval": p, "recipe": {k: str(v) for k, v in OCT_REAL_RECIPES.get(a, {}).items()}}
                        for a, p in runs.items()}}
    return _write(out_dir, summary, table)


# ---------------------------------------------------------------------------------------------------------
# pediatric pneumonia
# ---------------------------------------------------------------------------------------------------------

PNEUMONIA = "pediatric_cxr_pneumonia_classification"


def _pneumonia_row(report_file: Path) -> dict[str, Any]:
    report = json.loads(report_file.read_text())
    question = report["binary"]["pneumonia_vs_normal"]
    return {"n": question["n_positive"] + question["n_negative"], "n_pneumonia": question["n_positive"],
            "auroc": question["auroc"], "sensitivity": question["sensitivity"],
            "specificity": question["specificity"], "accuracy_3_class": report["accuracy"]}


def pneumonia(
    out: str = "runs/synthex/pneumonia",
    real: str = str(REAL / "chest_xray2017_train224"),
    synthetic_config: str = str(EXPERIMENTS / "pneumonia_synthex.yaml"),
    seed: int = 0,
    shipped: str = str(BUNDLES / PNEUMONIA / "models" / "model.pt"),
    force: bool = False,
    **train_overrides: Any,
) -> str:
    """Pneumonia: synthetic-only weights on the real films (all, and the real model's validation split).

    Args:
        out: output folder.
        real: real ChestXRay2017-layout folder (``NORMAL/ PNEUMONIA/``).
        synthetic_config: generator YAML of the synthetic films.
        seed: generator seed.
        shipped: real-data weights scored beside them on the validation split ("" to leave out).
        force: regenerate the data and retrain.
        train_overrides: ``train.yaml`` settings of the synthetic training.

    Returns:
        the path of ``OUT/synthex.md``.
    """
    out_dir = Path(out).resolve()
    data = make_synthetic_set("pneumonia_cxr", out_dir / "synthetic_data", synthetic_config, seed, force)
    trained = train_synthetic(PNEUMONIA, data, out_dir / "synthetic", train_overrides, force)
    real_dir = Path(real).resolve()
    rows: dict[str, dict[str, Any]] = {}
    # each weights scored with the settings they were trained with (an --image_size changes the input)
    scored = [("synthetic only", "all", trained["checkpoint"], train_overrides, "real_all"),
              ("synthetic only", "validation", trained["checkpoint"], train_overrides, "real_validation")]
    if shipped:
        scored.append(("real only (shipped weights)", "validation", shipped, {}, "shipped_validation"))
    for arm, split, checkpoint, recipe, name in scored:
        work = out_dir / name
        seconds = evaluate(PNEUMONIA, checkpoint, work,
                           {**recipe, "dataset_dir": real_dir, "eval_split": split, "n_boot": N_BOOT})
        rows[name] = {"arm": arm, "split": split, "eval_seconds": round(seconds, 1),
                      **_pneumonia_row(work / "eval" / "report.json")}
    lines = ["| trained on | real films scored | n (pneumonia) | pneumonia-vs-normal AUROC (95% CI) | sensitivity | specificity | 3-class accuracy |",
             "|---|---|---|---|---|---|---|"]
    split_text = {"all": "every film of the folder", "validation": "patient-level validation split (val_fraction 0.1, split_seed 0)"}
    for r in rows.values():
        lines.append(f"| {r['arm']} | {split_text[r['split']]} | {r['n']} ({r['n_pneumonia']}) | {_ci_text(r['auroc'])} | "
                     f"{r['sensitivity']['value']:.3f} | {r['specificity']['value']:.3f} | {r['accuracy_3_class']['value']:.3f} |")
    summary = {"task": "pneumonia", "real": real_dir.name, "synthetic_config": str(synthetic_config), "seed": seed,
               "synthetic_training": {**trained, "overrides": {k: str(v) for k, v in train_overrides.items()}},
               "scores": rows}
    return _write(out_dir, summary, "\n".join(lines) + "\n")


def _read_pneumonia_predictions(folder: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(files, is pneumonia, p_pneumonia) of one scoring's ``eval/predictions.csv``."""
    import csv

    path = folder / "eval" / "predictions.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no predictions; run `scripts/synthex.py pneumonia` for that output first")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    files = [r["file"] for r in rows]
    return files, np.array([r["label"] != "NORMAL" for r in rows]), np.array([float(r["p_pneumonia"]) for r in rows])


def ensemble(*outs: str, split: str = "real_all") -> str:
    """Pneumonia: the AUROC of several synthetic-only models' averaged probabilities on the same real films.

    Args:
        outs: output folders of ``scripts/synthex.py pneumonia`` runs (two or more).
        split: which scoring to average: ``real_all`` (every real film) or ``real_validation``.

    Returns:
        one line: the averaged models' pneumonia-vs-normal AUROC (95% bootstrap CI over films) and their
        sensitivity and specificity at 0.5.

    Raises:
        ValueError: fewer than two folders, or folders that scored different films.
    """
    from common.metrics.classification import bootstrap_ci, roc_auc, sensitivity_specificity

    if len(outs) < 2:
        raise ValueError("ensemble needs the output folders of two or more pneumonia runs")
    scored = [_read_pneumonia_predictions(Path(o) / split) for o in outs]
    files, truth, _ = scored[0]
    for o, (other_files, _, _) in zip(outs[1:], scored[1:]):
        if other_files != files:
            raise ValueError(f"{o}/{split} scored other films than {outs[0]}/{split}: they cannot be averaged")
    prob = np.mean([p for _, _, p in scored], axis=0)
    auroc = bootstrap_ci(roc_auc, truth, prob, n_boot=N_BOOT)
    sens, spec = sensitivity_specificity(truth, prob >= 0.5)
    return (f"{len(outs)} models averaged, {split} ({len(files)} films): AUROC {_ci_text(auroc)}, "
            f"sensitivity {sens:.3f}, specificity {spec:.3f} at 0.5")


# ---------------------------------------------------------------------------------------------------------
# lung CT
# ---------------------------------------------------------------------------------------------------------

LUNG = "lung_ct_segmentation"


def _dice_by_case(cases: list[dict[str, Any]]) -> dict[str, float]:
    """Both-lung Dice per case from ``evaluate.yaml``'s or ``lung_crossval.py``'s case records."""
    out = {}
    for case in cases:
        name = Path(str(case.get("case") or case.get("image"))).name.split(".")[0].replace("_ct", "")
        metrics = case["metrics"]
        out[name] = float(metrics["both_lungs"]["dice"] if "both_lungs" in metrics else metrics["dice_both_lungs"])
    return out


def bootstrap_mean(values: Sequence[float], n_boot: int = N_BOOT, seed: int = 0) -> dict[str, float]:
    """Mean of ``values`` with a percentile bootstrap 95% CI (cases resampled with replacement)."""
    from common.metrics.classification import bootstrap_ci

    return bootstrap_ci(np.mean, np.asarray(values, dtype=float), n_boot=n_boot, seed=seed)


def lung(
    out: str = "runs/synthex/lung",
    real: str = str(REAL / "lctsc_train9"),
    synthetic_config: str = str(BUNDLES / LUNG / "docs" / "synthetic_lung_ct.yaml"),
    seed: int = 0,
    reference: str | Sequence[str] = "",
    force: bool = False,
    **train_overrides: Any,
) -> str:
    """Lung CT: synthetic-only weights on every real CT, with real-data arms from ``lung_crossval.py``.

    Args:
        out: output folder.
        real: real LCTSC folder (``Case_NNN_ct.nii.gz`` + ``Case_NNN_lung.nii.gz``).
        synthetic_config: generator YAML of the synthetic phantoms.
        seed: generator seed.
        reference: comma-separated ``label=path/to/crossval.json`` of real-data arms to tabulate beside
            (the same patients; each case's held-out Dice is paired with the synthetic-only one); a label
            holds no comma.
        force: regenerate the data and retrain.
        train_overrides: ``train.yaml`` settings of the synthetic training (``--max_epochs 60``, ...).

    Returns:
        the path of ``OUT/synthex.md``.
    """
    from lung_crossval import write_datalists

    out_dir = Path(out).resolve()
    data = make_synthetic_set("lung_ct", out_dir / "synthetic_data", synthetic_config, seed, force)
    trained = train_synthetic(LUNG, data, out_dir / "synthetic", train_overrides, force)
    datalist = write_datalists(Path(real).resolve(), out_dir / "datalists")["all"]
    work = out_dir / "real_all"
    seconds = evaluate(LUNG, trained["checkpoint"], work,
                       {"dataset_dir": datalist, "eval_split": "testing", "log_dir": work / "logs"})
    arms = {"synthetic only": _dice_by_case(json.loads((work / "eval" / "metrics.json").read_text())["cases"])}
    for item in _arms(reference):
        label, _, path = item.partition("=")
        if not path or not Path(path).is_file():
            raise SystemExit(f"--reference {item!r}: give label=path/to/crossval.json (no comma in the label)")
        results = json.loads(Path(path).read_text())
        arms[label] = _dice_by_case([c for fold in results["folds"].values() for c in fold["cases"]])
    base = arms["synthetic only"]
    lines = ["| trained on | both-lung Dice, mean over patients (95% CI) | range | minus synthetic only, paired (95% CI) |",
             "|---|---|---|---|"]
    for label, dice in arms.items():
        shared = sorted(set(dice) & set(base))
        diff = "" if label == "synthetic only" else _ci_text(bootstrap_mean([dice[c] - base[c] for c in shared]))
        values = list(dice.values())
        lines.append(f"| {label} | {_ci_text(bootstrap_mean(values))} | {min(values):.3f}-{max(values):.3f} | {diff} |")
    summary = {"task": "lung", "real": Path(real).name, "synthetic_config": str(synthetic_config), "seed": seed,
               "synthetic_training": {**trained, "overrides": {k: str(v) for k, v in train_overrides.items()}},
               "eval_seconds": round(seconds, 1), "dice_both_lungs": arms}
    return _write(out_dir, summary, "\n".join(lines) + "\n")


def table(root: str = "runs/synthex") -> str:
    """Every task's ``synthex.md`` under ``root``, headed by the task, for ``docs/synthetic_data.md``."""
    parts = []
    for md in sorted(Path(root).glob("*/synthex.md")):
        summary = json.loads((md.parent / "synthex.json").read_text())
        parts.append(f"**{summary['task']}** (real: `{summary['real']}`; {summary['machine']})\n\n{md.read_text()}")
    text = "\n".join(parts)
    print(text)
    return text


if __name__ == "__main__":
    fire.Fire({"oct": oct_transfer, "pneumonia": pneumonia, "ensemble": ensemble, "lung": lung, "table": table})
