"""Glue between MONAI's ignite engines and ``NoduleDetector``.

Training uses MONAI's ``SupervisedTrainer`` unchanged: ``DetectionPrepareBatch`` hands the detector its
list of images and targets (``network(images, targets)`` returns the loss dict in train mode) and
``DetectionLoss`` sums the weighted losses. Evaluation and inference use ``DetectionEvaluator``, a
``SupervisedEvaluator`` whose iteration produces one output dict per scan (``pred_box``, ``pred_score``,
``pred_label``, ``pred_malignancy`` and the reference boxes when there are any), so the postprocessing
transforms of a config (e.g. ``DetectionsToWorldd``) run per scan with the scan's image at hand.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.engines import SupervisedEvaluator
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys as Keys

from common.detection.network import MALIGNANCY_KEY

__all__ = ["flatten_batch", "DetectionPrepareBatch", "DetectionLoss", "DetectionEvaluator", "PRED_KEYS"]

PRED_KEYS = ("pred_box", "pred_score", "pred_label", "pred_malignancy")


def flatten_batch(batchdata: Any) -> list[dict[str, Any]]:
    """A batch from a ``no_collation`` loader as a flat list of per-sample dicts.

    Random crops with ``num_samples > 1`` give a list of lists; a plain dict (batch size 1 collated by MONAI's
    ``list_data_collate``) is not supported because boxes differ in number between scans.
    """
    if isinstance(batchdata, Mapping):
        return [dict(batchdata)]
    flat: list[dict[str, Any]] = []
    for item in batchdata:
        flat.extend(flatten_batch(item))
    return flat


def _as_tensor(value: Any, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return (
            value.as_tensor().to(device=device, dtype=dtype)
            if hasattr(value, "as_tensor")
            else value.to(device, dtype)
        )
    return torch.as_tensor(np.asarray(value), dtype=dtype, device=device)


class DetectionPrepareBatch:
    """``prepare_batch`` for MONAI engines: images and detector targets from a detection batch.

    Returns ``(images, targets, args, kwargs)``: in training the targets are passed to the detector as its
    second argument (``args``); in evaluation ``kwargs`` carries ``use_inferer``.

    Args:
        image_key, box_key, label_key, malignancy_key: keys of the preprocessed samples.
        train: whether the detector gets the targets (training) or not (evaluation, inference).
        use_inferer: evaluation only: run the detector's sliding-window inferer.
    """

    def __init__(
        self,
        image_key: str = "image",
        box_key: str = "box",
        label_key: str = "label",
        malignancy_key: str = MALIGNANCY_KEY,
        train: bool = True,
        use_inferer: bool = False,
        target_box_key: str = "boxes",
        target_label_key: str = "labels",
    ) -> None:
        self.image_key, self.box_key, self.label_key, self.malignancy_key = (
            image_key,
            box_key,
            label_key,
            malignancy_key,
        )
        self.train, self.use_inferer = train, use_inferer
        self.target_box_key, self.target_label_key = target_box_key, target_label_key

    def targets(
        self, samples: Sequence[Mapping[str, Any]], device: torch.device | str
    ) -> list[dict[str, torch.Tensor]]:
        targets = []
        for s in samples:
            if self.box_key not in s:
                targets.append({})
                continue
            boxes = _as_tensor(s[self.box_key], torch.float32, device).reshape(-1, 6)
            n = boxes.shape[0]
            labels = _as_tensor(s.get(self.label_key, np.zeros(n)), torch.long, device).reshape(-1)
            ratings = _as_tensor(s.get(self.malignancy_key, np.zeros(n)), torch.long, device).reshape(-1)
            targets.append(
                {self.target_box_key: boxes, self.target_label_key: labels, MALIGNANCY_KEY: ratings}
            )
        return targets

    def __call__(
        self, batchdata: Any, device: torch.device | str | None = None, non_blocking: bool = False, **kwargs
    ):
        device = device or "cpu"
        samples = flatten_batch(batchdata)
        images = [s[self.image_key].to(device=device, non_blocking=non_blocking) for s in samples]
        targets = self.targets(samples, device)
        if self.train:
            return images, targets, (targets,), {}
        return images, targets, (), {"use_inferer": self.use_inferer}


class DetectionLoss(torch.nn.Module):
    """Weighted sum of the detector's losses (``{"classification", "box_regression", "malignancy"}``).

    Args:
        weights: weight per loss name; names not given weigh 1.
    """

    def __init__(self, weights: Mapping[str, float] | None = None) -> None:
        super().__init__()
        self.weights = dict(weights or {})

    def forward(self, losses: Mapping[str, torch.Tensor], targets: Any = None) -> torch.Tensor:
        return sum(self.weights.get(name, 1.0) * value for name, value in losses.items())


class DetectionEvaluator(SupervisedEvaluator):
    """``SupervisedEvaluator`` producing one output dict per scan (see the module docstring).

    Takes the arguments of ``SupervisedEvaluator``; ``prepare_batch`` should be a ``DetectionPrepareBatch``
    with ``train=False`` and ``network`` a ``NoduleDetector``. ``decollate`` is forced off because the
    outputs are already per scan. Each output holds ``pred_box`` (N, 6 voxel corners of the preprocessed
    image), ``pred_score`` (N,), ``pred_label`` (N,), ``pred_malignancy`` (N, 5), sorted by score, and,
    when the sample has them, ``gt_box``, ``gt_malignancy`` and ``gt_ignore_box`` (the datalist's world boxes).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["decollate"] = False
        super().__init__(*args, **kwargs)

    def _iteration(self, engine: SupervisedEvaluator, batchdata: Any) -> list[dict[str, Any]]:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        samples = flatten_batch(batchdata)
        images, _, args, kwargs = engine.prepare_batch(samples, engine.state.device, engine.non_blocking)
        with engine.mode(engine.network), torch.no_grad():
            detections = engine.inferer(images, engine.network, *args, **kwargs)
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        network = engine.network.module if hasattr(engine.network, "module") else engine.network
        box_key, score_key = network.target_box_key, network.pred_score_key
        label_key, mal_key = network.target_label_key, getattr(network, "malignancy_key", MALIGNANCY_KEY)
        outputs = []
        for sample, image, det in zip(samples, images, detections):
            order = torch.argsort(det[score_key], descending=True)
            out: dict[str, Any] = {
                Keys.IMAGE: image,
                "pred_box": det[box_key][order].detach().cpu(),
                "pred_score": det[score_key][order].detach().cpu(),
                "pred_label": det[label_key][order].detach().cpu(),
                "pred_malignancy": det[mal_key][order].detach().cpu()
                if mal_key in det
                else torch.zeros((len(order), 0)),
            }
            for key in ("box", MALIGNANCY_KEY, "ignore_box"):
                if key in sample:
                    out[f"gt_{key}"] = sample[key]
            outputs.append(out)
        engine.state.batch = samples
        engine.state.output = outputs
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return outputs
