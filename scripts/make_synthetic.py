"""Generate a synthetic data set in the layout real public data comes in.

    python scripts/make_synthetic.py <task> --out DIR [--config FILE.yaml] [--seed 0]
    python scripts/make_synthetic.py list          # the tasks, one line each

Tasks (what each makes, in which public layout): ``python scripts/make_synthetic.py list``.
Each writes ``dataset.yaml`` describing what it made; the same seed gives the same bytes.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import fire

# run as a file (`python scripts/...`): make this checkout's `common` importable first
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# task -> ("module:function", what it makes); each function has the signature (out_dir, config=None, seed=0) -> Path
GENERATORS = {
    "lung_ct": ("common.synthetic.ct_phantom:generate_lung_ct",
                "chest CT phantoms with left/right lung labels (MSD/decathlon layout; NIfTI, DICOM, MHD)"),
    "nodules": ("common.synthetic.nodules:generate_nodules",
                "chest CT phantoms with nodules (LUNA16 layout: MHD/RAW + annotations.csv)"),
    "pneumonia_cxr": ("common.synthetic.cxr:generate_pneumonia_cxr",
                      "pediatric chest X-rays projected from CT phantoms (Kermany ChestXRay2017 layout)"),
    "oct": ("common.synthetic.oct:generate_oct", "retinal OCT B-scans (Kermany OCT2017 layout)"),
    "oxygen_risk": ("common.synthetic.ehr_cohort:generate_oxygen_risk",
                    "CXR + EHR encounters with oxygen outcomes, several sites (one CSV row per encounter)"),
}


def main(task: str, out: str | None = None, config: str | None = None, seed: int = 0) -> str | None:
    """Generate the synthetic data set ``task`` into ``out``; ``list`` prints the tasks.

    Args:
        task: one of the keys of ``GENERATORS``, or ``list``.
        out: output folder (created); needed by every task but ``list``.
        config: optional YAML file overriding the generator's defaults (counts, sizes, ranges).
        seed: random seed; the same seed gives identical files.

    Returns:
        the output folder (``list``: None).
    """
    if task == "list":
        table = "\n".join(f"{name:<14} {what}" for name, (_, what) in GENERATORS.items())
        print(table)
        return None
    if task not in GENERATORS:
        raise SystemExit(f"unknown task {task!r}; choose one of {', '.join(GENERATORS)} (or list)")
    if not out:
        raise SystemExit(f"{task}: give the output folder with --out DIR")
    module_name, func_name = GENERATORS[task][0].split(":")
    generate = getattr(importlib.import_module(module_name), func_name)
    return str(generate(out, config=config, seed=seed))


if __name__ == "__main__":
    fire.Fire(main)
