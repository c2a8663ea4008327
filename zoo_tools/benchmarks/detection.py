"""Speed and memory of lung_nodule_ct_detection inference, PyTorch vs ONNX Runtime, end to end per scan.

    python scripts/benchmark.py lung_nodule_ct_detection

One synthetic chest CT of 512 x 512 x ~300 voxels (0.6-0.8 mm pixels, 1 mm slices; the phantom of
``common.synthetic.ct_phantom``) is written as MHD/RAW; the bundle's ``inference.yaml`` (and
``inference.yaml`` + ``inference_onnx.yaml``) runs on it in a fresh process each, so that the peak
resident memory (``ru_maxrss``) belongs to that run alone. "End to end" is the engine run: reading the
MHD, orientation, lung crop, resampling to the bundle's ``spacing`` (2.5 mm), network, decoding and NMS, world coordinates, JSON.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from zoo_tools import BUNDLES, REPO
from zoo_tools.benchmarks.harness import run_in_child

__all__ = ["run", "make_benchmark_scan"]

BUNDLE = BUNDLES / "lung_nodule_ct_detection"


def make_benchmark_scan(out_dir: str | os.PathLike, seed: int = 0, slices: int = 300) -> dict[str, Any]:
    """Write one 512 x 512 x ``slices`` chest CT phantom (1 mm slices) as ``out_dir/bench.mhd``."""
    from common.io.mhd import write_mhd
    from common.synthetic.ct_phantom import make_chest_phantom

    rng = np.random.default_rng(seed)
    phantom = make_chest_phantom(
        rng, {"matrix": 512, "slice_spacing_mm": [1.0, 1.0], "scan_margin_mm": [25.0, 35.0]}
    )
    hu = phantom.hu
    # exactly `slices` slices: pad with air or cut evenly at both ends
    if hu.shape[2] < slices:
        before = (slices - hu.shape[2]) // 2
        hu = np.pad(hu, ((0, 0), (0, 0), (before, slices - hu.shape[2] - before)), constant_values=-1000)
    elif hu.shape[2] > slices:
        start = (hu.shape[2] - slices) // 2
        hu = hu[:, :, start : start + slices]
    spacing = tuple(float(s) for s in phantom.spacing)
    path = write_mhd(Path(out_dir) / "bench.mhd", hu.astype(np.int16), spacing, (0.0, 0.0, 0.0))
    return {"path": str(path), "shape": list(hu.shape), "spacing_mm": [round(s, 3) for s in spacing]}


def _inference_run(files: list[str], overrides: dict[str, Any], threads: int) -> dict[str, float]:
    """One inference workflow in this process (run by the harness in a child): seconds of ``run``."""
    import torch
    from monai.bundle import ConfigWorkflow

    torch.set_num_threads(threads)
    wf = ConfigWorkflow(config_file=files if len(files) > 1 else files[0], workflow_type="infer", logging_file=False,
                        **overrides)
    wf.initialize()
    start = time.perf_counter()
    wf.run()
    seconds = time.perf_counter() - start
    wf.finalize()
    return {"seconds": seconds}


def _child(files: list[str], overrides: dict[str, Any], threads: int) -> dict[str, float]:
    result = run_in_child("zoo_tools.benchmarks.detection:_inference_run",
                          {"files": files, "overrides": overrides}, threads=threads, timeout=1800)
    return {"seconds": result["seconds"], "peak_rss_mb": result["process_peak_rss_mib"]}


def run(
    checkpoint: str | None = None,
    threads: int = 2,
    work_dir: str | None = None,
    seed: int = 0,
    one_view: bool = True,
) -> dict[str, Any]:
    """Seconds per scan and peak memory of PyTorch and ONNX Runtime inference on a 512 x 512 x 300 CT.

    Args:
        checkpoint: trained weights (default: the bundle's ``models/model.pt`` if present, else random
            weights; speed does not depend on the weights beyond the number of boxes kept).
        threads: torch/ONNX Runtime intra-op threads (the 2-core target machine: 2).
        work_dir: where the scan, the ONNX model and the outputs go (default: a temporary folder).
        seed: phantom seed.
        one_view: also time both backends with ``test_time_flips: false`` (the scan alone, instead of the
            scan and its 7 mirror images of ``inference.yaml``).

    Returns:
        figures per backend (``seconds_per_scan``, ``peak_rss_mb``), the scan's shape and spacing, targets.
    """
    from common.export import export_bundle

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(work_dir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        scan = make_benchmark_scan(work / "scan", seed=seed)
        phantom_seconds = time.perf_counter() - t0
        ckpt = checkpoint or (BUNDLE / "models" / "model.pt")
        if not Path(ckpt).is_file():
            import torch

            from common.detection.network import build_nodule_retinanet

            torch.manual_seed(0)
            ckpt = work / "random.pt"
            torch.save({"model": build_nodule_retinanet(num_anchors=2).state_dict()}, ckpt)
            weights = "random (no trained checkpoint)"
        else:  # repository-relative where it can be, so the report names no machine's folders
            path = Path(ckpt).resolve()
            weights = str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)
        onnx_path = work / "model.onnx"
        export_bundle(BUNDLE, ckpt_path=ckpt, onnx_path=onnx_path)
        common = {"bundle_root": str(BUNDLE), "dataset_dir": str(work / "scan"), "ckpt_path": str(ckpt)}
        figures = {}
        runs = [
            ("pytorch", ["inference.yaml"], {}),
            ("onnxruntime", ["inference.yaml", "inference_onnx.yaml"], {"onnx_path": str(onnx_path)}),
        ]
        if one_view:  # inference.yaml detects on 8 views (test-time flips); the same two on the scan alone
            runs += [
                (f"{name}_one_view", files, {**extra, "test_time_flips": False})
                for name, files, extra in runs
            ]
        for name, files, extra in runs:
            out = work / f"out_{name}"
            result = _child(
                [str(BUNDLE / "configs" / f) for f in files],
                {**common, **extra, "output_dir": str(out)},
                threads,
            )
            (json_file,) = out.glob("*_nodules.json")
            figures[name] = {
                "seconds_per_scan": round(result["seconds"], 2),
                "peak_rss_mb": round(result["peak_rss_mb"], 1),
                "detections": json.loads(json_file.read_text())["num_detections"],
            }
    return {
        "scan": {
            "shape": scan["shape"],
            "spacing_mm": scan["spacing_mm"],
            "phantom_seconds": round(phantom_seconds, 1),
        },
        "weights": weights,
        "threads": threads,
        "end_to_end": "read MHD, RAS, lung crop, 2.5 mm resampling, network on the scan and its 7 mirror images "
        "(one_view: the scan alone), decoding + NMS + fusion, world boxes, JSON",
        **figures,
        "targets": {"seconds_per_scan": 120, "peak_rss_mb": 4096},
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
