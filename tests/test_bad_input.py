"""Bad input gets one clear error naming the file; batch inference skips the bad case and goes on."""

from __future__ import annotations

import logging
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.data import DataLoader
from monai.engines import SupervisedEvaluator
from monai.transforms import Compose
from PIL import Image
from pydicom.data import get_testdata_file

from common.data import SkipBadCasesDataset, collate_skip_bad, find_input_error
from common.errors import InputDataError
from common.transforms import FeatureSpec, LetterboxResized, LoadCTd, LoadRadiographd, read_ehr_csv


def _ct_error(path) -> str:
    with pytest.raises(InputDataError) as e:
        LoadCTd("image")({"image": str(path)})
    message = str(e.value)
    assert message.startswith(f"{path}: "), message  # the file comes first, then the problem
    return message


def _volume(tmp_path, name="ct.nii.gz"):
    hu = np.random.default_rng(0).integers(-1000, 1000, (24, 24, 16)).astype(np.int16)
    path = tmp_path / name
    nib.save(nib.Nifti1Image(hu, np.eye(4)), path)
    return path


def test_text_file_named_dcm(tmp_path):
    path = tmp_path / "scan.dcm"
    path.write_text("Patient notes, not an image.\n" * 10)
    assert "not a DICOM file" in _ct_error(path)
    with pytest.raises(InputDataError, match="not a DICOM file") as e:
        LoadRadiographd("image")({"image": str(path)})
    assert str(path) in str(e.value)


def test_text_file_named_nii(tmp_path):
    path = tmp_path / "scan.nii"
    path.write_text("hello\n" * 100)
    assert "cannot read as NIfTI" in _ct_error(path)


@pytest.mark.parametrize("name", ["ct.nii.gz", "ct.nii"])
def test_truncated_nifti(tmp_path, name):
    path = _volume(tmp_path, name)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    message = _ct_error(path)
    assert "truncated or corrupt" in message


def test_rgb_photo_given_to_ct_reader(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 255, (48, 64, 3)).astype(np.uint8)
    for name in ("holiday.png", "holiday.jpg", "named_like_a_volume.nii"):
        path = tmp_path / name
        Image.fromarray(rgb).save(path, format="PNG" if name.endswith((".png", ".nii")) else "JPEG")
        message = _ct_error(path)
        assert "not a CT volume" in message and ("PNG image" in message or "JPEG image" in message)


def test_xray_dicom_given_to_ct_reader(tmp_path):
    path = tmp_path / "chest.dcm"
    shutil.copy(get_testdata_file("RG1_UNCR.dcm"), path)
    assert "modality is CR: a projection radiograph, not CT" in _ct_error(path)


def test_empty_and_missing_files(tmp_path):
    (tmp_path / "empty.nii.gz").write_bytes(b"")
    assert "empty" in _ct_error(tmp_path / "empty.nii.gz")
    assert "no such file" in _ct_error(tmp_path / "missing.nii.gz")


def test_ehr_csv_missing_a_column(tmp_path):
    spec = FeatureSpec.from_dict(
        [
            {"name": "spo2", "unit": "%", "min": 50, "max": 100, "default": 96, "mean": 95, "std": 3},
            {"name": "crp", "unit": "mg/L", "min": 0, "max": 500, "default": 5, "mean": 40, "std": 60},
        ]
    )
    path = tmp_path / "site_a.csv"
    path.write_text("image,spo2,o2_24h\na.png,95,0\n")
    with pytest.raises(InputDataError) as e:
        read_ehr_csv(path, spec, required_columns=("image", "o2_24h", "o2_72h"))
    message = str(e.value)
    assert message.startswith(f"{path}: missing columns")
    assert "'crp'" in message and "'o2_72h'" in message and "'spo2'" not in message


# ---- batch inference: a bad case is reported and skipped, the rest go on -------------------------------


def _radiograph_cases(tmp_path):
    good = []
    for k in range(3):
        img = (np.random.default_rng(k).random((20, 30)) * 255).astype(np.uint8)
        Image.fromarray(img).save(tmp_path / f"good{k}.png")
        good.append({"image": str(tmp_path / f"good{k}.png")})
    (tmp_path / "bad_text.dcm").write_text("not an image")
    (tmp_path / "bad_cut.png").write_bytes((tmp_path / "good0.png").read_bytes()[:60])
    bad = [{"image": str(tmp_path / "bad_text.dcm")}, {"image": str(tmp_path / "bad_cut.png")}]
    # good, bad, bad, good, good: with batch size 1 and 2 some batches hold only bad cases
    return [good[0], bad[0], bad[1], good[1], good[2]], [c["image"] for c in good]


