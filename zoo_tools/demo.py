"""The `make demo-train` driver: for every bundle, synthetic data -> brief training -> evaluation -> ONNX export
with the parity check -> ONNX Runtime inference, each step a subprocess running the bundle's own configs.

    python scripts/demo.py --train --out demo_output/train [--bundles lung_ct_segmentation,...] [--force]

Everything is written under the output folder (data, checkpoints, reports, logs); nothing under
``bundles/*/models`` is touched. A step whose outputs exist and whose command has not changed is reused
(``--force`` redoes all). A failing bundle is reported in its row and the others go on.

The demo-scale settings of every bundle are in ONE table, ``DEMOS``: the synthetic data set size, the
training overrides (epochs, ...) and the metric read from the evaluation report. The model cards quote
these settings for their synthetic figures.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from zoo_tools import REPO, monai_run_argv
from zoo_tools.benchmarks.harness import peak_rss_mib

REAL_CXR_DIR = "../shared/data/chest_xray2017_train224"  # relative to the repository root
PNEUMONIA = "pediatric_cxr_pneumonia_classification"
LUNG_SEG = "lung_ct_segmentation"


@dataclass(frozen=True)
class Metric:
    """The figure a bundle's row reports, read from its evaluation report.

    Args:
        label: what the figure is, as the table prints it.
        report: the report file, relative to the bundle's evaluation folder.
        key: dotted path of the value in the JSON report (a dict with ``value`` is unwrapped).
        minimum: the acceptance figure (the row is marked when the value is below it); None: no target.
        target_text: how the target is printed.
    """

    label: str
    report: str
    key: str
    minimum: float | None = None
    target_text: str = ""


@dataclass
class BundleDemo:
    """What the demo does with one bundle (see ``DEMOS``).

    Args:
        bundle: folder name under ``bundles/``.
        task: ``scripts/make_synthetic.py`` task.
        synthetic: generator config (merged over the generator's defaults), or the repository-relative path
            of a config file (the one the model card names).
        train: training overrides (``--key value`` of ``monai.bundle run``), the demo-scale settings.
        evaluate: extra overrides of the evaluation run.
        metric: the figure of the row.
        heldout: folder of held-out inputs for ONNX inference, relative to the data set folder.
        inference_outputs: glob patterns (in the inference output folder) that inference must produce.
        inference: extra overrides of both inference runs.
        explain: a few held-out files (relative to the data set) for ``configs/explain.yaml`` maps; empty: none.
        pngs: glob patterns, relative to the bundle's demo folder, of the figures copied beside summary.md.
        seed: generator seed.
        datalist_layout: when set, ``scripts/prepare_datalist.py <layout>`` writes ``datalist.json`` into the
            data set and the bundle runs read it (``--datalist``), as the model card's commands do.
        heldout_csv_split: for a CSV data set (``encounters.csv`` with a ``split`` column): the split whose rows
            inference reads (written to ``encounters_<split>.csv``); "": inference reads ``heldout``.
    """

    bundle: str
    task: str
    synthetic: dict[str, Any] | str
    train: dict[str, Any]
    metric: Metric
    heldout: str
    inference_outputs: Sequence[str]
    evaluate: dict[str, Any] = field(default_factory=dict)
    inference: dict[str, Any] = field(default_factory=dict)
    explain: Sequence[str] = ()
    pngs: Sequence[str] = ("eval/*.png",)
    heldout_csv_split: str = ""
    seed: int = 0
    datalist_layout: str = ""


# ---------------------------------------------------------------------------------------------------------
# THE demo-scale settings: those of each model card's synthetic acceptance run (data config + seed, training
# overrides), so a `make demo-train` run reproduces the cards' synthetic figures. Measured 2026-11-22 (detection bundle 0.3.0), a
# fresh run of all five, one thread per step, the other core busy with tests and benchmarks: 1809 s wall
# clock; per bundle wall (CPU) seconds, data included: seg 111 (110), det 1456 (1438: 9000 training
# iterations, 1300 s), oct 93 (115), cxr 83 (96) + 5 for the shipped weights, o2 66 (66). About 30 minutes.
# ---------------------------------------------------------------------------------------------------------
DEMOS: dict[str, BundleDemo] = {
    "lung_ct_segmentation": BundleDemo(
        bundle="lung_ct_segmentation",
        task="lung_ct",
        synthetic="bundles/lung_ct_segmentation/docs/synthetic_lung_ct.yaml",
        # the shipped recipe is 150 epochs x 2 patches per scan on real CT; the demo trains briefly
        train={"max_epochs": 15, "val_interval": 5, "samples_per_scan": 1},
        metric=Metric("mean Dice, both lungs (test)", "metrics.json", "mean.dice", 0.95, ">= 0.95"),
        heldout="imagesTs",
        inference_outputs=("*_seg.nii.gz",),
        pngs=("eval/*.png",),
    ),
    "lung_nodule_ct_detection": BundleDemo(
        bundle="lung_nodule_ct_detection",
        task="nodules",
        synthetic="bundles/lung_nodule_ct_detection/docs/synthetic_demo.yaml",
        seed=1,
        datalist_layout="luna16",
        # train.yaml's and inference.yaml's defaults are the shipped recipe (2.5 mm, as the synthetic scans)
        train={},
        evaluate={"eval_split": "test"},
        metric=Metric("CPM, nodules >= 6 mm (test)", "metrics.json", "cpm_6mm", 0.8, ">= 0.8 (aim)"),
        heldout="datalist.json",  # its test scans (inference prefers the testing/test list, then validation)
        inference_outputs=("*_nodules.json",),
        pngs=("eval/*.png",),
    ),
    "retina_oct_classification": BundleDemo(
        bundle="retina_oct_classification",
        task="oct",
        synthetic="common/synthetic/configs/oct.yaml",
        train={"max_epochs": 30},
        evaluate={"eval_split": "test"},
        # the generator draws subtle lesions too, as real scans have them: 0.65 measured at 400 B-scans, 30 epochs
        metric=Metric("4-class accuracy (test)", "report.json", "accuracy", 0.50, ">= 0.50"),
        heldout="OCT2017/test",
        inference_outputs=("predictions.csv",),
        explain=("OCT2017/test/DRUSEN", "OCT2017/test/CNV"),
        pngs=("eval/*.png", "explain/explain/*.png"),
    ),
    PNEUMONIA: BundleDemo(
        bundle=PNEUMONIA,
        task="pneumonia_cxr",
        synthetic="common/synthetic/configs/pneumonia_cxr.yaml",
        train={"max_epochs": 30},
        evaluate={"eval_split": "test"},
        metric=Metric("3-class accuracy (test)", "report.json", "accuracy", 0.85, ">= 0.85"),
        heldout="chest_xray/test",
        inference_outputs=("predictions.csv",),
        explain=("chest_xray/test/PNEUMONIA",),
        pngs=("eval/*.png", "explain/explain/*.png"),
    ),
    "cxr_ehr_oxygen_risk": BundleDemo(
        bundle="cxr_ehr_oxygen_risk",
        task="oxygen_risk",
        synthetic={"n_per_site": 250, "image_size": 128},
        train={"max_epochs": 12},
        # target: the generator's Bayes-optimal AUC - 0.05 (read from the data set's dataset.yaml)
        metric=Metric("AUROC any oxygen 24 h (test)", "evaluation_report.json", "outputs.any_oxygen_24h.auroc"),
        heldout=".",
        heldout_csv_split="test",
        inference_outputs=("predictions.csv",),
        pngs=("eval/*.png",),
    ),
}

EXPLAIN_PER_FOLDER = 1  # files per listed folder that get occlusion / Grad-CAM maps
REAL_IMAGES_PER_CLASS = 4  # NORMAL, bacterial and viral films of the real set given to the shipped weights


# ---------------------------------------------------------------------------------------------------------
# steps and their execution
# ---------------------------------------------------------------------------------------------------------
@dataclass
class Step:
    """One command of the demo.

    Args:
        bundle: the bundle it belongs to.
        name: short name (``data``, ``train``, ...).
        argv: the command (run from the repository root).
        outputs: glob patterns that must each match a file for the step to count as done.
        prepare: called before the command runs (e.g. writes the generator config); None: nothing.
        optional: a failing optional step is reported but does not fail the bundle.
        skip_reason: when set, the step is not run and this is shown instead.
        fingerprint: settings the command does not show (e.g. a config file's content); a change reruns it.
        clean: folders removed before the command runs, so no stale file of an earlier run survives.
    """

    bundle: str
    name: str
    argv: list[str]
    outputs: Sequence[str]
    prepare: Callable[[], None] | None = None
    optional: bool = False
    skip_reason: str = ""
    fingerprint: str = ""
    clean: Sequence[str] = ()


@dataclass
class StepResult:
    """What happened to a step: ``status`` is ``ran``, ``cached``, ``failed`` or ``skipped``.

    ``seconds`` is wall clock; ``cpu_seconds`` the user + system time of the step's processes (on a machine
    shared with other jobs the wall clock grows, the CPU time does not).
    """

    name: str
    status: str
    seconds: float
    detail: str = ""
    cpu_seconds: float = 0.0


# runner(argv, log_path, env) -> exit code; replaced by tests
Runner = Callable[[list[str], Path, dict], int]


def subprocess_runner(argv: list[str], log_path: Path, env: dict) -> int:
    """Run ``argv`` from the repository root with stdout and stderr into ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(argv) + "\n\n")
        log.flush()
        return subprocess.run(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT).returncode


