"""scripts/ship_weights.py: storing trained weights as a bundle's models/model.pt, with its record."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from monai.bundle import ConfigParser

REPO = Path(__file__).resolve().parents[1]


def _tool():
    spec = importlib.util.spec_from_file_location("ship_weights", REPO / "scripts" / "ship_weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def bundle(tmp_path) -> Path:
    """A copy of the oxygen-risk bundle's configs (a small network) without its weights."""
    root = tmp_path / "bundle"
    shutil.copytree(REPO / "bundles" / "cxr_ehr_oxygen_risk" / "configs", root / "configs")
    meta = json.loads((root / "configs" / "metadata.json").read_text())
    meta.pop("weights", None)
    (root / "configs" / "metadata.json").write_text(json.dumps(meta))
    return root


def _network(bundle: Path) -> torch.nn.Module:
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.yaml"))
    parser["bundle_root"] = str(bundle)
    return parser.get_parsed_content("network_def")


def test_ships_float16_weights_with_sha256_in_metadata_and_large_files(bundle, tmp_path):
    network = _network(bundle)
    checkpoint = tmp_path / "model_final.pt"
    torch.save({"model": network.state_dict(), "optimizer": {}}, checkpoint)
    result = _tool().ship_weights(bundle, checkpoint, {"data": "synthetic cohort", "commit": "abc"})
    shipped = bundle / "models" / "model.pt"
    digest = hashlib.sha256(shipped.read_bytes()).hexdigest()
    assert result == {"file": str(shipped), "sha256": digest, "size_bytes": shipped.stat().st_size}
    weights = json.loads((bundle / "configs" / "metadata.json").read_text())["weights"]
    assert weights["sha256"] == digest and weights["data"] == "synthetic cohort" and weights["commit"] == "abc"
    large = yaml.safe_load((bundle / "large_files.yml").read_text())["large_files"]
    assert large == [{"path": "models/model.pt", "hash_type": "sha256", "hash_val": digest}]
    state = torch.load(shipped, weights_only=True)
    assert set(state) == set(network.state_dict())
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    network.load_state_dict(state)  # strict: every name and shape
    assert not list(bundle.glob("models/.*.tmp"))


def test_refuses_weights_of_another_network(bundle, tmp_path):
    checkpoint = tmp_path / "other.pt"
    torch.save({"conv.weight": torch.zeros(3, 3)}, checkpoint)
    with pytest.raises(SystemExit, match="does not fit the network"):
        _tool().ship_weights(bundle, checkpoint)
    assert not (bundle / "models" / "model.pt").exists()


def test_other_weights_do_not_inherit_the_previous_record(bundle, tmp_path):
    network = _network(bundle)
    first, second = tmp_path / "first.pt", tmp_path / "second.pt"
    torch.save(network.state_dict(), first)
    torch.manual_seed(1)
    torch.save({k: torch.randn_like(v) if v.is_floating_point() else v for k, v in network.state_dict().items()}, second)
    tool = _tool()
    tool.ship_weights(bundle, first, {"data": "cohort A", "command": "train A"})
    same = tool.ship_weights(bundle, first)  # the same bytes again: the record stays
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())["weights"]
    assert meta["data"] == "cohort A" and meta["sha256"] == same["sha256"]
    other = tool.ship_weights(bundle, second, {"data": "cohort B"}, float16=False)
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())["weights"]
    assert meta["sha256"] == other["sha256"] != same["sha256"]
    assert meta["data"] == "cohort B" and "command" not in meta and "float32" in meta["format"]
