"""Workflow tests of the pediatric CXR pneumonia bundle: every config runs as the model card says.

One tiny synthetic ChestXRay2017 set and one short training run (module fixtures) feed the tests of
evaluate, inference (CSV, bad cases, DICOM = PNG), ONNX export + ONNX Runtime inference, explain,
fine-tuning and multi-process training.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from bundle_runner import cli as _cli
from bundle_runner import read_csv as _read_csv
from bundle_runner import run_configs as _run
from bundle_runner import train_copy_one_epoch
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "pediatric_cxr_pneumonia_classification"
FAST = ["--num_workers", "0", "--batch_size", "6"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from common.synthetic.cxr import generate_pneumonia_cxr

    out = tmp_path_factory.mktemp("cxr_data")
    config = {
        "image_size": 128,
        "splits": {"train": {"NORMAL": 6, "BACTERIAL": 8, "VIRAL": 6}, "test": {"NORMAL": 2, "BACTERIAL": 2, "VIRAL": 2}},
        "write_masks": False,
    }
    return Path(generate_pneumonia_cxr(out, config=config, seed=0))


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> Path:
    """The bundle copied to a temporary folder and trained for one epoch with the model card's command."""
    return train_copy_one_epoch(BUNDLE, data, tmp_path_factory.mktemp("cxr_bundle"), *FAST)


