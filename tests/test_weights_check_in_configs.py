"""Every bundle's inference and evaluation check the weights they load, and say so in one line.

``configs/inference.yaml`` and ``configs/evaluate.yaml`` pass their checkpoint through
``common.bundle_utils.checked_weights``; a missing file, the shipped file with another sha256, or
weights of another network stop ``python -m monai.bundle run`` with one line naming the file and the
command that trains or restores it (exit status 1), not a traceback.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from PIL import Image

from common.errors import WeightsUnavailable

REPO = Path(__file__).resolve().parents[1]
BUNDLES = sorted(p.name for p in (REPO / "bundles").iterdir() if (p / "configs" / "inference.yaml").is_file())


def _parser(bundle: str, files: list[str], **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(REPO / "bundles" / bundle / "configs" / f) for f in files])
    parser["bundle_root"] = str(REPO / "bundles" / bundle)
    for key, value in overrides.items():
        parser[key] = value
    return parser


@pytest.mark.parametrize("bundle", BUNDLES)
def test_inference_and_evaluation_refuse_missing_weights(bundle, tmp_path):
    missing = str(tmp_path / "no_such_model.pt")
    with pytest.raises(WeightsUnavailable, match="no_such_model.pt: weights file not found"):
        _parser(bundle, ["inference.yaml"], ckpt_path=missing).get_parsed_content("checkpointloader")
    evaluate = _parser(bundle, ["train.yaml", "evaluate.yaml"], ckpt_path=missing)
    with pytest.raises(WeightsUnavailable, match="no_such_model.pt: weights file not found"):
        evaluate.get_parsed_content("validate#handlers")


@pytest.mark.parametrize("bundle", BUNDLES)
def test_onnx_inference_needs_no_pytorch_weights(bundle, tmp_path):
    """inference_onnx.yaml sets load_pretrain false: the checkpoint loader is disabled, so a deployment with
    model.onnx alone runs (the loader would refuse the missing model.pt)."""
    absent = str(tmp_path / "absent.pt")
    onnx = _parser(bundle, ["inference.yaml", "inference_onnx.yaml"], ckpt_path=absent)
    onnx["network"] = "$torch.nn.Identity()"  # stands in for the ONNX Runtime session (no model.onnx here)
    assert onnx.get_parsed_content("checkpointloader") is None
    with pytest.raises(WeightsUnavailable):
        _parser(bundle, ["inference.yaml"], ckpt_path=absent).get_parsed_content("checkpointloader")


@pytest.mark.parametrize("bundle", BUNDLES)
def test_inference_refuses_weights_of_another_network(bundle, tmp_path):
    other = tmp_path / "other.pt"
    torch.save({"layer.weight": torch.zeros(2, 2)}, other)
    with pytest.raises(WeightsUnavailable, match="does not fit this network"):
        _parser(bundle, ["inference.yaml"], ckpt_path=str(other)).get_parsed_content("checkpointloader")


def test_command_line_prints_one_line_and_exits_1(tmp_path):
    bundle = REPO / "bundles" / "retina_oct_classification"
    scans = tmp_path / "scans"
    scans.mkdir()
    Image.fromarray((np.random.default_rng(0).random((64, 96)) * 255).astype(np.uint8)).save(scans / "CNV-1-1.jpeg")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    run = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(bundle / "configs" / "inference.yaml"),
         "--bundle_root", str(bundle), "--dataset_dir", str(scans), "--output_dir", str(tmp_path / "out"),
         "--ckpt_path", str(tmp_path / "gone.pt")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 1
    errors = [line for line in run.stderr.splitlines() if line.strip()]
    assert errors[-1].startswith(f"error: {tmp_path / 'gone.pt'}: weights file not found. ")
    assert "--ckpt_path" in errors[-1] and "train.yaml" in errors[-1]  # the shipped file, or how to train
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "out" / "predictions.csv").exists()


def test_inference_refuses_a_damaged_shipped_file(tmp_path):
    """The shipped file replaced (an LFS pointer, a partial copy): its sha256 no longer matches metadata.json."""
    import shutil

    bundle = Path(shutil.copytree(REPO / "bundles" / "retina_oct_classification", tmp_path / "bundle",
                                  ignore=shutil.ignore_patterns("runs", "eval", "logs")))
    (bundle / "models" / "model.pt").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0\n")
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.yaml"))
    parser["bundle_root"] = str(bundle)
    with pytest.raises(WeightsUnavailable, match="sha256 differs") as info:
        parser.get_parsed_content("checkpointloader")
    assert "git checkout --" in str(info.value)


def test_weights_are_checked_as_the_checkpoint_loader_reads_them(tmp_path):
    """CheckpointLoader takes the file, or its "model" entry, strictly: other containers, prefixes or extra
    tensors would pass a lenient check and then fail deep inside ignite."""
    from common.bundle_utils import checked_weights

    parser = _parser("retina_oct_classification", ["inference.yaml"])
    network = parser.get_parsed_content("network_def")
    state = network.state_dict()
    accepted = {"plain": state, "model_entry": {"model": state, "optimizer": {}}}
    refused = {"state_dict_entry": {"state_dict": state}, "ddp_prefix": {f"module.{k}": v for k, v in state.items()},
               "extra_tensor": {**state, "extra.weight": torch.zeros(1)}}
    for name, obj in {**accepted, **refused}.items():
        path = tmp_path / f"{name}.pt"
        torch.save(obj, path)
        if name in accepted:
            assert checked_weights(path, network, tmp_path) == str(path)
        else:
            with pytest.raises(WeightsUnavailable):
                checked_weights(path, network, tmp_path)


@pytest.mark.parametrize("bundle", ["retina_oct_classification", "pediatric_cxr_pneumonia_classification"])
def test_explain_config_checks_its_weights_in_a_fresh_interpreter(bundle, tmp_path):
    """explain.yaml replaces inference.yaml's `imports`; a module it forgets to import shows only in a new
    process (in this one, other tests have imported it already)."""
    code = (
        "import sys\n"
        "from monai.bundle import ConfigParser\n"
        "from common.errors import WeightsUnavailable\n"
        f"root = {str(REPO / 'bundles' / bundle)!r}\n"
        "p = ConfigParser()\n"
        "p.read_config([root + '/configs/inference.yaml', root + '/configs/explain.yaml'])\n"
        "p['bundle_root'] = root\n"
        f"p['ckpt_path'] = {str(tmp_path / 'gone.pt')!r}\n"
        "try:\n"
        "    p.get_parsed_content('checkpointloader')\n"
        "except WeightsUnavailable:\n"
        "    sys.exit(0)\n"
        "sys.exit(3)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