def tail(path: Path, n: int = 15) -> str:
    """The last ``n`` lines of a log file ("" when there is none)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def _outputs_exist(patterns: Sequence[str]) -> bool:
    return all(any(Path(p).parent.glob(Path(p).name)) for p in patterns)


def _stamp_path(out: Path, step: Step) -> Path:
    return out / step.bundle / ".steps" / f"{step.name}.json"


def run_bundle(
    steps: Sequence[Step],
    out: Path,
    force: bool = False,
    runner: Runner = subprocess_runner,
    env: dict | None = None,
    report: Callable[[Step, StepResult], None] | None = None,
) -> list[StepResult]:
    """Run the steps of one bundle in order, reusing those already done.

    A step is reused when its stamp (``<out>/<bundle>/.steps/<name>.json``, written on success) records the
    same command and its outputs exist; once a step runs, every later step of the bundle runs too (its inputs
    changed). After a failed required step the bundle's remaining steps are skipped.

    Args:
        steps: the bundle's steps, in order.
        out: the demo output folder.
        force: run every step even when it could be reused.
        runner: executes one command (``subprocess_runner``).
        env: environment of the commands.
        report: called after each step with its result (progress display).

    Returns:
        one result per step.
    """
    env = dict(os.environ if env is None else env)
    results: list[StepResult] = []
    upstream_ran, failed = force, False
    for step in steps:
        stamp = _stamp_path(out, step)
        log = out / "logs" / f"{step.bundle}.{step.name}.log"
        if failed:
            result = StepResult(step.name, "skipped", 0.0, "an earlier step failed")
        elif step.skip_reason:
            result = StepResult(step.name, "skipped", 0.0, step.skip_reason)
        else:
            previous = read_json(stamp)
            if (not upstream_ran and previous and previous.get("argv") == step.argv
                    and previous.get("fingerprint", "") == step.fingerprint and _outputs_exist(step.outputs)):
                result = StepResult(step.name, "cached", float(previous.get("seconds", 0.0)),
                                    cpu_seconds=float(previous.get("cpu_seconds", 0.0)))
            else:
                upstream_ran = True
                stamp.unlink(missing_ok=True)
                start, cpu_start = time.perf_counter(), _children_cpu()
                try:
                    for folder in step.clean:
                        shutil.rmtree(folder, ignore_errors=True)
                    if step.prepare is not None:
                        step.prepare()
                    code = runner(step.argv, log, env)
                    problem = "" if code == 0 else f"exit code {code}"
                    if not problem and not _outputs_exist(step.outputs):
                        problem = "finished without writing " + ", ".join(
                            p for p in step.outputs if not any(Path(p).parent.glob(Path(p).name)))
                except Exception as e:  # a broken step must not stop the other bundles
                    problem = f"{type(e).__name__}: {e}"
                seconds, cpu = time.perf_counter() - start, _children_cpu() - cpu_start
                if problem:
                    last = _last_error_line(log) if log.exists() else ""
                    result = StepResult(step.name, "failed", seconds, problem + (f": {last}" if last else ""), cpu)
                    failed = not step.optional
                else:
                    stamp.parent.mkdir(parents=True, exist_ok=True)
                    stamp.write_text(json.dumps({"argv": step.argv, "fingerprint": step.fingerprint,
                                                  "seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2)}))
                    result = StepResult(step.name, "ran", seconds, cpu_seconds=cpu)
        results.append(result)
        if report is not None:
            report(step, result)
    return results


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Failure)\b:?")


def _last_error_line(log: Path) -> str:
    """The most telling line of a failed command's log: the root cause of the last traceback (the first
    exception of a chain, e.g. the InputDataError behind MONAI's "Failed to evaluate"), else a line saying
    FAILED, else the last line."""
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    tracebacks = [i for i, ln in enumerate(lines) if ln.startswith("Traceback (most recent call last)")]
    if tracebacks:
        # a chained traceback prints the root cause first; walk back to where the chain starts
        start = tracebacks[-1]
        for i in reversed(tracebacks[:-1]):
            between = lines[i:start]
            if any("direct cause" in ln or "During handling" in ln for ln in between):
                start = i
            else:
                break
        for line in lines[start:]:
            if _EXCEPTION_LINE.match(line):
                return line[:300]
    for line in reversed(lines):
        if "FAILED" in line:
            return line[:300]
    return lines[-1][:300] if lines else ""


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------------------
# the steps of one bundle
# ---------------------------------------------------------------------------------------------------------
def _overrides(values: dict[str, Any]) -> list[str]:
    argv = []
    for key, value in values.items():
        argv += [f"--{key}", json.dumps(value) if isinstance(value, (list, dict, bool)) or value is None else str(value)]
    return argv


def bundle_run_argv(config_files: Sequence[str], bundle: str, overrides: dict[str, Any], python: str) -> list[str]:
    files = [f"bundles/{bundle}/configs/{f}" for f in config_files]
    config = files[0] if len(files) == 1 else "[" + ",".join(f"'{f}'" for f in files) + "]"
    return [*monai_run_argv(python), "--config_file", config, "--bundle_root", f"bundles/{bundle}",
            *_overrides(overrides)]


def copy_some(sources: Sequence[Path], dest: Path) -> None:
    """Copy ``sources`` into ``dest`` (made afresh), keeping the class folder name of each file."""
    if dest.exists():
        shutil.rmtree(dest)
    for src in sources:
        target = dest / src.parent.name / src.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)


def first_files(folder: Path, n: int) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in {".jpeg", ".jpg", ".png"})[:n]


def split_csv(csv_path: Path, split: str) -> Path:
    """Write the rows of ``csv_path`` whose ``split`` column is ``split`` beside it as ``<stem>_<split>.csv``."""
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        rows = [r for r in reader if r.get("split") == split]
        header = reader.fieldnames or []
    target = csv_path.with_name(f"{csv_path.stem}_{split}.csv")
    with open(target, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return target


def configs_signature(folder: Path) -> str:
    """A hash of the content of every file in a bundle's configs folder."""
    digest = hashlib.sha256()
    for path in sorted(Path(folder).glob("*")):
        if path.is_file():
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def file_signature(path: Path, content: bool = False) -> str:
    """Size and modification time of ``path`` (or a hash of its content), "absent" when there is none."""
    try:
        if content:
            return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        st = path.stat()
        return f"{st.st_size}:{int(st.st_mtime)}"
    except OSError:
        return "absent"


