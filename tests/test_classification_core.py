"""Shared classification machinery: decision rules, evaluation report, networks and transfer learning."""

import csv
import json

import numpy as np
import pytest
import torch

from common.classification import class_weights, classifier, cxr_task, oct_task, prepare_network
from common.classification.handlers import PredictionCSVWriter, pred_label
from common.classification.networks import GRADCAM_LAYERS, HEADS, adapt_input_channels
from common.classification.report import evaluate_probabilities, write_report


def test_oct_referral_rules():
    task = oct_task()
    probs = np.array([[0.3, 0.3, 0.0, 0.4], [0.0, 0.1, 0.8, 0.1], [0.05, 0.05, 0.1, 0.8]])
    rows = task.decide(probs)
    assert [r["call"] for r in rows] == ["NORMAL", "DRUSEN", "NORMAL"]
    assert [r["referral"] for r in rows] == ["urgent", "routine", "observation"]  # grouped: 0.6 urgent wins
    assert rows[0]["p_urgent"] == pytest.approx(0.6)
    assert oct_task(rule="argmax").decide(probs)[0]["referral"] == "observation"
    assert oct_task(urgent_threshold=0.1).decide(probs)[2]["referral"] == "urgent"


def test_cxr_pneumonia_rule():
    rows = cxr_task().decide(np.array([[0.6, 0.3, 0.1], [0.4, 0.3, 0.3]]))
    assert [r["call"] for r in rows] == ["NORMAL", "NORMAL"]
    assert rows[1]["p_pneumonia"] == pytest.approx(0.6) and rows[1]["pneumonia"] == "yes"
    assert rows[0]["pneumonia"] == "no"
    assert cxr_task(classes=2).class_names == ("NORMAL", "PNEUMONIA")


def _noisy_probs(labels, n_classes, rng, strength=2.5):
    logits = rng.normal(size=(labels.size, n_classes))
    logits[np.arange(labels.size), labels] += strength
    return np.exp(logits) / np.exp(logits).sum(1, keepdims=True)


def test_report_figures_and_files(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 300)
    probs = _noisy_probs(labels, 3, rng)
    report = write_report(probs, labels, cxr_task(), tmp_path, n_boot=200)
    assert report["accuracy"]["value"] == pytest.approx((probs.argmax(1) == labels).mean())
    assert report["accuracy"]["ci_low"] < report["accuracy"]["value"] < report["accuracy"]["ci_high"]
    cm = np.array(report["confusion_matrix"]["matrix"])
    assert cm.sum() == 300 and np.trace(cm) == (probs.argmax(1) == labels).sum()
    pvn = report["binary"]["pneumonia_vs_normal"]
    assert pvn["n_positive"] == (labels > 0).sum() and pvn["n_negative"] == (labels == 0).sum()
    bvv = report["binary"]["bacterial_vs_viral"]
    assert bvv["n_positive"] + bvv["n_negative"] == (labels > 0).sum()  # pneumonia cases only
    assert 0.8 < pvn["auroc"]["value"] <= 1.0
    sens = report["per_class"]["VIRAL"]["sensitivity"]["value"]
    assert sens == pytest.approx(((probs.argmax(1) == 2) & (labels == 2)).sum() / (labels == 2).sum())
    for name in ("report.json", "roc_curves.png", "confusion_matrix.png"):
        assert (tmp_path / name).stat().st_size > 100
    assert json.loads((tmp_path / "report.json").read_text())["n_images"] == 300


def test_oct_report_has_weighted_error_and_urgent_question():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, 200)
    report = evaluate_probabilities(_noisy_probs(labels, 4, rng, 6.0), labels, oct_task(), n_boot=50)
    assert report["binary"]["urgent_referral"]["auroc"]["value"] > 0.95
    assert report["kermany_weighted_error"]["value"] < 0.1 and len(report["kermany_weighted_error"]["penalty_matrix"]) == 4


def test_class_weights_balance_the_loss():
    data = [{"label": 0}] * 10 + [{"label": 1}] * 20 + [{"label": 2}] * 10
    w = class_weights(data, 3)
    counts = torch.tensor([10.0, 20.0, 10.0])
    assert torch.allclose(w * counts, (w * counts)[0].expand(3))  # every class contributes equally
    assert torch.allclose(class_weights(data, 3, power=0.0), torch.ones(3))


