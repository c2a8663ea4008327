"""The NVFlare FedAvg job of the oxygen-risk bundle, and running it in the NVFlare simulator.

The job is NVFlare's own PyTorch ``FedAvgRecipe`` (server: FedAvg controller with a PyTorch model
persistor; clients: ``common/oxygen/fl_client.py`` through the Client API), so the same job runs in the
simulator (``SimEnv``), in proof-of-concept mode (``PocEnv``) or in a provisioned deployment
(``recipe.export(...)`` then ``nvflare job submit``); see ``docs/federated.md``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

CLIENT_SCRIPT = Path(__file__).with_name("fl_client.py")
# presets of weights kept local (never shared, never averaged), as regular expressions on state-dict keys
SHARE_PRESETS = {
    "all": "",
    "no_head": r"^head\.",
    "no_ehr": r"^ehr_encoder\.",
    "no_head_no_ehr": r"^head\.|^ehr_encoder\.",
    "no_batchnorm_stats": r"running_mean|running_var|num_batches_tracked",  # FedBN-style
}


def network_args(bundle_root: str | os.PathLike, overrides: dict | None = None) -> dict[str, Any]:
    """Constructor arguments of the bundle's ``network_def`` (train.yaml + overrides), for the server model."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(Path(bundle_root) / "configs" / "train.yaml"))
    parser["bundle_root"] = str(bundle_root)
    for k, v in (overrides or {}).items():
        parser[k] = v
    args = {}
    for key in parser["network_def"]:
        if key.startswith("_"):
            continue
        args[key] = parser.get_parsed_content(f"network_def#{key}", instantiate=False)
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in args.items()}


def build_recipe(
    bundle_root: str | os.PathLike | None,
    dataset_dir: str | os.PathLike | None,
    work_dir: str | os.PathLike | None,
    n_clients: int,
    num_rounds: int,
    local_epochs: int = 1,
    csv_template: str = "encounters_{site}.csv",
    exclude_vars: str = "",
    overrides: dict | None = None,
    name: str = "cxr_ehr_oxygen_risk_fedavg",
    server_bundle_root: str | os.PathLike | None = None,
):
    """NVFlare ``FedAvgRecipe`` running the bundle's train config at every site.

    Args:
        bundle_root: the bundle folder (used for the server's model too). None: each site's
            ``$O2_BUNDLE_ROOT``; the server's model then comes from ``server_bundle_root``.
        dataset_dir: each site's data folder (in the simulator one folder holds every site's CSV); None:
            each site's ``$O2_DATASET_DIR`` (a real deployment: the path differs per hospital).
        work_dir: where the sites write checkpoints and logs (``work_dir/<site>/``); None: ``$O2_WORK_DIR``.
        n_clients: sites that must take part in each round.
        num_rounds: FedAvg rounds.
        local_epochs: local epochs per round.
        csv_template: each site's encounter CSV inside ``dataset_dir``; ``{site}`` is its NVFlare name.
        exclude_vars: regular expression of weights kept local (see ``SHARE_PRESETS``); "" shares all.
        overrides: train.yaml overrides applied at every site (e.g. ``{"image_size": 96}``).
        name: job name.
        server_bundle_root: the bundle whose ``network_def`` (with ``overrides``) gives the server's model;
            default ``bundle_root``. Needed when ``bundle_root`` is None.

    Returns:
        the recipe (``recipe.run(SimEnv(...))``, ``recipe.export(job_dir)``).
    """
    import json

    from nvflare.app_opt.pt.recipes.fedavg import FedAvgRecipe

    overrides = dict(overrides or {})
    model_bundle = server_bundle_root or bundle_root
    if model_bundle is None:
        raise ValueError("build_recipe needs bundle_root or server_bundle_root (the bundle that defines the server's model)")
    model_args = network_args(model_bundle, overrides)
    paths = {"--bundle_root": bundle_root, "--dataset_dir": dataset_dir, "--work_dir": work_dir}
    words = [
        *[w for flag, p in paths.items() if p is not None for w in (flag, str(Path(p).resolve()))],
        "--csv_name", csv_template,
        "--local_epochs", str(int(local_epochs)),
        *(["--exclude_vars", exclude_vars] if exclude_vars else []),
        *[w for k, v in overrides.items() for w in ("--override", f"{k}={json.dumps(v, separators=(',', ':'))}")],
    ]
    # NVFlare splits the argument string on whitespace without honouring quotes
    bad = [w for w in words if not w or any(c.isspace() for c in w)]
    if bad:
        raise ValueError(f"paths and patterns passed to the NVFlare clients may not contain spaces: {bad}")
    train_args = " ".join(words)
    # relative to the working directory when possible, so the exported job finds the script in its own
    # custom/ folder at every site instead of at this machine's absolute path
    script = CLIENT_SCRIPT.resolve()
    if script.is_relative_to(Path.cwd()):
        script = script.relative_to(Path.cwd())
    return FedAvgRecipe(
        name=name,
        model={"class_path": "common.oxygen.network.OxygenRiskNet", "args": model_args},
        min_clients=int(n_clients),
        num_rounds=int(num_rounds),
        train_script=str(script),
        train_args=train_args,
        exclude_vars=exclude_vars or None,
        key_metric="val_auc",
    )


def run_simulation(
    recipe,
    clients: Sequence[str],
    workspace: str | os.PathLike,
    threads: int | None = None,
) -> dict[str, Path]:
    """Run ``recipe`` in the NVFlare simulator (one client per site, ``threads`` at a time).

    Returns:
        the server's global-model checkpoints (``{"model": state_dict}`` each): ``"final"``, the global model
        after the last round (``FL_global_model.pt``), and ``"best"``, the global model with the best
        site-averaged validation ``val_auc`` (``best_FL_global_model.pt``; the final one when no round was
        scored, e.g. a one-round job).
    """
    from nvflare.recipe import SimEnv

    workspace = Path(workspace).resolve()
    # client processes must import this checkout's `common`
    repo_root = str(Path(__file__).resolve().parents[2])
    os.environ["PYTHONPATH"] = os.pathsep.join([repo_root, *filter(None, [os.environ.get("PYTHONPATH")])])
    env = SimEnv(clients=list(clients), num_threads=threads or len(clients), workspace_root=str(workspace))
    run = recipe.run(env)
    result = run.get_result()
    found = {}
    for key, name in (("final", "FL_global_model.pt"), ("best", "best_FL_global_model.pt")):
        paths = sorted(Path(result if result else workspace).rglob(name)) or sorted(workspace.rglob(name))
        if paths:
            found[key] = paths[-1]
    if "final" not in found:
        raise RuntimeError(f"the simulation wrote no FL_global_model.pt under {workspace}")
    found.setdefault("best", found["final"])
    return found


def load_global_weights(path: str | os.PathLike) -> dict:
    """State dict of NVFlare's PyTorch global-model checkpoint (``weights_only=True``)."""
    import torch

    obj = torch.load(path, map_location="cpu", weights_only=True)
    state = obj.get("model", obj) if isinstance(obj, dict) else obj
    return {k: torch.as_tensor(v) for k, v in state.items()}
