"""Unit tests of common.data.decathlon (MSD/decathlon datalists) and the inference case listing."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from common.data.decathlon import load_datalist, prepare, split_training
from common.errors import InputDataError
from common.segmentation.io import inference_datalist, list_ct_inputs

ROOT = Path(__file__).resolve().parents[1]


def make_msd(root: Path, n_train: int = 5, validation: bool = False, with_json: bool = True) -> Path:
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    training = []
    for i in range(n_train):
        for sub in ("imagesTr", "labelsTr"):
            (root / sub / f"lung_{i:03d}.nii.gz").write_bytes(b"x")
        training.append({"image": f"./imagesTr/lung_{i:03d}.nii.gz", "label": f"./labelsTr/lung_{i:03d}.nii.gz"})
    (root / "imagesTs" / "lung_100.nii.gz").write_bytes(b"x")
    index = {"name": "Lungs", "labels": {"0": "background", "1": "right lung", "2": "left lung"}, "training": training,
             "test": ["./imagesTs/lung_100.nii.gz"]}
    if validation:
        index["validation"] = [training[-1]]
        index["training"] = training[:-1]
    if with_json:
        (root / "dataset.json").write_text(json.dumps(index))
    return root


def test_split_is_seeded_and_disjoint():
    items = [{"image": str(i)} for i in range(10)]
    train, val = split_training(items, 0.2, seed=3)
    assert len(val) == 2 and len(train) == 8
    assert not {i["image"] for i in train} & {i["image"] for i in val}
    assert split_training(items, 0.2, seed=3) == (train, val)
    assert split_training(items, 0.2, seed=4) != (train, val)
    assert len(split_training(items[:2], 0.1)[1]) == 1  # at least one validation case


def test_load_datalist_splits_when_no_validation(tmp_path):
    root = make_msd(tmp_path / "msd")
    train = load_datalist(root, "training", val_fraction=0.4, seed=0)
    val = load_datalist(root, "validation", val_fraction=0.4, seed=0)
    assert len(train) == 3 and len(val) == 2
    assert all(Path(item["image"]).is_absolute() and Path(item["label"]).exists() for item in train + val)
    assert not {i["image"] for i in train} & {i["image"] for i in val}
    test = load_datalist(root, "testing")
    assert test == [{"image": str(root / "./imagesTs/lung_100.nii.gz")}]


def test_load_datalist_uses_the_validation_list(tmp_path):
    root = make_msd(tmp_path / "msd", validation=True)
    assert [Path(i["image"]).name for i in load_datalist(root, "validation")] == ["lung_004.nii.gz"]
    assert len(load_datalist(root / "dataset.json", "training")) == 4


def test_folders_without_dataset_json(tmp_path):
    root = make_msd(tmp_path / "msd", with_json=False)
    assert len(load_datalist(root, "training", val_fraction=0.2)) == 4
    (root / "labelsTr" / "lung_000.nii.gz").unlink()
    with pytest.raises(InputDataError, match="has no label"):
        load_datalist(root, "training")


def test_missing_files_and_labels_are_named(tmp_path):
    root = make_msd(tmp_path / "msd")
    (root / "imagesTr" / "lung_002.nii.gz").unlink()
    with pytest.raises(InputDataError, match="lung_002"):
        load_datalist(root, "training", val_fraction=0.0)
    with pytest.raises(InputDataError, match="no label"):
        load_datalist(root, "testing", require_labels=True)
    with pytest.raises(InputDataError, match="not an MSD"):
        load_datalist(tmp_path, "training")


def test_prepare_via_cli_writes_relative_paths(tmp_path):
    root = make_msd(tmp_path / "msd", n_train=10)
    out = tmp_path / "lists" / "datalist.json"
    assert prepare(root, out, val_fraction=0.2, seed=1) == out
    written = json.loads(out.read_text())
    assert (written["numTraining"], written["numValidation"], written["numTest"]) == (8, 2, 1)
    assert written["labels"]["1"] == "right lung"
    assert all(not Path(i["image"]).is_absolute() for i in written["training"])
    # the datalist reads back to the same files
    again = load_datalist(out, "validation")
    assert {Path(i["image"]).resolve() for i in again} == {
        Path(i["image"]).resolve() for i in load_datalist(root, "validation", 0.2, 1)
    }
    # the repository CLI dispatches to prepare()
    spec = importlib.util.spec_from_file_location("prepare_datalist", ROOT / "scripts" / "prepare_datalist.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    out2 = tmp_path / "cli.json"
    cli.main("decathlon", str(root), str(out2), val_fraction=0.2, seed=1)
    assert json.loads(out2.read_text())["numValidation"] == 2


def test_inference_inputs(tmp_path):
    (tmp_path / "a.nii.gz").write_bytes(b"x")
    (tmp_path / "b.mhd").write_text("NDims = 3\n")
    (tmp_path / "b.raw").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("x")
    series = tmp_path / "series1"
    series.mkdir()
    (series / "IM0001").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 10)
    (tmp_path / "empty").mkdir()
    assert [Path(p).name for p in list_ct_inputs(tmp_path)] == ["a.nii.gz", "b.mhd", "series1"]
    assert inference_datalist(series) == [{"image": str(series)}]
    assert inference_datalist(tmp_path / "a.nii.gz") == [{"image": str(tmp_path / "a.nii.gz")}]
    listing = tmp_path / "list.json"
    listing.write_text(json.dumps({"testing": [{"image": "a.nii.gz"}, "series1"]}))
    assert inference_datalist("", datalist=str(listing)) == [
        {"image": str(tmp_path / "a.nii.gz")}, {"image": str(tmp_path / "series1")}
    ]
    with pytest.raises(InputDataError, match="no CT volumes"):
        inference_datalist(tmp_path / "empty")
    with pytest.raises(InputDataError, match="does not exist"):
        inference_datalist(tmp_path / "nope")
