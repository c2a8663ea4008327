"""Workflow tests of bundles/lung_nodule_ct_detection: every config runs on tiny phantoms in the LUNA16 layout.

train (1 epoch, with validation and checkpoint), evaluate (JSON report + FROC PNG), inference (JSON per
scan, a bad file skipped), ONNX export and ONNX Runtime inference (same boxes as PyTorch), multi-GPU
training under torchrun with 2 CPU processes (gloo), and the bundle verifier.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import bundle_runner
import numpy as np
import pytest
import torch
from distributed_utils import run_torchrun
from monai.bundle import ConfigWorkflow

from common.data.luna16 import prepare
from zoo_tools.nodule_phantom import write_luna16_phantoms

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "lung_nodule_ct_detection"
CONFIGS = BUNDLE / "configs"
# small and fast: the default 32^3 patches at 2.5 mm, one epoch
FAST = {"max_epochs": 1, "val_interval": 1, "batch_size": 2, "samples_per_scan": 1, "num_workers": 0}


def run_workflow(configs: list, workflow_type: str, **overrides) -> ConfigWorkflow:
    return bundle_runner.run_workflow(BUNDLE, configs, workflow_type, **overrides)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("luna")
    # 4 training scans (one without nodules), 1 validation scan
    write_luna16_phantoms(root, num_scans=5, seed=11, nodules_per_scan=[2, 1, 0, 2, 2], shape=(72, 64, 44))
    uids = [f"1.2.826.0.1.3680043.8.498.11.{i}" for i in range(5)]
    (root / "dataset.yaml").write_text(f"splits:\n  train: [{', '.join(uids[:4])}]\n  val: [{uids[4]}]\n")
    prepare(root, root / "datalist.json")
    return root


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("train")
    workflow = run_workflow(
        ["train.yaml"],
        "train",
        dataset_dir=str(data),
        datalist=str(data / "datalist.json"),
        ckpt_dir=str(out / "models"),
        output_dir=str(out / "eval"),
        **FAST,
    )
    state = workflow.parser.get_parsed_content("train#trainer").state
    assert state.iteration == 2 and np.isfinite(state.output["loss"].item())
    assert (out / "models" / "model.pt").is_file()
    return out


def test_train_saves_a_checkpoint_that_loads(trained):
    state = torch.load(trained / "models" / "model.pt", weights_only=True)
    assert any(k.startswith("malignancy_head.") for k in state)


def test_fine_tune_from_initial_checkpoint(data, trained, tmp_path):
    workflow = ConfigWorkflow(
        config_file=str(CONFIGS / "train.yaml"),
        workflow_type="train",
        logging_file=False,
        bundle_root=str(BUNDLE),
        dataset_dir=str(data),
        initial_ckpt=str(trained / "models" / "model.pt"),
    )
    workflow.initialize()
    network = workflow.parser.get_parsed_content("network")
    reference = torch.load(trained / "models" / "model.pt", weights_only=True)
    assert torch.equal(
        network.state_dict()["malignancy_head.cls_logits.weight"],
        reference["malignancy_head.cls_logits.weight"],
    )


def test_evaluate_writes_report_and_froc_plot(data, trained, tmp_path):
    run_workflow(
        ["train.yaml", "evaluate.yaml"],
        "eval",
        dataset_dir=str(data),
        datalist=str(data / "datalist.json"),
        ckpt_dir=str(trained / "models"),
        output_dir=str(tmp_path),
    )
    report = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("cpm", "cpm_6mm", "froc", "coco", "malignancy"):
        assert key in report
    assert report["num_scans"] == 1
    assert 0.0 <= report["cpm"] <= 1.0
    assert report["froc"]["all"]["num_nodules"] == 2
    assert (tmp_path / "metrics_froc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list((tmp_path / "predictions").glob("*_nodules.json"))) == 1


def _inference(data_dir: Path, out: Path, ckpt: Path, onnx: Path | None = None) -> dict[str, list]:
    files = ["inference.yaml"] + (["inference_onnx.yaml"] if onnx else [])
    extra = {"onnx_path": str(onnx)} if onnx else {}
    run_workflow(
        files,
        "infer",
        dataset_dir=str(data_dir),
        output_dir=str(out),
        ckpt_path=str(ckpt),
        score_thresh=0.0,
        **extra,
    )
    return {p.name: json.loads(p.read_text())["detections"] for p in sorted(out.glob("*_nodules.json"))}


def test_inference_torch_and_onnx_give_the_same_boxes(data, trained, tmp_path):
    from common.export import export_bundle

    scans = tmp_path / "scans"
    scans.mkdir()
    for src in sorted((data / "subset0").glob("*.mhd"))[:2]:
        shutil.copy(src, scans / src.name)
        shutil.copy(src.with_suffix(".raw"), scans / src.with_suffix(".raw").name)
    (scans / "broken.mhd").write_text(
        "ObjectType = Image\nNDims = 3\nDimSize = 10 10 10\nElementType = MET_SHORT\nElementDataFile = missing.raw\n"
    )
    ckpt = trained / "models" / "model.pt"
    torch_out = _inference(scans, tmp_path / "torch", ckpt)
    assert len(torch_out) == 2  # the broken file is reported and skipped, the others are written
    for detections in torch_out.values():
        assert detections, "with score_thresh 0 every scan has detections"
        scores = [d["score"] for d in detections]
        assert scores == sorted(scores, reverse=True)
        assert all(
            1 <= d["malignancy"]["rating"] <= 5 and len(d["malignancy"]["probabilities"]) == 5
            for d in detections
        )

    onnx_path = tmp_path / "model.onnx"
    report = export_bundle(BUNDLE, ckpt_path=ckpt, onnx_path=onnx_path)
    assert onnx_path.is_file() and report
    onnx_out = _inference(scans, tmp_path / "onnx", ckpt, onnx_path)
    assert onnx_out.keys() == torch_out.keys()
    for name, detections in torch_out.items():
        ort = onnx_out[name]
        top = detections[:10]
        for det in top:
            match = [
                o
                for o in ort
                if np.allclose(o["center"], det["center"], atol=0.05)
                and abs(o["score"] - det["score"]) < 1e-3
            ]
            assert match, f"{name}: {det} has no ONNX counterpart"
            assert match[0]["malignancy"]["rating"] == det["malignancy"]["rating"]


@pytest.mark.timeout(400)
def test_multi_gpu_train_under_torchrun_with_two_cpu_processes(data, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    files = f"['{CONFIGS / 'train.yaml'}','{CONFIGS / 'multi_gpu_train.yaml'}']"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2",
        "-m", "monai.bundle", "run", "--config_file", files, "--bundle_root", str(BUNDLE),
        "--logging_file", "False", "--dataset_dir", str(data), "--datalist", str(data / "datalist.json"),
        "--ckpt_dir", str(tmp_path / "models"), "--output_dir", str(tmp_path / "eval"),
        "--max_epochs", "1", "--val_interval", "1", "--batch_size", "1", "--samples_per_scan", "1",
    ]  # fmt: skip
    result = run_torchrun(cmd, cwd=REPO, env=env, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    state = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in state)  # saved unwrapped, loadable without DDP


def test_verifier_passes():
    from zoo_tools.bundle_verify import verify_bundle

    assert verify_bundle(BUNDLE) == []
