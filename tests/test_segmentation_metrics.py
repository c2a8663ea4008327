"""Unit tests of common.segmentation.metrics and the evaluation report writer."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from common.segmentation.metrics import LungDice, dice, hausdorff95, lung_metrics, voxel_spacing
from common.segmentation.report import LungSegmentationReport, case_name, summarise


def sphere(shape, centre, radius_mm, spacing):
    grid = np.stack(np.mgrid[: shape[0], : shape[1], : shape[2]], -1) * np.asarray(spacing)
    return np.linalg.norm(grid - np.asarray(centre), axis=-1) <= radius_mm


def test_dice_values():
    a = np.zeros((4, 4, 4), bool)
    b = np.zeros((4, 4, 4), bool)
    a[:2] = True
    b[1:3] = True
    assert dice(a, b) == pytest.approx(0.5)
    assert dice(a, a) == 1.0
    assert math.isnan(dice(np.zeros_like(a), np.zeros_like(a)))


def test_hausdorff95_in_millimetres_with_anisotropic_spacing():
    spacing = (1.0, 1.0, 2.0)
    ref = sphere((60, 60, 30), (30, 30, 30), 20.0, spacing)
    pred = sphere((60, 60, 30), (30, 30, 30), 24.0, spacing)
    hd = hausdorff95(pred, ref, spacing)
    assert 3.0 <= hd <= 5.0  # radius differs by 4 mm
    assert hausdorff95(ref, ref, spacing) == 0.0
    assert math.isnan(hausdorff95(np.zeros_like(ref), ref, spacing))


def test_lung_metrics_per_lung_and_volumes():
    spacing = (2.0, 2.0, 2.5)
    ref = np.zeros((40, 30, 30), np.uint8)
    ref[5:18, 5:25, 5:25] = 2  # left lung (low first index in RAS)
    ref[22:35, 5:25, 5:25] = 1
    pred = ref.copy()
    pred[22:24] = 0  # right lung loses two planes
    m = lung_metrics(pred, ref, spacing)
    assert m["left_lung"]["dice"] == 1.0
    right_ref = 13 * 20 * 20
    assert m["right_lung"]["dice"] == pytest.approx(2 * 11 * 400 / (11 * 400 + right_ref))
    assert m["right_lung"]["volume_diff_ml"] == pytest.approx(-2 * 400 * 10.0 / 1000.0)
    assert m["both_lungs"]["volume_ref_ml"] == pytest.approx(2 * right_ref * 10.0 / 1000.0)
    assert m["right_lung"]["hd95_mm"] > 0.0
    with pytest.raises(ValueError):
        lung_metrics(pred[:-1], ref, spacing)


def test_voxel_spacing_from_rotated_affine():
    theta = np.deg2rad(30)
    rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([0.7, 0.8, 1.5])
    assert np.allclose(voxel_spacing(affine), [0.7, 0.8, 1.5])


def test_lung_dice_ignite_metric():
    ref = torch.zeros((1, 10, 10, 10), dtype=torch.uint8)
    ref[0, :5] = 1
    ref[0, 5:] = 2
    pred = ref.clone()
    pred[0, 4] = 2  # one plane of the right lung called left
    metric = LungDice()
    metric.reset()
    metric.update(([pred, ref], [ref, ref]))
    expected_case1 = (2 * 40 / 90 + 2 * 50 / 110) / 2
    assert metric.compute() == pytest.approx((expected_case1 + 1.0) / 2)


def _case(path, pred, ref, affine):
    meta = {"filename_or_obj": path}
    return {
        "pred": MetaTensor(torch.from_numpy(pred)[None], affine=torch.as_tensor(affine), meta=dict(meta)),
        "label": MetaTensor(torch.from_numpy(ref)[None], affine=torch.as_tensor(affine), meta={"filename_or_obj": "l.nii.gz"}),
        "image": MetaTensor(torch.zeros(1, 2, 2, 2), meta=dict(meta)),
    }


def test_report_json(tmp_path):
    affine = np.diag([2.0, 2.0, 2.5, 1.0])
    ref = np.zeros((20, 12, 12), np.uint8)
    ref[2:9, 2:10, 2:10] = 2
    ref[11:18, 2:10, 2:10] = 1
    worse = ref.copy()
    worse[11:13] = 0
    report = LungSegmentationReport(tmp_path / "eval", png_name="")

    class State:
        output = [_case("/data/imagesTs/case_000.nii.gz", ref, ref, affine), _case("/d/dicom/case_001", worse, ref, affine)]

    class Engine:
        state = State()

    report.reset()
    report.iteration_completed(Engine())
    result = report.write()
    on_disk = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert on_disk["n_cases"] == 2
    assert [c["case"] for c in on_disk["cases"]] == ["case_000", "case_001"]
    assert on_disk["cases"][0]["dice"] == 1.0
    assert on_disk["cases"][1]["metrics"]["left_lung"]["dice"] == 1.0
    assert on_disk["cases"][1]["metrics"]["right_lung"]["dice"] < 1.0
    assert on_disk["mean"]["dice"] == pytest.approx(result["mean"]["dice"])
    assert on_disk["mean"]["dice"] == pytest.approx((1.0 + on_disk["cases"][1]["dice"]) / 2)
    for key in ("dice_right_lung", "dice_left_lung", "dice_both_lungs", "hd95_mm_right_lung", "volume_diff_ml_both_lungs"):
        assert key in on_disk["mean"]
    assert on_disk["cases"][1]["metrics"]["right_lung"]["volume_diff_ml"] == pytest.approx(-2 * 64 * 10.0 / 1000)


def test_summarise_skips_undefined_values():
    cases = [
        {"dice": 1.0, "metrics": {s: {"dice": 1.0, "hd95_mm": 0.0, "volume_diff_ml": 1.0} for s in ("right_lung", "left_lung", "both_lungs")}},
        {"dice": 0.5, "metrics": {s: {"dice": 0.5, "hd95_mm": math.nan, "volume_diff_ml": 3.0} for s in ("right_lung", "left_lung", "both_lungs")}},
    ]
    s = summarise(cases)
    assert s["mean"]["dice"] == 0.75 and s["mean"]["hd95_mm_left_lung"] == 0.0 and s["mean"]["volume_diff_ml_right_lung"] == 2.0


@pytest.mark.parametrize(
    "path,name",
    [("/a/b/case_1.nii.gz", "case_1"), ("x/scan.mhd", "scan"), ("/dicom/series_7/", "series_7"), ("s.NII", "s")],
)
def test_case_name(path, name):
    assert case_name(path) == name


@pytest.mark.parametrize("lps_order", [False, True])
def test_overlays_are_radiological(tmp_path, lps_order):
    """Patient's right on the viewer's left, anterior at the top, superior at the top."""
    from common.segmentation.report import overlay_slices, plot_overlays

    label = np.zeros((20, 16, 12), np.uint8)
    label[12:18, 2:14, 2:10] = 1  # right lung: high first index in RAS
    label[2:8, 2:14, 2:10] = 2
    label[2:8, 12:14, 2:10] = 3  # marker: anterior part of the left lung
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    if lps_order:
        label = label[::-1, ::-1].copy()
        affine = np.array([[-2.0, 0, 0, 38], [0, -2.0, 0, 30], [0, 0, 3.0, 0], [0, 0, 0, 1]])
    views = overlay_slices(label.astype(np.float32), label, label, affine)
    axial = views["axial"][1]
    cols = axial.shape[1]
    assert (axial[:, : cols // 2] == 1).any() and not (axial[:, : cols // 2] == 2).any()
    rows_with_marker = np.nonzero((axial == 3).any(axis=1))[0]
    assert rows_with_marker.max() < axial.shape[0] // 2  # anterior at the top
    assert views["aspect"]["coronal"] == pytest.approx(1.5)
    path = plot_overlays(tmp_path / "o.png", [("case", views)])
    assert path.stat().st_size > 1000
