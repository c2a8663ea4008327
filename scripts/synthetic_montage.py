"""Picture montages of the synthetic data sets, for docs/synthetic_data.md.

    python scripts/synthetic_montage.py [--out docs/images] [--datasets ct,pneumonia,oct,oxygen] [--seed 0]
    python scripts/synthetic_montage.py --real ../shared/data     # real | synthetic side by side

Writes one PNG per data set (kept small enough to commit):

    synthetic_ct.png          chest CT phantoms: axial and coronal slices, lung label outlines, nodules
    synthetic_pneumonia.png   pediatric CXRs per class (NORMAL, BACTERIAL, VIRAL), lesion and lung outlines
    synthetic_oct.png         OCT B-scans per class (CNV, DME, DRUSEN, NORMAL), lesion outlines
    synthetic_oxygen_cxr.png  adult CXRs by lung-opacity severity (the images of the oxygen-risk cohort)
    real_vs_synthetic_{ct,cxr,oct}.png  with --real: real images beside synthetic ones, same window and size
                              (OCT: the calibrated set, docs/experiments/oct_synthex_calibrated.yaml)

Outlines are drawn on the last image of each row only, so the others show the data as a model sees it.
"""

from __future__ import annotations

import importlib.util
import io
import sys
from collections.abc import Sequence
from pathlib import Path

import fire
import numpy as np
import yaml
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

# run as a file (`python scripts/...`): make this checkout's `common` importable first
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RED = (255, 60, 60)
CYAN = (60, 200, 255)
YELLOW = (255, 220, 0)
LABEL_BAND = 18


def _font() -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=13)
    except TypeError:  # Pillow without FreeType
        return ImageFont.load_default()


def _rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(np.asarray(gray, dtype=np.uint8)[..., None], 3, axis=-1)


def _outline(rgb: np.ndarray, mask: np.ndarray, color: tuple[int, int, int]) -> np.ndarray:
    mask = np.asarray(mask) > 0
    edge = mask & ~ndimage.binary_erosion(mask, iterations=1)
    out = rgb.copy()
    out[edge] = color
    return out


def _resize(rgb: np.ndarray, width: int, aspect: float = 1.0) -> np.ndarray:
    """Resize to ``width`` columns; ``aspect`` is the physical height of a row / width of a column."""
    h, w = rgb.shape[:2]
    height = max(1, int(round(h * aspect * width / w)))
    return np.asarray(Image.fromarray(rgb).resize((width, height), Image.BILINEAR))


def _grid(rows: Sequence[tuple[str, Sequence[np.ndarray]]], title: str, tile: int) -> Image.Image:
    """Tiles row by row, a label above each row, a title on top."""
    font = _font()
    pad = 4
    ncol = max(len(images) for _, images in rows)
    heights = [max(im.shape[0] for im in images) for _, images in rows]
    width = ncol * tile + (ncol + 1) * pad
    height = LABEL_BAND + sum(h + LABEL_BAND + pad for h in heights) + pad
    canvas = Image.new("RGB", (width, height), (20, 20, 20))
    draw = ImageDraw.Draw(canvas)
    draw.text((pad, 2), title, fill=(240, 240, 240), font=font)
    y = LABEL_BAND
    for (label, images), h in zip(rows, heights):
        draw.text((pad, y + 2), label, fill=(220, 220, 220), font=font)
        y += LABEL_BAND
        for c, im in enumerate(images):
            canvas.paste(Image.fromarray(im), (pad + c * (tile + pad), y))
        y += h + pad
    return canvas


def _save_small(img: Image.Image, path: Path, max_bytes: int = 300_000) -> Path:
    """PNG with an adaptive palette; fewer colours until it fits ``max_bytes``."""
    from common.io.atomic import atomic_write_bytes

    for colors in (256, 128, 64, 32):
        buf = io.BytesIO()
        img.quantize(colors=colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
            buf, format="PNG", optimize=True
        )
        if buf.tell() <= max_bytes:
            break
    return atomic_write_bytes(path, buf.getvalue())


def _ct_view(hu_slice: np.ndarray) -> np.ndarray:
    """A slice (axis0 = patient right, axis1 = anterior or superior) as displayed: right on the left."""
    window = np.clip((hu_slice + 1350.0) / 1500.0, 0.0, 1.0)  # lung window W1500 L-600
    return (window[::-1, ::-1].T * 255).astype(np.uint8)


