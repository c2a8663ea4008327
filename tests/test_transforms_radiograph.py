"""LoadRadiographd and LetterboxResized: real CR files, 8/16-bit PNG, colour modes, letterbox geometry."""

from __future__ import annotations

import shutil

import numpy as np
import pydicom
import pytest
import torch
from dicom_factory import write_radiograph
from monai.data import MetaTensor, list_data_collate
from monai.transforms import Compose, Invertd
from PIL import Image
from pydicom.data import get_testdata_file

from common.errors import InputDataError
from common.transforms import LetterboxResized, LoadRadiographd, letterbox_to_original


def _load(path) -> MetaTensor:
    return LoadRadiographd("image")({"image": str(path)})["image"]


def _ramp(h=40, w=30, top=4095) -> np.ndarray:
    return np.linspace(0, top, h * w).reshape(h, w).round().astype(np.uint16)


def test_real_monochrome1_cr_is_windowed_and_inverted():
    path = get_testdata_file("RG1_UNCI.dcm")
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "MONOCHROME1" and ds.Modality == "CR"
    image = _load(path)
    assert image.shape == (1, ds.Rows, ds.Columns) and image.dtype == torch.float32
    # DICOM linear window (PS3.3 C.11.2.1.2) on the stored values, then MONOCHROME1 inverted.
    c, w = float(ds.WindowCenter), float(ds.WindowWidth)
    stored = ds.pixel_array.astype(np.float64)
    expected = 1.0 - np.clip((stored - (c - 0.5)) / (w - 1) + 0.5, 0.0, 1.0)
    np.testing.assert_allclose(image[0].numpy(), expected, atol=1e-5)
    # MONOCHROME1 displays low stored values white: after inversion the lowest value is the brightest.
    low, high = (
        np.unravel_index(stored.argmin(), stored.shape),
        np.unravel_index(stored.argmax(), stored.shape),
    )
    assert image[0][low] > image[0][high]
    assert image.meta["image_inverted"] is True


def test_monochrome1_without_window_is_inverted_over_its_range(tmp_path):
    pixels = _ramp()
    path = write_radiograph(tmp_path / "m1.dcm", pixels, modality="DX", photometric="MONOCHROME1")
    image = _load(path)[0].numpy()
    np.testing.assert_allclose(image, 1.0 - pixels / pixels.max(), atol=1e-6)
    assert image[0, 0] == 1.0 and image[-1, -1] == 0.0


def test_window_and_rescale_are_applied(tmp_path):
    pixels = _ramp()
    # real-world value = 2 * stored - 100; window 3000 +- 1000 on real-world values
    path = write_radiograph(
        tmp_path / "w.dcm", pixels, modality="CR", window=(3000, 2001), slope=2.0, intercept=-100.0
    )
    image = _load(path)[0].numpy()
    real = 2.0 * pixels - 100.0
    expected = np.clip((real - 2999.5) / 2000.0 + 0.5, 0.0, 1.0)
    np.testing.assert_allclose(image, expected, atol=1e-5)
    assert image.min() == 0.0 and image.max() == 1.0


@pytest.mark.filterwarnings("error::UserWarning")
def test_real_voi_lut_sequence_and_modality_lut():
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    path = get_testdata_file("vlut_04.dcm")  # 8-bit stored values through a 16-bit VOI LUT
    ds = pydicom.dcmread(path)
    lut = np.asarray(ds.VOILUTSequence[0].LUTData, dtype=np.float64)
    shown = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds).astype(np.float64)
    image = _load(path)[0].numpy()
    np.testing.assert_allclose(image, (shown - lut.min()) / (lut.max() - lut.min()), atol=1e-6)

    path = get_testdata_file("mlut_18.dcm")  # signed 12-bit values through a Modality LUT, no window
    ds = pydicom.dcmread(path)
    real = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    np.testing.assert_allclose(
        _load(path)[0].numpy(), (real - real.min()) / (real.max() - real.min()), atol=1e-6
    )


def test_non_linear_voi_lut_is_applied(tmp_path):
    pixels = _ramp(16, 16, 255)
    lut = np.round((np.arange(256) / 255.0) ** 2 * 65535)
    path = write_radiograph(tmp_path / "lut.dcm", pixels, bits_stored=8, voi_lut=lut)
    np.testing.assert_allclose(_load(path)[0].numpy(), (pixels / 255.0) ** 2, atol=1e-4)


def test_multiframe_and_ct_dicom_are_refused(tmp_path):
    path = write_radiograph(tmp_path / "mf.dcm", _ramp(), frames=3)
    with pytest.raises(InputDataError, match="multi-frame") as e:
        _load(path)
    assert str(path) in str(e.value)
    ct = tmp_path / "slice.dcm"
    shutil.copy(get_testdata_file("CT_small.dcm"), ct)
    with pytest.raises(InputDataError, match="modality is CT") as e:
        _load(ct)
    assert str(ct) in str(e.value)


def test_sixteen_bit_png_keeps_full_range(tmp_path):
    pixels = np.linspace(0, 65535, 64 * 48).reshape(64, 48).round().astype(np.uint16)
    path = tmp_path / "x16.png"
    Image.fromarray(pixels).save(path)
    assert Image.open(path).mode.startswith("I")
    image = _load(path)[0].numpy()
    np.testing.assert_allclose(image, pixels / 65535.0, atol=1e-6)
    assert len(np.unique(image)) > 1000  # not squeezed through 8 bits
    assert image.min() == 0.0 and image.max() == 1.0


