"""OCT loading/normalisation/retina band and the EHR feature spec, vector, imputation and CSV reader."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from dicom_factory import write_radiograph
from monai.data import DataLoader, Dataset
from PIL import Image
from scipy import ndimage

from common.errors import InputDataError
from common.synthetic.oct import render_oct, simulate_export
from common.transforms import EHRVectord, FeatureSpec, LoadOCTd, OCTNormalized, OCTRetinaBandd, read_ehr_csv
from common.transforms.ehr import parse_value

SPEC = {
    "features": [
        {"name": "spo2", "unit": "%", "min": 50, "max": 100, "default": 96, "mean": 95.0, "std": 3.0},
        {"name": "resp_rate", "unit": "1/min", "min": 4, "max": 70, "default": 18, "mean": 20.0, "std": 5.0},
        {"name": "crp", "unit": "mg/L", "min": 0, "max": 500, "default": 5, "mean": 40.0, "std": 60.0},
    ]
}


@pytest.fixture()
def spec_file(tmp_path):
    path = tmp_path / "features.yaml"
    path.write_text(yaml.safe_dump(SPEC))
    return path


def _bscan(h=64, w=96, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = np.linspace(0, 1, h)[:, None]
    layers = 60 + 120 * np.exp(-(((rows - 0.5) / 0.08) ** 2)) + 0 * np.arange(w)[None]
    return np.clip(layers + rng.normal(0, 10, (h, w)), 0, 255).astype(np.uint8)


def test_oct_jpeg_rgb_and_grey_load_as_one_channel(tmp_path):
    scan = _bscan()
    Image.fromarray(scan).save(tmp_path / "CNV-1-1.jpeg", quality=98)
    Image.fromarray(np.stack([scan] * 3, -1)).save(tmp_path / "CNV-1-2.jpeg", quality=98)
    load = LoadOCTd("image")
    grey = load({"image": str(tmp_path / "CNV-1-1.jpeg")})["image"]
    rgb = load({"image": str(tmp_path / "CNV-1-2.jpeg")})["image"]
    assert grey.shape == rgb.shape == (1, 64, 96) and grey.dtype == torch.float32
    assert float((grey - torch.from_numpy(scan / 255.0)).abs().mean()) < 0.02
    assert float((grey - rgb).abs().mean()) < 0.02
    assert grey.meta["filename_or_obj"].endswith("CNV-1-1.jpeg")


def test_oct_dicom_single_frame_loads_volume_and_xray_refused(tmp_path):
    pixels = _bscan().astype(np.uint16) * 16  # 12-bit B-scan
    path = write_radiograph(tmp_path / "oct.dcm", pixels, modality="OPT")
    image = LoadOCTd("image")({"image": str(path)})["image"]
    np.testing.assert_allclose(
        image[0].numpy(), (pixels - pixels.min()) / (pixels.max() - pixels.min()), atol=1e-6
    )
    volume = write_radiograph(tmp_path / "vol.dcm", pixels, modality="OPT", frames=4)
    with pytest.raises(InputDataError, match="multi-frame"):
        LoadOCTd("image")({"image": str(volume)})
    xray = write_radiograph(tmp_path / "cxr.dcm", pixels, modality="DX")
    with pytest.raises(InputDataError, match="modality is DX") as e:
        LoadOCTd("image")({"image": str(xray)})
    assert str(xray) in str(e.value)


def test_oct_normalisation_maps_percentiles_to_0_and_1():
    x = torch.linspace(0.2, 0.6, 1000).reshape(1, 20, 50)
    x[0, 0, :5] = 0.0  # export fill: left out of the percentiles
    x[0, 1, :5] = 1.0
    out = OCTNormalized("image", lower=1.0, upper=99.0)({"image": x})["image"]
    assert out.shape == x.shape and out.min() == 0.0 and out.max() == 1.0
    inside = x[(x > 0) & (x < 1)].numpy()
    lo, hi = np.percentile(inside, [1.0, 99.0])
    middle = x[0, 10, 25].item()
    assert out[0, 10, 25].item() == pytest.approx((middle - lo) / (hi - lo), abs=1e-5)
    flat = OCTNormalized("image")({"image": torch.full((1, 8, 8), 0.4)})["image"]
    assert float(flat.abs().max()) == 0.0
    with pytest.raises(ValueError):
        OCTNormalized("image", lower=50, upper=10)


def _tilted_bowed_scan(seed: int, label: str = "NORMAL"):
    config = {"tilt_deg": [6.0, 8.0], "curvature": [3.0, 4.0], "rpe_depth_fraction": [0.45, 0.5]}
    return render_oct(np.random.default_rng(seed), label, size=(248, 256), config=config)


@pytest.mark.parametrize("label", ["NORMAL", "DRUSEN"])
def test_oct_retina_band_flattens_the_rpe_onto_one_row(label):
    sample = _tilted_bowed_scan(1, label)
    rpe = (sample["boundaries"]["RPE_top"] + sample["boundaries"]["Bruch"]) / 2
    assert rpe.max() - rpe.min() > 25  # tilted and bowed: the RPE spans rows
    image = torch.as_tensor(sample["image"][None] / 255.0, dtype=torch.float32)
    band = OCTRetinaBandd("image", above=0.35, below=0.15)({"image": image})["image"]
    assert band.shape == (1, round(0.5 * 248), 256)
    # every column's brightest row (the RPE) now lies near the band's RPE row, 0.35 of the height down
    target = round(0.35 * 248)
    brightest = np.argmax(ndimage.gaussian_filter(band[0].numpy(), (2, 4)), axis=0)
    central = brightest[32:-32]
    assert np.median(np.abs(central - target)) <= 3
    assert np.percentile(np.abs(central - target), 90) <= (12 if label == "DRUSEN" else 6)
    # drusen survive the flattening: the RPE still rises over them
    if label == "DRUSEN":
        lift = sample["boundaries"]["Bruch"] - sample["boundaries"]["RPE_top"]
        cols = np.flatnonzero(lift > np.median(lift) + 6)
        assert cols.size and (target - brightest[cols]).max() >= 4


def test_oct_retina_band_keeps_export_fill_out_of_the_fit_and_checks_input():
    sample = _tilted_bowed_scan(2)
    exported, _ = simulate_export(np.random.default_rng(0), sample["image"], sample["lesion_mask"], {"fill_probability": 1.0, "rotation_deg": [5.0, 6.0]})
    assert (exported == 255).mean() > 0.005
    image = torch.as_tensor(exported[None] / 255.0, dtype=torch.float32)
    band = OCTRetinaBandd("image")({"image": image})["image"]
    brightest = np.argmax(ndimage.gaussian_filter(np.where(band[0].numpy() >= 1.0, 0, band[0].numpy()), (2, 4)), 0)
    assert np.median(np.abs(brightest[32:-32] - round(0.35 * 248))) <= 4
    with pytest.raises(ValueError, match="expects a"):
        OCTRetinaBandd("image")({"image": torch.zeros(2, 8, 8)})
    with pytest.raises(ValueError, match=r"\[0, 1\]"):  # 8-bit values: LoadOCTd's [0, 1] is expected
        OCTRetinaBandd("image")({"image": torch.as_tensor(exported[None], dtype=torch.float32)})
    assert OCTRetinaBandd("image")({"image": torch.full((1, 1, 5), 0.5)})["image"].shape == (1, 1, 5)
    # an image that is all export fill has no RPE to find: the band is cut around a flat row
    assert OCTRetinaBandd("image")({"image": torch.ones(1, 40, 30)})["image"].shape == (1, 20, 30)
    with pytest.raises(ValueError):
        OCTRetinaBandd("image", above=0.0)


def test_rpe_fit_ignores_columns_where_something_outshines_the_rpe():
    """In a fifth of the columns, scattered, a brighter band lies 80 rows above the RPE (vessel walls, a bright
    nerve fibre layer): the refitted curve follows the RPE, where one fit through every column's maximum is
    dragged up. (A contiguous block of them near the disc: the next test.)"""
    from common.transforms.oct import fit_rpe_curve

    h, w = 200, 240
    xn = (np.arange(w) - (w - 1) / 2) / ((w - 1) / 2)
    rpe = 140.0 - 20.0 * xn**2 + 6.0 * xn
    rows = np.arange(h)[:, None]
    image = 0.1 + 0.6 * np.exp(-(((rows - rpe[None, :]) / 2.0) ** 2))
    outshone = np.random.default_rng(0).permutation(w)[: w // 5]
    image[:, outshone] += 0.85 * np.exp(-(((rows - (rpe[outshone] - 80.0)[None, :]) / 3.0) ** 2))
    image = np.clip(image, 0.01, 0.99)
    fitted = fit_rpe_curve(image, smooth=(3.0, 0.5))
    assert np.abs(fitted - rpe).max() < 3.0
    maxima = np.argmax(ndimage.gaussian_filter(image, (3.0, 0.5)), axis=0)
    naive = np.polyval(np.polyfit(xn, maxima, 2), xn)
    assert np.abs(naive - rpe).max() > 10.0  # what the rejection of outlying columns is for


def test_rpe_fit_follows_an_asymmetric_rpe_under_a_bright_nerve_fibre_layer():
    """Near the optic disc the nerve fibre layer thickens and can outshine the RPE over a contiguous fifth of
    the scan, and real retinas are not parabolas: the default fit (deepest bright row, quartic, refined) stays
    on the RPE; the brightest-row quadratic used before (``degree=2, bright_fraction=1.0, refine_window=0``)
    is dragged off it by tens of rows."""
    from common.transforms.oct import fit_rpe_curve

    h, w = 240, 300
    xn = (np.arange(w) - (w - 1) / 2) / ((w - 1) / 2)
    rpe = 160.0 - 10.0 * xn - 25.0 * xn**2 + 18.0 * xn**3 + 20.0 * xn**4  # flat centre, rising towards the disc
    rows = np.arange(h)[:, None]
    image = 0.08 + 0.55 * np.exp(-(((rows - rpe[None, :]) / 2.5) ** 2))
    image += 0.25 * np.exp(-(((rows - (rpe - 14.0)[None, :]) / 2.0) ** 2))  # the ellipsoid zone, dimmer, above
    # nasal fifth: a nerve fibre layer up to 1.2 times as bright as the RPE after the fit's smoothing (the
    # deepest-bright rule gives way at 1 / bright_fraction = 1.25)
    nfl = np.clip((xn - 0.35) / 0.3, 0.0, 1.0)
    image += 0.4 * nfl[None, :] * np.exp(-(((rows - (rpe - 70.0)[None, :]) / 6.0) ** 2))
    image = np.clip(image + np.random.default_rng(1).normal(0.0, 0.02, image.shape), 0.01, 0.99)

    fitted = fit_rpe_curve(image)
    assert np.percentile(np.abs(fitted - rpe), 95) < 3.0
    before = fit_rpe_curve(image, degree=2, bright_fraction=1.0, refine_window=0.0)
    assert np.abs(before - rpe).max() > 20.0
    band = OCTRetinaBandd("image")({"image": torch.as_tensor(image[None], dtype=torch.float32)})["image"][0].numpy()
    brightest = np.argmax(ndimage.gaussian_filter(band, (2, 4)), axis=0)
    assert np.percentile(np.abs(brightest - round(0.35 * h)), 90) <= 3
    with pytest.raises(ValueError, match="bright_fraction"):
        OCTRetinaBandd("image", bright_fraction=0.0)
    with pytest.raises(ValueError, match="integer degree"):
        fit_rpe_curve(image, degree=2.5)
    # a scan that is all export fill has no RPE: a flat curve on the top row, as the earlier fit gave
    assert np.array_equal(fit_rpe_curve(np.ones((40, 30))), fit_rpe_curve(np.ones((40, 30)), degree=2, bright_fraction=1.0, refine_window=0.0))


def test_oct_blank_or_volume_is_refused(tmp_path):
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(tmp_path / "blank.png")
    with pytest.raises(InputDataError, match="blank"):
        LoadOCTd("image")({"image": str(tmp_path / "blank.png")})
    nii = tmp_path / "vol.nii.gz"
    nii.write_bytes(b"\x1f\x8b" + b"\0" * 50)
    with pytest.raises(InputDataError, match="volume file"):
        LoadOCTd("image")({"image": str(nii)})


def test_feature_spec_from_yaml(spec_file):
    spec = FeatureSpec.from_yaml(spec_file)
    assert spec.names == ["spo2", "resp_rate", "crp"] and len(spec) == 3
    assert spec["crp"].unit == "mg/L" and spec["spo2"].default == 96.0
    assert spec.output_names[3:] == ["spo2_missing", "resp_rate_missing", "crp_missing"]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"min": 120}, "min 120 must be below max 100"),
        ({"std": 0}, "std must be positive"),
        ({"default": 20}, "default 20 outside the plausible range"),
        ({"mean": "high"}, "mean must be a finite number"),
        ({"unit": None}, "missing field"),
        ({"scale": 2}, "unknown field"),
    ],
)
def test_feature_spec_validation_names_file_and_feature(tmp_path, change, message):
    bad = {"features": [dict(SPEC["features"][0], **change), SPEC["features"][1]]}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(InputDataError, match=message) as e:
        FeatureSpec.from_yaml(path)
    assert str(e.value).startswith(str(path)) and "spo2" in str(e.value)


def test_feature_spec_duplicates_and_bad_yaml(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text(yaml.safe_dump({"features": [SPEC["features"][0]] * 2}))
    with pytest.raises(InputDataError, match="duplicate feature name"):
        FeatureSpec.from_yaml(path)
    path.write_text("features: [a: b: c")
    with pytest.raises(InputDataError, match="not valid YAML"):
        FeatureSpec.from_yaml(path)


def test_ehr_vector_imputes_missing_and_implausible_with_indicator(spec_file):
    transform = EHRVectord("ehr", spec=str(spec_file))
    out = transform({"ehr": {"spo2": " 91 ", "resp_rate": "", "crp": "900"}})
    vector = out["ehr"]
    assert vector.dtype == torch.float32 and vector.shape == (6,)
    expected = [(91 - 95) / 3, (18 - 20) / 5, (5 - 40) / 60, 0.0, 1.0, 1.0]
    np.testing.assert_allclose(vector.numpy(), expected, rtol=1e-6)
    assert out["ehr_imputed"] == "resp_rate,crp"

    complete = transform({"ehr": {"spo2": 99, "resp_rate": "30", "crp": "12,5"}})
    np.testing.assert_allclose(complete["ehr"].numpy(), [4 / 3, 2.0, (12.5 - 40) / 60, 0, 0, 0], rtol=1e-6)
    assert complete["ehr_imputed"] == ""

    nothing = transform({"ehr": {}})
    np.testing.assert_allclose(nothing["ehr"].numpy()[3:], [1, 1, 1])
    np.testing.assert_allclose(nothing["ehr"].numpy()[:3], [(96 - 95) / 3, -0.4, (5 - 40) / 60], rtol=1e-6)


def test_ehr_values_parse():
    assert parse_value("NA") is None and parse_value(" ") is None and parse_value(float("nan")) is None
    assert parse_value("abc") is None and parse_value(None) is None and parse_value("inf") is None
    assert parse_value("37,5") == 37.5 and parse_value(" 7 ") == 7.0 and parse_value(3) == 3.0


def test_ehr_vectors_batch_in_a_dataloader(spec_file):
    rows = [{"ehr": {"spo2": "95"}}, {"ehr": {"spo2": "88", "resp_rate": "25", "crp": "3"}}]
    loader = DataLoader(
        Dataset(rows, transform=EHRVectord("ehr", spec=FeatureSpec.from_yaml(spec_file))), batch_size=2
    )
    batch = next(iter(loader))
    assert batch["ehr"].shape == (2, 6)
    assert batch["ehr_imputed"] == ["resp_rate,crp", ""]


def test_read_ehr_csv_allows_empty_cells(tmp_path, spec_file):
    csv_path = tmp_path / "encounters.csv"
    csv_path.write_text(
        "\ufeffimage, spo2,resp_rate,crp,o2_24h\nimg/a.png,93,,12,1\n\nimg/b.png,,22,,0\nimg/c.png,97,16\n",
        encoding="utf-8",
    )
    rows = read_ehr_csv(csv_path, FeatureSpec.from_yaml(spec_file), required_columns=("image", "o2_24h"))
    assert len(rows) == 3
    assert rows[0] == {"image": "img/a.png", "spo2": "93", "resp_rate": "", "crp": "12", "o2_24h": "1"}
    assert rows[2]["crp"] == "" and rows[2]["o2_24h"] == ""
    vector, imputed = FeatureSpec.from_yaml(spec_file).vectorise(rows[1])
    assert imputed == ["spo2", "crp"] and vector[3] == 1.0 and vector[4] == 0.0
    # a flat CSV row goes straight into the transform
    out = EHRVectord("ehr", spec=str(spec_file), from_item=True)(rows[0])
    np.testing.assert_allclose(out["ehr"].numpy(), [(93 - 95) / 3, -0.4, (12 - 40) / 60, 0, 1, 0], rtol=1e-6)
    assert out["ehr_imputed"] == "resp_rate" and out["image"] == "img/a.png"
