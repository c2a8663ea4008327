"""An empty or missing dataset folder ends a bundle run with one line naming it, and exit status 1."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(bundle: str, dataset_dir: Path, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    root = REPO / "bundles" / bundle
    return subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(root / "configs" / "inference.yaml"),
         "--bundle_root", str(root), "--dataset_dir", str(dataset_dir), "--output_dir", str(tmp_path / "out")],
        cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, **env},
    )


@pytest.mark.parametrize(
    ("bundle", "folder", "problem"),
    [
        ("lung_ct_segmentation", "empty", "no CT volumes found"),
        ("lung_ct_segmentation", "missing", "does not exist"),
        ("pediatric_cxr_pneumonia_classification", "empty", "no images"),
    ],
)
def test_dataset_folder_errors_are_one_line(bundle, folder, problem, tmp_path):
    dataset = tmp_path / folder
    if folder == "empty":
        dataset.mkdir()
    proc = _run(bundle, dataset, tmp_path)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {dataset}: ") and problem in last
    assert "Traceback" not in proc.stderr


def test_the_traceback_is_there_on_request(tmp_path):
    proc = _run("pediatric_cxr_pneumonia_classification", tmp_path / "missing", tmp_path, ZOO_TRACEBACK="1")
    assert proc.returncode == 1 and "Traceback" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: {tmp_path / 'missing'}: ")
