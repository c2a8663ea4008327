"""Speed and memory figures of the zoo on this machine, gathered into one JSON and a markdown table.

    python scripts/benchmark.py [TARGET ...] [--out docs/benchmarks.json] [--markdown docs/benchmarks.md]
                                [--data_root demo_output/train/data] [--training true] [--train_iterations 8]

Targets (default: all): synthetic_ct, synthetic_xray, lung_ct_segmentation, lung_nodule_ct_detection,
retina_oct_classification, pediatric_cxr_pneumonia_classification, cxr_ehr_oxygen_risk, large_film.
Each target is a function returning a dict of figures (inference latency and throughput, PyTorch vs ONNX
Runtime, peak memory); failures are recorded, not fatal. For every bundle the training speed of its own
train.yaml pipeline (data loading, augmentation, forward, backward, step) is measured too, in a child
process, on the synthetic set `make demo-train` wrote under --data_root (generated there with the demo's
settings when missing). Targets not run keep their figures from the previous JSON.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

import fire

# run as a file (`python scripts/...`): make this checkout's `common` importable first
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from zoo_tools.benchmarks.harness import child_env, run_in_child  # noqa: E402

# target -> ("module:function", keyword arguments)
TARGETS: dict[str, tuple[str, dict]] = {
    "synthetic_ct": ("common.synthetic:benchmark_ct", {}),
    "synthetic_xray": ("common.synthetic:benchmark_xray", {}),
    "lung_ct_segmentation": ("zoo_tools.benchmarks.segmentation:run", {}),
    "lung_nodule_ct_detection": ("zoo_tools.benchmarks.detection:run", {}),
    "retina_oct_classification": ("zoo_tools.benchmarks.classification:run", {"bundle": "retina_oct_classification"}),
    "pediatric_cxr_pneumonia_classification": (
        "zoo_tools.benchmarks.classification:run",
        {"bundle": "pediatric_cxr_pneumonia_classification"},
    ),
    "cxr_ehr_oxygen_risk": ("zoo_tools.benchmarks.oxygen:run", {}),
    # bad input: peak memory of a batch holding one 12,000 x 12,000 film (pneumonia bundle)
    "large_film": ("zoo_tools.benchmarks.classification:large_film", {}),
}
# targets that are bundles (their training speed is measured too)
BUNDLE_TARGETS = [t for t in TARGETS if t.split("_")[0] not in ("synthetic", "large")]


def describe_machine() -> dict:
    """CPU, cores, memory and library versions of the machine the figures come from."""
    import monai
    import onnxruntime
    import psutil
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "monai": monai.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def run_target(module: str, func: str, kwargs: dict, threads: int | None = None) -> dict:
    """Call ``module:func(**kwargs)`` in a child process (so that one target's memory and threads do not
    affect the next) and return its figures, with the child's peak resident memory added as
    ``process_peak_rss_mib`` (children the target starts itself report their own)."""
    threads = threads or int(os.environ.get("OMP_NUM_THREADS", "1"))
    return run_in_child(f"{module}:{func}", kwargs, threads=threads, echo=True)


def measure_training(bundle: str, data_root: str, iterations: int = 8, threads: int = 2) -> dict:
    """Training iterations/s of ``bundle``'s own train.yaml pipeline (``zoo_tools.demo.training_speed``), in a
    child process so that its peak memory is its own, on the demo's synthetic set (made when missing)."""
    from zoo_tools.demo import DEMOS

    demo = DEMOS[bundle]
    data = Path(data_root).resolve() / demo.task
    generated_s = None
    if not (data / "dataset.yaml").is_file():
        import yaml

        data.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(demo.synthetic, str):  # a generator config file of the repository
            config = REPO / demo.synthetic
        else:
            config = data.parent / f"_{demo.task}_demo_config.yaml"
            config.write_text(yaml.safe_dump(demo.synthetic, sort_keys=False))
        start = time.perf_counter()
        subprocess.run([sys.executable, str(REPO / "scripts" / "make_synthetic.py"), demo.task, "--out", str(data),
                        "--config", str(config), "--seed", str(demo.seed)], check=True, cwd=REPO, env=child_env(threads),
                       stdout=subprocess.DEVNULL)
        generated_s = round(time.perf_counter() - start, 1)
    overrides = {k: v for k, v in demo.train.items() if k not in ("max_epochs", "val_interval")}
    figures = run_in_child("zoo_tools.demo:training_speed",
                           {"bundle": bundle, "dataset_dir": str(data), "iterations": int(iterations), "overrides": overrides},
                           threads=threads)
    figures["data"] = f"make demo-train's synthetic {demo.task} set" + (f" (generated in {generated_s} s)" if generated_s else "")
    return figures


