"""Unit tests of common.segmentation.io.SaveLabelMapd (NIfTI label maps written atomically)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from common.segmentation.io import SaveLabelMapd

AFFINE = np.array([[-0.7, 0, 0, 170.0], [0, -0.7, 0, 160.0], [0, 0, 1.25, -300.0], [0, 0, 0, 1]])


def label_map(source: str) -> MetaTensor:
    labels = np.zeros((1, 12, 10, 8), np.uint8)
    labels[0, 2:5, 2:8, 1:7] = 2
    labels[0, 7:10, 2:8, 1:7] = 1
    return MetaTensor(torch.from_numpy(labels), affine=torch.as_tensor(AFFINE), meta={"filename_or_obj": source})


@pytest.mark.parametrize(
    "source,name",
    [("/scans/case_7.nii.gz", "case_7_seg.nii.gz"), ("/scans/dicom/series_3", "series_3_seg.nii.gz"),
     ("/scans/c.mhd", "c_seg.nii.gz")],
)
def test_writes_uint8_nifti_with_the_affine(tmp_path, source, name):
    pred = label_map(source)
    SaveLabelMapd("pred", output_dir=tmp_path)({"pred": pred})
    written = nib.load(str(tmp_path / name))
    assert written.get_data_dtype() == np.uint8
    assert np.allclose(written.affine, AFFINE)
    assert np.array_equal(np.asarray(written.dataobj), pred[0].numpy())
    assert written.header.get_xyzt_units()[0] == "mm"
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no temporary file left behind


def test_keeps_sub_folders_below_data_root(tmp_path):
    root = tmp_path / "in"
    (root / "site_a").mkdir(parents=True)
    pred = label_map(str(root / "site_a" / "scan.nii.gz"))
    SaveLabelMapd("pred", output_dir=tmp_path / "out", data_root_dir=root)({"pred": pred})
    assert (tmp_path / "out" / "site_a" / "scan_seg.nii.gz").exists()


def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    def broken_save(image, path):
        with open(path, "wb") as f:
            f.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(nib, "save", broken_save)
    with pytest.raises(OSError):
        SaveLabelMapd("pred", output_dir=tmp_path)({"pred": label_map("/x/case.nii.gz")})
    assert list(tmp_path.iterdir()) == []