def real_cxr_sample(real_dir: Path, per_class: int = REAL_IMAGES_PER_CLASS) -> list[Path]:
    """A fixed handful of real ChestXRay2017 films: the first ``per_class`` NORMAL, bacterial and viral."""
    normal = sorted((real_dir / "NORMAL").glob("*.jpeg"))[:per_class]
    pneumonia = sorted((real_dir / "PNEUMONIA").glob("*.jpeg"))
    bacteria = [p for p in pneumonia if "_bacteria_" in p.name][:per_class]
    virus = [p for p in pneumonia if "_virus_" in p.name][:per_class]
    return normal + bacteria + virus


def bundle_steps(
    demo: BundleDemo, out: Path, python: str = sys.executable, real_cxr_dir: Path | None = None
) -> list[Step]:
    """The commands the demo runs for one bundle, all writing under ``out``.

    Args:
        demo: the bundle's demo settings.
        out: the demo output folder (absolute).
        python: interpreter of the commands.
        real_cxr_dir: real ChestXRay2017 training folder for the shipped pneumonia weights (None: synthetic).

    Returns:
        the steps in order: data, train, evaluate, export, onnx_inference (+ explain, + real_weights).
    """
    b = demo.bundle
    work = out / b
    data = out / "data" / demo.task
    models = work / "models"
    gen_config = out / "configs" / f"{demo.task}.yaml"
    paths = {"dataset_dir": str(data), "ckpt_dir": str(models), "log_dir": str(work / "logs")}

    if isinstance(demo.synthetic, str):
        gen_config = REPO / demo.synthetic
        write_gen_config = None
        gen_fingerprint = file_signature(gen_config, content=True)
    else:
        def write_gen_config() -> None:
            gen_config.parent.mkdir(parents=True, exist_ok=True)
            gen_config.write_text(yaml.safe_dump(demo.synthetic, sort_keys=False))

        gen_fingerprint = json.dumps(demo.synthetic, sort_keys=True)
    heldout_csv = {"csv_name": f"encounters_{demo.heldout_csv_split}.csv"} if demo.heldout_csv_split else {}
    steps = [
        Step(b, "data",
             [python, "scripts/make_synthetic.py", demo.task, "--out", str(data), "--config", str(gen_config),
              "--seed", str(demo.seed)],
             [str(data / "dataset.yaml")], prepare=write_gen_config, fingerprint=gen_fingerprint, clean=[str(data)]),
    ]
    if demo.datalist_layout:
        paths["datalist"] = str(data / "datalist.json")
        steps.append(Step(b, "datalist",
                          [python, "scripts/prepare_datalist.py", demo.datalist_layout, "--root", str(data),
                           "--out", paths["datalist"]],
                          [paths["datalist"]]))
    steps += [
        Step(b, "train",
             bundle_run_argv(["train.yaml"], b, {**paths, "output_dir": str(work / "train"), **demo.train}, python),
             [str(models / "model.pt")], clean=[str(models), str(work / "train")]),
        Step(b, "evaluate",
             bundle_run_argv(["train.yaml", "evaluate.yaml"], b,
                         {**paths, "output_dir": str(work / "eval"), **demo.train, **demo.evaluate}, python),
             [str(work / "eval" / demo.metric.report)], clean=[str(work / "eval")]),
        Step(b, "export",
             [python, "scripts/export_onnx.py", "--bundle", f"bundles/{b}", "--ckpt_path", str(models / "model.pt"),
              "--onnx_path", str(models / "model.onnx"), "--report", str(work / "export_report.json")],
             [str(models / "model.onnx"), str(work / "export_report.json")]),
        Step(b, "onnx_inference",
             bundle_run_argv(["inference.yaml", "inference_onnx.yaml"], b,
                         {"dataset_dir": str(data / demo.heldout), "output_dir": str(work / "onnx_inference"),
                          "onnx_path": str(models / "model.onnx"), **heldout_csv, **demo.inference}, python),
             [str(work / "onnx_inference" / p) for p in demo.inference_outputs],
             prepare=(lambda: split_csv(data / "encounters.csv", demo.heldout_csv_split)) if heldout_csv else None,
             clean=[str(work / "onnx_inference")]),
    ]
    # the bundle's configs are inputs of every step after the data: an edited config reruns them
    configs = configs_signature(REPO / "bundles" / b / "configs")
    for step in steps[1:]:
        step.fingerprint = configs
    if demo.explain:
        explain_inputs = work / "explain_inputs"
        steps.append(Step(
            b, "explain",
            bundle_run_argv(["inference.yaml", "explain.yaml"], b,
                        {"dataset_dir": str(explain_inputs), "output_dir": str(work / "explain"),
                         "ckpt_path": str(models / "model.pt"), **demo.inference}, python),
            [str(work / "explain" / "explain" / "*.png")],
            prepare=lambda: copy_some([f for d in demo.explain for f in first_files(data / d, EXPLAIN_PER_FOLDER)],
                                       explain_inputs),
            optional=True,
            clean=[str(work / "explain")],
            fingerprint=configs,
        ))
    if b == LUNG_SEG:
        # the shipped weights (trained on real CT) scored on the same synthetic test phantoms
        shipped = REPO / "bundles" / b / "models" / "model.pt"
        steps.append(Step(
            b, "real_weights",
            bundle_run_argv(["train.yaml", "evaluate.yaml"], b,
                        {**paths, "output_dir": str(work / "real_weights"), "ckpt_path": str(shipped)}, python),
            [str(work / "real_weights" / "metrics.json")],
            optional=True,
            skip_reason="" if shipped.is_file() else f"no shipped weights at bundles/{b}/models/model.pt",
            fingerprint=f"weights={file_signature(shipped)} configs={configs}",
            clean=[str(work / "real_weights")],
        ))
    if b == PNEUMONIA:
        shipped = REPO / "bundles" / b / "models" / "model.pt"
        real = real_cxr_dir is not None and Path(real_cxr_dir).is_dir()
        real_inputs = work / "real_weights_inputs"

        def copy_inputs() -> None:
            sources = real_cxr_sample(Path(real_cxr_dir)) if real else first_files(data / demo.heldout, 10**6)
            copy_some(sources, real_inputs)
            (work / "real_weights_source.txt").write_text("real" if real else "synthetic")

        steps.append(Step(
            b, "real_weights",
            bundle_run_argv(["inference.yaml"], b,
                        {"dataset_dir": str(real_inputs), "output_dir": str(work / "real_weights"),
                         "ckpt_path": str(shipped), **demo.inference}, python),
            [str(work / "real_weights" / "predictions.csv")],
            prepare=copy_inputs,
            optional=True,
            skip_reason="" if shipped.is_file() else f"no shipped weights at bundles/{b}/models/model.pt",
            fingerprint=f"inputs={'real' if real else 'synthetic'} weights={file_signature(shipped)} configs={configs}",
            clean=[str(work / "real_weights")],
        ))
    return steps


