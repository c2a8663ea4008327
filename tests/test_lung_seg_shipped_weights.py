"""The shipped weights of ``lung_ct_segmentation`` (trained on nine real LCTSC chest CTs).

* (The file's record, safe strict loading and the refusal to train over it: tests/test_shipped_weights.py.)
* ``inference.yaml`` with no checkpoint override (what a user runs on a fresh clone) segments a synthetic
  chest CT phantom with a couch, stored once as NIfTI in RAS order and once as a DICOM series (LPS
  order), with the right lung labelled 1 and the left lung 2 in both.
* The scanner world around the patient, on variants of that phantom: arms down beside the chest, a field
  of view that cuts through both lungs, only part of the chest, and the voxel order flipped on one axis
  (a left-handed affine); each still gives both lungs on the right sides.
* Where the real data is present (``../shared/data/lctsc_train9``; skipped otherwise): one real case run
  through ``inference.yaml`` gives both lungs on the right sides. That case is in the shipped model's
  training set, so this only checks that nothing between the file and the mask is broken; the model
  card's cross-validation has the held-out figures.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import bundle_runner
import nibabel as nib
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "lung_ct_segmentation"
CONFIGS = BUNDLE / "configs"
WEIGHTS = BUNDLE / "models" / "model.pt"
REAL_DATA = Path(os.environ.get("LCTSC_TRAIN9", REPO.parent / "shared" / "data" / "lctsc_train9"))


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


@pytest.fixture(scope="module")
def phantom_case(tmp_path_factory) -> tuple[Path, Path]:
    from common.synthetic.ct_phantom import generate_lung_ct

    data = tmp_path_factory.mktemp("phantom")
    generate_lung_ct(
        data,
        {"num_train": 0, "num_val": 0, "num_test": 1, "write_mhd": False, "dicom_cases": "test",
         "phantom": {"matrix": 192, "slice_spacing_mm": [2.5, 2.5], "table": True}},
        seed=5,
    )
    scans = tmp_path_factory.mktemp("scans")
    case = sorted((data / "imagesTs").glob("*.nii.gz"))[0]
    name = case.name[: -len(".nii.gz")]
    shutil.copy(case, scans / case.name)
    shutil.copytree(data / "dicom" / name, scans / f"{name}_dicom")
    return scans, data / "labelsTs" / case.name


def test_default_inference_segments_a_phantom_as_nifti_and_dicom(phantom_case, tmp_path):
    scans, label_path = phantom_case
    out = tmp_path / "out"
    bundle_runner.run_workflow(BUNDLE, [CONFIGS / "inference.yaml"], "infer", dataset_dir=str(scans), output_dir=str(out))
    label = nib.as_closest_canonical(nib.load(str(label_path)))
    ref = np.asarray(label.dataobj)
    name = label_path.name[: -len(".nii.gz")]
    for mask_name in (f"{name}_seg.nii.gz", f"{name}_dicom_seg.nii.gz"):
        mask = nib.as_closest_canonical(nib.load(str(out / mask_name)))
        assert mask.shape == label.shape and np.allclose(mask.affine, label.affine, atol=1e-3)
        pred = np.asarray(mask.dataobj)
        for side in (1, 2):  # 1 right, 2 left: a swap would give Dice near 0
            assert _dice(pred == side, ref == side) > 0.9, (mask_name, side)


def _variants(image_path: Path, label_path: Path, folder: Path) -> dict[str, Path]:
    """Scanner-world variants of one phantom, each written with its own reference label."""
    image, label = nib.load(str(image_path)), nib.load(str(label_path))
    hu = np.asarray(image.dataobj).astype(np.int16)
    lungs = np.asarray(label.dataobj) > 0
    xs = np.flatnonzero(lungs.any(axis=(1, 2)))
    zs = np.flatnonzero(lungs.any(axis=(0, 1)))
    body = hu > -500
    bx = np.flatnonzero(body.any(axis=(1, 2)))
    by = np.flatnonzero(body.any(axis=(0, 2)))
    x, y = np.mgrid[: hu.shape[0], : hu.shape[1]]
    arms = np.zeros(hu.shape[:2], bool)
    for cx in (bx[0] - 14, bx[-1] + 14):  # upper arms beside the chest wall, soft tissue with a bone
        arms |= ((x - cx) / 16.0) ** 2 + ((y - 0.5 * (by[0] + by[-1])) / 22.0) ** 2 < 1
    with_arms = hu.copy()
    with_arms[arms] = 40
    cases = {
        "arms_down": (nib.Nifti1Image(with_arms, image.affine), label),
        "truncated_fov": (image.slicer[xs[0] + 6 : xs[-1] - 5], label.slicer[xs[0] + 6 : xs[-1] - 5]),
        "part_of_chest": (image.slicer[:, :, zs[len(zs) // 3] : zs[2 * len(zs) // 3]],
                          label.slicer[:, :, zs[len(zs) // 3] : zs[2 * len(zs) // 3]]),
        "flipped_axis": (image.slicer[::-1], label.slicer[::-1]),
    }
    refs = {}
    for name, (img, lab) in cases.items():
        nib.save(img, str(folder / f"{name}.nii.gz"))
        refs[name] = folder.parent / f"{name}_label.nii.gz"
        nib.save(lab, str(refs[name]))
    return refs


def test_arms_down_truncated_fov_part_of_chest_and_flipped_axis(phantom_case, tmp_path):
    scans, label_path = phantom_case
    image_path = scans / label_path.name
    folder = tmp_path / "variants"
    folder.mkdir()
    refs = _variants(image_path, label_path, folder)
    out = tmp_path / "out"
    bundle_runner.run_workflow(BUNDLE, [CONFIGS / "inference.yaml"], "infer", dataset_dir=str(folder), output_dir=str(out))
    for name, ref_path in refs.items():
        ref_img = nib.load(str(ref_path))
        mask_img = nib.load(str(out / f"{name}_seg.nii.gz"))
        assert mask_img.shape == ref_img.shape and np.allclose(mask_img.affine, ref_img.affine, atol=1e-3), name
        ref, pred = np.asarray(ref_img.dataobj), np.asarray(mask_img.dataobj)
        for side in (1, 2):
            assert _dice(pred == side, ref == side) > 0.85, (name, side, _dice(pred == side, ref == side))


@pytest.mark.realdata
@pytest.mark.skipif(not (REAL_DATA / "Case_001_ct.nii.gz").is_file(), reason=f"no real LCTSC data at {REAL_DATA}")
def test_real_ct_through_inference_yaml(tmp_path):
    from common.segmentation.transforms import split_binary_lungs

    scans = tmp_path / "scans"
    scans.mkdir()
    shutil.copy(REAL_DATA / "Case_001_ct.nii.gz", scans)
    out = tmp_path / "out"
    bundle_runner.run_workflow(BUNDLE, [CONFIGS / "inference.yaml"], "infer", dataset_dir=str(scans), output_dir=str(out))
    mask_img = nib.load(str(out / "Case_001_ct_seg.nii.gz"))
    label_img = nib.load(str(REAL_DATA / "Case_001_lung.nii.gz"))
    assert np.allclose(mask_img.affine, label_img.affine, atol=1e-3)
    ref = split_binary_lungs(np.asarray(label_img.dataobj) > 0, label_img.affine)
    pred = np.asarray(mask_img.dataobj)
    assert _dice(pred > 0, ref > 0) > 0.95
    for side in (1, 2):
        assert _dice(pred == side, ref == side) > 0.93
