"""The bundle verifier: the example bundle and every bundle in bundles/ pass; broken bundles fail."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from zoo_tools.bundle_verify import _smallest_shape, eval_size, find_bundles, verify_bundle

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "tests" / "example_bundle"
BUNDLES = find_bundles(REPO / "bundles")


def test_example_bundle_passes():
    assert verify_bundle(EXAMPLE) == []


@pytest.mark.parametrize("bundle", BUNDLES, ids=[b.name for b in BUNDLES])
def test_every_bundle_in_bundles_folder_passes(bundle):
    problems = verify_bundle(bundle)
    assert problems == [], "\n".join(problems)


@pytest.fixture
def bundle(tmp_path) -> Path:
    return Path(shutil.copytree(EXAMPLE, tmp_path / "broken_bundle", ignore=shutil.ignore_patterns("models", "eval")))


def _edit_yaml(path: Path, edit) -> None:
    config = yaml.safe_load(path.read_text())
    edit(config)
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def _edit_json(path: Path, edit) -> None:
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta, indent=2))


def _one(problems: list[str], *fragments: str) -> str:
    hits = [p for p in problems if all(f in p for f in fragments)]
    assert hits, f"no problem mentions {fragments}; got:\n" + "\n".join(problems)
    return hits[0]


def test_version_missing_from_changelog(bundle):
    _edit_json(bundle / "configs" / "metadata.json", lambda m: m.update(version="0.2.0"))
    _one(verify_bundle(bundle, check_network=False), "metadata.json", "0.2.0", "changelog")


def test_missing_file(bundle):
    (bundle / "docs" / "data_license.txt").unlink()
    (bundle / "configs" / "multi_gpu_train.yaml").unlink()
    problems = verify_bundle(bundle, check_network=False)
    _one(problems, "data_license.txt", "missing")
    _one(problems, "multi_gpu_train.yaml", "missing")


def test_metadata_schema_violations(bundle):
    def edit(meta):
        del meta["authors"]
        meta["network_data_format"]["inputs"]["image"]["num_channels"] = "one"

    _edit_json(bundle / "configs" / "metadata.json", edit)
    problems = verify_bundle(bundle, check_network=False)
    _one(problems, "'authors' is a required property")
    _one(problems, "network_data_format/inputs/image", "num_channels")


def test_dangling_reference_and_unknown_target(bundle):
    def edit(config):
        config["loss"]["_target_"] = "DiceCELossTypo"
        config["optimizer"]["lr"] = "@learning_rat"

    _edit_yaml(bundle / "configs" / "train.yaml", edit)
    problems = verify_bundle(bundle, check_network=False)
    _one(problems, "train.yaml", "@learning_rat", "names no id")
    _one(problems, "train.yaml", "loss", "DiceCELossTypo", "cannot be imported")


def test_override_file_referring_to_missing_id(bundle):
    (bundle / "configs" / "evaluate.yaml").write_text(
        (bundle / "configs" / "evaluate.yaml").read_text().replace("@ckpt_dir", "@checkpoint_dir")
    )
    _one(verify_bundle(bundle, check_network=False), "train.yaml + evaluate.yaml", "@checkpoint_dir")


def test_expression_syntax_error_and_absolute_path(bundle):
    def edit(config):
        config["network"] = "$common.bundle_utils.load_initial_weights(@network_def.to(@device), @initial_ckpt"
        config["dataset_dir"] = "/home/someone/data"

    _edit_yaml(bundle / "configs" / "train.yaml", edit)
    problems = verify_bundle(bundle, check_network=False)
    _one(problems, "train.yaml", "network:", "load_initial_weights")
    _one(problems, "train.yaml", "dataset_dir", "absolute path")


def test_missing_workflow_property(bundle):
    def edit(config):
        config["validate"]["runner"] = config["validate"].pop("evaluator")
        config["train"]["handlers"][0]["validator"] = "@validate#runner"

    _edit_yaml(bundle / "configs" / "train.yaml", edit)
    _one(verify_bundle(bundle, check_network=False), "train workflow properties", "evaluator")

    _edit_yaml(bundle / "configs" / "inference.yaml", lambda c: c.pop("dataset_dir"))
    _one(verify_bundle(bundle, check_network=False), "infer workflow properties", "dataset_dir")


def test_network_shape_mismatch(bundle):
    def edit(meta):
        meta["network_data_format"]["outputs"]["pred"]["num_channels"] = 3

    _edit_json(bundle / "configs" / "metadata.json", edit)
    _one(verify_bundle(bundle), "output 'pred'", "expected 3 channels")

    def edit_spatial(meta):
        meta["network_data_format"]["outputs"]["pred"]["num_channels"] = 2
        meta["network_data_format"]["outputs"]["pred"]["spatial_shape"] = ["2*n", "4*n", "4*n"]

    _edit_json(bundle / "configs" / "metadata.json", edit_spatial)
    _one(verify_bundle(bundle), "output 'pred'", "spatial shape")


def test_model_card_sections_and_logging_conf(bundle):
    card = bundle / "docs" / "README.md"
    card.write_text(card.read_text().replace("## Limitations", "## Caveats"))
    conf = bundle / "configs" / "logging.conf"
    # monai.bundle run refuses handler classes outside logging/logging.handlers (they run code via eval)
    conf.write_text(conf.read_text().replace("class=StreamHandler", "class=common.logging_utils.PHISafeStreamHandler"))
    problems = verify_bundle(bundle, check_network=False)
    _one(problems, "README.md", "Limitations")
    _one(problems, "logging.conf", "would refuse it")


def test_config_that_never_imports_common_is_flagged(bundle):
    def edit(config):
        config["imports"] = ["$import os"]
        config["network"] = "$@network_def.to(@device)"

    _edit_yaml(bundle / "configs" / "train.yaml", edit)
    _one(verify_bundle(bundle, check_network=False), "train.yaml", "never imports `common`")


def test_spatial_shape_expressions():
    assert eval_size(32, {}) == 32
    assert eval_size("16*n", {"n": 2}) == 32
    assert eval_size("2**p", {"p": 5}) == 32
    assert eval_size("*", {}) is None
    assert _smallest_shape(["16*n", "16*n", "*"]) == ([16, 16, 64], {"n": 1})
    assert _smallest_shape(["2**p*n"], min_size=8) == ([8], {"n": 2, "p": 2})
    with pytest.raises(ValueError):
        eval_size("__import__('os')", {})


def test_cli_lists_failures_and_exits_non_zero(bundle):
    good = Path(shutil.copytree(bundle, bundle.parent / "good_bundle"))
    (bundle / "LICENSE").unlink()
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "verify_bundles.py"), "--bundles_dir", str(bundle.parent), "--no_network"],
        capture_output=True, text=True, timeout=300, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"ok   {good}" in proc.stdout
    assert f"FAIL {bundle}" in proc.stdout and "LICENSE: required file missing" in proc.stdout
    assert "1 of 2 bundles failed verification" in proc.stderr


def test_expression_name_without_import(bundle):
    def edit(config):
        config["imports"] = ["$import os", "$import common.bundle_utils"]

    _edit_yaml(bundle / "configs" / "train.yaml", edit)
    problem = _one(verify_bundle(bundle, check_network=False), "train.yaml", "network", "'common'")
    assert "add `$import common`" in problem


# ---- the config contract (docs/architecture.md): each rule broken once in a copy of the example bundle
def test_contract_alias_id(bundle):
    def edit(config):
        config["seed"] = config.pop("split_seed", 0)

    _edit_yaml(bundle / "configs" / "train.yaml", edit)
    _one(verify_bundle(bundle, check_network=False), "train.yaml", "'seed'", "'split_seed'")


def test_contract_required_id(bundle):
    def edit(config):
        config["checkpoint_file"] = config.pop("ckpt_path")
        config["checkpointloader"]["load_path"] = "@checkpoint_file"

    _edit_yaml(bundle / "configs" / "inference.yaml", edit)
    _one(verify_bundle(bundle, check_network=False), "inference.yaml", "lacks the contract's ids", "ckpt_path")


def test_contract_weights_load_in_initialize(bundle):
    def edit(config):
        loader = config.pop("checkpointloader")
        loader.pop("_disabled_")
        config["handlers"].insert(0, loader)
        config["initialize"] = config["initialize"][:1]

    _edit_yaml(bundle / "configs" / "inference.yaml", edit)
    problems = verify_bundle(bundle, check_network=False)
    _one(problems, "inference.yaml", "CheckpointLoader in `handlers`")
    _one(problems, "inference.yaml", "checkpointloader")


def test_contract_loader_behind_load_pretrain(bundle):
    _edit_yaml(bundle / "configs" / "inference.yaml", lambda c: c["checkpointloader"].pop("_disabled_"))
    _one(verify_bundle(bundle, check_network=False), "inference.yaml", "_disabled_", "load_pretrain")


def test_contract_onnx_config_only_swaps_the_network(bundle):
    def edit(config):
        config["handlers"] = [{"_target_": "StatsHandler", "iteration_log": False}]
        config["load_pretrain"] = True

    _edit_yaml(bundle / "configs" / "inference_onnx.yaml", edit)
    problems = verify_bundle(bundle, check_network=False)
    _one(problems, "inference_onnx.yaml", "overrides ['handlers']")
    _one(problems, "inference_onnx.yaml", "load_pretrain must be false")


def test_contract_onnx_network_reads_onnx_path(bundle):
    _edit_yaml(bundle / "configs" / "inference_onnx.yaml",
               lambda c: c["network"].update(model_path="$@bundle_root + '/models/model.onnx'"))
    _one(verify_bundle(bundle, check_network=False), "inference_onnx.yaml", "@onnx_path")


def test_contract_multi_gpu_device_from_local_rank(bundle):
    _edit_yaml(bundle / "configs" / "multi_gpu_train.yaml",
               lambda c: c.update(device="$torch.device(f'cuda:{dist.get_rank()}')"))
    _one(verify_bundle(bundle, check_network=False), "multi_gpu_train.yaml", "LOCAL_RANK")


def test_contract_export_config_ids(bundle):
    def edit(config):
        config["checkpoint"] = config.pop("ckpt_path")

    _edit_yaml(bundle / "configs" / "export_onnx.yaml", edit)
    problems = verify_bundle(bundle, check_network=False)
    _one(problems, "export_onnx.yaml", "'checkpoint'", "'ckpt_path'")
    _one(problems, "export_onnx.yaml", "lacks the contract's ids", "ckpt_path")


def test_submodule_used_but_never_imported(bundle):
    # `$import common` does not load common.<submodule>; an expression reaching into one fails at run time
    _edit_yaml(bundle / "configs" / "train.yaml", lambda c: c.update(loss="$common.resources.make_loss()"))
    problem = _one(verify_bundle(bundle, check_network=False), "train.yaml", "loss", "has no attribute 'resources'")
    assert "$import common.resources" in problem


def _ship_weights(bundle: Path, payload: bytes = b"weights") -> str:
    import hashlib

    (bundle / "models").mkdir(exist_ok=True)
    (bundle / "models" / "model.pt").write_bytes(payload)
    digest = hashlib.sha256(payload).hexdigest()
    meta_file = bundle / "configs" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    meta["weights"] = {"file": "models/model.pt", "sha256": digest, "size_bytes": len(payload)}
    meta_file.write_text(json.dumps(meta, indent=1))
    (bundle / "large_files.yml").write_text(
        f'large_files:\n  - path: "models/model.pt"\n    hash_type: "sha256"\n    hash_val: "{digest}"\n'
    )
    return digest


def test_shipped_weights_must_match_their_recorded_sha256(bundle):
    _ship_weights(bundle)
    assert verify_bundle(bundle, check_network=False) == []
    # a training that wrote over the shipped file: metadata and large_files.yml no longer match
    (bundle / "models" / "model.pt").write_bytes(b"other weights")
    problems = verify_bundle(bundle, check_network=False)
    assert any("model.pt: sha256" in p and "metadata.json" in p for p in problems), problems
    assert any("large_files.yml" in p and "hash_val differs" in p for p in problems), problems
    (bundle / "models" / "model.pt").unlink()
    assert any("shipped weights missing" in p for p in verify_bundle(bundle, check_network=False))


def test_shipped_weights_need_large_files_yml(bundle):
    _ship_weights(bundle)
    (bundle / "large_files.yml").unlink()
    _one(verify_bundle(bundle, check_network=False), "large_files.yml", "missing")


def test_pred_for_monai_tools_is_checked_on_network_def_packed(tmp_path):
    # the detector's network_def returns 9 maps (ONNX outputs); `pred`, what MONAI's verify_net_in_out reads,
    # comes from network_def_packed, and a wrong description of it or a missing id is reported
    from zoo_tools.bundle_verify import check_network_io

    source = REPO / "bundles" / "lung_nodule_ct_detection"
    bundle = Path(shutil.copytree(source, tmp_path / "det", ignore=shutil.ignore_patterns("models", "eval", "runs")))
    assert check_network_io(bundle) == []
    _edit_json(bundle / "configs" / "metadata.json", lambda m: m["network_data_format"]["outputs"]["pred"].update(num_channels=11))
    _one(check_network_io(bundle), "'pred'", "expected 11 channels")
    _edit_json(bundle / "configs" / "metadata.json", lambda m: m["network_data_format"]["outputs"]["pred"].update(num_channels=12))
    _edit_yaml(bundle / "configs" / "inference.yaml", lambda c: c.pop("network_def_packed"))
    _one(check_network_io(bundle), "'pred'", "not returned", "network_def_packed")
