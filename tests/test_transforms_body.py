"""The body mask (common.transforms.body) and the lung side split on synthetic chest CTs with a couch.

Each scanner-world case the lung bundle must survive has a phantom here: the patient table, a thin couch
shell touching the back, arms down beside the chest, a field of view that cuts through the patient, only
part of the chest scanned, and the same scan stored in another voxel order.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from common.segmentation.transforms import LEFT_LUNG, RIGHT_LUNG, LungPostprocessd, split_binary_lungs
from common.synthetic.config import make_rng
from common.synthetic.ct_phantom import make_chest_phantom
from common.transforms import BodyMaskd, body_mask


@pytest.fixture(scope="module")
def phantom():
    # 3 mm voxels, as the bundle's network sees them; the table is drawn below the body
    return make_chest_phantom(make_rng(3), {"matrix": 128, "slice_spacing_mm": [3.0, 3.0], "table": True})


def inside_share(mask: np.ndarray, body: np.ndarray) -> float:
    return float((mask & body).sum()) / float(mask.sum())


def test_body_mask_holds_the_lungs_and_leaves_out_the_table_and_the_air(phantom):
    body = body_mask(phantom.hu, phantom.affine)
    lungs = phantom.lung_label > 0
    assert inside_share(lungs, body) > 0.999
    table = (phantom.hu > 100) & ~phantom.body_mask & ~phantom.bone_mask
    assert table.sum() > 1000, "the phantom should have a table"
    assert inside_share(table, body) < 0.01
    # the body matches the phantom's skin (up to the outline voxels)
    iou = (body & phantom.body_mask).sum() / (body | phantom.body_mask).sum()
    assert iou > 0.97
    assert not body[0].any() and not body[:, -1].any(), "the air at the image border is outside"


def test_thin_couch_shell_touching_the_back_comes_loose():
    phantom = make_chest_phantom(make_rng(4), {"matrix": 128, "slice_spacing_mm": [3.0, 3.0], "table": False})
    hu = phantom.hu.copy()
    # a 3 mm carbon-fibre shell (one voxel) right under the lowest point of the back, across the whole width:
    # it touches the skin along the spine, with the air gap under the rest of the back
    posterior = np.nonzero(phantom.body_mask.any(axis=(0, 2)))[0][0]
    shell = np.zeros_like(phantom.body_mask)
    shell[:, posterior - 1, :] = True
    hu[shell] = 200.0
    body = body_mask(hu, phantom.affine)
    assert inside_share(shell, body) < 0.1
    assert inside_share(phantom.lung_label > 0, body) > 0.999
    # the air beside the back, up to 3 cm above the shell
    gap = (hu < -900) & ~phantom.body_mask
    gap[:, : posterior, :] = False
    gap[:, posterior + 10 :, :] = False
    assert inside_share(gap, body) < 0.01, "the air between back and couch is outside the body"


def test_arms_down_stay_body_and_lungs_stay_inside(phantom):
    hu = phantom.hu.copy()
    x, y = np.mgrid[: hu.shape[0], : hu.shape[1]]
    xs = np.nonzero(phantom.body_mask.any(axis=(1, 2)))[0]
    ys = np.nonzero(phantom.body_mask.any(axis=(0, 2)))[0]
    cy = 0.5 * (ys[0] + ys[-1])
    arms = np.zeros(hu.shape[:2], bool)
    for cx in (xs[0] - 8, xs[-1] + 8):  # upper arms 2-3 cm beside the chest wall, touching it at the elbows
        arms |= ((x - cx) / 9.0) ** 2 + ((y - cy) / 12.0) ** 2 < 1
    hu[arms] = 40.0
    body = body_mask(hu, phantom.affine)
    assert inside_share(phantom.lung_label > 0, body) > 0.999
    arm_voxels = np.broadcast_to(arms[..., None], hu.shape)
    assert inside_share(arm_voxels, body) > 0.95, "arms are part of the patient"


def test_truncated_field_of_view_keeps_cut_lungs_inside(phantom):
    # the reconstruction circle cuts through the chest wall and both lungs on the left and right
    xs = np.nonzero((phantom.lung_label > 0).any(axis=(1, 2)))[0]
    crop = slice(xs[0] + 4, xs[-1] - 4)
    hu, lungs = phantom.hu[crop], phantom.lung_label[crop] > 0
    assert lungs[0].any() and lungs[-1].any(), "the lungs must touch the image border"
    body = body_mask(hu, phantom.affine)
    assert inside_share(lungs, body) > 0.99
    # air in front of the chest still reaches the anterior border and stays outside
    anterior_air = (hu < -900) & ~phantom.body_mask[crop]
    assert inside_share(anterior_air, body) < 0.05


def test_part_of_the_chest_only(phantom):
    zs = np.nonzero((phantom.lung_label > 0).any(axis=(0, 1)))[0]
    mid = slice(int(zs.mean()) - 3, int(zs.mean()) + 3)  # 6 slices, 18 mm
    body = body_mask(phantom.hu[..., mid], phantom.affine)
    assert inside_share(phantom.lung_label[..., mid] > 0, body) > 0.999
    assert inside_share(phantom.body_mask[..., mid], body) > 0.97


@pytest.mark.parametrize("order", ["RAS", "LPS", "flipped_first_axis"])
def test_body_mask_and_sides_follow_the_affine(phantom, order):
    hu, label, affine = phantom.hu, phantom.lung_label, phantom.affine.copy()
    flips = {"RAS": (), "LPS": (0, 1), "flipped_first_axis": (0,)}[order]
    for axis in flips:
        hu, label = np.flip(hu, axis), np.flip(label, axis)
        # voxel i now sits where voxel n-1-i was
        n = phantom.hu.shape[axis]
        affine[:3, 3] += affine[:3, axis] * (n - 1)
        affine[:3, axis] *= -1
    body = body_mask(np.ascontiguousarray(hu), affine)
    assert inside_share(label > 0, body) > 0.999
    split = split_binary_lungs(label > 0, affine)
    for side in (RIGHT_LUNG, LEFT_LUNG):
        ref = label == side
        assert 2 * (ref & (split == side)).sum() / (ref.sum() + (split == side).sum()) > 0.98
    # the right lung is on the patient's right (+x in RAS world) whatever the voxel order
    ijk = np.argwhere(split == RIGHT_LUNG).mean(0)
    ijk_left = np.argwhere(split == LEFT_LUNG).mean(0)
    assert (affine[:3, :3] @ ijk + affine[:3, 3])[0] > (affine[:3, :3] @ ijk_left + affine[:3, 3])[0]


def test_bodymaskd_masks_outside_and_stores_the_mask(phantom):
    image = MetaTensor(torch.from_numpy(phantom.hu.copy())[None], affine=torch.as_tensor(phantom.affine))
    out = BodyMaskd("image", body_key="body")({"image": image})
    body = out["body"][0].numpy() > 0.5
    assert out["body"].shape == image.shape and torch.allclose(out["body"].affine, image.affine)
    assert np.all(out["image"][0].numpy()[~body] == -1000.0)
    np.testing.assert_array_equal(out["image"][0].numpy()[body], phantom.hu[body])


def test_lung_postprocess_drops_lung_outside_the_body():
    shape = (40, 40, 20)
    prob = torch.zeros((3, *shape))
    prob[0] = 1.0
    lung = torch.zeros(shape, dtype=torch.bool)
    lung[5:15, 10:25, 4:16] = True
    gap = torch.zeros(shape, dtype=torch.bool)
    gap[16:40, 0:6, :] = True  # larger than the lung, outside the body (air under the back)
    for region in (lung, gap):
        prob[:, region] = torch.tensor([0.1, 0.8, 0.1])[:, None]
    body = torch.ones((1, *shape))
    body[0, :, :6, :] = 0
    out = LungPostprocessd("pred", body_key="body")({"pred": prob, "body": body})["pred"]
    labels = torch.argmax(out, dim=0)
    assert bool((labels[lung] == RIGHT_LUNG).all())
    assert not bool(labels[gap].any())
    # without the body the larger gap component would win
    labels = torch.argmax(LungPostprocessd("pred")({"pred": prob})["pred"], dim=0)
    assert bool((labels[gap] == RIGHT_LUNG).all())
