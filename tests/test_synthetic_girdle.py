"""common.synthetic.girdle: the neck, shoulders, clavicles and arms drawn onto a projected chest phantom."""

from __future__ import annotations

import numpy as np
import pytest

from common.errors import InputDataError
from common.synthetic import cxr as cxr_mod
from common.synthetic.drr import MU_WATER_PER_MM
from common.synthetic.girdle import DEFAULT_GIRDLE, add_shoulder_girdle, girdle_enabled

FAST = {"pool_size": 2}


def _trunk_planes(rows: int = 160, cols: int = 200, half_width: int = 50, apex: int = 40):
    """Planes of a straight-sided trunk (40 mm thick, no bone) running the whole height, 2 mm pixels."""
    soft = np.zeros((rows, cols), np.float32)
    centre = cols // 2
    soft[:, centre - half_width : centre + half_width] = 40.0 * MU_WATER_PER_MM
    body = (soft > 0).astype(np.float32) * 40.0
    return soft, np.zeros_like(soft), body, np.zeros_like(soft), (2.0, 2.0), float(apex), float(centre), 200.0


def _draw(arms_up: float, seed: int = 0):
    soft, bone, body, bone_path, spacing, apex, centre, width = _trunk_planes()
    cfg = {**DEFAULT_GIRDLE, "probability": 1.0, "arms_up_probability": arms_up, "arm_angle_deg": [15.0, 20.0]}
    return add_shoulder_girdle(soft, bone, body, bone_path, spacing, apex, centre, width, np.random.default_rng(seed), cfg)


def test_off_by_default_and_draws_nothing_when_off():
    assert not girdle_enabled(DEFAULT_GIRDLE)
    soft, bone, body, bone_path, spacing, apex, centre, width = _trunk_planes()
    rng = np.random.default_rng(0)
    assert add_shoulder_girdle(soft, bone, body, bone_path, spacing, apex, centre, width, rng, DEFAULT_GIRDLE) is None


def test_the_trunk_narrows_to_a_neck_above_the_shoulders():
    for seed in range(4):
        out = _draw(arms_up=0.0, seed=seed)
        top = out["body_path"][2] > 10.0  # 76 mm above the apex: the neck only (the arms hang down)
        cols = np.nonzero(top)[0]
        assert cols.size and 0.25 * 100 <= cols.size <= 0.45 * 100  # 30-40% of the chest's 100 columns
        assert abs(cols.mean() - 100) < 2  # centred on the midline
        assert out["bone"][2].max() == 0  # no bone in this bone-free trunk's neck


def test_arms_at_the_sides_or_raised_beside_the_head():
    down, up = _draw(arms_up=0.0), _draw(arms_up=1.0)
    beside_chest = (slice(100, 160), np.r_[0:50, 150:200])  # lateral to the trunk, below the shoulders
    beside_head = (slice(0, 20), np.r_[0:70, 130:200])  # lateral to the neck, above the shoulders
    assert down["bone_path"][beside_chest].max() > 0 and down["body_path"][beside_chest].max() > 10
    assert down["bone_path"][beside_head].max() == 0
    assert up["bone_path"][beside_head].max() > 0 and up["body_path"][beside_head].max() > 10
    assert up["bone_path"][beside_chest].max() == 0


def test_clavicles_cross_the_apices():
    out = _draw(arms_up=0.0)
    band = out["bone_path"][30:60]  # 20 mm above to 40 mm below the apex
    for side in (slice(60, 90), slice(110, 140)):  # over each lung, from beside the sternum to the chest wall
        assert (band[:, side].max(axis=0) > 0).all()  # a continuous bar from medial to lateral
    assert (out["bone"] >= 0).all() and np.isfinite(out["soft"]).all()


def test_render_cxr_girdle_leaves_the_lungs_and_lesions_alone():
    kwargs = dict(size=96, pediatric=True, pattern="lobar", severity=0.6)
    plain = cxr_mod.render_cxr(np.random.default_rng(4), config=FAST, **kwargs)
    off = cxr_mod.render_cxr(np.random.default_rng(4), config={**FAST, "girdle": {"arm_radius": [0.2, 0.3]}}, **kwargs)
    np.testing.assert_array_equal(plain["image"], off["image"])  # probability 0: the film it always was
    drawn = cxr_mod.render_cxr(np.random.default_rng(4), config={**FAST, "girdle": {"probability": 1.0}}, **kwargs)
    assert (drawn["image"] != plain["image"]).any()
    for key in ("lung_mask", "lesion_mask"):
        np.testing.assert_array_equal(drawn[key], plain[key])
    # the shoulders and arms are body: more of the film's top corners is body than without them
    corners = (slice(0, 30), np.r_[0:20, 76:96])
    assert drawn["body_mask"][corners].sum() > plain["body_mask"][corners].sum()
    with pytest.raises(InputDataError, match="girdle.probabilty"):
        cxr_mod.render_config({"girdle": {"probabilty": 1.0}})
