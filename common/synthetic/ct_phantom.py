"""Synthetic chest CT phantoms with left/right lung labels, and the ``lung_ct`` data set generator.

A phantom is built analytically on the target voxel grid (no resampling): a torso with subcutaneous fat
and chest-wall muscle, ribs that descend from the spine to the costal cartilages, a segmented spine with
discs, canal and posterior elements, sternum and scapulae, two lungs shaped by the thoracic cavity, the
heart, the aorta, the spine and the diaphragm domes, a trachea and main bronchi, branching pulmonary
arteries, veins and airways, liver, a stomach gas bubble, the patient table, and spatially correlated CT
noise. Every random choice comes from the caller's ``numpy.random.Generator``.

Coordinates: arrays are indexed ``(i, j, k)`` with a diagonal RAS affine, so ``i`` grows toward the
patient's right, ``j`` toward anterior and ``k`` toward superior (``nibabel.aff2axcodes`` gives
``('R', 'A', 'S')``). Lung label 1 is the patient's right lung (larger RAS x), 2 the left lung; the
trachea and main bronchi are not lung (as in lungmask's labels), the vessels and airways inside the
lungs are.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.synthetic.config import load_config, make_rng, merge_config, progress, write_dataset_yaml

__all__ = [
    "PHANTOM_DEFAULTS",
    "LUNG_CT_DEFAULTS",
    "ChestPhantom",
    "make_chest_phantom",
    "add_ct_noise",
    "generate_lung_ct",
    "benchmark_ct",
]

#: Defaults of one phantom: a full-size adult chest at clinical resolution (512 matrix, 1-3 mm slices).
PHANTOM_DEFAULTS: dict[str, Any] = {
    # grid
    "matrix": 512,  # in-plane voxels per side (clinical 512); ignored when in_plane_spacing_mm is set
    "in_plane_spacing_mm": None,  # fixed in-plane voxel size (mm); the matrix then follows from the FOV
    "fov_margin_mm": [15.0, 45.0],  # field of view = torso width + 2 x margin (mm)
    "slice_spacing_mm": [1.0, 3.0],  # slice spacing = thickness (mm), drawn per scan
    "scan_margin_mm": [10.0, 35.0],  # scan range beyond the lung apex and the lowest lung point (mm)
    # anatomy
    "body_scale": [0.88, 1.12],  # overall size (1 = average adult; ~0.5 = small child)
    "body_aspect": [0.62, 0.76],  # antero-posterior / left-right torso ratio (LCTSC chests at mid-lung: 0.61-0.85)
    "rotation_deg": [-6.0, 6.0],  # in-plane rotation of the patient on the table
    "offset_mm": [-12.0, 12.0],  # in-plane shift of the patient from the scanner centre
    "breathing": [0.0, 1.0],  # 0 = end-expiration, 1 = full inspiration (diaphragm, lung size and density)
    "fat_mm": [6.0, 28.0],  # subcutaneous fat thickness
    # lungs that reach back beside the spine to the posterior ribs, as deep as real ones (the paraspinal
    # muscles then fill the back of the cavity only beside the spine); off: the paraspinal muscles line the
    # whole back and, with the flatter torsos of the default body_aspect, the lungs are a third shallower than
    # real ones (129 against 191 mm at the widest lung slice: the lung card's phantoms, the nine LCTSC CTs). On for lung_ct (LUNG_CT_DEFAULTS);
    # the nodule and X-ray sets, whose shipped weights and figures were made without it, keep it off
    "posterior_gutters": False,
    # how far each rib descends from its head at the spine to its front end (mm at body_scale 1): in real
    # chests three to four vertebral levels (about 80-110 mm), which slopes the ribs on a frontal radiograph;
    # the default draws them flatter, as the nodule and X-ray sets were made
    "rib_descent_mm": [55.0, 80.0],
    "lung_shape_irregularity": 0.04,  # amplitude of the smooth random perturbation of the lung outline
    "vessel_generations": 7,  # branching generations of the pulmonary arteries and veins
    "airway_generations": 5,  # branching generations of the intrapulmonary airways that are drawn
    "contrast_probability": 0.0,  # chance that a scan is contrast-enhanced (blood ~200-300 HU)
    "stomach_gas_probability": 0.6,  # chance of a gas bubble under the left diaphragm
    "table": True,  # draw the patient table below the body
    # noise
    "noise_sd_hu": [10.0, 30.0],  # standard deviation of the CT noise, drawn per scan
    "noise_correlation_px": 0.7,  # in-plane Gaussian correlation length of the noise (voxels)
}

#: Defaults of ``generate_lung_ct``: a small set for tests (seconds); see configs/lung_ct.yaml.
LUNG_CT_DEFAULTS: dict[str, Any] = {
    "num_train": 4,
    "num_val": 2,
    "num_test": 2,
    "case_prefix": "lung",  # case ids are <prefix>_<NNN> like the MSD Task06_Lung files
    "dicom_cases": "test",  # which cases also get a DICOM series: "test", "all", "none" or a list of ids
    "write_mhd": True,  # also write mhd/<case>.mhd (+ .raw)
    "num_workers": 1,  # processes generating cases in parallel (output is identical for any value)
    "phantom": {
        **PHANTOM_DEFAULTS,
        # chests as deep as the nine LCTSC patients' at mid-lung (lungs 0.70-0.83 of the body's depth there,
        # body depth 0.61-0.85 of its width; scripts/synthex.py lung measures what it does to real-CT Dice)
        "posterior_gutters": True,
        "body_aspect": [0.64, 0.86],
        "matrix": 64,
        "slice_spacing_mm": [5.0, 5.0],
    },
}

_LUNG_LABELS = {"0": "background", "1": "right lung", "2": "left lung"}


# --------------------------------------------------------------------------------------------------
# data structure
# --------------------------------------------------------------------------------------------------
@dataclass
class ChestPhantom:
    """One synthetic chest CT.

    Attributes:
        hu: ``(X, Y, Z)`` float32 Hounsfield units (integer-valued once noise is added).
        lung_label: ``(X, Y, Z)`` uint8, 0 background, 1 right lung, 2 left lung.
        spacing: voxel size ``(sx, sy, sz)`` in mm.
        affine: 4 x 4 voxel-to-RAS affine (diagonal, positive: ``i`` to the right, ``j`` anterior,
            ``k`` superior).
        bone_mask: ``(X, Y, Z)`` bool, ribs, spine, sternum and scapulae.
        body_mask: ``(X, Y, Z)`` bool, inside the skin (the table is outside).
        airway_mask: ``(X, Y, Z)`` bool, lumen of the trachea and main bronchi (not lung).
        noise_sd: standard deviation of the CT noise of this scan (HU), added or to be added.
        params: the anatomy drawn for this scan (sizes, rotation, breathing level, ...).
        landmarks: world RAS positions (mm) of the carina, the hila and the lung centroids.
    """

    hu: np.ndarray
    lung_label: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray
    bone_mask: np.ndarray
    body_mask: np.ndarray
    airway_mask: np.ndarray
    noise_sd: float
    params: dict[str, Any] = field(default_factory=dict)
    landmarks: dict[str, list[float]] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.hu.shape)  # type: ignore[return-value]

    def voxel_to_world(self, ijk: np.ndarray) -> np.ndarray:
        """RAS world mm of voxel indices ``(..., 3)``."""
        ijk = np.asarray(ijk, dtype=np.float64)
        return ijk @ self.affine[:3, :3].T + self.affine[:3, 3]

    def world_to_voxel(self, xyz: np.ndarray) -> np.ndarray:
        """Continuous voxel indices of RAS world points ``(..., 3)``."""
        xyz = np.asarray(xyz, dtype=np.float64)
        return (xyz - self.affine[:3, 3]) @ np.linalg.inv(self.affine[:3, :3]).T


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------
def _uniform(rng: np.random.Generator, value: Any) -> float:
    """A number drawn from ``[lo, hi]`` (or the number itself)."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ValueError(f"a range must be [low, high], got {value!r}")
        lo, hi = float(value[0]), float(value[1])
        return lo if hi <= lo else float(rng.uniform(lo, hi))
    return float(value)


