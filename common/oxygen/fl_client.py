"""NVFlare client of the oxygen-risk bundle: runs the bundle's own ``configs/train.yaml`` at one site.

NVFlare starts this script at every site (NVFlare Client API; in the simulator in-process, in a real
deployment under each hospital's FL client). Every round it receives the global weights, trains the
bundle's ``SupervisedTrainer`` for ``--local_epochs`` epochs on the site's own encounters (built by
``monai.fl.client.MonaiAlgo`` from the bundle config, so the federated and the central model are trained
by the same code), and sends the weights back, weighted by the number of local iterations (FedAvg).

Before training, the site scores the *received global model* on its own validation split (the bundle's
evaluator, ``val_auc``) and sends that figure with its update: NVFlare's ``IntimeModelSelector`` averages
it over sites and keeps the best global model (``best_FL_global_model.pt``), the federated counterpart
of the best-validation checkpoint of central training. (Scoring the locally trained weights instead would
credit the global model with metrics of models the server never holds.)

Weights whose names match ``--exclude_vars`` (a regular expression, e.g. ``^head\\.|^ehr_encoder\\.``)
never leave the site: they are not sent, and the site keeps its own values when the global model comes
back (personalised head / EHR branch). The server is given the same pattern so it never aggregates them.

Images and EHR rows never leave the site; only weights do.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger("oxygen_fl_client")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # a real deployment sets these per hospital in the FL client's environment (docs/federated.md)
    p.add_argument("--bundle_root", default=os.environ.get("O2_BUNDLE_ROOT"),
                   help="the cxr_ehr_oxygen_risk bundle folder (default: $O2_BUNDLE_ROOT)")
    p.add_argument("--dataset_dir", default=os.environ.get("O2_DATASET_DIR"),
                   help="the site's data folder (default: $O2_DATASET_DIR)")
    p.add_argument("--csv_name", default="encounters_{site}.csv",
                   help="the site's encounter CSV inside dataset_dir; {site} is replaced by the site name")
    p.add_argument("--work_dir", default=os.environ.get("O2_WORK_DIR"),
                   help="where the site's checkpoints and logs go (default: $O2_WORK_DIR)")
    p.add_argument("--local_epochs", type=int, default=1)
    p.add_argument("--exclude_vars", default="", help="regex of weight names kept local (never sent)")
    p.add_argument("--override", action="append", default=[], metavar="KEY=JSON",
                   help="a train.yaml override, e.g. image_size=96 (repeatable; the value is JSON)")
    args = p.parse_args(argv)
    missing = [n for n in ("bundle_root", "dataset_dir", "work_dir") if not getattr(args, n)]
    if missing:
        p.error(f"set --{', --'.join(missing)} or the O2_* environment variables of this site")
    return args


def split_shared(weights: dict, pattern: str) -> dict:
    """The entries of ``weights`` whose names do not match ``pattern`` (all of them when it is empty)."""
    if not pattern:
        return dict(weights)
    rx = re.compile(pattern)
    return {k: v for k, v in weights.items() if not rx.search(k)}


def main(argv: list[str] | None = None) -> None:
    import nvflare.client as flare
    from monai.fl.client import MonaiAlgo
    from monai.fl.utils.constants import ExtraItems, FlStatistics, WeightType
    from monai.fl.utils.exchange_object import ExchangeObject
    from nvflare.app_common.abstract.fl_model import FLModel

    from common.io.atomic import atomic_torch_save

    args = parse_args(argv)
    flare.init()
    site = flare.get_site_name()
    site_dir = Path(args.work_dir) / site
    overrides = {}
    for item in args.override:
        key, _, value = item.partition("=")
        overrides[key] = json.loads(value)
    overrides.update({
        "dataset_dir": os.path.abspath(args.dataset_dir),
        "csv_name": args.csv_name.format(site=site),
        "ckpt_dir": str(site_dir / "models"),
        "output_dir": str(site_dir / "eval"),
        "log_dir": str(site_dir / "logs"),
    })
    # the global model is scored by a second copy of the train config's evaluator, whose checkpoints go to
    # their own folder so the site's best local checkpoint (models/model.pt) stays what it says
    eval_overrides = {**overrides, "ckpt_dir": str(site_dir / "global_eval" / "models"),
                      "log_dir": str(site_dir / "global_eval" / "logs")}
    algo = MonaiAlgo(
        bundle_root=os.path.abspath(args.bundle_root),
        local_epochs=args.local_epochs,
        send_weight_diff=False,
        config_train_filename="configs/train.yaml",
        config_evaluate_filename="configs/train.yaml",
        eval_workflow_name="train",
        train_kwargs=overrides,
        eval_kwargs=eval_overrides,
    )
    algo.initialize(extra={ExtraItems.CLIENT_NAME: site, ExtraItems.APP_ROOT: ""})
    logger.info("%s: %d training encounters", site, len(algo.trainer.data_loader.dataset))

    rounds = 0
    while flare.is_running():
        global_model = flare.receive()
        if global_model is None:
            break
        received = split_shared(global_model.params, args.exclude_vars)
        weights = {k: torch.as_tensor(np.asarray(v)) for k, v in received.items()}
        # the received global model (with this site's own copy of any excluded weights) on local validation
        if args.exclude_vars:
            kept = {k: v for k, v in algo.trainer.network.state_dict().items() if k not in weights}
            scored = {**kept, **weights}
        else:
            scored = weights
        report = algo.evaluate(ExchangeObject(weights=scored, weight_type=WeightType.WEIGHTS))
        metrics = {k: float(v) for k, v in (report.metrics or {}).items()
                   if isinstance(v, (int, float)) and np.isfinite(v)}
        logger.info("%s: global model of round %d, local validation %s", site, global_model.current_round or 0,
                    {k: round(v, 4) for k, v in metrics.items()})
        algo.train(ExchangeObject(weights=weights, weight_type=WeightType.WEIGHTS))
        local = algo.get_weights()
        shared = split_shared(local.weights, args.exclude_vars)
        n_iter = int(local.statistics.get(FlStatistics.NUM_EXECUTED_ITERATIONS, 1))
        # torch tensors: the Client API converts them to the exchange format (NumPy) itself
        flare.send(FLModel(params={k: v.detach().cpu() for k, v in shared.items()}, metrics=metrics,
                           meta={"NUM_STEPS_CURRENT_ROUND": n_iter}))
        rounds += 1
    # the site's last local model (with its own copy of any excluded weights), for personalised use
    atomic_torch_save({"model": {k: v.cpu() for k, v in algo.trainer.network.state_dict().items()}},
                      site_dir / "models" / "model_local_final.pt")
    logger.info("%s: finished after %d round(s)", site, rounds)
    algo.finalize()


if __name__ == "__main__":
    main()
