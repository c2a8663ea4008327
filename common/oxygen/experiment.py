"""Central vs federated vs single-site training of the oxygen-risk bundle on one cohort.

``scripts/run_federated.py`` calls :func:`run_experiment`; the pieces (train with the bundle's own
config, predict with any weights, score on the pooled test set) are reusable on their own.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.io.atomic import atomic_write_json
from common.metrics.classification import bootstrap_ci, roc_auc

logger = logging.getLogger(__name__)


def train_with_bundle(bundle_root: str | os.PathLike, dataset_dir: str | os.PathLike, csv_name: str,
                      out_dir: str | os.PathLike, overrides: dict | None = None) -> dict[str, Path]:
    """Train with the bundle's ``configs/train.yaml`` (as ``monai.bundle run`` would), outputs in ``out_dir``.

    Returns:
        ``{"best": models/model.pt (best validation AUROC), "final": models/model_final.pt}``.
    """
    from monai.bundle import ConfigWorkflow

    out = Path(out_dir)
    params = {"dataset_dir": str(Path(dataset_dir).resolve()), "csv_name": csv_name,
              "ckpt_dir": str(out / "models"), "log_dir": str(out / "logs"), "output_dir": str(out / "eval")}
    params.update(overrides or {})
    root = Path(bundle_root)
    wf = ConfigWorkflow(config_file=str(root / "configs" / "train.yaml"), meta_file=str(root / "configs" / "metadata.json"),
                        logging_file=False, workflow_type="train", bundle_root=str(root), **params)
    wf.initialize()
    wf.run()
    wf.finalize()
    return {"best": out / "models" / "model.pt", "final": out / "models" / "model_final.pt"}


class PooledTestSet:
    """The preprocessed test encounters (the bundle's validation preprocessing), ready for any weights."""

    def __init__(self, bundle_root: str | os.PathLike, dataset_dir: str | os.PathLike, csv_name: str = "encounters.csv",
                 split: str = "test", overrides: dict | None = None) -> None:
        from monai.bundle import ConfigParser
        from monai.data import DataLoader, Dataset

        parser = ConfigParser()
        root = Path(bundle_root)
        parser.read_config(str(root / "configs" / "train.yaml"))
        parser["bundle_root"] = str(root)
        parser["dataset_dir"] = str(Path(dataset_dir).resolve())
        parser["csv_name"] = csv_name
        for k, v in (overrides or {}).items():
            parser[k] = v
        self.parser = parser
        from common.data.oxygen_csv import load_split

        names = parser.get_parsed_content("feature_names")
        self.items = load_split(parser["dataset_dir"], csv_name, split, names)
        transform = parser.get_parsed_content("validate#preprocessing")
        images, ehr, labels = [], [], []
        for batch in DataLoader(Dataset(self.items, transform), batch_size=64, num_workers=0):
            images.append(torch.as_tensor(batch["image"]))
            ehr.append(torch.as_tensor(batch["ehr"]))
            labels.append(torch.as_tensor(batch["label"]))
        self.images, self.ehr = torch.cat(images).float(), torch.cat(ehr).float()
        self.labels = torch.cat(labels).numpy()
        self.sites = np.array([i.get("site", "") for i in self.items])

    def network(self):
        return self.parser.get_parsed_content("network_def", instantiate=True)

    def predict(self, weights: str | os.PathLike | dict, batch_size: int = 128) -> np.ndarray:
        """Risks (N, 8) of the network with ``weights`` (a checkpoint path or a state dict)."""
        from common.bundle_utils import read_state_dict

        net = self.network()
        state = read_state_dict(weights) if not isinstance(weights, dict) else weights
        net.load_state_dict(state, strict=True)
        net.eval()
        out = []
        with torch.no_grad():
            for i in range(0, len(self.images), batch_size):
                out.append(torch.sigmoid(net(self.images[i:i + batch_size], self.ehr[i:i + batch_size])))
        return torch.cat(out).numpy()

    def score(self, preds: np.ndarray, n_boot: int = 500) -> dict[str, Any]:
        """AUROC with bootstrap 95% CI per output on the pooled test set."""
        from common.oxygen.report import output_names

        return {name: bootstrap_ci(roc_auc, self.labels[:, j], preds[:, j], n_boot=n_boot, seed=0)
                for j, name in enumerate(output_names())}


def run_experiment(
    bundle_root: str | os.PathLike,
    out_dir: str | os.PathLike,
    dataset_dir: str | os.PathLike | None = None,
    n_sites: int = 3,
    rounds: int = 10,
    local_epochs: int = 1,
    n_per_site: int | None = None,
    seed: int = 0,
    exclude_vars: str = "",
    overrides: dict | None = None,
    single_site: bool = True,
    central: bool = True,
    n_boot: int = 500,
    threads: int | None = None,
    selection: str = "final",
) -> dict[str, Any]:
    """Federated (NVFlare simulator) vs central vs single-site models, all scored on the pooled test set.

    Every model trains with the bundle's ``train.yaml`` for the same number of epochs (``rounds *
    local_epochs``); central and single-site models keep their best-validation checkpoint, the federated
    model is the final global model.

    Args:
        bundle_root: the bundle folder.
        out_dir: output folder (cohort, workspaces, checkpoints, ``federated_report.json``).
        dataset_dir: an existing cohort (``encounters.csv`` + ``encounters_<site>.csv``); None generates one.
        n_sites: sites (generated cohort) / NVFlare clients.
        rounds: FedAvg rounds.
        local_epochs: local epochs per round.
        n_per_site: encounters per site when generating (None: the generator's default).
        seed: generator seed.
        exclude_vars: regex of weights kept local in the federated run.
        overrides: train.yaml overrides for every run (e.g. ``{"image_size": 96}``).
        single_site: also train one model per site on its own data.
        central: also train one model on the pooled data.
        n_boot: bootstrap resamples of the CIs.
        threads: simulator threads (default: one per site).
        selection: ``"final"`` (default: a fixed training budget, no selection on the small validation splits,
            whose noise can pick an early, weaker model) or ``"best_validation"``.

    Returns:
        the report (also written to ``out_dir/federated_report.json``).
    """
    import yaml

    from common.oxygen.federated import build_recipe, load_global_weights, run_simulation
    from common.oxygen.report import output_names

    if selection not in ("final", "best_validation"):
        raise ValueError(f"selection must be 'final' or 'best_validation', got {selection!r}")
    other = "best_validation" if selection == "final" else "final"

    def names(base: str) -> dict[str, str]:
        """Report names of the final and the best-validation model of one training."""
        return {selection: base, other: f"{base}_{other}"}

    out = Path(out_dir).resolve()
    timings: dict[str, float] = {}
    t0 = time.time()
    if dataset_dir is None:
        from common.synthetic.ehr_cohort import generate_oxygen_risk

        cfg: dict[str, Any] = {"n_sites": n_sites, "progress": False}
        if n_per_site:
            cfg["n_per_site"] = int(n_per_site)
        dataset_dir = generate_oxygen_risk(out / "data", cfg, seed=seed)
        timings["generate_s"] = round(time.time() - t0, 1)
    dataset_dir = Path(dataset_dir).resolve()
    meta_path = dataset_dir / "dataset.yaml"
    meta = yaml.safe_load(meta_path.read_text()) if meta_path.is_file() else {}
    sites = [s["name"] for s in meta.get("sites", [])] or [f"site-{i + 1}" for i in range(n_sites)]
    epochs = int(rounds) * int(local_epochs)
    overrides = dict(overrides or {})
    run_over = {**overrides, "max_epochs": epochs}

    test = PooledTestSet(bundle_root, dataset_dir, "encounters.csv", "test", overrides)
    results: dict[str, Any] = {}
    predictions: dict[str, np.ndarray] = {}

    def record(name: str, weights, extra: dict | None = None) -> None:
        preds = predictions[name] = test.predict(weights)
        results[name] = {"auroc": test.score(preds, n_boot), **(extra or {})}
        logger.info("%s: AUROC any oxygen 24 h %.3f", name, results[name]["auroc"]["any_oxygen_24h"]["value"])

    t = time.time()
    recipe = build_recipe(bundle_root, dataset_dir, out / "federated", len(sites), rounds, local_epochs,
                          exclude_vars=exclude_vars, overrides={k: v for k, v in overrides.items()})
    global_ckpts = run_simulation(recipe, sites, out / "nvflare_workspace", threads=threads)
    timings["federated_s"] = round(time.time() - t, 1)
    fed_info = {"rounds": rounds, "local_epochs": local_epochs, "exclude_vars": exclude_vars}
    for which, name in names("federated").items():
        ckpt = global_ckpts["best" if which == "best_validation" else "final"]
        record(name, load_global_weights(ckpt), {"checkpoint": str(ckpt), "model": which, **fed_info})
    if exclude_vars:  # the global model lacks the site-kept weights: score each site's personalised model too
        for site in sites:
            record(f"federated_personalised_{site}", out / "federated" / site / "models" / "model_local_final.pt")

    if central:
        t = time.time()
        ck = train_with_bundle(bundle_root, dataset_dir, "encounters.csv", out / "central", run_over)
        timings["central_s"] = round(time.time() - t, 1)
        for which, name in names("central").items():
            ckpt = ck["best" if which == "best_validation" else "final"]
            record(name, ckpt, {"checkpoint": str(ckpt), "model": which, "epochs": epochs})
    if single_site:
        for site in sites:
            t = time.time()
            ck = train_with_bundle(bundle_root, dataset_dir, f"encounters_{site}.csv", out / f"single_{site}", run_over)
            timings[f"single_{site}_s"] = round(time.time() - t, 1)
            for which, name in names(f"single_{site}").items():
                ckpt = ck["best" if which == "best_validation" else "final"]
                record(name, ckpt, {"checkpoint": str(ckpt), "model": which, "epochs": epochs})

    bayes = {k: v.get("test") for k, v in meta.get("bayes_optimal_auc", {}).items()}
    key = "any_oxygen_24h"
    summary = {name: r["auroc"][key]["value"] for name, r in results.items()}
    checks: dict[str, Any] = {}
    if "central" in summary:
        checks["federated_minus_central"] = round(summary["federated"] - summary["central"], 4)
        checks["federated_within_0.03_of_central"] = abs(summary["federated"] - summary["central"]) <= 0.03
        if bayes.get(key) is not None:
            checks["bayes_minus_central"] = round(bayes[key] - summary["central"], 4)
            checks["central_within_0.05_of_bayes"] = bayes[key] - summary["central"] <= 0.05
    singles = {k: v for k, v in summary.items() if k.startswith("single_") and not k.endswith(f"_{other}")}
    if singles:
        checks["federated_above_every_single_site"] = all(summary["federated"] > v for v in singles.values())
    # paired bootstrap (same resampled test encounters for both models) of the AUROC differences, so a margin
    # can be told from test-set noise
    j = output_names().index(key)
    for baseline in [m for m in ("central", *singles) if m in predictions]:
        checks[f"federated_minus_{baseline}_paired_ci"] = bootstrap_ci(
            lambda y, a, b: roc_auc(y, a) - roc_auc(y, b),
            test.labels[:, j], predictions["federated"][:, j], predictions[baseline][:, j], n_boot=n_boot, seed=0)
    timings["total_s"] = round(time.time() - t0, 1)
    report = {
        "data": "SYNTHETIC (common.synthetic.ehr_cohort); not patient data",
        "dataset_dir": str(dataset_dir),
        "sites": sites,
        "n_test": int(len(test.items)),
        "test_per_site": {s: int((test.sites == s).sum()) for s in sites},
        "epochs_per_model": epochs,
        "overrides": overrides,
        "key_outcome": key,
        "selection": selection,
        "auroc_key_outcome": summary,
        "bayes_optimal_auc_test": bayes,
        "checks": checks,
        "models": results,
        "timings": timings,
    }
    atomic_write_json(out / "federated_report.json", report)
    return report

