"""Synthetic retinal OCT B-scans (CNV, DME, DRUSEN, NORMAL) in the Kermany OCT2017 layout.

The retina is a stack of layers between boundary curves across the scan (ILM, RNFL, GCL, IPL, INL,
OPL, ONL, ELM, myoid zone, ellipsoid zone, interdigitation zone, RPE, Bruch's membrane, choroid,
sclera). Layer thicknesses follow the macula's anatomy as a function of the distance from the fovea
(inner layers displaced from a foveal pit, outer nuclear layer thickest at the fovea, a nasal-temporal
asymmetry of the nerve fibre layer), on top of a tilted and curved RPE. Disease changes the geometry
before the image is formed:

* **DRUSEN**: dome-shaped deposits between the RPE and Bruch's membrane lift the RPE and the outer
  retina (the lesion mask is the deposit).
* **CNV**: either under the RPE (type 1: one broad, irregular fibrovascular pigment-epithelial
  detachment filled with heterogeneous tissue, sometimes serous) or above it (type 2: hyperreflective
  material breaking through the RPE), usually with a dome of dark sub-retinal fluid, sometimes with
  intraretinal cysts, the retina thickened over it (the mask is lesion + fluid).
* **DME**: a thickened retina (inner and outer nuclear and plexiform layers swell, the foveal pit fills
  in) with dark cystoid fluid spaces in the INL and OPL/ONL, hyperreflective foci, sometimes a shallow
  sub-retinal fluid (the mask is the fluid).

Image formation: per pixel reflectivity, round-trip attenuation along each A-scan (so dense lesions
shadow the choroid), the depth roll-off of spectral-domain OCT, lateral vignetting, spatially
correlated multiplicative speckle (the squared magnitude of a smoothed complex Gaussian field, averaged
over a few looks like frame averaging does), an additive noise floor, shadows of retinal vessels down the
A-scans, and a logarithmic display with the export's grey curve. The layer reflectivities were set so the
median A-scan of a synthetic NORMAL scan follows that of real Spectralis scans (OCT2017 NORMAL, aligned at
the RPE), and the image's grey-level percentiles those of the real scans. ``simulate_export`` then rotates
and shifts a share of the scans with white fill, as registered viewer exports are.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from common.synthetic._io import parallel_map, save_gray_jpeg, save_mask_png
from common.synthetic.config import draw_uniform, load_config, merge_config, write_dataset_yaml

__all__ = ["CLASSES", "DEFAULT_CONFIG", "render_oct", "simulate_export", "generate_oct"]

CLASSES = ("CNV", "DME", "DRUSEN", "NORMAL")

DEFAULT_CONFIG: dict[str, Any] = {
    "image_size": [224, 224],  # (rows, columns) of each B-scan
    "splits": {
        # B-scans per class (CNV, DME, DRUSEN, NORMAL) in each split
        "train": {"CNV": 24, "DME": 24, "DRUSEN": 24, "NORMAL": 24},
        "test": {"CNV": 6, "DME": 6, "DRUSEN": 6, "NORMAL": 6},
    },
    "scans_per_patient": [1, 4],  # inclusive range of B-scans per patient (the name's last number)
    "jpeg_quality": 90,
    "write_masks": True,
    "num_workers": 1,  # processes rendering in parallel (the files are identical for any value)
    "render": {
        # geometry and look of a Heidelberg Spectralis macular B-scan, the scanner of OCT2017: 496 rows of
        # 3.9 um (1.9 mm deep), 512-1536 columns over 6-9 mm; the retina fills about a seventh of the depth
        "scan_width_mm": [5.5, 9.0],  # lateral extent of the B-scan
        "depth_um": [1850.0, 1980.0],  # axial extent shown in the image
        "rpe_depth_fraction": [0.3, 0.62],  # where the RPE sits at the scan centre, fraction of the height
        "tilt_deg": [-8.0, 8.0],  # tilt of the retina across the scan
        "curvature": [-0.5, 5.0],  # RPE bow, um per mm^2 x 10 (positive: the edges rise)
        "fovea_offset_mm": [-0.8, 0.8],
        "thickness_scale": [0.9, 1.2],  # individual variation of retinal thickness
        "choroid_reflectivity": [0.12, 0.3],  # choroidal stroma, darker than the RPE, fading with depth
        "vessel_shadows": [0, 6],  # inclusive range of retinal vessels casting a shadow down the A-scans
        "lesion_extent": [0.4, 1.0],  # scales lesion size: real disease runs from a few small cysts to large
        "rpe_irregularity_um": [1.0, 5.0],  # amplitude of the RPE's fine undulation, any class
        "cnv_ped_probability": 0.5,  # CNV under the RPE (type 1, fibrovascular PED) rather than above it
        "speckle_looks": [2, 8],  # frames averaged (fewer looks = grainier)
        "speckle_grain_px": [0.6, 1.0],  # speckle correlation length (rows; columns are 1.6x)
        "noise_floor": [0.001, 0.005],
        "dynamic_range_db": [44.0, 52.0],
        "display_gamma": [1.3, 1.9],  # the export's grey-scale curve on top of the log display
        "vignetting": [0.0, 0.5],  # fractional intensity loss at the lateral edges
        "rolloff_um": [1500.0, 3000.0],  # 1/e depth of the SD-OCT sensitivity roll-off
        # extra attenuation per mm below Bruch's membrane (melanin and blood of the choroid): how fast the
        # choroid and sclera fade into the dark at the bottom of a Spectralis scan
        "choroid_attenuation_per_mm": [0.0, 0.0],
        "drusen_height_um": [20.0, 85.0],  # peak height of one druse (before lesion_extent scales it)
        "drusen_reflectivity": 0.38,  # the deposits' content (the RPE draped over them is brighter)
        # reflectivity of fluid (cysts, sub-retinal fluid); null: 0.012 in the retina, 0.01 under it
        "fluid_reflectivity": None,
        # CNV disorganises the outer retina: 0 draws the smooth dome of earlier sets; up to 1, a rougher
        # lesion outline, a fragmented RPE and ellipsoid zone over it, exudate specks and more often cysts
        "cnv_disruption": 0.0,
        "choroid_vessel_scale": 1.0,  # size of the choroid's dark vessel lumens (1: 20-100 um)
        "choroid_lumen_contrast": 0.5,  # a lumen's reflectivity, times the stroma's around it (1: no lumens)
        "vessel_brightness": 0.2,  # a retinal vessel's cross-section (signal before attenuation; 0: only its shadow)
        # chance of sub-retinal fluid with a CNV lesion; null: 0.55 under the RPE (type 1), 0.85 above it (type 2)
        "cnv_fluid_probability": None,
        # height of the CNV lesion, its PED and the fluid over it, times the earlier sets' (60-220 um PED,
        # 40-150 um lesion, 30-160 um fluid at full extent); real CNV is often lower and broad
        "cnv_height_scale": 1.0,
        # share of CNV scans with drusen beside the lesion (wet AMD grows in an eye with drusen)
        "cnv_drusen_probability": 0.0,
        # share of DME scans that are subtle: foveal pit kept, hardly thickened, one to three small cysts
        "dme_subtle_probability": 0.0,
    },
    "export": {
        # the viewer's export: B-scans registered to the fundus image are rotated and shifted, and the
        # uncovered corners filled white (27 of the 48 real OCT2017 scans here have over 0.5% white fill;
        # a third is drawn, so the network sees both)
        "fill_probability": 0.35,
        "rotation_deg": [-6.0, 6.0],
        "shift_fraction": [0.0, 0.06],  # vertical shift, fraction of the height
    },
}

# reflectivity of each layer (linear, before speckle), from the vitreous down to the sclera; the ratios
# give Spectralis' median A-scan profile of a normal macula (OCT2017 NORMAL scans, aligned at the RPE)
_LAYERS = (
    ("vitreous", 0.002),
    ("RNFL", 0.2),
    ("GCL", 0.08),
    ("IPL", 0.12),
    ("INL", 0.045),
    ("OPL", 0.11),
    ("ONL", 0.03),
    ("ELM", 0.1),
    ("myoid", 0.035),
    ("EZ", 0.4),
    ("IZ", 0.15),
    ("RPE", 0.90),
    ("choroid", 0.42),  # replaced per scan by ``choroid_reflectivity``
    ("sclera", 0.03),
)
BOUNDARY_NAMES = (
    "ILM",
    "RNFL/GCL",
    "GCL/IPL",
    "IPL/INL",
    "INL/OPL",
    "OPL/ONL",
    "ELM_top",
    "ELM_bottom",
    "EZ_top",
    "EZ/IZ",
    "RPE_top",
    "Bruch",
    "choroid/sclera",
)


def _dome(x: np.ndarray, center: float, half_width: float, height: float, power: float = 0.6) -> np.ndarray:
    t = np.clip(1.0 - ((x - center) / half_width) ** 2, 0.0, None)
    return height * t**power


def _drusen(rng: np.random.Generator, x: np.ndarray, fovea: float, extent: float, cfg: dict) -> np.ndarray:
    """Heights (um) of one to seven drusen, smooth domes scattered about the fovea, summed where they meet."""
    height = np.zeros(x.shape)
    for _ in range(int(rng.integers(1, 2 + int(round(6 * extent))))):
        c = fovea + rng.normal(0, 0.9)
        height += _dome(x, c, rng.uniform(0.08, 0.4) * extent, draw_uniform(rng, cfg["drusen_height_um"]) * extent, power=0.7)
    return np.minimum(height, 160.0)


def _layer_thicknesses(r_mm: np.ndarray, nasal: np.ndarray, scale: float) -> dict[str, np.ndarray]:
    """Thickness (um) of each layer above the RPE as a function of the distance from the fovea."""
    pit = 1.0 - np.exp(-((r_mm / 0.55) ** 2))  # 0 at the foveola
    decline = np.exp(-np.maximum(r_mm - 1.3, 0.0) / 2.5)
    t = {
        "RNFL": 4.0 + (18.0 + 28.0 * nasal) * (1.0 - np.exp(-((r_mm / 1.1) ** 2))),
        "GCL": 2.0 + 50.0 * pit * decline,
        "IPL": 4.0 + 36.0 * pit * (0.6 + 0.4 * decline),
        "INL": 6.0 + 30.0 * pit,
        "OPL": 12.0 + 18.0 * pit,
        "ONL": 55.0 + 50.0 * np.exp(-((r_mm / 0.7) ** 2)),
        "ELM": np.full_like(r_mm, 4.0),
        "myoid": np.full_like(r_mm, 22.0) + 8.0 * np.exp(-((r_mm / 0.5) ** 2)),
        "EZ": np.full_like(r_mm, 14.0),
        "IZ": np.full_like(r_mm, 12.0),
    }
    return {k: v * scale for k, v in t.items()}


def _intraretinal_cysts(
    rng: np.random.Generator, b: dict[str, np.ndarray], x: np.ndarray, yy: np.ndarray, centre: float, n: int,
    size: float = 1.0,
) -> np.ndarray:
    """Mask of ``n`` cystoid fluid spaces in the INL, OPL and ONL around ``centre`` (mm across the scan), ``size``
    times the usual height and width."""
    cysts = np.zeros((yy.shape[0], x.shape[0]), dtype=bool)
    for _ in range(n):
        cx = centre + rng.normal(0, 0.7)
        ci = int(np.clip(np.searchsorted(x, cx), 0, x.shape[0] - 1))
        layer = rng.choice(["INL", "OPL", "ONL"], p=[0.4, 0.25, 0.35])
        lo_b, hi_b = {
            "INL": ("IPL/INL", "INL/OPL"),
            "OPL": ("INL/OPL", "OPL/ONL"),
            "ONL": ("OPL/ONL", "ELM_top"),
        }[layer]
        lo, hi = sorted((b[lo_b][ci], b[hi_b][ci]))  # a steep lesion can push the ELM above the OPL
        cy = rng.uniform(lo, hi)
        ry = max(rng.uniform(0.35, 0.7) * (hi - lo) * size, 8.0)
        rx_mm = rng.uniform(0.04, 0.22) * (1.5 if layer == "ONL" else 1.0) * size
        inside = ((yy - cy) / ry) ** 2 + (((x[None, :] - cx) / rx_mm) ** 2) < 1.0
        cysts |= inside & (yy > b["ILM"][None, :] + 10) & (yy < b["ELM_top"][None, :])
    return cysts


def render_oct(
    rng: np.random.Generator,
    label: str = "NORMAL",
    size: tuple[int, int] = (224, 224),
    config: dict | None = None,
) -> dict[str, Any]:
    """Render one macular OCT B-scan.

    Args:
        rng: random generator (all randomness comes from it).
        label: ``"CNV"``, ``"DME"``, ``"DRUSEN"`` or ``"NORMAL"``.
        size: (rows, columns).
        config: overrides of ``DEFAULT_CONFIG["render"]`` ranges.

    Returns:
        dict with ``image`` (H, W) uint8, ``lesion_mask`` (H, W) uint8 (0/1; empty for NORMAL),
        ``boundaries`` (name -> (W,) row of each layer boundary, after the lesion has deformed it) and
        ``label``.
    """
    if label not in CLASSES:
        raise ValueError(f"label must be one of {CLASSES}, got {label!r}")
    cfg = merge_config(DEFAULT_CONFIG["render"], config, source="render config")
    h, w = (int(s) for s in size)
    width_mm = draw_uniform(rng, cfg["scan_width_mm"])
    depth_um = draw_uniform(rng, cfg["depth_um"])
    um_per_px = depth_um / h
    x = np.linspace(-width_mm / 2, width_mm / 2, w)
    fovea = draw_uniform(rng, cfg["fovea_offset_mm"])
    r = np.abs(x - fovea)
    # the nerve fibre layer thickens towards the optic disc (nasal side, either side of the image)
    nasal_side = rng.choice([-1.0, 1.0])
    nasal = np.clip(nasal_side * (x - fovea) / 3.0, 0.0, 1.0)
    scale = draw_uniform(rng, cfg["thickness_scale"])
    thick = _layer_thicknesses(r, nasal, scale)
    extent = draw_uniform(rng, cfg["lesion_extent"])
    um_per_col = width_mm * 1000.0 / w

    # RPE top (um below the top of the image): tilt + bow + a gentle wobble
    tilt = np.tan(np.deg2rad(draw_uniform(rng, cfg["tilt_deg"]))) * 1000.0  # um per mm
    bow = draw_uniform(rng, cfg["curvature"]) * 10.0
    wobble = ndimage.gaussian_filter1d(rng.normal(0, 1, w), w / 12) * 40.0
    rpe_top = draw_uniform(rng, cfg["rpe_depth_fraction"]) * depth_um + tilt * x - bow * x**2 + wobble
    # an ageing RPE is never a ruled line: small undulations tens of um long, in every class
    ripple_cols = max(20.0 / um_per_col, 1.0)
    rpe_top = rpe_top + ndimage.gaussian_filter1d(rng.normal(0, 1, w), ripple_cols) * draw_uniform(rng, cfg["rpe_irregularity_um"]) * np.sqrt(ripple_cols)
    rpe_thick = np.full(w, 22.0 * scale) + ndimage.gaussian_filter1d(rng.normal(0, 1, w), w / 30) * 3.0
    choroid = 200.0 + 80.0 * np.exp(-(((x - fovea) / 3.0) ** 2)) + rng.normal(0, 30)

    lesion_masks: list[np.ndarray] = []
    fluid_in = np.float32(0.012 if cfg["fluid_reflectivity"] is None else cfg["fluid_reflectivity"])
    fluid_under = np.float32(0.01 if cfg["fluid_reflectivity"] is None else cfg["fluid_reflectivity"])
    rows = (np.arange(h, dtype=np.float32) + 0.5) * um_per_px  # depth of each row centre, um
    yy = rows[:, None]

    # ---- disease geometry (um) ----
    bruch_lift = np.zeros(w)  # RPE lifted off Bruch's membrane (drusen, PED)
    sub_retinal = np.zeros(w)  # neurosensory retina lifted off the RPE (fluid / CNV lesion)
    drusen_height = np.zeros(w)
    ped_height = np.zeros(w)
    cnv_height = np.zeros(w)
    srf_height = np.zeros(w)
    swell = np.ones(w)  # thickening factor of the nuclear and plexiform layers (DME)
    pit_fill = 0.0
    cnv_cysts = False
    subtle_dme = False
    if label == "DRUSEN":
        drusen_height = _drusen(rng, x, fovea, extent, cfg)
        bruch_lift = drusen_height
    elif label == "CNV":
        c = fovea + rng.normal(0, 0.4)
        ped_type = rng.random() < float(cfg["cnv_ped_probability"])
        if ped_type:
            # type 1: a fibrovascular pigment-epithelial detachment, one broad irregular elevation of the RPE
            # filled with heterogeneous material (drusen are several small smooth domes)
            ped_height = _dome(x, c, rng.uniform(0.4, 1.2) * extent, rng.uniform(60, 220) * extent, power=0.6)
            ped_height *= 1.0 + 0.35 * ndimage.gaussian_filter1d(rng.normal(0, 1, w), max(w / 60, 1.0))
            ped_height = np.clip(ped_height, 0, None)
            bruch_lift = ped_height
        else:
            # type 2: hyperreflective material above the RPE, which it breaks through
            cnv_height = _dome(x, c, rng.uniform(0.3, 1.0) * extent, rng.uniform(40, 150) * extent, power=0.8)
            cnv_height *= 1.0 + 0.25 * ndimage.gaussian_filter1d(rng.normal(0, 1, w), w / 40)
            cnv_height = np.clip(cnv_height, 0, None)
        fluid_probability = (0.55 if ped_type else 0.85) if cfg["cnv_fluid_probability"] is None else float(cfg["cnv_fluid_probability"])
        if rng.random() < fluid_probability:
            srf_height = _dome(
                x, c + rng.normal(0, 0.3), rng.uniform(0.4, 1.8) * extent, rng.uniform(30, 160) * extent, power=0.9
            )
        disruption = float(cfg["cnv_disruption"])
        if disruption > 0:  # no draws when off: earlier data sets stay byte-identical
            rough = 1.0 + disruption * 0.8 * ndimage.gaussian_filter1d(rng.normal(0, 1, w), max(w / 80, 1.0))
            cnv_height = np.clip(cnv_height * rough, 0, None)
            ped_height = np.clip(ped_height * rough, 0, None)
        height_scale = float(cfg["cnv_height_scale"])
        cnv_height, ped_height, srf_height = (v * height_scale for v in (cnv_height, ped_height, srf_height))
        bruch_lift = ped_height if ped_type else bruch_lift
        sub_retinal = cnv_height + srf_height
        # exudation into the retina: the retina thickens over the lesion, sometimes with cysts
        swell = 1.0 + rng.uniform(0.0, 0.4) * extent * np.exp(-(((x - c) / rng.uniform(0.6, 1.4)) ** 2))
        cnv_cysts = rng.random() < 0.35 + 0.4 * disruption
        drusen_probability = float(cfg["cnv_drusen_probability"])
        if drusen_probability > 0 and rng.random() < drusen_probability:  # no draw when off (earlier sets)
            drusen_height = _drusen(rng, x, fovea, extent, cfg)
            bruch_lift = np.maximum(bruch_lift, drusen_height)
    elif label == "DME":
        swell = 1.0 + rng.uniform(0.2, 1.0) * extent * np.exp(-(((x - fovea) / rng.uniform(0.8, 1.8)) ** 2))
        pit_fill = rng.uniform(0.4, 0.9)
        if rng.random() < 0.3:
            srf_height = _dome(
                x, fovea + rng.normal(0, 0.2), rng.uniform(0.3, 0.9), rng.uniform(20, 90), power=0.9
            )
            sub_retinal = srf_height
        subtle_probability = float(cfg["dme_subtle_probability"])
        if subtle_probability > 0 and rng.random() < subtle_probability:  # no draw when off (earlier sets)
            # early or treated DME: the foveal pit still there, hardly any thickening, one to three small cysts
            subtle_dme = True
            swell = 1.0 + 0.15 * (swell - 1.0)
            pit_fill *= 0.15
            srf_height = np.zeros(w)
            sub_retinal = srf_height

    if pit_fill:
        fill = pit_fill * np.exp(-((r / 0.5) ** 2))
        for k in ("GCL", "IPL", "INL", "OPL"):
            thick[k] = thick[k] + fill * {"GCL": 30.0, "IPL": 25.0, "INL": 30.0, "OPL": 15.0}[k]
    for k in ("INL", "OPL", "ONL"):
        thick[k] = thick[k] * swell

    # ---- boundaries, from the sclera upwards (um) ----
    bruch = rpe_top + rpe_thick  # Bruch's membrane stays put; the RPE rides on the deposits
    rpe_top_d = rpe_top - bruch_lift
    # drusen and PED make the RPE's course undulate; the retina above follows but smooths it a bit
    outer_base = rpe_top_d - sub_retinal
    b: dict[str, np.ndarray] = {}
    b["choroid/sclera"] = bruch + choroid
    b["Bruch"] = bruch
    b["RPE_top"] = rpe_top_d
    cur = outer_base - thick["IZ"]
    b["EZ/IZ"] = cur
    cur = cur - thick["EZ"]
    b["EZ_top"] = cur
    cur = cur - thick["myoid"]
    b["ELM_bottom"] = cur
    cur = cur - thick["ELM"]
    b["ELM_top"] = cur
    smooth_lift = ndimage.gaussian_filter1d(cur, w / 40, mode="nearest")
    cur = smooth_lift - thick["ONL"]
    b["OPL/ONL"] = cur
    cur = cur - thick["OPL"]
    b["INL/OPL"] = cur
    cur = cur - thick["INL"]
    b["IPL/INL"] = cur
    cur = cur - thick["IPL"]
    b["GCL/IPL"] = cur
    cur = cur - thick["GCL"]
    b["RNFL/GCL"] = cur
    cur = cur - thick["RNFL"]
    b["ILM"] = cur
    ordered = [b[name] for name in BOUNDARY_NAMES]

    # ---- reflectivity with anti-aliased boundaries ----
    layer_refl = [v for _, v in _LAYERS]
    layer_refl[-2] = draw_uniform(rng, cfg["choroid_reflectivity"])
    refl = np.full((h, w), layer_refl[0], dtype=np.float32)
    yy_px = (yy / np.float32(um_per_px) + np.float32(0.5)).astype(np.float32)
    for k, bound in enumerate(ordered):
        step = yy_px - (bound / um_per_px).astype(np.float32)[None, :]
        np.clip(step, 0.0, 1.0, out=step)
        step *= np.float32(layer_refl[k + 1] - layer_refl[k])
        refl += step
    # choroid: large dark vessel lumens in stroma (Haller's layer), a smooth texture elsewhere
    choroid_band = (yy > bruch[None, :]) & (yy < b["choroid/sclera"][None, :])
    # lumens of 20-100 um: the smoothing is set in um, so it holds at any pixel size
    vessel_scale = float(cfg["choroid_vessel_scale"])
    sigma = (max(12.0 * vessel_scale / um_per_px, 1.0), max(30.0 * vessel_scale / um_per_col, 1.0))
    vessels = ndimage.gaussian_filter(rng.standard_normal((h, w), dtype=np.float32), sigma)
    vessels /= vessels.std() + 1e-6
    depth_in_choroid = np.clip((yy - bruch[None, :]) / np.maximum(choroid[None, :], 1.0), 0, 1)
    lumen = (vessels > 0.6 - 0.5 * depth_in_choroid) & choroid_band
    refl = np.where(lumen, np.float32(cfg["choroid_lumen_contrast"]) * refl, refl)
    # the stroma is brightest under Bruch's membrane (choriocapillaris) and fades towards the sclera
    refl = np.where(choroid_band, refl * (1.0 - 0.6 * depth_in_choroid).astype(np.float32), refl)
    # gentle lateral texture in every layer (vessels, reflectivity variation)
    refl *= (
        1.0 + 0.15 * ndimage.gaussian_filter(rng.standard_normal((h, w), dtype=np.float32), (1.0, 6.0)) * 3.0
    )

    # ---- lesions on top of the layers ----
    if drusen_height.any():  # drusen (the DRUSEN class, or beside a CNV lesion): grey deposits under the RPE
        m = (
            (yy >= rpe_top_d[None, :] + rpe_thick[None, :] * 0.8)
            & (yy < bruch[None, :])
            & (drusen_height[None, :] > 2)
            & (ped_height[None, :] <= 2)
        )
        refl = np.where(m, np.float32(cfg["drusen_reflectivity"]), refl)
        lesion_masks.append(m)
    if label == "CNV":
        top = rpe_top_d - sub_retinal
        # sub-retinal fluid under the detached retina, above the lesion
        srf = (yy >= top[None, :]) & (yy < (rpe_top_d - cnv_height)[None, :]) & (srf_height[None, :] > 2)
        refl = np.where(srf, fluid_under, refl)
        # the fibrovascular lesion sits on (and breaks through) the RPE
        lesion_bottom = rpe_top_d + rpe_thick * rng.uniform(0.3, 1.0)
        les = (
            (yy >= (rpe_top_d - cnv_height)[None, :])
            & (yy < lesion_bottom[None, :])
            & (cnv_height[None, :] > 2)
        )
        tex = 0.65 + 0.25 * ndimage.gaussian_filter(rng.standard_normal((h, w), dtype=np.float32), 2.0) * 4.0
        refl = np.where(les, np.clip(tex, 0.3, 1.0).astype(np.float32), refl)
        ped = (yy >= (rpe_top_d + rpe_thick)[None, :]) & (yy < bruch[None, :]) & (ped_height[None, :] > 2)
        # a fibrovascular PED is filled with heterogeneous, moderately reflective tissue; a serous one is dark
        if rng.random() < 0.75:
            fibro = ndimage.gaussian_filter(rng.standard_normal((h, w), dtype=np.float32), (2.0, 4.0))
            fibro = np.clip(0.3 + 0.15 * fibro / (fibro.std() + 1e-6), 0.08, 0.7).astype(np.float32)
        else:
            fibro = np.full((h, w), 0.03, dtype=np.float32)
        refl = np.where(ped, fibro, refl)
        lesion_masks += [srf, les, ped]
        if cnv_cysts:
            cysts = _intraretinal_cysts(rng, b, x, yy, c, int(rng.integers(1, 6)))
            refl = np.where(cysts, fluid_in, refl)
            lesion_masks.append(cysts)
        if disruption > 0:
            # over the lesion (and a margin) the RPE and ellipsoid zone break up into bright and dark
            # fragments, and hyperreflective exudate specks scatter through the outer retina
            zone = ndimage.maximum_filter1d((cnv_height + ped_height + srf_height) > 2, max(int(0.3 / (width_mm / w)), 1))
            band = (yy >= b["EZ_top"][None, :] - 5.0) & (yy < bruch[None, :]) & zone[None, :]
            frag = ndimage.gaussian_filter(rng.standard_normal((h, w), dtype=np.float32), (1.5, 3.0))
            frag = np.clip(1.0 + disruption * 1.5 * frag / (frag.std() + 1e-6), 0.15, 1.6).astype(np.float32)
            refl = np.where(band, refl * frag, refl)
            outer = (yy >= b["OPL/ONL"][None, :]) & (yy < rpe_top_d[None, :]) & zone[None, :]
            specks = outer & (rng.random((h, w)) < 0.0015 * disruption)
            specks = ndimage.binary_dilation(specks, iterations=1)
            refl = np.where(specks, np.float32(0.8), refl)
    elif label == "DME":
        if subtle_dme:
            cysts = _intraretinal_cysts(rng, b, x, yy, fovea, int(rng.integers(1, 4)), size=0.5)
        else:
            cysts = _intraretinal_cysts(rng, b, x, yy, fovea, int(rng.integers(1, 2 + int(round(12 * extent)))))
        refl = np.where(cysts, fluid_in, refl)
        # hyperreflective foci (lipid exudates) in the outer plexiform layer
        for _ in range(int(rng.integers(0, 6))):
            ci = int(rng.integers(w // 6, 5 * w // 6))
            ry_row = int(np.clip(b["OPL/ONL"][ci] / um_per_px, 0, h - 1))
            refl[max(ry_row - 1, 0) : ry_row + 2, max(ci - 1, 0) : ci + 2] = 0.95
        srf = (
            (yy >= (rpe_top_d - srf_height)[None, :]) & (yy < rpe_top_d[None, :]) & (srf_height[None, :] > 2)
        )
        refl = np.where(srf, fluid_under, refl)
        lesion_masks += [cysts, srf]

    # ---- image formation ----
    refl = np.clip(refl, 0.0, 1.2)
    mu = (0.0002 + 0.0015 * refl).astype(np.float32)  # attenuation per um, scattering tissue attenuates
    mu[yy[:, 0] < 0] = 0
    if max(cfg["choroid_attenuation_per_mm"]) > 0:  # no draw when off: earlier data sets stay byte-identical
        extra = np.float32(draw_uniform(rng, cfg["choroid_attenuation_per_mm"]) / 1000.0)
        mu += np.where(yy > bruch[None, :], extra, np.float32(0.0))
    attenuation = np.exp(-2.0 * np.cumsum(mu, axis=0) * np.float32(um_per_px))
    rolloff = np.exp(-rows / draw_uniform(rng, cfg["rolloff_um"]))[:, None]
    xn = (np.arange(w) - (w - 1) / 2) / ((w - 1) / 2)
    vignette = 1.0 - draw_uniform(rng, cfg["vignetting"]) * xn[None, :] ** 2
    signal = refl * attenuation * rolloff * vignette
    # retinal vessels in the inner retina: a bright cross-section that shadows everything beneath it
    lo_n, hi_n = (int(v) for v in cfg["vessel_shadows"])
    for _ in range(int(rng.integers(lo_n, hi_n + 1))):
        cx = rng.uniform(x[0], x[-1])
        half = rng.uniform(20.0, 60.0) / 1000.0  # vessel radius, mm
        cols = np.abs(x - cx) < half
        if not cols.any():
            continue
        depth = float(np.median(b["RNFL/GCL"][cols])) + rng.uniform(-10.0, 25.0)
        below = (yy > depth + half * 1000.0) & cols[None, :]
        signal = np.where(below, signal * np.float32(rng.uniform(0.4, 0.85)), signal)
        vessel = ((yy - depth) / (half * 1000.0)) ** 2 + (((x[None, :] - cx) / half) ** 2) < 1.0
        signal = np.where(vessel, np.maximum(signal, np.float32(cfg["vessel_brightness"]) * attenuation), signal)
    looks = int(rng.integers(int(cfg["speckle_looks"][0]), int(cfg["speckle_looks"][1]) + 1))
    grain = draw_uniform(rng, cfg["speckle_grain_px"])
    speckle = np.zeros((h, w), dtype=np.float32)
    for _ in range(looks):
        re = ndimage.gaussian_filter(rng.standard_normal((h, w), dtype=np.float32), (grain, grain * 1.6))
        im = ndimage.gaussian_filter(rng.standard_normal((h, w), dtype=np.float32), (grain, grain * 1.6))
        speckle += re * re + im * im
    speckle /= speckle.mean()
    floor = draw_uniform(rng, cfg["noise_floor"])
    noise = rng.exponential(floor, (h, w)).astype(np.float32)
    intensity = signal * speckle + noise
    db = 10.0 * np.log10(np.maximum(intensity, 1e-8))
    top = np.percentile(db, 99.9)
    rng_db = draw_uniform(rng, cfg["dynamic_range_db"]) * 0.5  # intensity dB: half the amplitude range
    image = np.clip((db - (top - rng_db)) / rng_db, 0.0, 1.0) ** draw_uniform(rng, cfg["display_gamma"])
    image = (image * 255.0 + 0.5).astype(np.uint8)

    mask = np.zeros((h, w), dtype=np.uint8)
    for m in lesion_masks:
        mask |= m.astype(np.uint8)
    return {
        "image": image,
        "lesion_mask": mask,
        "boundaries": {
            name: (bound / um_per_px).astype(np.float32) for name, bound in zip(BOUNDARY_NAMES, ordered)
        },
        "label": label,
    }


def simulate_export(
    rng: np.random.Generator, image: np.ndarray, mask: np.ndarray, config: dict | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Rotate and shift a B-scan as a registered viewer export does, filling the uncovered area white.

    Args:
        rng: random generator.
        image: (H, W) uint8 B-scan from :func:`render_oct`.
        mask: (H, W) lesion mask on the same grid (moved with the image, filled with 0).
        config: overrides of ``DEFAULT_CONFIG["export"]``.

    Returns:
        the exported image and mask (unchanged when this scan draws no fill).
    """
    cfg = merge_config(DEFAULT_CONFIG["export"], config, source="export config")
    if rng.random() >= float(cfg["fill_probability"]):
        return image, mask
    angle = draw_uniform(rng, cfg["rotation_deg"])
    shift = draw_uniform(rng, cfg["shift_fraction"]) * image.shape[0] * rng.choice([-1.0, 1.0])
    # the fill is marked by rotating a coverage map, so JPEG-like grey at the border stays the scan's
    covered = ndimage.rotate(np.ones(image.shape, np.float32), angle, reshape=False, order=1, cval=0.0)
    covered = ndimage.shift(covered, (shift, 0.0), order=1, cval=0.0) > 0.5
    moved = ndimage.rotate(image.astype(np.float32), angle, reshape=False, order=1, mode="nearest")
    moved = ndimage.shift(moved, (shift, 0.0), order=1, mode="nearest")
    moved_mask = ndimage.rotate(mask, angle, reshape=False, order=0, cval=0)
    moved_mask = ndimage.shift(moved_mask, (shift, 0.0), order=0, cval=0)
    out = np.where(covered, np.clip(moved + 0.5, 0, 255), 255.0).astype(np.uint8)
    return out, (moved_mask * covered).astype(mask.dtype)