def _smoothstep(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    t = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


class _Grid:
    """The voxel grid in the body frame.

    During construction volumes are C-ordered ``(z, y, x)`` arrays, so that the final ``(X, Y, Z)`` view
    (``transpose(2, 1, 0)``, no copy) is Fortran-ordered: x fastest, as NIfTI, MetaImage and DICOM
    slices store voxels, which makes writing a plain copy. 2D fields are ``(y, x)``.
    """

    def __init__(self, shape_xyz: tuple[int, int, int], spacing: tuple[float, float, float],
                 centre_ij: tuple[float, float], z0: float, theta: float) -> None:
        self.shape_xyz = shape_xyz
        self.spacing = spacing
        nx, ny, nz = shape_xyz
        sx, sy, sz = spacing
        self.xr = ((np.arange(nx) - centre_ij[0]) * sx).astype(np.float32)  # +right, body frame origin
        self.yr = ((np.arange(ny) - centre_ij[1]) * sy).astype(np.float32)  # +anterior
        self.z = (z0 + np.arange(nz) * sz).astype(np.float32)  # lung frame: 0 = lowest lung point
        self.cos, self.sin = math.cos(theta), math.sin(theta)
        xr2, yr2 = np.meshgrid(self.xr, self.yr, indexing="xy")  # (ny, nx)
        self.u = (self.cos * xr2 + self.sin * yr2).astype(np.float32)  # patient frame, +right
        self.v = (-self.sin * xr2 + self.cos * yr2).astype(np.float32)  # patient frame, +anterior

    def to_grid_frame(self, uvz: Sequence[float]) -> np.ndarray:
        """Patient-frame (u, v, z) -> grid-frame (xr, yr, z)."""
        u, v, z = uvz
        return np.array([self.cos * u - self.sin * v, self.sin * u + self.cos * v, z], dtype=np.float64)

    def to_voxel(self, grid_xyz: np.ndarray) -> np.ndarray:
        """Grid-frame (xr, yr, z) mm -> continuous voxel index (i, j, k)."""
        return np.array([
            (grid_xyz[0] - self.xr[0]) / self.spacing[0],
            (grid_xyz[1] - self.yr[0]) / self.spacing[1],
            (grid_xyz[2] - self.z[0]) / self.spacing[2],
        ])


def _segment_boxes(
    grid: _Grid, segments: Sequence[tuple[np.ndarray, np.ndarray, float]], pad: float
) -> Iterator[tuple[tuple[slice, slice, slice], np.ndarray, int]]:
    """For each capsule (p0, p1, radius) in grid-frame mm, yield its bounding box in the (z, x, y) array
    and the distance (mm) of the box's voxel centres to the segment axis."""
    nx, ny, nz = grid.shape_xyz
    sx, sy, sz = grid.spacing
    for index, (p0, p1, radius) in enumerate(segments):
        lo = np.minimum(p0, p1) - radius - pad
        hi = np.maximum(p0, p1) + radius + pad
        i0, i1 = max(0, int(math.floor((lo[0] - grid.xr[0]) / sx))), min(nx, int(math.ceil((hi[0] - grid.xr[0]) / sx)) + 1)
        j0, j1 = max(0, int(math.floor((lo[1] - grid.yr[0]) / sy))), min(ny, int(math.ceil((hi[1] - grid.yr[0]) / sy)) + 1)
        k0, k1 = max(0, int(math.floor((lo[2] - grid.z[0]) / sz))), min(nz, int(math.ceil((hi[2] - grid.z[0]) / sz)) + 1)
        if i0 >= i1 or j0 >= j1 or k0 >= k1:
            continue
        d = (p1 - p0).astype(np.float32)
        length2 = float(d @ d)
        dz = (grid.z[k0:k1] - np.float32(p0[2]))[:, None, None]
        dy = (grid.yr[j0:j1] - np.float32(p0[1]))[None, :, None]
        dx = (grid.xr[i0:i1] - np.float32(p0[0]))[None, None, :]
        if length2 > 1e-9:
            t = np.clip((dx * d[0] + dy * d[1] + dz * d[2]) / length2, 0.0, 1.0)
            qx, qy, qz = dx - t * d[0], dy - t * d[1], dz - t * d[2]
        else:
            qx, qy, qz = dx, dy, dz
        dist = np.sqrt(qx * qx + qy * qy + qz * qz)
        yield (slice(k0, k1), slice(j0, j1), slice(i0, i1)), dist, index


def _render_capsules(
    target: np.ndarray, grid: _Grid, segments: Sequence[tuple[np.ndarray, np.ndarray, float]], edge: float
) -> None:
    """Max-accumulate the partial-volume fraction of capsules into ``target`` (z, y, x)."""
    for box, dist, index in _segment_boxes(grid, segments, pad=edge):
        radius = segments[index][2]
        frac = np.clip(0.5 + (radius - dist) / edge, 0.0, 1.0)
        np.maximum(target[box], frac, out=target[box])


def _grow_tree(
    rng: np.random.Generator,
    root: np.ndarray,
    points: np.ndarray,
    radius0: float,
    generations: int,
    ratio: float = 0.79,
    length_fraction: float = 0.55,
) -> list[tuple[np.ndarray, np.ndarray, float, int]]:
    """A branching tree that fills a point cloud by recursive halving (space-colonising bifurcations).

    Each branch aims at the centroid of the points it serves, stops part of the way there and splits its
    points in two by the plane through the centroid across their longest extent; the halves feed the two
    daughters. Radii shrink by ``ratio`` per generation (Murray's law gives 2^(-1/3) ~ 0.79).

    Returns:
        ``(start, end, radius, generation)`` per segment, grid-frame mm.
    """
    segments: list[tuple[np.ndarray, np.ndarray, float, int]] = []
    stack = [(root.astype(np.float64), points, radius0, 0)]
    while stack:
        start, pts, radius, gen = stack.pop()
        if len(pts) == 0:
            continue
        target = pts.mean(axis=0)
        if len(pts) <= 2 or gen >= generations:
            segments.append((start, target, radius, gen))
            continue
        fraction = length_fraction * rng.uniform(0.85, 1.15)
        end = start + (target - start) * fraction
        segments.append((start, end, radius, gen))
        centred = pts - target
        cov = centred.T @ centred
        axis = np.linalg.eigh(cov)[1][:, -1]
        side = centred @ axis > 0
        for half in (pts[side], pts[~side]):
            stack.append((end, half, radius * ratio * rng.uniform(0.93, 1.07), gen + 1))
    return segments


def _random_field_2d(rng: np.random.Generator, a: np.ndarray, b: np.ndarray, terms: int, wavelength: tuple[float, float]) -> np.ndarray:
    """A smooth random 2D field (sum of separable sinusoids) with unit-ish amplitude."""
    out = np.zeros((a.shape[0], b.shape[0]), dtype=np.float32)
    for _ in range(terms):
        la, lb = rng.uniform(*wavelength, size=2)
        fa = np.cos(2 * np.pi * a / la + rng.uniform(0, 2 * np.pi)).astype(np.float32)
        fb = np.cos(2 * np.pi * b / lb + rng.uniform(0, 2 * np.pi)).astype(np.float32)
        out += np.outer(fa, fb)
    return out / math.sqrt(terms / 4.0)


# --------------------------------------------------------------------------------------------------
# the phantom
# --------------------------------------------------------------------------------------------------
def make_chest_phantom(
    rng: np.random.Generator, cfg: Mapping[str, Any] | None = None, *, add_noise: bool = True
) -> ChestPhantom:
    """Build one random chest CT phantom on its own clinical-like voxel grid.

    Args:
        rng: the random generator (everything random is drawn from it).
        cfg: overrides of ``PHANTOM_DEFAULTS`` (unknown keys are an error).
        add_noise: add the correlated CT noise and round to integer HU. ``False`` returns the noise-free
            (float) volume so that lesions can be inserted first; call ``add_ct_noise`` afterwards.

    Returns:
        the phantom (see ``ChestPhantom``).
    """
    c = merge_config(PHANTOM_DEFAULTS, cfg, source="phantom config")

    # ---- anatomy parameters (mm, patient frame u = right, v = anterior, z = superior) ----
    s = _uniform(rng, c["body_scale"])
    aspect = _uniform(rng, c["body_aspect"])
    theta = math.radians(_uniform(rng, c["rotation_deg"]))
    breath = _uniform(rng, c["breathing"])
    fat = _uniform(rng, c["fat_mm"]) * (0.6 + 0.4 * s)
    muscle = rng.uniform(9.0, 15.0) * s
    paraspinal = rng.uniform(22.0, 32.0) * s
    a_torso = 162.0 * s * rng.uniform(0.94, 1.06)
    b_torso = a_torso * aspect
    lung_height = 245.0 * s * (0.84 + 0.16 * breath) * rng.uniform(0.94, 1.06)
    contrast = bool(rng.random() < float(c["contrast_probability"]))
    blood_hu = rng.uniform(180.0, 320.0) if contrast else rng.uniform(35.0, 50.0)
    lung_hu = -760.0 - 110.0 * breath + rng.uniform(-20.0, 20.0)
    gravity_hu = 25.0 + 55.0 * (1.0 - breath)
    noise_sd = _uniform(rng, c["noise_sd_hu"])

    # ---- grid ----
    margin_fov = _uniform(rng, c["fov_margin_mm"])
    fov = 2.0 * (a_torso + margin_fov)
    if c["in_plane_spacing_mm"]:
        sxy = float(c["in_plane_spacing_mm"])
        matrix = int(math.ceil(fov / sxy))
    else:
        matrix = int(c["matrix"])
        sxy = fov / matrix
    sz = _uniform(rng, c["slice_spacing_mm"])
    z_lo = -_uniform(rng, c["scan_margin_mm"])
    z_hi = lung_height + _uniform(rng, c["scan_margin_mm"])
    nz = max(8, int(math.ceil((z_hi - z_lo) / sz)) + 1)
    off_x, off_y = _uniform(rng, c["offset_mm"]), _uniform(rng, c["offset_mm"])
    # the table sits posterior, so the body is placed a little anterior of the centre
    centre_i = (matrix - 1) / 2.0 + off_x / sxy
    centre_j = (matrix - 1) / 2.0 + (off_y + 0.25 * (fov / 2.0 - b_torso)) / sxy
    grid = _Grid((matrix, matrix, nz), (sxy, sxy, sz), (centre_i, centre_j), z_lo, theta)
    u, v = grid.u, grid.v
    edge = float(min(sxy, sz))
    r2d = np.sqrt(u * u + v * v)
    psi = np.arctan2(v, u)
    cos2 = (u / np.maximum(r2d, 1e-6)) ** 2
    sin2 = 1.0 - cos2
    vpos = v >= 0
    sin2_ant = np.where(vpos, sin2, 0.0).astype(np.float32)
    sin2_post = np.where(vpos, 0.0, sin2).astype(np.float32)
    sin_psi = np.sin(psi).astype(np.float32)

    # torso and cavity half-axes as functions of z (narrower toward the neck)
    def torso_axes(z: float) -> tuple[float, float, float]:
        # the chest widens from the apex to the lower ribs; the abdomen below keeps that width
        t = min(max((z - 0.2 * lung_height) / (0.85 * lung_height), 0.0), 1.15)
        a = a_torso * (1.0 - 0.16 * t * t)
        b = b_torso * (1.0 - 0.07 * t * t)
        return a, b, 0.93 * b

    def cavity_axes(z: float) -> tuple[float, float, float]:
        a, b_ant, b_post = torso_axes(z)
        return a - fat - muscle, b_ant - fat - max(0.6 * muscle, 10.0 * s), b_post - fat - muscle - paraspinal

    # body outline irregularity and lung outline perturbation
    body_eps = sum(rng.normal(0, 0.012) * np.cos(k * psi + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 4)).astype(np.float32)
    amp = float(c["lung_shape_irregularity"])
    lung_eps_a = (amp * sum(rng.normal(0, 0.5) * np.cos(k * psi + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5))).astype(np.float32)
    lung_eps_b = (amp * sum(rng.normal(0, 0.5) * np.cos(k * psi + rng.uniform(0, 2 * np.pi)) for k in (1, 3, 4))).astype(np.float32)
    lung_eps_wave = (2 * math.pi / rng.uniform(120, 260), rng.uniform(0, 2 * math.pi))

    # ---- key levels ----
    a_c0, bca0, bcp0 = cavity_axes(0.5 * lung_height)
    dome_r = lung_height * (0.20 + 0.10 * (1.0 - breath)) + rng.uniform(-8, 8) * s
    dome_l = dome_r - rng.uniform(8.0, 25.0) * s
    apex_r = lung_height - rng.uniform(0.0, 6.0) * s
    apex_l = lung_height - rng.uniform(0.0, 6.0) * s
    widest = lung_height * rng.uniform(0.45, 0.58)
    carina_z = lung_height * rng.uniform(0.60, 0.68)

    # diaphragm surfaces (2D): lowest at the posterior/lateral recesses, dome under each lung
    def dome_surface(uu: np.ndarray, vv: np.ndarray, cx: float, dome: float) -> np.ndarray:
        rho2 = ((uu - cx) / (0.75 * a_c0)) ** 2 + ((vv - 0.2 * bca0) / (1.05 * bca0)) ** 2
        z_low = 0.14 * lung_height * np.clip(vv / bca0, 0.0, 1.0)
        return z_low + (dome - z_low) * (1.0 - np.minimum(rho2, 1.0))

    def diaphragm(uu: np.ndarray, vv: np.ndarray) -> np.ndarray:
        blend = 1.0 / (1.0 + np.exp(-uu / 12.0))
        z = blend * dome_surface(uu, vv, 0.45 * a_c0, dome_r) + (1.0 - blend) * dome_surface(uu, vv, -0.45 * a_c0, dome_l)
        # the central tendon under the heart sags a little
        return z - 6.0 * s * np.exp(-((uu + 0.1 * a_c0) ** 2 + (vv - 0.3 * bca0) ** 2) / (2 * (40 * s) ** 2))

    z_dia = diaphragm(u, v).astype(np.float32)

    # interlobar fissures: an oblique fissure in each lung, running from high at the back to the front of
    # the diaphragm, and the right lung's horizontal fissure in front of it; sheets ~1 mm thick, seen
    # through partial volume as faint lines
    fissures = []
    for side_sign in (1.0, -1.0):
        z_back = lung_height * rng.uniform(0.6, 0.72)
        z_front = lung_height * rng.uniform(0.12, 0.25)
        slope = (z_back - z_front) / (bcp0 + 0.8 * bca0)
        tilt = rng.uniform(0.3, 0.6) * slope  # lateral parts higher: in an axial slice the fissure runs anterolaterally
        z_f = (z_back - slope * (v + bcp0) + tilt * (side_sign * u - 0.5 * a_c0)).astype(np.float32)
        n_z = 1.0 / math.sqrt(1.0 + slope**2)
        extent = math.hypot(grid.spacing[1] * slope * n_z, grid.spacing[2] * n_z)
        fissures.append((z_f, n_z, max(extent, grid.spacing[0])))
    horizontal_z = carina_z - rng.uniform(20.0, 45.0) * s
    fissure_mm = 0.9

    # posterior_gutters: the paraspinal muscles fill the back of the cavity only beside the spine, lateral to
    # them the lungs reach back to the posterior ribs
    gutter: np.ndarray | float = 0.0
    ell_b: np.ndarray | float = bca0
    if c["posterior_gutters"]:
        beside_spine = np.exp(-((u / (45.0 * s)) ** 2)).astype(np.float32)
        gutter = (paraspinal * (1.0 - beside_spine)).astype(np.float32)
        # the lung apex ellipses below reach into the gutters behind the hila
        ell_b = np.where(v + 0.08 * bca0 >= 0.0, bca0, max(bca0, bcp0 + paraspinal)).astype(np.float32)

    # lung apex ellipses (2D, normalised radius squared)
    ell_r = ((u - 0.48 * a_c0) / (0.62 * a_c0)) ** 2 + ((v + 0.08 * bca0) / ell_b) ** 2
    ell_l = ((u + 0.48 * a_c0) / (0.62 * a_c0)) ** 2 + ((v + 0.08 * bca0) / ell_b) ** 2
    midline = rng.uniform(-4.0, 4.0) * s
    gap = 3.0 * s

    # spine (positions per slice follow the cavity's posterior wall, with a kyphotic curve)
    rvb_lr, rvb_ap = 19.0 * s, 15.0 * s
    r_canal = 7.5 * s
    level_height = 27.0 * s
    level_phase = rng.uniform(0, level_height)
    z_span = (z_lo, z_hi)

    def vertebra_v(z: float) -> float:
        _, _, bcp = cavity_axes(z)
        kyph = 8.0 * s * math.sin(math.pi * (z - z_span[0]) / (z_span[1] - z_span[0]))
        return -bcp + 0.2 * rvb_ap - kyph

    # heart (in-plane rotated ellipsoid sitting on the diaphragm, to the left and anterior)
    heart_axes = np.array([62.0, 47.0, 52.0]) * s * rng.uniform(0.9, 1.12, size=3)
    heart_rot = math.radians(rng.uniform(25.0, 45.0))
    heart_uv = (-0.2 * a_c0, bca0 - 0.95 * heart_axes[1])
    # the heart rests on the diaphragm: its lower third is a column standing on the central tendon
    heart_c = np.array([*heart_uv, float(diaphragm(np.array(heart_uv[0]), np.array(heart_uv[1]))) + 0.45 * heart_axes[2]])
    hu_c, hs_c = math.cos(heart_rot), math.sin(heart_rot)
    hu_ = (u - heart_c[0]) * hu_c + (v - heart_c[1]) * hs_c
    hv_ = -(u - heart_c[0]) * hs_c + (v - heart_c[1]) * hu_c
    heart_q2d = (hu_ / heart_axes[0]) ** 2 + (hv_ / heart_axes[1]) ** 2
    heart_top = heart_c[2] + heart_axes[2]

    # tubes of the mediastinum (patient frame), rendered with the capsule renderer
    v_vb_mid = vertebra_v(carina_z)
    trachea_v = v_vb_mid + rvb_ap + 16.0 * s
    trachea_r = 9.0 * s * rng.uniform(0.9, 1.1)
    carina = np.array([3.0 * s, trachea_v, carina_z])
    hilum_r = np.array([0.30 * a_c0, trachea_v - 4.0 * s, carina_z - 24.0 * s])
    hilum_l = np.array([-0.30 * a_c0, trachea_v - 8.0 * s, carina_z - 42.0 * s])
    airway_tubes = [
        (np.array([3.0 * s, trachea_v + 6.0 * s, z_hi + 20.0]), carina, trachea_r),
        (carina, hilum_r, 7.2 * s),
        (carina, hilum_l, 6.2 * s),
    ]
    aorta_r_asc, aorta_r_desc = 15.0 * s, 11.5 * s
    desc_u, desc_v = -(0.55 * rvb_lr + aorta_r_desc + 3.0 * s), v_vb_mid + 0.9 * rvb_ap + 0.4 * aorta_r_desc
    arch_z = carina_z + rng.uniform(18.0, 32.0) * s
    aorta_path = [
        np.array([heart_c[0] + 0.35 * heart_axes[0], heart_c[1] + 0.2 * heart_axes[1], heart_c[2] + 0.3 * heart_axes[2]]),
        np.array([0.12 * a_c0, 0.25 * bca0, carina_z - 5.0 * s]),
        np.array([0.02 * a_c0, 0.15 * bca0, arch_z]),
        np.array([-0.15 * a_c0, trachea_v + 4.0 * s, arch_z + 4.0 * s]),
        np.array([desc_u, desc_v + 4.0 * s, arch_z - 12.0 * s]),
        np.array([desc_u, desc_v, z_lo - 20.0]),
    ]
    aorta_tubes = [(aorta_path[n], aorta_path[n + 1], aorta_r_asc if n < 3 else aorta_r_desc) for n in range(len(aorta_path) - 1)]
    esophagus_tubes = [(np.array([-8.0 * s, v_vb_mid + rvb_ap + 4.0 * s, z_hi + 20.0]),
                        np.array([-0.25 * a_c0, 0.0, min(dome_l, dome_r) - 25.0 * s]), 7.5 * s)]

    def to_grid(tubes: list) -> list:
        return [(grid.to_grid_frame(p0), grid.to_grid_frame(p1), r) for p0, p1, r in tubes]

    shape_zyx = (nz, matrix, matrix)
    # structure fractions in (z, y, x)
    airway_frac = np.zeros(shape_zyx, np.float32)  # trachea + main bronchi, outer wall
    lumen_frac = np.zeros(shape_zyx, np.float32)
    aorta_frac = np.zeros(shape_zyx, np.float32)
    eso_frac = np.zeros(shape_zyx, np.float32)
    _render_capsules(airway_frac, grid, to_grid(airway_tubes), edge)
    _render_capsules(lumen_frac, grid, to_grid([(p0, p1, r - max(1.8 * s, 1.0)) for p0, p1, r in airway_tubes]), edge)
    _render_capsules(aorta_frac, grid, to_grid(aorta_tubes), edge)
    _render_capsules(eso_frac, grid, to_grid(esophagus_tubes), edge)

    # stomach gas under the left dome
    stomach = None
    if rng.random() < float(c["stomach_gas_probability"]):
        st_axes = np.array([34.0, 28.0, 24.0]) * s * rng.uniform(0.8, 1.2, size=3)
        st_c = np.array([-0.45 * a_c0, 0.05 * bca0, dome_l - 10.0 * s - st_axes[2]])
        stomach = (st_c, st_axes, st_c[2] + rng.uniform(-0.3, 0.2) * st_axes[2])

    # lung parenchyma HU (2D part): gravity-dependent density gradient + smooth texture
    post_frac = np.clip((bca0 - v) / (bca0 + bcp0), 0.0, 1.0)
    lung_base2d = (lung_hu + gravity_hu * post_frac ** 2).astype(np.float32)
    tex_a = _random_field_2d(rng, grid.yr, grid.xr, 3, (40.0, 110.0)) * 8.0
    tex_b = _random_field_2d(rng, grid.yr, grid.xr, 3, (25.0, 70.0)) * 6.0
    tex_wave = (2 * math.pi / rng.uniform(40, 100), rng.uniform(0, 2 * math.pi))

    # rib cage
    rib_r = 4.2 * s
    rib_h = 6.5 * s
    rib_gap = 1.0 + 0.8 * s
    rib_top = lung_height + 6.0 * s
    rib_pitch = (rib_top + 20.0 * s) / 11.0
    rib_drop = _uniform(rng, c["rib_descent_mm"]) * s
    rib_zoff = (rib_top - rib_drop * (1.0 + sin_psi) / 2.0).astype(np.float32)
    cartilage = sin_psi > 0.87

    # table (2D, same on every slice)
    table2d = None
    if c["table"]:
        xr2 = np.broadcast_to(grid.xr[None, :], (matrix, matrix))
        yr2 = np.broadcast_to(grid.yr[:, None], (matrix, matrix))
        top = -b_torso * 0.93 - 4.0 + 0.0009 * xr2 ** 2
        table2d = (yr2 < top) & (yr2 > top - 9.0) & (np.abs(xr2) < 0.85 * fov / 2)

    hu_zyx = np.empty(shape_zyx, np.float32)
    label_zyx = np.zeros(shape_zyx, np.uint8)
    bone_zyx = np.zeros(shape_zyx, bool)
    body_zyx = np.zeros(shape_zyx, bool)

    for k, z in enumerate(grid.z.tolist()):
        a_b, ba_b, bp_b = torso_axes(z)
        rb = (1.0 + body_eps) / np.sqrt(cos2 / a_b**2 + sin2_ant / ba_b**2 + sin2_post / bp_b**2)
        tb = r2d - rb
        body = tb < 0
        a_c, ba_c, bp_c = cavity_axes(z)
        rc = 1.0 / np.sqrt(cos2 / a_c**2 + sin2_ant / ba_c**2 + sin2_post / (bp_c + gutter) ** 2)
        tc = r2d - rc
        cavity = tc < 0
        above = z > z_dia
        sl = np.full((matrix, matrix), -1000.0, np.float32)
        if table2d is not None:
            sl[table2d] = 180.0
        sl[body] = -105.0
        wall = body & (tb > -fat)
        sl[body & ~wall] = 45.0  # muscle (the cavity is painted over below)
        sl[cavity & above] = -75.0  # mediastinal / extrapleural fat
        below = cavity & ~above
        if below.any():
            liver = below & (u > -0.15 * a_c0 + 0.3 * (v - bca0 * 0.2)) & (z < z_dia - 4.0 * s)
            sl[below] = 38.0
            sl[liver] = 58.0
            if stomach is not None:
                st_c, st_axes, fluid_z = stomach
                dzs = (z - st_c[2]) / st_axes[2]
                if abs(dzs) < 1.0:
                    scale = math.sqrt(1.0 - dzs * dzs)
                    q = ((u - st_c[0]) / (st_axes[0] * scale)) ** 2 + ((v - st_c[1]) / (st_axes[1] * scale)) ** 2
                    inside = (q < 1.0) & below & (z < z_dia - 5.0 * s)
                    sl[inside] = 30.0
                    if z > fluid_z:
                        sl[inside & (q < 0.8)] = -1000.0

        # ---- lungs ----
        eps = lung_eps_a + lung_eps_b * math.cos(lung_eps_wave[0] * z + lung_eps_wave[1])
        lung_core = cavity & above & (tc < -(0.6 + 0.2 * s))
        # mediastinal exclusions
        v_vb = vertebra_v(z)
        spine_q = (u / (rvb_lr + 4.0 * s)) ** 2 + ((v - v_vb) / (rvb_ap + 4.0 * s)) ** 2
        excl = spine_q < 1.0
        if z < heart_c[2] + heart_axes[2] + 4.0 * s:
            dzh = max((z - heart_c[2]) / (heart_axes[2] + 4.0 * s), 0.0)
            excl |= heart_q2d < (1.0 - dzh * dzh) * (1.0 + 4.0 * s / heart_axes[0]) ** 2
        # central mediastinum (great vessels, trachea, oesophagus, left atrium): widest where it meets the
        # heart, narrower toward the neck and the diaphragm
        widen = 1.0 + 0.6 * math.exp(-(((z - heart_top + 10.0 * s) / (35.0 * s)) ** 2))
        excl |= ((u - 2.0 * s) / (18.0 * s * widen)) ** 2 + ((v - trachea_v - 8.0 * s) / (34.0 * s)) ** 2 < 1.0
        excl |= airway_frac[k] > 0.01
        excl |= aorta_frac[k] > 0.01
        excl |= eso_frac[k] > 0.01
        lung_core &= ~excl
        for label, side, ell, apex in ((1, u > midline + gap, ell_r, apex_r), (2, u < midline - gap, ell_l, apex_l)):
            if z >= apex:
                continue
            g2 = 1.0 - ((z - widest) / (apex - widest)) ** 2 if z > widest else 1.0
            lung = lung_core & side & (ell < g2 * (1.0 + eps))
            label_zyx[k][lung] = label
        lung_any = label_zyx[k] > 0
        wave = math.cos(tex_wave[0] * z + tex_wave[1])
        parenchyma = lung_base2d + tex_a * wave + tex_b * (1.0 - wave)
        sheet = np.zeros_like(parenchyma)
        for label, (z_f, n_z, extent) in zip((1, 2), fissures):
            near = np.abs(z - z_f) * n_z < extent
            if near.any():
                cover = (fissure_mm / extent) * np.clip(1.0 - np.abs(z - z_f) * n_z / extent, 0.0, 1.0)
                sheet = np.where(near & (label_zyx[k] == label), np.maximum(sheet, cover), sheet)
            if label == 1 and abs(z - horizontal_z) < grid.spacing[2]:
                cover = (fissure_mm / grid.spacing[2]) * (1.0 - abs(z - horizontal_z) / grid.spacing[2])
                sheet = np.where((z_f < horizontal_z) & (label_zyx[k] == 1), np.maximum(sheet, cover), sheet)
        parenchyma = parenchyma * (1.0 - sheet) + 10.0 * sheet
        sl[lung_any] = parenchyma[lung_any]

        # ---- heart, great vessels, airways, oesophagus ----
        if z < heart_c[2] + heart_axes[2] * 1.08:
            dzh = max((z - heart_c[2]) / heart_axes[2], 0.0)
            f2 = 1.0 - dzh * dzh
            in_chest = cavity & above
            if f2 > -0.17:
                sl[(heart_q2d < max(f2, 0.0) * 1.17) & in_chest] = -95.0  # epicardial fat
            if f2 > 0:
                sl[(heart_q2d < f2) & in_chest] = 42.0  # myocardium
                if contrast:
                    sl[(heart_q2d < f2 * 0.55) & in_chest] = blood_hu
        frac = aorta_frac[k]
        m = frac > 0
        sl[m] = sl[m] * (1 - frac[m]) + blood_hu * frac[m]
        frac = eso_frac[k]
        m = frac > 0
        sl[m] = sl[m] * (1 - frac[m]) + 40.0 * frac[m]
        frac = airway_frac[k]
        m = frac > 0
        sl[m] = sl[m] * (1 - frac[m]) + 30.0 * frac[m]
        frac = lumen_frac[k]
        m = frac > 0
        sl[m] = sl[m] * (1 - frac[m]) - 1000.0 * frac[m]

        # ---- bones ----
        # ribs: tubes running around the cavity, descending from the spine to the cartilages
        w = (rib_zoff - z) / rib_pitch
        n = np.clip(np.rint(w), 0, 11)
        dz_rib = (w - n) * rib_pitch
        d_rad = tc - (rib_gap + rib_r)
        q = np.sqrt((d_rad / rib_r) ** 2 + (dz_rib / rib_h) ** 2)
        rib = (q < 1.0) & body
        rib_bone = rib & ~cartilage
        sl[rib & cartilage] = 110.0
        sl[rib_bone] = (280.0 + 650.0 * _smoothstep(q, 0.55, 0.85))[rib_bone]
        bone = rib_bone
        # spine: vertebral bodies (cancellous, cortical rim) and discs, canal, posterior elements
        level = ((z - level_phase) / level_height) % 1.0
        vq = np.sqrt((u / rvb_lr) ** 2 + ((v - v_vb) / rvb_ap) ** 2)
        vb = vq < 1.0
        if level < 0.82:
            rim = 1.0 - 1.6 / rvb_lr
            endplate = level < 0.06 or level > 0.76
            vb_hu = np.where(vq > rim, 750.0, 420.0 if endplate else 230.0)
            sl[vb] = vb_hu[vb]
            bone = bone | vb
        else:
            sl[vb] = 85.0  # intervertebral disc
        v_canal = v_vb - rvb_ap - r_canal - 1.0 * s
        dc = np.sqrt(u * u + (v - v_canal) ** 2)
        canal = dc < r_canal
        if level < 0.7 or level > 0.95:
            arch = (dc >= r_canal) & (dc < r_canal + 4.5 * s)
            spinous = (np.abs(u) < 3.5 * s) & (v < v_canal - r_canal) & (v > v_canal - r_canal - 32.0 * s) & body
            transverse = (np.abs(v - v_canal) < 4.5 * s) & (np.abs(u) < 30.0 * s)
            post = (arch | spinous | transverse) & ~canal
            sl[post] = 620.0
            bone = bone | post
        sl[canal] = 25.0
        # sternum
        if 0.22 * lung_height < z < 0.86 * lung_height:
            st = (u / (14.0 * s)) ** 2 + ((v - ba_c - 6.0 * s) / (5.5 * s)) ** 2
            sternum = (st < 1.0) & body
            sl[sternum] = np.where(st > 0.6, 700.0, 260.0)[sternum]
            bone = bone | sternum
        # scapulae: plates behind the posterolateral ribs
        if 0.5 * lung_height < z < 0.98 * lung_height:
            scap_d = tc - (rib_gap + 2.0 * rib_r + 7.0 * s)
            scap = (np.abs(scap_d) < 2.5 * s) & (sin_psi < -0.4) & (np.abs(np.cos(psi)) > 0.35) & body
            sl[scap] = 560.0
            bone = bone | scap

        hu_zyx[k] = sl
        bone_zyx[k] = bone
        body_zyx[k] = body

    # ---- intrapulmonary vessels and airways ----
    _add_pulmonary_trees(rng, grid, hu_zyx, label_zyx, c, s, hilum_r, hilum_l, blood_hu, edge)

    # lung label: trachea and main bronchi are not lung
    label_zyx[airway_frac > 0.5] = 0

    # (z, y, x) C-order -> (x, y, z) Fortran-order views: no copy
    hu = hu_zyx.transpose(2, 1, 0)
    lung_label = label_zyx.transpose(2, 1, 0)
    bone_mask = bone_zyx.transpose(2, 1, 0)
    body_mask = body_zyx.transpose(2, 1, 0)
    airway_mask = (lumen_frac > 0.5).transpose(2, 1, 0)

    # world frame: RAS, voxel (0,0,0) placed like a scanner reconstruction (isocentre near 0)
    table_z = -rng.uniform(80.0, 350.0)
    affine = np.diag([sxy, sxy, sz, 1.0])
    affine[:3, 3] = [-(matrix - 1) / 2.0 * sxy, -(matrix - 1) / 2.0 * sxy, table_z]

    def world(uvz: np.ndarray) -> list[float]:
        ijk = grid.to_voxel(grid.to_grid_frame(uvz))
        return [float(x) for x in affine[:3, :3] @ ijk + affine[:3, 3]]

    phantom = ChestPhantom(
        hu=hu,
        lung_label=lung_label,
        spacing=(float(sxy), float(sxy), float(sz)),
        affine=affine,
        bone_mask=bone_mask,
        body_mask=body_mask,
        airway_mask=airway_mask,
        noise_sd=float(noise_sd),
        params={
            "body_scale": s, "body_aspect": aspect, "rotation_deg": math.degrees(theta), "breathing": breath,
            "fat_mm": fat, "lung_height_mm": lung_height, "contrast": contrast, "lung_hu": lung_hu,
            "stomach_gas": stomach is not None, "noise_sd_hu": noise_sd, "fov_mm": fov,
        },
        landmarks={"carina": world(carina), "hilum_right": world(hilum_r), "hilum_left": world(hilum_l)},
    )
    if add_noise:
        add_ct_noise(phantom, rng, correlation_px=float(c["noise_correlation_px"]))
    return phantom


def _add_pulmonary_trees(
    rng: np.random.Generator, grid: _Grid, hu_zyx: np.ndarray, label_zyx: np.ndarray, c: Mapping[str, Any],
    s: float, hilum_r: np.ndarray, hilum_l: np.ndarray, blood_hu: float, edge: float,
) -> None:
    """Arteries running with the airways, and veins, branching from each hilum to fill the lung."""
    gens = int(c["vessel_generations"])
    air_gens = int(c["airway_generations"])
    if gens <= 0:
        return
    nz, ny, nx = hu_zyx.shape
    for label, hilum in ((1, hilum_r), (2, hilum_l)):
        # a cloud of points spread through this lung (a coarse sub-sample of its voxels)
        step = max(1, int(round(4.0 / max(grid.spacing[0], 1e-3))))
        zstep = max(1, int(round(4.0 / grid.spacing[2])))
        coarse = label_zyx[::zstep, ::step, ::step] == label
        kk, jj, ii = np.nonzero(coarse)
        if len(kk) < 16:
            continue
        box_lo = np.array([ii.min() * step, jj.min() * step, kk.min() * zstep])
        box_hi = np.array([ii.max() * step + step, jj.max() * step + step, kk.max() * zstep + zstep])
        n_pts = min(len(kk), 2 ** gens * 2)

        voxels = np.stack([ii * step, jj * step, kk * zstep], axis=1).astype(np.float64)
        steps = np.array([step, step, zstep], dtype=np.float64)
        origin = np.array([grid.xr[0], grid.yr[0], grid.z[0]], dtype=np.float64)
        root = grid.to_grid_frame(hilum)
        airway_tree = _grow_tree(rng, root, _point_cloud(rng, voxels, steps, origin, grid.spacing, n_pts), 6.5 * s, gens)
        vein_root = grid.to_grid_frame(hilum + np.array([0.0, 12.0 * s, -28.0 * s]))
        vein_tree = _grow_tree(rng, vein_root, _point_cloud(rng, voxels, steps, origin, grid.spacing, n_pts), 6.0 * s, gens)
        offset_dir = grid.to_grid_frame(np.array([0.0, 1.0, 0.0])) - grid.to_grid_frame(np.zeros(3))
        vessels, walls, lumens = [], [], []
        for p0, p1, r, gen in airway_tree:
            d = p1 - p0
            length = np.linalg.norm(d)
            if length < 1e-6:
                continue
            d = d / length
            o = offset_dir - (offset_dir @ d) * d
            o = o / max(np.linalg.norm(o), 1e-6)
            r_art = 0.85 * r
            shift = o * (r + r_art) * 0.9
            vessels.append((p0 + shift, p1 + shift, r_art))
            if gen < air_gens and r > 0.9 * edge:
                walls.append((p0, p1, r))
                lumens.append((p0, p1, r * 0.7))
        vessels += [(p0, p1, 0.9 * r) for p0, p1, r, _ in vein_tree]

        # render into a box around this lung only
        k0, k1 = int(box_lo[2]), int(min(nz, box_hi[2] + 1))
        i0, i1 = int(box_lo[0]), int(min(nx, box_hi[0] + 1))
        j0, j1 = int(box_lo[1]), int(min(ny, box_hi[1] + 1))
        sub = _SubGrid(grid, (i0, i1), (j0, j1), (k0, k1))
        vfrac = np.zeros((k1 - k0, j1 - j0, i1 - i0), np.float32)
        wfrac = np.zeros_like(vfrac)
        lfrac = np.zeros_like(vfrac)
        _render_capsules(vfrac, sub, vessels, edge)
        _render_capsules(wfrac, sub, walls, edge)
        _render_capsules(lfrac, sub, lumens, edge)
        region = hu_zyx[k0:k1, j0:j1, i0:i1]
        in_lung = label_zyx[k0:k1, j0:j1, i0:i1] == label
        tissue = np.maximum(vfrac, wfrac)
        val = region * (1.0 - tissue) + blood_hu * vfrac + 35.0 * np.maximum(wfrac - vfrac, 0.0)
        val = val * (1.0 - lfrac) - 1000.0 * lfrac
        np.copyto(region, val, where=in_lung)


def _point_cloud(rng: np.random.Generator, voxels: np.ndarray, steps: np.ndarray, origin: np.ndarray,
                 spacing: Sequence[float], n_points: int) -> np.ndarray:
    """``n_points`` random grid-frame positions (mm) spread over the given (sub-sampled) voxels."""
    pick = rng.choice(len(voxels), size=n_points, replace=False)
    jitter = rng.uniform(-0.5, 0.5, size=(n_points, 3)) * steps
    return origin + (voxels[pick] + jitter) * np.asarray(spacing, dtype=np.float64)


class _SubGrid(_Grid):
    """A box of a ``_Grid`` (same frame)."""

    def __init__(self, parent: _Grid, irange: tuple[int, int], jrange: tuple[int, int], krange: tuple[int, int]) -> None:
        self.spacing = parent.spacing
        self.xr = parent.xr[irange[0]:irange[1]]
        self.yr = parent.yr[jrange[0]:jrange[1]]
        self.z = parent.z[krange[0]:krange[1]]
        self.shape_xyz = (len(self.xr), len(self.yr), len(self.z))
        self.cos, self.sin = parent.cos, parent.sin


def add_ct_noise(phantom: ChestPhantom, rng: np.random.Generator, correlation_px: float = 0.7) -> ChestPhantom:
    """Add spatially correlated Gaussian CT noise and round to integer HU in [-1024, 3071] (in place).

    The noise is white noise smoothed in-plane by a Gaussian of ``correlation_px`` voxels (reconstruction
    kernels correlate neighbouring pixels within a slice; slices are nearly independent), rescaled to
    ``phantom.noise_sd``. It is about 15 % stronger in the centre of the body than at its edge, where
    fewer photons reach the detector.

    Args:
        phantom: the noise-free phantom (``hu`` is modified).
        rng: random generator.
        correlation_px: in-plane Gaussian sigma in voxels (0 for white noise).

    Returns:
        the same phantom.
    """
    from scipy.ndimage import gaussian_filter1d

    # drawn in (z, y, x) C-order and viewed as (x, y, z): the layout of the phantom's arrays
    noise = rng.standard_normal(phantom.hu.shape[::-1], dtype=np.float32)
    if correlation_px > 0:
        smoothed = np.empty_like(noise)
        gaussian_filter1d(noise, correlation_px, axis=2, mode="wrap", truncate=3.0, output=smoothed)
        gaussian_filter1d(smoothed, correlation_px, axis=1, mode="wrap", truncate=3.0, output=noise)
        del smoothed
        # the variance of Gaussian-smoothed white noise: 1 / (4 pi sigma^2) for sigma >~ 0.7 voxel
        radius = int(3.0 * correlation_px + 0.5)
        kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / correlation_px) ** 2)
        kernel /= kernel.sum()
        noise *= np.float32(1.0 / (kernel @ kernel))
    noise = noise.transpose(2, 1, 0)
    nx, ny, _ = phantom.hu.shape
    ci, cj = np.meshgrid(np.linspace(-1, 1, nx), np.linspace(-1, 1, ny), indexing="ij")
    profile = (phantom.noise_sd * (1.08 - 0.15 * (ci**2 + cj**2))).astype(np.float32)
    noise *= profile[:, :, None]
    phantom.hu += noise
    np.rint(phantom.hu, out=phantom.hu)
    np.clip(phantom.hu, -1024.0, 3071.0, out=phantom.hu)
    return phantom


