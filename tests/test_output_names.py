"""Outputs of one batch run never overwrite each other: inputs that map to one name get _2, _3, ..."""

from __future__ import annotations

import json
import logging

import numpy as np
import torch
from monai.data import MetaTensor

from common.detection.inference import DetectionWriter
from common.io.naming import UniqueNames
from common.segmentation.io import SaveLabelMapd


def test_unique_names_suffix_the_second_source_and_keep_the_first():
    names = UniqueNames()
    assert names("lung_002", "/in/lung_002.nii.gz") == "lung_002"
    assert names("lung_002", "/in/lung_002") == "lung_002_2"
    assert names("lung_002", "/other/lung_002.mhd") == "lung_002_3"
    assert names("lung_002", "/in/lung_002.nii.gz") == "lung_002"  # the same input keeps its name


def test_a_nifti_file_and_a_dicom_folder_of_one_name_both_get_their_label_map(tmp_path, caplog):
    save = SaveLabelMapd(keys="pred", output_dir=tmp_path)
    written = []
    with caplog.at_level(logging.WARNING):
        for source, value in ((tmp_path / "in" / "lung_002.nii.gz", 1), (tmp_path / "in" / "lung_002", 2)):
            label = MetaTensor(torch.full((1, 4, 4, 3), value, dtype=torch.uint8), affine=torch.eye(4),
                               meta={"filename_or_obj": str(source)})
            written.append(save({"pred": label})["pred"].meta["saved_to"])
    assert [p.rsplit("/", 1)[-1] for p in written] == ["lung_002_seg.nii.gz", "lung_002_2_seg.nii.gz"]
    import nibabel as nib

    assert [int(np.asarray(nib.load(p).dataobj).max()) for p in written] == [1, 2]  # nothing overwritten
    assert "lung_002.nii.gz and lung_002 would both be written as lung_002" in caplog.text


def test_detection_json_of_two_scans_with_one_name(tmp_path):
    writer = DetectionWriter(tmp_path)
    paths = []
    for source in (tmp_path / "a" / "scan.mhd", tmp_path / "b" / "scan.nii.gz"):
        image = MetaTensor(torch.zeros(1, 2, 2, 2), meta={"filename_or_obj": str(source)})
        out = {"image": image, "pred_box": torch.zeros(0, 6), "pred_score": torch.zeros(0),
               "pred_malignancy": torch.zeros(0)}
        paths.append(writer.write(out))
    assert [p.name for p in paths] == ["scan_nodules.json", "scan_2_nodules.json"]
    assert [json.loads(p.read_text())["image"] for p in paths] == ["scan.mhd", "scan.nii.gz"]


def test_oxygen_encounter_ids_that_map_to_one_file_name_keep_both_outputs(tmp_path):
    from types import SimpleNamespace

    from common.oxygen.report import RiskWriter

    writer = RiskWriter(tmp_path)
    output = [{"pred": torch.full((8,), 0.5), "encounter_id": "A/1"},
              {"pred": torch.full((8,), 0.25), "encounter_id": "A_1"}]
    writer._on_iteration(SimpleNamespace(state=SimpleNamespace(output=output, batch={})))
    names = sorted(p.name for p in tmp_path.glob("*.json"))
    assert names == ["A_1.json", "A_1_2.json"]
    assert {json.loads((tmp_path / n).read_text())["encounter_id"] for n in names} == {"A/1", "A_1"}