def _flatten(tree, prefix: str = "") -> dict:
    flat = {}
    if isinstance(tree, dict):
        for key, value in tree.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
    else:
        flat[prefix[:-1]] = tree
    return flat


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def summarise(figures: dict) -> dict:
    """The key columns of one bundle target: latency and throughput per backend, training speed, peak memory.

    Bundles report inference in one of three shapes: end to end per scan (``{"pytorch": {"seconds_per_scan"},
    "onnxruntime": {...}}``, the CT bundles), per network call and batch size (``{"inference":
    {"batch_<n>": {"pytorch_ms", "onnxruntime_ms", "pytorch_per_s", "onnxruntime_per_s"}}}``, oxygen) or
    flat per batch size (``torch_bs<n>_img_per_s``, ``onnx_bs<n>_img_per_s``, the classifiers).
    """
    row = {"latency_pytorch": "-", "latency_onnxruntime": "-", "throughput_pytorch": "-",
           "throughput_onnxruntime": "-", "train": "-", "peak_inference_mib": "-", "peak_train_mib": "-"}
    # "targets" holds the bundle's budgets (e.g. peak_rss_mib_max), not measurements
    flat = _flatten({k: v for k, v in figures.items() if k not in ("training", "targets")})
    per_scan = {b: figures.get(b, {}).get("seconds_per_scan") for b in ("pytorch", "onnxruntime")
                if isinstance(figures.get(b), dict)}
    if any(v is not None for v in per_scan.values()):
        for backend, sec in per_scan.items():
            if sec:
                row[f"latency_{backend}"] = f"{sec:.3g} s/scan"
                row[f"throughput_{backend}"] = f"{60.0 / sec:.3g} scans/min"
    elif any(k.startswith("torch_bs") and k.endswith("_img_per_s") for k in figures):
        # per batch size, flat: torch_bs<n>_img_per_s / onnx_bs<n>_img_per_s
        sizes = sorted(int(k[len("torch_bs"):-len("_img_per_s")]) for k in figures
                       if k.startswith("torch_bs") and k.endswith("_img_per_s"))
        for backend, prefix in (("pytorch", "torch"), ("onnxruntime", "onnx")):
            small, large = figures.get(f"{prefix}_bs{sizes[0]}_img_per_s"), figures.get(f"{prefix}_bs{sizes[-1]}_img_per_s")
            if small:
                row[f"latency_{backend}"] = f"{1000.0 * sizes[0] / small:.3g} ms (batch {sizes[0]})"
            if large:
                row[f"throughput_{backend}"] = f"{large:.4g}/s (batch {sizes[-1]})"
    elif isinstance(figures.get("inference"), dict):
        batches = sorted((int(k.split("_")[-1]), v) for k, v in figures["inference"].items()
                         if k.startswith("batch_") and isinstance(v, dict))
        if batches:
            (b1, small), (bn, large) = batches[0], batches[-1]
            for backend in ("pytorch", "onnxruntime"):
                if small.get(f"{backend}_ms") is not None:
                    row[f"latency_{backend}"] = f"{small[f'{backend}_ms']:.3g} ms (batch {b1})"
                if large.get(f"{backend}_per_s") is not None:
                    row[f"throughput_{backend}"] = f"{large[f'{backend}_per_s']:.4g}/s (batch {bn})"
    # the bundle's own inference peaks; the target process's peak (which may include e.g. drawing a test
    # scan) only when the bundle reports none
    peaks = [v for k, v in flat.items() if "peak_rss" in k and k != "process_peak_rss_mib"
             and isinstance(v, (int, float))] or [v for k, v in flat.items() if k == "process_peak_rss_mib"]
    if peaks:
        row["peak_inference_mib"] = f"{max(peaks):.0f}"
    training = figures.get("training")
    if isinstance(training, dict) and "iterations_per_s" in training:
        cpu = training.get("cpu_seconds_per_iteration")
        row["train"] = (f"{training['iterations_per_s']:.3g} it/s (batch {training.get('batch_size')}"
                        + (f"; {cpu:.3g} CPU s/it)" if cpu is not None else ")"))
        row["peak_train_mib"] = f"{training['peak_rss_mib']:.0f}"
    elif isinstance(training, dict) and "error" in training:
        row["train"] = "failed"
    return row


