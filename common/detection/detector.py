"""``NoduleDetector``: MONAI's ``RetinaNetDetector`` with a malignancy rating per box.

Everything detection-specific is MONAI's: anchors (``AnchorGeneratorWithAnchorShape``), matching (ATSS or
IoU ``Matcher``), hard-negative sampling, the box coder, the classification and box-regression losses,
score threshold, top-k per level and NMS (``BoxSelector``'s steps, ``batched_nms``). This subclass adds:

- a third head output (``malignancy``, 5 logits per anchor) that is reshaped like the other two and passed
  through sliding-window inference;
- a cross-entropy loss on the malignancy logits of the foreground anchors whose matched nodule has a
  rating (1-5); a nodule whose rating is 0 (unknown) does not contribute;
- post-processing that keeps, for every box that survives NMS, the softmax malignancy probabilities of
  the anchor that produced it.

The network may be any module returning ``{"classification", "box_regression", "malignancy"}`` lists
(``NoduleRetinaNet``, an ONNX session behind ``HeadOutputsDict``, or DDP around the network): the detector
takes ``spatial_dims``, ``num_classes`` and ``size_divisible`` from its own arguments when the network
does not carry them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
from monai.apps.detection.transforms.box_ops import flip_boxes
from monai.apps.detection.utils.anchor_utils import AnchorGenerator
from monai.apps.detection.utils.ATSS_matcher import ATSSMatcher
from monai.apps.detection.utils.detector_utils import check_training_targets, preprocess_images
from monai.apps.detection.utils.predict_utils import ensure_dict_value_to_list_, predict_with_inferer
from monai.data.box_utils import batched_nms, clip_boxes_to_image
from torch import Tensor, nn

from common.detection.network import MALIGNANCY_KEY, NUM_MALIGNANCY_CLASSES
from common.detection.tta import flip_views, fuse_view_detections

__all__ = ["NoduleDetector", "ignore_unmatched_inside_boxes", "fast_autocast_dtype"]


def fast_autocast_dtype(device: torch.device | str) -> str | None:
    """``"bfloat16"`` where ``device`` runs bfloat16 convolutions natively, else ``None`` (float32).

    Native: a CUDA GPU with bfloat16 support (Ampere and later), or a CPU for which oneDNN reports bfloat16
    support (AVX-512 BF16 or AMX); elsewhere bfloat16 is emulated and slower than float32.

    Args:
        device: the training device.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else None
    if device.type == "cpu" and torch.backends.mkldnn.is_available():
        try:  # PyTorch's own test for oneDNN bfloat16 kernels (private, hence the fallback)
            native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            native = False
        return "bfloat16" if native else None
    return None


def ignore_unmatched_inside_boxes(matched: Tensor, anchors: Tensor, boxes: Tensor) -> Tensor:
    """Mark unmatched anchors (``-1``) whose centre lies inside any of ``boxes`` as ignored (``-2``).

    Args:
        matched: per anchor, the matched box index, ``-1`` background or ``-2`` ignored (MONAI's matchers).
        anchors: ``(N, 6)`` corner anchors; boxes: ``(M, 6)`` corner reference boxes, same coordinates.

    Returns:
        a copy of ``matched``.
    """
    if boxes.numel() == 0:
        return matched
    centres = (anchors[:, :3] + anchors[:, 3:]) / 2
    inside = ((centres[:, None, :] >= boxes[None, :, :3]) & (centres[:, None, :] <= boxes[None, :, 3:])).all(-1)
    matched = matched.clone()
    matched[(matched == ATSSMatcher.BELOW_LOW_THRESHOLD) & inside.any(1)] = ATSSMatcher.BETWEEN_THRESHOLDS
    return matched


