"""Speed and memory of the lung segmentation bundle on a full-size chest CT, PyTorch and ONNX Runtime.

    python scripts/benchmark.py lung_ct_segmentation
    python -m zoo_tools.benchmarks.segmentation            # the same figures, printed

A 512 x 512 x 150 chest CT phantom (about 0.75 x 0.75 x 2 mm, int16 HU NIfTI; ``shape`` and
``slice_spacing_mm`` change it) is made with
``common.synthetic.ct_phantom``; the bundle's own ``inference.yaml`` (and ``inference.yaml`` +
``inference_onnx.yaml``) then runs in a fresh child process per backend, end to end: read, preprocess,
network, post-process, resample to the input grid and write the NIfTI mask. Each scan's time runs from
the data loader fetching it to its mask being written; peak memory is the child's maximum resident
set size (VmHWM), which includes the Python, torch and MONAI runtime.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from zoo_tools import BUNDLES
from zoo_tools.benchmarks.harness import peak_rss_mib, run_in_child

BUNDLE = BUNDLES / "lung_ct_segmentation"


def make_benchmark_scan(
    path: str | os.PathLike,
    shape: tuple[int, int, int] = (512, 512, 300),
    slice_spacing_mm: float = 1.0,
    seed: int = 0,
) -> tuple[Path, tuple[float, float, float]]:
    """Write a chest CT phantom of ``shape`` voxels as an int16 NIfTI (HU).

    The phantom (``common.synthetic.ct_phantom``) is drawn on a ``shape[0]`` matrix (in-plane voxels of
    about 0.7-0.8 mm: the field of view follows the torso) with ``slice_spacing_mm`` slices; superior
    slices are dropped or air slices added so that it has exactly ``shape[2]`` slices.

    Returns:
        the NIfTI path and the voxel spacing in mm.
    """
    import nibabel as nib

    from common.synthetic.ct_phantom import make_chest_phantom

    if shape[0] != shape[1]:
        raise ValueError(f"the phantom has a square matrix, got {shape}")
    cfg = {"matrix": shape[0], "slice_spacing_mm": [slice_spacing_mm, slice_spacing_mm]}
    phantom = make_chest_phantom(np.random.default_rng(seed), cfg)
    hu = np.asarray(phantom.hu)
    if hu.shape[2] >= shape[2]:
        hu = hu[:, :, : shape[2]]
    else:
        hu = np.concatenate([hu, np.full((*hu.shape[:2], shape[2] - hu.shape[2]), -1000, hu.dtype)], axis=2)
    affine = np.asarray(phantom.affine, dtype=np.float64)
    image = nib.Nifti1Image(np.clip(np.rint(hu), -1024, 3071).astype(np.int16), affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nib.save(image, str(path))
    return Path(path), tuple(float(x) for x in phantom.spacing)


def _child(config_files: list[str], bundle_root: str, dataset_dir: str, output_dir: str, overrides: dict) -> dict:
    """Run the inference workflow in this process and return its timings and peak memory."""
    import torch
    from ignite.engine import Events
    from monai.bundle import ConfigWorkflow

    start = time.perf_counter()
    workflow = ConfigWorkflow(
        config_file=config_files, workflow_type="infer", bundle_root=bundle_root,
        dataset_dir=dataset_dir, output_dir=output_dir, logging_file=None, **overrides,
    )
    workflow.initialize()
    evaluator = workflow.parser.get_parsed_content("evaluator")
    fetched: list[tuple[float, float]] = []
    done: list[tuple[float, float]] = []

    def stamp() -> tuple[float, float]:
        usage = resource.getrusage(resource.RUSAGE_SELF)  # all threads of this process
        return time.perf_counter(), usage.ru_utime + usage.ru_stime

    evaluator.add_event_handler(Events.GET_BATCH_STARTED, lambda _: fetched.append(stamp()))
    evaluator.add_event_handler(Events.ITERATION_COMPLETED, lambda _: done.append(stamp()))
    setup_s = time.perf_counter() - start
    workflow.run()
    workflow.finalize()
    per_scan = [b[0] - a[0] for a, b in zip(fetched, done)]
    cpu_per_scan = [b[1] - a[1] for a, b in zip(fetched, done)]
    return {
        "setup_s": setup_s,
        "per_scan_s": per_scan,
        "cpu_s_per_scan": cpu_per_scan,
        "peak_rss_mib": peak_rss_mib(),
        "torch_threads": torch.get_num_threads(),
    }


def _run_child(args: dict, threads: int) -> dict:
    return run_in_child("zoo_tools.benchmarks.segmentation:_child", args, threads=threads)


def _weights(bundle: Path, work: Path) -> tuple[Path, str]:
    """The bundle's trained weights, or a seeded random initialisation when none were trained."""
    trained = bundle / "models" / "model.pt"
    if trained.exists():
        return trained, "trained (models/model.pt)"
    import torch
    from monai.bundle import ConfigParser

    from common.io.atomic import atomic_torch_save

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.yaml"))
    torch.manual_seed(0)
    network = parser.get_parsed_content("network_def")
    path = work / "random_model.pt"
    atomic_torch_save(network.state_dict(), path)
    return path, "random initialisation (no trained weights found): post-processing time may differ"


