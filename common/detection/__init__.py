"""Nodule detection on chest CT: MONAI's 3D RetinaNet with a malignancy head, and what the
``lung_nodule_ct_detection`` bundle's configs call around it.

- ``network``: ``build_nodule_retinanet`` (narrow ResNet-FPN RetinaNet + malignancy head), ``FlatHeadOutputs``
  (ONNX export wrapper), ``HeadOutputsDict`` (ONNX session -> RetinaNet's dict) and ``PackedHeadOutputs``
  (one output tensor, for MONAI's ``verify_net_in_out`` and ``ckpt_export``).
- ``detector``: ``NoduleDetector`` (MONAI ``RetinaNetDetector`` + malignancy loss and probabilities).
- ``losses``: ``PositiveNormalizedFocalLoss`` (RetinaNet's focal loss over all anchors / positives).
- ``transforms``: ``CropToLungsd``, ``DatalistBoxesd``, ``DetectionsToWorldd``.
- ``engines``: ``DetectionPrepareBatch``, ``DetectionLoss``, ``DetectionEvaluator``.
- ``evaluation``: ``NoduleCPM`` (ignite metric), ``DetectionReport`` (JSON + FROC PNG).
- ``inference``: ``list_inputs``, ``DetectionWriter`` (per-scan JSON in world mm, LPS).
"""

from common.detection.detector import NoduleDetector, fast_autocast_dtype
from common.detection.engines import DetectionEvaluator, DetectionLoss, DetectionPrepareBatch
from common.detection.evaluation import DetectionReport, NoduleCPM
from common.detection.inference import DetectionWriter, list_inputs
from common.detection.losses import PositiveNormalizedFocalLoss
from common.detection.network import (
    FlatHeadOutputs,
    HeadOutputsDict,
    NoduleRetinaNet,
    PackedHeadOutputs,
    build_nodule_retinanet,
    pack_head_maps,
)
from common.detection.transforms import CropToLungsd, DatalistBoxesd, DetectionsToWorldd
from common.detection.tta import FLIP_VIEWS, flip_views, fuse_view_detections

__all__ = [
    "NoduleDetector",
    "fast_autocast_dtype",
    "FLIP_VIEWS",
    "flip_views",
    "fuse_view_detections",
    "DetectionEvaluator",
    "DetectionLoss",
    "DetectionPrepareBatch",
    "DetectionReport",
    "NoduleCPM",
    "DetectionWriter",
    "list_inputs",
    "PositiveNormalizedFocalLoss",
    "FlatHeadOutputs",
    "HeadOutputsDict",
    "NoduleRetinaNet",
    "PackedHeadOutputs",
    "build_nodule_retinanet",
    "pack_head_maps",
    "CropToLungsd",
    "DatalistBoxesd",
    "DetectionsToWorldd",
]
