"""The example bundle runs end to end with the documented commands: train, evaluate, infer, export, ONNX infer.

It is the reference the zoo's bundles copy, so this proves its configs work, not only that they parse.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "tests" / "example_bundle"


def _volume(rng: np.random.Generator, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1).astype(np.float32)
    centre = np.array([rng.uniform(0.35, 0.65) * s for s in shape])
    radii = rng.uniform(4.0, 8.0, size=3)
    label = (((grid - centre) / radii) ** 2).sum(-1) <= 1.0
    image = rng.normal(100.0, 20.0, size=shape).astype(np.float32) + 150.0 * label
    return image, label.astype(np.uint8)


def _write_dataset(root: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    affine = np.diag([1.5, 1.5, 2.0, 1.0])
    lists: dict[str, list] = {"training": [], "validation": [], "testing": []}
    plan = [("training", "Tr", (32, 32, 32))] * 8 + [("validation", "Tr", (40, 32, 36))] * 2 + [("testing", "Ts", (36, 40, 32))] * 2
    for i, (split, suffix, shape) in enumerate(plan):
        image, label = _volume(rng, shape)
        (root / f"images{suffix}").mkdir(parents=True, exist_ok=True)
        (root / f"labels{suffix}").mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(image, affine), root / f"images{suffix}" / f"case{i:02d}.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), root / f"labels{suffix}" / f"case{i:02d}.nii.gz")
        lists[split].append({"image": f"images{suffix}/case{i:02d}.nii.gz", "label": f"labels{suffix}/case{i:02d}.nii.gz"})
    (root / "dataset.json").write_text(json.dumps(lists, indent=2))
    return root


@pytest.mark.slow
def test_train_evaluate_infer_export_onnx_infer(tmp_path):
    from monai.bundle import run

    bundle = Path(shutil.copytree(EXAMPLE, tmp_path / "example_bundle"))
    data = _write_dataset(tmp_path / "data")
    configs = bundle / "configs"
    # train: what `python -m monai.bundle run --config_file configs/train.yaml --bundle_root B --dataset_dir D
    # --logging_file configs/logging.conf` runs (in this process, to spare a second torch/MONAI import)
    run(config_file=str(configs / "train.yaml"), bundle_root=str(bundle), dataset_dir=str(data),
        logging_file=str(configs / "logging.conf"), max_epochs=4, val_interval=2, learning_rate=0.01)
    assert (bundle / "models" / "model.pt").is_file()
    assert list((bundle / "eval").glob("events.out.tfevents.*")), "TensorBoard logs expected in output_dir"

    # evaluate: train.yaml + evaluate.yaml writes MONAI's metric files (MetricsSaver)
    run(config_file=[str(configs / "train.yaml"), str(configs / "evaluate.yaml")], bundle_root=str(bundle),
        dataset_dir=str(data), logging_file=str(configs / "logging.conf"))
    metrics = dict(line.split(",") for line in (bundle / "eval" / "metrics.csv").read_text().splitlines())
    assert float(metrics["val_mean_dice"]) > 0.5, metrics  # a bright blob is easy: well above chance
    rows = (bundle / "eval" / "val_mean_dice_raw.csv").read_text().splitlines()[1:]
    assert {Path(r.split(",")[0]).name for r in rows} == {"case08.nii.gz", "case09.nii.gz"}

    # inference with PyTorch
    run(config_file=str(configs / "inference.yaml"), bundle_root=str(bundle), dataset_dir=str(data),
        output_dir=str(tmp_path / "pred_torch"), logging_file=str(configs / "logging.conf"))
    # export (parity-checked) and inference with ONNX Runtime, same pre/post-processing
    from common.export import export_bundle

    assert export_bundle(bundle)["passed"]
    run(config_file=[str(configs / "inference.yaml"), str(configs / "inference_onnx.yaml")], bundle_root=str(bundle),
        dataset_dir=str(data), output_dir=str(tmp_path / "pred_onnx"), logging_file=str(configs / "logging.conf"))

    for case in ("case10", "case11"):
        torch_seg = nib.load(tmp_path / "pred_torch" / f"{case}_seg.nii.gz")
        onnx_seg = nib.load(tmp_path / "pred_onnx" / f"{case}_seg.nii.gz")
        source = nib.load(data / "imagesTs" / f"{case}.nii.gz")
        truth = np.asarray(nib.load(data / "labelsTs" / f"{case}.nii.gz").dataobj)
        a, b = np.asarray(torch_seg.dataobj), np.asarray(onnx_seg.dataobj)
        assert a.shape == source.shape and np.allclose(torch_seg.affine, source.affine)
        assert (a == b).mean() > 0.999  # ties at the argmax boundary may flip a voxel or two
        dice = 2 * np.logical_and(a == 1, truth == 1).sum() / max((a == 1).sum() + (truth == 1).sum(), 1)
        assert dice > 0.5, (case, dice)