# ---------------------------------------------------------------------------------------------------------
# figures and the table
# ---------------------------------------------------------------------------------------------------------
def lookup(report: dict, key: str) -> float:
    """The value at dotted ``key`` of ``report``; a ``{"value": ...}`` dict is unwrapped."""
    value: Any = report
    for part in key.split("."):
        value = value[part]
    if isinstance(value, dict):
        value = value["value"]
    return float(value)


def _find_key(tree: Any, key: str) -> Any:
    if isinstance(tree, dict):
        if key in tree:
            return tree[key]
        for v in tree.values():
            found = _find_key(v, key)
            if found is not None:
                return found
    return None


def metric_target(demo: BundleDemo, out: Path) -> tuple[float | None, str]:
    """The acceptance figure of a bundle's metric and how to print it."""
    if demo.bundle == "cxr_ehr_oxygen_risk":
        try:
            meta = yaml.safe_load((out / "data" / demo.task / "dataset.yaml").read_text())
            bayes = _find_key(meta, "bayes_optimal_auc")["any_oxygen_24h"]
            bayes = bayes.get("test") if isinstance(bayes, dict) else bayes
            return float(bayes) - 0.05, f">= {float(bayes) - 0.05:.3f} (Bayes {float(bayes):.3f} - 0.05)"
        except (OSError, TypeError, KeyError, ValueError, AttributeError):
            return None, "Bayes AUC - 0.05"
    return demo.metric.minimum, demo.metric.target_text


