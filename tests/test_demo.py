"""The demo driver (zoo_tools/demo.py, scripts/demo.py) with fake steps: reuse, failure isolation, the table.

The real demo trains five bundles (minutes); here the commands are replaced by a runner that writes the
files a step promises, so the driver's logic is checked in seconds.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from zoo_tools import demo as d

REPO = Path(__file__).resolve().parents[1]


class FakeRunner:
    """Writes each step's outputs (or fails for the steps named in ``fail``) and records what it ran."""

    def __init__(self, fail: tuple[str, ...] = ()):
        self.fail = fail
        self.calls: list[str] = []

    def __call__(self, argv, log_path: Path, env) -> int:
        name = argv[0]
        self.calls.append(name)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        if name in self.fail:
            log_path.write_text("starting\nTraceback (most recent call last):\nRuntimeError: boom in " + name + "\n")
            return 3
        log_path.write_text("ok\n")
        for pattern in argv[1:]:
            p = Path(pattern.replace("*", "x"))
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text("{}")
        return 0


def _steps(out: Path, bundle: str = "b1", prefix: str = "") -> list[d.Step]:
    # argv[0] names the step for the fake runner; the rest are the files it writes
    return [
        d.Step(bundle, "data", [f"{prefix}data", str(out / bundle / "data.txt")], [str(out / bundle / "data.txt")]),
        d.Step(bundle, "train", [f"{prefix}train", str(out / bundle / "model.pt")], [str(out / bundle / "model.pt")]),
        d.Step(bundle, "export", [f"{prefix}export", str(out / bundle / "m" / "*.onnx")],
               [str(out / bundle / "m" / "*.onnx")]),
    ]


def test_steps_run_then_are_reused(tmp_path):
    runner = FakeRunner()
    first = d.run_bundle(_steps(tmp_path), tmp_path, runner=runner)
    assert [r.status for r in first] == ["ran", "ran", "ran"]
    assert runner.calls == ["data", "train", "export"]
    assert (tmp_path / "logs" / "b1.train.log").read_text() == "ok\n"

    runner.calls.clear()
    again = d.run_bundle(_steps(tmp_path), tmp_path, runner=runner)
    assert [r.status for r in again] == ["cached"] * 3
    assert runner.calls == []

    forced = d.run_bundle(_steps(tmp_path), tmp_path, force=True, runner=runner)
    assert [r.status for r in forced] == ["ran"] * 3


def test_missing_output_or_changed_command_reruns_it_and_everything_after(tmp_path):
    runner = FakeRunner()
    d.run_bundle(_steps(tmp_path), tmp_path, runner=runner)
    (tmp_path / "b1" / "model.pt").unlink()  # the train step's output is gone
    runner.calls.clear()
    results = d.run_bundle(_steps(tmp_path), tmp_path, runner=runner)
    assert [r.status for r in results] == ["cached", "ran", "ran"]
    assert runner.calls == ["train", "export"]

    steps = _steps(tmp_path)
    steps[0].fingerprint = "other generator settings"
    runner.calls.clear()
    assert [r.status for r in d.run_bundle(steps, tmp_path, runner=runner)] == ["ran"] * 3


def test_a_step_without_its_outputs_fails(tmp_path):
    steps = _steps(tmp_path)
    steps[1].outputs = [str(tmp_path / "b1" / "never_written.pt")]
    results = d.run_bundle(steps, tmp_path, runner=FakeRunner())
    assert results[1].status == "failed" and "never_written.pt" in results[1].detail
    assert results[2].status == "skipped"
    # not stamped: the next run tries again
    assert not (tmp_path / "b1" / ".steps" / "train.json").exists()


def test_failure_skips_the_rest_of_its_bundle_only(tmp_path):
    runner = FakeRunner(fail=("b1-train",))
    r1 = d.run_bundle(_steps(tmp_path, "b1", "b1-"), tmp_path, runner=runner)
    r2 = d.run_bundle(_steps(tmp_path, "b2", "b2-"), tmp_path, runner=runner)
    assert [r.status for r in r1] == ["ran", "failed", "skipped"]
    assert "exit code 3" in r1[1].detail and "RuntimeError: boom in b1-train" in r1[1].detail
    assert [r.status for r in r2] == ["ran", "ran", "ran"]


