"""The shipped weights of ``lung_nodule_ct_detection`` (trained on synthetic CT phantoms only, 2.5 mm).

* (The file's record, safe strict loading and the refusal to train over it: tests/test_shipped_weights.py.)
* The bundle's defaults are the shipped weights' recipe: ``inference.yaml`` resamples and anchors as
  ``train.yaml`` does, and ``docs/recipe_1.5mm.yaml`` only names ids that ``train.yaml`` has.
* ``inference.yaml`` with no override but the input and output folders (what a user runs on a fresh
  clone: shipped weights, 2.5 mm, test-time flips) finds the planted nodules of 8 mm or more in a
  synthetic chest CT phantom made by the same generator as the training set (not one of its scans).
"""

from __future__ import annotations

import json
from pathlib import Path

import bundle_runner
import numpy as np
import pytest
import yaml
from monai.bundle import ConfigParser

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "lung_nodule_ct_detection"
CONFIGS = BUNDLE / "configs"
WEIGHTS = BUNDLE / "models" / "model.pt"


def _recorded() -> dict:
    return json.loads((CONFIGS / "metadata.json").read_text())["weights"]


def test_defaults_are_the_shipped_recipe():
    train, infer = ConfigParser(), ConfigParser()
    train.read_config(str(CONFIGS / "train.yaml"))
    infer.read_config(str(CONFIGS / "inference.yaml"))
    for key in ("spacing", "base_anchor_shapes", "feature_map_scales", "hu_window"):
        assert train[key] == infer[key], key
    assert train["spacing"] == [2.5, 2.5, 2.5] and train["base_anchor_shapes"] == [[2, 2, 2], [4, 4, 4]]
    recipe = yaml.safe_load((BUNDLE / "docs" / "recipe_1.5mm.yaml").read_text())
    assert recipe["spacing"] == [1.5, 1.5, 1.5]
    for key in recipe:  # every override names an existing id of train.yaml
        assert key in train, key


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> tuple[Path, list[dict]]:
    """One synthetic chest CT (the training set's generator and 2.5 mm voxels, another seed) with two solid
    nodules of 9-16 mm; returns the MHD file and its nodules (LPS centre, diameter)."""
    from common.synthetic.nodules import generate_nodules

    data = tmp_path_factory.mktemp("nodules")
    generate_nodules(data, {
        "num_train": 0, "num_val": 0, "num_test": 1, "dicom_cases": "none", "candidates_per_scan": 0,
        "nodule": {"nodules_per_scan": [2, 2], "no_nodule_probability": 0.0,
                   "diameter_mm": {"median": 12.0, "sigma": 0.2, "min": 9.0, "max": 16.0},
                   "type_probabilities": {"solid": 1.0, "part_solid": 0.0, "ground_glass": 0.0},
                   "margin_probabilities": {"round": 1.0, "lobulated": 0.0, "spiculated": 0.0}},
    }, seed=123)
    scan = yaml.safe_load((data / "dataset.yaml").read_text())["scans"][0]
    mhd = data / "subset0" / f"{scan['seriesuid']}.mhd"
    assert mhd.is_file() and len(scan["nodules"]) == 2
    return mhd, scan["nodules"]


def test_default_inference_finds_the_planted_nodules(phantom, tmp_path):
    mhd, nodules = phantom
    out = tmp_path / "out"
    # no checkpoint, spacing, anchor or test-time-flip override: the shipped weights at the bundle's defaults
    bundle_runner.run_workflow(BUNDLE, [CONFIGS / "inference.yaml"], "infer", dataset_dir=str(mhd), output_dir=str(out))
    doc = json.loads((out / f"{mhd.stem}_nodules.json").read_text())
    assert doc["coordinate_system"] == "LPS" and doc["units"] == "mm"
    detections = doc["detections"]
    assert detections, "no detection at all"
    planted = [(np.asarray(n["center_lps"]), n["diameter_mm"] / 2) for n in nodules if n["diameter_mm"] >= 8.0]
    assert planted
    # the best detection is a hit (LUNA16's rule: its centre within the nodule's radius; measured 2-3 mm off)
    top = np.asarray(detections[0]["center"])
    assert any(np.linalg.norm(top - c) < r for c, r in planted), (detections[:3], nodules)
    assert detections[0]["score"] > 0.5, detections[0]
    # every planted nodule is hit by one of the first three detections
    for centre, radius in planted:
        distance = min(float(np.linalg.norm(np.asarray(d["center"]) - centre)) for d in detections[:3])
        assert distance < radius, (distance, radius, detections[:3])