def _label_of(name: str, folder: str) -> str:
    low = name.lower()
    if "bacteria" in low:
        return "BACTERIAL"
    if "virus" in low:
        return "VIRAL"
    return "NORMAL" if folder.upper() == "NORMAL" or low.startswith(("im-", "normal2")) else ""


def prediction_accuracy(csv_path: Path) -> tuple[float, int]:
    """Accuracy of the 3-class ``call`` of a pneumonia predictions CSV against the labels in the file names."""
    right = total = 0
    with open(csv_path, newline="") as f:
        for row in csv.DictReader(f):
            if row.get("error"):
                continue
            truth = _label_of(Path(row["file"]).name, Path(row["file"]).parent.name)
            if truth:
                total += 1
                right += int(row.get("call") == truth)
    return (right / total if total else float("nan")), total


@dataclass
class Row:
    """One line of the summary table."""

    bundle: str
    metric: str
    value: str
    target: str
    parity: str
    seconds: float
    status: str  # ok | below target | error: ...
    cached: bool = False
    cpu_seconds: float = 0.0


def bundle_rows(demo: BundleDemo, out: Path, results: Sequence[StepResult]) -> list[Row]:
    """The table row(s) of one bundle from its step results and the files its steps wrote."""
    work = out / demo.bundle
    seconds = sum(r.seconds for r in results)
    cpu_seconds = sum(r.cpu_seconds for r in results)
    cached = bool(results) and all(r.status in ("cached", "skipped") for r in results)
    minimum, target = metric_target(demo, out)
    value, status = "-", "ok"
    try:
        figure = lookup(read_json(work / "eval" / demo.metric.report) or {}, demo.metric.key)
        value = f"{figure:.3f}"
        if minimum is not None and not figure >= minimum:
            status = "below target"
    except (KeyError, TypeError, ValueError):
        pass
    export = read_json(work / "export_report.json")
    parity = f"{export['max_abs_err']:.1e} / {'passed' if export['passed'] else 'FAILED'}" if export else "-"
    failed = [r for r in results if r.status == "failed"]
    required_failed = [r for r in failed if r.name not in ("explain", "real_weights")]
    if required_failed:
        status = f"error in {required_failed[0].name}: {required_failed[0].detail}"
    elif failed:
        status += "; " + "; ".join(f"{r.name} failed: {r.detail}" for r in failed)
    rows = [Row(demo.bundle, demo.metric.label, value, target, parity, seconds, status, cached, cpu_seconds)]
    real = next((r for r in results if r.name == "real_weights"), None)
    if real is not None and demo.bundle == LUNG_SEG:
        report = read_json(work / "real_weights" / "metrics.json")
        if real.status in ("ran", "cached") and report:
            rows.append(Row(f"{demo.bundle} (shipped real-data weights)",
                            f"mean Dice, both lungs, {report.get('n_cases', '?')} synthetic test phantoms",
                            f"{lookup(report, 'mean.dice'):.3f}", "-", "-", real.seconds, "ok",
                            real.status == "cached", real.cpu_seconds))
        else:
            rows.append(Row(f"{demo.bundle} (shipped real-data weights)", "PyTorch evaluation", "-", "-", "-",
                            real.seconds, real.detail or real.status))
    elif real is not None:
        csv_path = work / "real_weights" / "predictions.csv"
        if real.status in ("ran", "cached") and csv_path.is_file():
            acc, n = prediction_accuracy(csv_path)
            source = work / "real_weights_source.txt"
            real_inputs = source.is_file() and source.read_text().strip() == "real"
            kind = "real ChestXRay2017 training-folder films (not held out)" if real_inputs else "synthetic test films"
            rows.append(Row(f"{demo.bundle} (shipped real-data weights)", f"3-class agreement, {n} {kind}",
                            f"{acc:.3f}", "-", "-", real.seconds, "ok", real.status == "cached", real.cpu_seconds))
        else:
            rows.append(Row(f"{demo.bundle} (shipped real-data weights)", "PyTorch inference", "-", "-", "-",
                            real.seconds, real.detail or real.status))
    return rows


