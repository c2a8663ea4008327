"""The `make demo` driver: every bundle's **shipped weights** on data the demo generates, in minutes.

    python scripts/demo.py --out demo_output [--bundles lung_ct_segmentation,...] [--force]

Per bundle, each step a subprocess running the bundle's own configs (what a user types):

1. ``data``: a small synthetic set in the bundle's public layout (``scripts/make_synthetic.py``);
2. ``evaluate``: ``train.yaml + evaluate.yaml`` with ``--ckpt_path bundles/<name>/models/model.pt`` on its
   labelled test split: the row's figure, the report's plots (overlays, ROC curves, FROC);
3. ``inference``: ``inference.yaml`` with **no checkpoint override**, as on a fresh clone;
4. ``export`` + ``onnx_inference``: ONNX export of the shipped weights with the parity check, and the same
   inference on ONNX Runtime;
5. ``explain`` (classifiers): occlusion / Grad-CAM maps;
6. real images where there are some: the real adult chest radiograph that the ``pydicom-data`` package
   ships (``RG1_UNCR.dcm``, a DICOM CR in MONOCHROME1) through the pneumonia and oxygen-risk bundles, and
   a handful of real ChestXRay2017 films when ``../shared/data`` holds them.

Everything is written under the output folder; nothing under ``bundles/`` is touched. Steps are reused as
in ``zoo_tools.demo`` (the same runner): a step whose command, configs and weights are unchanged and whose
outputs exist is not run again. Training every bundle from scratch is ``make demo-train`` (``zoo_tools.demo``).
"""

from __future__ import annotations

import csv
import json
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from zoo_tools.demo import (
    LUNG_SEG,
    PNEUMONIA,
    REPO,
    Metric,
    Row,
    Step,
    StepResult,
    bundle_run_argv,
    configs_signature,
    copy_some,
    file_signature,
    first_files,
    lookup,
    prediction_accuracy,
    read_json,
    real_cxr_sample,
    render_table,
    split_csv,
)

OXYGEN = "cxr_ehr_oxygen_risk"
PACKAGE_CXR = "RG1_UNCR.dcm"  # pydicom-data: a real adult PA chest radiograph (CR, MONOCHROME1, 1955 x 1841)


@dataclass
class ShippedDemo:
    """What ``make demo`` does with one bundle's shipped weights (see ``SHIPPED``).

    Args:
        bundle: folder name under ``bundles/``.
        task: ``scripts/make_synthetic.py`` task.
        synthetic: generator config of the small demo set (merged over the generator's defaults).
        metric: the figure of the row, read from the evaluation report.
        inputs: inference inputs, relative to the data set folder.
        inference_outputs: glob patterns (in the inference output folder) inference must produce.
        evaluate: extra overrides of the evaluation run.
        inference: extra overrides of both inference runs.
        explain: held-out folders (relative to the data set) whose first file gets occlusion / Grad-CAM maps.
        seed: generator seed.
        datalist_layout: ``scripts/prepare_datalist.py`` layout whose datalist the runs read ("" for none).
        inputs_csv_split: CSV data sets: the split whose rows inference reads ("" for none).
        pngs: glob patterns, relative to the bundle's demo folder, of the figures copied beside summary.md.
        note: what the synthetic figure means for these weights, printed under the table ("" for none).
    """

    bundle: str
    task: str
    synthetic: dict[str, Any]
    metric: Metric
    inputs: str
    inference_outputs: Sequence[str]
    evaluate: dict[str, Any] = field(default_factory=dict)
    inference: dict[str, Any] = field(default_factory=dict)
    explain: Sequence[str] = ()
    seed: int = 0
    datalist_layout: str = ""
    inputs_csv_split: str = ""
    pngs: Sequence[str] = ("eval/*.png",)
    note: str = ""


