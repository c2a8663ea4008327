"""Export a bundle's network to ONNX and check it against PyTorch on ONNX Runtime.

    python scripts/export_onnx.py --bundle bundles/<name> [--ckpt_path P] [--onnx_path P] [--report R.json]

Reads ``bundles/<name>/configs/export_onnx.yaml`` (see docs/deployment.md). Prints a JSON report
(max_abs_err, max_rel_err, passed, onnx_path, opset, seconds); exits non-zero, naming the outputs and
their errors, when ONNX Runtime and PyTorch disagree beyond the tolerance (the model is then not written).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import fire

# run as a file (`python scripts/export_onnx.py`): make this checkout's `common` importable first
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(
    bundle: str,
    ckpt_path: str | None = None,
    onnx_path: str | None = None,
    report: str | None = None,
    allow_random_weights: bool = False,
) -> None:
    """Export ``bundle`` as its configs/export_onnx.yaml says and run the parity check.

    Args:
        bundle: the bundle folder, e.g. ``bundles/lung_ct_segmentation``.
        ckpt_path: weights to export (default: export_onnx.yaml `ckpt_path`, relative to the bundle).
        onnx_path: the .onnx file (default: export_onnx.yaml `onnx_path`, relative to the bundle).
        report: optional path of a JSON copy of the report.
        allow_random_weights: export an untrained network when no checkpoint exists (smoke tests).
    """
    from common.export import OnnxParityError, export_bundle
    from common.export.onnx_export import report_json

    logging.basicConfig(level=logging.INFO, format="%(asctime)s - %(name)s - %(levelname)s - %(message)s")
    try:
        result = export_bundle(
            bundle, ckpt_path=ckpt_path, onnx_path=onnx_path, allow_random_weights=allow_random_weights, report_path=report
        )
    except OnnxParityError as e:
        print(f"PARITY CHECK FAILED: {e}", file=sys.stderr)
        sys.exit(1)
    print(report_json(result))


if __name__ == "__main__":
    fire.Fire(main)
