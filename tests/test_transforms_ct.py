"""LoadCTd / LoadLabelVolumed / HUWindowd: formats agree, MONAI spatial transforms invert, HU checks."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from dicom_factory import write_ct_series
from monai.data import MetaTensor, list_data_collate
from monai.transforms import Compose, Invertd, Orientationd, SaveImaged, Spacingd

from common.errors import InputDataError
from common.transforms import HUWindowd, LoadCTd, LoadLabelVolumed

SPACING = (0.7, 0.8, 2.5)
ORIGIN_LPS = (-120.0, -110.0, 30.0)


def _smooth_ct(shape=(20, 18, 8)) -> np.ndarray:
    """Body-like HU volume: a soft-tissue ellipse with air lungs inside, air outside; integer HU."""
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    hu = np.full(shape, -1000.0, np.float32)
    hu[(x / 0.9) ** 2 + (y / 0.8) ** 2 < 1] = 40.0
    hu[((x - 0.4) / 0.3) ** 2 + (y / 0.5) ** 2 < 1] = -850.0
    hu[((x + 0.4) / 0.3) ** 2 + (y / 0.5) ** 2 < 1] = -850.0
    hu += np.round(100 * z).astype(np.float32)
    return hu


def _affine_ras() -> np.ndarray:
    affine_lps = np.eye(4)
    affine_lps[:3, :3] = np.diag(SPACING)
    affine_lps[:3, 3] = ORIGIN_LPS
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine_lps


@pytest.fixture()
def ct_files(tmp_path):
    """The same scan as a DICOM series, NIfTI and (when the MHD writer is there) MetaImage."""
    hu = _smooth_ct()
    files, affine = write_ct_series(tmp_path / "dicom" / "case1", hu, spacing=SPACING, origin_lps=ORIGIN_LPS)
    np.testing.assert_allclose(affine, _affine_ras())
    nifti = tmp_path / "case1.nii.gz"
    nib.save(nib.Nifti1Image(hu, _affine_ras()), nifti)
    out = {"hu": hu, "dicom": tmp_path / "dicom" / "case1", "dicom_file": files[2], "nifti": nifti}
    try:
        from common.io.mhd import write_mhd
    except ImportError:
        return out
    out["mhd"] = write_mhd(tmp_path / "case1.mhd", hu, SPACING, ORIGIN_LPS)
    return out


@pytest.mark.parametrize("source", ["nifti", "dicom", "dicom_file", "mhd"])
def test_every_format_loads_the_same_hu_and_affine(ct_files, source):
    if source not in ct_files:
        pytest.skip("common.io.mhd not on this branch yet")
    d = LoadCTd("image")({"image": str(ct_files[source])})
    image = d["image"]
    assert isinstance(image, MetaTensor) and image.shape == (1, 20, 18, 8) and image.dtype == torch.float32
    np.testing.assert_allclose(image[0].numpy(), ct_files["hu"], atol=1e-3)
    np.testing.assert_allclose(image.affine.numpy(), _affine_ras(), atol=1e-4)
    np.testing.assert_allclose(image.meta["original_affine"], _affine_ras(), atol=1e-4)
    assert list(image.meta["spatial_shape"]) == [20, 18, 8]
    assert image.meta["space"] == "RAS"
    assert image.meta["filename_or_obj"] == str(ct_files[source])


def test_orientation_spacing_invert_round_trip(tmp_path):
    # A linear HU ramp: linear interpolation reproduces it exactly away from the borders, so any error
    # in the geometry (flip, offset, spacing) of the inverse shows up as a value error.
    i, j, k = np.meshgrid(np.arange(20), np.arange(18), np.arange(8), indexing="ij")
    hu = (-1000.0 + 10.0 * i + 20.0 * j + 50.0 * k).astype(np.float32)
    folder = tmp_path / "case"
    write_ct_series(folder, hu, spacing=SPACING, origin_lps=ORIGIN_LPS)
    pre = Compose(
        [
            LoadCTd("image"),
            Orientationd("image", axcodes="RAS"),
            Spacingd("image", pixdim=(1.0, 1.0, 2.0), mode="bilinear"),
            HUWindowd("image", hu_min=-1000.0, hu_max=500.0),  # not invertible: Invertd passes over it
        ]
    )
    windowed = (hu + 1000.0) / 1500.0  # the ramp stays inside the window
    d = pre({"image": str(folder)})
    image = d["image"]
    # LPS-stored DICOM now in RAS order (x, y flipped) with 1 x 1 x 2 mm voxels
    np.testing.assert_allclose(np.diag(image.affine.numpy())[:3], [1.0, 1.0, 2.0], atol=1e-5)
    assert image.shape[1:] == (14, 15, 10)  # extents 13.3, 13.6, 17.5 mm
    assert float(image[0, 0, 5, 5]) > float(image[0, -1, 5, 5])  # R-L flip: x now runs away from i
    d["pred"] = image.clone()
    inverted = Invertd("pred", transform=pre, orig_keys="image", nearest_interp=False)(d)["pred"]
    assert inverted.shape == (1, 20, 18, 8)
    np.testing.assert_allclose(inverted.affine.numpy(), _affine_ras(), atol=1e-4)
    interior = (slice(2, -2), slice(2, -2), slice(1, -1))
    np.testing.assert_allclose(inverted[0].numpy()[interior], windowed[interior], atol=1e-3)

    # SaveImaged names the output after the series folder and writes it on the input grid
    SaveImaged(
        "pred", output_dir=tmp_path / "out", output_postfix="seg", resample=False, separate_folder=False
    )({"pred": inverted})
    saved = nib.load(tmp_path / "out" / "case_seg.nii.gz")
    assert saved.shape == (20, 18, 8)
    np.testing.assert_allclose(saved.affine, _affine_ras(), atol=1e-4)
    np.testing.assert_allclose(np.asarray(saved.dataobj)[interior], windowed[interior], atol=1e-3)


def test_mixed_formats_collate_into_one_batch(ct_files):
    load = LoadCTd("image")
    batch = list_data_collate([load({"image": str(ct_files[k])}) for k in ("nifti", "dicom", "mhd")])
    assert batch["image"].shape == (3, 1, 20, 18, 8)
    assert batch["image"].meta["ct_format"] == ["nifti", "dicom", "mhd"]


def test_label_volume_follows_the_image_grid(tmp_path):
    labels = np.zeros((10, 9, 6), np.uint8)
    labels[1:4, 2:7, 1:5] = 1
    labels[6:9, 2:7, 1:5] = 2
    path = tmp_path / "label.nii.gz"
    nib.save(nib.Nifti1Image(labels, _affine_ras()), path)
    lab = LoadLabelVolumed("label")({"label": str(path)})["label"]
    assert lab.shape == (1, 10, 9, 6) and lab.dtype == torch.float32
    assert sorted(torch.unique(lab).tolist()) == [0.0, 1.0, 2.0]
    np.testing.assert_array_equal(lab[0].numpy(), labels)
    np.testing.assert_allclose(lab.affine.numpy(), _affine_ras())
    lab8 = LoadLabelVolumed("label", dtype=torch.uint8)({"label": str(path)})["label"]
    assert lab8.dtype == torch.uint8


def test_label_volume_from_dicom_is_refused(ct_files):
    with pytest.raises(InputDataError, match="convert it to NIfTI"):
        LoadLabelVolumed("label")({"label": str(ct_files["dicom"])})


def test_label_volume_with_fractions_is_refused(tmp_path):
    path = tmp_path / "prob.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((5, 5, 5)).astype(np.float32), np.eye(4)), path)
    with pytest.raises(InputDataError, match="non-integer"):
        LoadLabelVolumed("label")({"label": str(path)})


def test_hu_window_clips_and_scales():
    image = MetaTensor(torch.tensor([[[[-2000.0, -1000.0, -250.0, 500.0, 3000.0]]]]))
    out = HUWindowd("image", hu_min=-1000.0, hu_max=500.0)({"image": image})["image"]
    np.testing.assert_allclose(out.flatten().numpy(), [0.0, 0.0, 0.5, 1.0, 1.0], atol=1e-6)
    assert isinstance(out, MetaTensor)
    with pytest.raises(ValueError):
        HUWindowd("image", hu_min=100, hu_max=-100)


def test_allow_missing_keys():
    d = LoadCTd(["image", "other"], allow_missing_keys=True)
    assert d({"x": 1}) == {"x": 1}


def _nifti(tmp_path, array, name="v.nii.gz"):
    path = tmp_path / name
    nib.save(nib.Nifti1Image(array, np.eye(4)), path)
    return path


@pytest.mark.parametrize(
    "array, message",
    [
        (np.random.default_rng(0).integers(0, 256, (8, 8, 8)).astype(np.uint8), "8-bit greyscale"),
        (np.random.default_rng(0).random((8, 8, 8)).astype(np.float32), "intensity-normalised"),
        (
            np.random.default_rng(0).integers(-400, 1500, (8, 8, 8)).astype(np.int16),
            "nothing is below -500 HU",
        ),
        (np.full((8, 8, 8), np.nan, np.float32), "all NaN"),
        (np.full((64, 64, 1), -1000.0, np.float32), "2D image"),
        (np.full((64, 64), -1000.0, np.float32), "2D image"),
        (np.full((8, 8, 8, 5), -1000.0, np.float32), "several volumes"),
        (np.full((8, 8, 8, 3), -1000.0, np.float32), "colour"),
    ],
)
def test_values_that_cannot_be_hu_are_refused(tmp_path, array, message):
    path = _nifti(tmp_path, array)
    with pytest.raises(InputDataError, match=message) as e:
        LoadCTd("image")({"image": str(path)})
    assert str(e.value).startswith(str(path))


def test_raw_stored_values_pass_without_hu_check(tmp_path):
    raw = np.random.default_rng(0).integers(0, 3000, (8, 8, 8)).astype(np.int16)
    path = _nifti(tmp_path, raw)
    with pytest.raises(InputDataError, match="RescaleIntercept"):
        LoadCTd("image")({"image": str(path)})
    image = LoadCTd("image", hu_check=False)({"image": str(path)})["image"]
    np.testing.assert_array_equal(image[0].numpy(), raw)


def test_isolated_nan_voxels_become_the_lowest_value(tmp_path):
    hu = _smooth_ct()
    hu[0, 0, 0] = np.nan
    image = LoadCTd("image")({"image": str(_nifti(tmp_path, hu))})["image"]
    assert torch.isfinite(image).all() and image[0, 0, 0, 0] == float(np.nanmin(hu)) == -1100.0
