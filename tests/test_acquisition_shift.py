"""Acquisition-shift transforms, temperature scaling and the threshold rule of the shifted validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from common.classification.shift import THRESHOLD_GRID, choose_threshold, fit_temperature, softmax
from common.transforms import SHIFTS, AcquisitionShiftd, RandJPEGd, acquisition_shift


def _film(shape=(224, 180)) -> np.ndarray:
    """A smooth grey image with some structure, in [0, 1]."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    return (0.5 + 0.3 * np.sin(yy / 9.0) * np.cos(xx / 13.0) + 0.1 * (xx / shape[1])).astype(np.float32)


@pytest.mark.parametrize("name", list(SHIFTS))
def test_each_shift_is_deterministic_in_range_and_keeps_the_shape(name):
    film = _film()
    a, b = acquisition_shift(film, name), acquisition_shift(film, name)
    assert a.shape == film.shape and a.dtype == np.float32
    assert np.array_equal(a, b)
    assert a.min() >= 0.0 and a.max() <= 1.0
    if name == "clean":
        assert np.array_equal(a, film)
    else:
        assert np.abs(a - film).mean() > 1e-3, f"{name} changes nothing"


def test_shifts_do_what_their_names_say():
    film = _film()
    assert (
        acquisition_shift(film, "gamma_0.6").mean()
        > film.mean()
        > acquisition_shift(film, "gamma_1.6").mean()
    )
    # blur lowers and unsharp masking raises the local contrast (the spread of a high-pass residual)
    detail = film - np.roll(film, 1, axis=1)
    assert (
        np.std(acquisition_shift(film, "blur") - np.roll(acquisition_shift(film, "blur"), 1, axis=1))
        < detail.std()
    )
    sharp = acquisition_shift(film, "unsharp")
    assert np.std(sharp - np.roll(sharp, 1, axis=1)) > detail.std()
    # equalised grey values are close to uniform; the black frame of zoom_out is black
    assert np.histogram(acquisition_shift(film, "equalized"), bins=4, range=(0, 1))[0].min() > film.size * 0.2
    out = acquisition_shift(film, "zoom_out")
    assert out[:5].max() == 0.0 and out[:, :5].max() == 0.0


def test_unknown_shift_is_refused():
    with pytest.raises(ValueError, match="unknown acquisition shift 'sepia'"):
        acquisition_shift(_film(), "sepia")
    with pytest.raises(ValueError, match="sepia"):
        AcquisitionShiftd(keys="image", shift="sepia")


def test_dict_transforms_keep_the_meta_tensor():
    image = MetaTensor(torch.as_tensor(_film())[None], meta={"filename_or_obj": "film.png"})
    shifted = AcquisitionShiftd(keys="image", shift="gamma_1.6")({"image": image})["image"]
    assert isinstance(shifted, MetaTensor) and shifted.meta["filename_or_obj"] == "film.png"
    assert torch.allclose(shifted[0], torch.as_tensor(acquisition_shift(_film(), "gamma_1.6")))

    always = RandJPEGd(keys="image", prob=1.0, quality_range=(10, 10))
    jpeg = always({"image": image})["image"]
    assert isinstance(jpeg, MetaTensor) and jpeg.shape == image.shape
    assert 1e-4 < float((jpeg - image).abs().mean()) < 0.05
    never = RandJPEGd(keys="image", prob=0.0)
    assert never({"image": image})["image"] is image
    with pytest.raises(ValueError, match="quality_range"):
        RandJPEGd(keys="image", quality_range=(50, 100))


def test_fit_temperature_recovers_the_temperature_of_the_data():
    rng = np.random.default_rng(0)
    logits = rng.normal(0.0, 3.0, (4000, 3))
    labels = np.array([rng.choice(3, p=p) for p in softmax(logits, 2.0)])
    assert fit_temperature(logits, labels) == pytest.approx(2.0, rel=0.1)
    # a network that is right and sure of it needs no softening
    confident = np.eye(3)[labels] * 2.0
    assert fit_temperature(confident, labels) < 1.0


def test_threshold_rule_averages_youden_over_conditions():
    y = np.array([0] * 50 + [1] * 50)
    clean = np.r_[np.linspace(0.05, 0.40, 50), np.linspace(0.86, 0.99, 50)]
    # under a shift the normal films score higher: only thresholds above 0.80 still separate them
    shifted = np.r_[np.linspace(0.30, 0.80, 50), np.linspace(0.86, 0.99, 50)]
    clean_only = choose_threshold([y], [clean])
    assert clean_only["threshold"] == pytest.approx(0.63, abs=0.01)  # middle of the plateau (0.40, 0.86]
    both = choose_threshold([y, y], [clean, shifted])
    assert 0.80 < both["threshold"] <= 0.86 and both["mean_youden"] == pytest.approx(1.0)
    assert both["threshold"] in THRESHOLD_GRID
    with pytest.raises(ValueError):
        choose_threshold([], [])
