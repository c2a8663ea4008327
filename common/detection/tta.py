"""Test-time augmentation for nodule detection: mirrored views of a scan and the fusion of their boxes.

The detector runs on the scan and on its mirror images (``FLIP_VIEWS``: every combination of the three
axes, the mirroring of nnU-Net-style test-time augmentation), maps each view's boxes back with MONAI's ``flip_boxes`` and fuses
them per nodule: detections of different views whose centres fall in the box of the highest-scoring one
form a cluster; the cluster's score is the sum of its members' scores divided by the number of views (a
view that missed the nodule contributes 0), and its box and malignancy probabilities are the
score-weighted means. A nodule found in every view keeps its score; a look-alike that only one view
scores high drops by the number of views. Boxes are fused on the image grid, before conversion to world
coordinates, so the PyTorch and ONNX inference share it.

Clustering uses centre-in-box rather than IoU because the boxes of 6 mm nodules are 2-3 voxels wide at
the bundle's spacings: one voxel of disagreement between views brings their IoU under 0.2.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from common.bundle_utils import flag

__all__ = ["FLIP_VIEWS", "flip_views", "fuse_view_detections"]

#: the identity and the seven mirror images of a 3D scan (axes of the image grid flipped per view)
FLIP_VIEWS: tuple[tuple[int, ...], ...] = ((), (0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2))


def flip_views(setting: bool | int | Sequence[Sequence[int]]) -> tuple[tuple[int, ...], ...]:
    """The views of a test-time flip setting.

    Args:
        setting: ``False`` or ``1`` (the scan alone), ``True`` (all 8 views), a number of views ``n`` (the
            first ``n`` of ``FLIP_VIEWS``), or explicit lists of axes per view (``[]`` is the scan itself);
            from the command line also ``"false"``, ``"true"`` or ``"4"``.

    Returns:
        tuples of flipped axes, one per view, the identity first.

    Raises:
        ValueError: for a number outside 1-8 or an axis outside 0-2.
    """
    if isinstance(setting, str):  # from the command line: "true", "false", "4"
        word = setting.strip()
        try:
            setting = int(word) if word.isdigit() else flag(word)
        except ValueError:
            raise ValueError(
                f"test-time flips: {setting!r} is not true, false, a number of views or lists of axes"
            ) from None
    if isinstance(setting, bool):
        return FLIP_VIEWS if setting else ((),)
    if isinstance(setting, int):
        if not 1 <= setting <= len(FLIP_VIEWS):
            raise ValueError(f"test-time flips: {setting} views requested, 1 to {len(FLIP_VIEWS)} exist")
        return FLIP_VIEWS[:setting]
    views = [tuple(int(a) for a in axes) for axes in setting]
    if any(a not in (0, 1, 2) for axes in views for a in axes):
        raise ValueError(f"test-time flips: axes must be 0, 1 or 2, got {setting}")
    views = [()] + [v for v in views if v != ()]
    return tuple(views)


def fuse_view_detections(
    views: Sequence[dict[str, Tensor]],
    box_key: str = "boxes",
    score_key: str = "labels_scores",
    label_key: str = "labels",
    extra_keys: Sequence[str] = ("malignancy",),
    max_detections: int = 100,
) -> dict[str, Tensor]:
    """Fuse the detections of several views of one scan (see the module docstring).

    Args:
        views: per view, detections already mapped back to the scan's grid: ``box_key`` (N, 6) corner
            boxes, ``score_key`` (N,), ``label_key`` (N,), and per-detection ``extra_keys`` (N, ...)
            averaged like the boxes.
        box_key, score_key, label_key: keys of the detections.
        extra_keys: per-detection values fused by score-weighted mean (kept only when every view has them).
        max_detections: detections kept, highest fused score first.

    Returns:
        one dict of detections with the same keys, sorted by decreasing fused score.
    """
    num_views = len(views)
    device = views[0][box_key].device
    # a few hundred detections: clustered on the CPU, returned on the views' device
    views = [{k: v.detach().cpu() for k, v in view.items()} for view in views]
    extra = [k for k in extra_keys if all(k in v for v in views)]
    boxes = torch.cat([v[box_key].float() for v in views])
    scores = torch.cat([v[score_key].float() for v in views])
    labels = torch.cat([v[label_key] for v in views])
    view_ids = torch.cat(
        [torch.full((v[score_key].shape[0],), i, dtype=torch.long) for i, v in enumerate(views)]
    )
    extras = {k: torch.cat([v[k].float() for v in views]) for k in extra}
    if boxes.shape[0] == 0:
        return {
            k: v.to(device)
            for k, v in {box_key: boxes, score_key: scores, label_key: labels, **extras}.items()
        }
    order = torch.argsort(scores, descending=True)
    centres = (boxes[:, :3] + boxes[:, 3:]) / 2
    # centre of j inside box i (same label) for every pair
    inside = (centres[None, :, :] >= boxes[:, None, :3]) & (centres[None, :, :] <= boxes[:, None, 3:])
    inside = inside.all(-1) & (labels[:, None] == labels[None, :])
    free = torch.ones(boxes.shape[0], dtype=torch.bool)
    fused: dict[str, list[Tensor]] = {box_key: [], score_key: [], label_key: [], **{k: [] for k in extra}}
    for i in order.tolist():
        if not free[i]:
            continue
        members, taken_views = [], set()
        candidates = order[(free & inside[i])[order]]  # highest score first: one detection per view
        for j, view in zip(candidates.tolist(), view_ids[candidates].tolist()):
            if view not in taken_views:
                members.append(j)
                taken_views.add(view)
        idx = torch.tensor(members)
        free[idx] = False
        w = scores[idx]
        weights = w / w.sum().clamp(min=1e-12)
        fused[box_key].append((boxes[idx] * weights[:, None]).sum(0))
        fused[score_key].append(w.sum() / num_views)
        fused[label_key].append(labels[i])
        for k in extra:
            fused[k].append((extras[k][idx] * weights.reshape(-1, *[1] * (extras[k].dim() - 1))).sum(0))
    out = {k: torch.stack(v) for k, v in fused.items()}
    keep = torch.argsort(out[score_key], descending=True)[:max_detections]
    return {k: v[keep].to(device) for k, v in out.items()}
