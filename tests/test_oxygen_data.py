"""Encounter CSV reading (common.data.oxygen_csv) and calibration metrics (common.metrics.calibration)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from common.data import oxygen_csv
from common.errors import InputDataError
from common.metrics.calibration import (
    brier_score,
    calibration_summary,
    expected_calibration_error,
    plot_reliability_diagram,
    reliability_curve,
)

FEATURES = ["age", "spo2", "crp"]


def _write(path, text):
    path.write_text(text)
    return path


def test_read_encounters_items(tmp_path):
    csv_path = _write(tmp_path / "enc.csv", "encounter_id,site,split,image,age,spo2,crp,o2_24h,o2_72h\n"
                      "E1,a,train,img/1.png,70,91,,2,3\n"
                      "E2,a,test,,40,,12.5,0,0\n"
                      "E3,b,val,/abs/3.png,55,97,3,1,0\n")
    items = oxygen_csv.read_encounters(csv_path, FEATURES)
    assert [i["encounter_id"] for i in items] == ["E1", "E2", "E3"]
    assert items[0]["image"] == str(tmp_path / "img/1.png") and items[1]["image"] == ""
    # an absolute path is refused for the row (kept, with its error) unless the user opts in
    assert items[2]["image"] == "" and "row 4: absolute image path refused" in items[2]["error"]
    assert "error" not in items[0] and "error" not in items[1]
    opted_in = oxygen_csv.read_encounters(csv_path, FEATURES, allow_outside_root=True)
    assert opted_in[2]["image"] == "/abs/3.png" and "error" not in opted_in[2]
    assert items[0]["ehr"] == {"age": "70", "spo2": "91", "crp": None}
    assert items[0]["label"] == [1, 1, 0, 0, 1, 1, 1, 0]
    # 72 h level below the 24 h level is corrected (the 72 h level is the maximum within 72 h)
    assert items[2]["o2_72h"] == 1 and items[2]["label"][4] == 1
    assert [i["encounter_id"] for i in oxygen_csv.read_encounters(csv_path, FEATURES, split="test")] == ["E2"]


def test_missing_column_and_bad_outcome(tmp_path):
    csv_path = _write(tmp_path / "enc.csv", "encounter_id,image,age,spo2,o2_24h,o2_72h\nE1,x.png,1,2,0,0\n")
    with pytest.raises(InputDataError, match="enc.csv: missing column.*crp"):
        oxygen_csv.read_encounters(csv_path, FEATURES)
    bad = _write(tmp_path / "bad.csv", "encounter_id,image,age,spo2,crp,o2_24h,o2_72h\nE1,x.png,1,2,3,5,5\n")
    with pytest.raises(InputDataError, match="row 2: o2_24h must be an oxygen level 0-4"):
        oxygen_csv.read_encounters(bad, FEATURES)
    with pytest.raises(InputDataError, match="not found"):
        oxygen_csv.read_encounters(tmp_path / "nope.csv", FEATURES)
    # inference does not need outcomes; training skips rows without them
    no_y = _write(tmp_path / "noy.csv", "encounter_id,image,age,spo2,crp,o2_24h,o2_72h\nE1,x.png,1,2,3,,\nE2,x.png,1,2,3,1,1\n")
    assert len(oxygen_csv.read_encounters(no_y, FEATURES)) == 2
    assert [i["encounter_id"] for i in oxygen_csv.read_encounters(no_y, FEATURES, require_outcomes=True)] == ["E2"]


def test_hash_split_is_stable_and_proportional(tmp_path):
    rows = "".join(f"E{i},x.png,1,2,3,0,0\n" for i in range(2000))
    csv_path = _write(tmp_path / "enc.csv", "encounter_id,image,age,spo2,crp,o2_24h,o2_72h\n" + rows)
    items = oxygen_csv.read_encounters(csv_path, FEATURES, val_fraction=0.15, test_fraction=0.25)
    frac = {s: np.mean([i["split"] == s for i in items]) for s in ("train", "val", "test")}
    assert abs(frac["test"] - 0.25) < 0.04 and abs(frac["val"] - 0.15) < 0.04
    again = oxygen_csv.read_encounters(csv_path, FEATURES)
    assert [i["split"] for i in items] == [i["split"] for i in again]


def test_prepare_datalist(tmp_path):
    spec = _write(tmp_path / "spec.yaml", "features:\n" + "".join(
        f"  - {{name: {n}, unit: u, min: 0, max: 500, default: 1, mean: 0, std: 1}}\n" for n in FEATURES))
    (tmp_path / "data").mkdir()
    _write(tmp_path / "data" / "encounters.csv", "encounter_id,split,image,age,spo2,crp,o2_24h,o2_72h\n"
           "E1,train,images/1.png,70,91,,2,3\nE2,test,images/2.png,40,,12.5,0,0\n")
    out = oxygen_csv.prepare(tmp_path / "data", tmp_path / "data" / "datalist.json", feature_spec=spec)
    dl = json.loads(out.read_text())
    assert [i["encounter_id"] for i in dl["training"]] == ["E1"] and dl["testing"][0]["image"] == "images/2.png"
    items = oxygen_csv.load_split(tmp_path / "data", "datalist.json", "train", FEATURES)
    assert items[0]["image"] == str(tmp_path / "data" / "images/1.png")


def test_calibration_metrics(tmp_path):
    rng = np.random.default_rng(0)
    p = rng.random(20000)
    y = rng.random(20000) < p  # perfectly calibrated
    assert expected_calibration_error(y, p) < 0.02
    assert abs(brier_score(y, p) - np.mean(p * (1 - p))) < 0.01
    over = np.clip(p + 0.2, 0, 1)  # over-confident in risk
    assert expected_calibration_error(y, over) > 0.15
    assert brier_score([1, 0], [1.0, 0.0]) == 0.0 and brier_score([1, 0], [0.0, 1.0]) == 1.0
    curve = reliability_curve(y, p, n_bins=5)
    assert curve["count"].sum() == 20000 and np.allclose(curve["observed"], curve["mean_predicted"], atol=0.03)
    q = reliability_curve(y, p, n_bins=4, strategy="quantile")
    assert np.all(np.abs(q["count"] - 5000) <= 1)
    s = calibration_summary(y, p)
    assert set(s) == {"brier", "ece", "mean_predicted", "observed_rate", "bins"} and json.dumps(s)
    png = plot_reliability_diagram({"calibrated": (y, p), "over": (y, over)}, tmp_path / "rel.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError):
        brier_score([0, 1], [0.5, 1.5])


def test_estimate_spec(tmp_path):
    from common.oxygen.features import estimate_spec
    from common.transforms.ehr import FeatureSpec

    spec = _write(tmp_path / "spec.yaml", "features:\n"
                  "  - {name: age, unit: years, min: 0, max: 120, default: 50, mean: 50, std: 10}\n"
                  "  - {name: spo2, unit: '%', min: 50, max: 100, default: 97, mean: 97, std: 2}\n"
                  "  - {name: crp, unit: mg/L, min: 0, max: 1000, default: 10, mean: 10, std: 5}\n")
    rows = "".join(f"E{i},train,x.png,{60 + i % 5},{90 if i % 2 else 9999},,0,0\n" for i in range(40))
    csv_path = _write(tmp_path / "enc.csv", "encounter_id,split,image,age,spo2,crp,o2_24h,o2_72h\n" + rows)
    out = FeatureSpec.from_yaml(estimate_spec(csv_path, spec, tmp_path / "new.yaml"))
    assert out["age"].mean == pytest.approx(62.0) and out["age"].default == 62.0
    assert out["spo2"].mean == 90.0 and out["spo2"].std == 2.0  # 9999 ignored; zero spread keeps the old std
    assert out["crp"].mean == 10.0  # never measured: unchanged
