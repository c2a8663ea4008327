"""Ground truth of the synthetic chest CT phantoms (lung_ct) and nodule sets (nodules)."""

from __future__ import annotations

import csv
import filecmp
import math
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import yaml

from common.errors import InputDataError
from common.io.mhd import read_mhd
from common.synthetic.config import load_config, make_rng
from common.synthetic.ct_phantom import LUNG_CT_DEFAULTS, add_ct_noise, generate_lung_ct, make_chest_phantom
from common.synthetic.nodules import NODULES_DEFAULTS, generate_nodules, malignancy_probabilities

REPO = Path(__file__).resolve().parents[1]

LUNG_CFG = {
    "num_train": 2,
    "num_val": 1,
    "num_test": 1,
    "phantom": {"matrix": 64, "slice_spacing_mm": [5.0, 6.0]},
}
NODULE_CFG = {
    "num_train": 2,
    "num_val": 0,
    "num_test": 1,
    "candidates_per_scan": 5,
    "nodule": {"no_nodule_probability": 0.0, "nodules_per_scan": [2, 4], "min_diameter_voxels": 1.8},
    "phantom": {"in_plane_spacing_mm": 3.0, "slice_spacing_mm": [3.0, 3.0], "vessel_generations": 6},
}


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("SYNTH_NO_PROGRESS", "1")


@pytest.fixture(scope="module")
def lung_sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("lung_ct")
    a = generate_lung_ct(root / "a", config=LUNG_CFG, seed=0)
    b = generate_lung_ct(root / "b", config=LUNG_CFG, seed=0)
    c = generate_lung_ct(root / "c", config=LUNG_CFG, seed=1)
    return a, b, c


@pytest.fixture(scope="module")
def nodule_sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("nodules")
    a = generate_nodules(root / "a", config=NODULE_CFG, seed=0)
    b = generate_nodules(root / "b", config=NODULE_CFG, seed=0)
    c = generate_nodules(root / "c", config=NODULE_CFG, seed=3)
    return a, b, c


def _all_files(root: Path) -> list[Path]:
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


def _cases(root: Path) -> list[dict]:
    import json

    dataset = json.loads((root / "dataset.json").read_text())
    return dataset["training"] + dataset["validation"] + dataset["testing"]


