"""OxygenRiskNet: consistent cumulative risks for any weights and inputs, modes, missing modalities."""

from __future__ import annotations

import pytest
import torch

from common.oxygen.network import OxygenRiskNet, ordinal_logits, parameter_groups

N_FEATURES = 20


def _inputs(batch: int, seed: int, size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(batch, 1, size, size, generator=g)
    values = torch.randn(batch, N_FEATURES, generator=g) * 3
    missing = (torch.rand(batch, N_FEATURES, generator=g) < 0.4).float()
    return image, torch.cat([values, missing], dim=1)


def _assert_consistent(logits: torch.Tensor, n_levels: int = 4) -> None:
    p = torch.sigmoid(logits.double())
    p24, p72 = p[:, :n_levels], p[:, n_levels:]
    assert (p24[:, 1:] <= p24[:, :-1] + 1e-9).all(), "24 h: a higher level more likely than a lower one"
    assert (p72[:, 1:] <= p72[:, :-1] + 1e-9).all(), "72 h: a higher level more likely than a lower one"
    assert (p72 >= p24 - 1e-9).all(), "72 h risk below the 24 h risk"


@pytest.mark.parametrize("seed", range(20))
def test_ordinal_map_is_consistent_for_any_raw_output(seed):
    g = torch.Generator().manual_seed(seed)
    raw = torch.randn(256, 8, generator=g) * (10 ** (seed % 4 - 1))  # scales 0.1 .. 100
    _assert_consistent(ordinal_logits(raw, 4))


@pytest.mark.parametrize("seed", range(6))
def test_network_consistent_for_random_weights(seed):
    torch.manual_seed(seed)
    net = OxygenRiskNet(N_FEATURES, image_channels=(8, 8, 16, 16))
    with torch.no_grad():  # far from the trained regime: large random weights everywhere
        for p in net.parameters():
            p.normal_(0.0, 1.0 + seed)
    net.eval()
    with torch.no_grad():
        _assert_consistent(net(*_inputs(16, seed)))


def test_modes_ignore_the_other_input():
    torch.manual_seed(0)
    image, ehr = _inputs(4, 1)
    other_image, other_ehr = _inputs(4, 2)
    for mode, same in (("image", (image, other_ehr)), ("ehr", (other_image, ehr))):
        net = OxygenRiskNet(N_FEATURES, mode=mode, image_channels=(8, 8, 16, 16)).eval()
        with torch.no_grad():
            assert torch.allclose(net(image, ehr), net(*same), atol=1e-6), mode
    both = OxygenRiskNet(N_FEATURES, image_channels=(8, 8, 16, 16)).eval()
    with torch.no_grad():
        assert not torch.allclose(both(image, ehr), both(image, other_ehr))
        assert not torch.allclose(both(image, ehr), both(other_image, ehr))


def test_absent_inputs_are_detected():
    net = OxygenRiskNet(N_FEATURES, image_channels=(8, 8, 16, 16)).eval()
    image, ehr = _inputs(3, 0)
    image[1] = 0.0  # no radiograph
    ehr[2, N_FEATURES:] = 1.0  # every EHR value missing
    img_ok, ehr_ok = net.availability(image, ehr)
    assert img_ok.squeeze(1).tolist() == [1.0, 0.0, 1.0]
    assert ehr_ok.squeeze(1).tolist() == [1.0, 1.0, 0.0]
    with torch.no_grad():
        # with no image, the image content cannot matter
        a = net(torch.zeros_like(image), ehr)
        assert torch.isfinite(a).all()


def test_modality_dropout_only_in_training():
    torch.manual_seed(0)
    net = OxygenRiskNet(N_FEATURES, modality_dropout=0.5, image_channels=(8, 8, 16, 16))
    image, ehr = _inputs(200, 3)
    net.train()
    img_ok, ehr_ok = net.availability(image, ehr)
    assert 0.1 < (1 - img_ok).mean() < 0.4 and 0.1 < (1 - ehr_ok).mean() < 0.4
    assert ((img_ok + ehr_ok) >= 1).all()  # never both hidden
    net.eval()
    img_ok, ehr_ok = net.availability(image, ehr)
    assert img_ok.all() and ehr_ok.all()


def test_trains_on_a_toy_problem():
    torch.manual_seed(0)
    net = OxygenRiskNet(N_FEATURES, image_channels=(8, 8, 16, 16))
    image, ehr = _inputs(64, 4, size=32)
    severity = ehr[:, 0].contiguous()
    levels = torch.bucketize(severity, torch.tensor([-1.0, 0.0, 1.0, 2.0]))
    target = torch.stack([(levels >= k).float() for k in range(1, 5)] * 2, dim=1)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    first = None
    for _ in range(60):
        opt.zero_grad()
        loss = loss_fn(net(image, ehr), target)
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert loss.item() < 0.5 * first


def test_parameter_groups_cover_every_weight_once_with_their_learning_rates():
    net = OxygenRiskNet(N_FEATURES, image_channels=(8, 8, 16, 16))
    groups = parameter_groups(net, 1e-3, wide_lr_scale=10.0, image_lr_scale=0.5)
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in net.parameters())  # each parameter in exactly one group
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    assert lr_of[id(net.wide.weight)] == pytest.approx(1e-2)
    assert all(lr_of[id(p)] == pytest.approx(5e-4) for p in net.image_encoder.parameters())
    assert lr_of[id(net.head.weight)] == pytest.approx(1e-3)
    # the optimizer built from the groups steps the wide path 10x further than the head (Adam: ~lr per step)
    opt = torch.optim.Adam(groups)
    image, ehr = _inputs(4, seed=0)
    before_wide, before_head = net.wide.weight.detach().clone(), net.head.weight.detach().clone()
    net(image, ehr).sum().backward()
    opt.step()
    assert (net.wide.weight.detach() - before_wide).abs().max().item() == pytest.approx(1e-2, rel=1e-3)
    assert (net.head.weight.detach() - before_head).abs().max().item() == pytest.approx(1e-3, rel=1e-3)