# --------------------------------------------------------------------------------------------------
# the lung_ct data set (MSD / decathlon layout)
# --------------------------------------------------------------------------------------------------
def _split_ids(prefix: str, counts: Sequence[int]) -> list[list[str]]:
    ids, start = [], 1
    for count in counts:
        ids.append([f"{prefix}_{n:03d}" for n in range(start, start + count)])
        start += count
    return ids


def _dicom_case_ids(choice: Any, train: list[str], val: list[str], test: list[str], source: str) -> set[str]:
    from common.errors import InputDataError

    everything = train + val + test
    if choice in (None, "none", False):
        return set()
    if choice == "test":
        return set(test)
    if choice == "all":
        return set(everything)
    if isinstance(choice, (list, tuple)):
        unknown = sorted(set(map(str, choice)) - set(everything))
        if unknown:
            raise InputDataError(source, f"dicom_cases names cases that are not generated: {unknown}")
        return set(map(str, choice))
    raise InputDataError(source, f"dicom_cases must be 'test', 'all', 'none' or a list of case ids, got {choice!r}")


def _make_lung_case(args: tuple) -> dict[str, Any]:
    """Generate and write one case (runs in a worker process when num_workers > 1)."""
    out_dir, case_id, number, seed, phantom_cfg, image_dir, label_dir, write_dicom, write_mhd = args
    from common.synthetic.writers import write_dicom_ct_series, write_mhd_volume, write_nifti

    out_dir = Path(out_dir)
    rng = make_rng(seed, "lung_ct", number)
    t0, c0 = time.perf_counter(), time.process_time()
    phantom = make_chest_phantom(rng, phantom_cfg)
    t1, c1 = time.perf_counter(), time.process_time()
    write_nifti(out_dir / image_dir / f"{case_id}.nii.gz", phantom.hu, phantom.affine, np.int16)
    write_nifti(out_dir / label_dir / f"{case_id}.nii.gz", phantom.lung_label, phantom.affine, np.uint8)
    if write_mhd:
        write_mhd_volume(out_dir / "mhd" / f"{case_id}.mhd", phantom.hu, phantom.affine, np.int16)
        write_mhd_volume(out_dir / "mhd" / f"{case_id}_label.mhd", phantom.lung_label, phantom.affine, np.uint8)
    if write_dicom:
        write_dicom_ct_series(out_dir / "dicom" / case_id, phantom.hu, phantom.affine, uid_parts=(seed, "lung_ct", case_id),
                              patient_number=number)
    t2, c2 = time.perf_counter(), time.process_time()
    return {
        "id": case_id,
        "shape": list(phantom.shape),
        "spacing": list(phantom.spacing),
        "right_lung_ml": float((phantom.lung_label == 1).sum() * np.prod(phantom.spacing) / 1000.0),
        "left_lung_ml": float((phantom.lung_label == 2).sum() * np.prod(phantom.spacing) / 1000.0),
        "params": phantom.params,
        "seconds_phantom": t1 - t0,
        "seconds_write": t2 - t1,
        "cpu_seconds_phantom": c1 - c0,
        "cpu_seconds_write": c2 - c1,
    }


