"""Federated training of the oxygen-risk bundle in the NVFlare simulator, compared with central and
single-site training on the pooled test set.

    python scripts/run_federated.py --n_sites 3 --rounds 20 --out runs/federated [--data DIR]
        [--local_epochs 1] [--n_per_site 250] [--share all|no_head|no_ehr|no_head_no_ehr|no_batchnorm_stats]
        [--exclude_vars REGEX] [--image_size 128] [--no_single_site] [--no_central]

Without --data a synthetic cohort of N sites with shifted distributions is generated first
(common.synthetic.ehr_cohort). Each site trains the bundle's own configs/train.yaml on its own
encounters_<site>.csv (NVFlare Client API + monai.fl MonaiAlgo); the server runs FedAvg. Every model
is then scored on the pooled test encounters of all sites; the report is OUT/federated_report.json.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import fire

# run as a file: make this checkout's `common` importable first
REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))


def main(
    out: str,
    n_sites: int = 3,
    rounds: int = 20,
    local_epochs: int = 1,
    data: str | None = None,
    n_per_site: int | None = None,
    seed: int = 0,
    share: str = "all",
    exclude_vars: str | None = None,
    image_size: int | None = None,
    bundle: str = str(REPO_ROOT / "bundles" / "cxr_ehr_oxygen_risk"),
    no_single_site: bool = False,
    no_central: bool = False,
    n_boot: int = 500,
    selection: str = "final",
    export_job: str | None = None,
) -> str:
    """Run the comparison and write ``OUT/federated_report.json``.

    Args:
        out: output folder.
        n_sites: number of simulated sites (NVFlare clients).
        rounds: FedAvg rounds.
        local_epochs: epochs each site trains per round.
        data: an existing cohort folder (encounters.csv + encounters_<site>.csv); default: generate one.
        n_per_site: encounters per generated site.
        seed: cohort seed.
        share: which weights the sites share (preset names in common.oxygen.federated.SHARE_PRESETS).
        exclude_vars: a regular expression of weights kept local (overrides ``share``).
        image_size: CXR size the network sees (train.yaml's image_size).
        bundle: the bundle folder.
        no_single_site: skip the single-site models.
        no_central: skip the central model.
        n_boot: bootstrap resamples for the confidence intervals.
        selection: which model of each training the comparison uses: ``final`` (last epoch / FedAvg round) or
            ``best_validation`` (best validation AUROC; NVFlare's model selection for the federated run). Both
            are scored and reported.
        export_job: only export the NVFlare job folder (for a real deployment: the sites read their
            paths from O2_BUNDLE_ROOT / O2_DATASET_DIR / O2_WORK_DIR) to this folder and stop.

    Returns:
        the report path (or the exported job folder).
    """
    from common.oxygen.experiment import run_experiment
    from common.oxygen.federated import SHARE_PRESETS

    logging.basicConfig(level=logging.INFO, format="%(asctime)s - %(name)s - %(levelname)s - %(message)s")
    if exclude_vars is None:
        if share not in SHARE_PRESETS:
            raise SystemExit(f"--share must be one of {', '.join(SHARE_PRESETS)}")
        exclude_vars = SHARE_PRESETS[share]
    overrides = {"image_size": int(image_size)} if image_size else {}
    if export_job:
        from common.oxygen.federated import build_recipe

        recipe = build_recipe(None, None, None, n_sites, rounds, local_epochs, csv_template="encounters.csv",
                              exclude_vars=exclude_vars, overrides=overrides, server_bundle_root=bundle)
        recipe.export(export_job)
        print(f"NVFlare job exported to {export_job}")
        return export_job
    report = run_experiment(
        bundle, out, dataset_dir=data, n_sites=n_sites, rounds=rounds, local_epochs=local_epochs,
        n_per_site=n_per_site, seed=seed, exclude_vars=exclude_vars, overrides=overrides,
        single_site=not no_single_site, central=not no_central, n_boot=n_boot, selection=selection,
    )
    print(json.dumps({"auroc_any_oxygen_24h": report["auroc_key_outcome"], "checks": report["checks"],
                      "timings": report["timings"]}, indent=2))
    return str(Path(out) / "federated_report.json")


if __name__ == "__main__":
    fire.Fire(main)
