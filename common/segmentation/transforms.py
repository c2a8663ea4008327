"""Dictionary transforms for left/right lung segmentation.

- :class:`SplitLungsd` turns a binary lung mask (one label for both lungs, as many public data sets
  have) into the 0/1/2 (background / right / left) label map the bundle trains and evaluates on.
- :class:`LungPostprocessd` cleans the network's probabilities at the network resolution: the largest
  connected component per lung is kept and holes are filled (MONAI's ``KeepLargestConnectedComponent``
  and ``FillHoles``); only voxels whose label the clean-up changed get new probabilities, so the
  sub-voxel boundary information of the others survives the resampling to the input grid.
- :class:`ResampleToInputGridd` resamples the probabilities back onto the grid of the image as it was
  read (same shape, affine and spacing) and takes the arg-max there, slab by slab, so that a
  512 x 512 x 300 scan needs a few hundred MB rather than the ~2 GB that a full-volume
  ``affine_grid`` + ``grid_sample`` (MONAI ``Invertd``) needs for three probability channels.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import FillHoles, KeepLargestConnectedComponent, MapTransform
from scipy import ndimage

RIGHT_LUNG = 1
LEFT_LUNG = 2


def _affine_of(img: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(img, MetaTensor):
        return np.asarray(img.affine, dtype=np.float64)
    return np.eye(4)


def split_binary_lungs(mask: np.ndarray, affine: np.ndarray, min_fraction: float = 0.9) -> np.ndarray:
    """Split a binary lung mask into right (1) and left (2) lungs.

    The mask is viewed in RAS orientation (nibabel's ``io_orientation``), where the first voxel axis
    points to the patient's right. Each connected component (6-connectivity) that lies at least
    ``min_fraction`` on one side of the midline (the centre of the mask's left-right extent) is given to
    that side as a whole. A component that straddles the midline (lungs touching at the anterior
    junction line, as binary masks often have them) is cut in every axial slice at the column with the
    fewest lung voxels near the midline.

    Args:
        mask: (X, Y, Z) array, non-zero inside the lungs.
        affine: the voxel-to-world (RAS) affine of ``mask``.
        min_fraction: share of a component's voxels that must lie on one side for it to be kept whole.

    Returns:
        uint8 (X, Y, Z) array with 0 background, 1 right lung, 2 left lung, in the input's voxel order.
    """
    ornt = nib.orientations.io_orientation(affine)
    ras = nib.orientations.apply_orientation(np.asarray(mask) != 0, ornt)
    out = np.zeros(ras.shape, dtype=np.uint8)
    if ras.any():
        xs = np.nonzero(ras.any(axis=(1, 2)))[0]
        x_lo, x_hi = int(xs[0]), int(xs[-1])
        midline = 0.5 * (x_lo + x_hi)
        half_window = max(2, int(round(0.15 * (x_hi - x_lo))))
        components, n = ndimage.label(ras)
        slices = ndimage.find_objects(components)
        for index, sl in enumerate(slices, start=1):
            comp = components[sl] == index
            x_idx = np.arange(sl[0].start, sl[0].stop)[:, None, None]
            right_share = float((comp & (x_idx > midline)).sum()) / float(comp.sum())
            region = out[sl]
            if right_share >= min_fraction:
                region[comp] = RIGHT_LUNG
            elif right_share <= 1.0 - min_fraction:
                region[comp] = LEFT_LUNG
            else:
                # first axis points right in RAS: columns above the cut are the right lung
                lo = max(int(midline) - half_window, sl[0].start)
                hi = min(int(midline) + half_window, sl[0].stop - 1)
                for z in range(comp.shape[2]):
                    plane = comp[:, :, z]
                    if not plane.any():
                        continue
                    profile = plane.sum(axis=1)[lo - sl[0].start : hi - sl[0].start + 1]
                    cut = lo + int(np.argmin(profile)) if profile.size else int(midline)
                    right = x_idx[:, :, 0] > cut
                    region[:, :, z][plane & right] = RIGHT_LUNG
                    region[:, :, z][plane & ~right] = LEFT_LUNG
    back = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt(("R", "A", "S")), ornt)
    # apply_orientation expects the orientation that maps the RAS array back onto the input's axes
    return np.ascontiguousarray(nib.orientations.apply_orientation(out, back))


class SplitLungsd(MapTransform):
    """Map a lung label to 0 background / 1 right lung / 2 left lung.

    Args:
        keys: label keys, each a channel-first ``(1, X, Y, Z)`` tensor with an ``affine`` (MetaTensor).
        mode: ``"auto"``: a label with a single non-zero value (0/1, 0/255, ...) is treated as a binary
            mask of both lungs and split with :func:`split_binary_lungs`; a label that already uses
            1 and 2 is kept. ``"split"``: always split the non-zero voxels. ``"keep"``: change nothing.
        min_fraction: see :func:`split_binary_lungs`.
        allow_missing_keys: don't raise if a key is missing.
    """

    def __init__(
        self,
        keys: KeysCollection,
        mode: str = "auto",
        min_fraction: float = 0.9,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if mode not in ("auto", "split", "keep"):
            raise ValueError(f"mode must be 'auto', 'split' or 'keep', got {mode!r}")
        self.mode = mode
        self.min_fraction = min_fraction

    def _needs_split(self, values: np.ndarray) -> bool:
        if self.mode == "split":
            return True
        if self.mode == "keep":
            return False
        return values.size == 1

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            label = d[key]
            array = label.detach().cpu().numpy() if isinstance(label, torch.Tensor) else np.asarray(label)
            nonzero_values = np.unique(array[array != 0])
            if not self._needs_split(nonzero_values):
                continue
            split = split_binary_lungs(array[0], _affine_of(label), self.min_fraction)[None]
            new = torch.as_tensor(split.astype(np.float32 if label.dtype.is_floating_point else np.uint8))
            if isinstance(label, MetaTensor):
                d[key] = MetaTensor(new, meta=dict(label.meta), applied_operations=label.applied_operations)
                d[key].meta["lung_label_split"] = True
            else:
                d[key] = new
        return d


class LungPostprocessd(MapTransform):
    """Keep the largest connected component of each lung and fill its holes, at the network resolution.

    The input is the network's per-class probabilities ``(3, X, Y, Z)`` (softmax already applied). The
    arg-max label map is cleaned with MONAI's ``KeepLargestConnectedComponent`` (each lung on its own)
    and ``FillHoles``; voxels whose label changed get a one-hot probability of their new label, all
    others keep the network's probabilities, so that :class:`ResampleToInputGridd` can still place the
    boundary between voxels.

    Args:
        keys: probability keys.
        lung_labels: the labels to clean.
        connectivity: neighbourhood of the connected-component analysis (1 = faces ... 3 = corners).
        fill_holes: fill holes fully enclosed by a lung (tumours, effusions inside the lung).
        body_key: key of a body mask on the same grid (``common.transforms.BodyMaskd``); voxels outside
            the body become background before the components are chosen, so air outside the patient,
            the couch or the gap under the back can never become lung. Ignored when the key is absent.
        allow_missing_keys: don't raise if a key is missing.
    """

    def __init__(
        self,
        keys: KeysCollection,
        lung_labels: Sequence[int] = (RIGHT_LUNG, LEFT_LUNG),
        connectivity: int = 1,
        fill_holes: bool = True,
        body_key: str | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.body_key = body_key
        self.keep_largest = KeepLargestConnectedComponent(
            applied_labels=list(lung_labels), is_onehot=False, independent=True, connectivity=connectivity
        )
        self.fill_holes = FillHoles(applied_labels=list(lung_labels), connectivity=connectivity) if fill_holes else None

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            prob = d[key]
            values = prob.as_tensor() if isinstance(prob, MetaTensor) else torch.as_tensor(prob)
            raw = torch.argmax(values, dim=0, keepdim=True)
            clean = raw.clone()
            body = d.get(self.body_key) if self.body_key is not None else None
            if body is not None:
                inside = torch.as_tensor(body).to(raw.device)[0] > 0.5
                if inside.shape != raw.shape[1:]:
                    raise ValueError(f"body mask {tuple(inside.shape)} and prediction {tuple(raw.shape[1:])} differ in shape")
                clean[0][~inside] = 0
            clean = self.keep_largest(clean)  # it works in place
            if self.fill_holes is not None:
                clean = self.fill_holes(clean)
            if isinstance(clean, MetaTensor):
                clean = clean.as_tensor()
            clean = torch.as_tensor(clean).to(raw.device, raw.dtype)
            changed = (clean != raw)[0]
            if bool(changed.any()):
                values = values.clone()
                onehot = F.one_hot(clean[0][changed], num_classes=values.shape[0]).to(values.dtype)
                values[:, changed] = onehot.T
                prob = MetaTensor(values, meta=prob.meta, applied_operations=prob.applied_operations) if isinstance(
                    prob, MetaTensor
                ) else values
            d[key] = prob
        return d


def _target_geometry(ref: MetaTensor) -> tuple[np.ndarray, tuple[int, ...]]:
    meta = ref.meta
    if "original_affine" not in meta or "spatial_shape" not in meta:
        raise KeyError("reference image has no 'original_affine'/'spatial_shape' meta (was it read by LoadCTd?)")
    affine = np.asarray(meta["original_affine"], dtype=np.float64)
    shape = tuple(int(s) for s in np.asarray(meta["spatial_shape"]).ravel()[:3])
    return affine, shape


def _axis_aligned(to_src: np.ndarray, tol: float = 1e-6) -> list[int] | None:
    """Source axis of each target axis when the mapping only scales, flips and shifts axes, else None."""
    rot = np.abs(to_src[:3, :3])
    scale = rot.max()
    perm = [int(np.argmax(rot[:, a])) for a in range(3)]
    if sorted(perm) != [0, 1, 2]:
        return None
    off = rot.copy()
    for a, p in enumerate(perm):
        off[p, a] = 0.0
    return perm if off.max() <= tol * max(scale, 1.0) else None


def _interp_axis(volume: torch.Tensor, axis: int, coords: torch.Tensor, nearest: bool) -> torch.Tensor:
    """Sample ``volume`` along ``axis`` at fractional voxel ``coords``; zero outside (as grid_sample)."""
    n = volume.shape[axis]
    view = [1] * volume.ndim
    view[axis] = -1
    if nearest:
        idx = torch.round(coords).long()
        inside = ((idx >= 0) & (idx < n)).to(volume.dtype).view(view)
        return volume.index_select(axis, idx.clamp(0, n - 1)) * inside
    lo = torch.floor(coords)
    frac = (coords - lo).to(volume.dtype)
    lo = lo.long()
    hi = lo + 1
    w_lo = ((1.0 - frac) * ((lo >= 0) & (lo < n))).view(view)
    w_hi = (frac * ((hi >= 0) & (hi < n))).view(view)
    return volume.index_select(axis, lo.clamp(0, n - 1)) * w_lo + volume.index_select(axis, hi.clamp(0, n - 1)) * w_hi


def resample_labels_to_grid(
    prob: torch.Tensor,
    src_affine: np.ndarray,
    dst_affine: np.ndarray,
    dst_shape: Sequence[int],
    slab: int = 16,
    margin: int = 2,
    separable: bool = True,
) -> np.ndarray:
    """Resample class probabilities onto another grid and take the arg-max there.

    Trilinear interpolation of the probabilities (nearest neighbour when ``prob`` has one channel, which
    is then taken as a label map). Only the bounding box of the non-background voxels (plus ``margin``
    source voxels) is resampled, in slabs of ``slab`` target slices, so memory stays small; everything
    outside is background.

    Args:
        prob: ``(C, X, Y, Z)`` probabilities (or ``(1, X, Y, Z)`` labels) on the source grid.
        src_affine: voxel-to-world affine of ``prob``.
        dst_affine: voxel-to-world affine of the target grid.
        dst_shape: target ``(X, Y, Z)``.
        slab: target slices (last axis) resampled at once.
        margin: source voxels added around the foreground bounding box.
        separable: use separable 1D interpolation when the grids differ only by axis scaling, flips,
            permutation and shifts (the same result as ``grid_sample``, faster).

    Returns:
        uint8 label map of shape ``dst_shape``.
    """
    if isinstance(prob, MetaTensor):
        prob = prob.as_tensor()
    prob = torch.as_tensor(prob).float()
    is_label = prob.shape[0] == 1
    out = np.zeros(tuple(dst_shape), dtype=np.uint8)
    fg = prob[0] > 0 if is_label else torch.argmax(prob, dim=0) > 0
    if not bool(fg.any()):
        return out
    src_shape = np.asarray(prob.shape[1:])
    idx = [torch.nonzero(fg.any(dim=tuple(a for a in range(3) if a != axis)))[:, 0] for axis in range(3)]
    lo = np.array([int(i[0]) for i in idx]) - margin
    hi = np.array([int(i[-1]) for i in idx]) + margin
    # target voxel -> source voxel
    to_src = np.linalg.solve(src_affine, dst_affine)
    to_dst = np.linalg.inv(to_src)
    corners = np.array([[a, b, c, 1.0] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])])
    dst_corners = (to_dst @ corners.T)[:3]
    box_lo = np.maximum(np.floor(dst_corners.min(axis=1)).astype(int), 0)
    box_hi = np.minimum(np.ceil(dst_corners.max(axis=1)).astype(int), np.asarray(dst_shape) - 1)
    if np.any(box_hi < box_lo):
        return out
    mode = "nearest" if is_label else "bilinear"
    # probabilities that sum to one: background = 1 - lungs after (linear) interpolation, so only the
    # lung channels need resampling
    lungs_only = not is_label and prob.shape[0] == 3 and bool(torch.allclose(prob.sum(0), torch.ones(()), atol=1e-3))
    source = prob[1:] if lungs_only else prob

    def to_labels(sampled: torch.Tensor) -> torch.Tensor:
        if is_label:
            return sampled[0].round()
        if lungs_only:
            right, left = sampled[0], sampled[1]
            lung = torch.where(left > right, LEFT_LUNG, RIGHT_LUNG)
            return torch.where(torch.maximum(right, left) > 1.0 - right - left, lung, 0)
        return torch.argmax(sampled, dim=0)

    perm = _axis_aligned(to_src) if separable else None
    if perm is not None:
        # scaling/flipping/shifting only (any orientation, no rotation): trilinear interpolation is
        # separable, three 1D passes instead of a 3D sampling grid, several times faster
        volume = source.permute(0, *(p + 1 for p in perm))  # volume axis a+1 follows target axis a
        axes = [
            torch.arange(box_lo[a], box_hi[a] + 1, dtype=torch.float64) * to_src[perm[a], a] + to_src[perm[a], 3]
            for a in range(3)
        ]
        for k0 in range(int(box_lo[2]), int(box_hi[2]) + 1, slab):
            zs = axes[2][k0 - int(box_lo[2]) : k0 - int(box_lo[2]) + slab]
            part = _interp_axis(volume, 3, zs, is_label)
            part = _interp_axis(part, 2, axes[1], is_label)
            part = _interp_axis(part, 1, axes[0], is_label)
            labels = to_labels(part)
            out[box_lo[0] : box_hi[0] + 1, box_lo[1] : box_hi[1] + 1, k0 : k0 + zs.numel()] = labels.to(torch.uint8).numpy()
        return out
    rot = torch.as_tensor(to_src[:3, :3], dtype=torch.float64)
    shift = torch.as_tensor(to_src[:3, 3], dtype=torch.float64)
    # normalised grid_sample coordinates (align_corners=True): -1 at voxel 0, +1 at voxel n-1
    scale = torch.as_tensor(2.0 / np.maximum(src_shape - 1, 1), dtype=torch.float64)
    ii = torch.arange(box_lo[0], box_hi[0] + 1, dtype=torch.float64)
    jj = torch.arange(box_lo[1], box_hi[1] + 1, dtype=torch.float64)
    volume = source.unsqueeze(0)
    for k0 in range(int(box_lo[2]), int(box_hi[2]) + 1, slab):
        kk = torch.arange(k0, min(k0 + slab, int(box_hi[2]) + 1), dtype=torch.float64)
        # source coordinate = rot @ (i, j, k) + shift, built axis by axis to avoid a full meshgrid in float64
        coords = (
            rot[:, 0, None, None, None] * ii[None, :, None, None]
            + rot[:, 1, None, None, None] * jj[None, None, :, None]
            + rot[:, 2, None, None, None] * kk[None, None, None, :]
            + shift[:, None, None, None]
        )
        coords = coords * scale[:, None, None, None] - 1.0
        # grid_sample wants (N, D, H, W, 3) with the last dim ordered (W, H, D) = (z, y, x)
        grid = coords.flip(0).permute(1, 2, 3, 0).to(torch.float32).unsqueeze(0)
        sampled = F.grid_sample(volume, grid, mode=mode, padding_mode="zeros", align_corners=True)[0]
        labels = to_labels(sampled)
        out[box_lo[0] : box_hi[0] + 1, box_lo[1] : box_hi[1] + 1, k0 : k0 + kk.numel()] = labels.to(torch.uint8).numpy()
    return out


class ResampleToInputGridd(MapTransform):
    """Bring predictions back onto the grid the image was read on, as a uint8 label map.

    The source grid is the ``affine`` of ``ref_key`` (the preprocessed image); the target grid is its
    ``original_affine`` and ``spatial_shape`` meta (recorded by ``LoadCTd``), so any chain of
    orientation, spacing, crop and pad transforms in between is undone without replaying it.

    Args:
        keys: prediction keys: ``(C, X, Y, Z)`` probabilities or ``(1, X, Y, Z)`` labels.
        ref_key: key of the preprocessed image whose meta describes both grids.
        slab: target slices resampled at once (memory vs. speed).
        allow_missing_keys: don't raise if a key is missing.
    """

    def __init__(
        self, keys: KeysCollection, ref_key: str = "image", slab: int = 16, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.ref_key = ref_key
        self.slab = slab

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        ref = d[self.ref_key]
        if not isinstance(ref, MetaTensor):
            raise TypeError(f"{self.ref_key!r} must be a MetaTensor with affine and original geometry meta")
        dst_affine, dst_shape = _target_geometry(ref)
        src_affine = np.asarray(ref.affine, dtype=np.float64)
        for key in self.key_iterator(d):
            labels = resample_labels_to_grid(d[key], src_affine, dst_affine, dst_shape, slab=self.slab)
            meta = {k: v for k, v in ref.meta.items() if k != "affine"}
            meta["spatial_shape"] = np.asarray(dst_shape)
            d[key] = MetaTensor(torch.from_numpy(labels)[None], affine=torch.as_tensor(dst_affine), meta=meta)
        return d
