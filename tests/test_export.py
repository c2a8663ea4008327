"""common.export: ONNX export with the ONNX Runtime parity check, and OnnxRuntimeNetwork in MONAI inferers."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from monai.inferers import SlidingWindowInferer
from monai.networks.nets import UNet

from common.export import (
    ExportConfigError,
    OnnxParityError,
    OnnxRuntimeNetwork,
    build_bundle_network,
    export_bundle,
    export_network,
)

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "tests" / "example_bundle"


@pytest.fixture
def bundle(tmp_path) -> Path:
    """A writable copy of the example bundle."""
    return Path(shutil.copytree(EXAMPLE, tmp_path / "example_bundle"))


def _unet3d(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=(4, 8), strides=(2,), num_res_units=1).eval()


class TwoInTwoOut(torch.nn.Module):
    """An image and a clinical vector in; a dict with a segmentation map and class logits out."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 3, 3, padding=1)
        self.fc = torch.nn.Linear(3 + 5, 4)

    def forward(self, image: torch.Tensor, clinical: torch.Tensor) -> dict[str, torch.Tensor]:
        seg = self.conv(image)
        pooled = seg.mean(dim=(2, 3))
        return {"logits": self.fc(torch.cat([pooled, clinical], dim=1)), "seg": seg}


class Noisy(torch.nn.Module):
    """Output depends on fresh random numbers at every call: ONNX Runtime cannot reproduce it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + torch.rand_like(x)


def test_example_bundle_round_trip_with_checkpoint(bundle):
    torch.manual_seed(3)
    network = build_bundle_network(bundle)
    ckpt = bundle / "models" / "model.pt"
    ckpt.parent.mkdir(exist_ok=True)
    torch.save(network.state_dict(), ckpt)

    report = export_bundle(bundle, report_path=bundle / "eval" / "export_report.json")
    onnx_path = bundle / "models" / "model.onnx"
    assert report["passed"] and Path(report["onnx_path"]) == onnx_path and onnx_path.is_file()
    assert report["checkpoint"] == str(ckpt)
    assert report["max_abs_err"] <= 1e-4 and report["opset"] == 18
    assert len(report["checks"]) == 2  # export shape + the parity_shapes entry (other batch and spatial sizes)
    assert json.loads((bundle / "eval" / "export_report.json").read_text())["passed"] is True
    json.dumps(report)  # JSON-able

    # the ONNX model holds the checkpoint's weights, not a fresh initialisation
    x = torch.rand(1, 1, 32, 32, 32)
    onnx_net = OnnxRuntimeNetwork(onnx_path)
    with torch.no_grad():
        expected = network.eval()(x)
        other = build_bundle_network(bundle).eval()(x)
    got = onnx_net(x)
    assert torch.allclose(got, expected, rtol=1e-3, atol=1e-4)
    assert not torch.allclose(other, expected, rtol=1e-3, atol=1e-4)


def test_missing_checkpoint_is_an_error_unless_random_weights_allowed(bundle):
    from common.errors import InputDataError

    with pytest.raises(InputDataError, match="model.pt"):
        export_bundle(bundle)
    report = export_bundle(bundle, onnx_path=bundle / "random.onnx", allow_random_weights=True)
    assert report["passed"] and report["checkpoint"] is None


def test_two_inputs_two_outputs_dynamic_batch_and_spatial(tmp_path):
    torch.manual_seed(0)
    net = TwoInTwoOut().eval()
    path = tmp_path / "two.onnx"
    report = export_network(
        net,
        path,
        inputs=[
            {"name": "image", "shape": [1, 1, 16, 16], "dtype": "float32"},
            {"name": "clinical", "shape": [1, 5], "dtype": "float32"},
        ],
        outputs=["seg", "logits"],  # dict outputs are matched by key, in this order
        dynamic_axes={"image": {0: "batch", 2: "h", 3: "w"}, "clinical": {0: "batch"}, "seg": {0: "batch", 2: "h", 3: "w"}, "logits": {0: "batch"}},
        parity_shapes=[{"image": [3, 1, 24, 20], "clinical": [3, 5]}, [[2, 1, 8, 32], [2, 5]]],
    )
    assert report["passed"]
    assert [c["input_shapes"] for c in report["checks"]][1:] == [[[3, 1, 24, 20], [3, 5]], [[2, 1, 8, 32], [2, 5]]]

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image", "clinical"]
    assert [o.name for o in session.get_outputs()] == ["seg", "logits"]
    assert session.get_inputs()[0].shape == ["batch", 1, "h", "w"]

    onnx_net = OnnxRuntimeNetwork(path)
    image, clinical = torch.randn(4, 1, 12, 28), torch.randn(4, 5)
    seg, logits = onnx_net(image, clinical)
    expected = net(image, clinical)
    assert seg.shape == (4, 3, 12, 28) and logits.shape == (4, 4)
    assert torch.allclose(seg, expected["seg"], atol=1e-5) and torch.allclose(logits, expected["logits"], atol=1e-5)
    # keyword inputs and a subset/reordering of outputs
    only_logits = OnnxRuntimeNetwork(path, output_names=["logits"])(clinical=clinical, image=image)
    assert torch.allclose(only_logits, expected["logits"], atol=1e-5)


def test_dynamo_exporter_also_passes(tmp_path):
    report = export_network(
        _unet3d(),
        tmp_path / "dyn.onnx",
        inputs=[{"name": "image", "shape": [1, 1, 16, 16, 16]}],
        outputs=["pred"],
        dynamic_axes={"image": {0: "batch"}},
        parity_shapes=[[2, 1, 16, 16, 16]],
        exporter="dynamo",
    )
    assert report["passed"] and report["exporter"] == "dynamo"


def test_ort_network_in_sliding_window_inferer_matches_pytorch(tmp_path):
    net = _unet3d(seed=1)
    path = tmp_path / "unet.onnx"
    export_network(
        net,
        path,
        inputs=[{"name": "image", "shape": [1, 1, 16, 16, 16]}],
        outputs=["pred"],
        dynamic_axes={"image": {0: "batch"}, "pred": {0: "batch"}},
    )
    onnx_net = OnnxRuntimeNetwork(path, intra_op_num_threads=1)
    # module-like behaviour an evaluator relies on
    assert onnx_net.eval() is onnx_net and onnx_net.train() is onnx_net and onnx_net.to("cpu") is onnx_net
    assert list(onnx_net.parameters()) == [] and onnx_net.state_dict() == {}

    inferer = SlidingWindowInferer(roi_size=(16, 16, 16), sw_batch_size=3, overlap=0.25, mode="gaussian")
    volume = torch.rand(2, 1, 40, 24, 30)
    with torch.no_grad():
        expected = inferer(volume, net)
    got = inferer(volume, onnx_net)
    assert isinstance(got, torch.Tensor) and got.device == volume.device and got.shape == expected.shape
    assert torch.allclose(got, expected, rtol=1e-3, atol=1e-4)
    # a float64 tensor is cast to what the graph expects
    patch = volume[:1, :, :16, :16, :16]
    with torch.no_grad():
        assert torch.allclose(onnx_net(patch.double()), net(patch), rtol=1e-3, atol=1e-4)


def test_broken_parity_fails_loudly_and_writes_nothing(tmp_path):
    path = tmp_path / "noisy.onnx"
    with pytest.raises(OnnxParityError) as info:
        export_network(Noisy().eval(), path, inputs=[{"name": "x", "shape": [1, 1, 8, 8]}], outputs=["y"])
    message = str(info.value)
    assert "max_abs_err=" in message and "max_rel_err=" in message and "was not written" in message
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind either


def test_parity_failure_from_a_wrong_runtime_output(tmp_path, monkeypatch):
    """An ONNX Runtime that returns slightly wrong numbers is caught at the stated tolerance."""
    real_run = ort.InferenceSession.run

    def perturbed(self, output_names, feeds, *args, **kwargs):
        return [o + np.float32(1e-2) for o in real_run(self, output_names, feeds, *args, **kwargs)]

    monkeypatch.setattr(ort.InferenceSession, "run", perturbed)
    with pytest.raises(OnnxParityError, match=r"pred max_abs_err=0\.01"):
        export_network(
            _unet3d(), tmp_path / "m.onnx", inputs=[{"name": "image", "shape": [1, 1, 8, 8, 8]}], outputs=["pred"],
            tolerance={"rtol": 1e-3, "atol": 1e-4},
        )


def test_config_errors_are_clear(tmp_path):
    with pytest.raises(ExportConfigError, match="returns 1 outputs but export_onnx.yaml names 2"):
        export_network(_unet3d(), tmp_path / "a.onnx", inputs=[{"name": "image", "shape": [1, 1, 8, 8, 8]}], outputs=["a", "b"])
    with pytest.raises(ExportConfigError, match="neither inputs nor outputs"):
        export_network(
            _unet3d(), tmp_path / "b.onnx", inputs=[{"name": "image", "shape": [1, 1, 8, 8, 8]}], outputs=["pred"],
            dynamic_axes={"img": {0: "batch"}},
        )
    with pytest.raises(FileNotFoundError, match="export_onnx.py"):
        OnnxRuntimeNetwork(tmp_path / "missing.onnx")


def test_export_cli_prints_a_json_report(bundle, tmp_path):
    out = tmp_path / "cli.onnx"
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "export_onnx.py"), "--bundle", str(bundle), "--onnx_path", str(out), "--allow_random_weights"],
        capture_output=True, text=True, timeout=300, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["passed"] and Path(report["onnx_path"]) == out and out.is_file()
    assert set(report) >= {"max_abs_err", "max_rel_err", "passed", "onnx_path", "opset", "seconds"}


class SoftmaxWrapper(torch.nn.Module):
    """An export wrapper as export_onnx.yaml names it (`wrapper: test_export.SoftmaxWrapper`)."""

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        logits = self.network(image)
        return [logits.softmax(dim=1), logits.argmax(dim=1, keepdim=True).float()]


def test_wrapper_from_export_config(bundle):
    import yaml

    cfg_path = bundle / "configs" / "export_onnx.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg.update(
        wrapper="test_export.SoftmaxWrapper",
        outputs=["prob", "label"],
        dynamic_axes={"image": {0: "batch"}, "prob": {0: "batch"}, "label": {0: "batch"}},
        parity_shapes=[[2, 1, 32, 32, 32]],
    )
    cfg_path.write_text(yaml.safe_dump(cfg))
    report = export_bundle(bundle, onnx_path=bundle / "wrapped.onnx", allow_random_weights=True)
    assert report["passed"] and set(report["checks"][0]["outputs"]) == {"prob", "label"}
    prob, label = OnnxRuntimeNetwork(bundle / "wrapped.onnx")(torch.rand(1, 1, 32, 32, 32))
    assert prob.shape == (1, 2, 32, 32, 32) and torch.allclose(prob.sum(1), torch.ones(1, 32, 32, 32), atol=1e-5)
    assert label.shape == (1, 1, 32, 32, 32) and set(label.unique().tolist()) <= {0.0, 1.0}


def test_export_config_missing_keys(bundle):
    import yaml

    cfg_path = bundle / "configs" / "export_onnx.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    del cfg["inputs"]
    cfg_path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ExportConfigError, match=r"export_onnx.yaml: missing keys \['inputs'\]"):
        export_bundle(bundle, allow_random_weights=True)
