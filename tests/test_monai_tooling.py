"""MONAI's bundle tools work on every bundle, offline, as README.md ("MONAI tooling") tells a user to run them.

Each command runs as a user runs it: ``python -m monai.bundle ...`` from the repository root, in a
subprocess. ``ckpt_export`` writes into ``tmp_path`` (never into ``bundles/*/models``); its TorchScript
model must give the PyTorch network's outputs (built from ``inference.yaml`` with the same weights).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser, verify_metadata, verify_net_in_out

REPO = Path(__file__).resolve().parents[1]
BUNDLES = (
    "lung_ct_segmentation",
    "lung_nodule_ct_detection",
    "retina_oct_classification",
    "pediatric_cxr_pneumonia_classification",
    "cxr_ehr_oxygen_risk",
)
# the config id MONAI's tools take per bundle (README.md, "MONAI tooling"): the detector's network_def returns
# a dict of per-level maps, network_def_packed the same network with one output tensor
NET_IDS = {"lung_nodule_ct_detection": "network_def_packed"}
# small inputs (batch, channels, spatial...) for the parity check of model.ts, 1 CPU thread
PARITY_SHAPES = {
    "lung_ct_segmentation": (1, 1, 32, 32, 32),
    "lung_nodule_ct_detection": (1, 1, 32, 24, 16),
    "retina_oct_classification": (2, 1, 64, 64),
    "pediatric_cxr_pneumonia_classification": (2, 1, 64, 64),
    "cxr_ehr_oxygen_risk": (3, 1, 64, 64),
}
ATOL = 1e-4
TIMEOUT_S = 600


def net_id(bundle: str) -> str:
    return NET_IDS.get(bundle, "network_def")


def monai_bundle(*args: str) -> subprocess.CompletedProcess:
    """Run ``python -m monai.bundle ARGS`` from the repository root as a user would (1 CPU thread)."""
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    )
    return subprocess.run(
        [sys.executable, "-m", "monai.bundle", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )


def _log(result: subprocess.CompletedProcess) -> str:
    return (
        f"exit {result.returncode}\n--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-3000:]}"
    )


def build_network(bundle: str, state_dict: dict[str, torch.Tensor] | None = None) -> torch.nn.Module:
    """The bundle's ``net_id(bundle)`` from inference.yaml (random weights, or ``state_dict`` loaded strictly)."""
    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / bundle / "configs" / "inference.yaml"))
    parser["bundle_root"] = str(REPO / "bundles" / bundle)
    network = parser.get_parsed_content(net_id(bundle))
    if state_dict is not None:
        network.load_state_dict(state_dict, strict=True)
    return network.eval()


@pytest.mark.filterwarnings("ignore:No hash value provided")  # the schema is the repository's own copy
@pytest.mark.parametrize("bundle", BUNDLES)
def test_verify_metadata(bundle, tmp_path):
    meta = REPO / "bundles" / bundle / "configs" / "metadata.json"
    # the schema is the repository's copy: MONAI's download_url skips the download when the file exists
    ok = monai_bundle(
        "verify_metadata",
        "--meta_file",
        str(meta.relative_to(REPO)),
        "--filepath",
        "common/schemas/meta_schema.json",
    )
    assert ok.returncode == 0, _log(ok)
    assert "metadata is verified with no error" in ok.stdout + ok.stderr

    # a copy without a required key fails (in-process: the same MONAI function, without a second start-up)
    broken = json.loads(meta.read_text())
    del broken["authors"]
    (tmp_path / "metadata.json").write_text(json.dumps(broken))
    with pytest.raises(ValueError, match="'authors' is a required property"):
        verify_metadata(
            meta_file=str(tmp_path / "metadata.json"), filepath=str(REPO / "common/schemas/meta_schema.json")
        )