def _evaluate(cases, batch_size):
    preprocessing = Compose([LoadRadiographd("image"), LetterboxResized("image", size=16)])
    dataset = SkipBadCasesDataset(data=cases, transform=preprocessing)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=0, collate_fn=collate_skip_bad)
    network = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16 * 16, 2))
    evaluator = SupervisedEvaluator(device=torch.device("cpu"), val_data_loader=loader, network=network)
    written = []

    @evaluator.on(Events.ITERATION_COMPLETED)
    def _collect(engine):
        for item, output in zip(engine.state.batch, engine.state.output):  # decollated: one dict per case
            written.append((item["image"].meta["filename_or_obj"], tuple(output["pred"].shape)))

    evaluator.run()
    return dataset, written


@pytest.mark.parametrize("batch_size", [1, 2])
def test_evaluator_skips_bad_cases_and_writes_the_rest(tmp_path, caplog, batch_size):
    cases, good_files = _radiograph_cases(tmp_path)
    with caplog.at_level(logging.WARNING, logger="common.data"):
        dataset, written = _evaluate(cases, batch_size)
    assert [w[0] for w in written] == good_files
    assert all(w[1] == (2,) for w in written)
    assert [s["index"] for s in dataset.skipped] == [1, 2]
    assert (
        dataset.skipped[0]["file"].endswith("bad_text.dcm") and "not a DICOM" in dataset.skipped[0]["problem"]
    )
    assert "skipped case 1" in caplog.text and "bad_text.dcm" in caplog.text and "bad_cut.png" in caplog.text


def test_evaluator_with_only_bad_cases_finishes(tmp_path):
    cases, _ = _radiograph_cases(tmp_path)
    dataset, written = _evaluate(cases[1:3], batch_size=2)
    assert written == [] and len(dataset.skipped) == 2


def test_evaluator_over_skipping_dataset_completes_epochs_and_reruns(tmp_path):
    # as validation inside training: run once per epoch, EPOCH_COMPLETED (metrics) must fire each time
    cases, good_files = _radiograph_cases(tmp_path)
    preprocessing = Compose([LoadRadiographd("image"), LetterboxResized("image", size=16)])
    loader = DataLoader(SkipBadCasesDataset(cases, preprocessing), batch_size=2, collate_fn=collate_skip_bad)
    network = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16 * 16, 2))
    evaluator = SupervisedEvaluator(device=torch.device("cpu"), val_data_loader=loader, network=network)
    counts = {"epochs": 0, "iterations": 0}
    evaluator.add_event_handler(
        Events.EPOCH_COMPLETED, lambda e: counts.__setitem__("epochs", counts["epochs"] + 1)
    )
    evaluator.add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: counts.__setitem__("iterations", counts["iterations"] + 1)
    )
    evaluator.run(1)
    evaluator.run(2)
    # 3 good cases in batches of 2 -> 2 iterations per run, no case processed twice
    assert counts == {"epochs": 2, "iterations": 4}


def test_other_errors_are_not_hidden():
    def broken(_):
        raise KeyError("a bug, not a bad file")

    with pytest.raises(RuntimeError) as e:
        list(SkipBadCasesDataset([{"image": "x"}], transform=Compose([broken])))
    chain, current = [], e.value
    while current is not None:
        chain.append(type(current))
        current = current.__cause__
    assert KeyError in chain


def test_find_input_error_through_monai_wrapping(tmp_path):
    (tmp_path / "x.dcm").write_text("text")
    with pytest.raises(Exception) as e:
        Compose([Compose([LoadCTd("image")])])({"image": str(tmp_path / "x.dcm")})
    found = find_input_error(e.value)
    assert isinstance(found, InputDataError) and found.path == str(tmp_path / "x.dcm")


def test_collate_skip_bad():
    assert collate_skip_bad([None, None]) is None
    batch = collate_skip_bad([{"x": torch.ones(2)}, None, {"x": torch.zeros(2)}])
    assert batch["x"].shape == (2, 2) and batch["x"][0, 0] == 1
