"""scripts/chest_wall_thickness.py measures the lateral distance from the body's edge to the lungs and their depth."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("chest_wall", REPO / "scripts" / "chest_wall_thickness.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lateral_wall_of_a_box_phantom():
    module = _module()
    hu = np.full((100, 60, 30), -1000.0, np.float32)
    hu[10:90, 5:55] = 40.0  # the body: x 10..89
    lung = np.zeros(hu.shape, bool)
    lung[30:45, 15:45, 5:25] = True  # right lung starts 20 voxels inside the body
    lung[55:75, 15:45, 5:25] = True  # left lung ends 15 voxels before the body's edge (89 - 74)
    hu[lung] = -850.0
    assert module.lateral_wall_mm(hu, lung, spacing_x=2.0) == (20 * 2.0 + 15 * 2.0) / 2
    assert np.isnan(module.lateral_wall_mm(hu, np.zeros_like(lung), 2.0))


def test_lung_depth_on_the_slice_of_largest_lung_area():
    module = _module()
    hu = np.full((100, 80, 30), -1000.0, np.float32)
    hu[10:90, 10:70] = 40.0  # the body: 60 voxels deep
    hu[10:90, 0:4] = 200.0  # a couch under it, not part of the body
    lung = np.zeros(hu.shape, bool)
    lung[30:70, 20:65, 10:12] = True  # 45 voxels deep on the slices of largest area
    lung[30:70, 30:40, 12:25] = True  # shallower elsewhere
    hu[lung] = -850.0
    assert module.lung_depth_ratio(hu, lung) == 45 / 60
    assert np.isnan(module.lung_depth_ratio(hu, np.zeros_like(lung)))
