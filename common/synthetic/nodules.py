"""Pulmonary nodules inserted into chest CT phantoms, and the LUNA16-layout ``nodules`` generator.

Nodule model
------------
- **Count**: a scan has no nodule with probability ``no_nodule_probability``, else a uniform number in
  ``nodules_per_scan``.
- **Size**: the diameter is log-normal (median ``diameter_mm.median``, log-sd ``diameter_mm.sigma``),
  truncated to ``[min, max]``: most nodules are small, as in LIDC-IDRI/LUNA16 (median ~7 mm). With
  ``mass_probability`` a scan also gets one mass above 30 mm (off by default). ``diameter_mm`` in the
  annotations is the equivalent-sphere diameter of the nodule body (spicules excluded), measured on a
  3x super-sampled grid, so it matches the voxels of the mask.
- **Attenuation**: solid (``solid_hu``, about +20..+60 HU), ground-glass (``ground_glass_hu``, about
  -600..-400 HU) or part-solid (a ground-glass nodule with a solid core of 30-60 % of its diameter).
  Partial volume is modelled: each voxel mixes the lung and the nodule by the fraction of it covered. A
  nodule never hides a vessel (the brighter value wins), as ground-glass does not in real scans.
- **Margin**: round (slightly irregular ellipsoid), lobulated (3-6 smooth bumps) or spiculated
  (lobulated body plus 6-14 tapering spicules of 40-120 % of the radius, drawn but not part of the mask).
- **Malignancy** 1-5 (LIDC's scale), an ordinal logistic model::

      eta = 2.4 ln(d / 8 mm) + 1.3 [spiculated] + 0.6 [lobulated] + 0.9 [part-solid] - 0.4 [ground-glass]
      P(rating <= k) = sigmoid(c_k - eta),  c = (-2.0, -0.5, 0.9, 2.2)

  so a 4 mm round solid nodule is mostly rated 1-2 and a 25 mm spiculated one mostly 5.
- **Position**: the centre is drawn among the lung voxels and accepted only if every voxel the nodule
  touches (spicules included) is in one lung and at least ``min_separation_mm`` from other nodules;
  otherwise it is drawn again (and the nodule shrunk after many failures).

Coordinates follow LUNA16: ``annotations.csv`` holds world millimetres in the MetaImage's LPS physical
space (``Offset`` + index x ``ElementSpacing``, identity ``TransformMatrix``).
"""

from __future__ import annotations

import csv
import io
import math
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.synthetic.config import load_config, make_rng, merge_config, write_dataset_yaml
from common.synthetic.ct_phantom import (
    PHANTOM_DEFAULTS,
    ChestPhantom,
    _run_jobs,
    add_ct_noise,
    make_chest_phantom,
)

__all__ = ["NODULE_DEFAULTS", "NODULES_DEFAULTS", "Nodule", "insert_nodules", "malignancy_probabilities", "generate_nodules"]

#: Defaults of the nodule model (the ``nodule`` section of the generator config).
NODULE_DEFAULTS: dict[str, Any] = {
    "nodules_per_scan": [1, 5],  # uniform count when a scan has nodules
    "no_nodule_probability": 0.2,  # share of scans without any nodule
    "diameter_mm": {"median": 7.0, "sigma": 0.55, "min": 3.0, "max": 30.0},  # truncated log-normal
    "min_diameter_voxels": 1.6,  # nodules smaller than this many voxels of the scan are drawn again
    "type_probabilities": {"solid": 0.72, "part_solid": 0.12, "ground_glass": 0.16},
    "margin_probabilities": {"round": 0.5, "lobulated": 0.3, "spiculated": 0.2},
    "solid_hu": [20.0, 60.0],
    "ground_glass_hu": [-600.0, -400.0],
    "mass_probability": 0.0,  # chance per scan of one extra mass above 30 mm (exercises the 30 mm rule)
    "mass_diameter_mm": [32.0, 50.0],
    "min_separation_mm": 4.0,  # free space between two nodules' surfaces
    "max_tries": 300,  # candidate positions tried per nodule before it is shrunk
}

