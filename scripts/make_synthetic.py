"""Generate a synthetic data set in the layout real public data comes in.

    python scripts/make_synthetic.py <task> --out DIR [--config FILE.yaml] [--seed 0]

Tasks:
    lung_ct        chest CT phantoms with left/right lung labels (MSD/decathlon layout; NIfTI, DICOM, MHD)
    nodules        chest CT phantoms with nodules (LUNA16 layout: MHD/RAW + annotations.csv)
    pneumonia_cxr  pediatric chest X-rays projected from CT phantoms (Kermany ChestXRay2017 layout)
    oct            retinal OCT B-scans (Kermany OCT2017 layout)
    oxygen_risk    CXR + EHR encounters with oxygen outcomes, several sites (one CSV row per encounter)

Each writes ``dataset.yaml`` describing what it made; the same seed gives the same bytes.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import fire

# run as a file (`python scripts/...`): make this checkout's `common` importable first
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# task -> "module:function"; each function has the signature (out_dir, config=None, seed=0) -> Path
GENERATORS = {
    "lung_ct": "common.synthetic.ct_phantom:generate_lung_ct",
    "nodules": "common.synthetic.nodules:generate_nodules",
    "pneumonia_cxr": "common.synthetic.cxr:generate_pneumonia_cxr",
    "oct": "common.synthetic.oct:generate_oct",
    "oxygen_risk": "common.synthetic.ehr_cohort:generate_oxygen_risk",
}


def main(task: str, out: str, config: str | None = None, seed: int = 0) -> str:
    """Generate the synthetic data set ``task`` into ``out``.

    Args:
        task: one of the keys of ``GENERATORS``.
        out: output folder (created).
        config: optional YAML file overriding the generator's defaults (counts, sizes, ranges).
        seed: random seed; the same seed gives identical files.

    Returns:
        the output folder.
    """
    if task not in GENERATORS:
        raise SystemExit(f"unknown task {task!r}; choose one of {', '.join(GENERATORS)}")
    module_name, func_name = GENERATORS[task].split(":")
    generate = getattr(importlib.import_module(module_name), func_name)
    return str(generate(out, config=config, seed=seed))


if __name__ == "__main__":
    fire.Fire(main)
