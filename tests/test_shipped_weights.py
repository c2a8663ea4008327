"""Every bundle ships weights, recorded as model-zoo bundles record them (issue: "Every bundle ships weights").

For each of the five bundles: ``models/model.pt`` exists, is at most 25 MB, has the sha256 and size that
``configs/metadata.json`` (``weights``) and ``large_files.yml`` record, loads with
``torch.load(weights_only=True)`` strictly (every name and shape) into the network ``configs/inference.yaml``
builds, and its provenance (what it was trained on, data, command, commit, time, machine) is in
``metadata.json`` and the model card. Behaviour of the weights (what they predict) is tested per bundle.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from monai.bundle import ConfigParser

from common.bundle_utils import sha256_file

REPO = Path(__file__).resolve().parents[1]
BUNDLES = sorted(p.name for p in (REPO / "bundles").iterdir() if (p / "configs" / "metadata.json").is_file())
PROVENANCE = ("trained_on", "data", "command", "commit", "training_time", "hardware")


def test_all_five_bundles_are_checked():
    assert len(BUNDLES) == 5, BUNDLES


@pytest.mark.parametrize("bundle", BUNDLES)
def test_weights_match_their_record(bundle):
    root = REPO / "bundles" / bundle
    weights = json.loads((root / "configs" / "metadata.json").read_text()).get("weights")
    assert weights, f"{bundle}: metadata.json has no `weights` entry (the bundle ships no weights)"
    path = root / weights["file"]
    assert path.is_file() and path.stat().st_size <= 25 * 1024 * 1024
    digest = sha256_file(path)
    assert (digest, path.stat().st_size) == (weights["sha256"], weights["size_bytes"])
    large = yaml.safe_load((root / "large_files.yml").read_text())["large_files"]
    assert {"path": weights["file"], "hash_type": "sha256", "hash_val": digest} in large
    missing = [k for k in PROVENANCE if not str(weights.get(k, "")).strip()]
    assert not missing, f"{bundle}: metadata.json weights lacks {missing}"
    assert digest in (root / "docs" / "README.md").read_text(), f"{bundle}: the model card does not state the sha256"


@pytest.mark.parametrize("bundle", BUNDLES)
def test_weights_load_safely_and_strictly_into_the_inference_network(bundle):
    root = REPO / "bundles" / bundle
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "inference.yaml"))
    parser["bundle_root"] = str(root)
    network = parser.get_parsed_content("network_def")
    state = torch.load(root / "models" / "model.pt", map_location="cpu", weights_only=True)
    network.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})


@pytest.mark.parametrize("initial", [False, True], ids=["from_scratch", "fine_tuning_from_shipped"])
@pytest.mark.parametrize("bundle", BUNDLES)
def test_training_refuses_to_write_over_the_shipped_weights(bundle, initial, tmp_path):
    """The reported accident: --initial_ckpt models/model.pt with checkpoints into models/ replaced the file."""
    from monai.bundle import ConfigWorkflow

    root = REPO / "bundles" / bundle
    weights = root / "models" / "model.pt"
    before = sha256_file(weights)
    overrides = {"initial_ckpt": str(weights)} if initial else {}
    workflow = ConfigWorkflow(config_file=str(root / "configs" / "train.yaml"), workflow_type="train",
                              bundle_root=str(root), dataset_dir=str(tmp_path), ckpt_dir=str(root / "models"),
                              output_dir=str(tmp_path / "eval"), **overrides)
    with pytest.raises(Exception) as info:
        workflow.initialize()
    causes = [info.value]
    while causes[-1].__cause__ is not None:  # MONAI wraps the config expression's error
        causes.append(causes[-1].__cause__)
    assert any(isinstance(e, ValueError) and "shipped weights" in str(e) for e in causes), causes
    assert sha256_file(weights) == before


def _small_input(bundle: str, folder: Path) -> dict[str, str]:
    """A few synthetic inputs for ``bundle``'s inference.yaml; returns the overrides that point at them."""
    if bundle == "pediatric_cxr_pneumonia_classification":
        from common.synthetic.cxr import generate_pneumonia_cxr

        generate_pneumonia_cxr(folder, {"image_size": 128, "write_masks": False,
                                        "splits": {"test": {"NORMAL": 2, "BACTERIAL": 2, "VIRAL": 2}}}, seed=0)
        return {"dataset_dir": str(folder / "chest_xray" / "test")}
    from common.synthetic.ehr_cohort import generate_oxygen_risk

    generate_oxygen_risk(folder, {"n_per_site": 4, "image_size": 64, "progress": False, "render": {"pool_size": 1}},
                         seed=0)
    return {"dataset_dir": str(folder)}


@pytest.mark.parametrize("bundle", ["pediatric_cxr_pneumonia_classification", "cxr_ehr_oxygen_risk"])
def test_inference_runs_the_shipped_weights_with_no_override(bundle, tmp_path):
    """What a user runs first on a fresh clone (the CT bundles and OCT have their own, richer tests)."""
    import csv

    import bundle_runner

    root = REPO / "bundles" / bundle
    overrides = _small_input(bundle, tmp_path / "data")
    bundle_runner.run_workflow(root, ["inference.yaml"], "infer", output_dir=str(tmp_path / "out"), **overrides)
    with open(tmp_path / "out" / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) >= 6
    columns = [c for c in rows[0] if c.startswith("p_")]
    assert columns
    for row in rows:
        values = [float(row[c]) for c in columns]
        assert all(0.0 <= v <= 1.0 for v in values), row
