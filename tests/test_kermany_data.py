"""Kermany OCT2017 / ChestXRay2017 datalists: layouts read as published, patient-level split."""

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from common.data import kermany
from common.errors import InputDataError

ROOT = Path(__file__).resolve().parents[1]


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\xff\xd8\xff")  # scanning never decodes; only DICOM headers are read


def _make_cxr(root: Path, n_patients: int = 40, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for split in ("train", "test"):
        for p in range(n_patients if split == "train" else 6):
            pid = p + (0 if split == "train" else 1000)
            kind = rng.choice(["normal", "normal2", "bacteria", "virus"])
            for k in range(int(rng.integers(1, 4))):
                if kind == "normal":
                    _touch(root / "chest_xray" / split / "NORMAL" / f"IM-{pid:04d}-{k + 1:04d}.jpeg")
                elif kind == "normal2":
                    _touch(root / "chest_xray" / split / "NORMAL" / f"NORMAL2-IM-{pid:04d}-{k + 1:04d}.jpeg")
                else:
                    _touch(root / "chest_xray" / split / "PNEUMONIA" / f"person{pid}_{kind}_{k}.jpeg")


def _make_oct(root: Path, n_patients: int = 30) -> None:
    for split in ("train", "test"):
        for p in range(n_patients if split == "train" else 4):
            cls = kermany.OCT_CLASSES[p % 4]
            for k in range(1 + p % 3):
                _touch(root / "OCT2017" / split / cls / f"{cls}-{9000 + p + (0 if split == 'train' else 500)}-{k}.jpeg")


def test_cxr_names_give_subtype_and_patient():
    assert kermany.parse_cxr_file("person12_bacteria_48.jpeg", "PNEUMONIA") == ("BACTERIAL", "person12")
    assert kermany.parse_cxr_file("person3_virus_15.jpeg", "PNEUMONIA") == ("VIRAL", "person3")
    assert kermany.parse_cxr_file("person447_virus_921_1.jpeg", "PNEUMONIA") == ("VIRAL", "person447")
    assert kermany.parse_cxr_file("IM-0115-0001.jpeg", "NORMAL") == ("NORMAL", "IM-0115")
    assert kermany.parse_cxr_file("IM-0429-0001-0002.jpeg", "NORMAL") == ("NORMAL", "IM-0429")
    assert kermany.parse_cxr_file("NORMAL2-IM-0383-0001.jpeg", "NORMAL") == ("NORMAL", "IM-0383")
    assert kermany.parse_cxr_file("scan7.png", "PNEUMONIA") == ("PNEUMONIA", "file-scan7")
    assert kermany.parse_oct_file("CNV-1016042-1.jpeg", "CNV") == ("CNV", "oct-1016042")


@pytest.mark.parametrize("shape", ["parent", "chest_xray", "split_root"])
def test_cxr_layout_variants_and_patient_split(tmp_path, shape):
    _make_cxr(tmp_path)
    root = {"parent": tmp_path, "chest_xray": tmp_path / "chest_xray", "split_root": tmp_path / "chest_xray"}[shape]
    train = kermany.datalist(root, "cxr", "train", val_fraction=0.25, seed=3)
    val = kermany.datalist(root, "cxr", "validation", val_fraction=0.25, seed=3)
    test = kermany.datalist(root, "cxr", "test")
    assert {e["patient"] for e in train}.isdisjoint({e["patient"] for e in val})
    assert len(train) + len(val) == len(list((tmp_path / "chest_xray" / "train").rglob("*.jpeg")))
    assert all(e["image"].split("/")[-3] == "test" for e in test)
    for e in train + val + test:
        name = Path(e["image"]).name
        expected = "BACTERIAL" if "bacteria" in name else "VIRAL" if "virus" in name else "NORMAL"
        assert e["class_name"] == expected and kermany.CXR_CLASSES_3[e["label"]] == expected
    # seeded: same split again, another seed another split
    assert kermany.datalist(root, "cxr", "validation", val_fraction=0.25, seed=3) == val
    assert kermany.datalist(root, "cxr", "validation", val_fraction=0.25, seed=4) != val
    two = kermany.datalist(root, "cxr", "train", val_fraction=0.25, seed=3, classes=2)
    assert {e["class_name"] for e in two} == {"NORMAL", "PNEUMONIA"}


def test_real_style_flat_class_folders(tmp_path):
    """The shared real data: only NORMAL/ and PNEUMONIA/ (no train/ test/): the whole folder is the pool."""
    _make_cxr(tmp_path)
    flat = tmp_path / "chest_xray" / "train"
    train = kermany.datalist(flat, "cxr", "train")
    val = kermany.datalist(flat, "cxr", "validation")
    assert train and val and {e["patient"] for e in train}.isdisjoint({e["patient"] for e in val})
    with pytest.raises(InputDataError, match="'test' split is empty"):
        kermany.datalist(flat, "cxr", "test")


def test_split_keeps_patient_groups_and_class_shares():
    entries = []
    rng = np.random.default_rng(0)
    for p in range(300):
        label = int(rng.integers(0, 3))
        entries += [{"image": f"{p}_{k}", "label": label, "patient": f"p{p}"} for k in range(int(rng.integers(1, 6)))]
    train, val = kermany.patient_split(entries, val_fraction=0.2, seed=0)
    assert {e["patient"] for e in train}.isdisjoint({e["patient"] for e in val})
    total, held = Counter(e["label"] for e in entries), Counter(e["label"] for e in val)
    for c in total:
        assert 0.15 < held[c] / total[c] < 0.3
    assert kermany.patient_split(entries, 0.0, 0)[1] == []


def test_oct_layout_and_prepare_script(tmp_path):
    _make_oct(tmp_path)
    out = tmp_path / "datalist.json"
    subprocess.run(
        [sys.executable, "scripts/prepare_datalist.py", "oct2017", "--root", str(tmp_path), "--out", str(out),
         "--val_fraction", "0.2", "--seed", "1"],
        cwd=ROOT, check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    data = json.loads(out.read_text())
    assert data["classes"] == list(kermany.OCT_CLASSES)
    assert not Path(data["training"][0]["image"]).is_absolute()
    assert {e["patient"] for e in data["training"]}.isdisjoint({e["patient"] for e in data["validation"]})
    assert all(e["class_name"] == Path(e["image"]).parent.name for e in data["training"] + data["testing"])
    # the bundle reads the prepared JSON against --dataset_dir and gets what scanning gives
    via_json = kermany.datalist(tmp_path, "oct", "validation", datalist=out)
    scanned = kermany.datalist(tmp_path, "oct", "validation", val_fraction=0.2, seed=1)
    assert [Path(e["image"]).resolve() for e in via_json] == [Path(e["image"]).resolve() for e in scanned]


def test_dicom_patient_and_errors(tmp_path):
    for i, pid in enumerate(["ANON-7", "ANON-7", "ANON-9"]):
        ds = pydicom.Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
        ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.PatientID = pid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        (tmp_path / "BACTERIAL").mkdir(exist_ok=True)
        ds.save_as(tmp_path / "BACTERIAL" / f"cxr{i}.dcm", enforce_file_format=True)
    entries = kermany.scan_folder(tmp_path, "cxr")
    patients = [e["patient"] for e in entries]
    assert patients[0] == patients[1] != patients[2]
    assert all("ANON" not in p for p in patients)  # hashed, never the header value
    _touch(tmp_path / "PNEUMONIA" / "unnamed.jpeg")
    with pytest.raises(InputDataError, match="subtype unknown"):
        kermany.scan_folder(tmp_path, "cxr", classes=3)
    assert len(kermany.scan_folder(tmp_path, "cxr", classes=2)) == 4
    with pytest.raises(InputDataError, match="no Kermany OCT layout"):
        kermany.locate_splits(tmp_path, "oct")
    with pytest.raises(InputDataError, match="not found"):
        kermany.image_files(tmp_path / "missing")