def montage_ct(out: Path, seed: int, tile: int) -> Path:
    from common.synthetic.ct_phantom import add_ct_noise, make_chest_phantom

    columns_axial, columns_coronal = [], []
    for k in range(3):
        rng = np.random.default_rng([seed, 100 + k])
        phantom = make_chest_phantom(
            rng, {"in_plane_spacing_mm": 1.5, "slice_spacing_mm": [2.0, 2.0]}, add_noise=False
        )
        nodule_mask = np.zeros(phantom.hu.shape, dtype=np.uint8)
        if importlib.util.find_spec("common.synthetic.nodules") is not None:
            from common.synthetic.nodules import insert_nodules

            _, nodule_mask = insert_nodules(
                phantom, rng, {"nodules_per_scan": [2, 4], "no_nodule_probability": 0.0}
            )
        phantom = add_ct_noise(phantom, rng)
        sx, sy, sz = (float(s) for s in phantom.spacing)
        if nodule_mask.any():
            i, j, kk = (int(round(v)) for v in ndimage.center_of_mass(nodule_mask == nodule_mask.max()))
        else:
            i, j, kk = (int(round(v)) for v in ndimage.center_of_mass(phantom.lung_label > 0))
        views = []
        for hu2, lab2, nod2, aspect in (
            (phantom.hu[:, :, kk], phantom.lung_label[:, :, kk], nodule_mask[:, :, kk], sy / sx),
            (phantom.hu[:, j, :], phantom.lung_label[:, j, :], nodule_mask[:, j, :], sz / sx),
        ):
            rgb = _rgb(_ct_view(hu2))
            rgb = _outline(rgb, _ct_view(np.where(lab2 == 1, 1000.0, -2000.0)) > 0, RED)
            rgb = _outline(rgb, _ct_view(np.where(lab2 == 2, 1000.0, -2000.0)) > 0, CYAN)
            rgb = _outline(rgb, _ct_view(np.where(nod2 > 0, 1000.0, -2000.0)) > 0, YELLOW)
            views.append(_resize(rgb, tile, aspect))
        columns_axial.append(views[0])
        columns_coronal.append(views[1])
    img = _grid(
        [("axial (through a nodule)", columns_axial), ("coronal", columns_coronal)],
        "Chest CT phantoms: lung label 1 right (red), 2 left (cyan), nodules (yellow); lung window",
        tile,
    )
    return _save_small(img, out / "synthetic_ct.png")


def montage_pneumonia(out: Path, seed: int, tile: int, per_row: int = 5) -> Path:
    from common.synthetic.cxr import render_cxr

    rows = []
    for name, pattern in (
        ("NORMAL", "none"),
        ("BACTERIAL (lobar)", "lobar"),
        ("VIRAL (interstitial)", "interstitial"),
    ):
        images = []
        for k in range(per_row):
            rng = np.random.default_rng([seed, 200 + k])
            s = render_cxr(rng, size=256, pediatric=True, pattern=pattern, severity=0.35 + 0.15 * k)
            rgb = _rgb(s["image"])
            if k == per_row - 1:
                rgb = _outline(_outline(rgb, s["lung_mask"], CYAN), s["lesion_mask"], RED)
            images.append(_resize(rgb, tile))
        rows.append((name, images))
    img = _grid(rows, "Pediatric CXRs projected from CT phantoms (last column: lung cyan, lesion red)", tile)
    return _save_small(img, out / "synthetic_pneumonia.png")


def montage_oct(out: Path, seed: int, tile: int, per_row: int = 4) -> Path:
    from common.synthetic.oct import CLASSES, render_oct

    rows = []
    for c, name in enumerate(CLASSES):
        images = []
        for k in range(per_row):
            s = render_oct(np.random.default_rng([seed, 300 + c, k]), name, size=(224, 224))
            rgb = _rgb(s["image"])
            if k == per_row - 1:
                rgb = _outline(rgb, s["lesion_mask"], RED)
            images.append(_resize(rgb, tile))
        rows.append((name, images))
    img = _grid(rows, "OCT B-scans per class (last column: lesion outline in red)", tile)
    return _save_small(img, out / "synthetic_oct.png")


def montage_oxygen(out: Path, seed: int, tile: int) -> Path:
    from common.synthetic.cxr import render_cxr

    severities = (0.0, 0.25, 0.5, 0.75, 1.0)
    plain, outlined = [], []
    for sev in severities:
        rng = np.random.default_rng([seed, 400])  # one patient, one pose: only the opacity changes
        s = render_cxr(
            rng, size=256, pediatric=False, pattern="interstitial" if sev > 0 else "none", severity=sev
        )
        plain.append(_resize(_rgb(s["image"]), tile))
        outlined.append(_resize(_outline(_rgb(s["image"]), s["lesion_mask"], RED), tile))
    img = _grid(
        [
            ("severity " + ", ".join(f"{v:g}" for v in severities), plain),
            ("projected opacity (red)", outlined),
        ],
        "Adult CXRs by lung-opacity severity (oxygen-risk cohort images)",
        tile,
    )
    return _save_small(img, out / "synthetic_oxygen_cxr.png")


