"""Workflow tests of the lung_ct_segmentation bundle on a tiny synthetic set (minutes on 2 CPU cores).

Each config runs for real, in-process through MONAI's ``ConfigWorkflow`` (multi-GPU through ``torchrun``
with two CPU processes over gloo): train a couple of iterations, evaluate into a JSON report, infer on
NIfTI, DICOM and a bad file, export to ONNX and infer with ONNX Runtime. The network is coarse here
(6 mm voxels, 32^3 patches) so that the tests stay fast; the model card has the real figures.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import bundle_runner
import nibabel as nib
import numpy as np
import pytest
import torch
from distributed_utils import run_torchrun
from monai.bundle import ConfigParser, ConfigWorkflow

from common.errors import InputDataError

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundles" / "lung_ct_segmentation"
CONFIGS = BUNDLE / "configs"
# coarse settings that keep every workflow to seconds
FAST = {"spacing": [6.0, 6.0, 6.0], "roi_size": [32, 32, 32]}
FAST_TRAIN = {"spacing": [6.0, 6.0, 6.0], "patch_size": [32, 32, 32], "max_epochs": 2, "val_interval": 1}


def run_workflow(configs: list, workflow_type: str, **overrides) -> ConfigWorkflow:
    return bundle_runner.run_workflow(BUNDLE, configs, workflow_type, **overrides)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from common.synthetic.ct_phantom import generate_lung_ct

    out = tmp_path_factory.mktemp("lung_ct")
    # two validation cases: one per rank in the torchrun test
    generate_lung_ct(out, {"num_train": 2, "num_val": 2, "num_test": 1, "write_mhd": False}, seed=0)
    return out


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("train")
    run_workflow(
        [CONFIGS / "train.yaml"], "train", dataset_dir=str(data), ckpt_dir=str(work / "models"),
        log_dir=str(work / "logs"), **FAST_TRAIN,
    )
    return work / "models" / "model.pt"


@pytest.fixture(scope="module")
def case_folder(data, tmp_path_factory) -> Path:
    """The test scan as NIfTI and as a DICOM series, an unreadable file and a 2D image."""
    folder = tmp_path_factory.mktemp("scans")
    shutil.copy(data / "imagesTs" / "lung_005.nii.gz", folder / "lung_005.nii.gz")
    shutil.copytree(data / "dicom" / "lung_005", folder / "lung_005_dicom")
    (folder / "broken.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    return folder


@pytest.fixture(scope="module")
def pytorch_masks(trained, case_folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("infer")
    run_workflow(
        [CONFIGS / "inference.yaml"], "infer", dataset_dir=str(case_folder), output_dir=str(out),
        ckpt_path=str(trained), **FAST,
    )
    return out


def test_train_writes_a_loadable_checkpoint(trained):
    state = torch.load(trained, map_location="cpu", weights_only=True)
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.yaml"))
    parser["bundle_root"] = str(BUNDLE)
    network = parser.get_parsed_content("network_def")
    assert set(state) == set(network.state_dict())  # plain state dict, no DDP "module." prefix
    network.load_state_dict(state)


def test_fine_tuning_starts_from_initial_ckpt(trained, data, tmp_path):
    workflow = ConfigWorkflow(
        config_file=str(CONFIGS / "train.yaml"), workflow_type="train", bundle_root=str(BUNDLE),
        dataset_dir=str(data), ckpt_dir=str(tmp_path), log_dir=str(tmp_path / "logs"),
        initial_ckpt=str(trained), **FAST_TRAIN,
    )
    workflow.initialize()
    network = workflow.parser.get_parsed_content("network")
    state = torch.load(trained, map_location="cpu", weights_only=True)
    for name, value in network.state_dict().items():
        assert torch.equal(value.cpu(), state[name])


def test_evaluate_writes_report_and_accepts_binary_labels(trained, data, tmp_path):
    """The test scan scored twice: against its right/left label and against a binary (0/255) copy."""
    label_path = data / "labelsTs" / "lung_005.nii.gz"
    label = nib.load(str(label_path))
    binary_path = tmp_path / "lung_005_binary.nii.gz"
    nib.save(nib.Nifti1Image((np.asarray(label.dataobj) > 0).astype(np.uint8) * 255, label.affine), binary_path)
    index = json.loads((data / "dataset.json").read_text())
    index = {key: [{k: str(data / v) for k, v in item.items()} for item in index[key]] for key in ("training", "validation")}
    image = str(data / "imagesTs" / "lung_005.nii.gz")
    index["testing"] = [{"image": image, "label": str(label_path)}, {"image": image, "label": str(binary_path)}]
    (tmp_path / "dataset.json").write_text(json.dumps(index))

    run_workflow(
        [CONFIGS / "train.yaml", CONFIGS / "evaluate.yaml"], "train", dataset_dir=str(tmp_path),
        ckpt_path=str(trained), output_dir=str(tmp_path / "eval"), **FAST_TRAIN,
    )
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert report["n_cases"] == 2
    lr_case, binary_case = report["cases"]
    assert lr_case["case"] == "lung_005" and not lr_case["label_split_from_binary"]
    assert binary_case["label_split_from_binary"]
    assert np.allclose(lr_case["spacing_mm"], nib.affines.voxel_sizes(label.affine), atol=1e-3)
    for structure in ("right_lung", "left_lung", "both_lungs"):
        metrics = lr_case["metrics"][structure]
        assert metrics["volume_ref_ml"] > 100.0  # the reference lungs were read on their own grid
        assert metrics["dice"] is None or 0.0 <= metrics["dice"] <= 1.0
        # the synthetic lungs are apart, so splitting the binary mask recovers the same reference
        assert binary_case["metrics"][structure] == pytest.approx(metrics, nan_ok=True)
    for key in ("dice", "dice_right_lung", "dice_left_lung", "dice_both_lungs", "hd95_mm_both_lungs",
                "volume_diff_ml_right_lung"):
        assert key in report["mean"]
    assert (tmp_path / "eval" / "overlays.png").stat().st_size > 5000


def test_inference_on_nifti_and_dicom_with_a_bad_case(pytorch_masks, case_folder, caplog):
    written = sorted(p.name for p in pytorch_masks.iterdir())
    # the broken file was skipped; the DICOM series also has its DICOM SEG
    assert written == ["lung_005_dicom_seg.dcm", "lung_005_dicom_seg.nii.gz", "lung_005_seg.nii.gz"]
    source = nib.load(str(case_folder / "lung_005.nii.gz"))
    nifti_mask = nib.load(str(pytorch_masks / "lung_005_seg.nii.gz"))
    dicom_mask = nib.load(str(pytorch_masks / "lung_005_dicom_seg.nii.gz"))
    assert nifti_mask.shape == source.shape
    assert np.allclose(nifti_mask.affine, source.affine, atol=1e-4)
    assert nifti_mask.get_data_dtype() == np.uint8
    labels = np.asarray(nifti_mask.dataobj)
    assert set(np.unique(labels)) <= {0, 1, 2}
    # the DICOM series of the same scan: same grid in world space, same mask
    dicom_canonical = nib.as_closest_canonical(dicom_mask)
    nifti_canonical = nib.as_closest_canonical(nifti_mask)
    assert dicom_canonical.shape == nifti_canonical.shape
    assert np.allclose(dicom_canonical.affine, nifti_canonical.affine, atol=1e-3)
    agreement = (np.asarray(dicom_canonical.dataobj) == np.asarray(nifti_canonical.dataobj)).mean()
    assert agreement > 0.999


def test_non_ct_inputs_get_a_clear_error(tmp_path):
    from PIL import Image

    workflow = ConfigWorkflow(
        config_file=str(CONFIGS / "inference.yaml"), workflow_type="infer", bundle_root=str(BUNDLE),
        dataset_dir=str(tmp_path),
    )
    preprocessing = workflow.parser.get_parsed_content("preprocessing")
    xray = tmp_path / "chest.png"
    Image.fromarray((np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8)).save(xray)
    normalised = tmp_path / "normalised.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((20, 20, 20)).astype(np.float32), np.eye(4)), normalised)
    for path in (xray, normalised):
        with pytest.raises(Exception) as info:
            preprocessing({"image": str(path)})
        from common.data import find_input_error

        error = find_input_error(info.value)
        assert isinstance(error, InputDataError) and str(path) in str(error)


def test_onnx_export_and_inference_match_pytorch(trained, case_folder, pytorch_masks, tmp_path):
    from common.export import export_bundle

    onnx_path = tmp_path / "model.onnx"
    export_bundle(str(BUNDLE), ckpt_path=str(trained), onnx_path=str(onnx_path))
    nifti_only = tmp_path / "scans"
    nifti_only.mkdir()
    shutil.copy(case_folder / "lung_005.nii.gz", nifti_only)
    out = tmp_path / "out"
    run_workflow(
        [CONFIGS / "inference.yaml", CONFIGS / "inference_onnx.yaml"], "infer", dataset_dir=str(nifti_only),
        output_dir=str(out), onnx_path=str(onnx_path), **FAST,
    )
    onnx_mask = np.asarray(nib.load(str(out / "lung_005_seg.nii.gz")).dataobj)
    torch_mask = np.asarray(nib.load(str(pytorch_masks / "lung_005_seg.nii.gz")).dataobj)
    assert onnx_mask.shape == torch_mask.shape
    assert (onnx_mask == torch_mask).mean() > 0.999


def test_multi_gpu_train_with_two_cpu_processes(data, tmp_path):
    config = f"['{CONFIGS / 'train.yaml'}','{CONFIGS / 'multi_gpu_train.yaml'}']"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "monai.bundle", "run", "--config_file", config, "--bundle_root", str(BUNDLE),
        "--dataset_dir", str(data), "--ckpt_dir", str(tmp_path / "models"), "--log_dir", str(tmp_path / "logs"),
        "--spacing", "[6.0, 6.0, 6.0]", "--patch_size", "[32, 32, 32]", "--batch_size", "1",
        "--max_epochs", "1", "--val_interval", "1",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = run_torchrun(command, cwd=ROOT, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    state = torch.load(tmp_path / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert not any(k.startswith("module.") for k in state)
    # the DistributedSampler gave each rank one of the 2 training cases: one iteration per epoch, not two
    log = result.stdout + result.stderr
    assert "Epoch: 1/1, Iter: 1/1" in log and "Iter: 1/2" not in log


def test_ct_bad_input_corpus_beside_good_scans(trained, data, tmp_path):
    """CT kinds of bad input beside good scans through inference.yaml: every good scan is written (a NIfTI file
    and a DICOM folder of one name both), each bad one is skipped once with its reason, no DICOM free text or
    patient identifier reaches the log."""
    import logging

    import pydicom
    from dicom_factory import write_radiograph

    folder = tmp_path / "scans"
    folder.mkdir()
    shutil.copy(data / "imagesTs" / "lung_005.nii.gz", folder / "lung_005.nii.gz")
    shutil.copytree(data / "dicom" / "lung_005", folder / "lung_005")  # same case name as the NIfTI file
    for f in (folder / "lung_005").iterdir():
        ds = pydicom.dcmread(f)
        ds.SeriesDescription, ds.InstitutionName = "CHEST DOE^JOHN MRN12345", "St Elsewhere General"
        ds.save_as(f)
    (folder / "truncated.nii.gz").write_bytes((folder / "lung_005.nii.gz").read_bytes()[:2000])
    nib.save(nib.Nifti1Image(np.zeros((32, 32), np.int16), np.eye(4)), str(folder / "flat.nii.gz"))
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((24, 24, 12)).astype(np.float32), np.eye(4)),
             str(folder / "probabilities.nii.gz"))
    (folder / "notes.dcm").write_text("not DICOM: not a case at all\n")
    write_radiograph(folder / "xray" / "cr.dcm", np.zeros((16, 16), np.uint16) + 5, modality="CR")

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    watched = [logging.getLogger(n) for n in ("common", "monai", "ignite")]
    for logger in watched:
        logger.addHandler(handler)
    try:
        out = tmp_path / "out"
        run_workflow([CONFIGS / "inference.yaml"], "infer", dataset_dir=str(folder), output_dir=str(out),
                     ckpt_path=str(trained), **FAST)
    finally:
        for logger in watched:
            logger.removeHandler(handler)
    log = "\n".join(r.getMessage() for r in records)
    assert sorted(p.name for p in out.glob("*_seg.nii.gz")) == ["lung_005_2_seg.nii.gz", "lung_005_seg.nii.gz"]
    skipped = [line for line in log.splitlines() if line.startswith("skipped case")]
    assert len(skipped) == 4, skipped
    for name, reason in (("truncated.nii.gz", "truncated or corrupt"), ("flat.nii.gz", "2D"),
                         ("probabilities.nii.gz", "HU"), ("xray", "CR")):
        assert sum(name in line and reason in line for line in skipped) == 1, (name, skipped)
    assert "batch done: 2 scan(s) written, 4 skipped" in log
    for identifier in ("DOE^JOHN", "MRN12345", "St Elsewhere", "Doe^Jane", "SECRET-ID-123"):
        assert identifier not in log, identifier


@pytest.mark.parametrize("jitter", [0.0, 0.25])
def test_position_jitter_moves_a_narrow_chest_about_in_the_patch(jitter):
    """A chest narrower than a patch sits at one place in every patch unless ``position_jitter`` pads it."""
    from monai.transforms import Compose

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.yaml"))
    parser.update({"bundle_root": str(BUNDLE), "patch_size": [32, 32, 32], "position_jitter": jitter,
                   "samples_per_scan": 1})
    random_transforms = parser.get_parsed_content("train#random_transforms")
    pad_and_crop = Compose([t for t in random_transforms if type(t).__name__ in ("SpatialPadd", "RandSpatialCropSamplesd")])
    pad_and_crop.set_random_state(seed=0)
    # a "chest" 28 voxels wide in a 30-voxel volume (air around it), a "lung" inside it
    image = torch.zeros(1, 30, 30, 30)
    image[:, 1:29, 1:29, 1:29] = 0.5
    label = torch.zeros(1, 30, 30, 30)
    label[:, 8:14, 10:20, 10:20] = 1
    centres = []
    for _ in range(12):
        patch = pad_and_crop({"image": image.clone(), "label": label.clone()})[0]
        assert tuple(patch["image"].shape[1:]) == (32, 32, 32)
        lung = torch.nonzero(patch["label"][0] > 0).float()
        centres.append(lung.mean(0).numpy())
        # the edge padding is air: it never copies the lung
        assert float(patch["label"].sum()) <= float(label.sum())
        assert float(patch["image"].min()) == 0.0
    spread = np.ptp(np.asarray(centres), axis=0)
    if jitter == 0:
        assert np.all(spread == 0)  # the same place in every patch: what the network learnt
    else:
        assert np.all(spread >= 4)  # padded from 30 to 48 voxels (32 + 2 x 0.25 x 32): 9 a side