def test_optional_step_failure_keeps_the_bundle_going(tmp_path):
    steps = _steps(tmp_path)
    steps.insert(2, d.Step("b1", "explain", ["explain"], [], optional=True))
    results = d.run_bundle(steps, tmp_path, runner=FakeRunner(fail=("explain",)))
    assert [r.status for r in results] == ["ran", "ran", "failed", "ran"]


def test_exception_in_prepare_is_a_failed_step(tmp_path):
    steps = _steps(tmp_path)

    def broken():
        raise FileNotFoundError("no encounters.csv")

    steps[0].prepare = broken
    results = d.run_bundle(steps, tmp_path, runner=FakeRunner())
    assert results[0].status == "failed" and "no encounters.csv" in results[0].detail


def _fake_bundle_outputs(out: Path, demo: d.BundleDemo, value: float, max_abs_err: float = 2e-6) -> None:
    work = out / demo.bundle
    report: dict = {}
    node = report
    parts = demo.metric.key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = {"value": value, "ci_low": value - 0.01, "ci_high": value + 0.01}
    (work / "eval").mkdir(parents=True, exist_ok=True)
    (work / "eval" / demo.metric.report).write_text(json.dumps(report))
    (work / "eval" / "roc.png").write_bytes(b"\x89PNG fake")
    (work / "export_report.json").write_text(json.dumps({"max_abs_err": max_abs_err, "passed": True}))


def test_rows_and_table(tmp_path):
    oct_demo = d.DEMOS["retina_oct_classification"]
    _fake_bundle_outputs(tmp_path, oct_demo, 0.93)
    results = [d.StepResult("train", "ran", 40.0), d.StepResult("evaluate", "cached", 5.5)]
    (row,) = d.bundle_rows(oct_demo, tmp_path, results)
    assert row.value == "0.930" and row.status == "ok" and row.seconds == pytest.approx(45.5)
    assert row.parity == "2.0e-06 / passed" and not row.cached

    seg_demo = d.DEMOS["lung_ct_segmentation"]
    _fake_bundle_outputs(tmp_path, seg_demo, 0.90)
    (low,) = d.bundle_rows(seg_demo, tmp_path, [d.StepResult("train", "cached", 100.0)])
    assert low.status == "below target" and low.cached

    det_demo = d.DEMOS["lung_nodule_ct_detection"]
    (err,) = d.bundle_rows(det_demo, tmp_path, [d.StepResult("train", "failed", 3.0, "exit code 1: ValueError: x")])
    assert err.value == "-" and err.parity == "-" and err.status.startswith("error in train: exit code 1")

    table = d.render_table([row, low, err])
    lines = table.strip().splitlines()
    assert lines[0].startswith("| bundle | metric | value (synthetic) |")
    assert len(lines) == 5
    assert "| retina_oct_classification | 4-class accuracy (test) | 0.930 | >= 0.50 | 2.0e-06 / passed | 46 (0) | ok |" in table
    assert "100 (0) cached" in table
    copied = d.collect_pngs(oct_demo, tmp_path, tmp_path)
    assert [p.name for p in copied] == ["retina_oct_classification__roc.png"]
    md = d.summary_markdown([row], [Path(p.name) for p in copied], 12.0, {"x": {"synthetic": {}, "train": {}, "evaluate": {}}})
    assert "![retina_oct_classification__roc](retina_oct_classification__roc.png)" in md


def test_oxygen_target_comes_from_the_generator_bayes_auc(tmp_path):
    demo = d.DEMOS["cxr_ehr_oxygen_risk"]
    data = tmp_path / "data" / demo.task
    data.mkdir(parents=True)
    (data / "dataset.yaml").write_text("meta:\n  bayes_optimal_auc:\n    any_oxygen_24h: {train: 0.8, test: 0.85}\n")
    minimum, text = d.metric_target(demo, tmp_path)
    assert minimum == pytest.approx(0.80) and "0.850" in text


