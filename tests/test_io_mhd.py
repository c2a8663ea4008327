import numpy as np
import pytest

from common.errors import InputDataError
from common.io.mhd import read_mhd, write_mhd


def test_round_trip_geometry_and_values(tmp_path):
    rng = np.random.default_rng(0)
    vol = rng.integers(-1024, 2000, size=(7, 5, 3)).astype(np.int16)
    path = write_mhd(tmp_path / "scan.mhd", vol, spacing=(0.7, 0.8, 2.5), origin_lps=(-180.0, -200.0, -310.0))
    out, affine_ras, meta = read_mhd(path)
    np.testing.assert_array_equal(out, vol)
    assert out.dtype == np.int16
    # voxel (1, 2, 3) in LPS is origin + spacing * index; RAS flips x and y
    lps = meta["lps_affine"] @ np.array([1, 2, 3, 1.0])
    np.testing.assert_allclose(lps[:3], [-180 + 0.7, -200 + 1.6, -310 + 7.5])
    ras = affine_ras @ np.array([1, 2, 3, 1.0])
    np.testing.assert_allclose(ras[:3], [180 - 0.7, 200 - 1.6, -310 + 7.5])


def test_direction_columns_are_axis_directions(tmp_path):
    direction = np.array([[1.0, 0, 0], [0, 1, 0], [0, 0, -1]])
    write_mhd(tmp_path / "d.mhd", np.zeros((2, 2, 2), np.int16), (1, 1, 2), (0, 0, 0), direction)
    assert "TransformMatrix = 1 0 0 0 1 0 0 0 -1" in (tmp_path / "d.mhd").read_text()
    _, _, meta = read_mhd(tmp_path / "d.mhd")
    np.testing.assert_allclose(meta["lps_affine"] @ [0, 0, 1, 1], [0, 0, -2, 1])


def test_truncated_raw_names_file(tmp_path):
    path = write_mhd(tmp_path / "t.mhd", np.zeros((10, 10, 10), np.int16), (1, 1, 1))
    raw = tmp_path / "t.raw"
    raw.write_bytes(raw.read_bytes()[:100])
    with pytest.raises(InputDataError, match=r"t\.mhd: truncated"):
        read_mhd(path)


def test_not_a_header(tmp_path):
    bad = tmp_path / "photo.mhd"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    with pytest.raises(InputDataError, match="photo.mhd"):
        read_mhd(bad)