def _markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        "# Benchmarks",
        "",
        f"Measured by `python scripts/benchmark.py` on {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, "
        f"torch {m['torch']} ({m.get('benchmark_threads', m['torch_threads'])} thread(s) per measurement), MONAI {m['monai']}, ONNX Runtime {m['onnxruntime']}, "
        f"Python {m['python']}.",
    ]
    if m.get("load_average"):
        lines.append(f"Load average when the run started: {m['load_average']} (the machine is shared; "
                     "figures from a busy machine are slower than an idle one).")
    lines += [
        "",
        "Inference latency: CT bundles end to end per scan (read, preprocess, network, post-process, write); the "
        "2D bundles per network call. Training: the bundle's own `train.yaml` pipeline (data loading, "
        "augmentation, forward, backward, optimiser step) on the synthetic set of `make demo-train`. Peak memory: "
        "resident set size of the process (MiB).",
        "",
        "| bundle | latency PyTorch | latency ONNX Runtime | throughput PyTorch | throughput ONNX Runtime "
        "| training | peak memory inference / training (MiB) |",
        "|---|---|---|---|---|---|---|",
    ]
    other = {}
    for target, figures in report["targets"].items():
        if target.startswith("synthetic_"):
            other[target] = figures
            continue
        r = summarise(figures)
        if "error" in figures:
            r["latency_pytorch"] = f"failed: {figures['error'][:120]}"
        lines.append(f"| {target} | {r['latency_pytorch']} | {r['latency_onnxruntime']} | {r['throughput_pytorch']} "
                     f"| {r['throughput_onnxruntime']} | {r['train']} | {r['peak_inference_mib']} / {r['peak_train_mib']} |")
    if other:
        lines += ["", "## Synthetic data generators", "", "| target | figure | value |", "|---|---|---|"]
        for target, figures in other.items():
            for key, value in _flatten(figures).items():
                lines.append(f"| {target} | {key} | {_fmt(value)} |")
    lines += ["", "## All figures", ""]
    for target, figures in report["targets"].items():
        if target in other:
            continue
        lines += [f"### {target}", "", "| figure | value |", "|---|---|"]
        for key, value in _flatten(figures).items():
            value = json.dumps(value) if isinstance(value, list) else _fmt(value)
            lines.append(f"| {key} | {value} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def main(
    *targets: str,
    out: str = "docs/benchmarks.json",
    markdown: str = "docs/benchmarks.md",
    data_root: str = "demo_output/train/data",
    training: bool = True,
    train_iterations: int = 8,
    threads: int = 1,
) -> dict:
    """Run the benchmark targets and write the JSON and markdown reports.

    Args:
        targets: names from ``TARGETS``; all when none is given.
        out: JSON report path.
        markdown: markdown table path.
        data_root: folder of the demo's synthetic sets (``<data_root>/<task>``) for the training figures.
        training: also measure each bundle's training speed.
        train_iterations: timed training iterations per bundle.
        threads: intra-op threads of every measurement (OMP_NUM_THREADS of the child processes, and the
            ``threads`` argument of targets that take one). 1 by default: on a 2-core machine shared with
            other jobs, two OpenMP threads per process measured up to ten times slower than one.

    Returns:
        the report.
    """
    from common.io.atomic import atomic_write_json, atomic_write_text

    chosen = list(targets) or list(TARGETS)
    unknown = [t for t in chosen if t not in TARGETS]
    if unknown:
        raise SystemExit(f"unknown target(s) {unknown}; choose from {', '.join(TARGETS)}")
    previous = json.loads(Path(out).read_text())["targets"] if Path(out).exists() else {}
    machine = describe_machine()
    machine["load_average"] = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    machine["benchmark_threads"] = threads
    report = {"machine": machine, "targets": dict(previous)}
    for name in chosen:
        module_name, kwargs = TARGETS[name]
        mod, func = module_name.split(":")
        print(f"[benchmark] {name} ...", flush=True)
        start = time.perf_counter()
        try:
            figures = run_target(mod, func, kwargs, threads)
        except Exception as e:  # a failing target is recorded so the others still run
            traceback.print_exc()
            figures = {"error": f"{type(e).__name__}: {e}"}
        if training and not name.startswith("synthetic_") and name in BUNDLE_TARGETS:
            print(f"[benchmark] {name}: training speed ...", flush=True)
            try:
                figures["training"] = measure_training(name, data_root, train_iterations, threads)
            except Exception as e:
                traceback.print_exc()
                figures["training"] = {"error": f"{type(e).__name__}: {str(e)[-500:]}"}
        figures["benchmark_seconds"] = round(time.perf_counter() - start, 1)
        report["targets"][name] = figures
        print(json.dumps({name: figures}, indent=2, default=str), flush=True)
        # written after every target, so an interrupted run keeps what finished
        atomic_write_json(out, report)
        atomic_write_text(markdown, _markdown(report))
    return report


if __name__ == "__main__":
    fire.Fire(main)