def _gray_tile(path: Path, tile: int, aspect: float) -> np.ndarray:
    """A real image file as a grey tile ``tile`` wide, squashed to ``aspect`` (height / width)."""
    with Image.open(path) as im:
        gray = np.asarray(im.convert("L"))
    return np.asarray(Image.fromarray(_rgb(gray)).resize((tile, int(round(tile * aspect))), Image.BILINEAR))


def real_vs_synthetic(out: Path, real: Path, seed: int, tile: int, per_row: int = 4) -> list[Path]:
    """Real | synthetic montages at the same window and size, one PNG per modality (``real_vs_synthetic_*.png``).

    Args:
        out: output folder.
        real: the folder holding ``lctsc_train9/``, ``chest_xray2017_train224/`` and ``oct2017_samples48/``.
        seed: random seed of the synthetic samples.
        tile: width of each picture in pixels.
        per_row: pictures per row.

    Returns:
        the paths written.
    """
    import glob

    import nibabel as nib

    from common.synthetic.config import load_config
    from common.synthetic.ct_phantom import LUNG_CT_DEFAULTS, make_chest_phantom
    from common.synthetic.cxr import render_cxr
    from common.synthetic.oct import CLASSES, render_oct, simulate_export
    from common.synthetic.oct import DEFAULT_CONFIG as OCT_DEFAULTS

    written = []
    # CT: mid-lung axial slices, lung window, both at 2 mm pixels
    real_ct, synth_ct = [], []
    for path in sorted(glob.glob(str(real / "lctsc_train9" / "*_ct.nii.gz")))[:per_row]:
        img = nib.as_closest_canonical(nib.load(path))
        hu = np.asarray(img.dataobj, dtype=np.float32)
        lung = np.asarray(nib.as_closest_canonical(nib.load(path.replace("_ct.", "_lung."))).dataobj) > 0
        k = int(round(ndimage.center_of_mass(lung)[2]))
        sx, sy = (float(v) for v in img.header.get_zooms()[:2])
        real_ct.append(_resize(_rgb(_ct_view(hu[:, :, k])), tile, sy / sx))  # RAS, as the phantoms
    for k in range(per_row):
        # the lung_ct data set's anatomy (deeper chests than the nodule and X-ray phantoms)
        anatomy = {key: LUNG_CT_DEFAULTS["phantom"][key] for key in ("posterior_gutters", "body_aspect")}
        phantom = make_chest_phantom(np.random.default_rng([seed, 700 + k]), {"in_plane_spacing_mm": 2.0,
                                                                            "slice_spacing_mm": [3.0, 3.0], **anatomy})
        kk = int(round(ndimage.center_of_mass(phantom.lung_label > 0)[2]))
        sx, sy = (float(v) for v in phantom.spacing[:2])
        synth_ct.append(_resize(_rgb(_ct_view(phantom.hu[:, :, kk])), tile, sy / sx))
    img = _grid([("real: LCTSC chest CT (TCIA)", real_ct), ("synthetic: CT phantoms (lung_ct)", synth_ct)],
                "Chest CT, real | synthetic: mid-lung axial slices, lung window W1500 L-600", tile)
    written.append(_save_small(img, out / "real_vs_synthetic_ct.png"))

    # CXR: real pediatric films (224 px copies) | films from phantoms | films from the real CTs
    films = sorted(glob.glob(str(real / "chest_xray2017_train224" / "*" / "*.jpeg")))
    picks = [films[i] for i in np.random.default_rng(seed).choice(len(films), per_row, replace=False)]
    patterns = ("none", "lobar", "interstitial", "lobar")
    from_phantoms = [_rgb(render_cxr(np.random.default_rng([seed, 800, k]), 224, True, patterns[k % 4], 0.7)["image"])
                     for k in range(per_row)]
    # the render settings of the transfer experiment's films from real CTs, the CTs found under ``real``
    experiment = Path(__file__).resolve().parents[1] / "docs" / "experiments" / "pneumonia_synthex_ct.yaml"
    ct_cfg = {**yaml.safe_load(experiment.read_text())["render"],
              "ct_sources": str(real / "lctsc_train9" / "*_ct.nii.gz")}
    from_cts = [_rgb(render_cxr(np.random.default_rng([seed, 900, k]), 224, True, patterns[k % 4], 0.7,
                                config=ct_cfg, base_index=k)["image"]) for k in range(per_row)]
    # the same seeds and patterns with the settings of two transfer experiments (their pool of 24 phantoms gives
    # other anatomies): the girdle the phantoms lack, and denser opacities at about the middle of their severities
    experiments = Path(__file__).resolve().parents[1] / "docs" / "experiments"
    variants = {}
    for name in ("girdle", "dense"):
        cfg = yaml.safe_load((experiments / f"pneumonia_synthex_{name}.yaml").read_text())
        variants[name] = [_rgb(render_cxr(np.random.default_rng([seed, 800, k]), 224, True, patterns[k % 4],
                                          0.7 if name == "girdle" else 0.75, config=cfg["render"])["image"])
                          for k in range(per_row)]
    img = _grid([("real: ChestXRay2017 (Kermany et al., CC BY 4.0), 224 px copies", [_gray_tile(Path(f), tile, 1.0) for f in picks]),
                 ("synthetic: projected from CT phantoms", [_resize(f, tile) for f in from_phantoms]),
                 ("synthetic: CT phantoms with the neck, shoulders, clavicles and arms drawn in (pneumonia_synthex_girdle.yaml)",
                  [_resize(f, tile) for f in variants["girdle"]]),
                 ("synthetic: CT phantoms with denser and larger opacities (pneumonia_synthex_dense.yaml)",
                  [_resize(f, tile) for f in variants["dense"]]),
                 ("synthetic: projected from the real CTs above (SyntheX's way)", [_resize(f, tile) for f in from_cts])],
                "Pediatric chest X-rays, real | synthetic (NORMAL, lobar, interstitial, lobar), 224 px", tile)
    written.append(_save_small(img, out / "real_vs_synthetic_cxr.png"))

    # OCT: real B-scans beside synthetic ones of the calibrated set (the 0.4.0 and 0.5.0 weights' pre-training), both at 496
    # rows squashed to the same tile
    calibrated = load_config(OCT_DEFAULTS, Path(__file__).resolve().parents[1] / "docs" / "experiments"
                             / "oct_synthex_calibrated.yaml")
    rows = []
    for c, name in enumerate(CLASSES):
        scans = sorted(glob.glob(str(real / "oct2017_samples48" / name / "*.jpeg")))[: per_row // 2]
        synth = []
        for k in range(per_row - len(scans)):
            rng = np.random.default_rng([seed, 1000 + c, k])
            sample = render_oct(rng, name, size=(496, 512), config=calibrated["render"])
            exported = simulate_export(rng, sample["image"], sample["lesion_mask"], calibrated["export"])[0]
            synth.append(_resize(_rgb(exported), tile, 496 / 768))
        rows.append((f"{name}: real (left, OCT2017, CC BY 4.0) | synthetic (right)",
                     [_gray_tile(Path(f), tile, 496 / 768) for f in scans] + synth))
    img = _grid(rows, "Retinal OCT B-scans, real | synthetic (oct_synthex_calibrated.yaml), each squashed to the same size", tile)
    written.append(_save_small(img, out / "real_vs_synthetic_oct.png"))
    return written


MONTAGES = {"ct": montage_ct, "pneumonia": montage_pneumonia, "oct": montage_oct, "oxygen": montage_oxygen}


def main(
    out: str = "docs/images",
    datasets: str | Sequence[str] = "ct,pneumonia,oct,oxygen",
    seed: int = 0,
    tile: int = 176,
    real: str = "",
) -> list[str]:
    """Write the montages.

    Args:
        out: output folder.
        datasets: comma-separated subset of ``ct``, ``pneumonia``, ``oct``, ``oxygen``.
        seed: random seed of the pictured samples.
        tile: width of each picture in pixels.
        real: the real-data folder (``../shared/data``): instead of the data sets, write the real | synthetic
            comparisons ``real_vs_synthetic_{ct,cxr,oct}.png``.

    Returns:
        the paths written.
    """
    names = [d.strip() for d in datasets.split(",")] if isinstance(datasets, str) else list(datasets)
    unknown = [n for n in names if n not in MONTAGES]
    if unknown:
        raise SystemExit(f"unknown data set(s) {unknown}; choose from {', '.join(MONTAGES)}")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    if real:
        paths = real_vs_synthetic(out_dir, Path(real), seed, tile)
        for path in paths:
            print(f"{path} ({path.stat().st_size // 1024} KB)")
        return [str(p) for p in paths]
    written = []
    for name in names:
        path = MONTAGES[name](out_dir, seed, tile)
        print(f"{path} ({path.stat().st_size // 1024} KB)")
        written.append(str(path))
    return written


if __name__ == "__main__":
    fire.Fire(main)
