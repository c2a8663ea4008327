"""A small NVFlare FedAvg simulation of the oxygen-risk bundle: 2 sites, 2 rounds, the head kept local.

Checks that the job really federates: the global model is the iteration-weighted average of the sites'
models (FedAvg), the weights a site keeps local (``exclude_vars``) are never averaged and differ between
sites, and every site trained with the bundle's own train.yaml on its own CSV only.
"""

from __future__ import annotations

import math

import pytest
import torch
import yaml

from common.bundle_utils import read_state_dict
from common.oxygen.federated import SHARE_PRESETS, build_recipe, load_global_weights, run_simulation
from common.synthetic.ehr_cohort import generate_oxygen_risk

BUNDLE = "bundles/cxr_ehr_oxygen_risk"


@pytest.fixture(scope="module")
def simulation(tmp_path_factory):
    root = tmp_path_factory.mktemp("fl")
    data = generate_oxygen_risk(root / "data", {"n_sites": 2, "n_per_site": 24, "image_size": 48, "progress": False,
                                               "render": {"pool_size": 1}}, seed=2)
    overrides = {"image_size": 48, "batch_size": 8, "val_interval": 2}
    recipe = build_recipe(BUNDLE, data, root / "sites", n_clients=2, num_rounds=2, local_epochs=1,
                          exclude_vars=SHARE_PRESETS["no_head"], overrides=overrides)
    global_ckpt = run_simulation(recipe, ["site-1", "site-2"], root / "workspace")
    return {"root": root, "data": data, "global": load_global_weights(global_ckpt)}


def test_global_model_is_fedavg_of_sites(simulation):
    root, meta = simulation["root"], yaml.safe_load((simulation["data"] / "dataset.yaml").read_text())
    sites = {s["name"]: read_state_dict(root / "sites" / s["name"] / "models" / "model_final.pt") for s in meta["sites"]}
    # FedAvg weights each site by its local iterations this round: ceil(n_train / batch_size)
    steps = {s["name"]: math.ceil(s["n_train"] / 8) for s in meta["sites"]}
    total = sum(steps.values())
    g = simulation["global"]
    checked = 0
    for key in ("image_encoder.conv1.weight", "ehr_encoder.cross.0.linear.weight", "fusion.0.weight"):
        expected = sum(steps[n] * sites[n][key].double() for n in sites) / total
        assert torch.allclose(g[key].double(), expected, atol=1e-5), key
        assert not torch.allclose(sites["site-1"][key], sites["site-2"][key])  # sites trained differently
        checked += 1
    assert checked == 3


def test_excluded_weights_stay_local(simulation):
    root, g = simulation["root"], simulation["global"]
    local = {n: read_state_dict(root / "sites" / n / "models" / "model_local_final.pt") for n in ("site-1", "site-2")}
    for n, state in local.items():
        # the head was trained at the site and never replaced by the (never averaged) global head
        assert not torch.allclose(state["head.weight"], g["head.weight"]), n
    assert not torch.allclose(local["site-1"]["head.weight"], local["site-2"]["head.weight"])
    # shared weights of the local model are the site's last local update, not the global average
    assert not torch.allclose(local["site-1"]["fusion.0.weight"], g["fusion.0.weight"])
