"""How close synthetic OCT B-scans look to real ones: grey levels, A-scan profile, geometry, retina thickness.

    python scripts/oct_realism.py --real ../shared/data/oct2017_samples48 [--n_synthetic 48] [--seed 0] \
        [--synthetic_config docs/experiments/oct_synthex.yaml]
    python scripts/oct_realism.py band_figure --real ../shared/data/oct2017_samples48 --out docs/images/oct_retina_band.png

Both sets are compared at the scanner's geometry (496 rows; real scans resized to 496 x 512, synthetic ones
rendered at that size by ``common.synthetic.oct``):

- per image, the 10th, 50th, 90th and 99th grey-level percentiles (white export fill left out); the medians
  over the images are printed for the real and the synthetic set (all four classes, same number per class);
- the median A-scan of NORMAL scans around the RPE, rows -60 to +99 (about -230 to +380 um): real scans
  are aligned at their brightest row (the RPE, after a 5-row smoothing), synthetic ones at the RPE of the
  generator's own boundaries. Every 8th row is printed; below +100 rows it shows how fast the choroid and
  sclera fade into the dark;
- the geometry of the RPE, measured the same way on both sets (``common.transforms.fit_rpe_curve`` with
  ``CALIBRATION_FIT``, the quadratic through the columns' brightest rows): the median tilt and bow, rows from the
  centre to the edge of the scan;
- how flat the band leaves the RPE, every scan: rows between the 10th and 90th percentile of the brightest
  row near the band's RPE row, with ``OCTRetinaBandd``'s fit now and with the calibration fit;
- the retina's thickness in NORMAL scans: on the band ``OCTRetinaBandd`` cuts with ``CALIBRATION_FIT`` (the RPE on one row), the rows
  from where the median profile first rises halfway from the vitreous to the inner retina down to the RPE.

The generator's layer reflectivities and display settings were set with this script (docs/synthetic_data.md).
"""

from __future__ import annotations

import sys
from pathlib import Path

import fire
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file: this checkout's `common`

SHAPE = (496, 512)  # rows, columns
WINDOW = (-60, 260)  # rows around the RPE


def percentiles(image: np.ndarray) -> np.ndarray:
    """10/50/90/99th grey-level percentiles of a B-scan, export fill (>= 250) left out."""
    values = image[image < 250]
    return np.percentile(values if values.size else image, [10, 50, 90, 99])


