"""Chest X-rays projected from CT phantoms, with pneumonia patterns, in the Kermany ChestXRay2017 layout.

Each radiograph is a digitally reconstructed radiograph (``common.synthetic.drr``) of a chest CT phantom
(``common.synthetic.ct_phantom.make_chest_phantom``) into whose lungs an opacity was put in 3D:

* ``"lobar"`` (bacterial pneumonia): a dense, airless consolidation that fills part of one lobe (the
  lobes are cut from each lung by an oblique fissure and, on the right, a horizontal fissure), grown
  from a seed with an irregular front and a ground-glass rim.
* ``"interstitial"`` (viral pneumonia, and the diffuse opacities of the oxygen-risk cohort): bilateral
  ground-glass haze plus a reticular network (zero crossings of band-passed noise), predominantly
  perihilar and in the lower zones; severe disease adds patchy airspace consolidation.

``severity`` in [0, 1] scales the extent (fraction of the lobe or of both lungs involved) and the density.
The 2D lesion mask is the projection of the 3D opacity; the lung mask is the projected lung label.

Speed: making a CT phantom takes far longer than projecting it, so a small pool of base phantoms per kind
(adult, pediatric) is built once per process on a coarse grid and reused. Projection is linear in the
attenuation, so the base phantom's line integrals are cached and only the lesion's extra attenuation
(inside the lungs' bounding box) is projected per image; pose (scale, rotation, shift), bone contrast,
exposure, scatter, noise and display processing vary per image.

Pediatric anatomy (the Kermany set is of children aged 1-5): the phantom is scaled to a child's chest,
and the cardiothymic silhouette is larger relative to the thorax (a bigger heart, often a thymus in the
upper anterior mediastinum).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from common.errors import InputDataError
from common.synthetic._io import parallel_map, save_gray_jpeg, save_mask_png
from common.synthetic.config import draw_uniform, load_config, merge_config, write_dataset_yaml
from common.synthetic.drr import (
    MU_SOFT_TISSUE_PER_MM,
    MU_WATER_PER_MM,
    DetectorGeometry,
    detector_response,
    hu_to_mu,
    line_integrals,
    resample_to_detector,
    to_ras,
)
from common.synthetic.film import DEFAULT_FILM, dress_film, film_enabled
from common.synthetic.girdle import DEFAULT_GIRDLE, add_shoulder_girdle, girdle_enabled

__all__ = [
    "PATTERNS",
    "DEFAULT_RENDER",
    "DEFAULT_CONFIG",
    "render_config",
    "render_cxr",
    "generate_pneumonia_cxr",
    "benchmark_xray",
]

PATTERNS = ("none", "lobar", "interstitial")

DEFAULT_RENDER: dict[str, Any] = {
    "pool_size": 8,  # base phantoms per kind (adult / pediatric), built once per process and reused
    # real chest CTs projected instead of phantoms, as SyntheX projects real CT: a glob of NIfTI volumes in
    # HU (a relative pattern is taken from the current folder); each CT's lung mask is the file named by replacing ct_lung_names[0] with [1] in its name (one label
    # or 1 right / 2 left). Base anatomy i of the pool is CT i modulo their number; "" uses phantoms.
    "ct_sources": "",
    "ct_lung_names": ["_ct.", "_lung."],
    "pool_seed": 20240,  # seed of the base phantoms (independent of the per-image rng)
    # overrides passed on to make_chest_phantom, any of its keys (an erect PA film has no table)
    "phantom": {"table": False},
    "voxel_mm": {"adult": 3.0, "pediatric": 2.0},  # grid of the pool phantoms; finer phantoms are resampled
    "pediatric_body_scale": [0.5, 0.65],  # a 1-5 year old's chest relative to the average adult
    "heart_scale": [1.0, 1.25],  # pediatric cardiac silhouette enlargement (relative to the thorax)
    "thymus_probability": 0.6,  # chance of a thymic shadow in a child's upper anterior mediastinum
    "size_jitter": [0.92, 1.08],  # per-image magnification
    "fill_fraction": [0.72, 0.88],  # chest width / image width
    "rotation_deg": [-4.0, 4.0],
    "shift_fraction": [-0.04, 0.04],  # of the image size, rows and columns
    "bone_contrast": [0.85, 1.2],  # multiplies the bone part of the attenuation (kVp, bone density)
    "i0_photons": [6000.0, 40000.0],  # unattenuated photons per pixel (quantum noise)
    "scatter_fraction": [0.1, 0.4],
    "electronic_noise": [0.5, 3.0],
    "unsharp_amount": [0.3, 1.0],
    "gamma": [1.3, 1.9],  # display curve: > 1 darkens the lung fields as film-like processing does
    # an S-shaped tone curve after the gamma (common.synthetic.drr.detector_response): null, or
    # {centre: [lo, hi], width: [lo, hi]} on the windowed [0, 1] image; steep over the lungs, flat in the
    # bright mediastinum and bone, so dense opacities lose the contrast of the ribs behind them as on real films
    "s_curve": None,
    "lesion": {
        "consolidation_hu": [-60.0, 40.0],  # HU of airless lung (lobar pattern at full density)
        "ground_glass_hu": [-560.0, -420.0],  # HU of the interstitial haze at full density
        "reticular_hu": [-350.0, -150.0],  # HU of the reticular lines
        "lobar_extent": [0.3, 0.95],  # fraction of the lobe consolidated at severity 0 and 1
        # picks of a lobe to consolidate in a lobar (bacterial) film, inclusive range: each pick draws a lung
        # (right 55%), then a lobe of it not yet taken; a pick whose lung has none left is skipped
        "lobar_lobes": [1, 1],
        "interstitial_extent": [0.2, 0.85],  # fraction of both lungs involved at severity 0 and 1
        "density": [0.55, 1.0],  # opacity density at severity 0 and 1 (fraction of the full HU change)
        "mask_min_path_mm": 3.0,  # a pixel is in the lesion mask where its ray crosses this much opacity
    },
    # the room's marks on the written film: collimation, side marker, text, leads, grid (common.synthetic.film;
    # every probability 0 by default)
    "film": dict(DEFAULT_FILM),
    # the neck, shoulders, clavicles and arms, which the CT phantoms do not reach (common.synthetic.girdle;
    # probability 0 by default; never drawn on ct_sources, which have their own)
    "girdle": dict(DEFAULT_GIRDLE),
}

DEFAULT_CONFIG: dict[str, Any] = {
    "image_size": 128,  # square output in pixels (256 for the demo set)
    "pediatric": True,
    "splits": {
        # images per class (NORMAL, BACTERIAL, VIRAL) in each split
        "train": {"NORMAL": 30, "BACTERIAL": 60, "VIRAL": 30},
        "test": {"NORMAL": 10, "BACTERIAL": 20, "VIRAL": 10},
    },
    "images_per_patient": {"NORMAL": [1, 2], "BACTERIAL": [1, 3], "VIRAL": [1, 3]},  # inclusive ranges
    "normal2_fraction": 0.3,  # NORMAL images named NORMAL2-IM-XXXX-YYYY.jpeg (as in the real set)
    "severity": {"BACTERIAL": [0.2, 1.0], "VIRAL": [0.2, 1.0]},  # uniform range per class
    "jpeg_quality": 92,
    "write_masks": True,
    "num_workers": 1,  # processes rendering in parallel (the files are identical for any value)
    "render": {},  # overrides of DEFAULT_RENDER
}


@dataclass
class _Base:
    """A base phantom prepared for fast repeated projection."""

    soft: np.ndarray  # (R, C) line integral of the attenuation without the bone excess, display plane
    bone: np.ndarray  # (R, C) line integral of the bone excess
    lung_path: np.ndarray  # (R, C) path length through the lungs, mm
    body_path: np.ndarray  # (R, C) path length through the body (above -500 HU or lung), mm
    bone_path: np.ndarray  # (R, C) path length through bone, mm
    plane_spacing: tuple[float, float]
    spacing: np.ndarray  # RAS voxel sizes (mm)
    bbox: tuple[slice, slice, slice]  # the lungs' bounding box in the RAS volume
    lung_label: np.ndarray  # label inside the bbox (1 right, 2 left)
    plane_origin: tuple[int, int]  # (row, col) of the bbox's projection in the display plane
    body_width_mm: float
    lung_center_mm: tuple[float, float]  # (row, col) in plane mm


_POOL: dict[str, _Base] = {}


def render_config(override: Mapping[str, Any] | None, source: str = "render config") -> dict:
    """``DEFAULT_RENDER`` with ``override`` on top; ``phantom`` takes any key of the chest phantom's config.

    A ``phantom.body_scale`` given here applies to children too, in place of ``pediatric_body_scale``.

    Args:
        override: the user's render settings (may be ``None``).
        source: where they came from, for error messages.

    Returns:
        the merged settings.

    Raises:
        InputDataError: an unknown key (in ``phantom``: one ``make_chest_phantom`` does not know), or an
            ``s_curve`` without exactly ``centre`` and ``width``.
    """
    from common.synthetic.ct_phantom import PHANTOM_DEFAULTS

    override = dict(override or {})
    phantom_override = override.pop("phantom", None)
    phantom_override = {} if phantom_override is None else phantom_override
    if not isinstance(phantom_override, Mapping):
        raise InputDataError(source, f"'phantom' must be a mapping, got {type(phantom_override).__name__}")
    phantom = {**DEFAULT_RENDER["phantom"], **phantom_override}
    merge_config(PHANTOM_DEFAULTS, phantom, source=f"{source}: phantom")  # unknown keys fail here, naming the file
    cfg = merge_config(DEFAULT_RENDER, override, source=source)
    cfg["phantom"] = phantom
    s_curve = cfg["s_curve"]
    if s_curve is not None and (not isinstance(s_curve, Mapping) or set(s_curve) != {"centre", "width"}):
        raise InputDataError(source, f"'s_curve' must be null or {{centre: [lo, hi], width: [lo, hi]}}, got {s_curve!r}")
    return cfg


def _make_phantom(rng: np.random.Generator, pediatric: bool, cfg: dict) -> Any:
    from common.synthetic.ct_phantom import make_chest_phantom

    kind = "pediatric" if pediatric else "adult"
    voxel = float(cfg["voxel_mm"][kind])
    phantom_cfg = {"in_plane_spacing_mm": voxel, "slice_spacing_mm": [voxel, voxel], **cfg["phantom"]}
    if pediatric:
        phantom_cfg.setdefault("body_scale", list(cfg["pediatric_body_scale"]))
    # CT noise averages out along the rays; the radiograph gets its own quantum noise
    return make_chest_phantom(rng, phantom_cfg, add_noise=False)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma_vox: Any) -> np.ndarray:
    """Unit-variance Gaussian random field; wide ones are made on a half-resolution grid (4x faster)."""
    sigma = np.broadcast_to(np.asarray(sigma_vox, dtype=np.float64), (len(shape),))
    if np.all(sigma >= 2.5) and min(shape) >= 8:
        small_shape = tuple(-(-n // 2) for n in shape)
        small = ndimage.gaussian_filter(
            rng.standard_normal(small_shape, dtype=np.float32), sigma / 2, mode="wrap"
        )
        # nearest-neighbour doubling plus a short blur: 5x cheaper than spline zooming, just as smooth
        field = small.repeat(2, 0).repeat(2, 1).repeat(2, 2)[: shape[0], : shape[1], : shape[2]]
        field = ndimage.gaussian_filter(field, 0.7, mode="wrap", truncate=2.5)
    else:
        field = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma, mode="wrap")
    return field / (field.std() + 1e-6)


def _ellipsoid(shape, spacing, center_mm, radii_mm) -> np.ndarray:
    axes = [(np.arange(n) * s - c) / r for n, s, c, r in zip(shape, spacing, center_mm, radii_mm)]
    return (axes[0][:, None, None] ** 2 + axes[1][None, :, None] ** 2 + axes[2][None, None, :] ** 2) < 1.0


def _add_mediastinum(
    hu: np.ndarray,
    lung: np.ndarray,
    bone: np.ndarray,
    spacing: np.ndarray,
    heart_scale: float,
    thymus: bool,
    rng: np.random.Generator,
) -> None:
    """Enlarge the cardiac silhouette and add a thymus: soft tissue (40 HU) replacing lung, in place."""
    idx = np.argwhere(lung > 0)
    lo, hi = idx.min(0) * spacing, idx.max(0) * spacing
    ext = hi - lo
    mid_x = (lo[0] + hi[0]) / 2
    # heart: left of the midline (towards -X in RAS), anterior, lower third of the lungs
    heart_c = (mid_x - 0.07 * ext[0], lo[1] + 0.62 * ext[1], lo[2] + 0.24 * ext[2])
    heart_r = (0.22 * ext[0] * heart_scale, 0.28 * ext[1] * heart_scale, 0.2 * ext[2] * heart_scale)
    soft = _ellipsoid(hu.shape, spacing, heart_c, heart_r)
    if thymus:
        side = rng.uniform(-0.06, 0.1)  # the thymic sail is more often to the right (+X)
        thy_c = (mid_x + side * ext[0], lo[1] + 0.72 * ext[1], lo[2] + rng.uniform(0.62, 0.75) * ext[2])
        thy_r = (rng.uniform(0.12, 0.2) * ext[0], 0.2 * ext[1], rng.uniform(0.1, 0.16) * ext[2])
        soft |= _ellipsoid(hu.shape, spacing, thy_c, thy_r)
    soft &= (lung > 0) & ~bone
    hu[soft] = 40.0
    lung[soft] = 0


def _resample_coarse(
    vol: np.ndarray, spacing: np.ndarray, target: float, order: int
) -> tuple[np.ndarray, np.ndarray]:
    factors = np.asarray(spacing, dtype=np.float64) / float(target)
    if np.all(np.abs(factors - 1.0) < 0.05) or np.all(factors > 1.0):
        return vol, np.asarray(spacing, dtype=np.float64)
    factors = np.minimum(factors, 1.0)
    if order > 0:
        # anti-alias before thinning out a fine grid, so thin bone is averaged rather than skipped
        vol = ndimage.gaussian_filter(vol, np.where(factors < 0.95, 0.4 / factors, 0.0), mode="nearest")
    out = ndimage.zoom(vol, factors, order=order, prefilter=False, grid_mode=True, mode="nearest")
    return out, np.asarray(spacing, dtype=np.float64) * np.asarray(vol.shape) / np.asarray(out.shape)


def _prepare_base(phantom: Any, pediatric_anatomy: bool, rng: np.random.Generator, cfg: dict) -> _Base:
    """Reorient and coarsen a phantom, give it a child's mediastinum if asked, cache its projections."""
    affine = getattr(phantom, "affine", None)
    ref = affine if affine is not None else phantom.spacing
    hu, spacing = to_ras(np.asarray(phantom.hu, dtype=np.float32), ref)
    lung, _ = to_ras(np.asarray(phantom.lung_label), ref)
    bone_mask = getattr(phantom, "bone_mask", None)
    bone = to_ras(np.asarray(bone_mask), ref)[0].astype(bool) if bone_mask is not None else hu > 250
    coarse = float(cfg["voxel_mm"]["pediatric" if pediatric_anatomy else "adult"])
    hu, new_spacing = _resample_coarse(hu, spacing, coarse, order=1)
    lung = _resample_coarse(lung, spacing, coarse, order=0)[0]
    bone = _resample_coarse(bone.astype(np.uint8), spacing, coarse, order=0)[0].astype(bool)
    spacing = new_spacing
    hu = np.array(hu, dtype=np.float32)
    lung = np.array(lung, dtype=np.uint8)
    if pediatric_anatomy:
        thymus = bool(rng.random() < float(cfg["thymus_probability"]))
        _add_mediastinum(hu, lung, bone, spacing, draw_uniform(rng, cfg["heart_scale"]), thymus, rng)
    mu = hu_to_mu(hu)
    mu_soft_ref = np.float32(MU_SOFT_TISSUE_PER_MM)
    bone_excess = np.where(bone, np.maximum(mu - mu_soft_ref, 0.0), 0.0).astype(np.float32)
    soft_plane, plane_spacing = line_integrals(mu - bone_excess, spacing)
    bone_plane, _ = line_integrals(bone_excess, spacing)
    lung_plane, _ = line_integrals((lung > 0).astype(np.float32), spacing)
    bone_path, _ = line_integrals(bone.astype(np.float32), spacing)
    body_path, _ = line_integrals(((hu > -500) | (lung > 0)).astype(np.float32), spacing)

    nz, nx = hu.shape[2], hu.shape[0]
    # beyond the phantom's cranio-caudal extent the neck and abdomen go on: extend the planes by
    # repeating the end rows (bone only near the midline, where the spine continues)
    pad = int(round(0.35 * nz))
    col_w = np.exp(-(((np.arange(nx) - (nx - 1) / 2) * spacing[0] / 15.0) ** 2)).astype(np.float32)
    soft_plane = np.pad(soft_plane, ((pad, pad), (0, 0)), mode="edge")
    bone_top = np.repeat(bone_plane[:1] * col_w, pad, axis=0)
    bone_bottom = np.repeat(bone_plane[-1:] * col_w, pad, axis=0)
    bone_plane = np.concatenate([bone_top, bone_plane, bone_bottom], axis=0)
    lung_plane = np.pad(lung_plane, ((pad, pad), (0, 0)))
    bone_path = np.pad(bone_path, ((pad, pad), (0, 0)))
    body_path = np.pad(body_path, ((pad, pad), (0, 0)), mode="edge")

    idx = np.argwhere(lung > 0)
    if idx.size == 0:
        raise ValueError("the phantom has no lung voxels")
    lo, hi = idx.min(0), idx.max(0) + 1
    bbox = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    plane_origin = (pad + nz - int(hi[2]), nx - int(hi[0]))
    mid_rows = soft_plane[pad + nz // 3 : pad + 2 * nz // 3]
    body_cols = np.nonzero(mid_rows.max(axis=0) > 0.05)[0]
    body_width = (
        (body_cols[-1] - body_cols[0] + 1) * plane_spacing[1] if body_cols.size else nx * plane_spacing[1]
    )
    lung_rows = np.nonzero(lung_plane.max(axis=1) > 0)[0]
    lung_cols = np.nonzero(lung_plane.max(axis=0) > 0)[0]
    center = (
        (lung_rows[0] + lung_rows[-1] + 1) / 2 * plane_spacing[0],
        (lung_cols[0] + lung_cols[-1] + 1) / 2 * plane_spacing[1],
    )
    return _Base(
        soft=soft_plane,
        bone=bone_plane,
        lung_path=lung_plane,
        bone_path=bone_path,
        body_path=body_path,
        plane_spacing=plane_spacing,
        spacing=np.asarray(spacing),
        bbox=bbox,
        lung_label=lung[bbox].copy(),
        plane_origin=plane_origin,
        body_width_mm=float(body_width),
        lung_center_mm=(float(center[0]), float(center[1])),
    )


def _load_ct_source(pattern: str, names: Any, index: int) -> Any:
    """CT ``index`` (modulo their number) of the ``ct_sources`` glob, with its lungs split right/left."""
    import glob
    from types import SimpleNamespace

    import nibabel as nib

    from common.errors import InputDataError
    from common.segmentation.transforms import split_binary_lungs
    from common.transforms.body import body_mask

    files = sorted(glob.glob(os.path.expanduser(pattern)))
    if not files:
        raise InputDataError(pattern, "ct_sources: no CT volume matches this pattern")
    ct_path = files[index % len(files)]
    old, new = (str(n) for n in names)
    if old not in os.path.basename(ct_path):
        raise InputDataError(ct_path, f"ct_sources: the name holds no {old!r} to find its lung mask by (ct_lung_names {names})")
    lung_path = os.path.join(os.path.dirname(ct_path), os.path.basename(ct_path).replace(old, new))
    if not os.path.isfile(lung_path):
        raise InputDataError(ct_path, f"ct_sources: no lung mask {lung_path} beside it (ct_lung_names {names})")
    ct, lung = nib.load(ct_path), nib.load(lung_path)
    if ct.shape != lung.shape:
        raise InputDataError(lung_path, f"lung mask shape {lung.shape} differs from its CT's {ct.shape}")
    hu = np.asarray(ct.dataobj, dtype=np.float32)
    label = np.asarray(lung.dataobj)
    if not label.any():
        raise InputDataError(lung_path, "ct_sources: the lung mask is empty")
    label = label.astype(np.uint8) if label.max() == 2 else split_binary_lungs(label > 0, ct.affine)
    # the couch and anything else outside the patient would widen the film's "body": air instead
    hu = np.where(body_mask(hu, ct.affine) | (label > 0), hu, np.float32(-1000.0))
    return SimpleNamespace(hu=hu, lung_label=label, affine=ct.affine)


def _get_base(pediatric: bool, index: int, cfg: dict) -> _Base:
    key = json.dumps(
        [
            cfg["ct_sources"],
            cfg["ct_lung_names"],
            pediatric,
            index,
            cfg["pool_seed"],
            cfg["phantom"],
            cfg["voxel_mm"],
            cfg["pediatric_body_scale"],
            cfg["heart_scale"],
            cfg["thymus_probability"],
            cfg["girdle"],
        ],
        sort_keys=True,
    )
    if key not in _POOL:
        seq = np.random.SeedSequence([int(cfg["pool_seed"]), int(pediatric), int(index)])
        # spawned children do not depend on how many are spawned: the first two are those of earlier versions
        phantom_rng, anatomy_rng, girdle_rng = (np.random.default_rng(s) for s in seq.spawn(3))
        if cfg["ct_sources"]:
            phantom = _load_ct_source(cfg["ct_sources"], cfg["ct_lung_names"], index)
        else:
            phantom = _make_phantom(phantom_rng, pediatric, cfg)
        base = _prepare_base(phantom, pediatric, anatomy_rng, cfg)
        if not cfg["ct_sources"] and girdle_enabled(cfg["girdle"]):
            base = _with_girdle(base, girdle_rng, cfg["girdle"])
        _POOL[key] = base
    return _POOL[key]


def _with_girdle(base: _Base, rng: np.random.Generator, girdle_cfg: Mapping[str, Any]) -> _Base:
    """``base`` with a neck, shoulders and arms drawn into its planes (``common.synthetic.girdle``).

    The planes are widened first, so that arms beside the chest are not cut off by the phantom's field of view.

    Args:
        base: a prepared phantom (``_prepare_base``).
        rng: the generator the girdle is drawn from.
        girdle_cfg: a merged ``DEFAULT_GIRDLE``.

    Returns:
        a new ``_Base`` with the girdle in its planes, or ``base`` itself when this anatomy draws none.
    """
    pad = int(np.ceil(0.35 * base.body_width_mm / base.plane_spacing[1]))
    planes = {
        name: np.pad(getattr(base, name), ((0, 0), (pad, pad)))
        for name in ("soft", "bone", "lung_path", "body_path", "bone_path")
    }
    apex_row = float(np.nonzero(planes["lung_path"].max(axis=1) > 0)[0][0])
    centre_col = base.lung_center_mm[1] / base.plane_spacing[1] + pad
    drawn = add_shoulder_girdle(
        planes["soft"], planes["bone"], planes["body_path"], planes["bone_path"], base.plane_spacing,
        apex_row, centre_col, base.body_width_mm, rng, girdle_cfg,
    )
    if drawn is None:
        return base
    planes.update(drawn)
    return replace(
        base,
        **planes,
        plane_origin=(base.plane_origin[0], base.plane_origin[1] + pad),
        lung_center_mm=(base.lung_center_mm[0], base.lung_center_mm[1] + pad * base.plane_spacing[1]),
    )


def _lobe_masks(label: np.ndarray, side: int) -> dict[str, np.ndarray]:
    """Split one lung (label ``side``) into lobes with an oblique and (right) a horizontal fissure."""
    sel = label == side
    idx = np.argwhere(sel)
    lo, hi = idx.min(0), idx.max(0)
    ext = np.maximum(hi - lo, 1)
    yn = ((np.arange(label.shape[1]) - lo[1]) / ext[1])[None, :, None]  # 0 posterior .. 1 anterior
    zn = ((np.arange(label.shape[2]) - lo[2]) / ext[2])[None, None, :]  # 0 base .. 1 apex
    lower = zn < 0.12 + 0.62 * (1.0 - yn)  # the oblique fissure runs from high posterior to low anterior
    lower = np.broadcast_to(lower, label.shape) & sel
    rest = sel & ~lower
    if side == 1:
        upper = rest & np.broadcast_to(zn >= 0.58, label.shape)
        return {"upper": upper, "middle": rest & ~upper, "lower": lower}
    return {"upper": rest, "lower": lower}


def _grow(score: np.ndarray, region: np.ndarray, fraction: float, edge: float) -> np.ndarray:
    """Soft occupancy (0..1) of the top ``fraction`` of ``region`` by ``score``."""
    vals = score[region]
    if vals.size == 0:
        return np.zeros(score.shape, dtype=np.float32)
    k = int(np.clip((1.0 - fraction) * vals.size, 0, vals.size - 1))
    thr = np.partition(vals, k)[k]
    occ = np.clip((score - thr) / edge + 0.5, 0.0, 1.0)
    return np.where(region, occ, 0.0).astype(np.float32)


def _consolidate_lobe(
    lobe: np.ndarray, shape: tuple[int, ...], sp: np.ndarray, sev: float, density: float, lung_hu: float,
    rng: np.random.Generator, lcfg: Mapping[str, Any],
) -> tuple[np.ndarray, np.ndarray]:
    """A consolidation grown from a seed in one lobe.

    Args:
        lobe: boolean mask of the lobe in the lungs' bounding box.
        shape: the bounding box's shape; sp: its voxel sizes (mm).
        sev: severity 0..1 (scales the extent); density: fraction of the full HU change.
        lung_hu: the aerated lung's HU the change is measured from.
        rng: the lesion's random generator.
        lcfg: the merged ``lesion`` settings.

    Returns:
        (HU increase, 'solid' occupancy 0..1), float32 arrays of ``shape``.
    """
    pts = np.argwhere(lobe)
    seed = pts[int(rng.integers(len(pts)))] * sp
    grid = [np.arange(n) * s for n, s in zip(shape, sp)]
    dist = np.sqrt(
        (grid[0][:, None, None] - seed[0]) ** 2
        + (grid[1][None, :, None] - seed[1]) ** 2
        + (grid[2][None, None, :] - seed[2]) ** 2
    )
    scale = float(np.ptp(pts * sp, axis=0).max() + 1.0)
    noise = _smooth_noise(rng, shape, 8.0 / sp)
    score = -dist / scale + 0.18 * noise
    extent = lcfg["lobar_extent"][0] + sev * (lcfg["lobar_extent"][1] - lcfg["lobar_extent"][0])
    occ = _grow(score, lobe, extent, edge=0.08)
    target = draw_uniform(rng, lcfg["consolidation_hu"])
    # air bronchograms and uneven filling: a little texture inside the consolidation
    fill = np.clip(density * (1.0 - 0.12 * np.abs(_smooth_noise(rng, shape, 1.0))), 0.0, 1.0)
    dhu = occ * fill * (target - lung_hu)
    solid = occ * fill
    return dhu.astype(np.float32), solid.astype(np.float32)


def _lesion_hu(
    base: _Base, pattern: str, severity: float, rng: np.random.Generator, cfg: dict
) -> tuple[np.ndarray, np.ndarray]:
    """The HU increase of the opacity inside the lungs' bounding box, and its 'solid' occupancy."""
    label = base.lung_label
    shape = label.shape
    sp = base.spacing
    lcfg = cfg["lesion"]
    sev = float(np.clip(severity, 0.0, 1.0))
    density = lcfg["density"][0] + sev * (lcfg["density"][1] - lcfg["density"][0])
    lung_hu = -850.0
    if pattern == "lobar":
        lo_n, hi_n = (int(v) for v in lcfg["lobar_lobes"])
        n_lobes = int(rng.integers(lo_n, hi_n + 1)) if hi_n > lo_n else lo_n  # no draw at [1, 1] (earlier sets)
        dhu = np.zeros(shape, np.float32)
        solid = np.zeros(shape, np.float32)
        taken: set[tuple[int, str]] = set()
        lobes_of: dict[int, dict[str, np.ndarray]] = {}  # each lung's lobes cut once, however many picks
        for _ in range(n_lobes):
            side = 1 if rng.random() < 0.55 else 2
            if not np.any(label == side):
                side = 3 - side
            if side not in lobes_of:
                lobes_of[side] = _lobe_masks(label, side)
            lobes = lobes_of[side]
            names = [n for n, m in lobes.items() if m.any() and (side, n) not in taken]
            if not names:
                continue
            weights = np.array([{"upper": 0.4, "middle": 0.2, "lower": 0.5}[n] for n in names])
            name = names[int(rng.choice(len(names), p=weights / weights.sum()))]
            taken.add((side, name))
            lobe_dhu, lobe_solid = _consolidate_lobe(lobes[name], shape, sp, sev, density, lung_hu, rng, lcfg)
            dhu = np.maximum(dhu, lobe_dhu)
            solid = np.maximum(solid, lobe_solid)
        return dhu, solid
    if pattern == "interstitial":
        sel = label > 0
        idx = np.argwhere(sel)
        lo, hi = idx.min(0), idx.max(0)
        ext = np.maximum(hi - lo, 1)
        xn = ((np.arange(shape[0]) - lo[0]) / ext[0])[:, None, None]
        zn = ((np.arange(shape[2]) - lo[2]) / ext[2])[None, None, :]
        yn = ((np.arange(shape[1]) - lo[1]) / ext[1])[None, :, None]
        # perihilar (near the midline at mid height) and lower-zone predominance
        hilar = np.exp(-(((xn - 0.5) / 0.3) ** 2) - ((zn - 0.45) / 0.3) ** 2 - ((yn - 0.5) / 0.5) ** 2)
        weight = 0.9 * hilar + 0.5 * (1.0 - zn) + 0.35 * _smooth_noise(rng, shape, 12.0 / sp)
        extent = lcfg["interstitial_extent"][0] + sev * (
            lcfg["interstitial_extent"][1] - lcfg["interstitial_extent"][0]
        )
        occ = _grow(weight.astype(np.float32), sel, extent, edge=0.25)
        ggo_hu = draw_uniform(rng, lcfg["ground_glass_hu"])
        ret_hu = draw_uniform(rng, lcfg["reticular_hu"])
        band = _smooth_noise(rng, shape, 1.2) - 0.6 * _smooth_noise(rng, shape, 3.0)
        band /= band.std() + 1e-6
        lines = np.exp(-((band / 0.35) ** 2))  # thin sheets at the zero crossings: a reticular network
        haze = np.clip(0.75 + 0.35 * _smooth_noise(rng, shape, 4.0 / sp), 0.0, 1.0)
        # severe disease adds patchy airspace consolidation on top of the haze (more, and larger, with severity)
        patches = np.clip((_smooth_noise(rng, shape, 10.0 / sp) - (1.8 - 2.2 * sev)) / 0.5, 0.0, 1.0)
        cons_hu = draw_uniform(rng, lcfg["consolidation_hu"])
        dhu = (
            occ
            * density
            * (
                haze * (ggo_hu - lung_hu)
                + lines * (ret_hu - ggo_hu) * 0.8
                + patches * (cons_hu - ggo_hu) * 0.8
            )
        )
        solid = occ * density * np.clip(haze * 0.6 + lines + patches, 0.0, 1.0)
        return np.maximum(dhu, 0.0).astype(np.float32), solid.astype(np.float32)
    raise ValueError(f"pattern must be one of {PATTERNS}, got {pattern!r}")


def _place(plane_shape: tuple[int, int], patch: np.ndarray, origin: tuple[int, int]) -> np.ndarray:
    out = np.zeros(plane_shape, dtype=np.float32)
    r0, c0 = origin
    out[r0 : r0 + patch.shape[0], c0 : c0 + patch.shape[1]] = patch
    return out


def render_cxr(
    rng: np.random.Generator,
    size: int = 256,
    pediatric: bool = False,
    pattern: str = "none",
    severity: float = 0.0,
    config: dict | None = None,
    phantom: Any = None,
    base_index: int | None = None,
) -> dict[str, Any]:
    """Render one frontal chest radiograph projected from a CT phantom, optionally with pneumonia.

    Args:
        rng: random generator; the same generator state gives the same image. The pose, exposure,
            noise and lesion are drawn from independent child streams, so ``pattern="none"`` and
            ``pattern="lobar"`` from equal generator states differ only by the lesion.
        size: output width and height in pixels.
        pediatric: child-sized anatomy (1-5 years) with a larger cardiothymic silhouette.
        pattern: ``"none"``, ``"lobar"`` (bacterial consolidation) or ``"interstitial"`` (viral).
        severity: 0..1, the extent and density of the opacity.
        config: overrides of ``DEFAULT_RENDER``.
        phantom: a ``ChestPhantom``-like object (``hu``, ``lung_label``, ``affine`` or ``spacing``,
            optional ``bone_mask``) to project instead of one from the cached pool.
        base_index: which pooled base phantom to use (the same patient's images share one); None draws it.

    Returns:
        dict with ``image`` (size, size) uint8 (bone bright; rows superior->inferior, patient's right
        on the viewer's left), ``lung_mask`` and ``lesion_mask`` (uint8 0/1), ``bone_mask`` and
        ``body_mask`` (the projected bone and body, 0/1), ``pixel_spacing`` (mm), ``pattern``, ``severity`` and ``base_index``.
    """
    if pattern not in PATTERNS:
        raise ValueError(f"pattern must be one of {PATTERNS}, got {pattern!r}")
    cfg = render_config(config)
    pose_rng, lesion_rng, noise_rng = (np.random.default_rng(s) for s in rng.integers(0, 2**63 - 1, size=3))
    drawn_index = int(pose_rng.integers(int(cfg["pool_size"])))
    if phantom is None:
        base_index = drawn_index if base_index is None else int(base_index) % int(cfg["pool_size"])
        base = _get_base(bool(pediatric), base_index, cfg)
    else:
        base_index = -1
        base = _prepare_base(phantom, False, np.random.default_rng(0), cfg)

    scale = draw_uniform(pose_rng, cfg["size_jitter"])
    fill = draw_uniform(pose_rng, cfg["fill_fraction"])
    rotation = draw_uniform(pose_rng, cfg["rotation_deg"])
    shift = np.array([draw_uniform(pose_rng, cfg["shift_fraction"]), draw_uniform(pose_rng, cfg["shift_fraction"])])
    bone_k = draw_uniform(pose_rng, cfg["bone_contrast"])
    detector = {
        "i0_photons": float(np.exp(draw_uniform(pose_rng, np.log(cfg["i0_photons"])))),
        "scatter_fraction": draw_uniform(pose_rng, cfg["scatter_fraction"]),
        "electronic_noise": draw_uniform(pose_rng, cfg["electronic_noise"]),
        "unsharp_amount": draw_uniform(pose_rng, cfg["unsharp_amount"]),
        "gamma": draw_uniform(pose_rng, cfg["gamma"]),
    }
    if cfg["s_curve"]:  # drawn last and only when set: films without it render as before
        detector["s_curve"] = (draw_uniform(pose_rng, cfg["s_curve"]["centre"]), draw_uniform(pose_rng, cfg["s_curve"]["width"]))

    pixel_spacing = base.body_width_mm * scale / (fill * size)
    geom = DetectorGeometry(shape=(size, size), pixel_spacing=pixel_spacing, center_mm=base.lung_center_mm)
    pose = {"scale": scale, "rotation_deg": rotation, "shift_mm": tuple(shift * size * pixel_spacing)}

    total = base.soft + np.float32(bone_k) * base.bone
    lesion_mask = np.zeros((size, size), dtype=np.uint8)
    if pattern != "none":
        dhu, solid = _lesion_hu(base, pattern, severity, lesion_rng, cfg)
        dmu = dhu * np.float32(MU_WATER_PER_MM * 1e-3)
        patch, _ = line_integrals(dmu, base.spacing)
        total = total + _place(total.shape, patch, base.plane_origin)
        path, _ = line_integrals((solid > 0.5).astype(np.float32), base.spacing)
        path_plane = _place(total.shape, path, base.plane_origin)
        lesion_mask = (
            resample_to_detector(path_plane, base.plane_spacing, geom, order=0, **pose)
            >= float(cfg["lesion"]["mask_min_path_mm"])
        ).astype(np.uint8)

    integral = resample_to_detector(total, base.plane_spacing, geom, order=1, **pose)
    lung_mask = resample_to_detector(base.lung_path, base.plane_spacing, geom, order=0, **pose) >= 2.0
    bone_proj = resample_to_detector(base.bone_path, base.plane_spacing, geom, order=0, **pose) >= 2.0
    body_proj = resample_to_detector(base.body_path, base.plane_spacing, geom, order=0, **pose) >= 20.0
    image = detector_response(integral, rng=noise_rng, **detector)
    if film_enabled(cfg["film"]):  # its own stream, drawn only when on: films without marks render as before
        image = dress_film(image, np.random.default_rng(rng.integers(0, 2**63 - 1)), cfg["film"])
    return {
        "image": (image * 255.0 + 0.5).astype(np.uint8),
        "lung_mask": lung_mask.astype(np.uint8),
        "lesion_mask": lesion_mask,
        "bone_mask": bone_proj.astype(np.uint8),
        "body_mask": body_proj.astype(np.uint8),
        "pixel_spacing": float(pixel_spacing),
        "pattern": pattern,
        "severity": float(severity) if pattern != "none" else 0.0,
        "base_index": base_index,
    }


_CLASS_PATTERN = {"NORMAL": "none", "BACTERIAL": "lobar", "VIRAL": "interstitial"}


def _plan_pneumonia(cfg: dict, rng: np.random.Generator) -> list[dict[str, Any]]:
    """Patients and file names in the real set's naming, one patient in one split only."""
    jobs: list[dict[str, Any]] = []
    next_im = 1  # IM-XXXX patient numbers (NORMAL and NORMAL2 number their patients separately)
    next_im2 = 1
    next_person = 1
    next_image = 1  # personN_<type>_M: M runs over the whole set
    for split, per_class in cfg["splits"].items():
        for cls in ("NORMAL", "BACTERIAL", "VIRAL"):
            remaining = int(per_class.get(cls, 0))
            lo, hi = (int(v) for v in cfg["images_per_patient"][cls])
            while remaining > 0:
                n = int(min(rng.integers(lo, hi + 1), remaining))
                remaining -= n
                base_index = int(rng.integers(1 << 30))
                if cls == "NORMAL":
                    severity = 0.0
                    if rng.random() < float(cfg["normal2_fraction"]):
                        patient = f"NORMAL2-IM-{next_im2:04d}"
                        next_im2 += 1
                    else:
                        patient = f"IM-{next_im:04d}"
                        next_im += 1
                    names = [f"{patient}-{k + 1:04d}.jpeg" for k in range(n)]
                    folder = "NORMAL"
                else:
                    severity = draw_uniform(rng, cfg["severity"][cls])
                    kind = "bacteria" if cls == "BACTERIAL" else "virus"
                    patient = f"person{next_person}"
                    next_person += 1
                    names = [f"{patient}_{kind}_{next_image + k}.jpeg" for k in range(n)]
                    next_image += n
                    folder = "PNEUMONIA"
                for k, name in enumerate(names):
                    jobs.append(
                        {
                            "split": split,
                            "label": cls,
                            "folder": folder,
                            "name": name,
                            "patient": patient,
                            # follow-up films of one patient: same anatomy, a similar but not equal opacity
                            "severity": float(
                                np.clip(severity + (rng.normal(0, 0.08) if k and severity else 0.0), 0, 1)
                            ),
                            "base_index": base_index,
                            "seed": int(rng.integers(0, 2**63 - 1)),
                        }
                    )
    return jobs


def _write_cxr_job(args: tuple) -> int:
    """Render one planned image and write it (and its masks); returns the lesion's pixel count."""
    (out, size, pediatric, render_cfg, quality, write_masks), job = args
    sample = render_cxr(
        np.random.default_rng(job["seed"]),
        size=size,
        pediatric=pediatric,
        pattern=_CLASS_PATTERN[job["label"]],
        severity=job["severity"],
        config=render_cfg,
        base_index=job["base_index"],
    )
    rel = Path("chest_xray") / job["split"] / job["folder"] / job["name"]
    save_gray_jpeg(out / rel, sample["image"], quality=quality)
    if write_masks:
        save_mask_png(out / "lesion_masks" / rel.with_suffix(".png"), sample["lesion_mask"])
        save_mask_png(out / "lung_masks" / rel.with_suffix(".png"), sample["lung_mask"])
    return int(sample["lesion_mask"].sum())


def generate_pneumonia_cxr(
    out_dir: str | os.PathLike, config: str | os.PathLike | dict | None = None, seed: int = 0
) -> Path:
    """Write a synthetic pediatric pneumonia CXR set in the Kermany ChestXRay2017 layout.

    ``chest_xray/{train,test}/NORMAL/IM-XXXX-YYYY.jpeg`` (some ``NORMAL2-IM-XXXX-YYYY.jpeg``) and
    ``chest_xray/{train,test}/PNEUMONIA/personN_bacteria_M.jpeg`` / ``personN_virus_M.jpeg`` (the patient is
    ``IM-XXXX`` or ``personN``; several films for some patients; a patient in one split only), 8-bit
    grayscale JPEGs; ``lesion_masks/`` and ``lung_masks/`` mirror the image paths as PNG (0/255);
    ``metadata.csv`` lists every image with its class, patient and severity; ``dataset.yaml`` the counts.

    Args:
        out_dir: output folder.
        config: YAML path or dict overriding ``DEFAULT_CONFIG`` (see ``configs/pneumonia_cxr.yaml``).
        seed: random seed; the same seed gives identical files.

    Returns:
        the output folder.
    """
    import csv
    import io

    from common.io.atomic import atomic_write_text

    cfg = load_config(DEFAULT_CONFIG, config)
    render_cfg = render_config(cfg["render"], f"{config if isinstance(config, (str, os.PathLike)) else 'config'}: render")
    out = Path(out_dir)
    size = int(cfg["image_size"])
    jobs = _plan_pneumonia(cfg, np.random.default_rng(seed))
    counts: dict[str, dict[str, int]] = {s: {"NORMAL": 0, "BACTERIAL": 0, "VIRAL": 0} for s in cfg["splits"]}
    patients: dict[str, dict[str, set]] = {
        s: {"NORMAL": set(), "BACTERIAL": set(), "VIRAL": set()} for s in cfg["splits"]
    }
    pediatric = bool(cfg["pediatric"])
    # build the base phantoms once, before any worker starts (forked workers inherit them)
    for index in sorted({job["base_index"] % int(render_cfg["pool_size"]) for job in jobs}):
        _get_base(pediatric, index, render_cfg)
    task = (out, size, pediatric, render_cfg, int(cfg["jpeg_quality"]), bool(cfg["write_masks"]))
    rows = []
    for job, lesion_pixels in zip(
        jobs, parallel_map(_write_cxr_job, [(task, job) for job in jobs], cfg["num_workers"], "pneumonia_cxr")
    ):
        counts[job["split"]][job["label"]] += 1
        patients[job["split"]][job["label"]].add(job["patient"])
        rel = Path("chest_xray") / job["split"] / job["folder"] / job["name"]
        rows.append(
            [
                rel.as_posix(),
                job["split"],
                job["label"],
                job["patient"],
                f"{job['severity']:.4f}",
                lesion_pixels,
            ]
        )
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["image", "split", "label", "patient", "severity", "lesion_pixels"])
    writer.writerows(rows)
    atomic_write_text(out / "metadata.csv", buf.getvalue())
    write_dataset_yaml(
        out,
        {
            "name": "synthetic_chest_xray2017",
            "layout": "Kermany ChestXRay2017: chest_xray/{train,test}/{NORMAL,PNEUMONIA}/*.jpeg; "
            "bacterial/viral from the file name (personN_bacteria_M / personN_virus_M)",
            "generator": "common.synthetic.cxr:generate_pneumonia_cxr",
            "seed": int(seed),
            "classes": ["NORMAL", "BACTERIAL", "VIRAL"],
            "counts": counts,
            "patients": {s: {c: len(v) for c, v in per.items()} for s, per in patients.items()},
            "image_size": [size, size],
            "lesion_masks": "lesion_masks/<image path>.png (255 = projected 3D opacity)"
            if cfg["write_masks"]
            else None,
            "lung_masks": "lung_masks/<image path>.png (255 = projected lung label)"
            if cfg["write_masks"]
            else None,
            "metadata": "metadata.csv",
            # the effective configuration (render defaults filled in); num_workers does not change the files
            "config": {**{k: v for k, v in cfg.items() if k != "num_workers"}, "render": render_cfg},
        },
    )
    return out