TABLE_COLUMNS = ("bundle", "metric", "value (synthetic)", "target", "ONNX parity (max abs err / check)",
                 "seconds (CPU s)", "status")


def render_table(rows: Sequence[Row], columns: Sequence[str] = TABLE_COLUMNS) -> str:
    """The summary as a markdown table; ``columns`` names the seven columns of ``Row``'s fields."""
    lines = ["| " + " | ".join(columns) + " |", "|---|---|---|---|---|---:|---|"]
    for r in rows:
        secs = f"{r.seconds:.0f} ({r.cpu_seconds:.0f})" + (" cached" if r.cached else "")
        status = r.status.replace("|", "/").replace("\n", " ")
        lines.append(f"| {r.bundle} | {r.metric} | {r.value} | {r.target} | {r.parity} | {secs} | {status} |")
    return "\n".join(lines) + "\n"


def collect_pngs(demo: BundleDemo | Any, out: Path, dest: Path) -> list[Path]:
    """Copy a bundle's report figures to ``dest`` as ``<bundle>__<name>.png`` (``demo``: a ``BundleDemo`` or
    ``zoo_tools.shipped_demo.ShippedDemo``; only its ``bundle`` and ``pngs`` are read)."""
    copied = []
    for pattern in demo.pngs:
        for png in sorted((out / demo.bundle).glob(pattern)):
            target = dest / f"{demo.bundle}__{png.name}"
            shutil.copy2(png, target)
            copied.append(target)
    return copied


