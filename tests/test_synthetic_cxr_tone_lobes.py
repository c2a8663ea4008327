"""Pneumonia film settings of the transfer experiment: the S-shaped display curve and consolidations of several lobes."""

from __future__ import annotations

import numpy as np
import pytest

from common.errors import InputDataError
from common.synthetic import cxr as cxr_mod
from common.synthetic.drr import detector_response

FAST = {"pool_size": 2}


def test_s_curve_is_monotone_keeps_the_ends_and_flattens_the_highlights():
    ramp = np.linspace(0.0, 3.0, 301, dtype=np.float32)[None, :]  # line integrals: a smooth wedge
    flat = dict(unsharp_amount=0.0, scatter_fraction=0.0, window=(0.0, 3.0))
    plain = detector_response(ramp, **flat)
    curved = detector_response(ramp, s_curve=(0.35, 0.1), **flat)
    np.testing.assert_allclose(plain, ramp / 3.0, atol=1e-6)
    assert curved[0, 0] == 0.0 and abs(curved[0, -1] - 1.0) < 1e-6
    slope = np.diff(curved[0])
    assert (slope >= 0).all()
    # steepest at the centre (the lungs), flat in the highlights (mediastinum, bone, dense opacities)
    assert int(slope.argmax()) in range(100, 110)  # the centre, 0.35 of the window
    assert slope[100:110].mean() > 5 * slope[-30:].mean()
    assert slope[100:110].mean() > 2 * slope.mean()


def test_render_s_curve_changes_the_film_not_the_masks_and_is_off_by_default():
    kwargs = dict(size=96, pediatric=True, pattern="lobar", severity=0.8)
    plain = cxr_mod.render_cxr(np.random.default_rng(3), config=FAST, **kwargs)
    assert cxr_mod.render_config(None)["s_curve"] is None
    curved = cxr_mod.render_cxr(np.random.default_rng(3), config={**FAST, "s_curve": {"centre": [0.35, 0.35],
                                                                                  "width": [0.1, 0.1]}}, **kwargs)
    assert (curved["image"] != plain["image"]).any()
    for key in ("lung_mask", "lesion_mask", "body_mask"):
        np.testing.assert_array_equal(curved[key], plain[key])
    # the lungs get more of the grey scale: a wider spread of grey levels inside them
    lungs = plain["lung_mask"] > 0
    assert curved["image"][lungs].std() > plain["image"][lungs].std()
    with pytest.raises(InputDataError, match="s_curve"):
        cxr_mod.render_config({"s_curve": {"center": [0.3, 0.4], "width": [0.1, 0.1]}})


def _lobes_hit(n_lobes: int, seed: int) -> int:
    cfg = cxr_mod.render_config({**FAST, "lesion": {"lobar_lobes": [n_lobes, n_lobes], "lobar_extent": [0.5, 0.5]}})
    base = cxr_mod._get_base(True, 0, cfg)
    dhu, _ = cxr_mod._lesion_hu(base, "lobar", 0.5, np.random.default_rng(seed), cfg)
    hit = 0
    for side in (1, 2):
        for mask in cxr_mod._lobe_masks(base.lung_label, side).values():
            hit += bool(mask.any() and (dhu[mask] > 0).mean() > 0.05)
    return hit


def test_lobar_lobes_consolidates_that_many_lobes():
    for seed in range(3):
        assert _lobes_hit(1, seed) == 1
        assert _lobes_hit(3, seed) == 3