def test_pred_label_output_transform():
    out = [{"pred": torch.tensor([0.1, 0.9]), "label": torch.tensor(1)}, {"pred": torch.tensor([0.8, 0.2]), "label": torch.tensor([0])}]
    pred, label = pred_label(out)
    assert pred.shape == (2, 2) and label.tolist() == [1, 0]


@pytest.mark.parametrize("backbone", ["resnet18", "densenet121"])
def test_backbones_output_logits(backbone):
    net = classifier(4, backbone=backbone, width=8).eval()
    with torch.no_grad():
        assert net(torch.randn(2, 1, 64, 64)).shape == (2, 4)
    assert HEADS[backbone] and GRADCAM_LAYERS[backbone]


def test_transfer_learning_reinitialises_head_and_folds_rgb_stem(tmp_path):
    torch.manual_seed(0)
    rgb_imagenet_like = classifier(1000, in_channels=3, width=8)  # torchvision resnet18 layout, RGB, 1000 classes
    ckpt = tmp_path / "imagenet_resnet18.pt"
    torch.save({"model": rgb_imagenet_like.state_dict()}, ckpt)
    net = prepare_network(classifier(3, width=8), str(ckpt))
    src = rgb_imagenet_like.state_dict()
    assert torch.allclose(net.state_dict()["layer3.0.conv1.weight"], src["layer3.0.conv1.weight"])
    assert torch.allclose(net.state_dict()["conv1.weight"], src["conv1.weight"].sum(1, keepdim=True))
    assert net.fc.weight.shape == (3, 64)  # head of another class count kept fresh
    # a gray image through the folded stem = the RGB network on the gray image repeated 3 times
    x = torch.rand(1, 1, 64, 64)
    rgb_imagenet_like.eval(), net.eval()
    with torch.no_grad():
        feats = torch.nn.Sequential(*list(rgb_imagenet_like.children())[:4])(x.repeat(1, 3, 1, 1))
        feats_net = torch.nn.Sequential(*list(net.children())[:4])(x)
    assert torch.allclose(feats, feats_net, atol=1e-5)
    assert adapt_input_channels({"conv1.weight": torch.ones(8, 1, 7, 7)}, classifier(2, in_channels=3, width=8))[
        "conv1.weight"
    ].shape == (8, 3, 7, 7)


def test_freeze_backbone_trains_head_only():
    net = prepare_network(classifier(3, width=8), "", freeze_backbone=True)
    trainable = [n for n, p in net.named_parameters() if p.requires_grad]
    assert trainable == ["fc.weight", "fc.bias"]
    net.train()
    before = net.bn1.running_mean.clone()
    net(torch.randn(4, 1, 64, 64) + 3.0)
    assert torch.equal(before, net.bn1.running_mean)  # frozen batch-norm statistics do not drift
    assert not net.bn1.training and net.fc.training


def test_prediction_csv_writer_lists_good_and_bad_cases(tmp_path):
    class Skipped:
        skipped = [{"index": None, "file": "b_bad.png", "problem": "cannot be read"}]

    writer = PredictionCSVWriter(cxr_task(), tmp_path / "out.csv", dataset=Skipped())
    writer.probs = [np.array([0.2, 0.5, 0.3]), np.array([0.9, 0.05, 0.05])]
    writer.files = ["c.png", "a.png"]
    writer._write(None)
    rows = list(csv.DictReader(open(tmp_path / "out.csv")))
    assert [r["file"] for r in rows] == ["a.png", "b_bad.png", "c.png"]
    assert rows[2]["call"] == "BACTERIAL" and float(rows[2]["p_pneumonia"]) == pytest.approx(0.8)
    assert rows[1]["error"] == "cannot be read" and rows[1]["p_NORMAL"] == ""
    assert list(rows[0]) == ["file", "p_NORMAL", "p_BACTERIAL", "p_VIRAL", "call", "p_pneumonia", "pneumonia", "error",
                             "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"]
