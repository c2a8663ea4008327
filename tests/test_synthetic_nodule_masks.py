"""Every annotated synthetic nodule has voxels in its mask, sub-voxel nodules included."""

from __future__ import annotations

import numpy as np

from common.synthetic.ct_phantom import make_chest_phantom
from common.synthetic.nodules import insert_nodules

PHANTOM_CFG = {"matrix": 64, "in_plane_spacing_mm": 5.0, "slice_spacing_mm": [5.0, 5.0], "vessel_generations": 4}
# nodules of 1-3 mm on 5 mm voxels: most cover no voxel by half, which used to leave them out of the mask
TINY_NODULES = {
    "no_nodule_probability": 0.0,
    "nodules_per_scan": [4, 4],
    "diameter_mm": {"median": 2.0, "sigma": 0.3, "min": 1.0, "max": 3.0},
    "min_diameter_voxels": 0.0,
    "min_separation_mm": 2.0,
}


def test_sub_voxel_nodules_keep_their_centre_voxel():
    found = 0
    for seed in range(3):
        rng = np.random.default_rng(seed)
        phantom = make_chest_phantom(rng, PHANTOM_CFG, add_noise=False)
        nodules, mask = insert_nodules(phantom, rng, TINY_NODULES)
        for nodule in nodules:
            value = nodule.index + 1
            assert nodule.diameter_mm < 5.0
            assert (mask == value).any(), f"seed {seed}: nodule {value} ({nodule.diameter_mm:.2f} mm) has no voxel"
            centre = tuple(int(v) for v in np.floor(np.asarray(nodule.center_voxel) + 0.5))
            assert mask[centre] == value
            found += 1
    assert found >= 6