def generate_lung_ct(out_dir: str | os.PathLike, config: str | os.PathLike | Mapping[str, Any] | None = None, seed: int = 0) -> Path:
    """Write a synthetic chest CT lung segmentation set in the MSD/decathlon layout.

    Layout::

        dataset.json              MSD keys + "training"/"validation"/"testing" lists of {"image", "label"}
        imagesTr/<id>.nii.gz      training and validation CTs (int16 HU, RAS affine)
        labelsTr/<id>.nii.gz      lung labels (0 background, 1 right lung, 2 left lung)
        imagesTs/, labelsTs/      test CTs and labels
        dicom/<id>/               the same scans as DICOM CT series (cases chosen by ``dicom_cases``)
        mhd/<id>.mhd (+ .raw)     the same scans as MetaImage (LPS), labels as mhd/<id>_label.mhd
        dataset.yaml              what was made: counts, shapes, spacings, seed and the full config

    Args:
        out_dir: output folder (created).
        config: YAML file or dictionary overriding ``LUNG_CT_DEFAULTS`` (see configs/lung_ct.yaml).
        seed: random seed; the same seed and config give byte-identical files.

    Returns:
        the output folder.
    """
    source = str(config) if isinstance(config, (str, os.PathLike)) else "config"
    cfg = load_config(LUNG_CT_DEFAULTS, config)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train, val, test = _split_ids(cfg["case_prefix"], (int(cfg["num_train"]), int(cfg["num_val"]), int(cfg["num_test"])))
    dicom_ids = _dicom_case_ids(cfg["dicom_cases"], train, val, test, source)
    jobs = []
    for number, case_id in enumerate(train + val + test, start=1):
        in_test = case_id in test
        jobs.append((str(out), case_id, number, int(seed), cfg["phantom"], "imagesTs" if in_test else "imagesTr",
                     "labelsTs" if in_test else "labelsTr", case_id in dicom_ids, bool(cfg["write_mhd"])))
    t0 = time.perf_counter()
    results = _run_jobs(_make_lung_case, jobs, int(cfg["num_workers"]), desc="lung_ct")
    elapsed = time.perf_counter() - t0

    def entry(case_id: str, image_dir: str, label_dir: str) -> dict[str, str]:
        return {"image": f"{image_dir}/{case_id}.nii.gz", "label": f"{label_dir}/{case_id}.nii.gz"}

    dataset = {
        "name": "SynthLungCT",
        "description": "Synthetic chest CT phantoms with right/left lung labels (common.synthetic.ct_phantom)",
        "reference": "common/synthetic/ct_phantom.py",
        "licence": "CC-BY-4.0 (synthetic, no patient data)",
        "release": "1.0",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": dict(_LUNG_LABELS),
        "numTraining": len(train) + len(val),
        "numTest": len(test),
        "training": [entry(i, "imagesTr", "labelsTr") for i in train],
        "validation": [entry(i, "imagesTr", "labelsTr") for i in val],
        "testing": [entry(i, "imagesTs", "labelsTs") for i in test],
    }
    from common.io.atomic import atomic_write_json

    atomic_write_json(out / "dataset.json", dataset)
    by_id = {r["id"]: r for r in results}
    write_dataset_yaml(out, {
        "generator": "common.synthetic.ct_phantom:generate_lung_ct",
        "task": "lung_ct",
        "layout": "MSD/decathlon (dataset.json, imagesTr, labelsTr, imagesTs, labelsTs) + dicom/ + mhd/",
        "seed": int(seed),
        "labels": {int(k): v for k, v in _LUNG_LABELS.items()},
        "counts": {"train": len(train), "val": len(val), "test": len(test)},
        "splits": {"train": train, "val": val, "test": test},
        "dicom_cases": sorted(dicom_ids),
        "cases": [{k: by_id[i][k] for k in ("id", "shape", "spacing", "right_lung_ml", "left_lung_ml", "params")} for i in train + val + test],
        "config": cfg,
    })
    _last_timing.update({"seconds_total": elapsed, "cases": results})
    return out