def run(
    bundle_root: str | os.PathLike = BUNDLE,
    shape: tuple[int, int, int] = (512, 512, 150),
    slice_spacing_mm: float = 2.0,
    n_scans: int = 2,
    threads: int = 2,
    backends: tuple[str, ...] = ("pytorch", "onnxruntime"),
    work_dir: str | os.PathLike | None = None,
) -> dict:
    """Seconds per scan and peak memory of the bundle's inference, end to end, per backend.

    Args:
        bundle_root: the bundle.
        shape: scan size in voxels.
        slice_spacing_mm: slice spacing of the phantom (in-plane spacing follows the torso, ~0.75 mm).
        n_scans: scans per run (copies of the phantom; the first includes warm-up).
        threads: ``OMP_NUM_THREADS`` of the child processes.
        backends: ``pytorch`` and/or ``onnxruntime``.
        work_dir: scratch folder (a temporary one, removed afterwards, when None).

    Returns:
        figures per backend: ``seconds_per_scan`` (wall, mean over scans), ``first_scan_s``,
        ``cpu_seconds_per_scan`` (user + system time of all threads), ``peak_rss_mib``, ``setup_s``
        (config parsing and weights), ``process_wall_s``.
    """
    bundle = Path(bundle_root).resolve()
    scratch = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="lung_seg_bench_"))
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        scans = scratch / "scans"
        scans.mkdir(exist_ok=True)
        t0 = time.perf_counter()
        first, spacing = make_benchmark_scan(scans / "chest_000.nii.gz", shape, slice_spacing_mm)
        make_s = time.perf_counter() - t0
        for i in range(1, n_scans):
            os.link(first, scans / f"chest_{i:03d}.nii.gz")
        ckpt, weights_note = _weights(bundle, scratch)
        figures: dict = {
            "scan": f"{shape[0]}x{shape[1]}x{shape[2]} voxels, int16 NIfTI (.nii.gz), synthetic chest phantom",
            "spacing_mm": [round(x, 3) for x in spacing],
            "scans_per_run": n_scans,
            "threads": threads,
            "weights": weights_note,
            "make_scan_s": round(make_s, 1),
        }
        configs = {"pytorch": [str(bundle / "configs" / "inference.yaml")]}
        if "onnxruntime" in backends:
            from common.export import export_bundle

            onnx_path = scratch / "model.onnx"
            export_bundle(str(bundle), ckpt_path=str(ckpt), onnx_path=str(onnx_path))
            configs["onnxruntime"] = configs["pytorch"] + [str(bundle / "configs" / "inference_onnx.yaml")]
        for backend in backends:
            overrides = {"ckpt_path": str(ckpt)}
            if backend == "onnxruntime":
                overrides = {"onnx_path": str(scratch / "model.onnx")}
            out_dir = scratch / f"out_{backend}"
            result = _run_child(
                {"config_files": configs[backend], "bundle_root": str(bundle), "dataset_dir": str(scans),
                 "output_dir": str(out_dir), "overrides": overrides},
                threads,
            )
            written = sorted(out_dir.glob("*_seg.nii.gz"))
            if len(written) != n_scans:
                raise RuntimeError(f"{backend}: {len(written)} masks written for {n_scans} scans")
            per_scan = result["per_scan_s"]
            figures[backend] = {
                "seconds_per_scan": round(float(np.mean(per_scan)), 2),
                "first_scan_s": round(per_scan[0], 2),
                "per_scan_s": [round(s, 2) for s in per_scan],
                # CPU seconds (all threads) per scan: what the scan costs when the machine is shared
                "cpu_seconds_per_scan": round(float(np.mean(result["cpu_s_per_scan"])), 2),
                "peak_rss_mib": round(result["peak_rss_mib"], 0),
                "setup_s": round(result["setup_s"], 1),
                "process_wall_s": round(result["process_wall_s"], 1),
            }
        figures["targets"] = {"seconds_per_scan_max": 10.0, "peak_rss_mib_max": 2048.0}
        return figures
    finally:
        if work_dir is None:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
