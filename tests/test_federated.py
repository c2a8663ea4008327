"""A small NVFlare FedAvg simulation of the oxygen-risk bundle: 2 sites, 2 rounds, the head kept local.

Checks that the job really federates: the global model is the iteration-weighted average of the sites'
models (FedAvg), the weights a site keeps local (``exclude_vars``) are never averaged and differ between
sites, and every site trained with the bundle's own train.yaml on its own CSV only.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml

from common.bundle_utils import read_state_dict
from common.oxygen.federated import SHARE_PRESETS, build_recipe, load_global_weights, run_simulation
from common.synthetic.ehr_cohort import generate_oxygen_risk

REPO = Path(__file__).resolve().parents[1]
BUNDLE = str(REPO / "bundles" / "cxr_ehr_oxygen_risk")
OVERRIDES = {"image_size": 48, "batch_size": 8, "val_interval": 2}


@pytest.fixture(scope="module")
def simulation(tmp_path_factory):
    root = tmp_path_factory.mktemp("fl")
    data = generate_oxygen_risk(root / "data", {"n_sites": 2, "n_per_site": 24, "image_size": 48, "progress": False,
                                               "render": {"pool_size": 1}}, seed=2)
    recipe = build_recipe(BUNDLE, data, root / "sites", n_clients=2, num_rounds=2, local_epochs=1,
                          exclude_vars=SHARE_PRESETS["no_head"], overrides=OVERRIDES)
    ckpts = run_simulation(recipe, ["site-1", "site-2"], root / "workspace")
    return {"root": root, "data": data, "global": load_global_weights(ckpts["final"]), "ckpts": ckpts,
            "workspace": root / "workspace"}


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


def test_exported_job_is_site_independent(tmp_path, monkeypatch):
    """The job a real deployment submits names no local path: sites read theirs from O2_* variables."""
    import json

    monkeypatch.chdir(REPO)
    recipe = build_recipe(None, None, None, n_clients=3, num_rounds=5, csv_template="encounters.csv",
                          exclude_vars=SHARE_PRESETS["no_ehr"], overrides={"image_size": 96}, server_bundle_root=BUNDLE)
    recipe.export(str(tmp_path / "job"))
    client = json.loads(next((tmp_path / "job").rglob("config_fed_client.json")).read_text())
    args = client["executors"][0]["executor"]["args"]
    assert args["task_script_path"] == "common/oxygen/fl_client.py"
    assert "--bundle_root" not in args["task_script_args"] and "--dataset_dir" not in args["task_script_args"]
    assert "--override image_size=96" in args["task_script_args"]
    assert next((tmp_path / "job").rglob("custom/common/oxygen/fl_client.py")).is_file()
    server = json.loads(next((tmp_path / "job").rglob("config_fed_server.json")).read_text())
    text = json.dumps(server)
    assert "^ehr_encoder" in text  # the exclusion regex reaches the server's aggregation
    assert "OxygenRiskNet" in text and '"n_ehr_features": 20' in text


def test_client_requires_site_paths(monkeypatch):
    from common.oxygen import fl_client

    for name in ("O2_BUNDLE_ROOT", "O2_DATASET_DIR", "O2_WORK_DIR"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(SystemExit):
        fl_client.parse_args(["--local_epochs", "1"])
    monkeypatch.setenv("O2_BUNDLE_ROOT", "/b")
    monkeypatch.setenv("O2_DATASET_DIR", "/d")
    monkeypatch.setenv("O2_WORK_DIR", "/w")
    args = fl_client.parse_args(["--override", "image_size=96"])
    assert (args.bundle_root, args.dataset_dir, args.work_dir, args.override) == ("/b", "/d", "/w", ["image_size=96"])
    assert fl_client.split_shared({"head.w": 1, "fusion.w": 2}, r"^head\.") == {"fusion.w": 2}


@pytest.fixture(scope="module")
def simulation_all_shared(tmp_path_factory):
    """2 sites x 2 rounds sharing every weight, so the global model alone is what the sites score."""
    root = tmp_path_factory.mktemp("fl_all")
    data = generate_oxygen_risk(root / "data", {"n_sites": 2, "n_per_site": 40, "image_size": 48, "progress": False,
                                               "render": {"pool_size": 1}}, seed=3)
    recipe = build_recipe(BUNDLE, data, root / "sites", n_clients=2, num_rounds=2, local_epochs=1, overrides=OVERRIDES)
    ckpts = run_simulation(recipe, ["site-1", "site-2"], root / "workspace")
    return {"root": root, "data": data, "ckpts": ckpts, "workspace": root / "workspace"}


def test_model_selection_scores_the_global_model(simulation_all_shared):
    """Sites score the *received* global model on local validation; NVFlare keeps the best one.

    The figure a site reports in round 1 must be the validation AUROC of the global model it received
    then (the FedAvg of round 0, which NVFlare saves as best_FL_global_model.pt when it is the best so
    far), not of the weights the site trained afterwards.
    """
    import json

    import numpy as np

    from common.metrics.classification import roc_auc
    from common.oxygen.experiment import PooledTestSet

    sim = simulation_all_shared
    ckpts = sim["ckpts"]
    assert ckpts["best"].name == "best_FL_global_model.pt" and ckpts["final"].name == "FL_global_model.pt"
    best, final = load_global_weights(ckpts["best"]), load_global_weights(ckpts["final"])
    assert not torch.allclose(best["fusion.0.weight"], final["fusion.0.weight"])  # the round-1 input, not the output
    rounds = [json.loads(line) for line in next(sim["workspace"].rglob("round_metrics.jsonl")).open()]
    reported = {s["name"]: s["metrics"][0]["value"] for s in rounds[1]["sites"]}
    assert reported, rounds[1]  # a site whose few validation cases are all one class has no AUROC to send
    for site, value in reported.items():
        val = PooledTestSet(BUNDLE, sim["data"], f"encounters_{site}.csv", "val", OVERRIDES)
        preds = val.predict(best)
        expected = np.mean([roc_auc(val.labels[:, j], preds[:, j]) for j in (0, 4)])
        assert abs(expected - value) < 1e-6, (site, expected, value)
        local = val.predict(sim["root"] / "sites" / site / "models" / "model_final.pt")
        assert not np.allclose(local, preds)  # the site's trained weights would have given other risks


def test_run_experiment_report(simulation_all_shared, tmp_path):
    """``scripts/run_federated.py``'s comparison end to end on a tiny cohort: every model scored on the
    pooled test set, the federated one being NVFlare's best global model, with paired differences."""
    from common.oxygen.experiment import run_experiment

    report = run_experiment(BUNDLE, tmp_path / "run", dataset_dir=simulation_all_shared["data"], n_sites=2, rounds=2,
                            overrides=OVERRIDES, n_boot=20)
    assert set(report["models"]) == {f"{m}{suffix}" for m in ("federated", "central", "single_site-1", "single_site-2")
                                     for suffix in ("", "_best_validation")}
    assert report["selection"] == "final"
    assert report["models"]["federated"]["checkpoint"].endswith("/FL_global_model.pt")
    assert report["models"]["federated_best_validation"]["checkpoint"].endswith("best_FL_global_model.pt")
    assert report["models"]["central_best_validation"]["checkpoint"].endswith("models/model.pt")
    for name, value in report["auroc_key_outcome"].items():
        assert 0.0 <= value <= 1.0, name
    diff = report["checks"]["federated_minus_single_site-1_paired_ci"]
    expected = report["auroc_key_outcome"]["federated"] - report["auroc_key_outcome"]["single_site-1"]
    assert abs(diff["value"] - expected) < 1e-9 and diff["ci_low"] <= diff["value"] <= diff["ci_high"]
    assert (tmp_path / "run" / "federated_report.json").is_file()