# ---------------------------------------------------------------------------------------------------------
# THE settings of `make demo`: small synthetic sets, so that all five bundles run in a few minutes on two
# CPU cores. The figures are on SYNTHETIC data and say that the pipeline works end to end, not that a model
# works on patients: the model cards hold the real-data figures where there are any.
# ---------------------------------------------------------------------------------------------------------
_NO_TRAIN = {"NORMAL": 0, "BACTERIAL": 0, "VIRAL": 0}
SHIPPED: dict[str, ShippedDemo] = {
    LUNG_SEG: ShippedDemo(
        bundle=LUNG_SEG,
        task="lung_ct",
        synthetic={"num_train": 0, "num_val": 0, "num_test": 3, "write_mhd": False, "dicom_cases": "none",
                   "phantom": {"matrix": 128, "slice_spacing_mm": [2.0, 3.0], "table": True}},
        metric=Metric("mean Dice, both lungs, 3 test phantoms", "metrics.json", "mean.dice"),
        note="trained on real chest CT; its model card has the patient-level cross-validation on real scans",
        inputs="imagesTs",
        inference_outputs=("*_seg.nii.gz",),
    ),
    "lung_nodule_ct_detection": ShippedDemo(
        bundle="lung_nodule_ct_detection",
        task="nodules",
        synthetic={"num_train": 0, "num_val": 0, "num_test": 3, "dicom_cases": "none", "candidates_per_scan": 0},
        seed=7,
        datalist_layout="luna16",
        evaluate={"eval_split": "test"},
        metric=Metric("CPM, nodules >= 6 mm, 3 test scans", "metrics.json", "cpm_6mm"),
        note="trained on synthetic CT phantoms only: a starting point for fine-tuning on LUNA16-style data",
        inputs="datalist.json",  # its test scans
        inference_outputs=("*_nodules.json",),
    ),
    "retina_oct_classification": ShippedDemo(
        bundle="retina_oct_classification",
        task="oct",
        synthetic={"image_size": [496, 512],
                   "splits": {"train": {"CNV": 0, "DME": 0, "DRUSEN": 0, "NORMAL": 0},
                              "test": {"CNV": 8, "DME": 8, "DRUSEN": 8, "NORMAL": 8}}},
        evaluate={"eval_split": "test", "n_boot": 200},
        metric=Metric("4-class accuracy, 32 test B-scans", "report.json", "accuracy"),
        note="synthetic pre-training + 48 real OCT2017 scans: 0.75 accuracy in cross-validation on those (model "
             "card), lower on these synthetic ones; research use, fine-tune on local scans",
        inputs="OCT2017/test",
        inference_outputs=("predictions.csv",),
        explain=("OCT2017/test/CNV",),
        pngs=("eval/*.png", "explain/explain/*.png"),
    ),
    PNEUMONIA: ShippedDemo(
        bundle=PNEUMONIA,
        task="pneumonia_cxr",
        synthetic={"image_size": 256, "splits": {"train": _NO_TRAIN,
                                                 "test": {"NORMAL": 8, "BACTERIAL": 16, "VIRAL": 8}}},
        evaluate={"eval_split": "test", "n_boot": 200},
        metric=Metric("3-class accuracy, 32 test films", "report.json", "accuracy"),
        inputs="chest_xray/test",
        inference_outputs=("predictions.csv",),
        note="trained on real films only; the generator's synthetic pediatric films do not look like real ones "
             "yet (see docs/synthetic_data.md), so its synthetic figure is near chance and its real-film rows "
             "and model card are the ones that tell how it works",
        explain=("chest_xray/test/PNEUMONIA",),
        pngs=("eval/*.png", "explain/explain/*.png"),
    ),
    OXYGEN: ShippedDemo(
        bundle=OXYGEN,
        task="oxygen_risk",
        synthetic={"n_per_site": 80, "image_size": 128},
        evaluate={"n_boot": 200},
        metric=Metric("AUROC any oxygen 24 h, test encounters", "evaluation_report.json",
                      "outputs.any_oxygen_24h.auroc"),
        note="trained on a synthetic cohort only: a starting point for fine-tuning or federated training",
        inputs=".",
        inputs_csv_split="test",
        inference_outputs=("predictions.csv",),
    ),
}


def shipped_weights(bundle: str) -> Path:
    """The bundle's shipped weights file."""
    return REPO / "bundles" / bundle / "models" / "model.pt"


