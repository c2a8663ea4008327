"""NoduleRetinaNet / NoduleDetector: shapes, malignancy loss and outputs, flat (ONNX) outputs round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.apps.detection.utils.anchor_utils import AnchorGeneratorWithAnchorShape

from common.detection import (
    DetectionLoss,
    FlatHeadOutputs,
    HeadOutputsDict,
    NoduleDetector,
    PackedHeadOutputs,
    PositiveNormalizedFocalLoss,
    build_nodule_retinanet,
    flip_views,
    fuse_view_detections,
)
from common.detection.evaluation import ScanRecord, coco_map, evaluate_records, malignancy_agreement
from common.detection.inference import detections_to_json, draw_boxes, world_lps_to_voxel


def make_detector(seed: int = 0) -> NoduleDetector:
    torch.manual_seed(seed)
    anchors = AnchorGeneratorWithAnchorShape(
        feature_map_scales=(1, 2, 4), base_anchor_shapes=((3, 3, 3), (5, 5, 5))
    )
    detector = NoduleDetector(build_nodule_retinanet(num_anchors=2, widths=(8, 16), fpn_channels=16), anchors)
    detector.set_target_keys("boxes", "labels")
    detector.set_atss_matcher(num_candidates=4, center_in_gt=False)
    detector.set_cls_loss(PositiveNormalizedFocalLoss())  # the bundle's setting: every anchor, no sampler
    detector.set_box_selector_parameters(
        score_thresh=0.0, topk_candidates_per_level=50, nms_thresh=0.2, detections_per_img=20
    )
    return detector


def test_head_maps_per_level():
    net = build_nodule_retinanet(num_anchors=2)
    out = net(torch.zeros(1, 1, 32, 24, 16))
    assert [tuple(t.shape) for t in out["classification"]] == [
        (1, 2, 16, 12, 8),
        (1, 2, 8, 6, 4),
        (1, 2, 4, 3, 2),
    ]
    assert [t.shape[1] for t in out["box_regression"]] == [12, 12, 12]
    assert [t.shape[1] for t in out["malignancy"]] == [10, 10, 10]
    assert net.size_divisible == (8, 8, 8)


def test_flat_outputs_round_trip():
    net = build_nodule_retinanet(num_anchors=2).eval()
    x = torch.rand(1, 1, 16, 16, 24)
    with torch.no_grad():
        flat = FlatHeadOutputs(net)(x)
        back = HeadOutputsDict(FlatHeadOutputs(net))(x)
        ref = net(x)
    assert len(flat) == 9
    for key in ("classification", "box_regression", "malignancy"):
        for a, b in zip(back[key], ref[key]):
            assert torch.equal(a, b)


def test_packed_outputs_are_monai_flattened_head_outputs():
    # one tensor for MONAI's bundle tools: per anchor (in RetinaNetDetector's / AnchorGenerator's order) the
    # classification logit, the 6 box offsets and the 5 malignancy logits
    detector = make_detector().eval()
    x = torch.rand(2, 1, 16, 24, 32)
    with torch.no_grad():
        packed = PackedHeadOutputs(detector.network)(x)
        maps = detector.network(x)
    flat = [detector._reshape_maps(maps[k]) for k in ("classification", "box_regression", "malignancy")]
    expected = torch.cat(flat, dim=2).permute(0, 2, 1)  # (B, anchors, C) -> (B, C, anchors)
    n_anchors = sum(2 * t.shape[2:].numel() for t in maps["classification"])
    assert packed.shape == (2, 1 + 6 + 5, n_anchors)
    assert torch.equal(packed, expected)


def test_packed_wrapper_keeps_the_checkpoint_keys():
    # MONAI's ckpt_export loads model.pt strictly into the module it exports
    torch.manual_seed(0)
    source = build_nodule_retinanet(num_anchors=2, widths=(8, 16), fpn_channels=16)
    target = PackedHeadOutputs(build_nodule_retinanet(num_anchors=2, widths=(8, 16), fpn_channels=16))
    assert list(target.state_dict()) == list(source.state_dict())
    half = {k: v.half() if v.is_floating_point() else v for k, v in source.state_dict().items()}
    target.load_state_dict(half)  # strict, as ckpt_export loads; shipped weights are float16
    loaded = target.network.state_dict()
    assert all(torch.equal(loaded[k], v.to(loaded[k].dtype)) for k, v in half.items())


def test_network_and_packed_outputs_script():
    # TorchScript (MONAI's ckpt_export): the dict network (a drop-in for NoduleDetector) and the packed one
    net = build_nodule_retinanet(num_anchors=2, widths=(8, 16), fpn_channels=16).eval()
    x = torch.rand(1, 1, 16, 16, 24)
    with torch.no_grad():
        scripted, ref = torch.jit.script(net)(x), net(x)
        for key in ("classification", "box_regression", "malignancy"):
            assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(scripted[key], ref[key]))
        packed = PackedHeadOutputs(net)
        assert torch.allclose(torch.jit.script(packed)(x), packed(x), atol=1e-6)


def test_training_losses_and_unrated_nodules():
    detector = make_detector().train()
    images = torch.rand(2, 1, 32, 32, 32)
    box = torch.tensor([[8.0, 8.0, 8.0, 16.0, 16.0, 16.0]])
    rated = [{"boxes": box, "labels": torch.tensor([0]), "malignancy": torch.tensor([4])}, _empty()]
    losses = detector(images, rated)
    assert set(losses) == {"classification", "box_regression", "malignancy"}
    assert losses["malignancy"].item() > 0
    unrated = [{"boxes": box, "labels": torch.tensor([0]), "malignancy": torch.tensor([0])}, _empty()]
    losses = detector(images, unrated)
    assert losses["malignancy"].item() == 0.0  # a nodule without a rating is not used for that loss
    total = DetectionLoss({"malignancy": 0.5})(losses)
    total.backward()  # the zero malignancy loss still reaches the head (DDP needs every gradient)
    assert detector.network.malignancy_head.cls_logits.weight.grad is not None


def test_focal_loss_is_retinanets():
    torch.manual_seed(0)
    logits, targets = torch.randn(500, 1) * 2, (torch.rand(500, 1) < 0.02).float()
    p = torch.sigmoid(logits)
    ce = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    alpha_t = 0.25 * targets + 0.75 * (1 - targets)
    expected = (alpha_t * (1 - p_t) ** 2 * ce).sum() / targets.sum()
    assert torch.allclose(PositiveNormalizedFocalLoss()(logits, targets), expected, rtol=1e-5)
    # no positive anchor (a patch without nodules): the background sum, divided by 1
    none = torch.zeros_like(targets)
    assert torch.allclose(PositiveNormalizedFocalLoss()(logits, none), (0.75 * p**2 * -torch.log1p(-p)).sum(), rtol=1e-4)


def test_bfloat16_training_forward_gives_float32_losses_close_to_float32():
    images = torch.rand(2, 1, 32, 32, 32)
    box = torch.tensor([[8.0, 8.0, 8.0, 16.0, 16.0, 16.0]])
    targets = [{"boxes": box, "labels": torch.tensor([0]), "malignancy": torch.tensor([3])}, _empty()]
    reference = make_detector().train()(images, targets)
    mixed = make_detector()
    mixed.train_autocast_dtype = torch.bfloat16
    losses = mixed.train()(images, targets)
    for name, value in losses.items():
        assert value.dtype == torch.float32
        assert value.item() == pytest.approx(reference[name].item(), rel=0.05), name
    sum(losses.values()).backward()
    assert mixed.network.classification_head.cls_logits.weight.grad.dtype == torch.float32
    # evaluation ignores the setting: the same float32 detections as without it
    with torch.no_grad():
        scores = mixed.eval()(images[:1])[0]["labels_scores"]
        mixed.train_autocast_dtype = None
        assert scores.dtype == torch.float32 and torch.equal(scores, mixed(images[:1])[0]["labels_scores"])
    assert NoduleDetector(build_nodule_retinanet(num_anchors=2), mixed.anchor_generator, train_autocast_dtype="null").train_autocast_dtype is None
    with pytest.raises(ValueError, match="not a torch dtype"):
        NoduleDetector(build_nodule_retinanet(num_anchors=2), mixed.anchor_generator, train_autocast_dtype="bf16")


def test_scans_without_nodules_train():
    detector = make_detector().train()
    losses = detector(torch.rand(2, 1, 32, 32, 32), [_empty(), _empty()])
    assert torch.isfinite(losses["classification"]) and losses["box_regression"].item() == 0.0


def test_learns_a_bright_cube_and_its_rating():
    torch.manual_seed(0)
    detector = make_detector()
    optimizer = torch.optim.Adam(detector.parameters(), lr=3e-3)
    image = torch.zeros(1, 1, 24, 24, 24)
    image[..., 6:12, 8:14, 10:16] = 1.0
    target = [
        {
            "boxes": torch.tensor([[6.0, 8.0, 10.0, 12.0, 14.0, 16.0]]),
            "labels": torch.tensor([0]),
            "malignancy": torch.tensor([4]),
        }
    ]
    detector.train()
    for _ in range(30):
        optimizer.zero_grad()
        DetectionLoss()(detector(image, target)).backward()
        optimizer.step()
    detector.eval()
    with torch.no_grad():
        (det,) = detector(image)
    scores = det["labels_scores"]
    assert torch.all(scores[:-1] >= scores[1:])  # sorted by score
    top = det["boxes"][0]
    centre = (top[:3] + top[3:]) / 2
    assert torch.allclose(centre, torch.tensor([9.0, 11.0, 13.0]), atol=2.0)
    assert det["malignancy"].shape == (len(scores), 5)
    assert torch.allclose(det["malignancy"].sum(1), torch.ones(len(scores)), atol=1e-5)
    assert int(det["malignancy"][0].argmax()) + 1 == 4
    # the 8 mirrored views, flipped back and fused, still put the top box on the cube
    detector.set_test_time_flips(True)
    with torch.no_grad():
        (fused,) = detector(image)
    top = fused["boxes"][0]
    assert torch.allclose((top[:3] + top[3:]) / 2, torch.tensor([9.0, 11.0, 13.0]), atol=2.0)
    assert torch.allclose(fused["malignancy"].sum(1), torch.ones(len(fused["boxes"])), atol=1e-5)


def test_flip_fusion_is_mirror_equivariant():
    """With all 8 views, detecting on a mirrored scan gives the mirrored detections of the scan."""
    detector = make_detector(seed=3).eval()
    detector.set_test_time_flips(True)
    image = torch.rand(1, 32, 32, 32)
    with torch.no_grad():
        (det,) = detector([image])
        (mirrored,) = detector([torch.flip(image, [1])])
    back = mirrored["boxes"].clone()
    back[:, [0, 3]] = 32 - mirrored["boxes"][:, [3, 0]]
    order, order_m = torch.argsort(det["labels_scores"]), torch.argsort(mirrored["labels_scores"])
    assert torch.allclose(det["labels_scores"][order], mirrored["labels_scores"][order_m], atol=1e-5)
    assert torch.allclose(det["boxes"][order], back[order_m], atol=1e-4)


def test_fused_score_is_the_mean_over_views():
    nodule = torch.tensor([[10.0, 10.0, 10.0, 14.0, 14.0, 14.0]])
    views = [
        {"boxes": torch.cat([nodule, nodule + 20]), "labels_scores": torch.tensor([0.8, 0.7]),
         "labels": torch.zeros(2, dtype=torch.long), "malignancy": torch.tensor([[1.0, 0, 0, 0, 0], [0, 1.0, 0, 0, 0]])},
        {"boxes": nodule + 1, "labels_scores": torch.tensor([0.4]), "labels": torch.zeros(1, dtype=torch.long),
         "malignancy": torch.tensor([[0, 0, 1.0, 0, 0]])},
    ]
    fused = fuse_view_detections(views)
    # the nodule, seen in both views: (0.8 + 0.4) / 2; the look-alike seen in one: 0.7 / 2
    assert torch.allclose(fused["labels_scores"], torch.tensor([0.6, 0.35]))
    assert torch.allclose(fused["boxes"][0], nodule[0] + 1 / 3)  # score-weighted mean box
    assert torch.allclose(fused["malignancy"][0], torch.tensor([2 / 3, 0, 1 / 3, 0, 0]))
    assert flip_views(False) == ((),) and len(flip_views(True)) == 8 and flip_views([[2]]) == ((), (2,))
    assert flip_views("true") == flip_views(True) and flip_views("4") == flip_views(4)
    with pytest.raises(ValueError, match="axes must be 0, 1 or 2"):
        flip_views([[3]])


def _empty() -> dict[str, torch.Tensor]:
    return {
        "boxes": torch.zeros(0, 6),
        "labels": torch.zeros(0, dtype=torch.long),
        "malignancy": torch.zeros(0, dtype=torch.long),
    }


def test_json_detections_sorted_with_malignancy():
    out = detections_to_json(
        [[0, 0, 0, 5, 5, 5], [10, 10, 10, 8, 8, 8]],
        [0.3, 0.9],
        [[1, 0, 0, 0, 0], [0, 0.1, 0.2, 0.6, 0.1]],
        score_threshold=0.0,
    )
    assert [d["score"] for d in out] == [0.9, 0.3]
    assert out[0]["center"] == [10, 10, 10] and out[0]["malignancy"]["rating"] == 4
    assert detections_to_json(np.zeros((0, 6)), np.zeros(0), np.zeros((0, 5))) == []


def test_world_lps_to_voxel_and_drawing():
    affine = np.diag([-2.0, -2.0, 3.0, 1.0])  # RAS affine of an LPS-ordered grid with 2 x 2 x 3 mm voxels
    affine[:3, 3] = [40.0, 30.0, -30.0]
    # LPS centre (-20, -10, 0) = RAS (20, 10, 0) -> voxel (10, 10, 10)
    vox = world_lps_to_voxel([[-20.0, -10.0, 0.0, 4.0, 4.0, 6.0]], affine)
    assert np.allclose(vox, [[9, 9, 9, 11, 11, 11]])
    vol = draw_boxes((20, 20, 20), vox)
    assert vol[9, 9, 9] == 1 and vol[10, 10, 10] == 0 and vol.max() == 1


def test_report_metrics_on_a_known_case():
    records = [
        ScanRecord(
            pred_box=[[0, 0, 0, 8, 8, 8], [50, 50, 50, 6, 6, 6]],
            pred_score=[0.9, 0.8],
            pred_malignancy=[[0, 0, 0.2, 0.8, 0], [1, 0, 0, 0, 0]],
            gt_box=[[1, 0, 0, 8, 8, 8], [-40, 0, 0, 4, 4, 4]],
            gt_malignancy=[5, 0],
            gt_ignore_box=[[50, 50, 50, 40, 40, 40]],
        )
    ]
    report, curves = evaluate_records(records, min_diameter_mm=6.0)
    assert curves["all"].num_nodules == 2 and curves[">=6mm"].num_nodules == 1
    assert report["cpm_6mm"] == pytest.approx(1.0)  # the 8 mm nodule found without FP; the mass is ignored
    assert report["cpm"] == pytest.approx(0.5)  # the 4 mm nodule is missed
    assert report["malignancy"] == {
        "within_one_grade_accuracy": 1.0,
        "exact_accuracy": 0.0,
        "num_rated_detected": 1,
    }
    assert malignancy_agreement(records)["num_rated_detected"] == 1
    assert coco_map(records)["mAP_IoU_0.10_0.50_0.05_MaxDet_100"] > 0.4


def test_unmatched_anchors_inside_a_nodule_are_ignored_not_negative():
    from common.detection.detector import ignore_unmatched_inside_boxes

    anchors = torch.tensor(
        [[0.0, 0, 0, 4, 4, 4], [2.0, 2, 2, 6, 6, 6], [10.0, 10, 10, 14, 14, 14], [1.0, 1, 1, 3, 3, 3]]
    )
    boxes = torch.tensor([[1.0, 1, 1, 6, 6, 6]])
    matched = torch.tensor([0, -1, -1, -2])
    out = ignore_unmatched_inside_boxes(matched, anchors, boxes)
    # matched stays matched, the unmatched anchor centred in the nodule is ignored, the far one stays
    # background, an already ignored one stays ignored; the input is not modified
    assert out.tolist() == [0, -2, -1, -2]
    assert matched.tolist() == [0, -1, -1, -2]
    assert ignore_unmatched_inside_boxes(matched, anchors, torch.zeros((0, 6))).tolist() == matched.tolist()
