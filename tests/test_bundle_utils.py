"""common.bundle_utils: fine-tuning from an initial checkpoint, freezing, the JSON metrics report."""

from __future__ import annotations

import json
import logging
import pickle

import pytest
import torch
from monai.networks.nets import UNet

from common.bundle_utils import freeze, load_initial_weights, read_state_dict
from common.errors import InputDataError


def _unet(out_channels: int = 2, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return UNet(spatial_dims=2, in_channels=1, out_channels=out_channels, channels=(4, 8), strides=(2,), num_res_units=1)


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("container", ["plain", "model", "state_dict", "ddp"])
def test_loads_every_checkpoint_container(tmp_path, container):
    source = _unet(seed=1)
    state = source.state_dict()
    obj = {
        "plain": state,
        "model": {"model": state, "optimizer": {"lr": torch.tensor(0.1)}},
        "state_dict": {"state_dict": state, "epoch": 3},
        "ddp": {f"module.{k}": v for k, v in state.items()},
    }[container]
    path = tmp_path / "ckpt.pt"
    torch.save(obj, path)
    target = _unet(seed=2)
    assert not _same(source, target)
    assert load_initial_weights(target, path) is target
    assert _same(source, target)


def test_head_of_another_class_count_is_reinitialised_and_logged(tmp_path, caplog):
    source = _unet(out_channels=2, seed=1)
    path = tmp_path / "two_classes.pt"
    torch.save(source.state_dict(), path)
    target = _unet(out_channels=3, seed=2)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with caplog.at_level(logging.INFO, logger="common.bundle_utils"):
        load_initial_weights(target, path)
    src, tgt = source.state_dict(), target.state_dict()
    mismatched = [k for k in tgt if tgt[k].shape != src[k].shape]
    assert mismatched, "the 3-class head must differ in shape"
    for key in tgt:
        if key in mismatched:
            assert torch.equal(tgt[key], before[key]), f"{key} must keep its fresh initialisation"
        else:
            assert torch.equal(tgt[key], src[key]), f"{key} must be loaded"
    logged = caplog.text
    assert "re-initialised" in logged
    for key in mismatched:
        assert key in logged


@pytest.mark.parametrize("path", ["", None])
def test_empty_path_does_nothing(path):
    net = _unet()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    load_initial_weights(net, path)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_bad_checkpoints_raise_input_data_error(tmp_path):
    with pytest.raises(InputDataError, match="not found"):
        load_initial_weights(_unet(), tmp_path / "missing.pt")

    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    with pytest.raises(InputDataError, match="notes.pt"):
        load_initial_weights(_unet(), text)

    # weights_only=True refuses arbitrary pickled objects
    evil = tmp_path / "object.pt"
    with open(evil, "wb") as f:
        pickle.dump({"model": logging.getLogger("x")}, f)
    with pytest.raises(InputDataError):
        read_state_dict(evil)

    other = tmp_path / "other_net.pt"
    torch.save(torch.nn.Linear(3, 4).state_dict(), other)
    with pytest.raises(InputDataError, match="another network"):
        load_initial_weights(_unet(), other)


def test_freeze_keeps_only_the_named_prefixes_trainable():
    net = _unet()
    names = [n for n, _ in net.named_parameters()]
    head_prefix = names[-1].rsplit(".", 1)[0]
    freeze(net, trainable=(head_prefix,))
    trainable = [n for n, p in net.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith(head_prefix) for n in trainable)
    assert len(trainable) < len(names)
    freeze(net)
    assert not any(p.requires_grad for p in net.parameters())
    with pytest.raises(ValueError, match="no parameter names start with"):
        freeze(net, trainable=("no_such_layer",))


def test_checkpoint_dir_never_overwrites_the_starting_or_shipped_weights(tmp_path):
    from common.bundle_utils import check_checkpoint_dir

    shipped = tmp_path / "bundle" / "models" / "model.pt"
    shipped.parent.mkdir(parents=True)
    shipped.write_bytes(b"weights")
    # fine-tuning from the shipped weights into the folder that holds them
    with pytest.raises(ValueError, match="model.pt"):
        check_checkpoint_dir(shipped.parent, initial_ckpt=shipped)
    # the same folder named another way, and the shipped file protected with no initial checkpoint
    with pytest.raises(ValueError, match="shipped"):
        check_checkpoint_dir(tmp_path / "bundle" / "models" / ".." / "models", "", protected=[shipped])
    # another folder is fine, and so is the shipped folder when the training writes other names
    assert check_checkpoint_dir(tmp_path / "runs", initial_ckpt=shipped, protected=[shipped]) == str(tmp_path / "runs")
    check_checkpoint_dir(shipped.parent, "", filenames=("model_run2.pt",), protected=[shipped])
    assert shipped.read_bytes() == b"weights"


def _bundle_with_shipped_weights(tmp_path, network: torch.nn.Module):
    """A bundle folder whose metadata.json records the sha256 of its models/model.pt."""
    import hashlib

    bundle = tmp_path / "bundle"
    (bundle / "models").mkdir(parents=True)
    (bundle / "configs").mkdir()
    weights = bundle / "models" / "model.pt"
    torch.save(network.state_dict(), weights)
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    (bundle / "configs" / "metadata.json").write_text(json.dumps({"weights": {"sha256": digest}}))
    return bundle, weights


def test_checked_weights_accepts_fitting_weights(tmp_path):
    from common.bundle_utils import checked_weights

    network = _unet()
    bundle, weights = _bundle_with_shipped_weights(tmp_path, network)
    assert checked_weights(weights, network, bundle) == str(weights)
    other = tmp_path / "finetuned.pt"  # not the shipped file: no sha256 to compare, only the fit
    torch.save({"model": _unet(seed=3).state_dict()}, other)
    assert checked_weights(other, network, bundle) == str(other)


def test_checked_weights_says_in_one_line_what_is_wrong_and_what_to_run(tmp_path):
    from common.bundle_utils import checked_weights
    from common.errors import WeightsUnavailable

    network = _unet()
    bundle, weights = _bundle_with_shipped_weights(tmp_path, network)
    cases = {}
    with pytest.raises(WeightsUnavailable) as info:
        checked_weights(tmp_path / "nowhere.pt", network, bundle)
    cases["missing"] = info.value
    other = tmp_path / "other.pt"
    torch.save(_unet(out_channels=5).state_dict(), other)  # another number of classes
    with pytest.raises(WeightsUnavailable) as info:
        checked_weights(other, network, bundle)
    cases["misfit"] = info.value
    weights.write_bytes(b"version https://git-lfs.github.com/spec/v1\n")  # an LFS pointer instead of the file
    with pytest.raises(WeightsUnavailable) as info:
        checked_weights(weights, network, bundle)
    cases["sha256"] = info.value

    assert "not found" in str(cases["missing"]) and "train.yaml" in str(cases["missing"])
    assert "does not fit this network" in str(cases["misfit"]) and "of another shape" in str(cases["misfit"])
    assert "sha256 differs" in str(cases["sha256"]) and f"git checkout -- {weights}" in str(cases["sha256"])
    for error in cases.values():
        # SystemExit, so MONAI's `except Exception` wrappers let it through as the run's one-line message
        assert isinstance(error, SystemExit) and "\n" not in str(error) and str(error).startswith("error: ")
