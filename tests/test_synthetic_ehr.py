"""The synthetic CXR + EHR oxygen-risk cohort: layout, ground truth, Bayes-optimal AUC, determinism."""

from __future__ import annotations

import csv
import hashlib

import numpy as np
import pytest
import yaml
from PIL import Image

from common.synthetic import ehr_cohort as ec

SMALL = {"n_per_site": 24, "image_size": 64, "progress": False, "render": {"pool_size": 1}}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return ec.generate_oxygen_risk(tmp_path_factory.mktemp("o2") / "cohort", SMALL, seed=3)


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_layout_and_columns(cohort):
    rows = _rows(cohort / "encounters.csv")
    assert len(rows) == 3 * 24
    assert list(rows[0]) == ["encounter_id", "site", "split", "image", *ec.EHR_COLUMNS, "o2_24h", "o2_72h"]
    for r in rows[:10]:
        img = Image.open(cohort / r["image"])
        assert img.mode == "L" and img.size == (64, 64)
        assert r["image"] == f"images/{r['site']}/{r['encounter_id']}.png"
    per_site = {s: _rows(cohort / f"encounters_{s}.csv") for s in ("site-1", "site-2", "site-3")}
    assert sum(len(v) for v in per_site.values()) == len(rows)
    assert all(r["site"] == s for s, v in per_site.items() for r in v)
    meta = yaml.safe_load((cohort / "dataset.yaml").read_text())
    assert meta["n_encounters"] == 72 and [s["name"] for s in meta["sites"]] == ["site-1", "site-2", "site-3"]


def test_outcomes_monotone_and_missingness(cohort):
    rows = _rows(cohort / "encounters.csv")
    y24 = np.array([int(r["o2_24h"]) for r in rows])
    y72 = np.array([int(r["o2_72h"]) for r in rows])
    assert ((0 <= y24) & (y24 <= 4)).all() and (y72 >= y24).all()
    assert (y72 > y24).any()  # progression happens
    empty = {c: sum(r[c] == "" for r in rows) for c in ec.EHR_COLUMNS}
    assert empty["age"] == 0 and empty["sex_male"] == 0
    assert empty["ferritin"] > empty["spo2"]  # labs are missing far more often than vitals
    # site-1 never measures ferritin / procalcitonin / troponin
    s1 = [r for r in rows if r["site"] == "site-1"]
    assert all(r["ferritin"] == "" and r["troponin"] == "" for r in s1)
    spo2 = [float(r["spo2"]) for r in rows if r["spo2"] not in ("", "9999")]
    assert max(spo2) <= 100


def test_missingness_depends_on_severity(tmp_path):
    # labs are ordered more often for sicker patients (MNAR): compare ordering rates by latent severity
    cfg = ec.load_config(None)
    site = ec._site_list(cfg)[2] | {"n": 4000}
    d = ec._sample_site(np.random.default_rng(0), site, cfg)
    j = [m.name for m in ec.MEASUREMENTS].index("ldh")
    sick = d["z"] > np.median(d["z"])
    assert d["observed"][sick, j].mean() > d["observed"][~sick, j].mean() + 0.1


def test_sites_are_shifted():
    cfg = ec.load_config(None)
    rng = np.random.default_rng(1)
    stats = []
    for site in ec._site_list(cfg):
        d = ec._sample_site(rng, site | {"n": 3000}, cfg)
        stats.append((d["age"].mean(), (d["y24"] >= 1).mean()))
    ages, prev = zip(*stats)
    assert ages[1] - ages[0] > 20  # referral centre much older than the community hospital
    assert prev[1] > prev[2] > prev[0]  # and sicker


def test_bayes_auc_sane(cohort):
    meta = yaml.safe_load((cohort / "dataset.yaml").read_text())
    bayes = meta["bayes_optimal_auc"]
    assert set(bayes) == set(ec.BINARY_OUTCOMES)
    for name, v in bayes.items():
        assert 0.7 < v["all"] <= 1.0, name
    # the posterior must be calibrated: mean predicted risk close to the observed rate on a bigger sample
    post = _rows(cohort / "analysis" / "bayes_posterior.csv")
    rows = _rows(cohort / "encounters.csv")
    p = np.array([float(r["p_24h_ge1"]) for r in post])
    y = np.array([int(r["o2_24h"]) >= 1 for r in rows])
    assert abs(p.mean() - y.mean()) < 0.15
    # P(level >= k) decreasing in k, 72 h >= 24 h
    for r in post:
        p24 = [float(r[f"p_24h_ge{k}"]) for k in range(1, 5)]
        p72 = [float(r[f"p_72h_ge{k}"]) for k in range(1, 5)]
        assert all(a >= b - 1e-9 for a, b in zip(p24, p24[1:]))
        assert all(b >= a - 1e-9 for a, b in zip(p24, p72))


def test_bayes_posterior_beats_oracle_free_baselines():
    """On a big EHR-only sample the exact posterior is calibrated and its AUC is the best of any score."""
    cfg = ec.load_config(None)
    sites = ec._site_list(cfg)
    rng = np.random.default_rng(5)
    parts = [ec._sample_site(rng, s | {"n": 1500}, cfg) for s in sites]
    data = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    site_index = np.concatenate([np.full(1500, i) for i in range(len(sites))])
    post = ec.posterior_outcomes(data, sites, site_index, cfg)
    y = data["y24"] >= 1
    p = post[:, 0, 0]
    # calibration in deciles of predicted risk
    order = np.argsort(p)
    for chunk in np.array_split(order, 10):
        assert abs(p[chunk].mean() - y[chunk].mean()) < 0.08
    from common.metrics.classification import roc_auc

    bayes = roc_auc(y, p)
    # a simple score (SpO2 alone, higher risk when lower) is worse than the posterior
    j = [m.name for m in ec.MEASUREMENTS].index("spo2")
    spo2 = np.where(data["observed"][:, j] & ~data["corrupted"][:, j], data["values"][:, j], 97.0)
    assert bayes > roc_auc(y, -spo2) + 0.05
    # the oracle that knows the latent severity is at least as good
    oracle = ec.outcome_probabilities(data["z"], data["age"], data["male"], cfg["outcome"])[:, 0, 0]
    assert roc_auc(y, oracle) >= bayes - 0.005


def test_same_seed_same_bytes(tmp_path):
    cfg = {"n_per_site": 4, "image_size": 48, "progress": False, "render": {"pool_size": 1}}
    a = ec.generate_oxygen_risk(tmp_path / "a", cfg, seed=7)
    b = ec.generate_oxygen_risk(tmp_path / "b", cfg, seed=7)
    c = ec.generate_oxygen_risk(tmp_path / "c", cfg, seed=8)

    def digest(root):
        return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file()}

    assert digest(a) == digest(b)
    assert (a / "encounters.csv").read_bytes() != (c / "encounters.csv").read_bytes()