#: Defaults of ``generate_nodules``: a small LUNA16-style set for tests (seconds); see configs/nodules.yaml.
NODULES_DEFAULTS: dict[str, Any] = {
    "num_train": 4,
    "num_val": 1,
    "num_test": 2,
    "subset": "subset0",  # folder of the scans, like LUNA16's subset0..subset9
    "dicom_cases": "test",  # which scans also get a DICOM series: "test", "all", "none" or a list of seriesuids
    "lung_mask_values": "project",  # seg-lungs-LUNA16 values: "project" (1 right, 2 left) or "luna16" (3, 4, trachea 5)
    "candidates_per_scan": 20,  # negative candidates per scan in candidates.csv (LUNA16's false-positive track)
    "num_workers": 1,
    "nodule": NODULE_DEFAULTS,
    "phantom": {
        **PHANTOM_DEFAULTS,
        "in_plane_spacing_mm": 2.5,
        "slice_spacing_mm": [2.5, 2.5],
        "vessel_generations": 7,
    },
}

_CUTS = np.array([-2.0, -0.5, 0.9, 2.2])


@dataclass
class Nodule:
    """One inserted nodule (positions in the phantom's RAS world and voxel space)."""

    index: int
    center_ras: list[float]
    center_voxel: list[float]
    diameter_mm: float
    kind: str  # solid, part_solid, ground_glass
    margin: str  # round, lobulated, spiculated
    malignancy: int
    hu: float
    core_hu: float | None
    lung: int  # 1 right, 2 left
    is_mass: bool

    @property
    def center_lps(self) -> list[float]:
        x, y, z = self.center_ras
        return [-x, -y, z]


def malignancy_probabilities(diameter_mm: float, kind: str, margin: str) -> np.ndarray:
    """P(rating = 1..5) of the ordinal logistic malignancy model (see the module docstring)."""
    eta = 2.4 * math.log(max(diameter_mm, 0.5) / 8.0)
    eta += {"spiculated": 1.3, "lobulated": 0.6}.get(margin, 0.0)
    eta += {"part_solid": 0.9, "ground_glass": -0.4}.get(kind, 0.0)
    cumulative = 1.0 / (1.0 + np.exp(-(_CUTS - eta)))
    return np.diff(np.concatenate([[0.0], cumulative, [1.0]]))


def _choice(rng: np.random.Generator, probabilities: Mapping[str, float]) -> str:
    names = list(probabilities)
    p = np.array([float(probabilities[n]) for n in names])
    if p.sum() <= 0:
        raise ValueError(f"probabilities must not all be zero: {dict(probabilities)}")
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.diag(r))


