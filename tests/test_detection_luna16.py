"""LUNA16 layout -> detection datalist (common.data.luna16) and the lung crop (CropToLungsd)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from common.data.luna16 import build_datalist, load_datalist, prepare, read_annotations
from common.detection.transforms import CropToLungsd, DatalistBoxesd, lung_bounding_box
from common.errors import InputDataError
from zoo_tools.nodule_phantom import make_nodule_phantom, write_luna16_phantoms


@pytest.fixture(scope="module")
def luna_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("luna")
    write_luna16_phantoms(root, num_scans=4, seed=3, nodules_per_scan=[2, 1, 0, 1], shape=(64, 56, 40))
    # a mass above 30 mm on scan 0, a lung-mask file that must not be taken for a scan
    with open(root / "annotations.csv", "a") as f:
        f.write("1.2.826.0.1.3680043.8.498.3.0,0.0,0.0,0.0,35.0,5\n")
    (root / "seg-lungs-LUNA16").mkdir()
    (root / "seg-lungs-LUNA16" / "1.2.826.0.1.3680043.8.498.3.0.mhd").write_text("not a scan")
    return root


def test_datalist_boxes_masses_and_negatives(luna_root):
    entries = {e["seriesuid"]: e for e in build_datalist(luna_root)}
    assert len(entries) == 4
    first = entries["1.2.826.0.1.3680043.8.498.3.0"]
    assert first["image"] == "subset0/1.2.826.0.1.3680043.8.498.3.0.mhd"
    assert len(first["box"]) == 2 and first["label"] == [0, 0]
    assert first["ignore_box"] == [[0.0, 0.0, 0.0, 35.0, 35.0, 35.0]]  # > 30 mm: a mass, ignored
    assert all(1 <= m <= 5 for m in first["malignancy"])
    box = first["box"][0]
    assert box[3] == box[4] == box[5]  # cccwhd: a cube of the diameter
    assert entries["1.2.826.0.1.3680043.8.498.3.2"]["box"] == []  # a scan without nodules is kept


def test_annotations_from_csv_match_the_phantom_geometry(luna_root):
    rows = read_annotations(luna_root / "annotations.csv")
    from common.io.mhd import read_mhd

    uid = "1.2.826.0.1.3680043.8.498.3.1"
    array, affine_ras, _ = read_mhd(luna_root / "subset0" / f"{uid}.mhd")
    (nodule,) = rows[uid]
    lps = np.array([nodule["x"], nodule["y"], nodule["z"], 1.0])
    ijk = np.linalg.solve(affine_ras, np.diag([-1, -1, 1, 1]) @ lps)[:3]
    assert array[tuple(np.round(ijk).astype(int))] > -200  # solid nodule (30 HU + noise), not lung (-850)


def test_prepare_writes_split_datalist(luna_root, tmp_path):
    out = prepare(luna_root, tmp_path / "datalist.json", val_fraction=0.25, seed=1)
    content = json.loads(Path(out).read_text())
    assert len(content["training"]) == 3 and len(content["validation"]) == 1
    entries = load_datalist(luna_root, out, "all")
    assert all(Path(e["image"]).is_file() for e in entries)
    # without a datalist the same layout is read directly
    assert len(load_datalist(luna_root, "", "training", val_fraction=0.25, seed=1)) == 3


def test_splits_from_dataset_yaml(luna_root, tmp_path):
    root = tmp_path / "copy"
    import shutil

    shutil.copytree(luna_root, root)
    uids = sorted(e["seriesuid"] for e in build_datalist(root))
    (root / "dataset.yaml").write_text(
        f"splits:\n  train: [{uids[0]}, {uids[1]}]\n  val: [{uids[2]}]\n  test: [{uids[3]}]\n"
    )
    content = json.loads(Path(prepare(root, tmp_path / "dl.json")).read_text())
    assert [e["seriesuid"] for e in content["test"]] == [uids[3]]
    assert len(content["training"]) == 2 and len(content["validation"]) == 1
    # inference pointed at that datalist runs on its test scans
    from common.detection.inference import list_inputs

    assert [Path(e["image"]).name for e in list_inputs(tmp_path / "dl.json")] == [f"{uids[3]}.mhd"]


def test_missing_column_and_bad_value_name_the_csv(tmp_path):
    write_luna16_phantoms(tmp_path, num_scans=1, shape=(48, 40, 32))
    (tmp_path / "annotations.csv").write_text("seriesuid,coordX,coordY,coordZ\nx,1,2,3\n")
    with pytest.raises(InputDataError, match=r"annotations.csv: missing column\(s\) diameter_mm"):
        build_datalist(tmp_path)
    (tmp_path / "annotations.csv").write_text("seriesuid,coordX,coordY,coordZ,diameter_mm\nx,1,2,abc,5\n")
    with pytest.raises(InputDataError, match="line 2"):
        build_datalist(tmp_path)
    with pytest.raises(InputDataError, match="no .mhd"):
        build_datalist(tmp_path / "empty_does_not_exist")


def test_datalist_boxes_shapes():
    d = DatalistBoxesd()({"box": [], "label": []})
    assert d["box"].shape == (0, 6) and d["label"].shape == (0,) and d["malignancy"].shape == (0,)
    d = DatalistBoxesd()({"box": [[1, 2, 3, 4, 4, 4]], "label": [0], "malignancy": [float("nan")]})
    assert d["malignancy"].tolist() == [0]


def test_lung_crop_keeps_nodules_and_shrinks_volume():
    rng = np.random.default_rng(0)
    phantom = make_nodule_phantom(rng, shape=(96, 80, 48), num_nodules=3)
    image = MetaTensor(
        torch.as_tensor(phantom.hu, dtype=torch.float32)[None], affine=torch.as_tensor(phantom.affine_ras())
    )
    out = CropToLungsd("image")({"image": image})["image"]
    assert 0 < out.shape[1] < 96 and out.shape[2] < 80
    start, end = np.asarray(out.meta["lung_crop"])
    inv = np.linalg.inv(phantom.affine_ras())
    for centre, _, _ in phantom.nodules:
        ijk = (inv @ np.append(centre * [-1, -1, 1], 1.0))[:3]
        assert np.all(ijk >= start) and np.all(ijk < end)
        # the cropped image's affine still maps the nodule to a nodule voxel
        local = np.linalg.solve(out.affine.numpy(), np.append(centre * [-1, -1, 1], 1.0))[:3]
        assert out[0][tuple(np.round(local).astype(int))] > -200


def test_lung_crop_when_the_airway_reaches_air_beyond_the_scan():
    """Air slices past the end of the scan (padding) joined to the trachea are not the air around the patient."""
    hu = np.full((64, 64, 40), -1000.0, np.float32)
    yy, xx = np.mgrid[:64, :64]
    body = (xx - 32) ** 2 + (yy - 32) ** 2 < 28**2
    hu[body] = 20.0
    hu[12:28, 20:44, 8:30] = -850.0  # right lung
    hu[36:52, 20:44, 8:30] = -850.0  # left lung
    hu[18:22, 30:34, 30:40] = -1000.0  # trachea from the right lung up to the last slice of the scan
    padded = np.concatenate([hu, np.full((64, 64, 4), -1000.0, np.float32)], axis=2)
    for volume in (hu, padded):
        start, end = lung_bounding_box(volume, (4.0, 4.0, 4.0), margin_mm=0.0)
        assert start[0] <= 12 and end[0] >= 52, (start, end)  # both lungs
        assert start[2] <= 8 and end[2] <= 40


def test_no_lungs_keeps_whole_volume():
    hu = np.zeros((20, 20, 10), np.float32)  # soft tissue only
    assert lung_bounding_box(hu, (1.0, 1.0, 1.0)) is None
    out = CropToLungsd("image")({"image": MetaTensor(torch.as_tensor(hu)[None])})["image"]
    assert tuple(out.shape[1:]) == (20, 20, 10)
