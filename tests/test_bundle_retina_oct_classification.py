"""Workflow tests of the retinal OCT bundle: every config runs as the model card says.

One tiny synthetic OCT2017 set and one short training run (module fixtures) feed the tests of evaluate,
inference (CSV with referral, bad cases), ONNX export + ONNX Runtime inference, explain, fine-tuning
and multi-process training.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from bundle_runner import cli as _cli
from bundle_runner import read_csv as _read_csv
from bundle_runner import run_configs as _run
from bundle_runner import train_copy_one_epoch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "retina_oct_classification"
FAST = ["--num_workers", "0", "--batch_size", "8"]
CLASSES = ("CNV", "DME", "DRUSEN", "NORMAL")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from common.synthetic.oct import generate_oct

    out = tmp_path_factory.mktemp("oct_data")
    config = {
        "image_size": [128, 128],
        "splits": {"train": dict.fromkeys(CLASSES, 5), "test": dict.fromkeys(CLASSES, 2)},
        "scans_per_patient": [1, 2],
        "write_masks": False,
    }
    return Path(generate_oct(out, config=config, seed=0))


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> Path:
    """The bundle copied to a temporary folder and trained for one epoch with the model card's command."""
    return train_copy_one_epoch(BUNDLE, data, tmp_path_factory.mktemp("oct_bundle"), *FAST)


def test_train_saves_loadable_checkpoint_and_logs(trained):
    state = torch.load(trained / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert state["fc.weight"].shape == (4, 128) and state["conv1.weight"].shape[1] == 1
    assert list((trained / "eval").glob("events.out.tfevents.*"))


def test_evaluate_writes_report_with_referral_and_weighted_error(trained, data):
    _run(trained, ["train.yaml", "evaluate.yaml"], dataset_dir=str(data), n_boot=50, num_workers=0)
    report = json.loads((trained / "eval" / "report.json").read_text())
    assert report["n_images"] == 8 and report["class_counts"] == dict.fromkeys(CLASSES, 2)
    urgent = report["binary"]["urgent_referral"]
    assert (urgent["n_positive"], urgent["n_negative"]) == (4, 4)
    rows = _read_csv(trained / "eval" / "predictions.csv")
    from common.metrics.kermany import weighted_error

    expected = weighted_error([CLASSES.index(r["label"]) for r in rows], [CLASSES.index(r["call"]) for r in rows])
    assert report["kermany_weighted_error"]["value"] == pytest.approx(expected)
    for name in ("roc_curves.png", "confusion_matrix.png"):
        assert (trained / "eval" / name).stat().st_size > 0


def test_inference_csv_has_referral_and_skips_bad_files(trained, data, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(data / "OCT2017" / "test", images)
    (images / "empty.png").write_bytes(b"")
    _run(trained, ["inference.yaml"], dataset_dir=str(images), output_dir=str(tmp_path / "out"))
    rows = _read_csv(tmp_path / "out" / "predictions.csv")
    assert len(rows) == 9
    assert [r["file"].endswith("empty.png") for r in rows if r["error"]] == [True]
    group = {"CNV": "urgent", "DME": "urgent", "DRUSEN": "routine", "NORMAL": "observation"}
    for r in rows:
        if r["error"]:
            continue
        p = np.array([float(r[f"p_{c}"]) for c in CLASSES])
        assert p.sum() == pytest.approx(1.0, abs=1e-5)
        assert float(r["p_urgent"]) == pytest.approx(p[0] + p[1], abs=1e-5)
        grouped = {"urgent": p[0] + p[1], "routine": p[2], "observation": p[3]}
        assert r["referral"] == max(grouped, key=grouped.get)
        assert r["call"] == CLASSES[int(p.argmax())] and r["referral"] in set(group.values())


def test_onnx_export_and_onnx_inference_match_pytorch(trained, data, tmp_path):
    from common.export import export_bundle

    export_bundle(trained)
    images = data / "OCT2017" / "test"
    _run(trained, ["inference.yaml"], dataset_dir=str(images), output_dir=str(tmp_path / "torch"))
    _run(trained, ["inference.yaml", "inference_onnx.yaml"], dataset_dir=str(images), output_dir=str(tmp_path / "onnx"))
    torch_rows, onnx_rows = _read_csv(tmp_path / "torch" / "predictions.csv"), _read_csv(tmp_path / "onnx" / "predictions.csv")
    assert [r["file"] for r in torch_rows] == [r["file"] for r in onnx_rows] and len(torch_rows) == 8
    for a, b in zip(torch_rows, onnx_rows):
        for c in CLASSES:
            assert float(a[f"p_{c}"]) == pytest.approx(float(b[f"p_{c}"]), abs=1e-4)
        assert a["referral"] == b["referral"]


def test_explain_writes_occlusion_and_gradcam_overlays(trained, data, tmp_path):
    one = tmp_path / "one"
    one.mkdir()
    source = sorted((data / "OCT2017" / "test" / "DRUSEN").glob("*.jpeg"))[0]
    shutil.copy(source, one / source.name)
    _run(trained, ["inference.yaml", "explain.yaml"], dataset_dir=str(one), output_dir=str(tmp_path / "out"),
         occlusion_stride=20, explain_target_class="DRUSEN")
    for method in ("occlusion", "gradcam"):
        png = tmp_path / "out" / "explain" / f"{source.stem}_{method}.png"
        assert png.stat().st_size > 1000 and Image.open(png).size[0] > 100
    # the overlays lie on what the network saw: the B-scan flattened to its retina band, at the scan's own width
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(BUNDLE / "configs" / "inference.yaml"), str(BUNDLE / "configs" / "explain.yaml")])
    parser.update({"bundle_root": str(BUNDLE)})
    background = parser.get_parsed_content("handlers#2#source_loader")({"image": str(source)})["image"]
    height, width = np.asarray(Image.open(source)).shape[:2]
    assert tuple(background.shape) == (1, round(0.5 * height), width)
    assert "retina band" in parser.get_parsed_content("handlers#2#capture_note")  # the DICOM capture says so
    # --retina_band false: the B-scan as read (not the normalised one that moves up the transform list)
    parser.update({"retina_band": False})
    background = parser.get_parsed_content("handlers#2#source_loader", lazy=False)({"image": str(source)})["image"]
    assert tuple(background.shape) == (1, height, width)
    assert parser.get_parsed_content("handlers#2#capture_note", lazy=False) == ""
    raw = np.asarray(Image.open(source).convert("L"), dtype=np.float32) / 255.0
    assert float(np.abs(background[0].numpy() - raw).max()) < 1e-5


def test_finetune_from_checkpoint_with_frozen_backbone(trained, data, tmp_path):
    initial = torch.load(trained / "models" / "model.pt", map_location="cpu", weights_only=True)
    _run(trained, ["train.yaml"], dataset_dir=str(data), initial_ckpt=str(trained / "models" / "model.pt"),
         freeze_backbone=True, max_epochs=1, ckpt_dir=str(tmp_path / "models"), output_dir=str(tmp_path / "eval"),
         num_workers=0, batch_size=8, learning_rate=0.05)
    tuned = torch.load(tmp_path / "models" / "model.pt", map_location="cpu", weights_only=True)
    for key in ("conv1.weight", "layer3.0.conv1.weight", "layer1.0.bn1.running_var"):
        assert torch.equal(tuned[key], initial[key]), key
    assert not torch.equal(tuned["fc.weight"], initial["fc.weight"])  # the head trained


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
    assert state["fc.weight"].shape == (4, 128) and not any(k.startswith("module.") for k in state)
    assert proc.stdout.count("Epoch[1] Metrics -- val_accuracy") == 1