def weights_source(bundle: str) -> str:
    """What the shipped weights were trained on, in a few words (from ``metadata.json``'s ``weights``)."""
    meta = read_json(REPO / "bundles" / bundle / "configs" / "metadata.json") or {}
    weights = meta.get("weights") or {}
    return str(weights.get("trained_on") or weights.get("data", "-"))[:80]


def package_cxr() -> Path | None:
    """The real chest radiograph that pydicom-data ships, or None when the package is not installed."""
    try:
        from pydicom.data import get_testdata_file

        found = get_testdata_file(PACKAGE_CXR)
    except Exception:  # pydicom-data missing, or a failed lookup: the demo goes on without it
        return None
    return Path(found) if found else None


def write_oxygen_csv(image: Path, folder: Path, bundle_root: Path = REPO / "bundles" / OXYGEN) -> Path:
    """A one-encounter CSV for the oxygen bundle: ``image`` and every EHR column empty (all imputed)."""
    spec = yaml.safe_load((bundle_root / "configs" / "ehr_features.yaml").read_text())
    names = [f["name"] for f in spec["features"]]
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy2(image, folder / image.name)
    target = folder / "encounters.csv"
    with open(target, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["encounter_id", "image", *names])
        writer.writerow(["package_cxr", image.name, *[""] * len(names)])
    return target