class NoduleDetector(RetinaNetDetector):
    """RetinaNet detector predicting nodule boxes, scores and a malignancy rating distribution.

    Args:
        network: the head network (see module docstring).
        anchor_generator: MONAI anchor generator; its anchors per location must match the network's heads.
        spatial_dims: used when the network has no ``spatial_dims`` attribute (e.g. under DDP).
        num_classes: used when the network has no ``num_classes`` attribute.
        size_divisible: used when the network has no ``size_divisible`` attribute.
        malignancy_key: key of the malignancy maps in the network output, of the ratings in the training
            targets and of the probabilities in the detections.
        num_malignancy_classes: ratings (5: LIDC 1-5).
        malignancy_loss_weight: weight of the malignancy loss in ``total_loss``.
        train_autocast_dtype: mixed precision of the network's forward pass in training (``"bfloat16"``:
            about 1.7x faster on CPUs with AVX-512 BF16 or AMX, and on recent GPUs; ``None``: float32). The
            head outputs are cast back to float32 before matching and losses; evaluation and inference stay
            float32, so they match the ONNX export. ``"float32"``/``"none"`` (command line) mean ``None``.
        ignore_unmatched_inside_gt: with the ATSS matcher, anchors that are not matched but whose centre lies
            inside a reference box are ignored by the classification loss instead of being negatives. ATSS
            has no ignore zone: for nodules of a few voxels the anchors next to the matched ones look the
            same, and as (hard) negatives they contradict the positives, so the classifier collapses to a
            constant score.
        debug: MONAI's debug printing.

    Training targets are dicts with ``boxes`` (N, 6 corner boxes in image voxels), ``labels`` (N,) and
    optionally ``malignancy`` (N,) ratings 1-5, 0 for unknown. Detections are dicts with ``boxes``,
    ``labels``, ``labels_scores`` and ``malignancy`` (N, 5 probabilities), sorted by decreasing score.
    """

    def __init__(
        self,
        network: nn.Module,
        anchor_generator: AnchorGenerator,
        spatial_dims: int = 3,
        num_classes: int = 1,
        size_divisible: Sequence[int] | int = 8,
        malignancy_key: str = MALIGNANCY_KEY,
        num_malignancy_classes: int = NUM_MALIGNANCY_CLASSES,
        malignancy_loss_weight: float = 1.0,
        ignore_unmatched_inside_gt: bool = True,
        train_autocast_dtype: torch.dtype | str | None = None,
        debug: bool = False,
    ) -> None:
        super().__init__(
            network=network,
            anchor_generator=anchor_generator,
            spatial_dims=spatial_dims,
            num_classes=num_classes,
            size_divisible=size_divisible,
            debug=debug,
        )
        self.malignancy_key = malignancy_key
        self.num_malignancy_classes = num_malignancy_classes
        self.malignancy_loss_weight = malignancy_loss_weight
        self.malignancy_loss_func = nn.CrossEntropyLoss(reduction="mean")
        self.ignore_unmatched_inside_gt = ignore_unmatched_inside_gt
        if isinstance(train_autocast_dtype, str) and train_autocast_dtype.lower() in ("", "none", "null", "float32"):
            train_autocast_dtype = None  # from the command line
        if isinstance(train_autocast_dtype, str):
            if not isinstance(getattr(torch, train_autocast_dtype, None), torch.dtype):
                raise ValueError(f"train_autocast_dtype {train_autocast_dtype!r} is not a torch dtype (e.g. 'bfloat16')")
            train_autocast_dtype = getattr(torch, train_autocast_dtype)
        self.train_autocast_dtype = train_autocast_dtype
        self.test_time_views: tuple[tuple[int, ...], ...] = ((),)

    def set_test_time_flips(self, setting: bool | int | Sequence[Sequence[int]] = True) -> None:
        """Detect on mirror images of the scan too and fuse the boxes (``common.detection.tta``).

        Args:
            setting: ``True`` for all 8 views (8x the network time), ``False`` for none, a number of views,
                or lists of flipped axes per view; see ``common.detection.tta.flip_views``.
        """
        self.test_time_views = flip_views(setting)

    @property
    def head_keys(self) -> list[str]:
        return [self.cls_key, self.box_reg_key, self.malignancy_key]

    def forward(
        self,
        input_images: list[Tensor] | Tensor,
        targets: list[dict[str, Tensor]] | None = None,
        use_inferer: bool = False,
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Losses in training mode, a list of detections per image in eval mode (see the class docstring).

        In eval mode with ``set_test_time_flips`` the detections are those fused over the mirrored views.

        Args:
            input_images: a list of ``(1, X, Y, Z)`` images or a ``(B, 1, X, Y, Z)`` tensor, in [0, 1].
            targets: training targets, one dict per image.
            use_inferer: run the network through the sliding-window inferer set by
                ``set_sliding_window_inferer`` (eval mode only).
        """
        if not self.training and len(self.test_time_views) > 1:
            return self._detect_with_flips(input_images, use_inferer)
        return self._forward_one_view(input_images, targets, use_inferer)

    def _forward_one_view(
        self, input_images: list[Tensor] | Tensor, targets: list[dict[str, Tensor]] | None, use_inferer: bool
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        if self.training:
            targets = check_training_targets(
                input_images, targets, self.spatial_dims, self.target_label_key, self.target_box_key
            )
            self._check_detector_training_components()
        images, image_sizes = preprocess_images(input_images, self.spatial_dims, self.size_divisible)

        if self.training and self.train_autocast_dtype is not None:
            with torch.autocast(device_type=images.device.type, dtype=self.train_autocast_dtype):
                head_outputs = self.network(images)
            ensure_dict_value_to_list_(head_outputs)
            head_outputs = {key: [x.float() for x in maps] for key, maps in head_outputs.items()}
        elif self.training or not use_inferer:
            head_outputs = self.network(images)
            ensure_dict_value_to_list_(head_outputs)
        else:
            if self.inferer is None:
                raise ValueError("use_inferer=True needs set_sliding_window_inferer(...) first")
            head_outputs = predict_with_inferer(
                images, self.network, keys=self.head_keys, inferer=self.inferer
            )

        self.generate_anchors(images, head_outputs)
        num_anchor_locs_per_level = [x.shape[2:].numel() for x in head_outputs[self.cls_key]]
        reshaped = {key: self._reshape_maps(head_outputs[key]) for key in self.head_keys}

        if self.training:
            matched_idxs = self.compute_anchor_matched_idxs(self.anchors, targets, num_anchor_locs_per_level)
            losses = {
                self.cls_key: self.compute_cls_loss(reshaped[self.cls_key], targets, matched_idxs),
                self.box_reg_key: self.compute_box_loss(
                    reshaped[self.box_reg_key], targets, self.anchors, matched_idxs
                ),
                self.malignancy_key: self.compute_malignancy_loss(
                    reshaped[self.malignancy_key], targets, matched_idxs
                ),
            }
            return losses
        return self.postprocess_detections(reshaped, self.anchors, image_sizes, num_anchor_locs_per_level)

    def _detect_with_flips(self, input_images: list[Tensor] | Tensor, use_inferer: bool) -> list[dict[str, Tensor]]:
        """Detections of every test-time view, boxes flipped back onto each image, fused per image."""
        images = list(input_images)
        per_view = []
        for axes in self.test_time_views:
            dims = [a + 1 for a in axes]  # image tensors are (C, X, Y, Z)
            views = [torch.flip(image, dims) for image in images] if axes else images
            detections = self._forward_one_view(views, None, use_inferer)
            for det, image in zip(detections, images):
                if axes:
                    det[self.target_box_key] = flip_boxes(det[self.target_box_key], image.shape[1:], axes)
            per_view.append(detections)
        return [
            fuse_view_detections(
                [view[i] for view in per_view],
                box_key=self.target_box_key,
                score_key=self.pred_score_key,
                label_key=self.target_label_key,
                extra_keys=[self.malignancy_key],
                max_detections=self.box_selector.detections_per_img,
            )
            for i in range(len(images))
        ]

    def compute_anchor_matched_idxs(
        self,
        anchors: list[Tensor],
        targets: list[dict[str, Tensor]],
        num_anchor_locs_per_level: Sequence[int],
    ) -> list[Tensor]:
        """MONAI's anchor matching with the ATSS matcher (the parent tests for torchvision's ``Matcher``
        first, which fails where torchvision is not installed)."""
        if not isinstance(self.proposal_matcher, ATSSMatcher):
            return super().compute_anchor_matched_idxs(anchors, targets, num_anchor_locs_per_level)
        matched_idxs = []
        for anchors_per_image, targets_per_image in zip(anchors, targets):
            boxes = targets_per_image[self.target_box_key]
            if boxes.numel() == 0:
                matched_idxs.append(
                    torch.full(
                        (anchors_per_image.shape[0],), -1, dtype=torch.int64, device=anchors_per_image.device
                    )
                )
                continue
            boxes = boxes.to(anchors_per_image.device)
            _, matched = self.proposal_matcher(
                boxes, anchors_per_image, num_anchor_locs_per_level, self.num_anchors_per_loc
            )
            if self.ignore_unmatched_inside_gt:
                matched = ignore_unmatched_inside_boxes(matched, anchors_per_image, boxes)
            matched_idxs.append(matched)
        return matched_idxs

    def compute_box_loss(
        self,
        box_regression: Tensor,
        targets: list[dict[str, Tensor]],
        anchors: list[Tensor],
        matched_idxs: list[Tensor],
    ) -> Tensor:
        """MONAI's box-regression loss; without any matched anchor (e.g. patches without nodules) a zero
        that still depends on the regression head, so DDP's gradient all-reduce sees every parameter."""
        if all(int((m >= 0).sum()) == 0 for m in matched_idxs):
            return box_regression.sum() * 0.0
        return super().compute_box_loss(box_regression, targets, anchors, matched_idxs)

    def compute_malignancy_loss(
        self, malignancy_logits: Tensor, targets: list[dict[str, Tensor]], matched_idxs: list[Tensor]
    ) -> Tensor:
        """Cross-entropy of the malignancy logits of foreground anchors matched to a rated nodule.

        Args:
            malignancy_logits: ``(B, sum(HWDA), num_malignancy_classes)``.
            targets: training targets; a missing ``malignancy`` entry means no nodule of that image is rated.
            matched_idxs: per image, the matched target index of every anchor (negative: background/ignored).

        Returns:
            the mean loss, or a zero that keeps the graph connected when no anchor has a rated nodule.
        """
        logits_list, ratings_list = [], []
        for logits, target, matched in zip(malignancy_logits, targets, matched_idxs):
            ratings = target.get(self.malignancy_key)
            if ratings is None or ratings.numel() == 0:
                continue
            foreground = matched >= 0
            anchor_ratings = ratings.to(matched.device).long()[matched[foreground]]
            rated = anchor_ratings >= 1
            logits_list.append(logits[foreground][rated])
            ratings_list.append(anchor_ratings[rated] - 1)
        if not logits_list or sum(x.shape[0] for x in logits_list) == 0:
            # zero, yet a function of every parameter of the head (DDP expects gradients for all of them)
            return malignancy_logits.sum() * 0.0
        return self.malignancy_loss_func(torch.cat(logits_list), torch.cat(ratings_list))

    def postprocess_detections(
        self,
        head_outputs_reshape: dict[str, Tensor],
        anchors: list[Tensor],
        image_sizes: list[list[int]],
        num_anchor_locs_per_level: Sequence[int],
        need_sigmoid: bool = True,
    ) -> list[dict[str, Tensor]]:
        """Decode, select and suppress boxes as ``RetinaNetDetector`` does, carrying malignancy along.

        The steps are those of ``BoxSelector.select_boxes_per_image`` (score threshold and top-k per level,
        clip to the image, drop empty boxes, class-wise NMS, keep ``detections_per_img``); they are spelled
        out here because ``BoxSelector`` does not return which anchor each kept box came from.
        """
        num_anchors_per_level = [n * self.num_anchors_per_loc for n in num_anchor_locs_per_level]
        split = {k: v.split(num_anchors_per_level, dim=1) for k, v in head_outputs_reshape.items()}
        selector = self.box_selector
        detections = []
        for index, (anchors_per_image, spatial_size) in enumerate(zip(anchors, image_sizes)):
            boxes_all, scores_all, labels_all, malignancy_all = [], [], [], []
            anchors_per_level = anchors_per_image.split(num_anchors_per_level)
            for level, level_anchors in enumerate(anchors_per_level):
                logits = split[self.cls_key][level][index]
                idxs, scores, labels = selector.select_top_score_idx_per_level(logits)
                regression = split[self.box_reg_key][level][index][idxs]
                boxes = self.box_coder.decode_single(regression.to(torch.float32), level_anchors[idxs])
                boxes, keep = clip_boxes_to_image(boxes, spatial_size, remove_empty=True)
                malignancy = torch.softmax(split[self.malignancy_key][level][index][idxs].float(), dim=-1)
                boxes_all.append(boxes)
                scores_all.append(scores[keep])
                labels_all.append(labels[keep])
                malignancy_all.append(malignancy[keep])
            boxes_t, scores_t = torch.cat(boxes_all), torch.cat(scores_all)
            labels_t, malignancy_t = torch.cat(labels_all), torch.cat(malignancy_all)
            keep_t = batched_nms(
                boxes_t,
                scores_t,
                labels_t,
                selector.nms_thresh,
                box_overlap_metric=selector.box_overlap_metric,
                max_proposals=selector.detections_per_img,
            )
            detections.append(
                {
                    self.target_box_key: boxes_t[keep_t],
                    self.pred_score_key: scores_t[keep_t],
                    self.target_label_key: labels_t[keep_t],
                    self.malignancy_key: malignancy_t[keep_t],
                }
            )
        return detections