def benchmark_xray(
    n_images: int = 300, size: int = 256, seed: int = 0, num_workers: int = 2
) -> dict[str, Any]:
    """Time the generation of a 3-class pneumonia set (NORMAL:BACTERIAL:VIRAL = 1:2:1), files included.

    The pool of base phantoms is rebuilt (as in a fresh process) and included in ``seconds``; the images
    are rendered by ``num_workers`` processes (2 = the project's reference machine).

    Returns:
        dict with ``n_images``, ``size``, ``seconds`` (wall clock, total), ``phantom_pool_seconds``,
        ``seconds_per_image``, ``images_per_second``, ``num_workers`` and ``cpu_seconds`` (user + system
        time of all processes; on an idle machine wall clock ~ cpu_seconds / num_workers).
    """
    import tempfile

    n_normal = n_images // 4
    n_viral = n_images // 4
    n_bacterial = n_images - n_normal - n_viral
    config = {
        "image_size": size,
        "splits": {"train": {"NORMAL": n_normal, "BACTERIAL": n_bacterial, "VIRAL": n_viral}},
        "num_workers": num_workers,
    }
    import resource

    def _cpu() -> float:
        own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime

    _POOL.clear()
    cpu_start = _cpu()
    start = time.perf_counter()
    render_cfg = render_config(None)
    for k in range(int(render_cfg["pool_size"])):
        _get_base(True, k, render_cfg)
    pool_seconds = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        generate_pneumonia_cxr(tmp, config=config, seed=seed)
    total = time.perf_counter() - start
    return {
        "n_images": int(n_images),
        "size": int(size),
        "seconds": round(total, 3),
        "phantom_pool_seconds": round(pool_seconds, 3),
        "seconds_per_image": round(total / max(n_images, 1), 4),
        "images_per_second": round(n_images / total, 2),
        "num_workers": int(num_workers),
        # CPU seconds of this process and its workers: what the run costs when the cores are not shared
        "cpu_seconds": round(_cpu() - cpu_start, 3),
    }