@pytest.mark.parametrize("bundle", BUNDLES)
def test_verify_net_in_out(bundle):
    root = Path("bundles") / bundle
    args = [
        "verify_net_in_out", net_id(bundle),
        "--meta_file", str(root / "configs" / "metadata.json"),
        "--config_file", str(root / "configs" / "inference.yaml"),
        "--bundle_root", str(root),
    ]  # fmt: skip
    ok = monai_bundle(*args)
    assert ok.returncode == 0, _log(ok)
    assert "data shape of network is verified with no error" in ok.stdout + ok.stderr
    # the check is real: a channel count the network does not produce fails (in-process, same MONAI function)
    meta = REPO / root / "configs" / "metadata.json"
    channels = json.loads(meta.read_text())["network_data_format"]["outputs"]["pred"]["num_channels"]
    with pytest.raises(ValueError, match="doesn't match"):
        verify_net_in_out(
            net_id(bundle), meta_file=str(meta), config_file=str(REPO / root / "configs" / "inference.yaml"),
            device="cpu", bundle_root=str(REPO / root),
            **{"_meta_#network_data_format#outputs#pred#num_channels": channels + 1},
        )  # fmt: skip


@pytest.mark.parametrize("bundle", BUNDLES)
def test_ckpt_export_matches_pytorch(bundle, tmp_path):
    root = Path("bundles") / bundle
    meta = json.loads((REPO / root / "configs" / "metadata.json").read_text())
    models = REPO / root / "models"
    shipped = models / "model.pt"
    models_before = sorted(p.name for p in models.glob("*"))
    assert shipped.is_file(), f"{shipped}: every bundle ships weights"
    ckpt = shipped
    ts_path = tmp_path / "model.ts"

    result = monai_bundle(
        "ckpt_export", net_id(bundle),
        "--filepath", str(ts_path),
        "--ckpt_file", str(ckpt.relative_to(REPO)),
        "--meta_file", str(root / "configs" / "metadata.json"),
        "--config_file", str(root / "configs" / "inference.yaml"),
        "--bundle_root", str(root),
    )  # fmt: skip
    assert result.returncode == 0, _log(result)
    assert ts_path.is_file()
    assert sorted(p.name for p in models.glob("*")) == models_before, "ckpt_export wrote into bundles/*/models"

    # MONAI Deploy reads the metadata and the config from model.ts
    extra = {"metadata.json": "", "inference.json": ""}
    ts_model = torch.jit.load(str(ts_path), _extra_files=extra).eval()
    assert json.loads(extra["metadata.json"])["version"] == meta["version"]
    assert net_id(bundle) in json.loads(extra["inference.json"])

    # the PyTorch network from inference.yaml with the same weights (float16 copied into float32)
    network = build_network(bundle, torch.load(ckpt, map_location="cpu", weights_only=True))
    g = torch.Generator().manual_seed(1)
    image = torch.rand(*PARITY_SHAPES[bundle], generator=g)
    calls: list[tuple[torch.Tensor, ...]] = [(image,)]
    if bundle == "cxr_ehr_oxygen_risk":  # forward(image, ehr) as well as forward(image) (ehr omitted)
        n = network.n_ehr_features
        values = torch.randn(image.shape[0], n, generator=g)
        missing = (torch.rand(image.shape[0], n, generator=g) < 0.3).float()
        calls.append((image, torch.cat([values, missing], dim=1)))
    with torch.no_grad():
        for args in calls:
            expected, got = network(*args), ts_model(*args)
            assert isinstance(got, torch.Tensor) and got.dtype == torch.float32
            assert got.shape == expected.shape
            assert got.shape[1] == meta["network_data_format"]["outputs"]["pred"]["num_channels"]
            diff = (got - expected).abs().max().item()
            assert diff <= ATOL, f"{bundle}: model.ts differs from PyTorch by {diff:.2e} with {len(args)} input(s)"

    if bundle == "cxr_ehr_oxygen_risk":  # ehr omitted = every EHR value missing, as the bundle's transform makes it
        from common.transforms.ehr import EHRVectord, FeatureSpec

        spec = FeatureSpec.from_yaml(REPO / root / "configs" / "ehr_features.yaml")
        empty_row = EHRVectord(keys="ehr", spec=spec)({"ehr": {}})["ehr"]
        assert empty_row[len(spec) :].eq(1).all()
        with torch.no_grad():
            omitted = ts_model(image)
            given = ts_model(image, empty_row.expand(image.shape[0], -1))
        assert (omitted - given).abs().max().item() <= ATOL
