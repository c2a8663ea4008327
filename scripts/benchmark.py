"""Speed and memory figures of the zoo on this machine, gathered into one JSON and a markdown table.

    python scripts/benchmark.py [TARGET ...] [--out docs/benchmarks.json] [--markdown docs/benchmarks.md]

Targets (default: all): synthetic_ct, synthetic_xray, lung_ct_segmentation, lung_nodule_ct_detection,
retina_oct_classification, pediatric_cxr_pneumonia_classification, cxr_ehr_oxygen_risk.
Each target is a function returning a dict of figures; failures are recorded, not fatal.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

import fire

# run as a file (`python scripts/...`): make this checkout's `common` importable first
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# target -> ("module:function", keyword arguments)
TARGETS: dict[str, tuple[str, dict]] = {
    "synthetic_ct": ("common.synthetic:benchmark_ct", {}),
    "synthetic_xray": ("common.synthetic:benchmark_xray", {}),
    "lung_ct_segmentation": ("common.segmentation.benchmark:run", {}),
    "lung_nodule_ct_detection": ("common.detection.benchmark:run", {}),
    "retina_oct_classification": ("common.classification.benchmark:run", {"bundle": "retina_oct_classification"}),
    "pediatric_cxr_pneumonia_classification": (
        "common.classification.benchmark:run",
        {"bundle": "pediatric_cxr_pneumonia_classification"},
    ),
    "cxr_ehr_oxygen_risk": ("common.oxygen.benchmark:run", {}),
}


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


def _markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        "# Benchmarks",
        "",
        f"Measured by `python scripts/benchmark.py` on {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, "
        f"torch {m['torch']}, MONAI {m['monai']}, ONNX Runtime {m['onnxruntime']}.",
        "",
        "| target | figure | value |",
        "|---|---|---|",
    ]
    for target, figures in report["targets"].items():
        for key, value in figures.items():
            if isinstance(value, float):
                value = f"{value:.4g}"
            elif isinstance(value, (dict, list)):
                value = json.dumps(value)
            lines.append(f"| {target} | {key} | {value} |")
    return "\n".join(lines) + "\n"


def main(*targets: str, out: str = "docs/benchmarks.json", markdown: str = "docs/benchmarks.md") -> dict:
    """Run the benchmark targets and write the JSON and markdown reports.

    Args:
        targets: names from ``TARGETS``; all when none is given.
        out: JSON report path.
        markdown: markdown table path.

    Returns:
        the report.
    """
    from common.io.atomic import atomic_write_json, atomic_write_text

    chosen = list(targets) or list(TARGETS)
    unknown = [t for t in chosen if t not in TARGETS]
    if unknown:
        raise SystemExit(f"unknown target(s) {unknown}; choose from {', '.join(TARGETS)}")
    previous = json.loads(Path(out).read_text())["targets"] if Path(out).exists() else {}
    report = {"machine": describe_machine(), "targets": dict(previous)}
    for name in chosen:
        module_name, kwargs = TARGETS[name]
        mod, func = module_name.split(":")
        print(f"[benchmark] {name} ...", flush=True)
        start = time.perf_counter()
        try:
            figures = getattr(importlib.import_module(mod), func)(**kwargs)
        except Exception as e:  # a failing target is recorded so the others still run
            traceback.print_exc()
            figures = {"error": f"{type(e).__name__}: {e}"}
        figures["benchmark_seconds"] = round(time.perf_counter() - start, 1)
        report["targets"][name] = figures
        print(json.dumps({name: figures}, indent=2, default=str), flush=True)
    atomic_write_json(out, report)
    atomic_write_text(markdown, _markdown(report))
    return report


if __name__ == "__main__":
    fire.Fire(main)