def _patients_for(rng: np.random.Generator, n_images: int, per_patient: Any) -> list[int]:
    """Split ``n_images`` into per-patient B-scan counts."""
    lo, hi = int(per_patient[0]), int(per_patient[1])
    counts: list[int] = []
    while sum(counts) < n_images:
        counts.append(int(min(rng.integers(lo, hi + 1), n_images - sum(counts))))
    return counts


def _write_oct_job(args: tuple) -> None:
    (out, size, render_cfg, export_cfg, quality, write_masks), (split, cls, pid, n), seed = args
    rng = np.random.default_rng(seed)
    sample = render_oct(rng, cls, size=size, config=render_cfg)
    image, mask = simulate_export(rng, sample["image"], sample["lesion_mask"], export_cfg)
    rel = Path("OCT2017") / split / cls / f"{cls}-{pid}-{n}.jpeg"
    save_gray_jpeg(out / rel, image, quality=quality)
    if write_masks:
        save_mask_png(out / "lesion_masks" / rel.with_suffix(".png"), mask)


def generate_oct(
    out_dir: str | os.PathLike, config: str | os.PathLike | dict | None = None, seed: int = 0
) -> Path:
    """Write a synthetic OCT data set in the Kermany OCT2017 layout.

    ``OCT2017/{train,test}/{CNV,DME,DRUSEN,NORMAL}/<CLASS>-<patient>-<n>.jpeg`` (e.g. ``CNV-1016042-1.jpeg``;
    several B-scans per patient, a patient in one split only), lesion masks at
    ``lesion_masks/OCT2017/<split>/<CLASS>/<same name>.png`` (0/255) and ``dataset.yaml``.

    Args:
        out_dir: output folder.
        config: YAML path or dict overriding ``DEFAULT_CONFIG`` (see ``configs/oct.yaml``).
        seed: random seed; the same seed gives identical files.

    Returns:
        the output folder.
    """
    cfg = load_config(DEFAULT_CONFIG, config)
    out = Path(out_dir)
    size = tuple(int(s) for s in cfg["image_size"])
    rng = np.random.default_rng(seed)
    used_ids: set[int] = set()
    jobs: list[tuple[str, str, int, int]] = []
    patients: dict[str, dict[str, int]] = {}
    for split, per_class in cfg["splits"].items():
        patients[split] = {}
        for cls in CLASSES:
            n_images = int(per_class.get(cls, 0))
            counts = _patients_for(rng, n_images, cfg["scans_per_patient"])
            patients[split][cls] = len(counts)
            for count in counts:
                pid = int(rng.integers(1_000_000, 10_000_000))
                while pid in used_ids:
                    pid = int(rng.integers(1_000_000, 10_000_000))
                used_ids.add(pid)
                for n in range(1, count + 1):
                    jobs.append((split, cls, pid, n))
    seeds = rng.integers(0, 2**63 - 1, size=len(jobs))
    task = (out, size, cfg["render"], cfg["export"], int(cfg["jpeg_quality"]), bool(cfg["write_masks"]))
    parallel_map(
        _write_oct_job, [(task, job, int(s)) for job, s in zip(jobs, seeds)], cfg["num_workers"], "oct"
    )
    counts_out: dict[str, dict[str, int]] = {s: dict.fromkeys(CLASSES, 0) for s in cfg["splits"]}
    for split, cls, _, _ in jobs:
        counts_out[split][cls] += 1
    write_dataset_yaml(
        out,
        {
            "name": "synthetic_oct2017",
            "layout": "Kermany OCT2017: OCT2017/{train,test}/{CNV,DME,DRUSEN,NORMAL}/<CLASS>-<patient>-<n>.jpeg",
            "generator": "common.synthetic.oct:generate_oct",
            "seed": int(seed),
            "classes": list(CLASSES),
            "counts": counts_out,
            "patients": patients,
            "image_size": list(size),
            "lesion_masks": "lesion_masks/<image path>.png (255 = lesion: CNV lesion + fluid, DME fluid, drusen)"
            if cfg["write_masks"]
            else None,
            "config": {k: v for k, v in cfg.items() if k != "num_workers"},  # files do not depend on it
        },
    )
    return out
