"""Speed of a classification bundle on this CPU: PyTorch vs ONNX Runtime, and the occlusion map's cost.

    python scripts/benchmark.py retina_oct_classification pediatric_cxr_pneumonia_classification

``run`` builds the bundle's ``network_def`` (its ``models/model.pt`` when present, else random weights:
speed does not depend on the values), exports it to ONNX in a temporary folder with the bundle's
``export_onnx.yaml`` (parity-checked), and times batch 1 and batch 16 in both runtimes with the same
number of threads. Timings are the best of several repeats (the fairest figure on a shared machine);
the CPU time per image is reported next to the wall-clock throughput.

ONNX Runtime session: full graph optimisation (``ORT_ENABLE_ALL``: conv + batch-norm + ReLU fusion,
constant folding, NCHWc layout transformation on x86), sequential execution, memory arena and pattern
on, threads = ``torch.get_num_threads()`` (so both runtimes get the same cores).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zoo_tools import BUNDLES
from zoo_tools.benchmarks.harness import run_in_child


def ort_session(model_path: str | Path, threads: int | None = None):
    """An ONNX Runtime CPU session tuned for CNN inference (see the module docstring)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.enable_cpu_mem_arena = True
    options.enable_mem_pattern = True
    options.intra_op_num_threads = int(threads or torch.get_num_threads())
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(model_path), sess_options=options, providers=["CPUExecutionProvider"])


def _best_time(fn, repeats: int, inner: int) -> tuple[float, float]:
    """Best wall and matching CPU seconds per call of ``fn`` over ``repeats`` x ``inner`` calls."""
    fn()  # warm-up (allocations, lazy initialisation)
    best_wall, best_cpu = float("inf"), float("inf")
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        for _ in range(inner):
            fn()
        wall, cpu = (time.perf_counter() - w0) / inner, (time.process_time() - c0) / inner
        if wall < best_wall:
            best_wall, best_cpu = wall, cpu
    return best_wall, best_cpu