def _read_dicom_hu(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """Independent reader: DICOM series -> (X, Y, Z) HU with a RAS affine (axial series only)."""
    slices = [pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm"))]
    slices.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
    vol = np.stack([ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in slices], -1)
    vol = vol.transpose(1, 0, 2)  # (column = +L, row = +P, slice = +S)
    first = slices[0]
    row_sp, col_sp = (float(v) for v in first.PixelSpacing)
    dz = float(slices[1].ImagePositionPatient[2]) - float(first.ImagePositionPatient[2])
    lps = np.eye(4)
    lps[:3, :3] = np.diag([col_sp, row_sp, dz])
    lps[:3, 3] = [float(v) for v in first.ImagePositionPatient]
    return vol, np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def _to_ras_index(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flip axes so that the (diagonal) affine has positive steps."""
    affine = affine.copy()
    for axis in range(3):
        if affine[axis, axis] < 0:
            array = np.flip(array, axis)
            affine[:3, 3] += affine[:3, axis] * (array.shape[axis] - 1)
            affine[:3, axis] *= -1
    return np.ascontiguousarray(array), affine


# ------------------------------------------------------------------------------------------------
# the phantom
# ------------------------------------------------------------------------------------------------
def test_phantom_structure_and_orientation():
    phantom = make_chest_phantom(make_rng(5), {"matrix": 72, "slice_spacing_mm": [4.0, 4.0]}, add_noise=False)
    assert phantom.hu.shape == phantom.lung_label.shape == phantom.bone_mask.shape
    assert phantom.hu.dtype == np.float32 and phantom.lung_label.dtype == np.uint8
    assert nib.aff2axcodes(phantom.affine) == ("R", "A", "S")
    assert set(np.unique(phantom.lung_label)) == {0, 1, 2}
    # bone is bone, lungs are air-filled, the body is mostly soft tissue and fat
    assert np.mean(phantom.hu[phantom.bone_mask] > 150) > 0.95
    lung_hu = phantom.hu[phantom.lung_label > 0]
    assert -900 < np.median(lung_hu) < -700
    soft = phantom.hu[phantom.body_mask & (phantom.lung_label == 0) & ~phantom.bone_mask & ~phantom.airway_mask]
    assert np.mean((soft > -150) & (soft < 120)) > 0.85
    # outside the body (and off the table) is air
    assert np.median(phantom.hu[~phantom.body_mask]) == pytest.approx(-1000.0)
    # the trachea is air but not lung
    assert phantom.airway_mask.any()
    assert not (phantom.lung_label[phantom.airway_mask] > 0).any()


def test_phantom_right_lung_is_on_the_patients_right():
    for seed in range(3):
        phantom = make_chest_phantom(make_rng(seed), {"matrix": 48, "slice_spacing_mm": [6.0, 6.0]})
        world = {}
        for label in (1, 2):
            ijk = np.argwhere(phantom.lung_label == label)
            world[label] = phantom.voxel_to_world(ijk.mean(0))
        # RAS: +x points to the patient's right, so the right lung (1) has the larger x
        assert world[1][0] > world[2][0] + 40.0
        # the heart is left of the midline: the left lung is the smaller one
        assert (phantom.lung_label == 2).sum() < (phantom.lung_label == 1).sum()


def test_lung_ct_phantoms_are_as_deep_as_real_chests():
    """At their widest slice the lung_ct phantoms' lungs fill most of the chest's depth, beside the spine too.

    In the nine LCTSC CTs the lungs' antero-posterior extent is 0.70-0.83 of the body's there (median 0.74,
    ``scripts/chest_wall_thickness.py``); with the paraspinal muscles lining the whole back of the cavity
    (``posterior_gutters: false``, the nodule and X-ray sets) the phantoms' median is about 0.6.
    """

    def depth_ratios(overrides: dict) -> list[float]:
        ratios = []
        for seed in range(6):
            cfg = {**LUNG_CT_DEFAULTS["phantom"], "matrix": 80, "slice_spacing_mm": [5.0, 5.0], **overrides}
            phantom = make_chest_phantom(make_rng(seed), cfg, add_noise=False)
            lungs = phantom.lung_label > 0
            k = int(np.argmax(lungs.sum((0, 1))))
            lung_rows = np.flatnonzero(lungs[:, :, k].any(0))
            body_rows = np.flatnonzero(phantom.body_mask[:, :, k].any(0))
            ratios.append((lung_rows[-1] - lung_rows[0] + 1) / (body_rows[-1] - body_rows[0] + 1))
        return ratios

    deep = depth_ratios({})
    assert np.median(deep) >= 0.66, deep
    shallow = depth_ratios({"posterior_gutters": False, "body_aspect": [0.62, 0.76]})
    assert np.median(shallow) < 0.62 and np.all(np.asarray(deep) > np.asarray(shallow)), shallow


def test_phantom_noise_level_and_correlation():
    phantom = make_chest_phantom(make_rng(7), {"matrix": 64, "slice_spacing_mm": [5.0, 5.0], "noise_sd_hu": [20.0, 20.0]}, add_noise=False)
    clean = phantom.hu.copy()
    add_ct_noise(phantom, make_rng(8), correlation_px=0.8)
    inside = (clean > -900) & (clean < 1000)  # away from the -1024 clip
    noise = (phantom.hu - clean)[inside]
    assert 0.8 * 20.0 < noise.std() < 1.2 * 20.0
    assert np.all(phantom.hu == np.rint(phantom.hu))
    diff = phantom.hu - clean
    in_plane = np.corrcoef(diff[:-1, :, :].ravel(), diff[1:, :, :].ravel())[0, 1]
    across = np.corrcoef(diff[:, :, :-1].ravel(), diff[:, :, 1:].ravel())[0, 1]
    assert in_plane > 0.3
    assert abs(across) < 0.1


def test_phantom_seeded_and_varied():
    cfg = {"matrix": 40, "slice_spacing_mm": [8.0, 8.0]}
    a = make_chest_phantom(make_rng(11), cfg)
    b = make_chest_phantom(make_rng(11), cfg)
    c = make_chest_phantom(make_rng(12), cfg)
    assert np.array_equal(a.hu, b.hu) and np.array_equal(a.lung_label, b.lung_label)
    assert a.params != c.params


# ------------------------------------------------------------------------------------------------
# lung_ct: MSD layout
# ------------------------------------------------------------------------------------------------
def test_lung_ct_layout(lung_sets):
    import json

    root = lung_sets[0]
    dataset = json.loads((root / "dataset.json").read_text())
    assert dataset["labels"] == {"0": "background", "1": "right lung", "2": "left lung"}
    assert dataset["modality"] == {"0": "CT"}
    assert dataset["numTraining"] == 3 and dataset["numTest"] == 1
    assert len(dataset["training"]) == 2 and len(dataset["validation"]) == 1 and len(dataset["testing"]) == 1
    for item in dataset["training"] + dataset["validation"]:
        assert item["image"].startswith("imagesTr/") and item["label"].startswith("labelsTr/")
    for item in dataset["testing"]:
        assert item["image"].startswith("imagesTs/") and item["label"].startswith("labelsTs/")
    for item in _cases(root):
        assert (root / item["image"]).is_file() and (root / item["label"]).is_file()
        case = Path(item["image"]).name.removesuffix(".nii.gz")
        assert (root / "mhd" / f"{case}.mhd").is_file() and (root / "mhd" / f"{case}.raw").is_file()
    test_case = Path(dataset["testing"][0]["image"]).name.removesuffix(".nii.gz")
    assert sorted(p.name for p in (root / "dicom").iterdir()) == [test_case]
    description = yaml.safe_load((root / "dataset.yaml").read_text())
    assert description["seed"] == 0
    assert description["counts"] == {"train": 2, "val": 1, "test": 1}
    assert description["config"]["phantom"]["matrix"] == 64
    assert len(description["cases"]) == 4


def test_lung_labels_cover_lung_hu(lung_sets):
    root = lung_sets[0]
    for item in _cases(root):
        image = nib.load(root / item["image"])
        label = nib.load(root / item["label"])
        assert image.get_data_dtype() == np.int16 and label.get_data_dtype() == np.uint8
        assert np.allclose(image.affine, label.affine)
        hu = np.asarray(image.dataobj)
        lab = np.asarray(label.dataobj)
        labelled = hu[lab > 0]
        assert np.mean((labelled >= -1000) & (labelled <= -400)) > 0.9
        # and the converse: nearly all lung-range voxels inside the chest wall are labelled lung
        ijk = np.argwhere(lab > 0)
        lo, hi = ijk.min(0), ijk.max(0) + 1
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        lungish = (hu[box] > -1000) & (hu[box] < -600)
        assert np.mean(lab[box][lungish] > 0) > 0.6
        # right lung on the patient's right (RAS +x)
        assert nib.aff2axcodes(image.affine) == ("R", "A", "S")
        x_right = (image.affine @ np.r_[np.argwhere(lab == 1).mean(0), 1])[0]
        x_left = (image.affine @ np.r_[np.argwhere(lab == 2).mean(0), 1])[0]
        assert x_right > x_left


def test_lung_ct_mhd_matches_nifti(lung_sets):
    root = lung_sets[0]
    item = _cases(root)[0]
    case = Path(item["image"]).name.removesuffix(".nii.gz")
    image = nib.load(root / item["image"])
    array, affine, meta = read_mhd(root / "mhd" / f"{case}.mhd")
    # LUNA16-like: identity direction in LPS, so the RAS affine has negative x/y steps
    assert np.allclose(meta["direction_lps"], np.eye(3))
    array, affine = _to_ras_index(array, affine)
    assert np.allclose(affine, image.affine, atol=1e-4)
    assert np.array_equal(array, np.asarray(image.dataobj))
    labels, label_affine, _ = read_mhd(root / "mhd" / f"{case}_label.mhd")
    labels, _ = _to_ras_index(labels, label_affine)
    assert np.array_equal(labels, np.asarray(nib.load(root / item["label"]).dataobj))


def test_lung_ct_same_seed_same_bytes(lung_sets):
    a, b, c = lung_sets
    files = _all_files(a)
    assert files == _all_files(b)
    assert any(p.suffix == ".dcm" for p in files)
    _, mismatch, errors = filecmp.cmpfiles(a, b, [str(p) for p in files], shallow=False)
    assert mismatch == [] and errors == []
    # another seed gives other scans
    for item in _cases(a):
        assert (a / item["image"]).read_bytes() != (c / item["image"]).read_bytes()


def test_lung_ct_dicom_headers(lung_sets):
    root = lung_sets[0]
    import json

    test_item = json.loads((root / "dataset.json").read_text())["testing"][0]
    case = Path(test_item["image"]).name.removesuffix(".nii.gz")
    files = sorted((root / "dicom" / case).glob("*.dcm"))
    image = nib.load(root / test_item["image"])
    assert len(files) == image.shape[2]
    sop_uids, series_uids, study_uids = set(), set(), set()
    for path in files:
        ds = pydicom.dcmread(path)
        assert ds.file_meta.MediaStorageSOPClassUID == pydicom.uid.CTImageStorage
        assert ds.SOPClassUID == pydicom.uid.CTImageStorage
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.Modality == "CT"
        assert str(ds.PatientName).startswith("SYNTH^") and ds.PatientID.startswith("SYNTH")
        assert ds.StudyDate == "" and ds.PatientBirthDate == ""
        assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        assert (ds.Rows, ds.Columns) == image.shape[1::-1]
        assert [float(v) for v in ds.PixelSpacing] == pytest.approx([image.header.get_zooms()[1], image.header.get_zooms()[0]], abs=1e-4)
        assert float(ds.SliceThickness) == pytest.approx(image.header.get_zooms()[2], abs=1e-4)
        assert float(ds.RescaleSlope) == 1.0 and float(ds.RescaleIntercept) == -1024.0
        assert ds.PixelRepresentation == 1 and ds.BitsAllocated == 16
        assert ds.pixel_array.dtype == np.int16
        for uid in (ds.SOPInstanceUID, ds.SeriesInstanceUID, ds.StudyInstanceUID, ds.FrameOfReferenceUID):
            assert pydicom.uid.UID(uid).is_valid
        sop_uids.add(ds.SOPInstanceUID)
        series_uids.add(ds.SeriesInstanceUID)
        study_uids.add(ds.StudyInstanceUID)
    assert len(sop_uids) == len(files) and len(series_uids) == 1 and len(study_uids) == 1


def test_lung_ct_dicom_matches_nifti(lung_sets):
    root = lung_sets[0]
    import json

    test_item = json.loads((root / "dataset.json").read_text())["testing"][0]
    case = Path(test_item["image"]).name.removesuffix(".nii.gz")
    image = nib.load(root / test_item["image"])
    vol, affine = _read_dicom_hu(root / "dicom" / case)
    vol, affine = _to_ras_index(vol, affine)
    assert np.allclose(affine, image.affine, atol=1e-3)
    assert np.array_equal(vol, np.asarray(image.dataobj).astype(np.float64))


def test_lung_ct_dicom_and_mhd_through_loadctd(lung_sets):
    from monai.transforms import Orientation

    from common import transforms

    root = lung_sets[0]
    import json

    test_item = json.loads((root / "dataset.json").read_text())["testing"][0]
    case = Path(test_item["image"]).name.removesuffix(".nii.gz")
    loader = transforms.LoadCTd(keys=["dicom", "nifti", "mhd"])
    data = loader({"dicom": str(root / "dicom" / case), "nifti": str(root / test_item["image"]),
                   "mhd": str(root / "mhd" / f"{case}.mhd")})
    to_ras = Orientation(axcodes="RAS")
    from_nifti = to_ras(data["nifti"])
    assert from_nifti.shape[0] == 1 and np.asarray(from_nifti).min() >= -1024
    for other in ("dicom", "mhd"):
        volume = to_ras(data[other])
        assert volume.shape == from_nifti.shape
        assert np.allclose(np.asarray(volume.affine), np.asarray(from_nifti.affine), atol=1e-3)
        assert np.array_equal(np.asarray(volume), np.asarray(from_nifti))


# ------------------------------------------------------------------------------------------------
# nodules: LUNA16 layout
# ------------------------------------------------------------------------------------------------
def _annotations(root: Path) -> list[dict]:
    with open(root / "annotations.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_nodules_layout_and_csv(nodule_sets):
    root = nodule_sets[0]
    header = (root / "annotations.csv").read_text().splitlines()[0]
    assert header == "seriesuid,coordX,coordY,coordZ,diameter_mm,malignancy"
    description = yaml.safe_load((root / "dataset.yaml").read_text())
    uids = description["splits"]["train"] + description["splits"]["val"] + description["splits"]["test"]
    assert len(uids) == 3 and len(description["splits"]["test"]) == 1
    for uid in uids:
        assert pydicom.uid.UID(uid).is_valid
        for folder in ("subset0", "seg-lungs-LUNA16", "nodule_masks"):
            assert (root / folder / f"{uid}.mhd").is_file() and (root / folder / f"{uid}.raw").is_file()
    assert sorted(p.name for p in (root / "dicom").iterdir()) == description["splits"]["test"]
    rows = _annotations(root)
    assert len(rows) == description["counts"]["nodules"] >= 2 * 3
    for row in rows:
        assert row["seriesuid"] in uids
        assert 1 <= int(row["malignancy"]) <= 5
        assert 3.0 <= float(row["diameter_mm"]) <= 31.0
    with open(root / "candidates.csv", newline="") as f:
        candidates = list(csv.DictReader(f))
    assert sum(c["class"] == "1" for c in candidates) == len(rows)
    assert sum(c["class"] == "0" for c in candidates) > 0
    # the DICOM series carries the LUNA16 seriesuid
    uid = description["splits"]["test"][0]
    first = next((root / "dicom" / uid).glob("*.dcm"))
    assert pydicom.dcmread(first).SeriesInstanceUID == uid


def test_nodules_match_voxels(nodule_sets):
    root = nodule_sets[0]
    rows = _annotations(root)
    by_series: dict[str, list[dict]] = {}
    for row in rows:
        by_series.setdefault(row["seriesuid"], []).append(row)
    for uid, series_rows in by_series.items():
        ct, affine, meta = read_mhd(root / "subset0" / f"{uid}.mhd")
        masks, mask_affine, _ = read_mhd(root / "nodule_masks" / f"{uid}.mhd")
        lungs, _, _ = read_mhd(root / "seg-lungs-LUNA16" / f"{uid}.mhd")
        assert np.allclose(affine, mask_affine)
        spacing = meta["spacing"]
        lps_affine = meta["lps_affine"]
        lung_hu = float(np.median(ct[lungs > 0]))
        for n, row in enumerate(series_rows, start=1):
            voxels = np.argwhere(masks == n)
            assert len(voxels) > 0, f"nodule {n} of {uid} has no voxels"
            # centroid in LPS world mm, like the annotation
            centroid = (lps_affine @ np.r_[voxels.mean(0), 1.0])[:3]
            stated = np.array([float(row["coordX"]), float(row["coordY"]), float(row["coordZ"])])
            assert np.all(np.abs(centroid - stated) <= spacing), (centroid, stated)
            volume = len(voxels) * float(np.prod(spacing))
            equivalent = (6.0 * volume / math.pi) ** (1.0 / 3.0)
            assert abs(equivalent - float(row["diameter_mm"])) <= spacing.max(), (equivalent, row["diameter_mm"])
            # inside one lung, at the stated position
            inside = lungs[tuple(voxels.T)]
            assert inside.min() > 0 and inside.min() == inside.max()
            ijk = np.rint(np.linalg.solve(lps_affine, np.r_[stated, 1.0])[:3]).astype(int)
            assert lungs[tuple(ijk)] > 0
            # denser than the surrounding lung
            assert float(ct[tuple(voxels.T)].mean()) > lung_hu + 150


def test_nodules_same_seed_same_bytes(nodule_sets):
    a, b, c = nodule_sets
    files = _all_files(a)
    assert files == _all_files(b)
    _, mismatch, errors = filecmp.cmpfiles(a, b, [str(p) for p in files], shallow=False)
    assert mismatch == [] and errors == []
    assert (a / "annotations.csv").read_bytes() != (c / "annotations.csv").read_bytes()
    assert {p.name for p in (a / "subset0").iterdir()}.isdisjoint({p.name for p in (c / "subset0").iterdir()})


def test_nodule_counts_masses_and_luna16_mask_values(tmp_path):
    cfg = {
        "num_train": 1, "num_val": 0, "num_test": 1, "dicom_cases": "none", "lung_mask_values": "luna16",
        "nodule": {"no_nodule_probability": 1.0, "mass_probability": 1.0, "mass_diameter_mm": [32.0, 36.0]},
        "phantom": {"in_plane_spacing_mm": 4.0, "slice_spacing_mm": [4.0, 4.0], "vessel_generations": 5,
                    "body_scale": [1.05, 1.1], "breathing": [1.0, 1.0]},
    }
    root = generate_nodules(tmp_path / "masses", config=cfg, seed=2)
    rows = _annotations(root)
    description = yaml.safe_load((root / "dataset.yaml").read_text())
    masses = [n for scan in description["scans"] for n in scan["nodules"]]
    # only masses (no ordinary nodules); each is inside the lung even when it had to be shrunk
    assert len(rows) == len(masses) >= 1
    assert all(n["is_mass"] for n in masses)
    assert max(float(r["diameter_mm"]) for r in rows) > 30.0
    assert not (root / "dicom").exists()
    lungs, _, _ = read_mhd(root / "seg-lungs-LUNA16" / f"{description['splits']['train'][0]}.mhd")
    assert set(np.unique(lungs)) <= {0, 3, 4, 5} and {3, 4} <= set(np.unique(lungs))


def test_malignancy_model():
    for kind in ("solid", "part_solid", "ground_glass"):
        for margin in ("round", "lobulated", "spiculated"):
            p = malignancy_probabilities(10.0, kind, margin)
            assert p.shape == (5,) and np.all(p >= 0) and p.sum() == pytest.approx(1.0)
    ratings = np.arange(1, 6)
    mean = lambda d, m="round", k="solid": float(ratings @ malignancy_probabilities(d, k, m))  # noqa: E731
    assert mean(4.0) < mean(8.0) < mean(20.0)
    assert mean(10.0) < mean(10.0, "lobulated") < mean(10.0, "spiculated")
    assert mean(4.0) < 2.2 and mean(25.0, "spiculated") > 4.5


# ------------------------------------------------------------------------------------------------
# configuration
# ------------------------------------------------------------------------------------------------
def test_config_rejects_unknown_keys(tmp_path):
    with pytest.raises(InputDataError, match="phantom.matrx"):
        load_config(LUNG_CT_DEFAULTS, {"phantom": {"matrx": 32}})
    bad = tmp_path / "bad.yaml"
    bad.write_text("num_trian: 3\n")
    with pytest.raises(InputDataError, match=r"bad\.yaml.*num_trian"):
        generate_lung_ct(tmp_path / "out", config=bad)
    with pytest.raises(InputDataError, match="not found"):
        load_config(LUNG_CT_DEFAULTS, tmp_path / "missing.yaml")
    with pytest.raises(InputDataError, match="dicom_cases"):
        generate_lung_ct(tmp_path / "out2", config={"num_train": 1, "num_val": 0, "num_test": 0, "dicom_cases": ["lung_999"]})


@pytest.mark.parametrize(("name", "defaults"), [("lung_ct.yaml", LUNG_CT_DEFAULTS), ("nodules.yaml", NODULES_DEFAULTS)])
def test_example_configs_document_every_key(name, defaults):
    path = REPO / "common" / "synthetic" / "configs" / name
    loaded = yaml.safe_load(path.read_text())
    load_config(defaults, path)  # valid

    def keys(d: dict, prefix: str = "") -> set[str]:
        out = set()
        for k, v in d.items():
            out.add(prefix + k)
            if isinstance(v, dict) and v and k not in ("type_probabilities", "margin_probabilities"):
                out |= keys(v, f"{prefix}{k}.")
        return out

    assert keys(defaults) <= keys(loaded)


def test_make_synthetic_cli_with_yaml_config(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({"num_train": 1, "num_val": 0, "num_test": 1, "dicom_cases": "none",
                                      "phantom": {"matrix": 32, "slice_spacing_mm": [8.0, 8.0]}}))
    out = tmp_path / "cli"
    subprocess.run([sys.executable, str(REPO / "scripts" / "make_synthetic.py"), "lung_ct", "--out", str(out),
                    "--config", str(config), "--seed", "4"], check=True, cwd=REPO, capture_output=True,
                   env={"SYNTH_NO_PROGRESS": "1", "PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    description = yaml.safe_load((out / "dataset.yaml").read_text())
    assert description["seed"] == 4 and description["config"]["phantom"]["matrix"] == 32
    assert len(list((out / "imagesTs").glob("*.nii.gz"))) == 1


def test_make_synthetic_cli_lists_its_tasks():
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    script = str(REPO / "scripts" / "make_synthetic.py")
    listed = subprocess.run([sys.executable, script, "list"], cwd=REPO, capture_output=True, text=True, env=env)
    assert listed.returncode == 0, listed.stderr
    assert [line.split()[0] for line in listed.stdout.splitlines()] == [
        "lung_ct", "nodules", "pneumonia_cxr", "oct", "oxygen_risk"]
    no_out = subprocess.run([sys.executable, script, "oct"], cwd=REPO, capture_output=True, text=True, env=env)
    assert no_out.returncode != 0 and "--out DIR" in no_out.stderr


def test_parallel_workers_give_identical_files(tmp_path):
    cfg = {"num_train": 2, "num_val": 0, "num_test": 1, "dicom_cases": "all", "phantom": {"matrix": 32, "slice_spacing_mm": [8.0, 8.0]}}
    serial = generate_lung_ct(tmp_path / "serial", config=cfg, seed=6)
    parallel = generate_lung_ct(tmp_path / "parallel", config={**cfg, "num_workers": 2}, seed=6)
    files = _all_files(serial)
    assert files == _all_files(parallel) and len(files) > 10
    _, mismatch, errors = filecmp.cmpfiles(serial, parallel, [str(p) for p in files], shallow=False)
    # dataset.yaml records num_workers, everything else is byte-identical
    assert mismatch == ["dataset.yaml"] and errors == []


def test_rib_descent_lowers_the_ribs_front_ends():
    """``rib_descent_mm``: how far the ribs descend from the spine to the front, seen at the lateral chest wall."""

    def front_minus_back_mm(descent: float) -> float:
        phantom = make_chest_phantom(make_rng(2), {"matrix": 80, "slice_spacing_mm": [4.0, 4.0],
                                                   "rib_descent_mm": [descent, descent]}, add_noise=False)
        ijk = np.argwhere(phantom.bone_mask)
        xyz = phantom.voxel_to_world(ijk)
        centre = phantom.voxel_to_world(np.argwhere(phantom.lung_label > 0)).mean(0)
        lateral = np.abs(xyz[:, 0] - centre[0]) > 60.0  # off the spine and the sternum
        front = lateral & (xyz[:, 1] > centre[1])
        back = lateral & (xyz[:, 1] < centre[1])
        return float(xyz[front, 2].mean() - xyz[back, 2].mean())

    assert front_minus_back_mm(110.0) < front_minus_back_mm(55.0) - 5.0
