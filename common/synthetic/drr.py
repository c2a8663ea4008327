"""Digitally reconstructed radiographs (DRR): a frontal chest X-ray computed from any CT volume.

The model, in the order the code applies it:

1. **Attenuation.** Hounsfield units become linear attenuation coefficients at one effective energy of a
   chest X-ray beam (about 60 keV for 110-120 kVp): ``mu = mu_water * (1 + HU / 1000)`` for air, fat
   and soft tissue; above 0 HU the slope is raised by ``bone_enhancement`` because calcium's
   photo-electric absorption makes bone attenuate relatively more at diagnostic energies than at the
   higher effective energy a CT scanner calibrates HU at.
2. **Line integrals** along the anterior-posterior axis: a parallel beam (a sum along one voxel axis after
   reorienting the volume to RAS, so it is fast and exact for axis-aligned volumes), or a point source
   (cone beam) with a source-to-detector distance, which magnifies structures far from the detector
   (the heart on an AP film) and lengthens oblique rays.
3. **Beer-Lambert** ``I = I0 exp(-integral mu dl)``, plus **scatter** (a broad blur of the primary
   fluence times a scatter-to-primary ratio), **quantum noise** (Poisson counts at ``i0_photons`` per
   pixel of unattenuated beam) and **electronic noise** (Gaussian, in counts).
4. **Detector and display processing**: log transform ``-log(I / I0)`` so that bone is bright, a
   window between percentiles of the body, optional unsharp masking (the edge enhancement every CXR
   workstation applies) and a gamma curve.

The output follows the radiograph display convention of ``docs/architecture.md``: rows run from
superior to inferior and the patient's right is on the viewer's left (a PA or AP film as it is read).
Pixel spacing is isotropic; ``detector_geometry`` (or ``return_meta=True``) tells its value.

Oblique volumes are projected along the voxel axis nearest to anterior-posterior (what
``nibabel.orientations.io_orientation`` picks); the obliquity itself is ignored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

__all__ = [
    "MU_WATER_PER_MM",
    "DetectorGeometry",
    "hu_to_mu",
    "to_ras",
    "line_integrals",
    "detector_geometry",
    "resample_to_detector",
    "detector_response",
    "smooth_wide",
    "project_drr",
    "project_label",
]

# Linear attenuation coefficient of water at about 60 keV, the effective energy of a 110-120 kVp
# chest beam after the patient's own filtration (NIST XCOM: 0.2059 cm^2/g at 60 keV).
MU_WATER_PER_MM = 0.0206
#: soft tissue (about 40 HU): the reference the projected bone's excess attenuation is measured from
MU_SOFT_TISSUE_PER_MM = MU_WATER_PER_MM * 1.04


@dataclass(frozen=True)
class DetectorGeometry:
    """Where the detector pixels lie.

    Attributes:
        shape: detector size (rows, columns).
        pixel_spacing: isotropic pixel size in millimetres, at the detector (cone beam) or at the
            patient (parallel beam, where the two are the same).
        center_mm: the (row, column) position of the detector centre in the projected volume's
            display-plane millimetres (superior->inferior, patient right->left, from the volume's corner).
    """

    shape: tuple[int, int]
    pixel_spacing: float
    center_mm: tuple[float, float]


def hu_to_mu(hu: np.ndarray, mu_water: float = MU_WATER_PER_MM, bone_enhancement: float = 1.6) -> np.ndarray:
    """Convert Hounsfield units to linear attenuation coefficients (1/mm) at the beam's effective energy.

    Args:
        hu: CT values in HU, any shape.
        mu_water: attenuation coefficient of water at the effective energy, 1/mm.
        bone_enhancement: slope multiplier above 0 HU (1 = a single straight line through air and water).

    Returns:
        float32 array of the same shape, >= 0.
    """
    hu = np.asarray(hu, dtype=np.float32)
    rel = np.maximum(hu, -1000.0) * np.float32(1e-3)
    rel = np.where(rel > 0, rel * np.float32(bone_enhancement), rel)
    return (np.float32(mu_water) * (1.0 + rel)).astype(np.float32, copy=False)


def _spacing_and_orientation(affine_or_spacing: Any, ndim: int = 3) -> tuple[np.ndarray, np.ndarray | None]:
    arr = np.asarray(affine_or_spacing, dtype=np.float64)
    if arr.shape == (4, 4):
        from nibabel.orientations import io_orientation

        ornt = io_orientation(arr)
        spacing = np.sqrt((arr[:3, :3] ** 2).sum(axis=0))
        return spacing, ornt
    if arr.shape == (ndim,):
        if np.any(arr <= 0):
            raise ValueError(f"voxel spacing must be positive, got {arr.tolist()}")
        return arr, None
    raise ValueError(f"affine_or_spacing must be a 4x4 affine or {ndim} voxel sizes, got shape {arr.shape}")


def to_ras(volume: Any, affine_or_spacing: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Reorient a volume so that its voxel axes run towards patient Right, Anterior, Superior.

    Args:
        volume: (X, Y, Z) array, or (1, X, Y, Z) (a MONAI channel-first image; a ``MetaTensor`` brings its
            own affine when ``affine_or_spacing`` is None).
        affine_or_spacing: the 4x4 voxel-to-world affine in RAS millimetres (MONAI/NIfTI convention), or
            three voxel sizes in mm for a volume already in RAS voxel order.

    Returns:
        (volume in RAS voxel order, voxel sizes in mm along those axes).
    """
    if affine_or_spacing is None:
        affine_or_spacing = getattr(volume, "affine", None)
        if affine_or_spacing is None:
            raise ValueError("affine_or_spacing is required unless the volume carries an affine (MetaTensor)")
        affine_or_spacing = np.asarray(affine_or_spacing)
    if hasattr(volume, "detach"):  # torch tensor / MetaTensor
        volume = volume.detach().cpu().numpy()
    vol = np.asarray(volume)
    if vol.ndim == 4 and vol.shape[0] == 1:
        vol = vol[0]
    if vol.ndim != 3:
        raise ValueError(f"expected a 3D volume (X, Y, Z) or (1, X, Y, Z), got shape {vol.shape}")
    spacing, ornt = _spacing_and_orientation(affine_or_spacing)
    if ornt is None:
        return vol, spacing
    from nibabel.orientations import apply_orientation

    vol = apply_orientation(vol, ornt)
    spacing = spacing[ornt[:, 0].astype(int).argsort()]
    return vol, spacing


def line_integrals(
    mu_ras: np.ndarray, spacing_ras: Sequence[float]
) -> tuple[np.ndarray, tuple[float, float]]:
    """Parallel-beam line integrals along the anterior-posterior axis, in display orientation.

    Args:
        mu_ras: (X, Y, Z) attenuation (1/mm) or any additive quantity, RAS voxel order.
        spacing_ras: voxel sizes (mm) along X, Y, Z.

    Returns:
        (2D array (Z, X) with rows superior->inferior and columns patient right->left,
        its (row, column) spacing in mm).
    """
    sx, sy, sz = (float(s) for s in spacing_ras)
    proj = mu_ras.sum(axis=1, dtype=np.float32) * np.float32(sy)
    return np.ascontiguousarray(proj[::-1, ::-1].T), (sz, sx)


def detector_geometry(
    plane_shape: Sequence[int],
    plane_spacing: Sequence[float],
    output_shape: Sequence[int] | None = None,
    pixel_spacing: float | None = None,
) -> DetectorGeometry:
    """Choose detector pixels for a projected plane.

    With neither ``output_shape`` nor ``pixel_spacing``: the plane at its finest in-plane spacing.
    With ``output_shape`` only: the pixel spacing that makes the whole plane fit, centred (letterboxed).
    With ``pixel_spacing`` only: the whole plane at that spacing. With both: that grid, centred.
    """
    extent = np.asarray(plane_shape, dtype=np.float64) * np.asarray(plane_spacing, dtype=np.float64)
    if pixel_spacing is None:
        if output_shape is None:
            pixel_spacing = float(min(plane_spacing))
        else:
            pixel_spacing = float(np.max(extent / np.asarray(output_shape, dtype=np.float64)))
    if pixel_spacing <= 0:
        raise ValueError(f"pixel_spacing must be positive, got {pixel_spacing}")
    if output_shape is None:
        output_shape = tuple(int(max(1, np.ceil(e / pixel_spacing - 1e-6))) for e in extent)
    return DetectorGeometry(
        shape=(int(output_shape[0]), int(output_shape[1])),
        pixel_spacing=float(pixel_spacing),
        center_mm=(float(extent[0] / 2), float(extent[1] / 2)),
    )


def resample_to_detector(
    plane: np.ndarray,
    plane_spacing: Sequence[float],
    geometry: DetectorGeometry,
    order: int = 1,
    scale: float = 1.0,
    rotation_deg: float = 0.0,
    shift_mm: Sequence[float] = (0.0, 0.0),
    cval: float = 0.0,
) -> np.ndarray:
    """Resample a projected plane onto the detector grid, optionally with a similarity transform.

    Args:
        plane: 2D display-oriented array (e.g. from ``line_integrals``).
        plane_spacing: its (row, column) spacing in mm.
        geometry: the detector grid.
        order: spline order (0 for masks).
        scale: magnification (> 1 makes the patient appear larger).
        rotation_deg: in-plane rotation of the patient, degrees.
        shift_mm: translation of the patient on the detector (rows, columns), mm.
        cval: value outside the plane (0 = no attenuation, i.e. air).

    Returns:
        float32 array of ``geometry.shape``.
    """
    p = geometry.pixel_spacing
    theta = np.deg2rad(rotation_deg)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    # output pixel (mm) -> plane mm: undo shift, rotation and scale about the detector centre
    out_center = (np.asarray(geometry.shape, dtype=np.float64) - 1) / 2 * p
    to_plane_mm = rot.T / scale * p
    src_spacing = np.asarray(plane_spacing, dtype=np.float64)
    matrix = to_plane_mm / src_spacing[:, None]
    plane_center = np.asarray(geometry.center_mm) - src_spacing / 2
    offset = (plane_center - rot.T @ (out_center + np.asarray(shift_mm)) / scale) / src_spacing
    out = ndimage.affine_transform(
        np.asarray(plane, dtype=np.float32),
        matrix,
        offset=offset,
        output_shape=geometry.shape,
        order=order,
        mode="constant",
        cval=cval,
        prefilter=False,
    )
    return out.astype(np.float32, copy=False)


def _cone_line_integrals(
    mu_ras: np.ndarray, spacing_ras: np.ndarray, geometry: DetectorGeometry, view: str, sdd_mm: float
) -> np.ndarray:
    """Point-source projection: each coronal slice is scaled by its distance from the source."""
    sx, sy, sz = (float(s) for s in spacing_ras)
    nx, ny, nz = mu_ras.shape
    # the slice stack in display orientation: (Y, rows=Z desc, cols=X desc)
    slices = np.ascontiguousarray(np.transpose(mu_ras[::-1, :, ::-1], (1, 2, 0)))
    p = geometry.pixel_spacing
    rows = (np.arange(geometry.shape[0]) - (geometry.shape[0] - 1) / 2) * p
    cols = (np.arange(geometry.shape[1]) - (geometry.shape[1] - 1) / 2) * p
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    # PA: the detector is against the anterior chest wall; AP: against the back
    depth = (ny - 1 - np.arange(ny)) * sy if view == "PA" else np.arange(ny) * sy
    obliquity = np.sqrt(1.0 + (rr**2 + cc**2) / sdd_mm**2).astype(np.float32)
    out = np.zeros(geometry.shape, dtype=np.float32)
    center = np.asarray(geometry.center_mm)
    for j in range(ny):
        demag = (sdd_mm - depth[j]) / sdd_mm  # detector mm -> mm in this slice
        coords = np.stack([(center[0] + rr * demag) / sz - 0.5, (center[1] + cc * demag) / sx - 0.5])
        out += ndimage.map_coordinates(slices[j], coords, order=1, mode="constant", cval=0.0, prefilter=False)
    return out * np.float32(sy) * obliquity


def smooth_wide(image: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian blur for wide kernels, computed on a block-averaged grid (scatter and unsharp masks are
    smooth, so a coarse grid loses nothing visible and is many times faster)."""
    factor = int(sigma_px // 3)
    if factor < 2:
        return ndimage.gaussian_filter(image, sigma_px, mode="nearest")
    h, w = image.shape
    hp, wp = -(-h // factor) * factor, -(-w // factor) * factor
    padded = np.pad(image, ((0, hp - h), (0, wp - w)), mode="edge")
    small = padded.reshape(hp // factor, factor, wp // factor, factor).mean(axis=(1, 3))
    small = ndimage.gaussian_filter(small, sigma_px / factor, mode="nearest")
    up = ndimage.zoom(
        small, (hp / small.shape[0], wp / small.shape[1]), order=1, grid_mode=True, mode="nearest"
    )
    return up[:h, :w].astype(image.dtype, copy=False)


def detector_response(
    line_integral: np.ndarray,
    rng: np.random.Generator | None = None,
    i0_photons: float = 2.0e4,
    scatter_fraction: float = 0.2,
    scatter_sigma_px: float = 12.0,
    electronic_noise: float = 2.0,
    window_percentiles: tuple[float, float] = (0.5, 99.8),
    window: tuple[float, float] | None = None,
    unsharp_amount: float = 0.6,
    unsharp_sigma_px: float = 6.0,
    gamma: float = 1.0,
    s_curve: tuple[float, float] | None = None,
) -> np.ndarray:
    """Turn line integrals into a processed radiograph (bone bright, air dark).

    Args:
        line_integral: 2D total attenuation ``integral mu dl`` per pixel.
        rng: generator for the noise; None gives a noise-free image.
        i0_photons: unattenuated photons per pixel (quantum noise level; 0 disables noise).
        scatter_fraction: scatter-to-primary ratio of the (blurred) scatter added to the primary fluence.
        scatter_sigma_px: width of the scatter kernel, pixels.
        electronic_noise: standard deviation of the detector's additive noise, in photon counts.
        window_percentiles: the log image range mapped to [0, 1], as percentiles of the image
            (automatic exposure processing, as detector software does).
        window: a fixed log image range ``(low, high)`` mapped to [0, 1] instead (comparable brightness
            across images).
        unsharp_amount: edge enhancement (0 disables).
        unsharp_sigma_px: scale of the edge enhancement, pixels.
        gamma: display gamma applied after the window (< 1 brightens).
        s_curve: ``(centre, width)`` of an S-shaped tone curve applied last, after the gamma (a logistic of
            the [0, 1] image, rescaled so that 0 and 1 stay 0 and 1), as film's characteristic curve and the look-up tables of radiography
            workstations are: steep over the lungs, flattening into the mediastinum and bone, where dense
            opacities then lose contrast. None: no S-curve.

    Returns:
        float32 image in [0, 1] of the same shape.
    """
    primary = np.exp(-np.asarray(line_integral, dtype=np.float32))
    fluence = primary
    if scatter_fraction > 0:
        scatter = smooth_wide(primary, scatter_sigma_px)
        fluence = (primary + np.float32(scatter_fraction) * scatter) / np.float32(1.0 + scatter_fraction)
    if rng is not None and i0_photons > 0:
        counts = rng.poisson(fluence * np.float32(i0_photons)).astype(np.float32)
        if electronic_noise > 0:
            counts += rng.normal(0.0, electronic_noise, size=counts.shape).astype(np.float32)
        fluence = np.maximum(counts, 0.5) / np.float32(i0_photons)
    log_img = -np.log(np.maximum(fluence, 1e-6))
    if unsharp_amount > 0:
        log_img = log_img + np.float32(unsharp_amount) * (log_img - smooth_wide(log_img, unsharp_sigma_px))
    lo, hi = window if window is not None else np.percentile(log_img, window_percentiles)
    img = np.clip((log_img - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    if gamma != 1.0:
        img = img ** np.float32(gamma)
    if s_curve is not None:
        centre, width = (float(v) for v in s_curve)
        ends = 1.0 / (1.0 + np.exp(-(np.array([0.0, 1.0]) - centre) / width))
        img = (1.0 / (1.0 + np.exp(-(img - np.float32(centre)) / np.float32(width))) - np.float32(ends[0]))
        img = np.clip(img / np.float32(ends[1] - ends[0]), 0.0, 1.0)
    return img.astype(np.float32, copy=False)


def _project_plane(
    values_ras: np.ndarray,
    spacing_ras: np.ndarray,
    geometry_kind: str,
    output_shape: Sequence[int] | None,
    pixel_spacing: float | None,
    view: str,
    source_to_detector_mm: float,
    order: int,
) -> tuple[np.ndarray, DetectorGeometry]:
    plane_shape = (values_ras.shape[2], values_ras.shape[0])
    plane_spacing = (float(spacing_ras[2]), float(spacing_ras[0]))
    geom = detector_geometry(plane_shape, plane_spacing, output_shape, pixel_spacing)
    if geometry_kind == "parallel":
        plane, plane_spacing = line_integrals(values_ras, spacing_ras)
        return resample_to_detector(plane, plane_spacing, geom, order=order), geom
    if geometry_kind == "cone":
        if view not in ("PA", "AP"):
            raise ValueError(f"view must be 'PA' or 'AP', got {view!r}")
        if source_to_detector_mm <= values_ras.shape[1] * spacing_ras[1]:
            raise ValueError("source_to_detector_mm must exceed the volume's anterior-posterior depth")
        return _cone_line_integrals(values_ras, spacing_ras, geom, view, source_to_detector_mm), geom
    raise ValueError(f"geometry must be 'parallel' or 'cone', got {geometry_kind!r}")


def project_drr(
    hu: Any,
    affine_or_spacing: Any = None,
    *,
    output_shape: Sequence[int] | None = None,
    pixel_spacing: float | None = None,
    geometry: str = "parallel",
    view: str = "PA",
    source_to_detector_mm: float = 1800.0,
    mu_water: float = MU_WATER_PER_MM,
    bone_enhancement: float = 1.6,
    rng: np.random.Generator | None = None,
    detector: dict | None = None,
    return_meta: bool = False,
) -> np.ndarray | tuple[np.ndarray, dict]:
    """Compute a frontal chest radiograph from a CT volume in HU.

    Args:
        hu: CT volume (X, Y, Z) or (1, X, Y, Z) in Hounsfield units (a ``MetaTensor`` from
            ``common.transforms.LoadCTd`` works as is).
        affine_or_spacing: 4x4 RAS voxel-to-world affine, or (sx, sy, sz) mm for a RAS-ordered array;
            None takes the ``affine`` of a ``MetaTensor``.
        output_shape: detector (rows, columns); None sizes it to the volume.
        pixel_spacing: detector pixel size (mm); see ``detector_geometry`` for the defaults.
        geometry: ``"parallel"`` (fast, no magnification) or ``"cone"`` (point source).
        view: ``"PA"`` (source behind the patient) or ``"AP"``; matters for the cone beam only.
        source_to_detector_mm: source-to-detector distance of the cone beam (180 cm for a PA chest film).
        mu_water: attenuation of water at the effective energy, 1/mm.
        bone_enhancement: see ``hu_to_mu``.
        rng: noise generator; None gives a noise-free image.
        detector: keyword arguments for ``detector_response`` (dose, scatter, noise, window, gamma).
        return_meta: also return a dict with ``pixel_spacing`` (mm), ``shape`` and the raw
            ``line_integral`` image.

    Returns:
        float32 image (H, W) in [0, 1], rows superior->inferior, patient's right on the viewer's left;
        with ``return_meta``, ``(image, meta)``.
    """
    vol, spacing = to_ras(hu, affine_or_spacing)
    vol = np.asarray(vol, dtype=np.float32)
    if not np.isfinite(vol).any():
        raise ValueError("the CT volume has no finite values")
    vol = np.nan_to_num(vol, nan=-1000.0, posinf=3000.0, neginf=-1000.0)
    mu = hu_to_mu(vol, mu_water=mu_water, bone_enhancement=bone_enhancement)
    integral, geom = _project_plane(
        mu, spacing, geometry, output_shape, pixel_spacing, view, source_to_detector_mm, order=1
    )
    image = detector_response(integral, rng=rng, **(detector or {}))
    if return_meta:
        return image, {"pixel_spacing": geom.pixel_spacing, "shape": geom.shape, "line_integral": integral}
    return image


def project_label(
    label: Any,
    affine_or_spacing: Any = None,
    *,
    labels: Sequence[int] | None = None,
    output_shape: Sequence[int] | None = None,
    pixel_spacing: float | None = None,
    geometry: str = "parallel",
    view: str = "PA",
    source_to_detector_mm: float = 1800.0,
    min_path_mm: float = 0.5,
) -> np.ndarray:
    """Project a 3D label map into a 2D mask on the same detector grid as ``project_drr``.

    A detector pixel is in the mask where its ray crosses at least ``min_path_mm`` of the selected labels
    (lung label 1 and 2 -> the projected lung fields).

    Args:
        label: (X, Y, Z) or (1, X, Y, Z) integer label map (or a boolean mask).
        affine_or_spacing: as for ``project_drr``; use the same value to get aligned outputs.
        labels: label values to include; None means every non-zero value.
        output_shape, pixel_spacing, geometry, view, source_to_detector_mm: as for ``project_drr``.
        min_path_mm: the path length through the label above which a pixel counts.

    Returns:
        uint8 mask (H, W) of 0/1.
    """
    vol, spacing = to_ras(label, affine_or_spacing)
    vol = np.asarray(vol)
    sel = np.isin(vol, np.asarray(labels)) if labels is not None else vol != 0
    path, _ = _project_plane(
        sel.astype(np.float32),
        spacing,
        geometry,
        output_shape,
        pixel_spacing,
        view,
        source_to_detector_mm,
        order=1,
    )
    return (path >= min_path_mm).astype(np.uint8)
