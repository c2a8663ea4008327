"""Patient-level cross-validation of the lung segmentation bundle on real chest CTs (LCTSC layout).

    python scripts/lung_crossval.py --data ../shared/data/lctsc_train9 --out runs/lung_cv
    python scripts/lung_crossval.py --data DIR --out OUT --folds A --max_epochs 20   # one fold, shorter
    python scripts/lung_crossval.py --data DIR --out OUT --folds "" --train_all      # only the shipped recipe on all cases
    python scripts/lung_crossval.py --data DIR --out OUT --eval_only                 # re-score the folds' checkpoints
    python scripts/lung_crossval.py --data DIR --out OUT --folds "" --ship --provenance P.json  # ship OUT/all's weights

For every fold of ``bundles/lung_ct_segmentation/docs/lctsc_folds.json`` it writes a datalist (training:
the other folds; validation and testing: the fold), trains with the bundle's own ``configs/train.yaml``,
and scores the **last epoch's** weights (``model_final.pt``: nothing is chosen on the held-out patients)
with ``configs/evaluate.yaml`` on the fold's patients, on each scan's own grid. ``--train_all`` then trains
the same recipe on every case (what ``models/model.pt`` ships). Results: ``OUT/crossval.json`` (per case:
Dice and 95% Hausdorff distance per lung and both lungs; training wall time per fold) and
``OUT/crossval.md`` (the table of the model card). Other options (``--max_epochs 20``, ``--initial_ckpt
F``, ...) are passed on to ``train.yaml``.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

import fire

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a file: this checkout's packages first
from zoo_tools import run_bundle  # noqa: E402

BUNDLE = REPO / "bundles" / "lung_ct_segmentation"
FOLDS_FILE = BUNDLE / "docs" / "lctsc_folds.json"
STRUCTURES = ("right_lung", "left_lung", "both_lungs")


def _item(data: Path, spec: dict, case: str) -> dict[str, str]:
    image = data / spec["image_pattern"].format(case=case)
    label = data / spec["label_pattern"].format(case=case)
    for path in (image, label):
        if not path.is_file():
            raise SystemExit(f"{path}: missing (expected the LCTSC layout of {FOLDS_FILE.name})")
    return {"image": str(image), "label": str(label)}


def write_datalists(data: str | os.PathLike, out: str | os.PathLike, folds_file: str | os.PathLike = FOLDS_FILE) -> dict:
    """One datalist per fold (training: the other folds; validation and testing: the fold) and ``all.json``.

    Args:
        data: folder with the CT and lung-mask NIfTI files named as in ``folds_file``.
        out: folder the datalists are written to.
        folds_file: JSON with ``image_pattern``, ``label_pattern`` and ``folds`` (name -> case ids).

    Returns:
        ``{fold name or "all": datalist path}``.
    """
    spec = json.loads(Path(folds_file).read_text())
    data, out = Path(data).resolve(), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    every = [case for cases in spec["folds"].values() for case in cases]
    paths = {}
    for name, cases in spec["folds"].items():
        held_out = [_item(data, spec, c) for c in cases]
        datalist = {
            "training": [_item(data, spec, c) for c in every if c not in cases],
            "validation": held_out,
            "testing": held_out,
        }
        paths[name] = out / f"fold_{name}.json"
        paths[name].write_text(json.dumps(datalist, indent=1))
    # the shipped model: every case in training; the validation list only feeds the training log
    everything = [_item(data, spec, c) for c in every]
    paths["all"] = out / "all.json"
    paths["all"].write_text(json.dumps({"training": everything, "validation": everything, "testing": everything}, indent=1))
    return paths


def _bundle_run(configs: list[Path], args: dict, log: Path) -> float:
    return run_bundle(BUNDLE, configs, args, log)


def _train(datalist: Path, work: Path, overrides: dict) -> float:
    work.mkdir(parents=True, exist_ok=True)
    args = {"dataset_dir": datalist, "ckpt_dir": work / "models", "log_dir": work / "logs", **overrides}
    return _bundle_run([BUNDLE / "configs" / "train.yaml"], args, work / "train.log")


def _evaluate(datalist: Path, work: Path) -> list[dict]:
    args = {
        "dataset_dir": datalist,
        "eval_split": "testing",
        "ckpt_path": work / "models" / "model_final.pt",
        "output_dir": work / "eval",
        "ckpt_dir": work / "models",
        "log_dir": work / "logs",
    }
    _bundle_run([BUNDLE / "configs" / "train.yaml", BUNDLE / "configs" / "evaluate.yaml"], args, work / "evaluate.log")
    return json.loads((work / "eval" / "metrics.json").read_text())["cases"]


def markdown_table(results: dict) -> str:
    """The model card's table: one row per held-out case, then the mean of each fold."""
    lines = [
        "| fold | case | Dice right | Dice left | Dice both | HD95 right (mm) | HD95 left (mm) | HD95 both (mm) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for fold, entry in results["folds"].items():
        rows = []
        for case in entry["cases"]:
            m = case["metrics"]
            rows.append([m[s]["dice"] for s in STRUCTURES] + [m[s]["hd95_mm"] for s in STRUCTURES])
            cells = [f"{v:.3f}" for v in rows[-1][:3]] + [f"{v:.1f}" for v in rows[-1][3:]]
            lines.append(f"| {fold} | {case['case']} | " + " | ".join(cells) + " |")
        means = [sum(r[i] for r in rows) / len(rows) for i in range(6)]
        cells = [f"**{v:.3f}**" for v in means[:3]] + [f"{v:.1f}" for v in means[3:]]
        lines.append(f"| {fold} | mean | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(
    data: str = "../shared/data/lctsc_train9",
    out: str = "runs/lung_cv",
    folds: str | tuple = "A,B,C",
    train_all: bool = False,
    eval_only: bool = False,
    ship: bool = False,
    provenance: str | None = None,
    **overrides,
) -> str:
    """Cross-validate (and optionally train the shipped recipe on every case).

    Args:
        data: the LCTSC folder (``Case_NNN_ct.nii.gz`` + ``Case_NNN_lung.nii.gz``).
        out: output folder (datalists, one sub-folder per fold with its checkpoints, logs and report).
        folds: comma-separated fold names to run ("" for none).
        train_all: also train on every case (``OUT/all/models/model_final.pt``).
        eval_only: score the folds' existing ``model_final.pt`` again (after a change of the evaluation or
            post-processing) instead of training them.
        provenance: with ``ship``, a JSON file of the weights' provenance for ``metadata.json`` (trained_on,
            data, command, commit, training_time, hardware; ``scripts/ship_weights.py``).
        ship: store ``OUT/all/models/model_final.pt`` as the bundle's ``models/model.pt`` (float16) and
            record its sha256 in ``metadata.json`` and ``large_files.yml``.
        overrides: passed on to ``train.yaml`` (e.g. ``--max_epochs 20``).

    Returns:
        the path of ``crossval.json``.
    """
    out_dir = Path(out).resolve()
    paths = write_datalists(data, out_dir)
    report_path = out_dir / "crossval.json"
    results = json.loads(report_path.read_text()) if report_path.is_file() else {"folds": {}}
    results.update({
        "data": str(Path(data)),
        "train_overrides": {k: str(v) for k, v in overrides.items()},
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()}",
        "torch_threads": os.environ.get("OMP_NUM_THREADS", ""),
    })
    # fire turns "A,B,C" into a tuple
    names = folds if isinstance(folds, (list, tuple)) else str(folds or "").split(",")
    selected = [str(f).strip() for f in names if str(f).strip()]
    for fold in selected:
        if fold not in paths or fold == "all":
            raise SystemExit(f"unknown fold {fold!r}; {FOLDS_FILE} has {', '.join(k for k in paths if k != 'all')}")
        work = out_dir / f"fold_{fold}"
        if eval_only:
            seconds = results["folds"].get(fold, {}).get("train_seconds", float("nan"))
        else:
            seconds = _train(paths[fold], work, overrides)
        cases = _evaluate(paths[fold], work)
        results["folds"][fold] = {"train_seconds": round(seconds, 1), "cases": cases}
        print(f"fold {fold}: trained in {seconds:.0f} s; Dice both lungs " +
              ", ".join(f"{c['case']} {c['metrics']['both_lungs']['dice']:.3f}" for c in cases), flush=True)
        report_path.write_text(json.dumps(results, indent=1))
    if train_all:
        seconds = _train(paths["all"], out_dir / "all", overrides)
        results["all"] = {"train_seconds": round(seconds, 1), "checkpoint": str(out_dir / "all" / "models" / "model_final.pt")}
        print(f"all nine: trained in {seconds:.0f} s -> {results['all']['checkpoint']}", flush=True)
    if ship:
        from ship_weights import ship_weights  # scripts/ship_weights.py, beside this file

        record = json.loads(Path(provenance).read_text()) if provenance else None
        results["shipped"] = ship_weights(BUNDLE, out_dir / "all" / "models" / "model_final.pt", record)
        print(f"shipped {results['shipped']['file']} (sha256 {results['shipped']['sha256']})", flush=True)
    report_path.write_text(json.dumps(results, indent=1))
    if results["folds"]:
        (out_dir / "crossval.md").write_text(markdown_table(results))
    return str(report_path)


if __name__ == "__main__":
    fire.Fire(main)
