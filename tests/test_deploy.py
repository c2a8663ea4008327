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

from zoo_tools.packaging import package_bundle, safe_extract
from zoo_tools.triton import ONNX_TO_TRITON, export_triton

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
    from zoo_tools.triton import triton_config

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
    """``python <bundle folder> ...`` with nothing of this repository importable.

    The repository is removed from sys.path and the editable install's finder from sys.meta_path; then the
    bundle folder (argv[1]) runs as ``python <folder>`` runs it (``runpy.run_path``: its ``__main__.py``, with
    the folder first on the path), so `common` can only come from the unpacked archive. It prints the
    `common` the run used when the run ends.
    """
    launcher = tmp_path / "launcher" / "python_bundle.py"
    launcher.parent.mkdir()
    launcher.write_text(
        "import os, runpy, sys\n"
        f"repo = {str(REPO)!r}\n"
        "sys.meta_path[:] = [f for f in sys.meta_path if '__editable__' not in getattr(f, '__module__', '')\n"
        "                    and '__editable__' not in repr(f)]\n"
        "def inside_repo(p):\n"
        "    p = os.path.abspath(p or '.')\n"
        "    return p.startswith(repo) and 'site-packages' not in p  # the venv may live in the checkout\n"
        "sys.path[:] = [p for p in sys.path[1:] if not inside_repo(p)]\n"
        "bundle = sys.argv[1]\n"
        "sys.argv = [bundle] + sys.argv[2:]\n"
        "runpy.run_path(bundle, run_name='__main__')\n"
        "print('common from', sys.modules['common'].__file__)\n"
    )
    return launcher


def _example_archive(tmp_path: Path) -> tuple[Path, Path]:
    """The example bundle packaged and unpacked, with weights and one input case as a user brings them;
    returns (bundle folder, data folder)."""
    archive = package_bundle(EXAMPLE, tmp_path / "dist" / "example_bundle.zip")
    names = zipfile.ZipFile(archive).namelist()
    assert "example_bundle/configs/inference.yaml" in names
    assert "example_bundle/common/__init__.py" in names
    assert "example_bundle/common/logging_utils.py" in names  # imported by common/__init__.py
    assert "example_bundle/__main__.py" in names and "example_bundle/requirements.txt" in names
    assert not any("__pycache__" in n or "zoo_tools" in n for n in names)

    root = safe_extract(archive, tmp_path / "unpacked") / "example_bundle"
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
    return root, data.parent


@pytest.mark.slow
def test_archive_runs_inference_from_any_folder_with_its_own_common(tmp_path):
    root, data = _example_archive(tmp_path)
    elsewhere = tmp_path / "some" / "other" / "folder"
    elsewhere.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    cmd = [sys.executable, str(_hidden_repo_launcher(tmp_path)), str(root), "run",
           "--config_file", "configs/inference.yaml", "--dataset_dir", str(data), "--output_dir", str(tmp_path / "out")]
    result = subprocess.run(cmd, cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"common from {root / 'common' / '__init__.py'}" in result.stdout
    out = nib.load(tmp_path / "out" / "case_seg.nii.gz")
    assert out.shape == (36, 40, 32)


@pytest.mark.slow
def test_archive_refuses_another_common(tmp_path):
    """`python -m monai.bundle run` from another folder would import this repository's `common` (installed in
    the test environment): refused in one line, never run silently on other code."""
    root, data = _example_archive(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(root / "configs" / "inference.yaml"),
           "--bundle_root", str(root), "--dataset_dir", str(data), "--output_dir", str(tmp_path / "out")]
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    last = [line for line in result.stderr.splitlines() if line.strip()][-1]
    assert last.startswith(f"error: {root / 'common'}: this bundle carries its own `common`"), last
    assert not (tmp_path / "out" / "case_seg.nii.gz").exists()


def test_archive_requirements_pin_what_the_code_imports():
    from zoo_tools.packaging import requirements_text

    for bundle in BUNDLES:
        lines = [line for line in requirements_text(bundle).splitlines() if not line.startswith("#")]
        pins = dict(line.split("==") for line in lines)
        assert pins["torch"] == "2.13.0" and "monai" in pins and "numpy" in pins
        assert "scipy" in pins and "pytorch-ignite" in pins, (bundle, pins)


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


@pytest.fixture(scope="module")
def archive_inputs(tmp_path_factory) -> dict[str, Path]:
    """One small input per kind of bundle: a chest CT phantom (NIfTI) and a 256 x 256 film with its CSV."""
    from PIL import Image

    from common.synthetic.ct_phantom import generate_lung_ct
    from zoo_tools.shipped_demo import write_oxygen_csv

    root = tmp_path_factory.mktemp("archive_inputs")
    generate_lung_ct(root / "ct_set", {"num_train": 0, "num_val": 0, "num_test": 1, "write_mhd": False,
                                       "phantom": {"matrix": 128, "slice_spacing_mm": [4.0, 4.0], "table": True}}, seed=3)
    scans = root / "ct"
    scans.mkdir()
    case = sorted((root / "ct_set" / "imagesTs").glob("*.nii.gz"))[0]
    case.rename(scans / case.name)
    films = root / "films"
    films.mkdir()
    yy, xx = np.mgrid[0:256, 0:256]
    film = (128 + 100 * np.sin(xx / 17.0) * np.cos(yy / 23.0)).astype(np.uint8)
    Image.fromarray(film).save(films / "film.png")
    write_oxygen_csv(films / "film.png", root / "encounters")
    return {"ct": scans, "film": films, "csv": root / "encounters"}


# bundle -> (input kind, extra overrides, an output the run must write)
ARCHIVE_RUNS = {
    "lung_ct_segmentation": ("ct", [], "*_seg.nii.gz"),
    "lung_nodule_ct_detection": ("ct", ["--test_time_flips", "false"], "*_nodules.json"),
    "retina_oct_classification": ("film", [], "predictions.csv"),
    "pediatric_cxr_pneumonia_classification": ("film", [], "predictions.csv"),
    "cxr_ehr_oxygen_risk": ("csv", [], "predictions.csv"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ARCHIVE_RUNS))
def test_every_bundle_archive_runs_from_tmp_without_the_repository(name, archive_inputs, tmp_path):
    """Each bundle's archive, unpacked outside the repository and started from another folder with nothing of
    the repository importable, runs its inference.yaml on its shipped weights with its own `common`."""
    kind, overrides, output = ARCHIVE_RUNS[name]
    root = safe_extract(package_bundle(REPO / "bundles" / name, tmp_path / f"{name}.zip"), tmp_path / "unpacked") / name
    assert (root / "models" / "model.pt").is_file() and (root / "requirements.txt").is_file()
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "2"
    cmd = [sys.executable, str(_hidden_repo_launcher(tmp_path)), str(root), "run",
           "--config_file", "configs/inference.yaml", "--dataset_dir", str(archive_inputs[kind]),
           "--output_dir", str(tmp_path / "out"), *overrides]
    result = subprocess.run(cmd, cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"common from {root / 'common' / '__init__.py'}" in result.stdout
    assert list((tmp_path / "out").glob(output)), result.stdout[-2000:] + result.stderr[-2000:]
