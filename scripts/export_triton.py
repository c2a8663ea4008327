"""Write a Triton Inference Server model repository entry for a bundle.

    python scripts/export_triton.py --bundle bundles/<name> --out DIR [--onnx model.onnx] [--checkpoint model.pt]

Writes ``DIR/<name>/config.pbtxt`` and ``DIR/<name>/1/model.onnx`` (onnxruntime backend, dynamic batching).
Without ``--onnx`` the bundle's network is exported first, with the parity check of scripts/export_onnx.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import fire

# run as a file (`python scripts/...`): make this checkout's `common` importable first
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zoo_tools.triton import export_triton


def main(bundle: str, out: str, onnx: str | None = None, checkpoint: str | None = None,
         model_name: str | None = None, max_batch_size: int = 8, allow_random_weights: bool = False) -> str:
    """Export ``bundle`` into the Triton model repository ``out``; returns the model folder."""
    model_dir = export_triton(bundle, out, onnx_path=onnx, checkpoint=checkpoint, model_name=model_name,
                              max_batch_size=max_batch_size, allow_random_weights=allow_random_weights)
    print((model_dir / "config.pbtxt").read_text())
    return str(model_dir)


if __name__ == "__main__":
    fire.Fire(main)
