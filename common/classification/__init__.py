"""Shared classification machinery of the OCT and pediatric CXR bundles (after Kermany et al., Cell 2018).

Modules:
    networks:  backbone factory (``classifier``) and transfer learning (``prepare_network``).
    tasks:     class names, decision rules (OCT referral, CXR pneumonia call) and binary questions.
    handlers:  ignite handlers: evaluation report writer, prediction CSV writer; loss class weights.
    report:    evaluation figures with bootstrap 95% CIs, ROC and confusion-matrix PNGs.
    shift:     shifted validation (acquisition shifts), temperature scaling, the shipped-threshold rule.
    benchmark: PyTorch vs ONNX Runtime throughput and occlusion-map cost.
"""

from common.classification import shift
from common.classification.handlers import (
    ClassificationReportWriter,
    PredictionCSVWriter,
    class_weights,
    pred_label,
)
from common.classification.networks import classifier, prepare_network, trainable_parameters
from common.classification.tasks import ClassificationTask, cxr_task, get_task, oct_task

__all__ = [
    "ClassificationReportWriter",
    "ClassificationTask",
    "PredictionCSVWriter",
    "class_weights",
    "classifier",
    "cxr_task",
    "get_task",
    "oct_task",
    "pred_label",
    "prepare_network",
    "shift",
    "trainable_parameters",
]
