"""Unit tests of common.segmentation.transforms: binary-mask splitting, post-processing, resampling back."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from common.segmentation.transforms import (
    LungPostprocessd,
    ResampleToInputGridd,
    SplitLungsd,
    resample_labels_to_grid,
    split_binary_lungs,
)


def two_lungs(shape=(60, 50, 40), touching=True) -> np.ndarray:
    """Right lung at high first index (RAS), left at low; they overlap in the middle when touching."""
    i, j, k = np.mgrid[: shape[0], : shape[1], : shape[2]]
    gap = 0 if touching else 6
    right = ((i - 40 - gap / 2) / 14) ** 2 + ((j - 25) / 18) ** 2 + ((k - 20) / 16) ** 2 < 1
    left = ((i - 19 + gap / 2) / 14) ** 2 + ((j - 25) / 18) ** 2 + ((k - 20) / 16) ** 2 < 1
    label = np.zeros(shape, np.uint8)
    label[left] = 2
    label[right] = 1
    return label


RAS = np.diag([2.0, 2.0, 3.0, 1.0])
# DICOM-like voxel order: first axis towards the patient's left, second posterior
LPS_ORDER = np.array([[-2.0, 0, 0, 118], [0, -2.0, 0, 98], [0, 0, 3.0, 0], [0, 0, 0, 1]])


@pytest.mark.parametrize("touching", [True, False])
def test_split_binary_lungs_ras(touching):
    label = two_lungs(touching=touching)
    split = split_binary_lungs(label > 0, RAS)
    assert set(np.unique(split)) == {0, 1, 2}
    agreement = (split == label).mean()
    assert agreement > (0.99 if touching else 0.9999)


def test_split_binary_lungs_follows_the_affine_not_the_array_order():
    label = two_lungs()[::-1, ::-1].copy()  # same anatomy stored LPS-order
    split = split_binary_lungs(label > 0, LPS_ORDER)
    assert (split == label).mean() > 0.99
    # reading the same array as RAS would swap the sides
    swapped = split_binary_lungs(label > 0, RAS)
    assert (swapped == label).mean() < 0.9


def test_splitlungsd_auto_modes():
    label = two_lungs()
    binary = MetaTensor(torch.from_numpy((label > 0).astype(np.float32) * 255)[None], affine=torch.as_tensor(RAS))
    out = SplitLungsd("label")({"label": binary})["label"]
    assert isinstance(out, MetaTensor) and out.meta["lung_label_split"] is True
    assert torch.allclose(out.affine.double(), torch.as_tensor(RAS))
    assert (out[0].numpy() == label).mean() > 0.99
    # a left/right label map is kept as it is
    lr = MetaTensor(torch.from_numpy(label.astype(np.float32))[None], affine=torch.as_tensor(RAS))
    kept = SplitLungsd("label")({"label": lr})["label"]
    assert torch.equal(kept, lr)
    with pytest.raises(ValueError):
        SplitLungsd("label", mode="guess")


def _probabilities(label: np.ndarray) -> torch.Tensor:
    onehot = torch.nn.functional.one_hot(torch.from_numpy(label).long(), 3).permute(3, 0, 1, 2).float()
    return 0.1 + 0.8 * onehot / 1.0  # not exactly one-hot, so changed voxels are recognisable


def test_lung_postprocess_removes_islands_and_fills_holes():
    label = two_lungs(touching=False)
    noisy = label.copy()
    noisy[2:5, 2:5, 2:5] = 1  # island of "right lung" far away
    noisy[40, 25, 20] = 0  # hole inside the right lung
    prob = _probabilities(noisy)
    out = LungPostprocessd("pred")({"pred": prob})["pred"]
    assert torch.equal(torch.argmax(out, 0), torch.from_numpy(label).long())
    # untouched voxels keep the network's probabilities
    same = torch.from_numpy(noisy == label)
    assert torch.equal(out[:, same], prob[:, same])
    assert torch.equal(out[:, 3, 3, 3], torch.tensor([1.0, 0.0, 0.0]))


def test_resample_identity_grid_is_exact():
    label = two_lungs()
    out = resample_labels_to_grid(_probabilities(label), RAS, RAS, label.shape)
    assert np.array_equal(out, label)


def test_resample_low_res_probabilities_to_fine_grid():
    """A smooth sphere at 4 mm resampled onto a 1 mm grid with another orientation and origin."""
    fine_shape = (80, 80, 80)
    fine = np.array([[-1.0, 0, 0, 40], [0, -1.0, 0, 40], [0, 0, 1.0, -40], [0, 0, 0, 1]])  # LPS order, centred
    coarse = np.diag([4.0, 4.0, 4.0, 1.0])
    coarse[:3, 3] = -42.0  # not aligned with the fine grid
    n = 22
    c = np.stack(np.mgrid[:n, :n, :n], -1) * 4.0 - 42.0
    dist = np.linalg.norm(c - np.array([5.0, 0.0, 0.0]), axis=-1)
    p_lung = 1.0 / (1.0 + np.exp((dist - 25.0) / 2.0))  # soft sphere, radius 25 mm, centre x=+5 (right)
    prob = torch.from_numpy(np.stack([1 - p_lung, p_lung, np.zeros_like(p_lung)])).float()
    out = resample_labels_to_grid(prob, coarse, fine, fine_shape, slab=7)
    idx = np.stack(np.mgrid[:80, :80, :80], -1).reshape(-1, 3)
    world = (fine[:3, :3] @ idx.T + fine[:3, 3:]).T.reshape(80, 80, 80, 3)
    truth = np.linalg.norm(world - np.array([5.0, 0.0, 0.0]), axis=-1) < 25.0
    pred = out == 1
    dice = 2 * (pred & truth).sum() / (pred.sum() + truth.sum())
    assert dice > 0.98
    assert set(np.unique(out)) <= {0, 1}


def test_resample_to_input_grid_uses_original_geometry():
    label = two_lungs()
    coarse = label[::2, ::2, ::2]
    image = MetaTensor(
        torch.zeros((1, *coarse.shape)),
        affine=torch.as_tensor(np.diag([4.0, 4.0, 6.0, 1.0])),
        meta={"original_affine": RAS, "spatial_shape": np.array(label.shape), "filename_or_obj": "a.nii.gz"},
    )
    out = ResampleToInputGridd("pred")({"pred": _probabilities(coarse), "image": image})["pred"]
    assert out.shape == (1, *label.shape) and out.dtype == torch.uint8
    assert np.allclose(out.affine.numpy(), RAS)
    assert (out[0].numpy() == label).mean() > 0.97
    with pytest.raises(KeyError):
        ResampleToInputGridd("pred")({"pred": _probabilities(coarse), "image": MetaTensor(torch.zeros(1, 2, 2, 2))})


@pytest.mark.parametrize("labels_only", [False, True])
def test_separable_path_matches_grid_sample(labels_only):
    """Axis-aligned grids (flips, permutation, scaling, shift) take the separable path: same result."""
    rng = np.random.default_rng(0)
    label = two_lungs((30, 26, 20))
    prob = _probabilities(label) + 0.05 * torch.from_numpy(rng.random((3, 30, 26, 20))).float()
    if labels_only:
        prob = torch.from_numpy(label[None].astype(np.float32))
    src = np.diag([4.0, 4.0, 6.0, 1.0])
    src[:3, 3] = [-60.0, -52.0, -60.0]
    # target: axes permuted (y, x, z), x flipped, finer and shifted by a fraction of a voxel
    dst = np.array([[0, -1.1, 0, 55.3], [1.3, 0, 0, -50.2], [0, 0, 2.2, -58.9], [0, 0, 0, 1]])
    shape = (80, 100, 50)
    fast = resample_labels_to_grid(prob, src, dst, shape, slab=7)
    reference = resample_labels_to_grid(prob, src, dst, shape, separable=False)
    assert (fast == reference).mean() > 0.9995
    assert (fast > 0).sum() > 1000