def test_eight_bit_and_colour_modes_become_one_grey_channel(tmp_path):
    grey = np.tile(np.arange(0, 250, 10, dtype=np.uint8), (20, 1))  # 20 x 25
    Image.fromarray(grey).save(tmp_path / "l.png")
    np.testing.assert_allclose(_load(tmp_path / "l.png")[0].numpy(), grey / 255.0, atol=1e-6)

    rgb_grey = np.stack([grey] * 3, axis=-1)
    Image.fromarray(rgb_grey).save(tmp_path / "rgb_grey.png")
    np.testing.assert_allclose(_load(tmp_path / "rgb_grey.png")[0].numpy(), grey / 255.0, atol=1e-6)

    rgba = np.concatenate([rgb_grey, np.full((20, 25, 1), 128, np.uint8)], axis=-1)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    image = _load(tmp_path / "rgba.png")
    assert image.shape == (1, 20, 25)
    np.testing.assert_allclose(image[0].numpy(), grey / 255.0, atol=1e-6)  # alpha ignored

    colour = np.zeros((20, 25, 3), np.uint8)
    colour[..., 0] = 200  # pure red: ITU-R 601 luma 0.299 * 200
    Image.fromarray(colour).save(tmp_path / "red.png")
    colour[0, 0] = 0  # give the image contrast
    Image.fromarray(colour).save(tmp_path / "red.png")
    np.testing.assert_allclose(float(_load(tmp_path / "red.png")[0, 5, 5]), 0.299 * 200 / 255, atol=1e-6)

    Image.fromarray(grey).convert("P").save(tmp_path / "pal.png")
    np.testing.assert_allclose(_load(tmp_path / "pal.png")[0].numpy(), grey / 255.0, atol=1e-6)

    Image.fromarray(grey).convert("LA").save(tmp_path / "la.png")
    np.testing.assert_allclose(_load(tmp_path / "la.png")[0].numpy(), grey / 255.0, atol=1e-6)

    Image.fromarray(rgb_grey).save(tmp_path / "x.jpeg", quality=95)
    jpeg = _load(tmp_path / "x.jpeg")
    assert jpeg.shape == (1, 20, 25)
    assert np.abs(jpeg[0].numpy() - grey / 255.0).mean() < 0.02


def test_blank_and_truncated_images_are_refused(tmp_path):
    Image.fromarray(np.full((30, 30), 7, np.uint8)).save(tmp_path / "blank.png")
    with pytest.raises(InputDataError, match="blank"):
        _load(tmp_path / "blank.png")
    Image.fromarray(_ramp(200, 200, 255).astype(np.uint8)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputDataError, match="truncated or corrupt") as e:
        _load(tmp_path / "cut.png")
    assert "cut.png" in str(e.value)


def test_letterbox_geometry_meta_and_invert(tmp_path):
    h, w = 100, 50
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    smooth = (0.3 + 0.4 * yy + 0.2 * xx).astype(np.float32)
    image = MetaTensor(torch.from_numpy(smooth)[None])
    letterbox = LetterboxResized("image", size=64)
    out = letterbox({"image": image})
    sq = out["image"]
    assert sq.shape == (1, 64, 64)
    assert out["image"].meta["letterbox_scale"] == pytest.approx(0.64)
    np.testing.assert_array_equal(sq.meta["letterbox_pad"], [0, 0, 16, 16])
    np.testing.assert_array_equal(sq.meta["letterbox_original_size"], [100, 50])
    assert float(sq[0, :, :16].abs().max()) == 0.0 and float(sq[0, :, 48:].abs().max()) == 0.0  # pad columns
    assert float(sq[0, :, 16:48].min()) > 0.25  # the image fills the middle 32 columns

    # Invertd undoes it through MONAI's own trace
    pre = Compose([letterbox])
    out["pred"] = sq.clone()
    back = Invertd("pred", transform=pre, orig_keys="image")(out)["pred"]
    assert back.shape == (1, h, w)
    np.testing.assert_allclose(back[0].numpy()[2:-2, 2:-2], smooth[2:-2, 2:-2], atol=0.02)

    # and the meta-data route for a saliency map computed on the square
    mapped = letterbox_to_original(sq, sq.meta["letterbox_pad"], sq.meta["letterbox_original_size"])
    assert mapped.shape == (1, h, w)
    np.testing.assert_allclose(mapped[0].numpy()[2:-2, 2:-2], smooth[2:-2, 2:-2], atol=0.02)


def test_letterbox_wide_image_pads_top_and_bottom():
    image = MetaTensor(torch.ones(1, 30, 90))
    sq = LetterboxResized("image", size=60, mode="nearest")({"image": image})["image"]
    np.testing.assert_array_equal(sq.meta["letterbox_pad"], [20, 20, 0, 0])
    assert float(sq[0, :20].sum()) == 0.0 and float(sq[0, 20:40].min()) == 1.0


def test_png_and_dicom_collate_into_one_batch(tmp_path):
    Image.fromarray((_ramp(40, 30, 255)).astype(np.uint8)).save(tmp_path / "a.png")
    write_radiograph(tmp_path / "b.dcm", _ramp(), modality="DX", photometric="MONOCHROME1")
    load = Compose([LoadRadiographd("image"), LetterboxResized("image", size=32)])
    batch = list_data_collate([load({"image": str(tmp_path / n)}) for n in ("a.png", "b.dcm")])
    assert batch["image"].shape == (2, 1, 32, 32)
    assert batch["image"].meta["image_format"] == ["png", "dicom"]
    assert batch["image"].meta["image_inverted"].tolist() == [False, True]
