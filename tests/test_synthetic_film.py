"""common.synthetic.film: the room's marks on a synthetic chest film (markers, text, leads, blades, grid)."""

from __future__ import annotations

import numpy as np
import pytest

from common.errors import InputDataError
from common.synthetic import cxr as cxr_mod
from common.synthetic.film import DEFAULT_FILM, dress_film, film_enabled

FAST = {"pool_size": 2}


def _only(mark: str) -> dict:
    """DEFAULT_FILM with one mark always drawn."""
    return {**DEFAULT_FILM, f"{mark}_probability": 1.0}


def _flat_film(value: float = 0.3, size: int = 128) -> np.ndarray:
    return np.full((size, size), value, dtype=np.float32)


def test_defaults_draw_nothing_and_leave_the_film_alone():
    assert not film_enabled(DEFAULT_FILM)
    film = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    np.testing.assert_array_equal(dress_film(film, np.random.default_rng(1), DEFAULT_FILM), film)


def test_marker_is_bright_and_on_the_patients_right_mostly():
    left_of_centre = 0
    for seed in range(20):
        out = dress_film(_flat_film(), np.random.default_rng(seed), _only("marker"))
        changed = np.argwhere(np.abs(out - 0.3) > 0.2)
        assert changed.size and out.max() >= 0.7  # lead letters are white on the film (anti-aliased when small)
        assert changed[:, 0].mean() < 0.45 * out.shape[0]  # in the upper part of the film
        left_of_centre += changed[:, 1].mean() < out.shape[1] / 2
    assert left_of_centre >= 14  # "R", on the viewer's left, most of the time


def test_collimation_fills_a_border_with_one_value():
    for seed in range(6):
        out = dress_film(_flat_film(), np.random.default_rng(seed), {**_only("collimation"), "collimation_inset": [0.1, 0.12]})
        borders = [out[:3].ravel(), out[-3:].ravel(), out[:, :3].ravel(), out[:, -3:].ravel()]
        covered = [b for b in borders if np.abs(b - 0.3).min() > 0.15]
        assert covered  # at least one side is outside the field
        assert all(np.ptp(b) < 0.05 for b in covered)  # unexposed or blacked out: one grey level
        assert np.isclose(out[60:68, 60:68], 0.3).all()  # the middle of the film is untouched


def test_grid_lines_are_fine_periodic_columns():
    out = dress_film(_flat_film(0.5), np.random.default_rng(0), {**_only("grid"), "grid_period_px": [4.0, 4.0],
                                                                 "grid_amplitude": [0.03, 0.03]})
    np.testing.assert_allclose(out, np.broadcast_to(out[:1], out.shape), atol=1e-6)  # every row the same: vertical lines
    spectrum = np.abs(np.fft.rfft(out[0] - out[0].mean()))
    assert int(spectrum.argmax()) == out.shape[1] // 4  # one line every 4 pixels
    assert 0.02 < out[0].std() * np.sqrt(2) < 0.04


def test_leads_and_text_only_brighten():
    for mark in ("lead", "text"):
        out = dress_film(_flat_film(), np.random.default_rng(3), _only(mark))
        assert (out >= 0.3 - 1e-6).all() and (out > 0.5).sum() > 10, mark


def test_marks_are_reproducible_and_in_range():
    everything = {**DEFAULT_FILM, **{k: 1.0 for k in DEFAULT_FILM if k.endswith("_probability")}}
    film = np.random.default_rng(5).random((96, 96)).astype(np.float32)
    a = dress_film(film, np.random.default_rng(7), everything)
    b = dress_film(film, np.random.default_rng(7), everything)
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float32 and a.min() >= 0.0 and a.max() <= 1.0


def test_render_cxr_marks_the_image_not_the_masks():
    plain = cxr_mod.render_cxr(np.random.default_rng(4), size=96, pattern="lobar", severity=0.6, config=FAST)
    off = cxr_mod.render_cxr(np.random.default_rng(4), size=96, pattern="lobar", severity=0.6,
                             config={**FAST, "film": {"marker_probability": 0.0}})
    np.testing.assert_array_equal(plain["image"], off["image"])  # marks off: the film it always was
    marked = cxr_mod.render_cxr(np.random.default_rng(4), size=96, pattern="lobar", severity=0.6,
                                config={**FAST, "film": {"marker_probability": 1.0, "lead_probability": 1.0}})
    assert (marked["image"] != plain["image"]).any()
    for key in ("lung_mask", "lesion_mask", "body_mask"):
        np.testing.assert_array_equal(marked[key], plain[key])
    with pytest.raises(InputDataError, match="film.marker_probabilty"):
        cxr_mod.render_config({"film": {"marker_probabilty": 1.0}})
