"""Training survives a kill: SIGKILL mid-epoch, then --resume true ends at the same epoch count."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "pediatric_cxr_pneumonia_classification"


def _command(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "monai.bundle", "run", "--config_file", str(BUNDLE / "configs" / "train.yaml"),
        "--bundle_root", str(BUNDLE), "--dataset_dir", str(data), "--ckpt_dir", str(out / "models"),
        "--output_dir", str(out / "eval"), "--max_epochs", "6", "--val_fraction", "0.2", "--num_workers", "0",
        "--batch_size", "4", "--image_size", "64", "--width", "8",
        "--logging_file", str(BUNDLE / "configs" / "logging.conf"), *extra,
    ]


def _epoch(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"]) if path.is_file() else 0


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume(tmp_path):
    data = _tiny_data(tmp_path / "data", 10)
    out = tmp_path / "run"
    resume_file = out / "models" / "resume.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(_command(data, out), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    while _epoch(resume_file) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(0.3)  # into the next epoch
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = _epoch(resume_file)
    assert 2 <= killed_at < 6, f"the training was not killed mid-run (epoch {killed_at})"
    before = torch.load(resume_file, map_location="cpu", weights_only=True)
    (out / "models" / ".model.pt.abc.tmp.pt").write_bytes(b"half a file")  # a write that the kill cut short

    done = subprocess.run(_command(data, out, "--resume", "true"), cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-3000:]
    assert f"resumed from {resume_file}: epoch {killed_at} of 6 done" in log
    after = torch.load(resume_file, map_location="cpu", weights_only=True)
    assert after["epoch"] == 6
    # the epochs before the kill are not trained again, at most the killed one is lost
    trained_again = [e for e in range(1, 7) if f"Epoch: {e}/6, Iter: 1/" in log]
    assert trained_again == list(range(killed_at + 1, 7))
    # the best validation score is kept, and the best model is only ever replaced by a better one
    assert after["best"]["metric"] >= before["best"]["metric"]
    if after["best"]["epoch"] == before["best"]["epoch"]:
        assert after["best_saver"] == before["best_saver"]
    assert not list((out / "models").glob(".*.tmp*"))
    assert (out / "models" / "model.pt").is_file()


def _tiny_data(folder: Path, per_class: int) -> Path:
    from common.synthetic.cxr import generate_pneumonia_cxr

    splits = {"train": {"NORMAL": per_class, "BACTERIAL": 2 * per_class, "VIRAL": per_class},
              "test": {"NORMAL": 1, "BACTERIAL": 1, "VIRAL": 1}}
    return Path(generate_pneumonia_cxr(folder, config={"image_size": 96, "write_masks": False, "splits": splits}, seed=0))


def test_resume_without_a_previous_training_says_so(tmp_path):
    data = _tiny_data(tmp_path / "data", 2)
    proc = subprocess.run(_command(data, tmp_path / "run", "--resume", "true"), cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: {tmp_path / 'run' / 'models' / 'resume.pt'}: no training to resume here")
