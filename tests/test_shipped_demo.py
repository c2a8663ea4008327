"""`make demo` (zoo_tools/shipped_demo.py): the shipped weights of every bundle on data the demo generates.

The commands are replaced by a runner that writes the files a step promises, as in tests/test_demo.py,
so the driver's logic is checked in seconds; `make demo` itself runs the real commands.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from zoo_tools import demo as d
from zoo_tools import shipped_demo as s

REPO = Path(__file__).resolve().parents[1]


def _flag(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv else None


@pytest.mark.parametrize("name", list(s.SHIPPED))
def test_steps_use_the_shipped_weights_and_write_only_under_the_output_folder(tmp_path, name):
    demo = s.SHIPPED[name]
    steps = s.shipped_steps(demo, tmp_path, "python", real_cxr_dir=None)
    by_name = {step.name: step for step in steps}
    assert {"data", "evaluate", "inference", "export", "onnx_inference"} <= set(by_name)
    weights = str(REPO / "bundles" / name / "models" / "model.pt")
    # evaluation and export name the shipped file; inference runs as on a fresh clone, with no override
    assert _flag(by_name["evaluate"].argv, "--ckpt_path") == weights
    assert _flag(by_name["export"].argv, "--ckpt_path") == weights
    assert not {"--ckpt_path", "--ckpt_dir"} & set(by_name["inference"].argv)
    for step in steps:
        for out in step.outputs:
            assert Path(out).is_relative_to(tmp_path), (step.name, out)
        for flag, value in zip(step.argv, step.argv[1:]):
            if flag in ("--ckpt_dir", "--output_dir", "--log_dir", "--dataset_dir", "--onnx_path", "--datalist", "--out"):
                assert Path(value).is_relative_to(tmp_path), (step.name, flag, value)
    # a changed weights file reruns every step after the data
    assert all("weights=" in step.fingerprint for step in steps[1:])


def test_no_shipped_weights_skips_the_bundle_and_says_which_file(tmp_path, monkeypatch):
    demo = s.SHIPPED["retina_oct_classification"]
    monkeypatch.setattr(s, "shipped_weights", lambda bundle: tmp_path / "absent" / "model.pt")
    steps = s.shipped_steps(demo, tmp_path, "python")
    assert steps[0].skip_reason == "" and all("no shipped weights" in st.skip_reason for st in steps[1:])
    ran = []

    def runner(argv, log_path, env) -> int:  # writes only what the step promises, under tmp_path
        ran.append(argv)
        for step in steps:
            if step.argv is argv:
                for out in step.outputs:
                    Path(out).parent.mkdir(parents=True, exist_ok=True)
                    Path(out).write_text("{}")
        return 0

    results = d.run_bundle(steps, tmp_path, runner=runner)
    assert len(ran) == 1  # the data step only
    assert [r.status for r in results][1:] == ["skipped"] * (len(steps) - 1)
    (row,) = s.shipped_rows(demo, tmp_path, results)
    assert row.status.startswith("error: no shipped weights at bundles/retina_oct_classification/models/model.pt")


def test_rows_table_and_real_images(tmp_path):
    demo = s.SHIPPED[d.PNEUMONIA]
    work = tmp_path / demo.bundle
    (work / "eval").mkdir(parents=True)
    (work / "eval" / "report.json").write_text(json.dumps({"accuracy": 0.75}))
    (work / "export_report.json").write_text(json.dumps({"max_abs_err": 3e-6, "passed": True}))
    (work / "package_cxr").mkdir()
    (work / "package_cxr" / "predictions.csv").write_text(
        "file,p_NORMAL,p_BACTERIAL,p_VIRAL,call,p_pneumonia,pneumonia,error\nx/RG1_UNCR.dcm,0.7,0.2,0.1,NORMAL,0.3,no,\n")
    results = [d.StepResult("data", "ran", 1.0), d.StepResult("evaluate", "ran", 4.0, cpu_seconds=3.0),
               d.StepResult("explain", "failed", 2.0, "exit code 1: boom"), d.StepResult("package_cxr", "ran", 3.0),
               d.StepResult("real_films", "skipped", 0.0, "no real folder")]
    rows = s.shipped_rows(demo, tmp_path, results)
    assert [r.bundle for r in rows] == [demo.bundle, f"{demo.bundle} (real image)"]
    main, cxr = rows
    # an optional step's failure is shown but does not fail the bundle; its seconds are the bundle's
    assert main.value == "0.750" and main.status.startswith("ok; explain failed") and main.seconds == pytest.approx(7.0)
    assert main.parity == "3.0e-06 / passed" and "(synthetic)" in main.metric
    assert cxr.value == "call NORMAL, P(pneumonia) 0.30" and "adult" in cxr.metric
    table = s.render_shipped_table(rows)
    assert table.splitlines()[0].startswith("| bundle | figure (data) | value | shipped weights trained on |")
    assert len(table.strip().splitlines()) == 4
    md = s.shipped_summary_markdown(rows, [Path("x__roc.png")], 100.0)
    assert "![x__roc](x__roc.png)" in md and "shipped" in md


def test_oxygen_csv_for_the_package_radiograph_leaves_every_ehr_value_empty(tmp_path):
    image = tmp_path / "film.dcm"
    image.write_bytes(b"DICM")
    target = s.write_oxygen_csv(image, tmp_path / "in")
    with open(target, newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert row["image"] == "film.dcm" and (tmp_path / "in" / "film.dcm").is_file()
    ehr = [k for k in row if k not in ("encounter_id", "image")]
    assert len(ehr) >= 10 and all(row[k] == "" for k in ehr)


def test_package_radiograph_is_a_chest_cr():
    path = s.package_cxr()
    if path is None:
        pytest.skip("pydicom-data is not installed")
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert ds.Modality == "CR" and ds.BodyPartExamined == "CHEST"