def shipped_steps(
    demo: ShippedDemo, out: Path, python: str = sys.executable, real_cxr_dir: Path | None = None
) -> list[Step]:
    """The commands ``make demo`` runs for one bundle, all writing under ``out``.

    Args:
        demo: the bundle's settings.
        out: the demo output folder (absolute).
        python: interpreter of the commands.
        real_cxr_dir: real ChestXRay2017 training folder (None or absent: skipped).

    Returns:
        the steps in order: data (+ datalist), evaluate, inference, export, onnx_inference (+ explain,
        + package_cxr, + real_films).
    """
    b = demo.bundle
    work = out / b
    data = out / "data" / f"{demo.task}_small"
    weights = shipped_weights(b)
    gen_config = out / "configs" / f"{demo.task}_small.yaml"

    def write_gen_config() -> None:
        gen_config.parent.mkdir(parents=True, exist_ok=True)
        gen_config.write_text(yaml.safe_dump(demo.synthetic, sort_keys=False))

    steps = [Step(b, "data",
                  [python, "scripts/make_synthetic.py", demo.task, "--out", str(data), "--config", str(gen_config),
                   "--seed", str(demo.seed)],
                  [str(data / "dataset.yaml")], prepare=write_gen_config,
                  fingerprint=json.dumps(demo.synthetic, sort_keys=True), clean=[str(data)])]
    paths: dict[str, Any] = {"dataset_dir": str(data)}
    if demo.datalist_layout:
        paths["datalist"] = str(data / "datalist.json")
        steps.append(Step(b, "datalist",
                          [python, "scripts/prepare_datalist.py", demo.datalist_layout, "--root", str(data),
                           "--out", paths["datalist"]], [paths["datalist"]]))
    inputs = {"dataset_dir": str(data / demo.inputs)}
    prepare_inputs = None
    if demo.inputs_csv_split:
        inputs["csv_name"] = f"encounters_{demo.inputs_csv_split}.csv"

        def prepare_inputs() -> None:
            split_csv(data / "encounters.csv", demo.inputs_csv_split)

    onnx = work / "models" / "model.onnx"
    steps += [
        Step(b, "evaluate",
             bundle_run_argv(["train.yaml", "evaluate.yaml"], b,
                         {**paths, "ckpt_path": str(weights), "ckpt_dir": str(work / "models"),
                          "log_dir": str(work / "logs"), "output_dir": str(work / "eval"), **demo.evaluate}, python),
             [str(work / "eval" / demo.metric.report)], clean=[str(work / "eval")]),
        # no checkpoint override: the shipped weights, as a user on a fresh clone runs it
        Step(b, "inference",
             bundle_run_argv(["inference.yaml"], b, {**inputs, "output_dir": str(work / "inference"), **demo.inference},
                         python),
             [str(work / "inference" / p) for p in demo.inference_outputs],
             prepare=prepare_inputs, clean=[str(work / "inference")]),
        Step(b, "export",
             [python, "scripts/export_onnx.py", "--bundle", f"bundles/{b}", "--ckpt_path", str(weights),
              "--onnx_path", str(onnx), "--report", str(work / "export_report.json")],
             [str(onnx), str(work / "export_report.json")]),
        Step(b, "onnx_inference",
             bundle_run_argv(["inference.yaml", "inference_onnx.yaml"], b,
                         {**inputs, "output_dir": str(work / "onnx_inference"), "onnx_path": str(onnx),
                          **demo.inference}, python),
             [str(work / "onnx_inference" / p) for p in demo.inference_outputs],
             prepare=prepare_inputs, clean=[str(work / "onnx_inference")]),
    ]
    if demo.explain:
        explain_inputs = work / "explain_inputs"
        steps.append(Step(
            b, "explain",
            bundle_run_argv(["inference.yaml", "explain.yaml"], b,
                        {"dataset_dir": str(explain_inputs), "output_dir": str(work / "explain"), **demo.inference},
                        python),
            [str(work / "explain" / "explain" / "*.png")],
            prepare=lambda: copy_some([first_files(data / d, 1)[0] for d in demo.explain], explain_inputs),
            optional=True, clean=[str(work / "explain")]))
    cxr = package_cxr()
    if b in (PNEUMONIA, OXYGEN):
        folder = work / "package_cxr_input"
        if b == PNEUMONIA:
            overrides = {"dataset_dir": str(folder)}
            prepare = (lambda: copy_some([cxr], folder)) if cxr else None
        else:
            overrides = {"dataset_dir": str(folder), "csv_name": "encounters.csv"}
            prepare = (lambda: write_oxygen_csv(cxr, folder)) if cxr else None
        steps.append(Step(
            b, "package_cxr",
            bundle_run_argv(["inference.yaml"], b, {**overrides, "output_dir": str(work / "package_cxr")}, python),
            [str(work / "package_cxr" / "predictions.csv")], prepare=prepare, optional=True,
            skip_reason="" if cxr else "pydicom-data is not installed", clean=[str(work / "package_cxr")]))
    if b == PNEUMONIA:
        real = real_cxr_dir is not None and Path(real_cxr_dir).is_dir()
        real_inputs = work / "real_films_input"
        steps.append(Step(
            b, "real_films",
            bundle_run_argv(["inference.yaml"], b, {"dataset_dir": str(real_inputs), "output_dir": str(work / "real_films")},
                        python),
            [str(work / "real_films" / "predictions.csv")],
            prepare=(lambda: copy_some(real_cxr_sample(Path(real_cxr_dir)), real_inputs)) if real else None,
            optional=True, skip_reason="" if real else f"no real ChestXRay2017 folder at {real_cxr_dir}",
            clean=[str(work / "real_films")]))
    # the bundle's configs and weights are inputs of every step after the data: a change reruns them
    signature = f"configs={configs_signature(REPO / 'bundles' / b / 'configs')} weights={file_signature(weights)}"
    for step in steps[1:]:
        step.fingerprint = signature
    if not weights.is_file():
        for step in steps[1:]:
            step.skip_reason = f"no shipped weights at bundles/{b}/models/model.pt"
    return steps


def _package_cxr_text(bundle: str, csv_path: Path) -> str:
    """What a bundle said about the package's real radiograph, in a few words."""
    with open(csv_path, newline="") as f:
        row = next(csv.DictReader(f), None)
    if not row:
        return "-"
    if row.get("error"):
        return "error: " + row["error"][:80]
    if bundle == PNEUMONIA:
        return f"call {row.get('call', '?')}, P(pneumonia) {float(row.get('p_pneumonia', 'nan')):.2f}"
    keys = [k for k in ("p_any_oxygen_24h", "p_any_oxygen_72h") if row.get(k)]
    return ", ".join(f"{k[2:]} {float(row[k]):.2f}" for k in keys) or "written"