def summary_markdown(rows: Sequence[Row], pngs: Sequence[Path], wall_seconds: float, settings: dict) -> str:
    """``summary.md``: the table, the demo-scale settings and the figures."""
    parts = [
        "# Demo summary",
        "",
        f"`python scripts/demo.py`: synthetic data, brief training, evaluation, ONNX export with the parity "
        f"check and ONNX Runtime inference per bundle; {wall_seconds:.0f} s wall clock. Seconds are wall clock "
        f"per bundle, with the CPU time of its processes in brackets (on a shared machine the wall clock grows, "
        f"the CPU time does not); rows marked cached were reused from an earlier run and show that run's times. "
        "All values are on SYNTHETIC data.",
        "",
        render_table(rows),
        "## Demo-scale settings",
        "",
        "| bundle | synthetic data (generator config) | seed | training overrides | evaluation overrides |",
        "|---|---|---|---|---|",
    ]
    for name, s in settings.items():
        parts.append(f"| {name} | `{json.dumps(s['synthetic'])}` | {s.get('seed', 0)} | `{json.dumps(s['train'])}` "
                     f"| `{json.dumps(s['evaluate'])}` |")
    parts += ["", "## Figures", ""]
    parts += [f"![{p.stem}]({p.name})" for p in pngs]
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------------------------------------------------
# training speed of a bundle's own pipeline (scripts/benchmark.py)
# ---------------------------------------------------------------------------------------------------------
def training_speed(bundle: str, dataset_dir: str, iterations: int = 8, warmup: int = 2,
                   overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Training iterations per second of a bundle's own ``train.yaml`` pipeline, in this process.

    Everything an iteration does in training is timed: data loading and random augmentation (the
    deterministic part is cached as the bundle's dataset does it), forward, loss, backward, optimiser step.
    Caching the data set and the first ``warmup`` iterations are not timed; validation is switched off.

    Args:
        bundle: folder name under ``bundles/``.
        dataset_dir: a data set the bundle reads (the demo's synthetic set).
        iterations: timed iterations.
        warmup: untimed iterations first.
        overrides: further config overrides (e.g. the demo's training settings).

    Returns:
        ``iterations_per_s``, ``seconds_per_iteration`` (wall clock), ``cpu_seconds_per_iteration`` (all
        threads of this process: what the iteration costs, whatever else runs on the machine),
        ``batch_size``, ``samples_per_s``, ``iterations``,
        ``peak_rss_mib`` (of this process, caching included), ``threads``, ``setup_s``.
    """
    import tempfile

    import torch
    from ignite.engine import Events
    from monai.bundle import ConfigParser

    start = time.perf_counter()
    root = REPO / "bundles" / bundle
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "train.yaml"))
    with tempfile.TemporaryDirectory() as scratch:
        values = {"bundle_root": str(root), "dataset_dir": str(dataset_dir), "ckpt_dir": scratch,
                  "output_dir": scratch, "log_dir": scratch, "val_interval": 10**6, **(overrides or {})}
        values["max_epochs"] = 10**6
        for key, value in values.items():
            parser[key] = value
        if "initialize" in parser:
            # what `monai.bundle run` does first: seeds, and set-up such as the detector's matcher and sampler
            parser.get_parsed_content("initialize")
        trainer = parser.get_parsed_content("train#trainer")
        stamps: list[float] = []
        cpu: list[float] = []

        @trainer.on(Events.ITERATION_COMPLETED)
        def _stamp(engine) -> None:
            stamps.append(time.perf_counter())
            cpu.append(time.process_time())
            if len(stamps) > warmup + iterations:
                engine.terminate()

        setup = time.perf_counter() - start
        trainer.run()
    if len(stamps) <= warmup + iterations:
        raise RuntimeError(f"{bundle}: training stopped after {len(stamps)} iterations")
    per_iteration = (stamps[warmup + iterations] - stamps[warmup]) / iterations
    cpu_per_iteration = (cpu[warmup + iterations] - cpu[warmup]) / iterations
    batch = parser.get("batch_size")
    samples = batch * parser.get("samples_per_scan", 1) if isinstance(batch, int) else None
    return {
        "iterations_per_s": round(1.0 / per_iteration, 3),
        "seconds_per_iteration": round(per_iteration, 3),
        "cpu_seconds_per_iteration": round(cpu_per_iteration, 3),
        "batch_size": batch,
        "samples_per_s": round(samples / per_iteration, 2) if samples else None,
        "iterations": iterations,
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "threads": torch.get_num_threads(),
        "setup_s": round(setup, 1),
    }
