"""Synthetic emergency-department cohort for oxygen-need prediction: frontal CXR + vitals and labs.

Every encounter has a latent COVID-19 pneumonia severity ``z``. Age, sex and the site set its prior;
``z`` drives the lung opacity of a rendered chest X-ray, every vital sign and lab value (each a
monotone transform of a Gaussian whose mean is linear in ``z``), which labs get ordered (missing not at
random) and the oxygen level needed at 24 h and 72 h (an ordinal model; the 72 h level is the 24 h level
plus a non-negative progression, so it is never lower). The whole model is written out in
``docs/synthetic_ehr.md``.

Because the model is explicit, the generator computes, per encounter, the exact posterior probability of
every outcome given everything a model can observe (the EHR cells as written, which of them are missing,
the site and the opacity that rendered the image) by integrating the latent severity on a grid. The AUC
of that posterior is the Bayes-optimal AUC written to ``dataset.yaml``: no model can do better on these
encounters, so a trained model is measured against the best possible.

Layout written to ``out_dir``::

    encounters.csv              one row per encounter: encounter_id, site, split, image, <EHR>, o2_24h, o2_72h
    encounters_<site>.csv       the same rows, one file per site (for federated runs)
    images/<site>/<id>.png      8-bit frontal CXR
    dataset.yaml                what was made: counts, prevalences, missingness, Bayes-optimal AUCs
    analysis/latent.csv         latent severity, image opacity, corrupted cells (never a model input)
    analysis/bayes_posterior.csv  P(level >= k | observable) per horizon (for analysis and tests)

Oxygen levels: 0 room air, 1 low-flow oxygen, 2 high-flow or non-invasive ventilation, 3 mechanical
ventilation, 4 death.
"""

from __future__ import annotations

import copy
import csv
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image
from scipy.special import expit, log_expit, ndtr
from tqdm import tqdm

from common.io.atomic import atomic_write_bytes, atomic_write_text

OXYGEN_LEVELS = ("room air", "low-flow oxygen", "high-flow or non-invasive ventilation",
                 "mechanical ventilation", "death")
HORIZONS = ("24h", "72h")
OUTCOME_COLUMNS = ("o2_24h", "o2_72h")
# binary outcomes reported in dataset.yaml and by the bundle: name -> (horizon, minimum level)
BINARY_OUTCOMES = {
    f"{name}_{h}": (h, k)
    for h in HORIZONS
    for name, k in (("any_oxygen", 1), ("high_flow_or_more", 2), ("ventilation_or_death", 3), ("death", 4))
}

DEFAULT_CONFIG = Path(__file__).with_name("configs") / "oxygen_risk.yaml"