def test_pneumonia_real_weights_row(tmp_path):
    demo = d.DEMOS[d.PNEUMONIA]
    _fake_bundle_outputs(tmp_path, demo, 0.88)
    work = tmp_path / demo.bundle
    (work / "real_weights").mkdir(parents=True)
    (work / "real_weights_source.txt").write_text("real")
    (work / "real_weights" / "predictions.csv").write_text(
        "file,p_NORMAL,p_BACTERIAL,p_VIRAL,call,p_pneumonia,pneumonia,error\n"
        "x/NORMAL/IM-0001-0001.jpeg,0.8,0.1,0.1,NORMAL,0.2,0,\n"
        "x/PNEUMONIA/person1_bacteria_1.jpeg,0.1,0.8,0.1,BACTERIAL,0.9,1,\n"
        "x/PNEUMONIA/person2_virus_3.jpeg,0.1,0.8,0.1,BACTERIAL,0.9,1,\n"
        "x/PNEUMONIA/person3_virus_4.jpeg,,,,,,,unreadable\n"
    )
    rows = d.bundle_rows(demo, tmp_path, [d.StepResult("train", "ran", 1.0), d.StepResult("real_weights", "ran", 2.0)])
    assert len(rows) == 2
    assert rows[1].value == "0.667" and "3 real" in rows[1].metric


def test_bundle_steps_write_only_under_the_output_folder(tmp_path):
    for name, demo in d.DEMOS.items():
        steps = d.bundle_steps(demo, tmp_path, "python", real_cxr_dir=None)
        names = [s.name for s in steps if s.name != "datalist"]
        assert names[:5] == ["data", "train", "evaluate", "export", "onnx_inference"], name
        for step in steps:
            for out in step.outputs:
                assert Path(out).is_relative_to(tmp_path), (name, step.name, out)
            # every path-like override of a bundle run points into the output folder or the repository
            for flag, value in zip(step.argv, step.argv[1:]):
                if flag in ("--ckpt_dir", "--output_dir", "--log_dir", "--dataset_dir", "--onnx_path", "--datalist"):
                    assert Path(value).is_relative_to(tmp_path), (name, step.name, flag, value)
        train = next(s for s in steps if s.name == "train")
        for key, value in demo.train.items():
            assert f"--{key}" in train.argv and str(value) in train.argv


