"""CT case discovery decides by content: a stray .dcm hides no volume; both CT bundles list cases alike."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from dicom_factory import write_ct_series

from common.data.ct_inputs import ct_cases, is_dicom_file
from common.detection.inference import list_inputs
from common.segmentation.io import inference_datalist


def _volume(path: Path) -> Path:
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.zeros((4, 4, 3), np.int16), np.eye(4)), str(path))
    return path


def _mixed_folder(root: Path) -> Path:
    root.mkdir(parents=True)
    _volume(root / "lung_001.nii.gz")
    _volume(root / "lung_003.nii.gz")
    write_ct_series(root / "series_a", np.zeros((6, 6, 3), np.int16))
    (root / "notes.dcm").write_text("a text file named like a slice")  # not DICOM by content
    return root


def test_a_stray_dicom_file_beside_volumes_hides_none_of_them(tmp_path):
    root = _mixed_folder(tmp_path / "mixed")
    files, _ = write_ct_series(tmp_path / "one_slice", np.zeros((6, 6, 1), np.int16))
    os.replace(files[0], root / "stray.dcm")  # a real DICOM file in the folder of volumes
    names = [Path(c).name for c in ct_cases(root)]
    # the folder itself becomes one more case (the loader refuses it if it is no usable series)
    assert names == ["mixed", "lung_001.nii.gz", "lung_003.nii.gz", "series_a"]
    lung = [Path(c["image"]).name for c in inference_datalist(root)]
    nodules = [Path(c["image"]).name for c in list_inputs(root)]
    assert lung == nodules == names


def test_dicom_is_recognised_by_content_not_by_name(tmp_path):
    root = _mixed_folder(tmp_path / "mixed")
    assert not is_dicom_file(root / "notes.dcm")
    files, _ = write_ct_series(tmp_path / "noext", np.zeros((6, 6, 2), np.int16))
    for f in files:
        os.replace(f, f.with_suffix(""))  # slices without a suffix, as scanners export them
    assert ct_cases(tmp_path / "noext") == [str(tmp_path / "noext")]
    assert [Path(c).name for c in ct_cases(root)] == ["lung_001.nii.gz", "lung_003.nii.gz", "series_a"]


def test_a_link_loop_does_not_hang_the_recursive_search(tmp_path):
    root = _mixed_folder(tmp_path / "mixed")
    (root / "series_a" / "loop").symlink_to(root, target_is_directory=True)
    assert [Path(c).name for c in ct_cases(root, recursive=True)] == ["lung_001.nii.gz", "lung_003.nii.gz", "series_a"]
