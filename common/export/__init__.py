"""ONNX export with a parity check on ONNX Runtime, and an ONNX Runtime network for MONAI inferers.

    python scripts/export_onnx.py --bundle bundles/<name> [--ckpt_path P] [--onnx_path P]
"""

from common.export.onnx_export import (
    DEFAULT_TOLERANCE,
    ExportConfigError,
    FlattenOutputs,
    OnnxParityError,
    build_bundle_network,
    compare_outputs,
    export_bundle,
    export_network,
    load_export_config,
    make_inputs,
)
from common.export.ort_network import OnnxRuntimeNetwork, default_providers

__all__ = [
    "DEFAULT_TOLERANCE",
    "ExportConfigError",
    "FlattenOutputs",
    "OnnxParityError",
    "OnnxRuntimeNetwork",
    "build_bundle_network",
    "compare_outputs",
    "default_providers",
    "export_bundle",
    "export_network",
    "load_export_config",
    "make_inputs",
]