_last_timing: dict[str, Any] = {}


def _run_jobs(func: Any, jobs: list, num_workers: int, desc: str) -> list:
    """Run ``func`` over ``jobs`` (in order), in worker processes when ``num_workers`` > 1."""
    if num_workers <= 1 or len(jobs) <= 1:
        return [func(job) for job in progress(jobs, desc=desc)]
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
    with ProcessPoolExecutor(max_workers=num_workers, mp_context=ctx) as pool:
        return list(progress(pool.map(func, jobs), desc=desc, total=len(jobs)))


def benchmark_ct(n_scans: int = 20, spacing: float = 1.5, num_workers: int = 2, out_dir: str | None = None) -> dict[str, Any]:
    """Time the generation of a full-size CT set: ``n_scans`` adult chest phantoms at ``spacing`` mm.

    The set is written like ``generate_lung_ct`` writes it (NIfTI images and labels, MHD copies, DICOM
    series of the test cases) into a temporary folder that is removed afterwards.

    Args:
        n_scans: number of scans (train/val/test split 70/15/15).
        spacing: isotropic voxel size in mm (in-plane and slice spacing).
        num_workers: worker processes.
        out_dir: keep the data here instead of a temporary folder.

    Returns:
        wall ``seconds`` and ``cpu_seconds`` (this process and its workers; ``cpu_seconds / num_workers``
        is what the run takes on idle cores), per scan, the mean volume shape, the mean wall and CPU
        seconds of building a phantom and of writing it, and the 1-minute load average at the end.
    """
    import shutil
    import tempfile

    n_test = max(1, round(0.15 * n_scans))
    n_val = max(0, round(0.15 * n_scans))
    config = {
        "num_train": n_scans - n_test - n_val, "num_val": n_val, "num_test": n_test, "num_workers": num_workers,
        "phantom": {"in_plane_spacing_mm": spacing, "slice_spacing_mm": [spacing, spacing]},
    }
    import resource

    def cpu_now() -> float:
        own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime

    target = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="bench_ct_"))
    try:
        t0, cpu0 = time.perf_counter(), cpu_now()
        generate_lung_ct(target, config=config, seed=0)
        seconds, cpu_seconds = time.perf_counter() - t0, cpu_now() - cpu0
    finally:
        if out_dir is None:
            shutil.rmtree(target, ignore_errors=True)
    cases = _last_timing.get("cases", [])
    return {
        "task": "lung_ct",
        "n_scans": n_scans,
        "spacing_mm": spacing,
        "num_workers": num_workers,
        "seconds": round(seconds, 2),
        "seconds_per_scan": round(seconds / max(n_scans, 1), 3),
        # CPU time of this process and its workers: seconds / num_workers is the wall time on otherwise idle
        # cores, whatever else the machine was doing during the measurement
        "cpu_seconds": round(cpu_seconds, 2),
        "cpu_seconds_per_scan": round(cpu_seconds / max(n_scans, 1), 3),
        "mean_shape": [round(float(np.mean([c["shape"][a] for c in cases])), 1) for a in range(3)] if cases else None,
        "phantom_seconds_mean": round(float(np.mean([c["seconds_phantom"] for c in cases])), 3) if cases else None,
        "write_seconds_mean": round(float(np.mean([c["seconds_write"] for c in cases])), 3) if cases else None,
        "phantom_cpu_seconds_mean": round(float(np.mean([c["cpu_seconds_phantom"] for c in cases])), 3) if cases else None,
        "write_cpu_seconds_mean": round(float(np.mean([c["cpu_seconds_write"] for c in cases])), 3) if cases else None,
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
