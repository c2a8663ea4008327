"""Workflow tests of the cxr_ehr_oxygen_risk bundle: train, evaluate, inference, ONNX export + ONNX inference.

A tiny synthetic cohort (3 sites, 64 px images) is generated once; each workflow runs the bundle's own
configs through ``monai.bundle.ConfigWorkflow`` exactly as ``python -m monai.bundle run`` does.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from monai.bundle import ConfigWorkflow

from common.synthetic.ehr_cohort import generate_oxygen_risk

REPO = Path(__file__).resolve().parents[1]
BUNDLE_SRC = REPO / "bundles" / "cxr_ehr_oxygen_risk"
COHORT = {"n_per_site": 40, "image_size": 64, "progress": False, "render": {"pool_size": 1}}


def workflow(bundle: Path, files: list[str], workflow_type: str, **overrides) -> ConfigWorkflow:
    wf = ConfigWorkflow(
        config_file=[str(bundle / "configs" / f) for f in files], meta_file=str(bundle / "configs" / "metadata.json"),
        logging_file=False, workflow_type=workflow_type, bundle_root=str(bundle), **overrides,
    )
    wf.initialize()
    assert wf.check_properties() in (None, [])
    return wf


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("o2bundle")
    bundle = root / "bundle"
    shutil.copytree(BUNDLE_SRC, bundle, ignore=shutil.ignore_patterns("models", "eval", "logs", "runs"))
    (bundle / "models").mkdir()
    data = generate_oxygen_risk(root / "data", COHORT, seed=1)
    wf = workflow(bundle, ["train.yaml"], "train", dataset_dir=str(data), max_epochs=4, batch_size=16, learning_rate=0.003)
    wf.run()
    wf.finalize()
    return {"root": root, "bundle": bundle, "data": data, "trainer": wf.trainer, "evaluator": wf.evaluator}


def _trained(env) -> Path:
    """The checkpoint the fixture's training wrote (train.yaml's default ckpt_dir: runs/models)."""
    return env["bundle"] / "runs" / "models" / "model.pt"


def test_train_writes_checkpoints_and_learns(env):
    models = env["bundle"] / "runs" / "models"
    assert (models / "model.pt").is_file() and (models / "model_final.pt").is_file()
    state = torch.load(models / "model.pt", map_location="cpu", weights_only=True)
    assert "head.weight" in state
    # 4 epochs on ~70 encounters: "any oxygen" is already far above chance on the validation split
    assert env["evaluator"].state.best_metric > 0.7


def test_evaluate_report(env):
    out = env["root"] / "eval"
    wf = workflow(env["bundle"], ["train.yaml", "evaluate.yaml"], "train", dataset_dir=str(env["data"]),
                  output_dir=str(out), n_boot=100)
    wf.run()
    report = json.loads((out / "evaluation_report.json").read_text())
    assert report["report_split"] == "test" and report["cases"] > 10
    assert len(report["outputs"]) == 8
    for name, o in report["outputs"].items():
        auc = o["auroc"]
        if np.isfinite(auc["value"]):
            assert auc["ci_low"] <= auc["value"] <= auc["ci_high"], name
        assert 0.0 <= o["calibration"]["brier"] <= 1.0
        assert 0.0 <= o["calibration"]["ece"] <= 1.0
    op = report["outputs"]["any_oxygen_24h"]["operating_point"]
    assert 0.0 < op["threshold"] < 1.0 and 0.0 <= op["sensitivity"] <= 1.0
    assert report["outputs"]["any_oxygen_24h"]["auroc"]["value"] > 0.6
    for png in ("reliability_24h.png", "reliability_72h.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert len(rows) == report["cases"] + report["threshold_cases"]


def _inference_csv(env) -> Path:
    """Five encounters: complete, cells missing, out of range, no image, an unreadable image."""
    rows = list(csv.DictReader(open(env["data"] / "encounters.csv")))[:5]
    rows[1]["crp"] = rows[1]["spo2"] = ""
    rows[2]["temperature"], rows[2]["spo2"] = "99.1", "140"
    rows[3]["image"] = ""
    rows[4]["image"] = "images/missing.png"
    names = ["A-OK", "B-MISSING", "C-OUT-OF-RANGE", "D-NO-IMAGE", "E-BAD-IMAGE"]
    for r, n in zip(rows, names):
        r["encounter_id"] = n
    folder = env["root"] / "infer"
    folder.mkdir(exist_ok=True)
    fields = [c for c in rows[0] if c not in ("o2_24h", "o2_72h", "split")]
    with open(folder / "encounters.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    # images are relative to the CSV folder: link the cohort's image tree
    (folder / "images").symlink_to(env["data"] / "images", target_is_directory=True)
    return folder


def _run_inference(env, folder: Path, out: Path, files: list[str], **overrides) -> dict[str, dict]:
    overrides.setdefault("ckpt_path", str(_trained(env)))
    wf = workflow(env["bundle"], files, "infer", dataset_dir=str(folder), output_dir=str(out), **overrides)
    wf.run()
    return {p.stem: json.loads(p.read_text()) for p in out.glob("*.json")}


def test_inference_missing_and_out_of_range(env):
    folder = _inference_csv(env)
    results = _run_inference(env, folder, env["root"] / "pred_torch", ["inference.yaml"])
    assert set(results) == {"A-OK", "B-MISSING", "C-OUT-OF-RANGE", "D-NO-IMAGE"}  # the bad image is skipped
    assert {"crp", "spo2"} <= set(results["B-MISSING"]["imputed_inputs"])
    assert {"temperature", "spo2"} <= set(results["C-OUT-OF-RANGE"]["imputed_inputs"])
    assert results["D-NO-IMAGE"]["image_used"] is False and results["A-OK"]["image_used"] is True
    for r in results.values():
        for h in ("24h", "72h"):
            p = [r["risk"][h][k] for k in ("any_oxygen", "high_flow_or_more", "ventilation_or_death", "death")]
            assert all(0 <= v <= 1 for v in p) and p == sorted(p, reverse=True)
        assert all(r["risk"]["72h"][k] >= r["risk"]["24h"][k] for k in r["risk"]["24h"])
    rows = list(csv.DictReader(open(env["root"] / "pred_torch" / "predictions.csv")))
    # every input row, in the CSV's order; the encounter that could not be scored with its error
    assert [r["encounter_id"] for r in rows] == ["A-OK", "B-MISSING", "C-OUT-OF-RANGE", "D-NO-IMAGE", "E-BAD-IMAGE"]
    assert all(not r["error"] for r in rows[:4]) and rows[4]["p_any_oxygen_24h"] == ""
    assert "missing.png" in rows[4]["error"]


def test_inference_refuses_image_paths_outside_the_data_folder(env, tmp_path):
    """A CSV is data: rows naming '../..' or absolute paths are refused one by one (listed with their
    error, nothing opened); --image_paths_outside_root true accepts them."""
    src = list(csv.DictReader(open(env["data"] / "encounters.csv")))[:4]
    secret = tmp_path / "secret.png"
    shutil.copy(env["data"] / src[0]["image"], secret)
    folder = tmp_path / "site"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(env["data"] / src[0]["image"], folder / "sub" / "ok.png")
    cells = {"A-OK": "sub/ok.png", "B-UP": "../secret.png", "C-ABS": str(secret), "D-SNEAKY": "sub/../../secret.png"}
    fields = [c for c in src[0] if c not in ("o2_24h", "o2_72h", "split")]
    with open(folder / "encounters.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for row, (eid, image) in zip(src, cells.items()):
            w.writerow({**row, "encounter_id": eid, "image": image})
    results = _run_inference(env, folder, tmp_path / "out", ["inference.yaml"])
    assert set(results) == {"A-OK"}
    rows = {r["encounter_id"]: r for r in csv.DictReader(open(tmp_path / "out" / "predictions.csv"))}
    assert list(rows) == list(cells)
    assert "absolute image path refused" in rows["C-ABS"]["error"] and "row 4" in rows["C-ABS"]["error"]
    for eid in ("B-UP", "D-SNEAKY"):
        assert "leaves the image root" in rows[eid]["error"] and rows[eid]["p_any_oxygen_24h"] == ""
    opted_in = _run_inference(env, folder, tmp_path / "out2", ["inference.yaml"], image_paths_outside_root=True)
    assert set(opted_in) == set(cells)


def test_duplicate_encounter_ids_are_refused_with_their_rows(tmp_path):
    from common.data.oxygen_csv import read_encounters
    from common.errors import InputDataError

    path = tmp_path / "encounters.csv"
    path.write_text("encounter_id,image\nE1,a.png\nE2,b.png\nE1,c.png\n")
    with pytest.raises(InputDataError, match="duplicate encounter_id in rows 2 and 4") as e:
        read_encounters(path, [])
    assert "E1" not in str(e.value)  # rows are named, the identifier is not


def test_onnx_export_and_onnx_inference_parity(env):
    from common.export import export_bundle

    report = export_bundle(env["bundle"], ckpt_path=_trained(env))
    assert report["passed"] and (env["bundle"] / "models" / "model.onnx").is_file()
    import onnx

    graph = onnx.load(str(env["bundle"] / "models" / "model.onnx")).graph
    assert [i.name for i in graph.input] == ["image", "ehr"]
    folder = env["root"] / "infer"
    if not folder.exists():
        folder = _inference_csv(env)
    torch_out = _run_inference(env, folder, env["root"] / "pred_torch2", ["inference.yaml"])
    onnx_out = _run_inference(env, folder, env["root"] / "pred_onnx", ["inference.yaml", "inference_onnx.yaml"])
    assert set(torch_out) == set(onnx_out) and len(onnx_out) == 4
    for k in torch_out:
        for h in ("24h", "72h"):
            for lvl, v in torch_out[k]["risk"][h].items():
                assert abs(v - onnx_out[k]["risk"][h][lvl]) < 1e-4, (k, h, lvl)


@pytest.mark.parametrize("mode", ["image", "ehr"])
def test_single_modality_modes(env, mode):
    folder = env["root"] / f"infer_{mode}"
    folder.mkdir()
    src = list(csv.DictReader(open(env["data"] / "encounters.csv")))[:4]
    # an image-only site has no EHR columns at all; an EHR-only site no images
    spec = yaml.safe_load((env["bundle"] / "configs" / "ehr_features.yaml").read_text())
    names = [f["name"] for f in spec["features"]]
    fields = ["encounter_id", "image"] if mode == "image" else ["encounter_id", "image", *names]
    with open(folder / "encounters.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for r in src:
            w.writerow({**r, "image": str(env["data"] / r["image"]) if mode == "image" else ""})
    # the model trained with both inputs and modality dropout also serves single-modality sites (the image
    # paths here are absolute: allowed by the opt-in)
    results = _run_inference(env, folder, env["root"] / f"pred_{mode}", ["inference.yaml"], mode=mode,
                             image_paths_outside_root=True)
    assert len(results) == 4
    assert all(r["mode"] == mode for r in results.values())
    assert all(r["image_used"] is (mode == "image") for r in results.values())


def test_verify_bundle():
    from zoo_tools.bundle_verify import verify_bundle

    assert verify_bundle(BUNDLE_SRC) == []
