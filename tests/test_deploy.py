"""Triton model repositories and self-contained bundle archives (docs/deployment.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import onnx
import pytest
import torch
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from common.deploy import export_triton, package_bundle, safe_extract
from common.deploy.triton import ONNX_TO_TRITON

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "tests" / "example_bundle"
BUNDLES = sorted(p for p in (REPO / "bundles").glob("*") if (p / "configs" / "metadata.json").exists())


def _check_triton_model(model_dir: Path) -> model_config_pb2.ModelConfig:
    """Parse config.pbtxt with Triton's own schema and compare it with the ONNX graph it serves."""
    config = text_format.Parse((model_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    graph = onnx.load(str(model_dir / "1" / "model.onnx")).graph
    initializers = {i.name for i in graph.initializer}
    batched = config.max_batch_size > 0
    for declared, actual in ((config.input, graph.input), (config.output, graph.output)):
        actual = [v for v in actual if v.name not in initializers]
        assert [t.name for t in declared] == [v.name for v in actual]
        for t, v in zip(declared, actual):
            assert model_config_pb2.DataType.Name(t.data_type) == ONNX_TO_TRITON[v.type.tensor_type.elem_type]
            rank = len(v.type.tensor_type.shape.dim)
            assert len(t.dims) + int(batched) == rank
            fixed = [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim]
            assert list(t.dims) == fixed[int(batched):]
    assert config.platform == "onnxruntime_onnx" and config.backend == "onnxruntime"
    if batched:
        assert config.HasField("dynamic_batching")
    return config


def test_triton_repository_for_example_bundle(tmp_path):
    model_dir = export_triton(EXAMPLE, tmp_path / "repo", allow_random_weights=True)
    config = _check_triton_model(model_dir)
    assert config.name == "example_bundle"
    assert config.max_batch_size == 8  # the example's batch axis is dynamic
    assert list(config.input[0].dims) == [1, -1, -1, -1]


def test_metadata_type_mismatch_is_refused(tmp_path):
    from common.deploy import triton_config

    model_dir = export_triton(EXAMPLE, tmp_path / "repo", allow_random_weights=True)
    metadata = json.loads((EXAMPLE / "configs" / "metadata.json").read_text())
    metadata["network_data_format"]["inputs"]["image"]["dtype"] = "int64"
    with pytest.raises(ValueError, match="image"):
        triton_config("example", model_dir / "1" / "model.onnx", metadata)


@pytest.mark.slow
@pytest.mark.parametrize("bundle", BUNDLES, ids=[b.name for b in BUNDLES])
def test_triton_repository_for_every_bundle(bundle, tmp_path):
    weights = bundle / "models" / "model.pt"
    model_dir = export_triton(bundle, tmp_path / "repo", checkpoint=weights if weights.exists() else None,
                              allow_random_weights=not weights.exists())
    _check_triton_model(model_dir)


def _hidden_repo_launcher(tmp_path: Path) -> Path:
    """A `python -m monai.bundle` stand-in that can import nothing from this repository.

    The repository is removed from sys.path and the editable install's finder from sys.meta_path, so
    `common` can only come from the unpacked archive (the working directory, as with `python -m`).
    """
    launcher = tmp_path / "launcher" / "run_bundle.py"
    launcher.parent.mkdir()
    launcher.write_text(
        "import os, runpy, sys\n"
        f"repo = {str(REPO)!r}\n"
        "sys.meta_path[:] = [f for f in sys.meta_path if '__editable__' not in getattr(f, '__module__', '')\n"
        "                    and '__editable__' not in repr(f)]\n"
        "def inside_repo(p):\n"
        "    p = os.path.abspath(p or '.')\n"
        "    return p.startswith(repo) and 'site-packages' not in p  # the venv may live in the checkout\n"
        "sys.path[:] = [os.getcwd()] + [p for p in sys.path[1:] if not inside_repo(p)]\n"
        "import common\n"
        "assert not os.path.abspath(common.__file__).startswith(repo), common.__file__\n"
        "print('common from', common.__file__)\n"
        "sys.argv = ['monai.bundle'] + sys.argv[1:]\n"
        "runpy.run_module('monai.bundle', run_name='__main__', alter_sys=True)\n"
    )
    return launcher


@pytest.mark.slow
def test_archive_runs_inference_outside_the_repository(tmp_path):
    archive = package_bundle(EXAMPLE, tmp_path / "dist" / "example_bundle.zip")
    names = zipfile.ZipFile(archive).namelist()
    assert "example_bundle/configs/inference.yaml" in names
    assert "example_bundle/common/__init__.py" in names
    assert "example_bundle/common/logging_utils.py" in names  # imported by common/__init__.py
    assert not any("__pycache__" in n for n in names)

    unpacked = safe_extract(archive, tmp_path / "elsewhere")
    root = unpacked / "example_bundle"
    # weights and one input case, as a user would bring them
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "inference.yaml"))
    torch.manual_seed(0)
    (root / "models").mkdir(exist_ok=True)
    torch.save(parser.get_parsed_content("network_def").state_dict(), root / "models" / "model.pt")
    data = tmp_path / "data" / "imagesTs"
    data.mkdir(parents=True)
    nib.save(nib.Nifti1Image(np.random.default_rng(0).normal(size=(36, 40, 32)).astype(np.float32),
                             np.diag([1.5, 1.5, 2.0, 1.0])), data / "case.nii.gz")

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    cmd = [sys.executable, str(_hidden_repo_launcher(tmp_path)), "run", "--config_file", "configs/inference.yaml",
           "--bundle_root", ".", "--dataset_dir", str(data.parent), "--output_dir", str(tmp_path / "out")]
    result = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"common from {root}" in result.stdout
    out = nib.load(tmp_path / "out" / "case_seg.nii.gz")
    assert out.shape == (36, 40, 32)


def test_safe_extract_refuses_paths_outside_target(tmp_path):
    for bad in ("../evil.txt", "/abs/evil.txt", "a/../../evil.txt"):
        archive = tmp_path / "bad.zip"
        with zipfile.ZipFile(archive, "w") as zf:
            zf.writestr("ok.txt", "fine")
            zf.writestr(bad, "payload")
        target = tmp_path / "target"
        with pytest.raises(ValueError, match="outside"):
            safe_extract(archive, target)
        assert not target.exists() or not any(target.iterdir())
        assert not (tmp_path / "evil.txt").exists()


def test_safe_extract_refuses_symlinks(tmp_path):
    archive = tmp_path / "link.zip"
    info = zipfile.ZipInfo("bundle/link")
    info.external_attr = (0o120777) << 16
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(ValueError, match="symbolic link"):
        safe_extract(archive, tmp_path / "target")