def test_cli_rejects_unknown_bundle(tmp_path):
    spec = importlib.util.spec_from_file_location("demo_cli", REPO / "scripts" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(SystemExit, match="unknown bundle"):
        module.main(out=str(tmp_path), bundles="no_such_bundle")
    assert sys.path[0] == str(REPO)


def test_subprocess_runner_logs_and_counts_cpu_time(tmp_path):
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\nprint('burnt')"
    steps = [d.Step("b", "burn", [sys.executable, "-c", burn], [])]
    (result,) = d.run_bundle(steps, tmp_path)
    assert result.status == "ran" and result.cpu_seconds >= 0.25
    assert "burnt" in (tmp_path / "logs" / "b.burn.log").read_text()
    stamp = json.loads((tmp_path / "b" / ".steps" / "burn.json").read_text())
    assert stamp["cpu_seconds"] >= 0.25


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"script_{name}", REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_markdown_has_one_row_per_bundle():
    bench = _load_script("benchmark")
    report = {
        "machine": {"cpu": "Test CPU", "cores": 2, "memory_gib": 8.0, "python": "3.11", "torch": "2.13",
                    "torch_threads": 2, "monai": "1.6.1", "onnxruntime": "1.2", "load_average": "1.0, 1.0, 1.0"},
        "targets": {
            "synthetic_ct": {"seconds_per_scan": 4.2},
            "lung_ct_segmentation": {
                "pytorch": {"seconds_per_scan": 12.0, "peak_rss_mib": 1500.0},
                "onnxruntime": {"seconds_per_scan": 8.0, "peak_rss_mib": 1300.0},
                "targets": {"seconds_per_scan_max": 25.0, "peak_rss_mib_max": 2048.0},
                "process_peak_rss_mib": 1900.0,
                "training": {"iterations_per_s": 0.5, "batch_size": 2, "cpu_seconds_per_iteration": 3.9,
                             "peak_rss_mib": 2100.0},
            },
            "cxr_ehr_oxygen_risk": {
                "inference": {"batch_1": {"pytorch_ms": 5.0, "onnxruntime_ms": 2.0, "pytorch_per_s": 200.0,
                                          "onnxruntime_per_s": 500.0},
                              "batch_16": {"pytorch_ms": 40.0, "onnxruntime_ms": 20.0, "pytorch_per_s": 400.0,
                                           "onnxruntime_per_s": 800.0}},
                "peak_rss_mib": 600.0,
                "training": {"error": "RuntimeError: no data"},
            },
            "lung_nodule_ct_detection": {"error": "ImportError: x", "benchmark_seconds": 0.1},
            "retina_oct_classification": {"torch_bs1_img_per_s": 50.0, "onnx_bs1_img_per_s": 250.0,
                                          "torch_bs16_img_per_s": 150.0, "onnx_bs16_img_per_s": 450.0,
                                          "process_peak_rss_mib": 700.0},
        },
    }
    md = bench._markdown(report)
    assert "Test CPU, 2 cores" in md and "Load average" in md
    assert ("| lung_ct_segmentation | 12 s/scan | 8 s/scan | 5 scans/min | 7.5 scans/min "
            "| 0.5 it/s (batch 2; 3.9 CPU s/it) | 1500 / 2100 |") in md
    assert ("| cxr_ehr_oxygen_risk | 5 ms (batch 1) | 2 ms (batch 1) | 400/s (batch 16) | 800/s (batch 16) "
            "| failed | 600 / - |") in md
    assert "| lung_nodule_ct_detection | failed: ImportError: x | - | - | - | - | - / - |" in md
    assert ("| retina_oct_classification | 20 ms (batch 1) | 4 ms (batch 1) | 150/s (batch 16) | 450/s (batch 16) "
            "| - | 700 / - |") in md
    assert "| synthetic_ct | seconds_per_scan | 4.2 |" in md
    assert "| training.cpu_seconds_per_iteration | 3.9 |" in md


def test_stale_outputs_are_removed_before_a_step_reruns(tmp_path):
    stale = tmp_path / "b1" / "models" / "model_from_an_old_run.pt"
    stale.parent.mkdir(parents=True)
    stale.write_text("old")
    steps = _steps(tmp_path)
    steps[1].clean = [str(stale.parent)]
    d.run_bundle(steps, tmp_path, runner=FakeRunner())
    assert not stale.exists()
    # a reused step cleans nothing
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_text("old")
    assert [r.status for r in d.run_bundle(steps, tmp_path, runner=FakeRunner())] == ["cached"] * 3
    assert stale.exists()


def test_explain_and_real_weight_inputs_are_copied_where_their_runs_read(tmp_path):
    demo = d.DEMOS[d.PNEUMONIA]
    test_dir = tmp_path / "data" / demo.task / "chest_xray" / "test"
    for name in ("NORMAL/IM-0001-0001.jpeg", "PNEUMONIA/person1_bacteria_1.jpeg", "PNEUMONIA/person2_virus_2.jpeg"):
        (test_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (test_dir / name).write_bytes(b"jpeg")
    real = tmp_path / "real"
    for name in ("NORMAL/IM-0002-0001.jpeg", "PNEUMONIA/person9_bacteria_1.jpeg", "PNEUMONIA/person9_virus_2.jpeg"):
        (real / name).parent.mkdir(parents=True, exist_ok=True)
        (real / name).write_bytes(b"jpeg")
    steps = {s.name: s for s in d.bundle_steps(demo, tmp_path, "python", real_cxr_dir=real)}
    explain = steps["explain"]
    explain.prepare()
    folder = explain.argv[explain.argv.index("--dataset_dir") + 1]
    assert sorted(p.name for p in Path(folder).rglob("*.jpeg")) == ["person1_bacteria_1.jpeg"]
    rw = steps["real_weights"]
    rw.prepare()
    folder = Path(rw.argv[rw.argv.index("--dataset_dir") + 1])
    assert sorted(p.name for p in folder.rglob("*.jpeg")) == [
        "IM-0002-0001.jpeg", "person9_bacteria_1.jpeg", "person9_virus_2.jpeg"]
    assert (tmp_path / demo.bundle / "real_weights_source.txt").read_text() == "real"
    assert rw.argv[rw.argv.index("--ckpt_path") + 1].endswith(f"bundles/{demo.bundle}/models/model.pt")


def test_error_line_is_the_root_cause_of_a_chained_traceback(tmp_path):
    log = tmp_path / "x.log"
    log.write_text(
        "2026 - INFO - starting\n"
        "Traceback (most recent call last):\n  File a.py\n"
        "common.errors.InputDataError: /data/x.jpeg: input file or folder not found\n\n"
        "The above exception was the direct cause of the following exception:\n\n"
        "Traceback (most recent call last):\n  File b.py\n"
        "RuntimeError: Failed to evaluate ConfigExpression:\n"
        '"$common.data.kermany.image_files(...)"\n'
    )
    assert d._last_error_line(log) == "common.errors.InputDataError: /data/x.jpeg: input file or folder not found"
    log.write_text("ok\nPARITY CHECK FAILED: pred max_abs_err=0.1\n")
    assert d._last_error_line(log).startswith("PARITY CHECK FAILED")


def test_benchmark_target_runs_in_a_child_process():
    bench = _load_script("benchmark")
    figures = bench.run_target("builtins", "dict", {"seconds_per_scan": 1.5})
    assert figures["seconds_per_scan"] == 1.5 and figures["process_peak_rss_mib"] > 1
    with pytest.raises(RuntimeError, match="no_such_function"):
        bench.run_target("builtins", "no_such_function", {})


def test_nodule_demo_infers_with_the_training_geometry():
    """Whatever the demo overrides, inference must resample and anchor as its training does."""
    from monai.bundle import ConfigParser

    demo = d.DEMOS["lung_nodule_ct_detection"]
    configs = d.REPO / "bundles" / "lung_nodule_ct_detection" / "configs"
    train, infer = ConfigParser(), ConfigParser()
    train.read_config(str(configs / "train.yaml"))
    infer.read_config(str(configs / "inference.yaml"))
    for key in ("spacing", "base_anchor_shapes"):  # the bundle's defaults where the demo does not override
        assert demo.inference.get(key, infer[key]) == demo.train.get(key, train[key]), key
    for key in demo.train:  # every override names an existing id of train.yaml
        assert key in train, key


def test_lung_shipped_weights_step_and_row(tmp_path):
    demo = d.DEMOS[d.LUNG_SEG]
    steps = d.bundle_steps(demo, tmp_path, "python")
    shipped = next(s for s in steps if s.name == "real_weights")
    assert shipped.optional
    assert shipped.argv[shipped.argv.index("--ckpt_path") + 1].endswith("bundles/lung_ct_segmentation/models/model.pt")
    _fake_bundle_outputs(tmp_path, demo, 0.97)
    work = tmp_path / demo.bundle
    (work / "real_weights").mkdir(parents=True)
    (work / "real_weights" / "metrics.json").write_text(json.dumps({"n_cases": 6, "mean": {"dice": 0.9612}}))
    rows = d.bundle_rows(demo, tmp_path, [d.StepResult("train", "ran", 1.0), d.StepResult("real_weights", "ran", 2.0)])
    assert len(rows) == 2 and rows[1].value == "0.961" and "6 synthetic test phantoms" in rows[1].metric
    failed = d.bundle_rows(demo, tmp_path, [d.StepResult("real_weights", "failed", 2.0, detail="boom")])
    # an optional step: the bundle's row stays, says what failed, and the weights' row carries the error
    assert "real_weights failed: boom" in failed[0].status and failed[1].status == "boom"
