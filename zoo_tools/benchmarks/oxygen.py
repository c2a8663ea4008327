"""Speed and memory of the oxygen-risk bundle: PyTorch vs ONNX Runtime inference, training, cohort generation.

    python scripts/benchmark.py cxr_ehr_oxygen_risk

Figures come from the bundle's own network (``configs/inference.yaml`` ``network_def``) with random
weights (speed does not depend on the weights) on random inputs of the bundle's shapes.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zoo_tools import BUNDLES
from zoo_tools.benchmarks.harness import peak_rss_mib

BUNDLE = BUNDLES / "cxr_ehr_oxygen_risk"


def _time(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t) / repeats


def run(batch_sizes: tuple[int, ...] = (1, 16), repeats: int = 10, train_iterations: int = 10,
        train_batch: int = 32, generate_encounters: int = 12, bundle: str | os.PathLike = BUNDLE) -> dict[str, Any]:
    """Latency and throughput (PyTorch vs ONNX Runtime), training iterations/s, peak memory, generator speed.

    Args:
        batch_sizes: inference batch sizes measured.
        repeats: timed repetitions per measurement.
        train_iterations: timed training iterations (forward, backward, AdamW step).
        train_batch: training batch size.
        generate_encounters: encounters generated to time the synthetic cohort (0 skips it).
        bundle: the bundle folder.

    Returns:
        a dict of figures (milliseconds, items/s, MiB), with the settings they were measured with.
    """
    from common.export import OnnxRuntimeNetwork, build_bundle_network, export_network, load_export_config

    cfg = load_export_config(bundle)
    network = build_bundle_network(bundle, cfg).eval()
    image_shape = list(cfg["inputs"][0]["shape"][1:])
    n_ehr = int(cfg["inputs"][1]["shape"][1])
    result: dict[str, Any] = {
        "threads": torch.get_num_threads(),
        "image_shape": image_shape,
        "ehr_length": n_ehr,
        "parameters": int(sum(p.numel() for p in network.parameters())),
        "inference": {},
    }

    def inputs(b: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(b)
        ehr = torch.randn(b, n_ehr, generator=g)
        ehr[:, n_ehr // 2:] = (ehr[:, n_ehr // 2:] > 0.5).float()
        return torch.rand(b, *image_shape, generator=g), ehr

    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        export_network(network, onnx_path, inputs=cfg["inputs"], outputs=cfg["outputs"], opset=cfg["opset"],
                       dynamic_axes=cfg["dynamic_axes"], parity_shapes=[], tolerance=cfg["tolerance"],
                       exporter=cfg["exporter"])
        ort = OnnxRuntimeNetwork(onnx_path)
        for b in batch_sizes:
            x = inputs(b)
            with torch.no_grad():
                t_pt = _time(lambda x=x: network(*x), repeats)
            t_ort = _time(lambda x=x: ort(*x), repeats)
            with torch.no_grad():
                diff = float((torch.sigmoid(network(*x)) - torch.sigmoid(ort(*x))).abs().max())
            result["inference"][f"batch_{b}"] = {
                "pytorch_ms": round(t_pt * 1000, 2), "onnxruntime_ms": round(t_ort * 1000, 2),
                "pytorch_per_s": round(b / t_pt, 1), "onnxruntime_per_s": round(b / t_ort, 1),
                "max_abs_risk_difference": diff,
            }

    net = build_bundle_network(bundle, cfg).train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    x = inputs(train_batch)
    y = (torch.rand(train_batch, 8) > 0.5).float()

    def step() -> None:
        opt.zero_grad()
        loss_fn(net(*x), y).backward()
        opt.step()

    t_train = _time(step, train_iterations)
    result["train"] = {"batch": train_batch, "iterations_per_s": round(1 / t_train, 2),
                       "images_per_s": round(train_batch / t_train, 1)}

    if generate_encounters:
        from common.synthetic.ehr_cohort import generate_oxygen_risk

        with tempfile.TemporaryDirectory() as tmp:
            cfg_gen = {"n_sites": 1, "n_per_site": 2, "progress": False, "image_size": 128}
            generate_oxygen_risk(Path(tmp) / "warm", cfg_gen, seed=0)  # builds the phantom pool once
            t = time.perf_counter()
            generate_oxygen_risk(Path(tmp) / "gen", {**cfg_gen, "n_per_site": generate_encounters}, seed=1)
            dt = time.perf_counter() - t
        result["generate"] = {"encounters": generate_encounters, "seconds": round(dt, 2),
                              "seconds_per_encounter": round(dt / generate_encounters, 3)}
    result["peak_rss_mib"] = round(peak_rss_mib(), 1)
    result["numpy"] = np.__version__
    return result


if __name__ == "__main__":  # pragma: no cover
    import json

    print(json.dumps(run(), indent=2))