def profile(image: np.ndarray, rpe_rows: np.ndarray | None = None) -> np.ndarray | None:
    """Median A-scan in ``WINDOW`` around the RPE over the central half of the columns (None if none fit).

    Args:
        image: (rows, columns) B-scan.
        rpe_rows: the RPE's row per column; None takes each column's brightest (smoothed) row.
    """
    image = np.asarray(image, dtype=np.float64)
    h, w = image.shape
    columns = []
    for c in range(w // 4, 3 * w // 4, 4):
        col = image[:, c]
        if (col[:3] >= 250).any() or (col[-3:] >= 250).any():  # white export fill reaches the top or bottom
            continue
        r = int(np.argmax(np.convolve(col, np.ones(5) / 5, "same"))) if rpe_rows is None else int(round(rpe_rows[c]))
        if WINDOW[0] <= -r or r + WINDOW[1] > h:
            continue
        columns.append(col[r + WINDOW[0] : r + WINDOW[1]])
    return np.median(columns, axis=0) if columns else None


#: the RPE fit the generator was calibrated with (the brightest-row quadratic, ``OCTRetinaBandd``'s before
#: 2026-12-07), kept so that the figures in docs/synthetic_data.md stay comparable
CALIBRATION_FIT = {"degree": 2, "bright_fraction": 1.0, "refine_window": 0.0}


def rpe_geometry(image: np.ndarray) -> np.ndarray:
    """(|tilt|, bow) of the RPE: rows from the scan's centre to its edge, from the fitted quadratic."""
    from common.transforms import fit_rpe_curve

    curve = fit_rpe_curve(np.asarray(image, dtype=np.float32) / 255.0, **CALIBRATION_FIT)
    centre, left, right = curve[len(curve) // 2], curve[0], curve[-1]
    return np.array([abs(right - left) / 2, centre - (left + right) / 2])  # bow > 0: the edges rise


def cut_band(image: np.ndarray, fit: dict[str, float] | None = None, normalise: bool = False) -> np.ndarray:
    """The retina band ``OCTRetinaBandd`` cuts from an 8-bit B-scan.

    Args:
        image: (rows, columns) 8-bit B-scan.
        fit: ``OCTRetinaBandd``'s RPE-fit arguments (``None``: its defaults, the fit the bundle uses;
            :data:`CALIBRATION_FIT`: the earlier one).
        normalise: ``OCTNormalized`` after the cut, as the bundle's preprocessing does.

    Returns:
        the (band rows, columns) band in [0, 1].
    """
    import torch

    from common.transforms import OCTNormalized, OCTRetinaBandd

    x = OCTRetinaBandd("image", **(fit or {}))({"image": torch.as_tensor(np.asarray(image, dtype=np.float32)[None] / 255.0)})
    return (OCTNormalized("image")(x) if normalise else x)["image"][0].numpy()


def band_profile(image: np.ndarray) -> np.ndarray:
    """Median column of the flattened retina band (``OCTRetinaBandd``, then ``OCTNormalized``), central half."""
    band = cut_band(image, CALIBRATION_FIT, normalise=True)
    w = band.shape[1]
    return np.median(band[:, w // 4 : 3 * w // 4], axis=1)


def band_rpe_spread(image: np.ndarray, fit: dict[str, float] | None = None) -> float:
    """How flat the band leaves the RPE: rows between the 10th and 90th percentile of each column's brightest
    row within 0.12 of the band's height of the row the band puts the RPE on.

    Args:
        image: (rows, columns) 8-bit B-scan.
        fit: ``OCTRetinaBandd``'s RPE-fit arguments (``None``: its defaults, the fit the bundle uses;
            :data:`CALIBRATION_FIT`: the earlier one).

    Returns:
        the spread in rows of the band; NaN when every column is mostly export fill or outside the scan there.
    """
    from scipy import ndimage

    from common.transforms import OCTRetinaBandd

    band = cut_band(image, fit)
    h = band.shape[0]
    defaults = OCTRetinaBandd("image")  # where the band puts the RPE: above / (above + below) of its height
    target = int(round(defaults.above / (defaults.above + defaults.below) * h))
    lo, hi = max(target - int(0.12 * h), 0), target + int(0.12 * h)
    fill = (band <= 0.0) | (band >= 1.0)  # export fill, and rows the band took from outside the scan
    rows = np.argmax(ndimage.gaussian_filter(np.where(fill, 0.0, band), (2, 6))[lo:hi], axis=0)
    rows = rows[fill[lo:hi].mean(axis=0) < 0.5]
    return float(np.percentile(rows, 90) - np.percentile(rows, 10)) if rows.size else float("nan")


def band_figure(real: str, out: str, n: int = 4, width: int = 240) -> str:
    """Picture of the retina band cut with the calibration fit and with the band's fit now, on the ``n`` real
    scans the calibration fit leaves most curved (chosen by that spread, no label used).

    Each row: the scan with both RPE curves (red: the brightest-row quadratic; green: the band's fit now), the
    band the quadratic cuts, the band cut now; every panel squashed to ``width`` columns.

    Args:
        real: real OCT2017-layout folder (``CNV/ DME/ DRUSEN/ NORMAL/``).
        out: PNG to write.
        n: scans shown.
        width: panel width in pixels.

    Returns:
        ``out``.
    """
    from common.transforms import fit_rpe_curve

    files = sorted(Path(real).glob("*/*.jpeg"))
    if not files:
        raise SystemExit(f"{real}: no <CLASS>/*.jpeg B-scans")
    scans = {f: np.asarray(Image.open(f).convert("L").resize(SHAPE[::-1], Image.BILINEAR)) for f in files}
    worst = sorted(scans, key=lambda f: -np.nan_to_num(band_rpe_spread(scans[f], CALIBRATION_FIT)))[:n]
    panel_h = int(round(width * SHAPE[0] / SHAPE[1] / 2))
    rows = []
    for f in worst:
        grey = scans[f].astype(np.float32) / 255.0
        rgb = np.repeat(scans[f][..., None], 3, axis=2).copy()
        for fit, colour in ((CALIBRATION_FIT, (255, 40, 40)), ({}, (40, 255, 40))):
            curve = np.round(fit_rpe_curve(grey, **fit)).astype(int)
            for dy in (-1, 0, 1):
                rgb[np.clip(curve + dy, 0, SHAPE[0] - 1), np.arange(SHAPE[1])] = colour
        panels = [Image.fromarray(rgb).resize((width, 2 * panel_h), Image.BILINEAR)]
        for fit in (CALIBRATION_FIT, {}):
            band = cut_band(scans[f], fit)
            tile = Image.fromarray((band * 255).astype(np.uint8)).resize((width, panel_h), Image.BILINEAR).convert("RGB")
            canvas = Image.new("RGB", (width, 2 * panel_h))
            canvas.paste(tile, (0, panel_h // 2))
            panels.append(canvas)
        row = Image.new("RGB", (3 * width + 8, 2 * panel_h + 4), (255, 255, 255))
        for k, panel in enumerate(panels):
            row.paste(panel, (k * (width + 4), 2))
        rows.append(row)
    figure = Image.new("RGB", (rows[0].width, sum(r.height for r in rows)), (255, 255, 255))
    for k, row in enumerate(rows):
        figure.paste(row, (0, k * row.height))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    figure.quantize(colors=64, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(out, optimize=True)
    print(f"{out}: {', '.join(f.name.split('-')[0] for f in worst)} (left: scan, red the quadratic, green the fit now; "
          "middle: the quadratic's band; right: the band now)")
    return out


def retina_rows(profile: np.ndarray, rpe_row: int) -> float:
    """Rows from the inner limiting membrane (halfway up from the vitreous to the inner retina) to the RPE."""
    vitreous = float(np.median(profile[: max(rpe_row // 3, 1)]))
    inner = float(profile[: rpe_row - 10].max())
    above = np.flatnonzero(profile[: rpe_row - 10] > vitreous + 0.5 * (inner - vitreous))
    return float(rpe_row - above[0]) if above.size else float("nan")


def main(real: str = "../shared/data/oct2017_samples48", n_synthetic: int = 48, seed: int = 0,
         synthetic_config: str = "") -> dict:
    """Print and return the real and synthetic percentiles, NORMAL profiles, RPE geometry and retina thickness.

    Args:
        real: real OCT2017-layout folder (``CNV/ DME/ DRUSEN/ NORMAL/``).
        n_synthetic: synthetic scans to render (split evenly over the classes).
        seed: seed of the synthetic scans.
        synthetic_config: generator YAML whose ``render`` and ``export`` keys are used ("" = the defaults).

    Returns:
        ``{"real": {...}, "synthetic": {...}}`` with ``percentiles``, ``normal_profile``, ``rpe_tilt_bow``,
        ``retina_rows`` and ``band_rpe_spread`` (median and mean over the scans; columns: the band's fit, the
        calibration fit).
    """
    from common.synthetic.config import load_config
    from common.synthetic.oct import CLASSES, DEFAULT_CONFIG, render_oct, simulate_export

    generator = load_config(DEFAULT_CONFIG, synthetic_config or None)
    render_cfg, export_cfg = generator["render"], generator["export"]

    files = sorted(Path(real).glob("*/*.jpeg"))
    if not files:
        raise SystemExit(f"{real}: no <CLASS>/*.jpeg B-scans")
    real_images = {f: np.asarray(Image.open(f).convert("L").resize(SHAPE[::-1], Image.BILINEAR)) for f in files}
    real_profiles = [profile(im) for f, im in real_images.items() if f.parent.name == "NORMAL"]
    synth_pct, synth_profiles, synth_geometry, synth_bands, synth_spread = [], [], [], [], []
    for k in range(n_synthetic):
        label = CLASSES[k % len(CLASSES)]
        rng = np.random.default_rng([seed, k])
        sample = render_oct(rng, label, size=SHAPE, config=render_cfg)
        image, _ = simulate_export(rng, sample["image"], sample["lesion_mask"], export_cfg)
        synth_pct.append(percentiles(image))
        synth_geometry.append(rpe_geometry(image))
        synth_spread.append([band_rpe_spread(image), band_rpe_spread(image, CALIBRATION_FIT)])
        if label == "NORMAL":
            synth_bands.append(band_profile(image))
            b = sample["boundaries"]
            synth_profiles.append(profile(sample["image"], (b["RPE_top"] + b["Bruch"]) / 2))
    real_profiles = [p for p in real_profiles if p is not None]
    synth_profiles = [p for p in synth_profiles if p is not None]
    if not real_profiles:
        raise SystemExit(f"{real}: no NORMAL/*.jpeg scan with the RPE inside the rows compared")
    if not synth_profiles:
        raise SystemExit(f"--n_synthetic {n_synthetic}: too few scans for a NORMAL one (give 4 or more)")
    from common.transforms import OCTRetinaBandd

    rpe_row = int(round(OCTRetinaBandd("image").above * SHAPE[0]))  # where band_profile's crop puts the RPE
    real_bands = [band_profile(im) for f, im in real_images.items() if f.parent.name == "NORMAL"]
    out = {
        "real": {"percentiles": np.median([percentiles(im) for im in real_images.values()], axis=0),
                 "normal_profile": np.median(real_profiles, axis=0),
                 "rpe_tilt_bow": np.median([rpe_geometry(im) for im in real_images.values()], axis=0),
                 "retina_rows": np.array(retina_rows(np.median(real_bands, axis=0), rpe_row)),
                 "band_rpe_spread": np.array([[band_rpe_spread(im), band_rpe_spread(im, CALIBRATION_FIT)]
                                              for im in real_images.values()])},
        "synthetic": {"percentiles": np.median(synth_pct, axis=0), "normal_profile": np.median(synth_profiles, axis=0),
                      "rpe_tilt_bow": np.median(synth_geometry, axis=0),
                      "retina_rows": np.array(retina_rows(np.median(synth_bands, axis=0), rpe_row)),
                      "band_rpe_spread": np.array(synth_spread)},
    }
    print("grey-level percentiles 10/50/90/99 (median over images)")
    for name in ("real", "synthetic"):
        print(f"  {name:<9} " + " ".join(f"{v:5.0f}" for v in out[name]["percentiles"]))
    print("median A-scan of NORMAL scans around the RPE (row: real synthetic)")
    for i in range(0, WINDOW[1] - WINDOW[0], 8):
        print(f"  {i + WINDOW[0]:+4d}: {out['real']['normal_profile'][i]:5.0f} {out['synthetic']['normal_profile'][i]:5.0f}")
    print("RPE |tilt| and bow, rows centre to edge (median over images), and NORMAL retina thickness, rows")
    for name in ("real", "synthetic"):
        tilt, bow = out[name]["rpe_tilt_bow"]
        print(f"  {name:<9} tilt {tilt:5.1f}  bow {bow:5.1f}  retina {float(out[name]['retina_rows']):5.1f}")
    print("RPE spread in the band, rows p10-p90 (median / mean / scans over 20): the band's fit now | the calibration fit")
    for name in ("real", "synthetic"):
        spread = out[name]["band_rpe_spread"]
        cells = [f"{np.nanmedian(c):5.1f} / {np.nanmean(c):5.1f} / {int((c > 20).sum()):2d}" for c in spread.T]
        print(f"  {name:<9} " + "  |  ".join(cells))
    for name in ("real", "synthetic"):  # the table keeps the summary, not one figure per scan
        spread = out[name]["band_rpe_spread"]
        out[name]["band_rpe_spread"] = np.array([np.nanmedian(spread, axis=0), np.nanmean(spread, axis=0)])
    return {k: {kk: np.round(vv, 1).tolist() for kk, vv in v.items()} for k, v in out.items()}


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "band_figure":  # python scripts/oct_realism.py band_figure --real R --out F
        fire.Fire(band_figure, sys.argv[2:], serialize=lambda _: None)
    else:
        fire.Fire(main, serialize=lambda _: None)  # the table above is the output