class _Shape:
    """Implicit nodule shape in mm around its centre: body (ellipsoid + lobes), spicules, solid core."""

    def __init__(self, rng: np.random.Generator, radius: float, margin: str, kind: str) -> None:
        self.radius = radius
        self.rotation = _random_rotation(rng)
        axes = np.array([1.0, rng.uniform(0.8, 1.0), rng.uniform(0.75, 1.0)])
        self.axes = axes / np.prod(axes) ** (1.0 / 3.0)  # elongated, same volume as the sphere of `radius`
        n_lobes = {"round": 4, "lobulated": int(rng.integers(3, 7)), "spiculated": int(rng.integers(3, 6))}[margin]
        amp = {"round": (0.02, 0.06), "lobulated": (0.15, 0.35), "spiculated": (0.08, 0.2)}[margin]
        self.lobe_dirs = _unit(rng.normal(size=(n_lobes, 3)))
        self.lobe_amp = rng.uniform(*amp, size=n_lobes)
        self.lobe_pow = rng.uniform(3.0, 8.0, size=n_lobes)
        self.spicules: list[tuple[np.ndarray, float, float]] = []
        if margin == "spiculated":
            for direction in _unit(rng.normal(size=(int(rng.integers(6, 15)), 3))):
                self.spicules.append((direction, radius * rng.uniform(0.4, 1.2), max(0.35, radius * rng.uniform(0.12, 0.22))))
        self.core = None
        if kind == "part_solid":
            offset = _unit(rng.normal(size=(1, 3)))[0] * radius * rng.uniform(0.0, 0.25)
            self.core = (offset, radius * rng.uniform(0.3, 0.6))

    def extent(self) -> float:
        lobes = 1.0 + float(self.lobe_amp.sum())
        spikes = max((length for _, length, _ in self.spicules), default=0.0)
        return self.radius * lobes + spikes + 1.0

    def fractions(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Inside indicators (body, spicules, core) of points ``(..., 3)`` in mm from the centre."""
        local = points @ self.rotation / self.axes
        r = np.sqrt((local**2).sum(-1))
        n = local / np.maximum(r, 1e-6)[..., None]
        bump = np.zeros(r.shape)
        for d, a, p in zip(self.lobe_dirs, self.lobe_amp, self.lobe_pow):
            bump += a * np.maximum(n @ d, 0.0) ** p
        body = r < self.radius * (1.0 + bump)
        spikes = np.zeros(r.shape, bool)
        for d, length, width in self.spicules:
            t = points @ d
            perp = np.sqrt(np.maximum((points**2).sum(-1) - t * t, 0.0))
            reach = self.radius * 0.7
            taper = 1.0 - (t - reach) / (self.radius * 0.3 + length)
            spikes |= (t > reach) & (taper > 0) & (perp < width * np.clip(taper, 0, 1))
        core = np.zeros(r.shape, bool)
        if self.core is not None:
            offset, core_radius = self.core
            core = ((points - offset) ** 2).sum(-1) < core_radius**2
            core &= body
        return body, spikes & ~body, core


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _rasterise(shape: _Shape, offset: np.ndarray, spacing: np.ndarray, max_points: float = 3e6):
    """Voxel fractions of the shape centred at ``offset`` (voxels, in [-0.5, 0.5]) from a voxel centre.

    Returns:
        ``(half, body, spicules, core)``: the box spans voxels ``-half .. +half`` around that voxel; the
        fractions are measured on up to 3 x 3 x 3 sub-samples per voxel.
    """
    half = np.ceil(shape.extent() / spacing + 1.0).astype(int)
    n = 2 * half + 1
    ss = int(np.clip(math.floor((max_points / n.prod()) ** (1.0 / 3.0)), 1, 3))
    sub = (np.arange(ss) + 0.5) / ss - 0.5
    axes = [((np.arange(-half[a], half[a] + 1)[:, None] + sub[None, :]).ravel() - offset[a]) * spacing[a] for a in range(3)]
    pts = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
    body, spikes, core = shape.fractions(pts)

    def pool(mask: np.ndarray) -> np.ndarray:
        return mask.reshape(n[0], ss, n[1], ss, n[2], ss).mean(axis=(1, 3, 5)).astype(np.float32)

    return half, pool(body), pool(spikes), pool(core)


def insert_nodules(phantom: ChestPhantom, rng: np.random.Generator, cfg: Mapping[str, Any] | None = None) -> tuple[list[Nodule], np.ndarray]:
    """Insert random nodules into the lungs of a noise-free phantom (``phantom.hu`` is modified).

    Args:
        phantom: from ``make_chest_phantom(..., add_noise=False)``.
        rng: random generator.
        cfg: overrides of ``NODULE_DEFAULTS``.

    Returns:
        the nodules (in insertion order) and a uint8 instance mask ``(X, Y, Z)`` (value n+1 = nodule n).
    """
    c = merge_config(NODULE_DEFAULTS, cfg, source="nodule config")
    spacing = np.asarray(phantom.spacing, dtype=np.float64)
    mask = np.zeros(phantom.hu.shape, np.uint8)
    occupied = np.zeros(phantom.hu.shape, bool)
    lung = phantom.lung_label
    lung_voxels = np.flatnonzero(lung)
    if len(lung_voxels) == 0:
        return [], mask

    lo, hi = (int(v) for v in c["nodules_per_scan"])
    count = 0 if rng.random() < float(c["no_nodule_probability"]) else int(rng.integers(lo, hi + 1))
    sizes: list[tuple[float, bool]] = []
    d = c["diameter_mm"]
    smallest = max(float(d["min"]), float(c["min_diameter_voxels"]) * float(spacing.max()))
    for _ in range(count):
        for _attempt in range(1000):
            diameter = float(d["median"]) * math.exp(float(d["sigma"]) * rng.normal())
            if smallest <= diameter <= float(d["max"]):
                break
        else:
            diameter = float(np.clip(diameter, smallest, float(d["max"])))
        sizes.append((diameter, False))
    if rng.random() < float(c["mass_probability"]):
        sizes.append((float(rng.uniform(*c["mass_diameter_mm"])), True))
    sizes.sort(key=lambda t: -t[0])  # place the large ones first, while there is room

    nodules: list[Nodule] = []
    margin_px = np.ceil(float(c["min_separation_mm"]) / spacing).astype(int)
    for nominal, is_mass in sizes:
        kind = "solid" if is_mass else _choice(rng, c["type_probabilities"])
        margin = _choice(rng, {"lobulated": 0.55, "spiculated": 0.45}) if is_mass else _choice(rng, c["margin_probabilities"])
        placed = None
        radius = nominal / 2.0
        for _shrink in range(6):
            shape = _Shape(rng, radius, margin, kind)
            offset = rng.uniform(-0.5, 0.5, 3)
            half, body, spikes, core = _rasterise(shape, offset, spacing)
            touched = (body > 0) | (spikes > 0)
            for _try in range(int(c["max_tries"])):
                voxel = np.array(np.unravel_index(lung_voxels[rng.integers(len(lung_voxels))], lung.shape))
                lo, hi = voxel - half, voxel + half + 1
                if np.any(lo < 0) or np.any(hi > np.array(lung.shape)):
                    continue
                box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
                side = lung[box][touched]
                if side.size == 0 or side.min() == 0 or side.min() != side.max():
                    continue
                grow = tuple(slice(max(0, b.start - m), b.stop + m) for b, m in zip(box, margin_px))
                if occupied[grow].any():
                    continue
                placed = (voxel + offset, box, body, spikes, core, int(side[0]))
                break
            if placed is not None:
                break
            radius *= 0.85
        if placed is None:
            continue
        center, box, body, spikes, core, side = placed
        body_volume = float(body.sum() * spacing.prod())
        diameter = (6.0 * body_volume / math.pi) ** (1.0 / 3.0)
        idx = np.stack(np.meshgrid(*[np.arange(s.start, s.stop) for s in box], indexing="ij"), axis=-1)
        centroid = (idx * body[..., None]).reshape(-1, 3).sum(0) / body.sum()
        if kind == "ground_glass" or kind == "part_solid":
            value = float(rng.uniform(*c["ground_glass_hu"]))
        else:
            value = float(rng.uniform(*c["solid_hu"]))
        core_value = float(rng.uniform(*c["solid_hu"])) if kind == "part_solid" else None
        region = phantom.hu[box]
        frac = np.maximum(body, spikes if kind == "solid" else spikes * 0.6)
        texture = rng.normal(0.0, 6.0 if kind == "solid" else 25.0, size=region.shape).astype(np.float32)
        lesion = region * (1.0 - frac) + (value + texture) * frac
        if core_value is not None:
            lesion = lesion * (1.0 - core) + core_value * core
        np.maximum(region, lesion, out=region)
        mask_box = mask[box]
        in_mask = body >= 0.5
        # a nodule smaller than a voxel covers no voxel by half: its centre voxel stands for it, so every
        # annotated nodule has voxels in nodule_masks/
        centre_voxel = tuple(int(v) for v in np.clip(np.floor(centroid + 0.5).astype(int) - [s.start for s in box], 0, np.array(body.shape) - 1))
        in_mask[centre_voxel] = True
        mask_box[in_mask & (mask_box == 0)] = len(nodules) + 1
        occupied[box] |= (body > 0) | (spikes > 0)
        probs = malignancy_probabilities(diameter, kind, margin)
        rating = int(rng.choice(5, p=probs)) + 1
        center_ras = phantom.voxel_to_world(centroid)
        nodules.append(Nodule(
            index=len(nodules), center_ras=[float(v) for v in center_ras], center_voxel=[float(v) for v in centroid],
            diameter_mm=float(diameter), kind=kind, margin=margin, malignancy=rating, hu=value, core_hu=core_value,
            lung=side, is_mass=is_mass,
        ))
    return nodules, mask


def _series_uid(seed: int, number: int) -> str:
    from common.synthetic.writers import deterministic_uid

    return deterministic_uid(seed, "nodules", number, "series")


def _make_nodule_case(args: tuple) -> dict[str, Any]:
    out_dir, number, seriesuid, seed, cfg, write_dicom = args
    from common.synthetic.writers import lps_view, write_dicom_ct_series, write_mhd_volume

    out = Path(out_dir)
    rng = make_rng(seed, "nodules", number)
    t0 = time.perf_counter()
    phantom = make_chest_phantom(rng, cfg["phantom"], add_noise=False)
    nodules, mask = insert_nodules(phantom, rng, cfg["nodule"])
    add_ct_noise(phantom, rng, correlation_px=float(cfg["phantom"]["noise_correlation_px"]))
    t1 = time.perf_counter()
    write_mhd_volume(out / cfg["subset"] / f"{seriesuid}.mhd", phantom.hu, phantom.affine, np.int16)
    lungs = phantom.lung_label
    if cfg["lung_mask_values"] == "luna16":
        lungs = np.array([0, 3, 4], np.uint8)[lungs]
        lungs[phantom.airway_mask] = 5
    write_mhd_volume(out / "seg-lungs-LUNA16" / f"{seriesuid}.mhd", lungs, phantom.affine, np.uint8)
    write_mhd_volume(out / "nodule_masks" / f"{seriesuid}.mhd", mask, phantom.affine, np.uint8)
    if write_dicom:
        write_dicom_ct_series(out / "dicom" / seriesuid, phantom.hu, phantom.affine, uid_parts=(seed, "nodules", number),
                              patient_number=number, series_uid=seriesuid, series_description="Synthetic chest CT with nodules")
    # negative candidates: random lung points away from every nodule (LUNA16's candidates file)
    candidates = []
    lung_idx = np.flatnonzero(phantom.lung_label)
    for _ in range(int(cfg["candidates_per_scan"]) * 4):
        if len(candidates) >= int(cfg["candidates_per_scan"]) or len(lung_idx) == 0:
            break
        ijk = np.array(np.unravel_index(lung_idx[rng.integers(len(lung_idx))], phantom.shape), dtype=np.float64)
        ras = phantom.voxel_to_world(ijk)
        if all(np.linalg.norm(ras - np.array(n.center_ras)) > n.diameter_mm / 2 + 5.0 for n in nodules):
            candidates.append([-ras[0], -ras[1], ras[2]])
    _, spacing_lps, origin_lps = lps_view(phantom.hu, phantom.affine)
    t2 = time.perf_counter()
    return {
        "number": number,
        "seriesuid": seriesuid,
        "shape": list(phantom.shape),
        "spacing": list(phantom.spacing),
        "origin_lps": [float(v) for v in origin_lps],
        "nodules": [asdict(n) | {"center_lps": n.center_lps} for n in nodules],
        "candidates": candidates,
        "params": phantom.params,
        "seconds_phantom": t1 - t0,
        "seconds_write": t2 - t1,
    }


def _fmt(value: float) -> str:
    return f"{value:.10g}"


def generate_nodules(out_dir: str | os.PathLike, config: str | os.PathLike | Mapping[str, Any] | None = None, seed: int = 0) -> Path:
    """Write a synthetic nodule detection set in the LUNA16 layout.

    Layout::

        subset0/<seriesuid>.mhd (+ .raw)           CT scans (int16 HU, LPS, identity direction)
        annotations.csv                             seriesuid,coordX,coordY,coordZ,diameter_mm,malignancy
        candidates.csv                              seriesuid,coordX,coordY,coordZ,class (nodules + negatives)
        seg-lungs-LUNA16/<seriesuid>.mhd            lung masks (see ``lung_mask_values``)
        nodule_masks/<seriesuid>.mhd                nodule n of the series (annotation order) has value n
        dicom/<seriesuid>/                          DICOM CT series of the scans chosen by ``dicom_cases``
        dataset.yaml                                splits (train/val/test seriesuids), every nodule, config

    Args:
        out_dir: output folder (created).
        config: YAML file or dictionary overriding ``NODULES_DEFAULTS`` (see configs/nodules.yaml).
        seed: random seed; the same seed and config give byte-identical files.

    Returns:
        the output folder.
    """
    from common.errors import InputDataError
    from common.io.atomic import atomic_write_text

    source = str(config) if isinstance(config, (str, os.PathLike)) else "config"
    cfg = load_config(NODULES_DEFAULTS, config)
    if cfg["lung_mask_values"] not in ("project", "luna16"):
        raise InputDataError(source, f"lung_mask_values must be 'project' or 'luna16', got {cfg['lung_mask_values']!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    counts = {"train": int(cfg["num_train"]), "val": int(cfg["num_val"]), "test": int(cfg["num_test"])}
    numbers = list(range(1, sum(counts.values()) + 1))
    uids = [_series_uid(int(seed), n) for n in numbers]
    splits = {
        "train": uids[: counts["train"]],
        "val": uids[counts["train"] : counts["train"] + counts["val"]],
        "test": uids[counts["train"] + counts["val"] :],
    }
    choice = cfg["dicom_cases"]
    if choice in (None, "none", False):
        dicom = set()
    elif choice == "test":
        dicom = set(splits["test"])
    elif choice == "all":
        dicom = set(uids)
    elif isinstance(choice, (list, tuple)) and set(map(str, choice)) <= set(uids):
        dicom = set(map(str, choice))
    else:
        raise InputDataError(source, f"dicom_cases must be 'test', 'all', 'none' or a list of generated seriesuids, got {choice!r}")
    jobs = [(str(out), n, uid, int(seed), cfg, uid in dicom) for n, uid in zip(numbers, uids)]
    results = _run_jobs(_make_nodule_case, jobs, int(cfg["num_workers"]), desc="nodules")

    rows = io.StringIO()
    writer = csv.writer(rows, lineterminator="\n")
    writer.writerow(["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm", "malignancy"])
    cand = io.StringIO()
    cand_writer = csv.writer(cand, lineterminator="\n")
    cand_writer.writerow(["seriesuid", "coordX", "coordY", "coordZ", "class"])
    for r in results:
        for n in r["nodules"]:
            x, y, z = n["center_lps"]
            writer.writerow([r["seriesuid"], _fmt(x), _fmt(y), _fmt(z), _fmt(n["diameter_mm"]), n["malignancy"]])
            cand_writer.writerow([r["seriesuid"], _fmt(x), _fmt(y), _fmt(z), 1])
        for x, y, z in r["candidates"]:
            cand_writer.writerow([r["seriesuid"], _fmt(x), _fmt(y), _fmt(z), 0])
    atomic_write_text(out / "annotations.csv", rows.getvalue())
    atomic_write_text(out / "candidates.csv", cand.getvalue())

    n_nodules = sum(len(r["nodules"]) for r in results)
    write_dataset_yaml(out, {
        "generator": "common.synthetic.nodules:generate_nodules",
        "task": "nodules",
        "layout": f"LUNA16 ({cfg['subset']}/<seriesuid>.mhd, annotations.csv, candidates.csv, seg-lungs-LUNA16/) + nodule_masks/ + dicom/",
        "seed": int(seed),
        "coordinates": "annotations.csv: world mm in the MHD's LPS physical space (Offset + index * ElementSpacing)",
        "lung_mask_values": {"right lung": 1, "left lung": 2} if cfg["lung_mask_values"] == "project"
        else {"right lung": 3, "left lung": 4, "trachea and main bronchi": 5},
        "counts": {**counts, "nodules": n_nodules, "scans_without_nodules": sum(not r["nodules"] for r in results)},
        "splits": splits,
        "dicom_series": [u for u in uids if u in dicom],
        "scans": [
            {"seriesuid": r["seriesuid"], "shape": r["shape"], "spacing": r["spacing"], "origin_lps": r["origin_lps"],
             "nodules": [{k: n[k] for k in ("center_lps", "diameter_mm", "kind", "margin", "malignancy", "hu", "core_hu", "lung", "is_mass")}
                         for n in r["nodules"]],
             "params": r["params"]}
            for r in results
        ],
        "config": cfg,
    })
    _last_timing.update({"cases": results})
    return out


_last_timing: dict[str, Any] = {}
