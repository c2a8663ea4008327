"""Running a bundle's configs from tests, as its model card's commands do."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

from distributed_utils import run_torchrun

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONPATH": str(REPO)}


def cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python *args`` from the repository root; fails the test with the output's tail when it fails."""
    proc = run_torchrun([sys.executable, *args], timeout=timeout, env=ENV, cwd=REPO)  # plain run unless gloo aborts
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def run_configs(bundle: Path, configs: list[str], **overrides) -> None:
    """``python -m monai.bundle run`` of ``configs`` (merged in order), in this process."""
    from monai.bundle import run

    files = [str(bundle / "configs" / c) for c in configs]
    run(config_file=files if len(files) > 1 else files[0], bundle_root=str(bundle),
        logging_file=str(bundle / "configs" / "logging.conf"), **overrides)


def run_workflow(bundle: Path, configs: list, workflow_type: str, **overrides):
    """Initialise, run and finalise a ``ConfigWorkflow`` of ``configs`` (names under ``bundle/configs`` or
    paths, merged in order) in this process, with the bundle's logging config; returns the workflow."""
    from monai.bundle import ConfigWorkflow

    files = [str(Path(c) if Path(c).is_absolute() else bundle / "configs" / c) for c in configs]
    workflow = ConfigWorkflow(config_file=files if len(files) > 1 else files[0], workflow_type=workflow_type,
                              bundle_root=str(bundle), logging_file=str(bundle / "configs" / "logging.conf"),
                              **overrides)
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    return workflow


def train_copy_one_epoch(bundle: Path, data: Path, dest: Path, *extra: str) -> Path:
    """``bundle`` copied into ``dest`` and trained for one epoch on ``data`` with the model card's command
    (``extra``: more command-line overrides); returns the copy."""
    copy = Path(shutil.copytree(bundle, dest / bundle.name))
    cli("-m", "monai.bundle", "run", "--config_file", str(copy / "configs" / "train.yaml"),
        "--bundle_root", str(copy), "--dataset_dir", str(data),
        "--logging_file", str(copy / "configs" / "logging.conf"), "--max_epochs", "1", "--val_fraction", "0.2", *extra)
    return copy


def read_csv(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV file as dicts."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))
