"""scripts/synthex.py: train on synthetic data only, score on "real" data, write the transfer table.

The real folders of ``../shared/data`` are replaced here by small generated stand-ins in the same layouts
(OCT2017 class folders, ChestXRay2017 ``NORMAL/`` + ``PNEUMONIA/``), so the whole chain runs in a minute:
generator -> the bundle's ``train.yaml`` -> ``evaluate.yaml`` on the stand-in -> ``synthex.md`` /
``synthex.json``, and a second call reuses the trained weights instead of training again. Where the real
folders are present, the experiment's default inputs are checked to read (folds and datalists build).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
OCT_CLASSES = ("CNV", "DME", "DRUSEN", "NORMAL")


def _synthex():
    spec = importlib.util.spec_from_file_location("synthex", REPO / "scripts" / "synthex.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def synthex():
    return _synthex()


def _oct_stand_in(tmp_path: Path) -> Path:
    from common.synthetic.oct import generate_oct

    generate_oct(tmp_path / "src", config={"image_size": [96, 128], "scans_per_patient": [1, 2],
                                           "splits": {"train": dict.fromkeys(OCT_CLASSES, 4), "test": dict.fromkeys(OCT_CLASSES, 0)}},
                 seed=11)
    real = tmp_path / "real_oct"
    shutil.copytree(tmp_path / "src" / "OCT2017" / "train", real)
    return real


def _record_scoring(monkeypatch, module, name: str) -> list[dict]:
    """Wrap ``module.name`` (a bundle run) so that the arguments of every evaluate.yaml run are kept."""
    calls: list[dict] = []
    original = getattr(module, name)

    def recording(*args, **kwargs):
        configs, settings = args[-3], args[-2]
        if any(Path(c).name == "evaluate.yaml" for c in configs):
            calls.append(dict(settings))
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, recording)
    return calls


def test_oct_synthetic_only_on_a_stand_in(synthex, tmp_path, monkeypatch):
    import oct_crossval

    scoring = _record_scoring(monkeypatch, oct_crossval, "_bundle_run")
    real = _oct_stand_in(tmp_path)
    folds = tmp_path / "folds.json"
    oct_crossval.folds(str(real), n_folds=2, out=str(folds))
    config = tmp_path / "oct.yaml"
    config.write_text(yaml.safe_dump({"image_size": [96, 128], "scans_per_patient": [1, 1],
                                      "splits": {"train": dict.fromkeys(OCT_CLASSES, 10), "test": dict.fromkeys(OCT_CLASSES, 0)}}))
    out = tmp_path / "out"
    md = synthex.oct_transfer(out=str(out), real=str(real), synthetic_config=str(config), folds_file=str(folds),
                     max_epochs=1, num_workers=0, image_size=64)
    table = Path(md).read_text()
    assert "| figure | synthetic only |" in table and "accuracy" in table
    summary = json.loads((out / "synthex.json").read_text())
    assert summary["task"] == "oct" and summary["real"] == "real_oct"
    assert Path(summary["synthetic_training"]["checkpoint"]).is_file()
    pooled = json.loads((out / "synthetic_only" / "crossval.json").read_text())["pooled"]
    assert pooled["n_images"] == len(list(real.rglob("*.jpeg")))  # every stand-in scan scored once
    # the weights trained on 64-pixel inputs are scored on 64-pixel inputs, not the bundle's default 128
    assert scoring and all(str(call["image_size"]) == "64" for call in scoring)
    # the same call again reuses the data and the weights (no second training)
    synthex.oct_transfer(out=str(out), real=str(real), synthetic_config=str(config), folds_file=str(folds), max_epochs=1,
                num_workers=0, image_size=64)
    assert json.loads((out / "synthex.json").read_text())["synthetic_training"]["reused"] is True
    # weights trained with other settings are not quoted as these: refused unless --force
    with pytest.raises(SystemExit, match="made with other settings"):
        synthex.oct_transfer(out=str(out), real=str(real), synthetic_config=str(config), folds_file=str(folds),
                             max_epochs=2, num_workers=0, image_size=64)
    with pytest.raises(SystemExit, match="unknown arm"):
        synthex.oct_transfer(out=str(out), real=str(real), arms="synthetic,imagenet")


def test_pneumonia_synthetic_only_on_a_stand_in(synthex, tmp_path, monkeypatch):
    from common.synthetic.cxr import generate_pneumonia_cxr

    scoring = _record_scoring(monkeypatch, synthex, "run_bundle")

    split = {"NORMAL": 8, "BACTERIAL": 8, "VIRAL": 8}
    generate_pneumonia_cxr(tmp_path / "src", config={"image_size": 64, "splits": {"train": split, "test": {}},
                                                     "write_masks": False, "render": {"pool_size": 2}}, seed=5)
    real = tmp_path / "real_cxr"
    shutil.copytree(tmp_path / "src" / "chest_xray" / "train", real)
    config = tmp_path / "cxr.yaml"
    config.write_text(yaml.safe_dump({"image_size": 64, "splits": {"train": split, "test": {}}, "write_masks": False,
                                      "render": {"pool_size": 2}}))
    out = tmp_path / "out"
    md = synthex.pneumonia(out=str(out), real=str(real), synthetic_config=str(config), shipped="", max_epochs=1,
                           num_workers=0, image_size=64, batch_size=8)
    table = Path(md).read_text()
    rows = [line for line in table.splitlines() if line.startswith("| synthetic only")]
    assert len(rows) == 2  # every stand-in film, and the validation split
    scores = json.loads((out / "synthex.json").read_text())["scores"]
    assert scores["real_all"]["n"] == len(list(real.rglob("*.jpeg")))
    assert 0.0 <= scores["real_all"]["auroc"]["value"] <= 1.0
    assert scores["real_validation"]["n"] < scores["real_all"]["n"]
    # both scorings read the films at the size the weights were trained on (image_size 64, not the default 192)
    assert len(scoring) == 2 and all(str(call["image_size"]) == "64" for call in scoring)


def _predictions(folder: Path, labels: list[str], p_pneumonia: list[float], names: list[str] | None = None) -> None:
    (folder / "real_all" / "eval").mkdir(parents=True)
    names = names or [f"f{k}.jpeg" for k in range(len(labels))]
    lines = ["file,label,p_pneumonia"] + [f"{n},{y},{p}" for n, y, p in zip(names, labels, p_pneumonia)]
    (folder / "real_all" / "eval" / "predictions.csv").write_text("\n".join(lines) + "\n")


def test_ensemble_averages_the_models_probabilities(synthex, tmp_path):
    labels = ["NORMAL", "NORMAL", "BACTERIAL", "VIRAL"]
    # each model ranks one normal film above one pneumonia film; their average ranks every film right
    _predictions(tmp_path / "a", labels, [0.1, 0.7, 0.6, 0.9])
    _predictions(tmp_path / "b", labels, [0.7, 0.1, 0.9, 0.6])
    line = synthex.ensemble(str(tmp_path / "a"), str(tmp_path / "b"))
    assert line.startswith("2 models averaged, real_all (4 films): AUROC 1.000")
    assert "sensitivity 1.000, specificity 1.000" in line
    _predictions(tmp_path / "c", labels, [0.1, 0.7, 0.6, 0.9], names=["x", "y", "z", "w"])
    with pytest.raises(ValueError, match="other films"):
        synthex.ensemble(str(tmp_path / "a"), str(tmp_path / "c"))
    with pytest.raises(ValueError, match="two or more"):
        synthex.ensemble(str(tmp_path / "a"))


def test_dice_by_case_reads_both_record_forms(synthex):
    evaluate_cases = [{"image": "/d/Case_003_ct.nii.gz", "metrics": {"dice_both_lungs": 0.9}}]
    crossval_cases = [{"case": "Case_003", "metrics": {"both_lungs": {"dice": 0.95}}}]
    assert synthex._dice_by_case(evaluate_cases) == {"Case_003": 0.9}
    assert synthex._dice_by_case(crossval_cases) == {"Case_003": 0.95}
    ci = synthex.bootstrap_mean([0.8, 0.9, 1.0], n_boot=200)
    assert ci["value"] == pytest.approx(0.9) and 0.8 <= ci["ci_low"] <= 0.9 <= ci["ci_high"] <= 1.0


@pytest.mark.skipif(not (SHARED / "oct2017_samples48").is_dir() or not (SHARED / "lctsc_train9").is_dir(),
                    reason="real data (../shared/data) not present")
def test_real_defaults_read(synthex, tmp_path):
    import lung_crossval
    import oct_crossval

    oct_lists = oct_crossval.write_datalists(SHARED / "oct2017_samples48", tmp_path / "oct")
    assert len(json.loads(oct_lists["all"].read_text())["testing"]) == 48
    lung_lists = lung_crossval.write_datalists(SHARED / "lctsc_train9", tmp_path / "lung")
    assert len(json.loads(Path(lung_lists["all"]).read_text())["testing"]) == 9
    assert Path(synthex.lung.__defaults__[2]).is_file() and Path(synthex.oct_transfer.__defaults__[2]).is_file()
    assert Path(synthex.pneumonia.__defaults__[2]).is_file()


def test_oct_export_fill_is_white_and_moves_the_mask():
    from common.synthetic.oct import render_oct, simulate_export

    rng = np.random.default_rng(3)
    sample = render_oct(rng, "DRUSEN", size=(96, 128))
    image, mask = simulate_export(rng, sample["image"], sample["lesion_mask"],
                                  {"fill_probability": 1.0, "rotation_deg": [5.0, 5.0], "shift_fraction": [0.05, 0.05]})
    assert image.shape == sample["image"].shape and mask.shape == sample["lesion_mask"].shape
    assert (image == 255).mean() > 0.03  # rotated corners and the shifted band are filled white
    assert 0 < mask.sum() and mask[image == 255].sum() == 0  # no lesion in the fill
    same, same_mask = simulate_export(rng, sample["image"], sample["lesion_mask"], {"fill_probability": 0.0})
    assert same is sample["image"] and same_mask is sample["lesion_mask"]



def test_oct_realism_compares_a_stand_in(tmp_path):
    spec = importlib.util.spec_from_file_location("oct_realism", REPO / "scripts" / "oct_realism.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    real = _oct_stand_in(tmp_path)
    out = module.main(real=str(real), n_synthetic=8, seed=1)
    for name in ("real", "synthetic"):
        p10, p50, p90, p99 = out[name]["percentiles"]
        assert 0 <= p10 <= p50 <= p90 <= p99 <= 255
        profile = np.asarray(out[name]["normal_profile"])
        assert profile.shape == (320,)
        assert profile[60] >= profile.max() - 60  # the alignment row (the RPE) is among the brightest
        tilt, bow = out[name]["rpe_tilt_bow"]
        assert 0 <= tilt < 200 and abs(bow) < 200
        assert 20 < out[name]["retina_rows"] < 170  # a retina, between the vitreous and the RPE
        (median_now, median_before), _ = out[name]["band_rpe_spread"]
        assert 0 <= median_now <= 8 and 0 <= median_before < 100  # synthetic retinas: the band leaves the RPE flat
    # a stripe brighter than the RPE above it over the right third (a nerve fibre layer near the disc): the
    # brightest-row quadratic leaves the RPE curved in the band, the band's fit now does not
    scan = np.full((496, 512), 30.0)
    xn = np.linspace(-1, 1, 512)
    rows = np.arange(496)[:, None]
    rpe = 300 - 40 * xn**2 + 20 * xn**3
    scan += 150 * np.exp(-(((rows - rpe) / 4.0) ** 2))
    scan += 150 * (xn > 0.35) * np.exp(-(((rows - (rpe - 90)) / 4.0) ** 2))
    assert module.band_rpe_spread(scan) <= 3 < 20 < module.band_rpe_spread(scan, module.CALIBRATION_FIT)
    figure = Image.open(module.band_figure(str(real), str(tmp_path / "band.png"), n=2, width=64))
    assert figure.size == (3 * 64 + 8, 2 * (2 * 31 + 4))  # two scans: the scan with both curves, two bands


def test_cxr_realism_tells_films_with_ribs_from_films_without(tmp_path):
    """The fine-texture measure rises when the ribs show through the lung fields (higher bone contrast)."""
    from common.synthetic.cxr import generate_pneumonia_cxr

    spec = importlib.util.spec_from_file_location("cxr_realism", REPO / "scripts" / "cxr_realism.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    flat = np.full((100, 100), 120.0)
    striped = flat + 40.0 * (np.arange(100) % 6 < 3)[:, None]
    assert module.lung_measures(flat)[1] < 0.01 < module.lung_measures(striped)[1]

    base = {"image_size": 96, "splits": {"train": {"NORMAL": 4, "BACTERIAL": 4, "VIRAL": 4}, "test": {}},
            "write_masks": False, "render": {"pool_size": 2, "bone_contrast": [1.0, 1.0]}}
    generate_pneumonia_cxr(tmp_path / "real", config=base, seed=3)
    bony = tmp_path / "bony.yaml"
    bony.write_text(yaml.safe_dump({**base, "render": {"pool_size": 2, "bone_contrast": [4.0, 4.0]}}))
    out = module.main(real=str(tmp_path / "real"), n_per_class=4, seed=1, synthetic_config=str(bony))
    for cls in ("NORMAL", "BACTERIAL", "VIRAL"):
        assert out["synthetic"][cls]["fine_texture"] > out["real"][cls]["fine_texture"]
        assert -3 < out["real"][cls]["lung_mean"] < 3
    with pytest.raises(SystemExit, match="no ChestXRay2017 films"):
        module.main(real=str(tmp_path / "nowhere"), n_per_class=2)


@pytest.mark.parametrize("bundle, component, added", [
    ("lung_ct_segmentation", "train#random_transforms", {"RandHistogramShiftd"}),
    ("retina_oct_classification", "train#preprocessing",
     {"RandGaussianSmoothd", "RandHistogramShiftd", "RandBiasFieldd", "RandGaussianNoised"}),
    ("pediatric_cxr_pneumonia_classification", "train#preprocessing",
     {"RandGaussianSharpend", "RandBiasFieldd", "RandCoarseDropoutd"}),
])
def test_domain_randomisation_switch(bundle, component, added):
    """``--domain_randomisation true`` adds the randomising transforms to training; off by default."""
    from monai.bundle import ConfigParser

    def names(**overrides):
        parser = ConfigParser()
        parser.read_config(str(REPO / "bundles" / bundle / "configs" / "train.yaml"))
        parser.update({"bundle_root": str(REPO / "bundles" / bundle), **overrides})
        content = parser.get_parsed_content(component)
        transforms = content.transforms if hasattr(content, "transforms") else content
        return [type(t).__name__ for t in transforms]

    off, on = names(), names(domain_randomisation=True)
    assert not added & set(off)
    assert added <= set(on) and len(on) == len(off) + len(added)
    # from the command line the switch arrives as a string: "false" must stay off
    assert names(domain_randomisation="false") == off and names(domain_randomisation="true") == on


def test_flag_reads_switches_from_yaml_and_the_command_line():
    from common.bundle_utils import flag

    assert flag(True) is True and flag(0) is False
    assert flag("false") is False and flag("False") is False and flag("TRUE") is True and flag("1") is True
    with pytest.raises(ValueError, match="maybe"):
        flag("maybe")