def run(
    bundle: str = "retina_oct_classification",
    batch_sizes: tuple[int, ...] = (1, 16),
    repeats: int = 5,
    occlusion_stride: int = 10,
    seed: int = 0,
) -> dict[str, Any]:
    """Images per second of ``bundle``'s network in PyTorch and ONNX Runtime, and occlusion cost.

    Args:
        bundle: folder name under ``bundles/`` (or a path to a bundle).
        batch_sizes: batch sizes to time.
        repeats: timed repeats per setting (the best is reported).
        occlusion_stride: stride of the occlusion map (20 x 20 patch, Kermany's protocol).
        seed: input seed.

    Returns:
        figures: ``torch_bs{n}_img_per_s``, ``onnx_bs{n}_img_per_s``, ``onnx_speedup_bs{n}``, CPU ms per
        image for both, ``occlusion_seconds_per_image``, ``gradcam_seconds_per_image``, the input size,
        the thread count and the parameter count.
    """
    from common.export import build_bundle_network, export_network, load_export_config
    from common.interpret import gradcam_map, occlusion_map

    root = Path(bundle) if Path(bundle).is_dir() else BUNDLES / bundle
    cfg = load_export_config(root)
    ckpt = root / (cfg.get("ckpt_path") or "models/model.pt")
    network = build_bundle_network(root, cfg, checkpoint=ckpt if ckpt.is_file() else None).eval()
    shape = [int(s) for s in cfg["inputs"][0]["shape"]]
    threads = torch.get_num_threads()
    rng = np.random.default_rng(seed)
    figures: dict[str, Any] = {
        "input_shape": shape[1:],
        "threads": threads,
        "parameters": int(sum(p.numel() for p in network.parameters())),
        "weights": "models/model.pt" if ckpt.is_file() else "random (speed does not depend on the values)",
    }
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        export_network(network, onnx_path, inputs=cfg["inputs"], outputs=cfg["outputs"], opset=cfg["opset"],
                       dynamic_axes=cfg["dynamic_axes"], tolerance=cfg["tolerance"], exporter=cfg.get("exporter", "torchscript"))
        session = ort_session(onnx_path, threads)
        name = session.get_inputs()[0].name
        for bs in batch_sizes:
            x = rng.standard_normal((bs, *shape[1:])).astype(np.float32)
            xt = torch.from_numpy(x)
            inner = max(1, 32 // bs)

            def torch_call(xt: torch.Tensor = xt) -> None:
                with torch.inference_mode():
                    network(xt)

            def onnx_call(x: np.ndarray = x) -> None:
                session.run(None, {name: x})

            t_wall, t_cpu = _best_time(torch_call, repeats, inner)
            o_wall, o_cpu = _best_time(onnx_call, repeats, inner)
            figures[f"torch_bs{bs}_img_per_s"] = round(bs / t_wall, 1)
            figures[f"onnx_bs{bs}_img_per_s"] = round(bs / o_wall, 1)
            figures[f"onnx_speedup_bs{bs}"] = round(t_wall / o_wall, 2)
            figures[f"torch_bs{bs}_cpu_ms_per_img"] = round(1000 * t_cpu / bs, 2)
            figures[f"onnx_bs{bs}_cpu_ms_per_img"] = round(1000 * o_cpu / bs, 2)
    image = torch.from_numpy(rng.standard_normal(shape[1:]).astype(np.float32))
    occ_wall, _ = _best_time(lambda: occlusion_map(network, image, mask_size=20, stride=occlusion_stride), 2, 1)
    cam_wall, _ = _best_time(lambda: gradcam_map(network, image), repeats, 1)
    n_positions = (-(-shape[-1] // occlusion_stride)) * (-(-shape[-2] // occlusion_stride))
    figures["occlusion_seconds_per_image"] = round(occ_wall, 3)
    figures["occlusion_setting"] = f"20x20 patch, stride {occlusion_stride}, about {n_positions} patch positions"
    figures["gradcam_seconds_per_image"] = round(cam_wall, 4)
    return figures


def _pneumonia_batch(dataset_dir: str, output_dir: str) -> dict[str, float]:
    """One pneumonia ``inference.yaml`` batch in this process (the harness's child): wall seconds."""
    from monai.bundle import ConfigParser

    bundle = BUNDLES / "pediatric_cxr_pneumonia_classification"
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.yaml"))
    parser.update({"bundle_root": str(bundle), "dataset_dir": dataset_dir, "output_dir": output_dir})
    parser.get_parsed_content("initialize")
    start = time.perf_counter()
    parser.get_parsed_content("evaluator").run()
    return {"seconds": round(time.perf_counter() - start, 2)}


def large_film(side: int = 12000, normal_films: int = 8, threads: int | None = None) -> dict[str, Any]:
    """Peak memory of the pneumonia bundle's batch inference over a folder holding one ``side`` x ``side``
    8-bit PNG film and ``normal_films`` 224 x 224 films, against the same batch without the large film.

    Each batch runs in a fresh child process, whose peak (``VmHWM``) is its own.

    Returns:
        peak resident memory (MiB) and wall time of both batches, and the film's file size.
    """
    from PIL import Image

    threads = threads or torch.get_num_threads()
    figures: dict[str, Any] = {"film_side": side, "normal_films": normal_films, "threads": threads}
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "films"
        folder.mkdir()
        coarse = (rng.random((side // 100, side // 100)) * 255).astype(np.uint8)
        Image.fromarray(coarse).resize((side, side), Image.BILINEAR).save(folder / "large.png", compress_level=1)
        for k in range(normal_films):
            Image.fromarray((rng.random((224, 224)) * 255).astype(np.uint8)).save(folder / f"n{k}.png")
        figures["film_mib"] = round((folder / "large.png").stat().st_size / 2**20, 1)
        for name in ("with_large_film", "normal_films_only"):
            if name == "normal_films_only":
                (folder / "large.png").unlink()
            result = run_in_child("zoo_tools.benchmarks.classification:_pneumonia_batch",
                                  {"dataset_dir": str(folder), "output_dir": str(Path(tmp) / name)}, threads=threads)
            figures[name] = {"seconds": result["seconds"], "peak_rss_mib": result["process_peak_rss_mib"]}
    return figures