def test_ehr_omitted_is_the_all_missing_vector_of_the_feature_spec():
    # MONAI's verify_net_in_out / ckpt_export call forward(image): that must mean "no EHR value at all", the
    # vector the bundle's EHR transform makes of an empty row (imputed defaults, every indicator 1)
    from pathlib import Path

    from common.transforms.ehr import EHRVectord, FeatureSpec

    spec = FeatureSpec.from_yaml(Path(__file__).resolve().parents[1] / "bundles/cxr_ehr_oxygen_risk/configs/ehr_features.yaml")
    empty_row = EHRVectord(keys="ehr", spec=spec)({"ehr": {}})["ehr"]
    assert torch.equal(torch.from_numpy(spec.all_missing_vector()), empty_row)
    assert empty_row[len(spec) :].eq(1).all() and not empty_row[: len(spec)].eq(0).all()  # defaults, normalised

    torch.manual_seed(0)
    net = OxygenRiskNet(len(spec), image_channels=(8, 8, 16, 16), missing_ehr=spec.all_missing_vector()).eval()
    image, ehr = _inputs(3, seed=5)
    with torch.no_grad():
        assert torch.equal(net(image), net(image, empty_row.expand(3, -1)))
        assert not torch.allclose(net(image), net(image, ehr))  # a measured EHR still counts
        scripted = torch.jit.script(net)  # ckpt_export scripts it; both call forms survive
        assert torch.allclose(scripted(image), net(image), atol=1e-6)
        assert torch.allclose(scripted(image, ehr), net(image, ehr), atol=1e-6)
    # the vector comes from the spec, not the checkpoint: state dicts stay as they were
    assert "missing_ehr" not in net.state_dict()
    OxygenRiskNet(len(spec), image_channels=(8, 8, 16, 16)).load_state_dict(net.state_dict())


def test_ehr_omitted_without_missing_vector_is_a_clear_error():
    net = OxygenRiskNet(N_FEATURES, image_channels=(8, 8, 16, 16)).eval()
    with pytest.raises(ValueError, match="missing_ehr"):
        net(torch.rand(1, 1, 32, 32))
    with pytest.raises(ValueError, match="40"):
        OxygenRiskNet(N_FEATURES, missing_ehr=[0.0] * 20)
