"""Running a bundle's configs from tests, as its model card's commands do."""

from __future__ import annotations

import csv
import os
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


def read_csv(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV file as dicts."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))