def test_train_saves_loadable_checkpoint_and_logs(trained):
    state = torch.load(trained / "runs" / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert state["fc.weight"].shape == (3, 256) and state["conv1.weight"].shape[1] == 1
    assert list((trained / "eval").glob("events.out.tfevents.*"))


def test_evaluate_writes_report_and_figures(trained, data):
    _run(trained, ["train.yaml", "evaluate.yaml"], dataset_dir=str(data), n_boot=50, num_workers=0)
    report = json.loads((trained / "eval" / "report.json").read_text())
    assert report["n_images"] == 6 and report["class_counts"] == {"NORMAL": 2, "BACTERIAL": 2, "VIRAL": 2}
    assert np.array(report["confusion_matrix"]["matrix"]).sum() == 6
    assert set(report["binary"]) == {"pneumonia_vs_normal", "bacterial_vs_viral"}
    assert report["binary"]["bacterial_vs_viral"]["n_positive"] == 2
    for name in ("roc_curves.png", "confusion_matrix.png", "predictions.csv"):
        assert (trained / "eval" / name).stat().st_size > 0
    rows = _read_csv(trained / "eval" / "predictions.csv")
    accuracy = np.mean([r["label"] == r["call"] for r in rows])
    assert accuracy == pytest.approx(report["accuracy"]["value"])


def test_shifted_validation_reports_every_condition_and_the_rule(trained, data, tmp_path):
    from common.transforms import SHIFTS

    out = tmp_path / "shifted"
    _run(trained, ["train.yaml", "evaluate.yaml"], dataset_dir=str(data), n_boot=20, num_workers=0,
         shifted_validation=True, output_dir=str(out))
    report = json.loads((out / "shifted_validation.json").read_text())
    main = json.loads((out / "report.json").read_text())
    assert list(report["conditions"]) == list(SHIFTS) and report["n_images"] == main["n_images"] == 6
    clean = report["conditions"]["clean"]
    # the clean condition is the ordinary evaluation, image for image
    assert clean["accuracy"] == pytest.approx(main["accuracy"]["value"])
    assert clean["pneumonia_vs_normal"]["ece"] == pytest.approx(main["binary"]["pneumonia_vs_normal"]["ece"])
    for condition in report["conditions"].values():
        for figure in ("accuracy", "sensitivity", "specificity", "ece"):
            assert 0.0 <= condition["pneumonia_vs_normal"][figure] <= 1.0
    rule = report["recommended"]
    assert rule["temperature"] > 0 and 0 < rule["pneumonia_vs_normal"]["threshold"] < 1
    assert "Youden" in rule["pneumonia_vs_normal"]["rule"]
    assert "| zoom_out | no |" in (out / "shifted_validation.md").read_text()
    for name in ("reliability_pneumonia_vs_normal.png", "reliability_bacterial_vs_viral.png"):
        assert (out / name).stat().st_size > 0


def test_decision_settings_are_the_same_in_inference_and_evaluation():
    import yaml

    inference = yaml.safe_load((BUNDLE / "configs" / "inference.yaml").read_text())
    evaluate = yaml.safe_load((BUNDLE / "configs" / "evaluate.yaml").read_text())
    for key in ("temperature", "pneumonia_threshold"):
        assert inference[key] == evaluate[key], key


def test_temperature_softens_the_probabilities_not_the_calls(trained, data, tmp_path):
    images = data / "chest_xray" / "test"
    for t in (1.0, 3.0):
        _run(trained, ["inference.yaml"], dataset_dir=str(images), output_dir=str(tmp_path / f"t{t}"), temperature=t)
    sharp, soft = _read_csv(tmp_path / "t1.0" / "predictions.csv"), _read_csv(tmp_path / "t3.0" / "predictions.csv")
    assert [r["call"] for r in sharp] == [r["call"] for r in soft]
    top = [max(float(r[f"p_{c}"]) for c in ("NORMAL", "BACTERIAL", "VIRAL")) for r in sharp]
    top_soft = [max(float(r[f"p_{c}"]) for c in ("NORMAL", "BACTERIAL", "VIRAL")) for r in soft]
    assert all(b < a for a, b in zip(top, top_soft))


def test_inference_csv_reports_and_skips_bad_files(trained, data, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(data / "chest_xray" / "test", images)
    (images / "broken.jpeg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    _run(trained, ["inference.yaml"], dataset_dir=str(images), output_dir=str(tmp_path / "out"))
    rows = _read_csv(tmp_path / "out" / "predictions.csv")
    assert len(rows) == 7
    bad = [r for r in rows if r["error"]]
    assert len(bad) == 1 and bad[0]["file"].endswith("broken.jpeg") and bad[0]["p_NORMAL"] == ""
    for r in rows:
        if r["error"]:
            continue
        p = np.array([float(r[f"p_{c}"]) for c in ("NORMAL", "BACTERIAL", "VIRAL")])
        assert p.sum() == pytest.approx(1.0, abs=1e-5)
        assert float(r["p_pneumonia"]) == pytest.approx(p[1] + p[2], abs=1e-5)
        assert r["call"] == ("NORMAL", "BACTERIAL", "VIRAL")[int(p.argmax())]
        assert r["pneumonia"] == ("yes" if p[1] + p[2] >= 0.5 else "no")


def test_batch_ends_with_a_summary_and_fails_when_nothing_was_written(trained, data, tmp_path):
    import logging

    from common.errors import NothingWritten

    images = tmp_path / "mixed"
    shutil.copytree(data / "chest_xray" / "test", images)
    (images / "broken.jpeg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("common.bundle_utils").addHandler(handler)
    try:
        _run(trained, ["inference.yaml"], dataset_dir=str(images), output_dir=str(tmp_path / "out"))
    finally:
        logging.getLogger("common.bundle_utils").removeHandler(handler)
    log = "\n".join(r.getMessage() for r in records)
    assert "batch done: 6 image(s) written, 1 skipped (1 x the image cannot be decoded)" in log

    refused = tmp_path / "refused"
    refused.mkdir()
    (refused / "a.png").write_bytes(b"not an image")
    (refused / "b.jpeg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    with pytest.raises(NothingWritten, match="nothing written: 0 image"):
        _run(trained, ["inference.yaml"], dataset_dir=str(refused), output_dir=str(tmp_path / "out2"))
    # from the command line: exit status 1, the cause on the last line
    proc = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(trained / "configs" / "inference.yaml"),
         "--bundle_root", str(trained), "--dataset_dir", str(refused), "--output_dir", str(tmp_path / "out3")],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("error: nothing written: 0 image(s) written, 2 skipped")


def _monochrome1_dicom(png: Path, out: Path) -> None:
    """The PNG's pixels stored as a 16-bit MONOCHROME1 digital X-ray (bright bone = low stored values)."""
    pixels = np.asarray(Image.open(png).convert("L"), dtype=np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.PatientID = "CHILD-0042"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = ((255 - pixels) * 257).astype(np.uint16).tobytes()
    ds.save_as(out, enforce_file_format=True)
    assert pydicom.dcmread(out).PhotometricInterpretation == "MONOCHROME1"


def test_dicom_monochrome1_and_png_give_the_same_probabilities(trained, data, tmp_path):
    images = tmp_path / "pair"
    images.mkdir()
    source = sorted((data / "chest_xray" / "test" / "PNEUMONIA").glob("*.jpeg"))[0]
    Image.open(source).convert("L").save(images / "a_film.png")
    _monochrome1_dicom(images / "a_film.png", images / "b_film.dcm")
    _run(trained, ["inference.yaml"], dataset_dir=str(images), output_dir=str(tmp_path / "out"))
    png, dcm = _read_csv(tmp_path / "out" / "predictions.csv")
    assert png["file"].endswith(".png") and dcm["file"].endswith(".dcm") and not png["error"] and not dcm["error"]
    for c in ("NORMAL", "BACTERIAL", "VIRAL"):
        assert float(png[f"p_{c}"]) == pytest.approx(float(dcm[f"p_{c}"]), abs=1e-5)
    assert png["call"] == dcm["call"]


def test_onnx_export_and_onnx_inference_match_pytorch(trained, data, tmp_path):
    from common.export import export_bundle

    report = export_bundle(trained)
    assert (trained / "models" / "model.onnx").is_file() and report["checkpoint"]
    images = data / "chest_xray" / "test"
    _run(trained, ["inference.yaml"], dataset_dir=str(images), output_dir=str(tmp_path / "torch"))
    _run(trained, ["inference.yaml", "inference_onnx.yaml"], dataset_dir=str(images), output_dir=str(tmp_path / "onnx"))
    torch_rows, onnx_rows = _read_csv(tmp_path / "torch" / "predictions.csv"), _read_csv(tmp_path / "onnx" / "predictions.csv")
    assert [r["file"] for r in torch_rows] == [r["file"] for r in onnx_rows] and len(torch_rows) == 6
    for a, b in zip(torch_rows, onnx_rows):
        for c in ("NORMAL", "BACTERIAL", "VIRAL"):
            assert float(a[f"p_{c}"]) == pytest.approx(float(b[f"p_{c}"]), abs=1e-4)


def test_explain_writes_occlusion_and_gradcam_overlays(trained, data, tmp_path):
    one = tmp_path / "one"
    one.mkdir()
    source = sorted((data / "chest_xray" / "test" / "PNEUMONIA").glob("*bacteria*.jpeg"))[0]
    shutil.copy(source, one / source.name)
    _run(trained, ["inference.yaml", "explain.yaml"], dataset_dir=str(one), output_dir=str(tmp_path / "out"),
         occlusion_stride=20)
    for method in ("occlusion", "gradcam"):
        png = tmp_path / "out" / "explain" / f"{source.stem}_{method}.png"
        assert png.stat().st_size > 1000
        assert Image.open(png).size[0] > 100
    assert len(_read_csv(tmp_path / "out" / "predictions.csv")) == 1


def test_finetune_two_classes_from_checkpoint_with_frozen_backbone(trained, data, tmp_path):
    initial = torch.load(trained / "models" / "model.pt", map_location="cpu", weights_only=True)
    _run(trained, ["train.yaml"], dataset_dir=str(data), initial_ckpt=str(trained / "models" / "model.pt"),
         num_classes=2, freeze_backbone=True, max_epochs=1, ckpt_dir=str(tmp_path / "models"),
         output_dir=str(tmp_path / "eval"), num_workers=0, batch_size=6, learning_rate=0.05)
    tuned = torch.load(tmp_path / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert tuned["fc.weight"].shape == (2, 256)  # head of another class count, re-initialised
    for key in ("conv1.weight", "layer4.1.conv2.weight", "bn1.running_mean"):
        assert torch.equal(tuned[key], initial[key]), key  # backbone (and its BN statistics) frozen


@pytest.mark.slow
def test_multi_gpu_config_trains_under_torchrun_with_two_cpu_processes(data, tmp_path):
    bundle = Path(shutil.copytree(BUNDLE, tmp_path / BUNDLE.name))
    proc = _cli("-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2",
                "-m", "monai.bundle", "run", "--config_file",
                f"['{bundle}/configs/train.yaml','{bundle}/configs/multi_gpu_train.yaml']",
                "--bundle_root", str(bundle), "--dataset_dir", str(data),
                "--logging_file", str(bundle / "configs" / "logging.conf"), "--max_epochs", "1",
                "--num_workers", "0", "--batch_size", "4")
    state = torch.load(bundle / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert "fc.weight" in state and not any(k.startswith("module.") for k in state)
    assert proc.stdout.count("Epoch[1] Metrics -- val_accuracy") == 1  # stats from rank 0 only