@dataclass(frozen=True)
class Measurement:
    """Generative model of one EHR column.

    ``g(x) ~ Normal(intercept + b_sev * z + b_age * a + b_male * male + site_offset, sd)`` where
    ``a = (age - 60) / 15`` and ``g`` is ``log`` (right-skewed labs), the identity, or
    ``log(100.5 - x)`` (SpO2, so saturation never exceeds 100 and falls faster as severity grows).
    The value is rounded to ``decimals``. It is observed (ordered / recorded) with probability
    ``sigmoid(obs_logit + obs_sev * z + obs_age * a + site_obs_shift)``: ``obs_sev > 0`` means sicker
    patients get the test more often (missing not at random), ``obs_age`` makes it depend on an
    observed covariate (missing at random).
    """

    name: str
    unit: str
    transform: str
    intercept: float
    b_sev: float
    b_age: float
    b_male: float
    sd: float
    decimals: int
    obs_logit: float
    obs_sev: float = 0.0
    obs_age: float = 0.0
    corrupt_value: str = "-1"  # what a data-entry error writes: a sentinel ("-1", "9999") or "fahrenheit"

    def g(self, x: np.ndarray) -> np.ndarray:
        """The transform to the Gaussian scale (monotone; -inf/+inf at the edges of its domain)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            if self.transform == "log":
                return np.log(np.maximum(x, 0.0))
            if self.transform == "spo2":
                return np.log(np.maximum(100.5 - x, 0.0))
            return np.asarray(x, dtype=np.float64)

    def g_inv(self, t: np.ndarray) -> np.ndarray:
        if self.transform == "log":
            return np.exp(t)
        if self.transform == "spo2":
            return 100.5 - np.exp(t)
        return t

    @property
    def decreasing(self) -> bool:
        return self.transform == "spo2"


# The measurement model (EXAM used about 20 EHR features of the same kind). Coefficients are per unit of
# latent severity z (prior sd about 1); sd is the measurement spread on the transformed scale.
MEASUREMENTS: tuple[Measurement, ...] = (
    Measurement("spo2", "%", "spo2", np.log(2.0), 0.45, 0.05, 0.0, 0.35, 0, 3.5, corrupt_value="9999"),
    Measurement("resp_rate", "/min", "log", np.log(17.0), 0.10, 0.0, 0.0, 0.12, 0, 3.2, corrupt_value="9999"),
    Measurement("heart_rate", "/min", "log", np.log(86.0), 0.06, -0.03, 0.0, 0.13, 0, 3.5, corrupt_value="9999"),
    Measurement("temperature", "degC", "identity", 37.4, 0.25, -0.1, 0.0, 0.6, 1, 3.0, corrupt_value="fahrenheit"),
    Measurement("systolic_bp", "mmHg", "identity", 131.0, -3.5, 6.0, 3.0, 17.0, 0, 3.2, corrupt_value="9999"),
    Measurement("crp", "mg/L", "log", np.log(35.0), 0.5, 0.05, 0.1, 0.7, 1, 1.8, 0.5, 0.2),
    Measurement("d_dimer", "ng/mL FEU", "log", np.log(650.0), 0.35, 0.3, 0.0, 0.75, 0, 0.2, 0.6, 0.3),
    Measurement("ldh", "U/L", "log", np.log(270.0), 0.22, 0.0, 0.05, 0.28, 0, 0.9, 0.5, 0.1),
    Measurement("wbc", "10^9/L", "log", np.log(7.0), 0.08, 0.0, 0.05, 0.35, 1, 2.6, 0.3, 0.2),
    Measurement("lymphocytes", "10^9/L", "log", np.log(1.25), -0.2, -0.12, 0.0, 0.42, 2, 2.2, 0.3, 0.2),
    Measurement("neutrophils", "10^9/L", "log", np.log(4.8), 0.14, 0.03, 0.05, 0.42, 2, 2.2, 0.3, 0.2),
    Measurement("creatinine", "mg/dL", "log", np.log(0.9), 0.1, 0.16, 0.15, 0.3, 2, 2.4, 0.3, 0.3),
    Measurement("ferritin", "ng/mL", "log", np.log(420.0), 0.3, 0.0, 0.35, 0.85, 0, 0.0, 0.5, 0.1),
    Measurement("procalcitonin", "ng/mL", "log", np.log(0.09), 0.3, 0.1, 0.0, 0.95, 2, -0.6, 0.6, 0.2),
    Measurement("glucose", "mmol/L", "log", np.log(6.4), 0.07, 0.1, 0.0, 0.3, 1, 2.0, 0.2, 0.2),
    Measurement("sodium", "mmol/L", "identity", 138.0, -0.8, 0.2, 0.0, 3.2, 0, 2.4, 0.3, 0.2),
    Measurement("troponin", "ng/L", "log", np.log(8.0), 0.28, 0.4, 0.2, 0.95, 0, 0.3, 0.5, 0.5),
    Measurement("ast", "U/L", "log", np.log(36.0), 0.18, -0.05, 0.1, 0.45, 0, 1.2, 0.3, 0.0),
)
EHR_COLUMNS: tuple[str, ...] = ("age", "sex_male", *(m.name for m in MEASUREMENTS))


# --------------------------------------------------------------------------- latent and outcome model
def _softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, x)


def _age_std(age: np.ndarray) -> np.ndarray:
    return (np.asarray(age, dtype=np.float64) - 60.0) / 15.0


def severity_prior_mean(age: np.ndarray, male: np.ndarray, site_shift: np.ndarray, model: dict) -> np.ndarray:
    """Prior mean of the latent severity: ``mu0 + site_shift + b_age * a + b_male * male``."""
    return model["mu0"] + site_shift + model["b_age"] * _age_std(age) + model["b_male"] * male


def outcome_location(z: np.ndarray, age: np.ndarray, male: np.ndarray, model: dict) -> np.ndarray:
    """Location of the 24 h oxygen-need score: ``z + c_old * softplus((age - 70) / 7) + c_male * male``.

    The age term is a hinge: risk climbs steeply past 70 beyond what severity explains, so a site that
    sees only younger patients cannot learn it.
    """
    return z + model["c_old"] * _softplus((np.asarray(age, dtype=np.float64) - 70.0) / 7.0) + model["c_male"] * male


def outcome_probabilities(
    z: np.ndarray, age: np.ndarray, male: np.ndarray, model: dict, n_quad: int = 16
) -> np.ndarray:
    """``P(level >= k | z, age, sex)`` for both horizons.

    24 h score ``u24 = loc + s * Logistic``; level = number of thresholds ``t_k`` below the score.
    72 h score ``u72 = u24 + softplus(p_sev * z + p0 + p_sd * Normal)``, integrated by Gauss-Hermite.

    Returns:
        array ``z.shape + (2, 4)``: horizon (24 h, 72 h) x level k = 1..4.
    """
    thresholds = np.asarray(model["thresholds"], dtype=np.float64)
    loc = outcome_location(z, age, male, model)[..., None]
    s = model["outcome_scale"]
    p24 = expit((loc - thresholds) / s)
    nodes, weights = np.polynomial.hermite_e.hermegauss(n_quad)
    weights = weights / weights.sum()
    # progression (>= 0) depends on z and an independent Normal; the logistic noise is shared by both horizons
    prog = _softplus(model["p_sev"] * np.asarray(z)[..., None] + model["p0"] + model["p_sd"] * nodes)  # (..., Q)
    p72 = np.einsum("...qk,q->...k", expit((loc[..., None, :] + prog[..., :, None] - thresholds) / s), weights)
    return np.stack([p24, p72], axis=-2)


# --------------------------------------------------------------------------- configuration
def load_config(config: str | os.PathLike | dict | None) -> dict:
    """Defaults from ``configs/oxygen_risk.yaml`` updated (recursively) by ``config``."""
    cfg = yaml.safe_load(DEFAULT_CONFIG.read_text())
    if config is None:
        return cfg
    override = config if isinstance(config, dict) else yaml.safe_load(Path(config).read_text()) or {}

    def merge(base: dict, new: dict) -> dict:
        for k, v in new.items():
            base[k] = merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
        return base

    return merge(cfg, copy.deepcopy(override))


def _site_list(cfg: dict) -> list[dict]:
    sites = cfg["sites"]
    n_sites = cfg.get("n_sites")
    if n_sites is not None:
        sites = [sites[i % len(sites)] | {"name": f"site-{i + 1}"} for i in range(int(n_sites))]
    out = []
    for i, s in enumerate(sites):
        merged = copy.deepcopy(cfg["site_defaults"]) | copy.deepcopy(s)
        merged.setdefault("name", f"site-{i + 1}")
        if "n" not in s and cfg.get("n_per_site") is not None:
            merged["n"] = int(cfg["n_per_site"])
        out.append(merged)
    return out


# --------------------------------------------------------------------------- sampling
def _sample_site(rng: np.random.Generator, site: dict, cfg: dict) -> dict[str, Any]:
    n = int(site["n"])
    lat = cfg["latent"]
    out_m = cfg["outcome"]
    age = np.clip(np.round(rng.normal(site["age_mean"], site["age_sd"], n)), 18, 100)
    male = (rng.random(n) < site["male_fraction"]).astype(np.float64)
    z = severity_prior_mean(age, male, site["severity_shift"], lat) + rng.standard_normal(n)
    a = _age_std(age)

    values = np.zeros((n, len(MEASUREMENTS)))
    observed = np.zeros((n, len(MEASUREMENTS)), dtype=bool)
    corrupted = np.zeros_like(observed)
    unavailable = set(site.get("unavailable", []))
    offsets = site.get("offsets", {})
    obs_shift = site.get("order_shift", 0.0)
    for j, m in enumerate(MEASUREMENTS):
        mean = m.intercept + m.b_sev * z + m.b_age * a + m.b_male * male + offsets.get(m.name, 0.0)
        raw = m.g_inv(mean + m.sd * rng.standard_normal(n))
        values[:, j] = np.round(raw, m.decimals)
        p_obs = expit(m.obs_logit + obs_shift * (m.obs_sev > 0) + m.obs_sev * z + m.obs_age * a)
        observed[:, j] = (rng.random(n) < p_obs) & (m.name not in unavailable)
        corrupted[:, j] = observed[:, j] & (rng.random(n) < cfg["entry_error_rate"])

    # image opacity: logit(o) = k (z - z0) + noise; o is the severity the X-ray is rendered with
    img = cfg["image_model"]
    opacity = expit(img["k"] * (z - img["z0"]) + img["sd"] * rng.standard_normal(n))

    # outcomes: ordinal 24 h score, non-negative progression to 72 h
    loc = outcome_location(z, age, male, out_m)
    u = rng.random(n)
    u24 = loc + out_m["outcome_scale"] * np.log(u / (1 - u))
    u72 = u24 + _softplus(out_m["p_sev"] * z + out_m["p0"] + out_m["p_sd"] * rng.standard_normal(n))
    thr = np.asarray(out_m["thresholds"])
    y24 = (u24[:, None] > thr).sum(1)
    y72 = (u72[:, None] > thr).sum(1)
    return dict(age=age, male=male, z=z, values=values, observed=observed, corrupted=corrupted,
                opacity=opacity, y24=y24, y72=y72)


def _render_image(rng: np.random.Generator, opacity: float, site: dict, size: int, render: dict) -> np.ndarray:
    """A frontal CXR with interstitial / ground-glass opacity of extent ``opacity``, site's scanner look."""
    from common.synthetic.cxr import render_cxr

    out = render_cxr(rng, size=size, pediatric=False, pattern="interstitial", severity=float(opacity),
                     config=render or None)
    raw = np.asarray(out["image"])
    x = raw.astype(np.float64) / (np.iinfo(raw.dtype).max if raw.dtype.kind in "ui" else 1.0)
    scanner = site["scanner"]
    # detector / processing differences between hospitals: contrast, brightness, gamma, noise
    x = np.clip(scanner["contrast"] * (x - 0.5) + 0.5 + scanner["brightness"], 0.0, 1.0) ** scanner["gamma"]
    x = x + scanner["noise"] * rng.standard_normal(x.shape)
    return (np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _png_bytes(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img, mode="L").save(buf, format="PNG", optimize=False, compress_level=1)
    return buf.getvalue()


def _format_cell(v: float, decimals: int) -> str:
    return f"{v:.{decimals}f}" if decimals > 0 else str(int(round(v)))


def _corrupt_cell(m: Measurement, v: float) -> str:
    if m.corrupt_value == "fahrenheit":  # entered in the wrong unit
        return f"{v * 9 / 5 + 32:.1f}"
    return m.corrupt_value


# --------------------------------------------------------------------------- Bayes-optimal posterior
def posterior_outcomes(
    data: dict[str, np.ndarray], site_params: Sequence[dict], site_index: np.ndarray, cfg: dict,
    use_ehr: bool = True, use_image: bool = True, grid: np.ndarray | None = None,
) -> np.ndarray:
    """Exact ``P(level >= k | observable)`` per encounter by integrating the latent severity on a grid.

    Observable: age, sex, site, every EHR cell as written (a rounded value is an interval of the
    underlying continuous value), which cells are missing (ordering depends on severity, so missingness
    is informative), which cells are data-entry errors (they are out of range, so recognisable; their
    value carries no information), and the opacity ``o`` that rendered the image (an ideal reader of the
    image). ``use_ehr`` / ``use_image`` drop the lab/vital or image terms (the ideal EHR-only and
    image-only readers; age and sex are kept in both).

    Returns:
        array (N, 2, 4): horizon x level k = 1..4.
    """
    if grid is None:
        grid = np.linspace(-6.0, 9.0, 401)
    lat, img, out_m = cfg["latent"], cfg["image_model"], cfg["outcome"]
    n = len(site_index)
    shift = np.array([s["severity_shift"] for s in site_params])[site_index]
    a = _age_std(data["age"])
    male = data["male"]
    z = grid[None, :]
    mu = severity_prior_mean(data["age"], male, shift, lat)[:, None]
    logp = -0.5 * (z - mu) ** 2
    if use_image:
        logit_o = np.log(data["opacity"]) - np.log1p(-data["opacity"])
        logp += -0.5 * ((logit_o[:, None] - img["k"] * (z - img["z0"])) / img["sd"]) ** 2
    if use_ehr:
        order_shift = np.array([s.get("order_shift", 0.0) for s in site_params])[site_index][:, None]
        for j, m in enumerate(MEASUREMENTS):
            unavailable = np.array([m.name in s.get("unavailable", []) for s in site_params])[site_index]
            offsets = np.array([s.get("offsets", {}).get(m.name, 0.0) for s in site_params])[site_index]
            obs = data["observed"][:, j]
            # ordering (missingness) term; a lab a site does not offer carries no information
            logit = m.obs_logit + order_shift * (m.obs_sev > 0) + m.obs_sev * z + m.obs_age * a[:, None]
            term = np.where(obs[:, None], log_expit(logit), log_expit(-logit))
            term[unavailable] = 0.0
            logp += term
            # value term on the interval the rounded value stands for (entry errors: no information; they are sentinels or wrong units, outside any plausible range)
            val = obs & ~data["corrupted"][:, j]
            if not val.any():
                continue
            v = data["values"][val, j]
            h = 0.5 * 10.0 ** (-m.decimals)
            lo, hi = m.g(v - h), m.g(v + h)
            if m.decreasing:
                lo, hi = hi, lo
            mean = m.intercept + m.b_sev * z + m.b_age * a[val, None] + m.b_male * male[val, None] \
                + offsets[val, None]
            with np.errstate(divide="ignore"):
                pr = ndtr((hi[:, None] - mean) / m.sd) - ndtr((lo[:, None] - mean) / m.sd)
                logp[val] += np.log(np.maximum(pr, 1e-300))
    logp -= logp.max(axis=1, keepdims=True)
    w = np.exp(logp)
    w /= w.sum(axis=1, keepdims=True)
    result = np.zeros((n, 2, 4))
    # outcome probabilities depend on age and sex too: evaluate per encounter on the grid, in chunks
    for start in range(0, n, 256):
        sl = slice(start, start + 256)
        p = outcome_probabilities(np.broadcast_to(grid, (len(data["age"][sl]), grid.size)),
                                  data["age"][sl, None], male[sl, None], out_m)  # (B, G, 2, 4)
        result[sl] = np.einsum("bg,bghk->bhk", w[sl], p)
    return result


def _auc(y: np.ndarray, s: np.ndarray) -> float | None:
    from common.metrics.classification import roc_auc

    v = roc_auc(y, s)
    return None if not np.isfinite(v) else round(float(v), 4)


# --------------------------------------------------------------------------- public entry point
def generate_oxygen_risk(out_dir: str | os.PathLike, config: str | os.PathLike | dict | None = None,
                         seed: int = 0) -> Path:
    """Write a synthetic multi-site CXR + EHR cohort with oxygen outcomes (see the module docstring).

    Args:
        out_dir: output folder (created).
        config: YAML file or dict overriding ``common/synthetic/configs/oxygen_risk.yaml`` (sites, counts,
            image size, split fractions, model coefficients).
        seed: random seed; the same seed and config give identical files.

    Returns:
        ``out_dir``.
    """
    cfg = load_config(config)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sites = _site_list(cfg)
    root_rng = np.random.default_rng(seed)
    site_seeds = root_rng.integers(0, 2**63 - 1, size=len(sites))

    parts, rows, image_jobs = [], [], []
    for si, (site, s_seed) in enumerate(zip(sites, site_seeds)):
        rng = np.random.default_rng(s_seed)
        d = _sample_site(rng, site, cfg)
        n = len(d["z"])
        split_u = rng.random(n)
        fr = cfg["split"]
        split = np.where(split_u < fr["train"], "train", np.where(split_u < fr["train"] + fr["val"], "val", "test"))
        img_seeds = rng.integers(0, 2**63 - 1, size=n)
        d["site_index"] = np.full(n, si)
        d["split"] = split
        d["encounter_id"] = [f"{site['name'].upper().replace('-', '')}-{i:05d}" for i in range(n)]
        parts.append(d)
        for i in range(n):
            image_rel = f"images/{site['name']}/{d['encounter_id'][i]}.png"
            row = {"encounter_id": d["encounter_id"][i], "site": site["name"], "split": split[i], "image": image_rel,
                   "age": str(int(d["age"][i])), "sex_male": str(int(d["male"][i]))}
            for j, m in enumerate(MEASUREMENTS):
                if not d["observed"][i, j]:
                    row[m.name] = ""
                elif d["corrupted"][i, j]:
                    row[m.name] = _corrupt_cell(m, d["values"][i, j])
                else:
                    row[m.name] = _format_cell(d["values"][i, j], m.decimals)
            row["o2_24h"], row["o2_72h"] = str(int(d["y24"][i])), str(int(d["y72"][i]))
            rows.append(row)
            image_jobs.append((image_rel, float(d["opacity"][i]), si, int(img_seeds[i])))

    size = int(cfg["image_size"])
    for image_rel, opacity, si, s in tqdm(image_jobs, desc="oxygen_risk images", disable=not cfg.get("progress", True)):
        img = _render_image(np.random.default_rng(s), opacity, sites[si], size, cfg.get("render", {}))
        atomic_write_bytes(out / image_rel, _png_bytes(img))

    data = {k: np.concatenate([p[k] for p in parts]) for k in
            ("age", "male", "z", "values", "observed", "corrupted", "opacity", "y24", "y72", "site_index", "split")}
    data["encounter_id"] = [e for p in parts for e in p["encounter_id"]]

    header = ["encounter_id", "site", "split", "image", *EHR_COLUMNS, *OUTCOME_COLUMNS]
    _write_csv(out / "encounters.csv", header, rows)
    for site in sites:
        _write_csv(out / f"encounters_{site['name']}.csv", header, [r for r in rows if r["site"] == site["name"]])

    post = posterior_outcomes(data, sites, data["site_index"], cfg)
    post_ehr = posterior_outcomes(data, sites, data["site_index"], cfg, use_image=False)
    post_img = posterior_outcomes(data, sites, data["site_index"], cfg, use_ehr=False)
    oracle = outcome_probabilities(data["z"], data["age"], data["male"], cfg["outcome"])
    _write_analysis(out, data, post)
    summary = _summary(cfg, sites, data, post, post_ehr, post_img, oracle, seed)
    atomic_write_text(out / "dataset.yaml", yaml.safe_dump(summary, sort_keys=False, width=110))
    return out


def _write_csv(path: Path, header: list[str], rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=header, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def _write_analysis(out: Path, data: dict, post: np.ndarray) -> None:
    lat_rows = []
    post_rows = []
    for i, eid in enumerate(data["encounter_id"]):
        bad = [MEASUREMENTS[j].name for j in np.flatnonzero(data["corrupted"][i])]
        lat_rows.append({"encounter_id": eid, "severity": f"{data['z'][i]:.4f}",
                         "image_opacity": f"{data['opacity'][i]:.4f}", "entry_errors": ";".join(bad)})
        pr = {"encounter_id": eid}
        for hi, h in enumerate(HORIZONS):
            for k in range(1, 5):
                pr[f"p_{h}_ge{k}"] = f"{post[i, hi, k - 1]:.6f}"
        post_rows.append(pr)
    _write_csv(out / "analysis" / "latent.csv", list(lat_rows[0]), lat_rows)
    _write_csv(out / "analysis" / "bayes_posterior.csv", list(post_rows[0]), post_rows)


def _summary(cfg, sites, data, post, post_ehr, post_img, oracle, seed) -> dict:
    y = {"24h": data["y24"], "72h": data["y72"]}
    subsets = {"all": np.ones(len(data["y24"]), bool), "test": data["split"] == "test"}
    bayes, bayes_ehr, bayes_img, oracle_auc, prevalence = {}, {}, {}, {}, {}
    for name, (h, k) in BINARY_OUTCOMES.items():
        hi = HORIZONS.index(h)
        lab = y[h] >= k
        bayes[name] = {s: _auc(lab[m], post[m, hi, k - 1]) for s, m in subsets.items()}
        bayes_ehr[name] = _auc(lab[subsets["test"]], post_ehr[subsets["test"], hi, k - 1])
        bayes_img[name] = _auc(lab[subsets["test"]], post_img[subsets["test"], hi, k - 1])
        oracle_auc[name] = _auc(lab[subsets["test"]], oracle[subsets["test"], hi, k - 1])
        prevalence[name] = round(float(lab.mean()), 4)
    site_summary = []
    for si, s in enumerate(sites):
        m = data["site_index"] == si
        site_summary.append({
            "name": s["name"], "csv": f"encounters_{s['name']}.csv", "n": int(m.sum()),
            "n_train": int((m & (data["split"] == "train")).sum()), "n_val": int((m & (data["split"] == "val")).sum()),
            "n_test": int((m & (data["split"] == "test")).sum()),
            "age_mean": round(float(data["age"][m].mean()), 1), "male_fraction": round(float(data["male"][m].mean()), 3),
            "any_oxygen_24h": round(float((data["y24"][m] >= 1).mean()), 3),
            "ventilation_or_death_72h": round(float((data["y72"][m] >= 3).mean()), 3),
            "labs_not_offered": list(s.get("unavailable", [])), "scanner": s["scanner"],
        })
    missing = {m.name: round(float(1 - data["observed"][:, j].mean()), 3) for j, m in enumerate(MEASUREMENTS)}
    return {
        "name": "oxygen_risk",
        "description": "Synthetic multi-site emergency-department cohort: frontal CXR + vitals/labs, "
                       "oxygen level needed at 24 h and 72 h (SYNTHETIC, not patient data).",
        "generator": "common.synthetic.ehr_cohort.generate_oxygen_risk",
        "seed": int(seed),
        "layout": {"csv": "encounters.csv", "per_site_csv": "encounters_<site>.csv",
                   "images": "images/<site>/<encounter_id>.png",
                   "columns": ["encounter_id", "site", "split", "image", *EHR_COLUMNS, *OUTCOME_COLUMNS],
                   "image_size": int(cfg["image_size"]), "missing_cell": "empty"},
        "oxygen_levels": {i: name for i, name in enumerate(OXYGEN_LEVELS)},
        "n_encounters": int(len(data["y24"])),
        "n_per_split": {s: int((data["split"] == s).sum()) for s in ("train", "val", "test")},
        "sites": site_summary,
        "prevalence": prevalence,
        "missing_fraction": missing,
        "entry_error_cells": int(data["corrupted"].sum()),
        "bayes_optimal_auc": bayes,
        "bayes_optimal_auc_ehr_only_test": bayes_ehr,
        "bayes_optimal_auc_image_only_test": bayes_img,
        "oracle_latent_auc_test": oracle_auc,
        "bayes_optimal_definition": (
            "AUC of the exact posterior P(outcome | age, sex, site, every EHR cell as written (rounded values "
            "as intervals, entry errors as uninformative), the missingness pattern, and the opacity parameter "
            "that rendered the image), computed by integrating the latent severity on a 401-point grid. "
            "Treating the image as its opacity parameter assumes an ideal reader, so this is an upper bound "
            "for a model that sees pixels. oracle_latent_auc uses the latent severity itself (not observable)."),
        "config": cfg,
    }
