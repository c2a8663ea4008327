"""DICOM series reading: slice order, rescale, affine, series choice and clear errors."""

from __future__ import annotations

import logging
import random
import shutil
import warnings

import numpy as np
import pydicom
import pytest
from dicom_factory import write_ct_series, write_radiograph
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from common.errors import InputDataError
from common.io.dicom import read_dicom_series


def _phantom(shape=(12, 10, 7), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    hu = rng.integers(-1000, 1200, size=shape).astype(np.float32)
    hu[:, :, 0] = -1000.0  # air slice: air must come out near -1000 HU
    return hu


def _copies_of_real_slice(name: str, folder, n: int, gap: float = 5.0, order=None):
    """A series of ``n`` copies of a real pydicom slice, each shifted ``gap`` mm along the normal."""
    src = pydicom.dcmread(get_testdata_file(name))
    iop = np.array([float(v) for v in src.ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    origin = np.array([float(v) for v in src.ImagePositionPatient])
    series_uid = generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"{i:02d}.dcm" for i in (order or range(n))]
    for k in range(n):
        ds = pydicom.dcmread(get_testdata_file(name))
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.ImagePositionPatient = [f"{v:.4f}" for v in origin + k * gap * normal]
        ds.save_as(folder / names[k])
    return src


def test_shuffled_file_names_restore_slice_order(tmp_path):
    hu = _phantom()
    names = [f"IM{n:04d}" for n in random.Random(3).sample(range(100), hu.shape[2])]  # no .dcm, random order
    _, affine = write_ct_series(tmp_path / "series", hu, names=names)
    volume, read_affine, meta = read_dicom_series(tmp_path / "series")
    assert volume.shape == hu.shape and volume.dtype == np.float32
    np.testing.assert_array_equal(volume, hu)
    np.testing.assert_allclose(read_affine, affine, atol=1e-4)
    assert meta["n_slices"] == 7 and meta["modality"] == "CT"
    assert np.allclose(meta["spacing"], (0.7, 0.8, 2.5))
    assert [f.split("/")[-1] for f in meta["files"]] == names  # names[k] holds slice k


def test_oblique_descending_series_uses_the_slice_normal(tmp_path):
    # Rows tilted 30 degrees in the axial plane, feet-first: positions decrease along z.
    a = np.deg2rad(30)
    rc, cc = (np.cos(a), np.sin(a), 0.0), (-np.sin(a), np.cos(a), 0.0)
    hu = _phantom(seed=1)
    names = [f"{k}.dcm" for k in range(hu.shape[2])][::-1]  # name order opposite to position order
    _, affine = write_ct_series(tmp_path / "s", hu, row_cosine=rc, col_cosine=cc, names=names)
    volume, read_affine, _ = read_dicom_series(tmp_path / "s")
    np.testing.assert_array_equal(volume, hu)
    np.testing.assert_allclose(read_affine, affine, atol=1e-4)
    # voxel (i, j, k) -> RAS: x and y negated w.r.t. the LPS position of the first slice
    np.testing.assert_allclose(read_affine[:3, 3], [120.0, 110.0, 30.0], atol=1e-4)


def test_gantry_tilt_keeps_exact_geometry_and_warns(tmp_path, caplog):
    hu = _phantom(seed=8)
    # 2.5 mm along the normal and 0.5 mm posterior per slice: about 11.3 degrees of tilt
    _, affine = write_ct_series(tmp_path / "s", hu, shift_per_slice=(0.0, 0.5, 0.0))
    with caplog.at_level(logging.WARNING, logger="common.io.dicom"):
        volume, read_affine, _ = read_dicom_series(tmp_path / "s")
    np.testing.assert_array_equal(volume, hu)
    np.testing.assert_allclose(read_affine, affine, atol=1e-4)
    np.testing.assert_allclose(read_affine[:3, 2], [0.0, -0.5, 2.5], atol=1e-4)
    assert "11.3 degrees" in caplog.text and "gantry tilt" in caplog.text


def test_real_ct_slices_rescaled_to_hu_air_near_minus_1000(tmp_path):
    src = _copies_of_real_slice("693_UNCR.dcm", tmp_path / "ct", n=3, order=[2, 0, 1])
    volume, affine, _ = read_dicom_series(tmp_path / "ct")
    assert volume.shape == (512, 512, 3)
    stored = src.pixel_array.astype(np.float64)
    np.testing.assert_array_equal(
        volume[:, :, 0], (stored * float(src.RescaleSlope) + float(src.RescaleIntercept)).T
    )
    # air inside the field of view, left of the body (rows 250-260, columns 5-15)
    assert abs(float(volume[5:15, 250:260, :].mean()) + 1000.0) < 30.0
    assert volume.min() == -3024.0  # outside-of-field padding after the -1024 intercept
    np.testing.assert_allclose(np.diag(affine)[:3], [-0.478516, -0.478516, 5.0], atol=1e-5)


def test_rescale_applied_per_slice(tmp_path):
    hu = _phantom(seed=2)
    files, _ = write_ct_series(tmp_path / "s", hu)
    ds = pydicom.dcmread(files[3])
    ds.RescaleIntercept, ds.RescaleSlope = "-2048", "2"
    ds.PixelData = np.round((hu[:, :, 3].T + 2048) / 2).astype(np.int16).tobytes()
    ds.save_as(files[3])
    volume, _, _ = read_dicom_series(tmp_path / "s")
    np.testing.assert_allclose(volume[:, :, 3], 2 * np.round((hu[:, :, 3] + 2048) / 2) - 2048)
    np.testing.assert_array_equal(volume[:, :, 2], hu[:, :, 2])


def test_several_series_picks_most_slices_logs_without_identifiers(tmp_path, caplog):
    folder = tmp_path / "study"
    write_ct_series(folder / "a", _phantom((6, 6, 4)), series_description="SCOUT", series_number=1)
    hu = _phantom((6, 6, 9), seed=4)
    write_ct_series(folder / "b", hu, series_description="LUNG 1mm", series_number=5)
    write_radiograph(folder / "cr.dcm", np.zeros((8, 8)), modality="CR")
    (folder / "notes.txt").write_text("not dicom")
    (folder / "b" / "readme.dcm").write_text("a text file named like a slice")
    (folder / "DICOMDIR").write_bytes(b"\0" * 300)
    with caplog.at_level(logging.INFO, logger="common.io.dicom"):
        volume, _, meta = read_dicom_series(folder)
    np.testing.assert_array_equal(volume, hu)
    assert meta["series_description"] == "LUNG 1mm"
    # series are named by number, modality and size: descriptions are free text and stay out of the log
    assert "series 5 (CT, 9 slices)" in caplog.text and "series 1 (CT, 4 slices)" in caplog.text
    assert "LUNG 1mm" not in caplog.text and "SCOUT" not in caplog.text
    assert "Doe" not in caplog.text and "SECRET" not in caplog.text


def test_free_text_identifiers_never_reach_a_log(tmp_path, caplog):
    """A name and a record number typed into descriptions, comments and staff names: the readers log no
    free text, and a later log line that prints such a value (a user's handler, a future message) is
    redacted, for a CT series and for a radiograph."""
    from common.logging_utils import forget_identifiers
    from common.transforms import load_radiograph

    forget_identifiers()
    leaks = ("CHEST DOE^JOHN MRN12345", "St Elsewhere General", "Dr^Strangelove", "MRN12345 follow-up")
    files, _ = write_ct_series(tmp_path / "ct", _phantom((6, 6, 4)), series_description=leaks[0])
    for f in files:
        ds = pydicom.dcmread(f)
        ds.InstitutionName, ds.ReferringPhysicianName, ds.ImageComments = leaks[1], leaks[2], leaks[3]
        ds.save_as(f)
    film = write_radiograph(tmp_path / "cr.dcm", np.arange(64, dtype=np.uint16).reshape(8, 8), modality="CR")
    ds = pydicom.dcmread(film)
    ds.SeriesDescription, ds.StudyDescription = "PA DOE^JANE 0042", "CHEST DOE^JANE 0042"
    ds.save_as(film)
    logger = logging.getLogger("common.io.dicom")
    with caplog.at_level(logging.DEBUG):
        read_dicom_series(tmp_path / "ct")
        load_radiograph(str(film))
        for value in (*leaks, "PA DOE^JANE 0042", "CHEST DOE^JANE 0042", "Strangelove"):
            logger.warning("a handler that prints header text: %s", value)
    text = caplog.text
    for value in (*leaks, "DOE^JANE", "Strangelove", "MRN12345"):
        assert value not in text, value
    assert text.count("[REDACTED]") >= 7


def test_unconvertible_header_values_are_tolerated_quietly(tmp_path, caplog):
    files, _ = write_ct_series(tmp_path, _phantom((6, 6, 3)), series_number=37)
    series_number = b"\x20\x00\x11\x00IS\x02\x0037"  # (0020,0011) IS, 2 bytes: "37"
    for path in files:
        data = path.read_bytes()
        assert data.count(series_number) == 1
        path.write_bytes(data.replace(series_number, series_number[:-1] + b"Q"))  # "3Q": not an IS
    with warnings.catch_warnings(record=True) as caught:  # plain pydicom quotes the value in a warning
        warnings.simplefilter("always")
        _ = pydicom.dcmread(files[0]).SeriesNumber
    assert any("3Q" in str(w.message) for w in caught)
    caplog.clear()
    with caplog.at_level(logging.DEBUG), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        volume, _, meta = read_dicom_series(tmp_path)
    assert volume.shape == (6, 6, 3) and meta["series_number"] == -1
    # pydicom's value warnings quote the value; none reaches a warning or a log line
    assert "3Q" not in caplog.text
    assert not [w for w in caught if "3Q" in str(w.message)]


def test_series_uid_selects_a_series(tmp_path):
    write_ct_series(tmp_path / "a", _phantom((6, 6, 9)))
    small = _phantom((6, 6, 4), seed=5)
    files, _ = write_ct_series(tmp_path / "b", small)
    uid = pydicom.dcmread(files[0]).SeriesInstanceUID
    volume, _, meta = read_dicom_series(tmp_path, series_uid=uid)
    np.testing.assert_array_equal(volume, small)
    assert meta["series_uid"] == uid


def test_one_file_reads_its_whole_series(tmp_path):
    hu = _phantom(seed=6)
    files, affine = write_ct_series(tmp_path / "s", hu)
    write_ct_series(tmp_path / "s", _phantom((12, 10, 3), seed=7), names=["o1.dcm", "o2.dcm", "o3.dcm"])
    volume, read_affine, _ = read_dicom_series(files[4])
    np.testing.assert_array_equal(volume, hu)
    np.testing.assert_allclose(read_affine, affine, atol=1e-4)


def test_enhanced_multiframe_ct():
    path = get_testdata_file("eCT_Supplemental.dcm")
    volume, affine, meta = read_dicom_series(path)
    ds = pydicom.dcmread(path)
    assert volume.shape == (512, 512, 2) and meta["n_slices"] == 2
    # The slice normal of rows (-1, 0, 0) x columns (0, 1, 0) points to the feet, so frame 1 (z = -149)
    # comes before frame 0 (z = -159) along it.
    np.testing.assert_array_equal(volume[:, :, 0], ds.pixel_array[1].T.astype(np.float32) - 1024.0)
    np.testing.assert_array_equal(volume[:, :, 1], ds.pixel_array[0].T.astype(np.float32) - 1024.0)
    # row cosine (-1, 0, 0) in LPS is +x in RAS; pixel spacing 0.388672 mm; 10 mm steps to the feet
    np.testing.assert_allclose(affine[:3, :3], np.diag([0.388672, -0.388672, -10.0]), atol=1e-6)
    np.testing.assert_allclose(affine[:3, 3], [-99.5, 301.5, -149.0], atol=1e-6)


def test_single_slice_is_an_error(tmp_path):
    shutil.copy(get_testdata_file("CT_small.dcm"), tmp_path / "only.dcm")
    with pytest.raises(InputDataError, match="single DICOM slice") as e:
        read_dicom_series(tmp_path)
    assert str(tmp_path) in str(e.value)


def test_missing_positions_is_an_error(tmp_path):
    write_ct_series(tmp_path, _phantom((6, 6, 3)), skip_positions=True)
    with pytest.raises(InputDataError, match="ImagePositionPatient"):
        read_dicom_series(tmp_path)


def test_missing_slice_gives_uneven_spacing_error(tmp_path):
    files, _ = write_ct_series(tmp_path, _phantom((6, 6, 6)))
    files[3].unlink()
    with pytest.raises(InputDataError, match="uneven slice spacing.*missing slice") as e:
        read_dicom_series(tmp_path)
    assert str(tmp_path) in str(e.value)


def test_truncated_slice_names_the_file(tmp_path):
    files, _ = write_ct_series(tmp_path, _phantom((16, 16, 4)))
    data = files[2].read_bytes()
    files[2].write_bytes(data[: len(data) - 100])
    with pytest.raises(InputDataError, match="pixel data") as e:
        read_dicom_series(tmp_path)
    assert str(files[2]) in str(e.value)


def test_duplicate_positions_is_an_error(tmp_path):
    files, _ = write_ct_series(tmp_path, _phantom((6, 6, 4)))
    ds = pydicom.dcmread(files[1])
    ds.SOPInstanceUID = generate_uid()
    ds.save_as(tmp_path / "copy.dcm")
    with pytest.raises(InputDataError, match="same position"):
        read_dicom_series(tmp_path)


def test_radiograph_given_to_ct_reader_names_the_modality(tmp_path):
    path = tmp_path / "chest.dcm"
    shutil.copy(get_testdata_file("RG1_UNCI.dcm"), path)
    with pytest.raises(InputDataError, match="modality is CR: a projection radiograph, not CT") as e:
        read_dicom_series(path)
    assert str(path) in str(e.value)
    with pytest.raises(InputDataError, match="CR"):
        read_dicom_series(tmp_path)


def test_mr_series_is_not_ct(tmp_path):
    write_ct_series(tmp_path, _phantom((6, 6, 3)), modality="MR")
    with pytest.raises(InputDataError, match="modality is MR, not CT"):
        read_dicom_series(tmp_path)
    volume, _, _ = read_dicom_series(tmp_path, modalities=("MR",))
    assert volume.shape == (6, 6, 3)


def test_folder_without_dicom_is_an_error(tmp_path):
    (tmp_path / "a.txt").write_text("hello")
    with pytest.raises(InputDataError, match="no DICOM image files"):
        read_dicom_series(tmp_path)
    (tmp_path / "case1.nii.gz").write_bytes(b"")
    with pytest.raises(InputDataError, match=r"volume files \(case1.nii.gz\): give a file path"):
        read_dicom_series(tmp_path)


def test_text_file_named_dcm_is_an_error(tmp_path):
    path = tmp_path / "scan.dcm"
    path.write_text("this is not an image\n" * 20)
    with pytest.raises(InputDataError, match="not a DICOM file") as e:
        read_dicom_series(path)
    assert str(path) in str(e.value)