def shipped_rows(demo: ShippedDemo, out: Path, results: Sequence[StepResult]) -> list[Row]:
    """The table row(s) of one bundle: its figure on the synthetic test split, then the real images."""
    work = out / demo.bundle
    by_name = {r.name: r for r in results}
    value, status = "-", "ok"
    try:
        value = f"{lookup(read_json(work / 'eval' / demo.metric.report) or {}, demo.metric.key):.3f}"
    except (KeyError, TypeError, ValueError):
        pass
    export = read_json(work / "export_report.json")
    parity = f"{export['max_abs_err']:.1e} / {'passed' if export['passed'] else 'FAILED'}" if export else "-"
    optional = ("explain", "package_cxr", "real_films")
    failed = [r for r in results if r.status == "failed"]
    required_failed = [r for r in failed if r.name not in optional]
    if not shipped_weights(demo.bundle).is_file():
        status = f"error: no shipped weights at bundles/{demo.bundle}/models/model.pt"
    elif required_failed:
        status = f"error in {required_failed[0].name}: {required_failed[0].detail}"
    elif failed:
        status += "; " + "; ".join(f"{r.name} failed: {r.detail}" for r in failed)
    main = [r for r in results if r.name not in ("package_cxr", "real_films")]
    rows = [Row(demo.bundle, f"{demo.metric.label} (synthetic)", value, weights_source(demo.bundle), parity,
                sum(r.seconds for r in main), status,
                bool(main) and all(r.status in ("cached", "skipped") for r in main), sum(r.cpu_seconds for r in main))]
    extra = by_name.get("package_cxr")
    if extra is not None and extra.status != "skipped":
        csv_path = work / "package_cxr" / "predictions.csv"
        text = _package_cxr_text(demo.bundle, csv_path) if csv_path.is_file() else "-"
        note = "adult film: outside the pediatric training data" if demo.bundle == PNEUMONIA else "all EHR values missing"
        rows.append(Row(f"{demo.bundle} (real image)", f"pydicom-data {PACKAGE_CXR}, adult PA chest CR; {note}", text,
                        "", "-", extra.seconds, "ok" if extra.status in ("ran", "cached") else extra.detail,
                        extra.status == "cached", extra.cpu_seconds))
    films = by_name.get("real_films")
    if films is not None and films.status != "skipped":
        csv_path = work / "real_films" / "predictions.csv"
        if films.status in ("ran", "cached") and csv_path.is_file():
            acc, n = prediction_accuracy(csv_path)
            rows.append(Row(f"{demo.bundle} (real films)", f"3-class agreement, {n} real ChestXRay2017 training-folder "
                            "films (in the weights' training data)", f"{acc:.3f}", "", "-", films.seconds, "ok",
                            films.status == "cached", films.cpu_seconds))
        else:
            rows.append(Row(f"{demo.bundle} (real films)", "PyTorch inference", "-", "", "-", films.seconds,
                            films.detail or films.status))
    return rows


def render_shipped_table(rows: Sequence[Row]) -> str:
    """The summary as a markdown table (``Row.target`` holds what the weights were trained on)."""
    return render_table(rows, ("bundle", "figure (data)", "value", "shipped weights trained on",
                               "ONNX parity (max abs err / check)", "seconds (CPU s)", "status"))


def shipped_summary_markdown(rows: Sequence[Row], pngs: Sequence[Path], wall_seconds: float) -> str:
    """``summary.md`` of ``make demo``: the table, what it means, and the figures."""
    notes = [f"- `{name}`: {demo.note}." for name, demo in SHIPPED.items() if demo.note and any(r.bundle == name for r in rows)]
    parts = [
        "# Demo summary: the shipped weights",
        "",
        f"`make demo` ({wall_seconds:.0f} s wall clock): every bundle's shipped `models/model.pt` evaluated on a small "
        "synthetic test set the demo generated, run through `inference.yaml` with no checkpoint override, exported "
        "to ONNX with the parity check and run on ONNX Runtime; real images where the installed packages or "
        "`../shared/data` hold some. Figures on synthetic data say that the pipeline works end to end, not that a "
        "model works on patients: each model card has the real-data figures where there are any. Seconds are wall "
        "clock per bundle with the CPU time in brackets; rows marked cached were reused from an earlier run.",
        "",
        render_shipped_table(rows),
        *notes,
        "",
        "## Figures",
        "",
    ]
    parts += [f"![{p.stem}]({p.name})" for p in pngs]
    return "\n".join(parts) + "\n"
