"""Turn a data set in its public layout into the datalist JSON a bundle reads.

    python scripts/prepare_datalist.py <layout> --root DIR --out datalist.json [options]

Layouts:
    decathlon      MSD/decathlon folder or dataset.json (lung CT segmentation)
    luna16         LUNA16: *.mhd/.raw or NIfTI volumes + annotations.csv (nodule detection)
    oct2017        Kermany OCT2017: train/{CNV,DME,DRUSEN,NORMAL}/*.jpeg, test/...
    chestxray2017  Kermany ChestXRay2017: train/{NORMAL,PNEUMONIA}/*.jpeg (bacterial/viral from the name)
    oxygen_csv     one CSV row per encounter (image path, EHR columns, outcomes)

Options are passed on to the layout's function (see its docstring), e.g. ``--val_fraction 0.2 --seed 0``.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import fire

# run as a file (`python scripts/...`): make this checkout's `common` importable first
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# layout -> "module:function"; each takes (root, out, **options) and returns the datalist path
LAYOUTS = {
    "decathlon": "common.data.decathlon:prepare",
    "luna16": "common.data.luna16:prepare",
    "oct2017": "common.data.kermany:prepare_oct2017",
    "chestxray2017": "common.data.kermany:prepare_chestxray2017",
    "oxygen_csv": "common.data.oxygen_csv:prepare",
}
# options a layout's function needs and this checkout can give: the bundle's own files
DEFAULT_OPTIONS = {
    "oxygen_csv": {"feature_spec": str(REPO / "bundles" / "cxr_ehr_oxygen_risk" / "configs" / "ehr_features.yaml")},
}


def main(layout: str, root: str, out: str, **options) -> str:
    """Write the datalist for the data set at ``root`` in ``layout`` to ``out``.

    Args:
        layout: one of the keys of ``LAYOUTS``.
        root: the data set folder (or its index file, where the layout has one).
        out: the datalist JSON to write.
        options: passed on to the layout's function.

    Returns:
        the datalist path.
    """
    if layout not in LAYOUTS:
        raise SystemExit(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    module_name, func_name = LAYOUTS[layout].split(":")
    prepare = getattr(importlib.import_module(module_name), func_name)
    return str(prepare(root, out, **{**DEFAULT_OPTIONS.get(layout, {}), **options}))


if __name__ == "__main__":
    fire.Fire(main)
